// SMTP benchmark (`npm run bench -- smtp`), one run, loopback, one load generator for both sides:
// (a) relay-granted sessions/s (EHLO, MAIL, RCPT, QUIT) at concurrency 64, ours vs Debian Postfix
//     smtpd with check_client_access hash of the same grant set (BENCHMARKS.md settings);
// (b) relay-decision cost per RCPT with 100k grants in the grant cache's index;
// (c) 10 KB messages/s delivered into a Maildir, ours vs Postfix (virtual(8) into Maildir).
// Our server runs in a child process (`node bench/smtp.ts serve ...`) so the load generator in
// this process does not share its event loop.
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { ConfigReader } from '../src/config/reader.ts';
import { GrantCache } from '../src/grants/cache.ts';
import type { GrantLookup, RelayGrant } from '../src/grants/types.ts';
import type { KubeClient } from '../src/kube/client.ts';
import { createLogger } from '../src/observability/log.ts';
import { parseSmtpConfig } from '../src/smtp/config.ts';
import { MaildirLocalUsers } from '../src/smtp/local-users.ts';
import { RelayPolicy } from '../src/smtp/relay-policy.ts';
import { startSmtpServer } from '../src/smtp/server.ts';
import { startPostfix, type PostfixInstance } from '../harness/postfix.ts';
import { spawnServerUnderTest } from './server-process.ts';
import { percentile, type BenchOptions, type BenchResult } from './types.ts';

const GRANTS = 100_000;
/** The load generator's source addresses (spread over the 4-tuple space), all granted. */
const SOURCES = Array.from({ length: 16 }, (_, i) => `127.0.0.${i + 1}`);

function grantAddress(i: number): string {
  return `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
}

/**
 * The grant cache's real index, filled without an API server: the same objects a list would
 * deliver go through the cache's own indexing code (its private `upsert`), so lookups measure
 * exactly what the SMTP role runs.
 */
function filledGrantCache(extra: string[]): { cache: GrantCache; lookup: GrantLookup } {
  const cache = new GrantCache({ client: {} as KubeClient, namespace: 'bench', log: createLogger('bench') });
  const expiresAt = new Date(Date.now() + 3_600_000).toISOString();
  const upsert = (cache as unknown as { upsert(o: RelayGrant): string | undefined }).upsert.bind(cache);
  const add = (address: string) =>
    upsert({
      apiVersion: 'kubedrac.io/v1alpha1',
      kind: 'RelayGrant',
      metadata: { name: `v4-${address}` },
      spec: { address, user: 'bench', source: 'pop3', expiresAt },
    });
  for (let i = 0; i < GRANTS; i++) add(grantAddress(i));
  for (const a of extra) add(a);
  return { cache, lookup: { synced: true, lookup: (ip, nowMs) => cache.lookup(ip, nowMs) } };
}

// ---------------------------------------------------------------------------------------------
// Our server as a child process.

async function serve(dir: string): Promise<void> {
  const { lookup } = filledGrantCache(SOURCES);
  const mailRoot = path.join(dir, 'mail');
  for (const sub of ['new', 'cur', 'tmp']) fs.mkdirSync(path.join(mailRoot, 'bench', sub), { recursive: true });
  const config = parseSmtpConfig(
    new ConfigReader(
      {
        hostname: 'ours.bench.test',
        listen: { host: '127.0.0.1', port: 0 },
        localDomains: ['example.org'],
        mailRoot,
        outbox: path.join(dir, 'outbox'),
        maxClients: 10_000,
        maxClientsPerAddress: 10_000,
        liveLookup: { enabled: false },
      },
      'smtp',
    ),
  );
  const server = await startSmtpServer(config, {
    grants: lookup,
    log: createLogger('smtp'),
    localUsers: new MaildirLocalUsers(mailRoot, '%u'),
  });
  process.stdout.write(`PORT ${server.port}\n`);
  process.on('SIGTERM', () => {
    void server.close().then(() => process.exit(0));
  });
}

async function startOurs(dir: string): Promise<{ port: number; child: ChildProcess; maildir: string }> {
  const { port, child } = await spawnServerUnderTest(new URL(import.meta.url).pathname, ['serve', dir]);
  return { port, child, maildir: path.join(dir, 'mail', 'bench') };
}

// ---------------------------------------------------------------------------------------------
// The load generator: plain sockets, one SMTP session after another per connection slot.

interface Session {
  steps: (string | Buffer)[];
  /** Reply code expected after each step (the greeting first). */
  expect: number[];
}

function runSession(port: number, local: string, s: Session): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port, localAddress: local });
    socket.setNoDelay(true);
    let buf = '';
    let step = 0;
    let ok = true;
    let done = false;
    const finish = (result: boolean) => {
      if (done) return;
      done = true;
      socket.destroy();
      resolve(result);
    };
    socket.on('error', () => finish(false));
    socket.on('close', () => finish(ok && step >= s.expect.length));
    socket.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      for (;;) {
        // A complete reply ends with a line `NNN text`.
        const m = /(?:^|\n)(\d{3}) [^\n]*\n/.exec(buf);
        if (!m) return;
        const code = Number(m[1]);
        buf = buf.slice((m.index ?? 0) + m[0].length);
        if (code !== s.expect[step]) ok = false;
        step++;
        if (step >= s.expect.length) return finish(ok);
        const next = s.steps[step - 1] as string | Buffer;
        socket.write(typeof next === 'string' ? `${next}\r\n` : next);
      }
    });
  });
}

interface LoadResult {
  perSecond: number;
  failures: number;
  p50ms: number;
  p99ms: number;
  /** Share of the machine's CPU the load generator used. */
  loadCpu: number;
}

async function load(port: number, session: Session, concurrency: number, warmupMs: number, windowMs: number): Promise<LoadResult> {
  let stop = false;
  let counting = false;
  let completed = 0;
  let failures = 0;
  const latencies: number[] = [];
  const workers = Array.from({ length: concurrency }, async (_, w) => {
    let n = 0;
    while (!stop) {
      const started = performance.now();
      const ok = await runSession(port, SOURCES[(w + n++) % SOURCES.length] as string, session);
      if (!counting) continue;
      if (ok) {
        completed++;
        latencies.push(performance.now() - started);
      } else failures++;
    }
  });
  await new Promise((r) => setTimeout(r, warmupMs));
  counting = true;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, windowMs));
  const elapsed = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  counting = false;
  stop = true;
  await Promise.all(workers);
  latencies.sort((a, b) => a - b);
  return {
    perSecond: (completed / elapsed) * 1000,
    failures,
    p50ms: percentile(latencies, 50),
    p99ms: percentile(latencies, 99),
    loadCpu: (cpu.user + cpu.system) / 1000 / elapsed / os.cpus().length,
  };
}

const relaySession: Session = {
  steps: ['EHLO loadgen.bench.test', 'MAIL FROM:<load@bench.test>', 'RCPT TO:<someone@remote.test>', 'QUIT'],
  expect: [220, 250, 250, 250, 221],
};

function messageSession(): Session {
  const line = `${'x'.repeat(98)}\r\n`;
  const body = `From: load@bench.test\r\nTo: bench@example.org\r\nSubject: bench\r\n\r\n${line.repeat(100)}`;
  return {
    steps: ['EHLO loadgen.bench.test', 'MAIL FROM:<load@bench.test>', 'RCPT TO:<bench@example.org>', 'DATA', Buffer.from(`${body}.\r\n`), 'QUIT'],
    expect: [220, 250, 250, 250, 354, 250, 221],
  };
}

type Measured = ReturnType<typeof summarize>;

function summarize(runs: LoadResult[]) {
  const rates = runs.map((r) => r.perSecond);
  return {
    mean: rates.reduce((a, b) => a + b, 0) / rates.length,
    min: Math.min(...rates),
    max: Math.max(...rates),
    failures: runs.reduce((a, r) => a + r.failures, 0),
    p50: runs.reduce((a, r) => a + r.p50ms, 0) / runs.length,
    p99: Math.max(...runs.map((r) => r.p99ms)),
    loadCpu: runs.reduce((a, r) => a + r.loadCpu, 0) / runs.length,
  };
}

/**
 * Measure both sides `reps` times, alternating ours and the peer, so that a change in the
 * machine's background load during the run hits both alike. Mean and range per side.
 */
async function measurePair(
  ourPort: number,
  peerPort: number,
  session: Session,
  reps: number,
  warmupMs: number,
  windowMs: number,
  afterPeer: () => Promise<void> = () => Promise.resolve(),
): Promise<[Measured, Measured]> {
  const ours: LoadResult[] = [];
  const peer: LoadResult[] = [];
  for (let i = 0; i < reps; i++) {
    ours.push(await load(ourPort, session, 64, warmupMs, windowMs));
    peer.push(await load(peerPort, session, 64, warmupMs, windowMs));
    await afterPeer();
  }
  return [summarize(ours), summarize(peer)];
}

function describeRun(m: Measured): string {
  return `range ${m.min.toFixed(0)}-${m.max.toFixed(0)}, p50 ${m.p50.toFixed(1)} ms, p99 ${m.p99.toFixed(1)} ms, failures ${m.failures}, loadgen CPU ${(m.loadCpu * 100).toFixed(0)}%`;
}

function decisionCost(iterations: number): { hitNs: number; missNs: number } {
  const { lookup } = filledGrantCache([]);
  const policy = new RelayPolicy({
    localDomains: ['example.org'],
    localUsers: { userFor: () => undefined },
    trustedNetworks: { contains: () => false },
    grants: lookup,
  });
  const hits = Array.from({ length: 1024 }, (_, i) => grantAddress((i * 9973) % GRANTS));
  const misses = Array.from({ length: 1024 }, (_, i) => `192.0.2.${i % 250}`);
  const time = (ips: string[], want: string) => {
    for (let i = 0; i < 50_000; i++) void policy.decide({ clientIp: ips[i & 1023] as string, recipient: 'x@remote.test' });
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < iterations; i++) {
      const d = policy.decide({ clientIp: ips[i & 1023] as string, recipient: 'x@remote.test' });
      if (!('decision' in d) || d.decision !== want) throw new Error(`unexpected decision for ${ips[i & 1023]}`);
    }
    return Number(process.hrtime.bigint() - t0) / iterations;
  };
  return { hitNs: time(hits, 'allowed'), missNs: time(misses, 'denied') };
}

export async function run({ quick }: BenchOptions): Promise<BenchResult[]> {
  const warmupMs = quick ? 1000 : 2000;
  const windowMs = quick ? 3000 : 10_000;
  const reps = quick ? 1 : 2;
  const rows: BenchResult[] = [];

  // (b) first, while the machine is quiet.
  const cost = decisionCost(quick ? 200_000 : 1_000_000);
  rows.push({ name: 'relay decision, grant hit (100k grants)', value: cost.hitNs / 1000, unit: 'µs/RCPT', target: '<= 2 µs' });
  rows.push({ name: 'relay decision, no grant (100k grants)', value: cost.missNs / 1000, unit: 'µs/RCPT', target: '<= 2 µs' });

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-smtp-'));
  const grantLines = [...Array.from({ length: GRANTS }, (_, i) => `${grantAddress(i)} OK`), ...SOURCES.map((s) => `${s} OK`)].join('\n');
  let postfix: PostfixInstance | undefined;
  let ours: Awaited<ReturnType<typeof startOurs>> | undefined;
  try {
    postfix = await startPostfix({
      domains: ['example.org'],
      files: { grants: `${grantLines}\n` },
      postmap: ['grants'],
      mainCf: [
        // The load generator's addresses are not in mynetworks: the grant map decides.
        'mynetworks = 192.0.2.1/32',
        'smtpd_relay_restrictions = permit_mynetworks, check_client_access hash:$config_directory/grants, reject_unauth_destination',
        'in_flow_delay = 0',
        'smtpd_client_connection_count_limit = 0',
        'smtpd_client_connection_rate_limit = 0',
        'default_process_limit = 200',
        'smtpd_peername_lookup = no',
      ],
    });
    ours = await startOurs(dir);

    // (a) relay-granted sessions.
    const [oursA, pfA] = await measurePair(ours.port, postfix.port, relaySession, reps, warmupMs, windowMs);
    rows.push({
      name: 'relay-granted sessions/s, c=64 (EHLO MAIL RCPT QUIT)',
      value: oursA.mean,
      unit: 'sessions/s',
      peer: pfA.mean,
      ratio: oursA.mean / pfA.mean,
      target: '>= 1.0x Postfix',
      note: `ours ${describeRun(oursA)}; Postfix ${describeRun(pfA)}`,
    });

    // (c) 10 KB messages into a Maildir.
    const session = messageSession();
    // Postfix answers 250 once its queue file is safe and delivers into the Maildir afterwards;
    // wait for that backlog after each of its windows, so it never runs during a measurement.
    const pf = postfix;
    let drainMs = 0;
    const drain = async () => {
      const started = Date.now();
      let last = -1;
      for (let stable = 0; stable < 3 && Date.now() - started < 60_000; ) {
        await new Promise((r) => setTimeout(r, 200));
        const dirNew = path.join(pf.maildir, 'new');
        const n = fs.existsSync(dirNew) ? fs.readdirSync(dirNew).length : 0;
        stable = n === last ? stable + 1 : 0;
        last = n;
      }
      drainMs += Date.now() - started - 600;
    };
    const [oursC, pfC] = await measurePair(ours.port, postfix.port, session, reps, warmupMs, windowMs, drain);
    rows.push({
      name: '10 KB messages/s into Maildir, c=64',
      value: oursC.mean,
      unit: 'msgs/s',
      peer: pfC.mean,
      ratio: oursC.mean / pfC.mean,
      target: '>= 1.0x Postfix',
      note: `ours: in the Maildir (fsynced) before 250; Postfix: 250 once its queue file is fsynced, virtual(8) then needed ${(drainMs / 1000).toFixed(1)} s more in all to deliver the backlog (not counted). ours ${describeRun(oursC)}; Postfix ${describeRun(pfC)}`,
    });
  } finally {
    if (ours) {
      ours.child.kill('SIGTERM');
      await new Promise((r) => ours?.child.once('exit', r));
    }
    postfix?.cleanup();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}

if (process.argv[2] === 'serve' && process.argv[1] === new URL(import.meta.url).pathname) {
  await serve(process.argv[3] as string);
}
