// DRAC RPC benchmark on the local control plane: logins as `dracauth()` makes them — a fresh UDP
// socket, the portmapper asked where program 900101 is (rpcbind v4 GETADDR, what Debian's
// libtirpc clnt_create sends, or PMAP v2 GETPORT, what classic builds send), then ADD over UDP — against the DRAC listener running in a process
// of its own with a real GrantStore. Three mixes: realistic (a pool of addresses, each logging in
// about three times within the renew interval, so GrantStore coalesces most), repeats only (no
// API write: the protocol's ceiling) and first logins only (one API write per ADD: the API's
// floor). Also the real rpcgen/libtirpc client, one process per login, for comparison.
import { execFile, fork, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { ADDSTAT, DRAC_PROGRAM, startDracRpcListener } from '../src/bridge/drac/drac-rpc.ts';
import { ACCEPT, decodeReply, encodeCall } from '../src/bridge/drac/oncrpc.ts';
import { hostOfUniversalAddress, PMAP_PROGRAM } from '../src/bridge/drac/portmap.ts';
import { XdrReader, XdrWriter } from '../src/bridge/drac/xdr.ts';
import { GrantCache } from '../src/grants/cache.ts';
import { GrantStore } from '../src/grants/store.ts';
import { KubeClient } from '../src/kube/client.ts';
import { ensureNamespace, installCrds } from '../src/kube/crds.ts';
import { ControlPlane } from '../src/local/control-plane.ts';
import { NetworkList } from '../src/net/networks.ts';
import type { Logger } from '../src/observability/log.ts';
import { registry } from '../src/observability/metrics.ts';
import { percentile, type BenchOptions, type BenchResult } from './types.ts';

const MIN = 60_000;
/** A loopback address of the benchmark's own: its portmapper takes port 111 there. */
const HOST = '127.0.0.40';
const NAMESPACE = 'bench-drac';
const CONCURRENCY = 32;
const exec = promisify(execFile);

// ---- the server under test (a child process: `node bench/bridge-drac.ts --serve KUBECONFIG`) ----

const silent: Logger = { debug() {}, info() {}, warn() {}, error() {}, child: () => silent };

async function serve(kubeconfig: string): Promise<void> {
  const client = KubeClient.fromPath(kubeconfig);
  // As the bridge role: its writers skip writes on what their own cache saw.
  const grants = new GrantCache({ client, namespace: NAMESPACE, indexUsers: false, log: silent });
  await grants.start();
  const store = new GrantStore({ client, namespace: NAMESPACE, ttlMs: 30 * MIN, renewIntervalMs: 5 * MIN, ipv6PrefixLength: 64, grants });
  // A writer-only bridge reads no grants.
  const listener = await startDracRpcListener(
    { host: HOST, port: 0, allow: NetworkList.parse(['127.0.0.0/8'], 'allow'), portmapper: { host: HOST, port: 111 } },
    { grants: { synced: false, lookup: () => undefined }, store, log: silent },
  );
  process.on('message', (m) => {
    if (m !== 'stats') return;
    void registry.getMetricsAsJSON().then((all) => {
      const writes = all.find((x) => x.name === 'kubedrac_grant_writes_total')?.values ?? [];
      const by = (op: string) => writes.filter((v) => v.labels.op === op).reduce((s, v) => s + v.value, 0);
      process.send?.({ create: by('create'), patch: by('patch'), skipped: by('skipped'), failed: by('failed') });
    });
  });
  process.on('disconnect', () => {
    void listener.close().then(() => {
      store.close();
      client.close();
      process.exit(0);
    });
  });
  process.send?.({ port: listener.port });
}

if (process.argv[2] === '--serve' && process.argv[1] === fileURLToPath(import.meta.url)) {
  await serve(process.argv[3] as string);
}

// ---- the load: one dracauth() per login ----

interface WriteStats {
  create: number;
  patch: number;
  skipped: number;
  failed: number;
}

function stats(child: ChildProcess): Promise<WriteStats> {
  return new Promise((resolve) => {
    child.once('message', (m) => resolve(m as WriteStats));
    child.send('stats');
  });
}

/** Send `msg` until a reply with its xid arrives (1 s retransmit, as clnt_dg would, 5 tries). */
function exchange(socket: dgram.Socket, msg: Buffer, port: number, counters: { retransmits: number }): Promise<Buffer> {
  const xid = msg.readUInt32BE(0);
  return new Promise((resolve, reject) => {
    let tries = 0;
    const send = () => {
      if (tries++ >= 5) {
        socket.off('message', onMessage);
        reject(new Error(`no reply to xid ${xid} after 5 tries`));
        return;
      }
      if (tries > 1) counters.retransmits++;
      socket.send(msg, port, HOST);
      timer = setTimeout(send, 1000);
    };
    let timer: NodeJS.Timeout;
    const onMessage = (reply: Buffer) => {
      if (reply.length < 4 || reply.readUInt32BE(0) !== xid) return;
      clearTimeout(timer);
      socket.off('message', onMessage);
      resolve(reply);
    };
    socket.on('message', onMessage);
    send();
  });
}

let nextXid = 0x1000;

/**
 * One login as dracauth() makes it: a new socket, the portmapper asked where 900101 v1 udp is,
 * then ADD. `classic` asks with PMAP v2 GETPORT (SOCK_RPC builds); otherwise with rpcbind v4
 * GETADDR, as Debian's libtirpc does. Resolves with the addstat.
 */
async function dracauth(ipv4: number, classic: boolean, counters: { retransmits: number }): Promise<number> {
  const socket = dgram.createSocket('udp4');
  await new Promise<void>((r) => socket.bind(0, '127.0.0.1', r));
  try {
    let port: number;
    if (classic) {
      const mapping = new XdrWriter().uint32(DRAC_PROGRAM).uint32(1).uint32(17).uint32(0).toBuffer();
      const where = decodeReply(await exchange(socket, encodeCall(nextXid++, PMAP_PROGRAM, 2, 3, mapping), 111, counters));
      if (where.kind !== 'accepted' || where.stat !== ACCEPT.SUCCESS) throw new Error(`GETPORT failed: ${JSON.stringify(where)}`);
      port = new XdrReader(where.results).uint32();
    } else {
      const rpcb = new XdrWriter().uint32(DRAC_PROGRAM).uint32(1).string('udp').string(`${HOST}.0.111`).string('').toBuffer();
      const where = decodeReply(await exchange(socket, encodeCall(nextXid++, PMAP_PROGRAM, 4, 3, rpcb), 111, counters));
      if (where.kind !== 'accepted' || where.stat !== ACCEPT.SUCCESS) throw new Error(`GETADDR failed: ${JSON.stringify(where)}`);
      const uaddr = new XdrReader(where.results).string(255);
      if (!hostOfUniversalAddress(uaddr)) throw new Error(`GETADDR gave ${JSON.stringify(uaddr)}`);
      const parts = uaddr.split('.');
      port = Number(parts[parts.length - 2]) * 256 + Number(parts[parts.length - 1]);
    }
    if (port === 0) throw new Error('the portmapper does not know program 900101');
    const args = new XdrWriter().uint32(ipv4).toBuffer();
    const added = decodeReply(await exchange(socket, encodeCall(nextXid++, DRAC_PROGRAM, 1, 1, args), port, counters));
    if (added.kind !== 'accepted' || added.stat !== ACCEPT.SUCCESS) throw new Error(`ADD failed: ${JSON.stringify(added)}`);
    return new XdrReader(added.results).uint32();
  } finally {
    socket.close();
  }
}

/** 10.x.y.z for pool index i (base keeps the phases' pools apart). */
const addressOf = (base: number, i: number) => ((10 << 24) | (base << 16) | i) >>> 0;

interface PhaseResult {
  adds: number;
  seconds: number;
  latencies: number[];
  writes: number;
  retransmits: number;
}

async function phase(child: ChildProcess, addresses: number[]): Promise<PhaseResult> {
  const before = await stats(child);
  const latencies: number[] = [];
  const counters = { retransmits: 0 };
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      for (let i = next++; i < addresses.length; i = next++) {
        const t0 = performance.now();
        const stat = await dracauth(addresses[i] as number, i % 2 === 1, counters);
        latencies.push(performance.now() - t0);
        if (stat !== ADDSTAT.ADD_SUCCESS) throw new Error(`ADD answered ${stat}`);
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  const after = await stats(child);
  latencies.sort((a, b) => a - b);
  return { adds: addresses.length, seconds, latencies, writes: after.create + after.patch - before.create - before.patch, retransmits: counters.retransmits };
}

function rows(label: string, r: PhaseResult, note: string): BenchResult[] {
  const extra = r.retransmits > 0 ? `; ${r.retransmits} retransmits` : '';
  return [
    { name: `DRAC ADD/s, ${label}`, value: r.adds / r.seconds, unit: 'ADD/s', note: `${r.adds} logins, ${CONCURRENCY} concurrent; each a new socket, GETADDR or GETPORT (alternately), then ADD${extra}` },
    { name: `  login latency p50 (${label})`, value: percentile(r.latencies, 50), unit: 'ms' },
    { name: `  login latency p99 (${label})`, value: percentile(r.latencies, 99), unit: 'ms' },
    { name: `  API writes per ADD (${label})`, value: r.writes / r.adds, unit: 'writes/ADD', note },
  ];
}

/** The rpcgen/libtirpc client of the tests, one process per login as a login server runs dracauth(); undefined without gcc/rpcgen. */
async function libtirpcLogins(logins: number): Promise<BenchResult[]> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-drac-'));
  try {
    const src = path.join(import.meta.dirname, '..', 'test', 'bridge', 'drac', 'rpc-client');
    for (const f of ['drac.x', 'drac-client.c']) fs.copyFileSync(path.join(src, f), path.join(dir, f));
    try {
      for (const [flag, out] of [['-h', 'drac.h'], ['-l', 'drac_clnt.c'], ['-c', 'drac_xdr.c']] as const) await exec('rpcgen', [flag, '-o', out, 'drac.x'], { cwd: dir });
      await exec('gcc', ['-O1', '-I/usr/include/tirpc', '-o', 'drac-client', 'drac-client.c', 'drac_clnt.c', 'drac_xdr.c', '-ltirpc'], { cwd: dir });
    } catch {
      return [{ name: 'libtirpc client (process per login)', value: NaN, unit: 'ADD/s', note: 'skipped: gcc/rpcgen/libtirpc-dev not installed' }];
    }
    const latencies: number[] = [];
    const started = performance.now();
    for (let i = 0; i < logins; i++) {
      const t0 = performance.now();
      const { stdout } = await exec(path.join(dir, 'drac-client'), [HOST, '1', `10.250.0.${i % 50}`], { timeout: 30_000 });
      if (stdout.trim() !== '0') throw new Error(`libtirpc client printed ${stdout}`);
      latencies.push(performance.now() - t0);
    }
    const seconds = (performance.now() - started) / 1000;
    latencies.sort((a, b) => a - b);
    return [
      { name: 'libtirpc client, process per login (sequential)', value: logins / seconds, unit: 'ADD/s', note: `${logins} logins over ${Math.min(50, logins)} addresses (the first login of each writes); includes fork+exec` },
      { name: '  libtirpc login latency p50', value: percentile(latencies, 50), unit: 'ms' },
    ];
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Deterministic shuffle-free draw: each login picks an address of the pool (xorshift). */
function draw(poolBase: number, poolSize: number, logins: number): number[] {
  let seed = 0x9e3779b9;
  const out: number[] = [];
  for (let i = 0; i < logins; i++) {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    out.push(addressOf(poolBase, (seed >>> 0) % poolSize));
  }
  return out;
}

export async function run({ quick }: BenchOptions): Promise<BenchResult[]> {
  const logins = quick ? 3000 : 12_000;
  const pool = logins / 3;
  const plane = new ControlPlane();
  await plane.start();
  const client = plane.client();
  let child: ChildProcess | undefined;
  try {
    await installCrds(client);
    await ensureNamespace(client, NAMESPACE);
    child = fork(fileURLToPath(import.meta.url), ['--serve', plane.kubeconfigPath], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const server = child;
    await new Promise<void>((resolve, reject) => {
      server.once('message', () => resolve());
      server.once('exit', (code) => reject(new Error(`the DRAC server exited with ${code} (port 111 on ${HOST} taken? not root?)`)));
    });
    // Warm-up: the API server's first writes to a new resource are slow.
    await phase(server, Array.from({ length: 200 }, (_, i) => addressOf(254, i)));

    const out: BenchResult[] = [];
    const mixed = await phase(server, draw(1, pool, logins));
    out.push(...rows('realistic mix', mixed, `${pool} addresses, ~3 logins each within the renew interval (GrantStore writes once per address)`));
    const repeats = await phase(server, draw(1, pool, logins));
    out.push(...rows('repeats only', repeats, 'every address already granted: coalesced, no API call'));
    const fresh = await phase(server, Array.from({ length: pool }, (_, i) => addressOf(2, i)));
    out.push(...rows('first logins only', fresh, 'every ADD creates a RelayGrant'));
    out.push(...(await libtirpcLogins(quick ? 50 : 200)));
    return out;
  } finally {
    child?.disconnect();
    if (child) await new Promise((r) => (child?.exitCode !== null ? r(undefined) : child.once('exit', r)));
    client.close();
    await plane.stop();
  }
}
