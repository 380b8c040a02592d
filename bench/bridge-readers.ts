// Bridge readers benchmark on the local control plane: socketmap lookups/s and Postfix policy
// decisions/s against a GrantCache holding many grants (created through the real API server and
// synced by the cache over list+watch), the listeners running in a process of their own so the
// load generator does not share their event loop. Load: persistent connections, each with a
// window of pipelined requests written in one write and answered in one (as many as the batch),
// a mix of granted addresses, ungranted addresses and (socketmap) the host-name key Postfix asks
// first. Reports the server process's CPU share: the targets are per core.
import { fork, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { startPolicyListener } from '../src/bridge/policy.ts';
import { startSocketmapListener } from '../src/bridge/socketmap.ts';
import { encodeNetstring } from '../src/bridge/netstring.ts';
import { GrantCache } from '../src/grants/cache.ts';
import { grantsPath } from '../src/grants/paths.ts';
import { KubeClient } from '../src/kube/client.ts';
import { ensureNamespace, installCrds } from '../src/kube/crds.ts';
import { ControlPlane } from '../src/local/control-plane.ts';
import { NetworkList } from '../src/net/networks.ts';
import type { Logger } from '../src/observability/log.ts';
import type { BenchOptions, BenchResult } from './types.ts';

const MIN = 60_000;
const NAMESPACE = 'bench-readers';
/** Pipelined load (what the targets are about) and Postfix's own pattern (one lookup per round trip, many smtpd processes). */
const SHAPES = [
  { connections: 4, depth: 64 },
  { connections: 16, depth: 1 },
] as const;
type Shape = (typeof SHAPES)[number];

const ipv4 = (i: number) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;

// ---- the server under test (a child: `node bench/bridge-readers.ts --serve KUBECONFIG`) ----

const silent: Logger = { debug() {}, info() {}, warn() {}, error() {}, child: () => silent };

async function serve(kubeconfig: string): Promise<void> {
  const client = KubeClient.fromPath(kubeconfig);
  const cache = new GrantCache({ client, namespace: NAMESPACE, log: silent });
  const started = performance.now();
  await cache.start();
  const syncMs = performance.now() - started;
  const ctx = { grants: cache, store: { renew: () => Promise.reject(new Error('read-only')), revoke: () => Promise.reject(new Error('read-only')) }, log: silent };
  const allow = NetworkList.parse(['127.0.0.0/8'], 'allow');
  const sm = await startSocketmapListener({ host: '127.0.0.1', port: 0, allow, mapName: 'drac' }, ctx);
  const pl = await startPolicyListener({ host: '127.0.0.1', port: 0, allow }, ctx);
  process.on('message', (m) => {
    if (m === 'cpu') process.send?.({ cpu: process.cpuUsage(), grants: [...cache.entries()].length });
  });
  process.on('disconnect', () => {
    void Promise.all([sm.close(), pl.close(), cache.stop()]).then(() => {
      client.close();
      process.exit(0);
    });
  });
  process.send?.({ socketmap: sm.port, policy: pl.port, syncMs });
}

if (process.argv[2] === '--serve' && process.argv[1] === fileURLToPath(import.meta.url)) {
  await serve(process.argv[3] as string);
}

// ---- the load ----

async function createGrants(client: KubeClient, count: number, concurrency = 48): Promise<number> {
  const started = Date.now();
  const expiresAt = new Date(Date.now() + 60 * MIN).toISOString();
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      for (let i = next++; i < count; i = next++) {
        const address = ipv4(i);
        await client.create(grantsPath(NAMESPACE), {
          apiVersion: 'kubedrac.io/v1alpha1',
          kind: 'RelayGrant',
          metadata: { name: `v4-${address}` },
          spec: { address, user: `user${i}@example.test`, source: 'pop3', expiresAt },
        });
      }
    }),
  );
  return (count / (Date.now() - started)) * 1000;
}

/** Request i of the mix: 2/5 granted addresses, 2/5 ungranted, 1/5 Postfix's host-name key (socketmap) or a missing address (policy). */
function key(i: number, grants: number, hostNameKey: string): string {
  const r = (i * 2654435761) >>> 0;
  switch (i % 5) {
    case 0:
    case 2:
      return ipv4(r % grants);
    case 1:
    case 3:
      return `172.16.${(r >> 8) & 255}.${r & 255}`;
    default:
      return hostNameKey;
  }
}

function policyRequest(address: string): string {
  return [
    'request=smtpd_access_policy',
    'protocol_state=RCPT',
    'protocol_name=ESMTP',
    `client_address=${address}`,
    'client_name=unknown',
    'client_port=41234',
    'reverse_client_name=unknown',
    'server_address=127.0.0.1',
    'server_port=25',
    'helo_name=client.example',
    'sender=someone@client.example',
    'recipient=friend@outside.example',
    'recipient_count=0',
    'queue_id=',
    'instance=2b4f.6569c7a1.3d4e1.0',
    'size=0',
    'etrn_domain=',
    'stress=',
    'sasl_method=',
    'sasl_username=',
    'sasl_sender=',
    'ccert_subject=',
    'ccert_issuer=',
    'ccert_fingerprint=',
    'ccert_pubkey_fingerprint=',
    'encryption_protocol=',
    'encryption_cipher=',
    'encryption_keysize=0',
    'policy_context=',
    'compatibility_level=3.6',
    'mail_version=3.7.11',
    '',
    '',
  ].join('\n');
}

interface Batches {
  depth: number;
  batches: Buffer[];
  /** Bytes that end one answer (`,` for netstrings, the second `\n` of `\n\n` counted as two `\n`). */
  answerEnd: number;
  perAnswer: number;
}

/** 4096 requests of the mix, cut into batches of `depth`. */
function batchesOf(depth: number, request: (i: number) => string): Buffer[] {
  const batches: Buffer[] = [];
  for (let b = 0; b < 4096 / depth; b++) {
    let s = '';
    for (let j = 0; j < depth; j++) s += request(b * depth + j);
    batches.push(Buffer.from(s, 'latin1'));
  }
  return batches;
}

function socketmapBatches(grants: number, depth: number): Batches {
  return { depth, batches: batchesOf(depth, (i) => encodeNetstring(`drac ${key(i, grants, 'unknown')}`)), answerEnd: 44 /* , */, perAnswer: 1 };
}

function policyBatches(grants: number, depth: number): Batches {
  return { depth, batches: batchesOf(depth, (i) => policyRequest(key(i, grants, ''))), answerEnd: 10, perAnswer: 2 };
}

interface LoadResult {
  answers: number;
  granted: number;
  seconds: number;
  serverCpu: number;
  loadCpu: number;
}

function serverCpu(child: ChildProcess): Promise<number> {
  return new Promise((resolve) => {
    child.once('message', (m) => {
      const { cpu } = m as { cpu: NodeJS.CpuUsage };
      resolve((cpu.user + cpu.system) / 1000);
    });
    child.send('cpu');
  });
}

/** `connections` connections, each writing a batch of `b.depth` requests and waiting for its answers; counts over `seconds` after a warm-up. */
async function load(child: ChildProcess, port: number, connections: number, b: Batches, seconds: number, warmupSeconds: number): Promise<LoadResult> {
  let counting = false;
  let stop = false;
  let answers = 0;
  let granted = 0;
  const conns = Array.from({ length: connections }, (_, c) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.setNoDelay(true);
    let next = c * 97;
    let ends = 0;
    const need = b.depth * b.perAnswer;
    const send = () => {
      ends = 0;
      socket.write(b.batches[next++ % b.batches.length] as Buffer);
    };
    socket.on('connect', send);
    socket.on('data', (d: Buffer) => {
      let got = 0;
      let ks = 0;
      for (let i = 0; i < d.length; i++) {
        const x = d[i] as number;
        if (x === b.answerEnd) got++;
        else if (x === 75 /* K: only in OK answers */) ks++;
      }
      ends += got;
      if (counting) {
        answers += got / b.perAnswer;
        granted += ks;
      }
      if (ends >= need) {
        if (stop) socket.end();
        else send();
      }
    });
    socket.on('error', (err) => {
      if (!stop) throw err;
    });
    return socket;
  });
  await new Promise((r) => setTimeout(r, warmupSeconds * 1000));
  const cpu0 = await serverCpu(child);
  const load0 = process.cpuUsage();
  const t0 = performance.now();
  counting = true;
  await new Promise((r) => setTimeout(r, seconds * 1000));
  counting = false;
  const elapsed = (performance.now() - t0) / 1000;
  const cpu1 = await serverCpu(child);
  const loadCpu = process.cpuUsage(load0);
  stop = true;
  for (const s of conns) s.destroy();
  return {
    answers,
    granted,
    seconds: elapsed,
    serverCpu: (cpu1 - cpu0) / 1000 / elapsed,
    loadCpu: (loadCpu.user + loadCpu.system) / 1e6 / elapsed,
  };
}

function rows(what: string, unit: string, target: string | undefined, shape: Shape, runs: LoadResult[]): BenchResult[] {
  const rates = runs.map((r) => r.answers / r.seconds);
  const mean = rates.reduce((s, x) => s + x, 0) / rates.length;
  const cpu = runs.reduce((s, r) => s + r.serverCpu, 0) / runs.length;
  const loadCpu = runs.reduce((s, r) => s + r.loadCpu, 0) / runs.length;
  const grantedShare = runs.reduce((s, r) => s + r.granted, 0) / runs.reduce((s, r) => s + r.answers, 0);
  return [
    {
      name: `${what}/s (${shape.connections} conns x ${shape.depth === 1 ? '1, no pipelining' : `${shape.depth} pipelined`})`,
      value: mean,
      unit,
      ...(target ? { target } : {}),
      note: `${runs.length} runs of ${runs[0]?.seconds.toFixed(0)} s: ${rates.map((r) => r.toFixed(0)).join(', ')}; granted share ${(grantedShare * 100).toFixed(0)}%`,
    },
    { name: `  per server core`, value: mean / cpu, unit, note: 'rate divided by the server process CPU share' },
    { name: `  server process CPU`, value: cpu * 100, unit: '% of a core' },
    { name: `  load generator CPU`, value: loadCpu * 100, unit: '% of a core' },
  ];
}

export async function run({ quick }: BenchOptions): Promise<BenchResult[]> {
  const grants = quick ? 20_000 : 100_000;
  const seconds = quick ? 5 : 6;
  const repeats = 2;
  const plane = new ControlPlane();
  await plane.start();
  const client = plane.client();
  let child: ChildProcess | undefined;
  try {
    await installCrds(client);
    await ensureNamespace(client, NAMESPACE);
    const createRate = await createGrants(client, grants);
    child = fork(fileURLToPath(import.meta.url), ['--serve', plane.kubeconfigPath], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const server = child;
    const ports = await new Promise<{ socketmap: number; policy: number; syncMs: number }>((resolve, reject) => {
      server.once('message', (m) => resolve(m as { socketmap: number; policy: number; syncMs: number }));
      server.once('exit', (code) => reject(new Error(`the readers' server exited with ${code}`)));
    });
    const out: BenchResult[] = [
      { name: `grants in the cache (created at ${createRate.toFixed(0)}/s)`, value: grants, unit: 'grants', note: `initial sync ${ports.syncMs.toFixed(0)} ms` },
    ];
    for (const shape of SHAPES) {
      const pipelined = shape.depth > 1;
      const sm: LoadResult[] = [];
      const pl: LoadResult[] = [];
      const smBatches = socketmapBatches(grants, shape.depth);
      const plBatches = policyBatches(grants, shape.depth);
      for (let i = 0; i < (pipelined ? repeats : 1); i++) {
        sm.push(await load(server, ports.socketmap, shape.connections, smBatches, seconds, 1));
        pl.push(await load(server, ports.policy, shape.connections, plBatches, seconds, 1));
      }
      out.push(...rows('socketmap lookups', 'lookups/s', pipelined ? '>= 50000/s on one core' : undefined, shape, sm));
      out.push(...rows('policy decisions', 'decisions/s', pipelined ? '>= 20000/s on one core' : undefined, shape, pl));
    }
    return out;
  } finally {
    child?.disconnect();
    if (child) await new Promise((r) => (child?.exitCode !== null ? r(undefined) : child.once('exit', r)));
    client.close();
    await plane.stop();
  }
}
