// Revocation lag and grant visibility, end to end (`npm run bench -- revocation`, issue 13 item 3).
// Real role processes on a local control plane: `kube-drac pop3`, `kube-drac smtp` (live lookup
// on) and `kube-drac bridge` (socketmap). A trial is: a POP3 login by a real client (curl, bound to
// its own loopback address), timed until SMTP relays for that address at RCPT and the socketmap
// answers OK (visibility); then a DELETE of the RelayGrant through the API (as kubectl does),
// timed until SMTP refuses at RCPT and the socketmap answers NOTFOUND (revocation).
// The run alternates idle spells (nothing touches the grants for up to 5 minutes: the watches are
// silent, then one trial) and busy spells (trials back to back while other grants are created,
// patched and deleted and other clients log in). A GrantCache in this process watches an empty
// namespace all along; the watch restarts of every cache (by reason) are reported, `stalled` above all.
// Full run: >= 30 minutes. `--quick`: about 2 minutes.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { encodeNetstring, NetstringDecoder } from '../src/bridge/netstring.ts';
import { GrantCache } from '../src/grants/cache.ts';
import { grantWatchRestarts } from '../src/grants/metrics.ts';
import { grantsPath } from '../src/grants/paths.ts';
import type { KubeClient } from '../src/kube/client.ts';
import { ensureNamespace, installCrds } from '../src/kube/crds.ts';
import { ControlPlane, freePort } from '../src/local/control-plane.ts';
import { createLogger } from '../src/observability/log.ts';
import { percentile, type BenchOptions, type BenchResult } from './types.ts';

const execFileAsync = promisify(execFile);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const CLI = new URL('../src/cli.ts', import.meta.url).pathname;
const NAMESPACE = 'bench-revocation';
const QUIET_NAMESPACE = 'bench-quiet';
/** The trials' user, and the busy spells' other clients' (a maildrop is locked per session). */
const USER = 'bench';
const BUSY_USER = 'busy';
const PASSWORD = 'bench-password';
/** How often a waiting trial asks SMTP and the socketmap again. */
const PROBE_GAP_MS = 10;
/** A trial gives up waiting after this long (and counts as a failure). */
const GIVE_UP_MS = 30_000;
const TARGET_MS = 2000;

interface Schedule {
  /** Idle spells, seconds (each followed by a busy spell). */
  idle: number[];
  busySeconds: number;
}

const FULL: Schedule = { idle: [300, 120, 240, 60, 180], busySeconds: 180 };
const QUICK: Schedule = { idle: [20, 5], busySeconds: 25 };

// ---------------------------------------------------------------------------------------------
// The role processes.

export interface Role {
  name: string;
  child: ChildProcess;
  metricsPort: number;
  logFile: string;
}

/** Start a role process and wait for its /readyz (`readyWithinMs`: a big cache syncs for minutes). */
export async function startRole(dir: string, name: 'pop3' | 'smtp' | 'bridge' | 'operator', config: Record<string, unknown>, readyWithinMs = 60_000): Promise<Role> {
  const metricsPort = await freePort();
  const file = path.join(dir, `${name}.yaml`);
  fs.writeFileSync(file, JSON.stringify({ ...config, metrics: { host: '127.0.0.1', port: metricsPort } }, null, 2)); // JSON is YAML
  const logFile = path.join(dir, `${name}.log`);
  const out = fs.openSync(logFile, 'a');
  const child = spawn(process.execPath, [CLI, name, '--config', file], { stdio: ['ignore', out, out] });
  fs.closeSync(out);
  const deadline = Date.now() + readyWithinMs;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${name} exited with ${child.exitCode}: ${fs.readFileSync(logFile, 'utf8').slice(-2000)}`);
    const ready = await fetch(`http://127.0.0.1:${metricsPort}/readyz`).then((r) => r.ok, () => false);
    if (ready) return { name, child, metricsPort, logFile };
    if (Date.now() > deadline) throw new Error(`${name} never became ready: ${fs.readFileSync(logFile, 'utf8').slice(-2000)}`);
    await sleep(200);
  }
}

export async function stopRole(role: Role): Promise<void> {
  if (role.child.exitCode !== null) return;
  const exited = new Promise((r) => role.child.once('exit', r));
  role.child.kill('SIGTERM');
  await Promise.race([exited, sleep(10_000)]);
  if (role.child.exitCode === null) role.child.kill('SIGKILL');
}

/** `name{labels} value` samples of one metric from a role's /metrics. */
async function scrape(role: Role, metric: string): Promise<Record<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${role.metricsPort}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    if (!line.startsWith(metric)) continue;
    const m = /^[a-z_]+(?:\{(.*)\})? ([0-9.e+-]+)$/.exec(line);
    if (m) out[m[1] ?? ''] = Number(m[2]);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The clients.

/** A real POP3 client's login from `source`: curl lists the mailbox and quits. */
async function popLogin(port: number, source: string, user = USER): Promise<boolean> {
  try {
    await execFileAsync('curl', ['-sS', '--max-time', '10', '--interface', source, '-u', `${user}:${PASSWORD}`, `pop3://127.0.0.1:${port}/`]);
    return true;
  } catch {
    return false;
  }
}

/** One SMTP session from `source` up to RCPT to a remote domain; resolves with the RCPT reply code (0: no answer). */
function rcptCode(port: number, source: string): Promise<number> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port, localAddress: source });
    const steps = ['EHLO probe.bench.test', 'MAIL FROM:<probe@bench.test>', 'RCPT TO:<someone@remote.test>'];
    let buf = '';
    let step = 0;
    const finish = (code: number) => {
      socket.end('QUIT\r\n');
      socket.destroy();
      resolve(code);
    };
    socket.setTimeout(10_000, () => finish(0));
    socket.on('error', () => finish(0));
    socket.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      for (;;) {
        const m = /(?:^|\n)(\d{3}) [^\n]*\n/.exec(buf);
        if (!m) return;
        buf = buf.slice((m.index ?? 0) + m[0].length);
        const code = Number(m[1]);
        if (step === steps.length) return finish(code);
        if (code >= 400) return finish(0);
        socket.write(`${steps[step++]}\r\n`);
      }
    });
  });
}

/** A persistent socketmap connection, one request at a time (as Postfix and sendmail keep them). */
class SocketmapClient {
  private readonly socket: net.Socket;
  private readonly decoder = new NetstringDecoder(10_000);
  private waiting: ((answer: string) => void) | undefined;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => this.decoder.push(chunk, (answer) => this.waiting?.(answer)));
  }

  static connect(port: number): Promise<SocketmapClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: '127.0.0.1', port }, () => resolve(new SocketmapClient(socket)));
      socket.once('error', reject);
    });
  }

  lookup(ip: string): Promise<string> {
    return new Promise((resolve) => {
      this.waiting = resolve;
      this.socket.write(encodeNetstring(`drac ${ip}`));
    });
  }

  close(): void {
    this.socket.destroy();
  }
}

interface Gate {
  smtpPort: number;
  socketmap: SocketmapClient;
}

/**
 * Ask both gates for `ip` until `want` holds for each (true: relays / OK, false: refuses /
 * NOTFOUND); resolves with the ms from `t0` at which each first held, or undefined after GIVE_UP_MS.
 */
async function waitForGates(gate: Gate, ip: string, want: boolean, t0: number): Promise<{ smtp: number; socketmap: number } | undefined> {
  let smtp: number | undefined;
  let socketmap: number | undefined;
  while (smtp === undefined || socketmap === undefined) {
    if (performance.now() - t0 > GIVE_UP_MS) return undefined;
    const [code, answer] = await Promise.all([
      smtp === undefined ? rcptCode(gate.smtpPort, ip) : Promise.resolve(0),
      socketmap === undefined ? gate.socketmap.lookup(ip) : Promise.resolve(''),
    ]);
    const at = performance.now() - t0;
    if (smtp === undefined && (code === 250) === want) smtp = at;
    if (socketmap === undefined && answer.startsWith('OK') === want) socketmap = at;
    if (smtp === undefined || socketmap === undefined) await sleep(PROBE_GAP_MS);
  }
  return { smtp, socketmap };
}

// ---------------------------------------------------------------------------------------------
// Trials.

interface TrialResult {
  spell: 'idle' | 'busy';
  /** Idle time before the delete, ms (the watches were silent that long). */
  quietMs: number;
  visibility?: { smtp: number; socketmap: number };
  revocation?: { smtp: number; socketmap: number };
  /** Why a trial has no figure: its login failed or a gate did not answer as expected within GIVE_UP_MS. */
  failure?: string;
}

interface World {
  client: KubeClient;
  pop3Port: number;
  gate: Gate;
}

/** Login -> both gates allow (visibility). */
async function grantByLogin(w: World, ip: string): Promise<{ smtp: number; socketmap: number } | undefined> {
  if (!(await popLogin(w.pop3Port, ip))) return undefined;
  return waitForGates(w.gate, ip, true, performance.now());
}

/** DELETE of the grant -> both gates refuse (revocation), timed from just before the request. */
async function revoke(w: World, ip: string): Promise<{ smtp: number; socketmap: number } | undefined> {
  const t0 = performance.now();
  await w.client.delete(grantsPath(NAMESPACE, `v4-${ip}`));
  return waitForGates(w.gate, ip, false, t0);
}

/** Other grants created, patched and deleted at ~20 writes/s, and other clients logging in, until `stop`. */
async function busyLoad(w: World, stop: { done: boolean }): Promise<number> {
  let writes = 0;
  const churn = (async () => {
    for (let n = 0; !stop.done; n++) {
      const address = `10.77.${(n >> 8) & 3}.${n & 255}`;
      const name = `v4-${address}`;
      const expiresAt = new Date(Date.now() + 30 * 60_000).toISOString().replace(/\.\d{3}Z$/, 'Z');
      try {
        if (n % 3 === 2) await w.client.delete(grantsPath(NAMESPACE, `v4-10.77.${((n - 2) >> 8) & 3}.${(n - 2) & 255}`));
        else
          await w.client.create(grantsPath(NAMESPACE), {
            apiVersion: 'kubedrac.io/v1alpha1',
            kind: 'RelayGrant',
            metadata: { name },
            spec: { address, user: 'churn', source: 'manual', expiresAt },
          });
        writes++;
      } catch {
        // an address already there from an earlier spell: fine, the load is the point
      }
      await sleep(50);
    }
  })();
  const logins = (async () => {
    for (let n = 0; !stop.done; n++) {
      await popLogin(w.pop3Port, `127.0.20.${(n % 50) + 1}`, BUSY_USER);
      await sleep(250);
    }
  })();
  await Promise.all([churn, logins]);
  return writes;
}

// ---------------------------------------------------------------------------------------------

function stats(values: number[]): { p50: number; p99: number; max: number } {
  const sorted = [...values].sort((a, b) => a - b);
  return { p50: percentile(sorted, 50), p99: percentile(sorted, 99), max: sorted[sorted.length - 1] ?? NaN };
}

function rowsFor(what: string, values: number[], note: string, target?: string): BenchResult[] {
  const s = stats(values);
  return [
    { name: `${what} p50`, value: s.p50, unit: 'ms', note },
    { name: `${what} p99`, value: s.p99, unit: 'ms', target },
    { name: `${what} max`, value: s.max, unit: 'ms', target },
  ];
}

export async function run({ quick }: BenchOptions): Promise<BenchResult[]> {
  const schedule = quick ? QUICK : FULL;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-revocation-'));
  const plane = new ControlPlane({ logFile: path.join(dir, 'control-plane.log') });
  await plane.start();
  const client = plane.client();
  const roles: Role[] = [];
  let quiet: GrantCache | undefined;
  let socketmap: SocketmapClient | undefined;
  const started = Date.now();
  try {
    await installCrds(client);
    await ensureNamespace(client, NAMESPACE);
    await ensureNamespace(client, QUIET_NAMESPACE);
    const common = { kubernetes: { kubeconfig: plane.kubeconfigPath, namespace: NAMESPACE }, log: { level: 'info' } };
    const mailRoot = path.join(dir, 'mail');
    for (const user of [USER, BUSY_USER]) for (const sub of ['new', 'cur', 'tmp']) fs.mkdirSync(path.join(mailRoot, user, sub), { recursive: true });
    const usersFile = path.join(dir, 'users');
    fs.writeFileSync(usersFile, `${USER}:{PLAIN}${PASSWORD}\n${BUSY_USER}:{PLAIN}${PASSWORD}\n`);
    const [pop3Port, smtpPort, socketmapPort] = [await freePort(), await freePort(), await freePort()];
    roles.push(
      await startRole(dir, 'pop3', {
        ...common,
        pop3: {
          listen: { host: '127.0.0.1', port: pop3Port },
          allowPlaintextAuth: true,
          mailRoot,
          usersFile,
          passwordThreads: 1,
          limits: { maxSessionsPerAddress: 1000 },
        },
      }),
      await startRole(dir, 'smtp', {
        ...common,
        smtp: {
          hostname: 'mx.bench.test',
          listen: { host: '127.0.0.1', port: smtpPort },
          localDomains: ['example.org'],
          mailRoot,
          outbox: path.join(dir, 'outbox'),
          maxClientsPerAddress: 1000,
        },
      }),
      await startRole(dir, 'bridge', { ...common, bridge: { host: '127.0.0.1', socketmap: { enabled: true, port: socketmapPort } } }),
    );
    quiet = new GrantCache({ client, namespace: QUIET_NAMESPACE, log: createLogger('bench-quiet-watch') });
    await quiet.start();
    socketmap = await SocketmapClient.connect(socketmapPort);
    const w: World = { client, pop3Port, gate: { smtpPort, socketmap } };

    // Warm-up: the API server's first writes to a new resource are slow (storage and CEL set-up).
    for (let i = 1; i <= 3; i++) {
      await grantByLogin(w, `127.0.9.${i}`);
      await revoke(w, `127.0.9.${i}`);
    }

    const trials: TrialResult[] = [];
    let failures = 0;
    let churnWrites = 0;
    let next = 0;
    const trialIp = () => `127.0.10.${(next++ % 200) + 1}`;
    const record = (t: TrialResult) => {
      if (!t.visibility) t.failure = 'the login failed, or the gates did not allow within 30 s';
      else if (!t.revocation) t.failure = 'the gates did not refuse within 30 s';
      if (t.failure) failures++;
      trials.push(t);
    };
    for (const idleSeconds of schedule.idle) {
      // Idle spell: one grant made, then nothing at all touches the grants; then its delete.
      const ip = trialIp();
      const visibility = await grantByLogin(w, ip);
      const quietStart = performance.now();
      await sleep(idleSeconds * 1000);
      const quietMs = performance.now() - quietStart;
      record({ spell: 'idle', quietMs, visibility, revocation: visibility ? await revoke(w, ip) : undefined });
      console.log(`  idle ${idleSeconds}s: visible in ${visibility?.smtp.toFixed(0)}/${visibility?.socketmap.toFixed(0)} ms, revoked in ${trials.at(-1)?.revocation?.smtp.toFixed(0)}/${trials.at(-1)?.revocation?.socketmap.toFixed(0)} ms (smtp/socketmap)`);

      // Busy spell: trials back to back under other writes and logins.
      const stop = { done: false };
      const load = busyLoad(w, stop);
      const until = performance.now() + schedule.busySeconds * 1000;
      let n = 0;
      while (performance.now() < until) {
        const busyIp = trialIp();
        const v = await grantByLogin(w, busyIp);
        await sleep(200 + Math.random() * 800);
        record({ spell: 'busy', quietMs: 0, visibility: v, revocation: v ? await revoke(w, busyIp) : undefined });
        n++;
      }
      stop.done = true;
      churnWrites += await load;
      console.log(`  busy ${schedule.busySeconds}s: ${n} trials`);
    }

    const both = (r: { smtp: number; socketmap: number }) => Math.max(r.smtp, r.socketmap);
    const revoked = trials.flatMap((t) => (t.revocation ? [t.revocation] : []));
    const visible = trials.flatMap((t) => (t.visibility ? [t.visibility] : []));
    const idleRevoked = trials.filter((t) => t.spell === 'idle' && t.revocation).map((t) => both(t.revocation!));
    const minutes = (Date.now() - started) / 60_000;
    const load = os.loadavg().map((l) => l.toFixed(2)).join(' ');
    const rows: BenchResult[] = [
      ...rowsFor('revocation, both SMTP and socketmap refuse', revoked.map(both), `${revoked.length} deletes over ${minutes.toFixed(1)} min, load ${load}`, `<= ${TARGET_MS} ms`),
      { name: 'revocation, SMTP RCPT refused, max', value: stats(revoked.map((r) => r.smtp)).max, unit: 'ms', target: `<= ${TARGET_MS} ms` },
      { name: 'revocation, socketmap NOTFOUND, max', value: stats(revoked.map((r) => r.socketmap)).max, unit: 'ms', target: `<= ${TARGET_MS} ms` },
      {
        name: 'revocation after an idle spell, max',
        value: stats(idleRevoked).max,
        unit: 'ms',
        target: `<= ${TARGET_MS} ms`,
        note: `idle spells ${schedule.idle.join(', ')} s`,
      },
      ...rowsFor('visibility after a POP3 login, both allow', visible.map(both), 'from curl\'s exit (after +OK and LIST) to both gates allowing'),
      { name: 'trials that gave up (30 s)', value: failures, unit: 'trials', target: '0' },
      { name: 'busy-spell churn writes (other grants)', value: churnWrites, unit: 'writes' },
    ];
    // Watch restarts of every cache: the roles' (scraped) and the quiet namespace's here.
    const restarts: Record<string, Record<string, number>> = {};
    for (const role of roles) restarts[role.name] = await scrape(role, 'kubedrac_grant_watch_restarts_total');
    const here = (await grantWatchRestarts.get()).values;
    restarts['quiet namespace (this process)'] = Object.fromEntries(here.map((v) => [`reason="${String(v.labels.reason)}"`, v.value]));
    for (const [who, byReason] of Object.entries(restarts)) {
      rows.push({
        name: `watch restarts 'stalled', ${who}`,
        value: byReason['reason="stalled"'] ?? 0,
        unit: 'restarts',
        target: '~0',
        note: Object.entries(byReason).map(([k, v]) => `${k.replace(/^reason="|"$/g, '')} ${v}`).join(', ') || 'none',
      });
    }
    const writesByOp = await scrape(roles[0] as Role, 'kubedrac_grant_writes_total');
    rows.push({
      name: 'pop3 role grant writes (create+patch) / logins',
      value: ((writesByOp['op="create"'] ?? 0) + (writesByOp['op="patch"'] ?? 0)) / Math.max(1, Object.values(writesByOp).reduce((a, b) => a + b, 0)),
      unit: 'ratio',
      note: Object.entries(writesByOp).map(([k, v]) => `${k.replace(/^op="|"$/g, '')} ${v}`).join(', '),
    });
    fs.writeFileSync(path.join(dir, 'trials.json'), JSON.stringify(trials, null, 1));
    console.log(`  trials, role configs and logs: ${dir}`);
    return rows;
  } finally {
    socketmap?.close();
    await quiet?.stop();
    for (const role of roles.reverse()) await stopRole(role);
    client.close();
    await plane.stop();
  }
}
