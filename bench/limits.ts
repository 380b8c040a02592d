// Relay limits across SMTP replicas (`npm run bench -- limits`, issue 14 §1): three real
// `kube-drac smtp` processes on a local control plane, each publishing its RelayUsage every flush
// interval f, and one client spraying all three for one user at a fixed total rate r (one
// connection per replica, a message per RCPT, each sent the moment its slot comes). Reported, per
// flush interval: how far past the limit the user got (overshoot) against the bound r·(f + d)
// (= R·r_replica·(f + d): R replicas each relay up to r/R per second unseen by the others for a
// flush interval plus the write-to-watch delay d), the API writes per second the counting caused
// (the API server's own request counter for relayusages), and the cost of one RCPT decision
// (UsageLedger.check over 10k users, in this process). Full run: 2 trials per flush interval.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { grantsPath } from '../src/grants/paths.ts';
import { ensureNamespace, installCrds } from '../src/kube/crds.ts';
import { UsageLedger } from '../src/limits/ledger.ts';
import type { LimitsPolicy } from '../src/limits/policy.ts';
import { ControlPlane, freePort } from '../src/local/control-plane.ts';
import type { BenchOptions, BenchResult } from './types.ts';

const execFileAsync = promisify(execFile);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const CLI = new URL('../src/cli.ts', import.meta.url).pathname;
const NAMESPACE = 'bench-limits';
const REPLICAS = 3;
const CLIENT = '127.0.0.50';
/** Messages per hour the sprayed user may relay. */
const LIMIT = 300;
/** The client's total rate, messages per second over all replicas. */
const RATE = 120;

interface Smtp {
  child: ChildProcess;
  port: number;
  metricsPort: number;
  logFile: string;
}

async function startSmtp(dir: string, replica: string, kubeconfig: string, flushMs: number): Promise<Smtp> {
  const [port, metricsPort] = [await freePort(), await freePort()];
  const config = {
    kubernetes: { namespace: NAMESPACE, kubeconfig },
    metrics: { host: '127.0.0.1', port: metricsPort },
    log: { level: 'warn' },
    smtp: {
      hostname: 'bench.example',
      listen: { host: '127.0.0.1', port },
      localDomains: ['example.test'],
      mailRoot: path.join(dir, 'mail'),
      outbox: path.join(dir, `outbox-${replica}`),
      maxClientsPerAddress: 10,
      limits: { enabled: true, replicaName: replica, flushInterval: `${flushMs}ms`, perUser: { messagesPerHour: LIMIT, recipientsPerHour: 0 }, perAddress: { messagesPerHour: 0, recipientsPerHour: 0 } },
    },
  };
  const file = path.join(dir, `${replica}.yaml`);
  fs.writeFileSync(file, JSON.stringify(config, null, 2)); // JSON is YAML
  const logFile = path.join(dir, `${replica}.log`);
  const out = fs.openSync(logFile, 'a');
  const child = spawn(process.execPath, [CLI, 'smtp', '--config', file], { stdio: ['ignore', out, out] });
  fs.closeSync(out);
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${replica} exited with ${child.exitCode}: ${fs.readFileSync(logFile, 'utf8').slice(-2000)}`);
    if (await fetch(`http://127.0.0.1:${metricsPort}/readyz`).then((r) => r.ok, () => false)) return { child, port, metricsPort, logFile };
    if (Date.now() > deadline) throw new Error(`${replica} never became ready: ${fs.readFileSync(logFile, 'utf8').slice(-2000)}`);
    await sleep(200);
  }
}

async function stopSmtp(s: Smtp): Promise<void> {
  if (s.child.exitCode !== null) return;
  const exited = new Promise((r) => s.child.once('exit', r));
  s.child.kill('SIGTERM');
  await Promise.race([exited, sleep(10_000)]);
  if (s.child.exitCode === null) s.child.kill('SIGKILL');
}

/** One SMTP connection that sends one message at a time and reads each reply. */
class SmtpConnection {
  private buffer = '';
  private waiting: (() => void) | undefined;
  private readonly socket: net.Socket;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      this.waiting?.();
    });
  }

  static async open(port: number): Promise<SmtpConnection> {
    const socket = net.connect({ port, host: '127.0.0.1', localAddress: CLIENT });
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    const c = new SmtpConnection(socket);
    await c.reply();
    await c.command('EHLO bench.client');
    return c;
  }

  private async reply(): Promise<string> {
    for (;;) {
      const m = /^(?:\d{3}-.*\r\n)*(\d{3}) .*\r\n/.exec(this.buffer);
      if (m) {
        this.buffer = this.buffer.slice(m[0].length);
        return m[1] as string;
      }
      await new Promise<void>((r) => (this.waiting = r));
    }
  }

  async command(line: string): Promise<string> {
    this.socket.write(`${line}\r\n`);
    return this.reply();
  }

  /** One relayed message; true when it was accepted (250 after DATA), false when RCPT was refused. */
  async relay(user: string): Promise<boolean> {
    await this.command(`MAIL FROM:<${user}@example.test>`);
    const rcpt = await this.command('RCPT TO:<someone@elsewhere.test>');
    if (rcpt !== '250') {
      if (rcpt !== '450') throw new Error(`RCPT answered ${rcpt}`);
      await this.command('RSET');
      return false;
    }
    await this.command('DATA');
    return (await this.command(`Subject: spray\r\n\r\nbench\r\n.`)) === '250';
  }

  close(): void {
    this.socket.end('QUIT\r\n');
  }
}

async function apiWrites(kubectl: string, kubeconfig: string): Promise<number> {
  const { stdout } = await execFileAsync(kubectl, ['--kubeconfig', kubeconfig, 'get', '--raw', '/metrics'], { maxBuffer: 256 << 20 });
  let n = 0;
  for (const line of stdout.split('\n')) {
    if (!line.startsWith('apiserver_request_total{') || !line.includes('resource="relayusages"')) continue;
    if (!/verb="(PATCH|POST|PUT|APPLY)"/.test(line)) continue;
    n += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return n;
}

interface Trial {
  accepted: number;
  /** The client's achieved rate until the limit's worth was accepted (the r of the bound). */
  ratePerS: number;
  overshoot: number;
  sprayS: number;
  writesPerS: number;
}

/**
 * Spray until every replica has refused for two flush intervals in a row; the user is fresh for
 * each trial. Counts only what was accepted while the limit was being reached.
 */
async function trial(smtps: Smtp[], user: string, flushMs: number, kubectl: string, kubeconfig: string): Promise<Trial> {
  const conns = await Promise.all(smtps.map((s) => SmtpConnection.open(s.port)));
  const writes0 = await apiWrites(kubectl, kubeconfig);
  const gapMs = (1000 * REPLICAS) / RATE;
  const started = performance.now();
  let accepted = 0;
  let attempts = 0;
  let limitReachedAt = Number.NaN;
  let attemptsAtLimit = 0;
  const lastAccepted = conns.map(() => started);
  const quietFor = Math.max(2 * flushMs, 1000);
  await Promise.all(
    conns.map(async (c, i) => {
      for (let n = 0; ; n++) {
        // The replicas' slots interleave: replica i sends at i/R of each gap.
        const due = started + (n + i / REPLICAS) * gapMs;
        const wait = due - performance.now();
        if (wait > 0) await sleep(wait);
        attempts++;
        if (await c.relay(user)) {
          accepted++;
          lastAccepted[i] = performance.now();
          if (accepted === LIMIT) {
            limitReachedAt = performance.now();
            attemptsAtLimit = attempts;
          }
        }
        if (performance.now() - Math.max(...lastAccepted) > quietFor) return;
        if (performance.now() - started > 120_000) throw new Error('the limit was never enforced');
      }
    }),
  );
  const sprayS = (performance.now() - started) / 1000;
  const writes = (await apiWrites(kubectl, kubeconfig)) - writes0;
  for (const c of conns) c.close();
  const ratePerS = attemptsAtLimit / ((limitReachedAt - started) / 1000);
  return { accepted, ratePerS, overshoot: accepted - LIMIT, sprayS, writesPerS: writes / sprayS };
}

/** ns per RCPT decision: UsageLedger.check with 10k users known (3 replicas' objects). */
function decisionCost(): number {
  const policy: LimitsPolicy = { perUser: { messagesPerHour: 1e6, recipientsPerHour: 1e6 }, perAddress: { messagesPerHour: 1e6, recipientsPerHour: 1e6 }, overrides: new Map() };
  const now = Date.now();
  const others = ['b', 'c'].map((replica) => new UsageLedger({ replica }));
  const ledger = new UsageLedger({ replica: 'a' });
  for (let u = 0; u < 10_000; u++) {
    const m = { user: `user${u}`, address: `10.0.${u >> 8}.${u & 255}`, recipients: 2 };
    for (const l of [ledger, ...others]) l.count(m, now);
  }
  for (const o of others) ledger.upsertRemote(o.snapshot(now), now);
  const subjects = Array.from({ length: 1024 }, (_, i) => ({ user: `user${(i * 7919) % 10_000}`, address: `10.0.${i & 31}.${i & 255}`, pendingRecipients: 1 }));
  let sink = 0;
  const round = (n: number) => {
    for (let i = 0; i < n; i++) if (ledger.check(policy, subjects[i & 1023] as (typeof subjects)[number], now) !== undefined) sink++;
  };
  round(200_000);
  const n = 2_000_000;
  const t0 = process.hrtime.bigint();
  round(n);
  const ns = Number(process.hrtime.bigint() - t0) / n;
  if (sink !== 0) throw new Error('no subject should be over the limit');
  return ns;
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const range = (xs: number[], digits = 0) => `${Math.min(...xs).toFixed(digits)}..${Math.max(...xs).toFixed(digits)}`;

export async function run(opts: BenchOptions): Promise<BenchResult[]> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kube-drac-bench-limits-'));
  const plane = new ControlPlane();
  await plane.start();
  const rows: BenchResult[] = [];
  try {
    const client = plane.client();
    await installCrds(client);
    await ensureNamespace(client, NAMESPACE);
    const users = opts.quick ? 1 : 2;
    // The grant the sprayed users relay through (its user is the one limits count).
    const flushes = opts.quick ? [2000] : [2000, 500];
    let trialNo = 0;
    const cpu0 = process.cpuUsage();
    const wall0 = performance.now();
    for (const flushMs of flushes) {
      const smtps: Smtp[] = [];
      try {
        for (let i = 0; i < REPLICAS; i++) smtps.push(await startSmtp(dir, `smtp-f${flushMs}-${i}`, plane.kubeconfigPath, flushMs));
        const trials: Trial[] = [];
        for (let t = 0; t < users; t++) {
          const user = `spray${++trialNo}`;
          const name = `v4-${CLIENT}`;
          const grant = { apiVersion: 'kubedrac.io/v1alpha1', kind: 'RelayGrant', metadata: { name }, spec: { address: CLIENT, user, source: 'manual', expiresAt: new Date(Date.now() + 3_600_000).toISOString() } };
          await client.apply(grantsPath(NAMESPACE, name), grant, 'bench');
          await sleep(1000); // the replicas' watches see the grant's new user
          trials.push(await trial(smtps, user, flushMs, plane.kubectl, plane.kubeconfigPath));
          await sleep(flushMs * 2); // the last counts published before the next user
        }
        const rate = mean(trials.map((t) => t.ratePerS));
        const bound = rate * (flushMs / 1000);
        const f = `f=${flushMs / 1000}s`;
        rows.push({
          name: `overshoot past ${LIMIT}/h, ${f}`,
          value: mean(trials.map((t) => t.overshoot)),
          unit: 'messages',
          target: `≤ r·f = ${bound.toFixed(0)} (+ r·d)`,
          note: `${trials.length} trials, range ${range(trials.map((t) => t.overshoot))}; r=${rate.toFixed(0)}/s achieved (${RATE} asked) over ${REPLICAS} replicas`,
        });
        rows.push({
          name: `API writes for counting, ${f}`,
          value: mean(trials.map((t) => t.writesPerS)),
          unit: 'writes/s',
          target: `≤ R/f = ${(REPLICAS / (flushMs / 1000)).toFixed(1)}`,
          note: `range ${range(trials.map((t) => t.writesPerS), 2)}, while spraying ${mean(trials.map((t) => t.sprayS)).toFixed(1)} s`,
        });
      } finally {
        await Promise.all(smtps.map(stopSmtp));
      }
    }
    const cpu = process.cpuUsage(cpu0);
    const wallMs = performance.now() - wall0;
    client.close();
    const ns = decisionCost();
    rows.push({ name: 'RCPT limit decision (10k users)', value: ns, unit: 'ns', target: '≤ 2000', note: 'UsageLedger.check: sum lookups + the pure comparison' });
    rows.push({
      name: 'load generator CPU while spraying',
      value: ((cpu.user + cpu.system) / 1000 / wallMs) * 100,
      unit: '% of a core',
      note: `uptime load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}; ${os.cpus().length} cores`,
    });
  } finally {
    await plane.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}
