// The limits of one control plane (`npm run bench -- scale`, issue 15; docs/scaling.md reads its
// figures). For each grant shape and size, on a control plane of its own (etcd quota 8 GiB):
// - one grant's bytes in etcd as created, as renewed, and as server-side apply would store it;
// - N grants written as the roles write them (GrantStore's object, 64 requests in flight), then
//   etcd compacted and defragmented: its database size, per grant and in total; API server and
//   etcd RSS; the real `kube-drac smtp` role's RSS and cache sync time; the real operator's RSS;
//   a GrantCache relist after a 410, by paged list and by watch-list (time, API server CPU, peak RSS);
// - churn: renewals of random grants at a paced rate while 1, 4 or 16 watching processes
//   (bench/scale-watcher.ts) time each event; the highest rate that keeps the propagation p99
//   <= 50 ms, the API server's CPU time (from /proc) per 1,000 writes/s and per watcher, and the
//   delete -> every watcher's DELETED lag (the revocation path) at the largest fan-out.
// Shapes: `managedFields`, the objects of 6866b72 (every write keeps the API server's
// field-ownership record); `stripped`, GrantStore today (a renewal clears it: see renewalPatch).
// Sizes and shapes: KUBE_DRAC_SCALE_SIZES=100000,300000 KUBE_DRAC_SCALE_SHAPES=stripped
// (defaults: 100k, 300k, 1M and both shapes; --quick: 10k). Nothing is kept in the repo.
import { fork, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { grantKeyFor } from '../src/grants/address.ts';
import { GrantCache } from '../src/grants/cache.ts';
import { grantsPath } from '../src/grants/paths.ts';
import { grantObject, GrantStore, renewalPatch } from '../src/grants/store.ts';
import type { RelayGrant } from '../src/grants/types.ts';
import type { KubeClient } from '../src/kube/client.ts';
import { ensureNamespace, installCrds } from '../src/kube/crds.ts';
import { ControlPlane, freePort } from '../src/local/control-plane.ts';
import { createLogger } from '../src/observability/log.ts';
import { startRole, stopRole } from './revocation.ts';
import { percentile, type BenchOptions, type BenchResult } from './types.ts';

const NAMESPACE = 'bench-scale';
const TTL_MS = 30 * 60_000;
const CHURN_MAX_INFLIGHT = 256;
const TARGET_P99_MS = 50;
/** A role's first list of a million grants on a loaded machine takes minutes. */
const ROLE_READY_MS = 30 * 60_000;
const TARGET_REVOCATION_MS = 2000;
/** Paced renewal rates tried with one watcher, until one misses the p99 target or its pace. */
const RAMP = [25, 50, 100, 200, 400, 800, 1600, 3200];
const WATCHER_COUNTS = [1, 4, 16];
const WATCHER_SCRIPT = new URL('./scale-watcher.ts', import.meta.url).pathname;
const CLK_TCK = 100;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

type Shape = 'managedFields' | 'stripped';
const SHAPES: Shape[] = ['managedFields', 'stripped'];

function ipv4(i: number): string {
  return `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
}

function load(): string {
  return os.loadavg().map((l) => l.toFixed(2)).join(' ');
}

// ---------------------------------------------------------------------------------------------
// Processes: RSS and CPU time from /proc.

function rssBytes(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

/** User + system CPU seconds of a process so far. */
function cpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

const MB = (bytes: number) => bytes / 1e6;

// ---------------------------------------------------------------------------------------------
// etcd, through its v3 JSON gateway.

async function etcdCall<T>(plane: ControlPlane, route: string, body: unknown): Promise<T> {
  const res = await fetch(`${plane.etcdUrl}/v3/${route}`, { method: 'POST', body: JSON.stringify(body) });
  if (!res.ok) throw new Error(`etcd ${route}: ${res.status} ${await res.text()}`);
  return (await res.json()) as T;
}

/** The bytes etcd holds for one grant (JSON, as the API server stores custom resources). */
async function storedValue(plane: ControlPlane, name: string): Promise<Buffer> {
  const key = Buffer.from(`/registry/kubedrac.io/relaygrants/${NAMESPACE}/${name}`).toString('base64');
  const r = await etcdCall<{ kvs?: { value: string }[] }>(plane, 'kv/range', { key });
  const value = r.kvs?.[0]?.value;
  if (value === undefined) throw new Error(`${name} is not in etcd`);
  return Buffer.from(value, 'base64');
}

/** Compact to the current revision and defragment; the database size after that. */
async function compactedDbBytes(plane: ControlPlane): Promise<number> {
  const before = await etcdCall<{ header: { revision: string } }>(plane, 'maintenance/status', {});
  await etcdCall(plane, 'kv/compaction', { revision: before.header.revision, physical: true }).catch((err: Error) => {
    if (!/compacted/.test(err.message)) throw err; // the API server may just have compacted it
  });
  await etcdCall(plane, 'maintenance/defragment', {});
  const after = await etcdCall<{ dbSize: string }>(plane, 'maintenance/status', {});
  return Number(after.dbSize);
}

// ---------------------------------------------------------------------------------------------
// Writes, in each shape.

/** The renewal merge-patch of 6866b72: the same fields, the field-ownership record left alone. */
function patchKeepingManagedFields(grant: RelayGrant): Record<string, unknown> {
  const { managedFields: _kept, ...metadata } = renewalPatch(grant).metadata as Record<string, unknown>;
  return { metadata, spec: grant.spec };
}

function grantFor(i: number, nowMs = Date.now()): RelayGrant {
  return grantObject(grantKeyFor(ipv4(i), 64), `user${i}@example.test`, 'pop3', nowMs + TTL_MS, nowMs);
}

/** A renewal of grant i in `shape`: the bench's stand-in for a login that writes. */
type Renewer = (i: number) => Promise<unknown>;

function renewerFor(shape: Shape, client: KubeClient): { renew: Renewer; close: () => void } {
  if (shape === 'managedFields') {
    return { renew: (i) => client.mergePatch(grantsPath(NAMESPACE, `v4-${ipv4(i)}`), patchKeepingManagedFields(grantFor(i))), close: () => undefined };
  }
  // No cache: every renew() writes (the coalescing is not what is measured here).
  const store = new GrantStore({ client, namespace: NAMESPACE, ttlMs: TTL_MS, renewIntervalMs: 5 * 60_000, ipv6PrefixLength: 64 });
  return { renew: (i) => store.renew(ipv4(i), `user${i}@example.test`, 'pop3'), close: () => store.close() };
}

/**
 * Grants [0, size) put straight into etcd, each a copy of `template` (one grant the API server
 * stored after the shape's writes) with its own name, address, user, uid and times: the bytes the
 * API server would have stored, at etcd's pace. Through the API server this shared machine
 * created ~150 grants/s (load 14), so a million would have taken two hours; the API server's watch
 * cache takes them in from etcd as it takes in its own writes.
 */
async function fillThroughEtcd(plane: ControlPlane, template: RelayGrant, size: number): Promise<number> {
  const started = performance.now();
  const batch = 100; // etcd's --max-txn-ops is 128
  let next = 0;
  let lastReport = started;
  const nowMs = Date.now();
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      for (let from = (next += batch) - batch; from < size; from = (next += batch) - batch) {
        const puts = [];
        for (let i = from; i < Math.min(size, from + batch); i++) {
          const g = grantFor(i, nowMs);
          const obj = {
            ...template,
            metadata: { ...template.metadata, name: g.metadata.name, uid: crypto.randomUUID(), annotations: g.metadata.annotations },
            spec: g.spec,
          };
          const key = Buffer.from(`/registry/kubedrac.io/relaygrants/${NAMESPACE}/${g.metadata.name}`).toString('base64');
          puts.push({ requestPut: { key, value: Buffer.from(JSON.stringify(obj)).toString('base64') } });
        }
        await etcdCall(plane, 'kv/txn', { success: puts });
        if (performance.now() - lastReport > 30_000) {
          lastReport = performance.now();
          console.log(`  ${from} of ${size} grants written, load ${load()}`);
        }
      }
    }),
  );
  return (size / (performance.now() - started)) * 1000;
}

// ---------------------------------------------------------------------------------------------
// Watchers and churn.

interface Watcher {
  child: ChildProcess;
  take(): Promise<{ latencies: number[]; deletedAt: Record<string, number> }>;
}

async function startWatchers(kubeconfig: string, count: number): Promise<Watcher[]> {
  return Promise.all(
    Array.from({ length: count }, async () => {
      const child = fork(WATCHER_SCRIPT, [kubeconfig, NAMESPACE], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      await new Promise<void>((resolve, reject) => {
        child.once('exit', (code) => reject(new Error(`watcher exited with ${code}`)));
        child.on('message', (m: { op: string }) => m.op === 'watching' && resolve());
      });
      const take = () =>
        new Promise<{ latencies: number[]; deletedAt: Record<string, number> }>((resolve) => {
          const onMessage = (m: { op: string; latencies: number[]; deletedAt: Record<string, number> }) => {
            if (m.op !== 'taken') return;
            child.off('message', onMessage);
            resolve(m);
          };
          child.on('message', onMessage);
          child.send({ op: 'take' });
        });
      return { child, take };
    }),
  );
}

async function stopWatchers(watchers: Watcher[]): Promise<void> {
  await Promise.all(
    watchers.map(async (w) => {
      const exited = new Promise((r) => w.child.once('exit', r));
      w.child.removeAllListeners('exit');
      w.child.send({ op: 'exit' });
      await Promise.race([exited, sleep(5000)]);
      if (w.child.exitCode === null) w.child.kill('SIGKILL');
    }),
  );
}

interface ChurnResult {
  rate: number;
  achieved: number;
  failed: number;
  p50: number;
  p99: number;
  events: number;
  apiCores: number;
  etcdCores: number;
  benchCores: number;
  watcherCores: number;
  revocations: number[];
}

/**
 * Renewals of random grants paced at `rate`/s for `seconds` (at most CHURN_MAX_INFLIGHT in
 * flight: a server that cannot keep up shows as an achieved rate below the pace), with
 * `deletes` grants deleted along the way, timed until every watcher saw them go.
 */
async function churn(plane: ControlPlane, watchers: Watcher[], renew: Renewer, size: number, rate: number, seconds: number, deletes: number[] = []): Promise<ChurnResult> {
  const client = plane.client();
  await Promise.all(watchers.map((w) => w.take())); // drop what came before
  const apiPid = plane.pidOf('kube-apiserver');
  const etcdPid = plane.pidOf('etcd');
  const cpu0 = { api: cpuSeconds(apiPid), etcd: cpuSeconds(etcdPid), bench: process.cpuUsage(), watchers: watchers.map((w) => cpuSeconds(w.child.pid)) };
  const started = performance.now();
  const end = started + seconds * 1000;
  let due = 0;
  let done = 0;
  let failed = 0;
  let inflight = 0;
  const deleteSentAt: Record<string, number> = {};
  const deleteGap = (seconds * 1000) / (deletes.length + 1);
  let nextDelete = 0;
  const running = new Set<Promise<void>>();
  while (performance.now() < end) {
    const elapsed = performance.now() - started;
    const shouldHave = Math.floor((elapsed / 1000) * rate);
    while (due < shouldHave && inflight < CHURN_MAX_INFLIGHT) {
      due++;
      inflight++;
      const p = renew(Math.floor(Math.random() * size)).then(
        () => void done++,
        () => void failed++,
      ).finally(() => {
        inflight--;
        running.delete(p);
      });
      running.add(p);
    }
    if (due < shouldHave) due = shouldHave; // behind: those writes are lost, the achieved rate says so
    if (nextDelete < deletes.length && elapsed >= deleteGap * (nextDelete + 1)) {
      const name = `v4-${ipv4(deletes[nextDelete++] as number)}`;
      deleteSentAt[name] = Date.now();
      void client.delete(grantsPath(NAMESPACE, name)).catch(() => undefined);
    }
    await sleep(5);
  }
  await Promise.all(running);
  const wall = (performance.now() - started) / 1000;
  const cpu1 = { api: cpuSeconds(apiPid), etcd: cpuSeconds(etcdPid), bench: process.cpuUsage(cpu0.bench), watchers: watchers.map((w) => cpuSeconds(w.child.pid)) };
  await sleep(1000); // the last events on their way
  const taken = await Promise.all(watchers.map((w) => w.take()));
  const latencies = taken.flatMap((t) => t.latencies).sort((a, b) => a - b);
  const revocations = Object.entries(deleteSentAt).map(([name, sentAt]) => Math.max(...taken.map((t) => (t.deletedAt[name] ?? Infinity) - sentAt)));
  client.close();
  return {
    rate,
    achieved: done / wall,
    failed,
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    events: latencies.length,
    apiCores: (cpu1.api - cpu0.api) / wall,
    etcdCores: (cpu1.etcd - cpu0.etcd) / wall,
    benchCores: (cpu1.bench.user + cpu1.bench.system) / 1e6 / wall,
    watcherCores: cpu1.watchers.reduce((a, c, i) => a + c - (cpu0.watchers[i] as number), 0) / wall,
    revocations,
  };
}

function churnNote(r: ChurnResult): string {
  return `achieved ${r.achieved.toFixed(0)}/s${r.failed ? `, ${r.failed} failed` : ''}, p50 ${r.p50.toFixed(1)} ms, ${r.events} events; API server ${r.apiCores.toFixed(2)} cores, etcd ${r.etcdCores.toFixed(2)}, bench ${r.benchCores.toFixed(2)}, watchers ${r.watcherCores.toFixed(2)}; load ${load()}`;
}

/** Waits until `pid` uses less than `cores` over 5 s (at most `maxMs`): how long, and its CPU time meanwhile. */
async function untilIdle(pid: number | undefined, cores = 0.25, maxMs = 300_000): Promise<{ ms: number; cpuSeconds: number; cores: number }> {
  const started = performance.now();
  const cpuAtStart = cpuSeconds(pid);
  for (;;) {
    const before = cpuSeconds(pid);
    await sleep(5000);
    const used = (cpuSeconds(pid) - before) / 5;
    if (used < cores || performance.now() - started > maxMs) return { ms: performance.now() - started, cpuSeconds: cpuSeconds(pid) - cpuAtStart, cores: used };
  }
}

const meetsTarget = (r: ChurnResult) => r.p99 <= TARGET_P99_MS && r.achieved >= 0.95 * r.rate && r.failed === 0;

// ---------------------------------------------------------------------------------------------
// One shape at one size, on a control plane of its own.

/** Appends its rows to `rows` as it measures them: a phase that fails keeps what it measured. */
async function phase(shape: Shape, size: number, quick: boolean, rows: BenchResult[]): Promise<void> {
  const tag = `${shape}, ${size / 1000}k`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-scale-'));
  const plane = new ControlPlane({ logFile: path.join(dir, 'control-plane.log') });
  await plane.start();
  const client = plane.client();
  const writer = renewerFor(shape, client);
  const apiPid = plane.pidOf('kube-apiserver');
  const etcdPid = plane.pidOf('etcd');
  const row = (name: string, value: number, unit: string, extra: Partial<BenchResult> = {}) => rows.push({ name: `${tag}: ${name}`, value, unit, ...extra });
  try {
    await installCrds(client);
    await ensureNamespace(client, NAMESPACE);
    const emptyDb = await compactedDbBytes(plane);

    // One grant's bytes, as created and as renewed, and the same object by server-side apply.
    const sample = size; // one past the filled range
    await client.create(grantsPath(NAMESPACE), grantFor(sample));
    row('one grant in etcd, as created', (await storedValue(plane, `v4-${ipv4(sample)}`)).length, 'bytes');
    await writer.renew(sample);
    row('one grant in etcd, as renewed', (await storedValue(plane, `v4-${ipv4(sample)}`)).length, 'bytes');
    const applied = grantFor(sample + 1);
    await client.apply(grantsPath(NAMESPACE, applied.metadata.name), applied, 'kube-drac');
    row('one grant in etcd, by server-side apply', (await storedValue(plane, applied.metadata.name)).length, 'bytes', { note: 'for comparison: not how the roles write' });

    // N grants, then etcd compacted and defragmented.
    const fillRate = await fillThroughEtcd(plane, JSON.parse((await storedValue(plane, `v4-${ipv4(sample)}`)).toString('utf8')) as RelayGrant, size);
    row('fill rate (setup, into etcd)', fillRate, 'grants/s', { note: 'copies of the renewed grant above' });
    await sleep(5000);
    const dbBytes = await compactedDbBytes(plane);
    row('etcd db after compaction + defrag', MB(dbBytes), 'MB', { note: `empty namespace: ${MB(emptyDb).toFixed(1)} MB` });
    row('etcd db per grant', (dbBytes - emptyDb) / size, 'bytes');
    row('etcd RSS', MB(rssBytes(etcdPid)), 'MB');
    row('API server RSS', MB(rssBytes(apiPid)), 'MB', { note: `load ${load()}` });

    // The real roles' memory and sync.
    const common = { kubernetes: { kubeconfig: plane.kubeconfigPath, namespace: NAMESPACE }, log: { level: 'info' } };
    const smtpStarted = performance.now();
    const smtp = await startRole(dir, 'smtp', {
      ...common,
      smtp: { hostname: 'mx.bench.test', listen: { host: '127.0.0.1', port: await freePort() }, localDomains: ['example.org'], mailRoot: path.join(dir, 'mail'), outbox: path.join(dir, 'outbox') },
    }, ROLE_READY_MS);
    const smtpReadyMs = performance.now() - smtpStarted;
    const synced = fs.readFileSync(smtp.logFile, 'utf8').split('\n').find((l) => l.includes('"grant_cache_synced"'));
    const syncMs = synced ? Number((JSON.parse(synced) as { ms?: number }).ms) : NaN;
    await sleep(2000);
    row('SMTP role RSS, synced', MB(rssBytes(smtp.child.pid)), 'MB');
    row('SMTP role initial sync', syncMs, 'ms', { note: `spawn to /readyz ${smtpReadyMs.toFixed(0)} ms` });
    await stopRole(smtp);
    const operator = await startRole(dir, 'operator', common, ROLE_READY_MS);
    await sleep(5000); // leader, then a timer per grant
    row('operator RSS, synced and scheduling', MB(rssBytes(operator.child.pid)), 'MB');
    await stopRole(operator);

    // A full sync after a 410 (the watch resumed from a version the server no longer has), by
    // each means: the paged list every sync used before, and the streamed list (watch-list) the
    // GrantCache uses now. Each one's time, the API server's CPU time, and its peak RSS.
    for (const syncBy of ['list', 'watch-list'] as const) {
      const cache = new GrantCache({ client, namespace: NAMESPACE, syncBy, log: createLogger('bench-scale-cache') });
      await cache.start();
      while (!cache.watching) await sleep(10);
      await sleep(5000); // let the first sync's garbage go before the measured one
      const relisted = new Promise<void>((r) => cache.once('synced', () => r()));
      const rssBefore = rssBytes(apiPid);
      let rssPeak = rssBefore;
      const sampler = setInterval(() => (rssPeak = Math.max(rssPeak, rssBytes(apiPid))), 100);
      const cpu0 = cpuSeconds(apiPid);
      const t0 = performance.now();
      cache.restartWatch('1');
      await relisted;
      const ms = performance.now() - t0;
      clearInterval(sampler);
      const how = syncBy === 'list' ? 'paged list (5,000 a page)' : 'watch-list (streamed)';
      row(`GrantCache relist after a 410, by ${how}`, ms, 'ms', {
        note: `${cache.size} grants; API server ${(cpuSeconds(apiPid) - cpu0).toFixed(1)} CPU s, RSS ${MB(rssBefore).toFixed(0)} -> peak ${MB(rssPeak).toFixed(0)} MB; load ${load()}`,
      });
      await cache.stop();
    }

    // The lists above leave the API server busy for a while (a 1M run showed 1.5 cores for over a
    // minute after them, whatever the write rate); churn on such a server measures the lists.
    const settled = await untilIdle(apiPid);
    row('API server busy after the lists (until < 0.25 cores)', settled.ms, 'ms', { note: `${settled.cpuSeconds.toFixed(0)} CPU s meanwhile; ${settled.cores.toFixed(2)} cores at the end; load ${load()}` });

    // Churn: the ramp with one watcher, then the fan-out.
    const seconds = quick ? 5 : 10;
    let watchers = await startWatchers(plane.kubeconfigPath, 1);
    await churn(plane, watchers, writer.renew, size, 50, 2); // warm-up
    let best: ChurnResult | undefined;
    let busiest: ChurnResult | undefined;
    for (const rate of RAMP) {
      const r = await churn(plane, watchers, writer.renew, size, rate, seconds);
      console.log(`  ${tag}: ${rate}/s, 1 watcher: p99 ${r.p99.toFixed(1)} ms, ${churnNote(r)}`);
      if (!busiest || r.achieved > busiest.achieved) busiest = r;
      if (meetsTarget(r)) best = r;
      if (r.achieved < 0.95 * rate) break; // saturated: a faster pace only queues
    }
    row('max renewal rate with p99 <= 50 ms, 1 watcher', best?.achieved ?? 0, 'writes/s', { note: best ? churnNote(best) : `none of ${RAMP.join(', ')}/s met it` });
    if (busiest) {
      row('highest renewal rate reached, 1 watcher', busiest.achieved, 'writes/s', { note: `paced at ${busiest.rate}/s: p99 ${busiest.p99.toFixed(0)} ms; ${churnNote(busiest)}` });
      row('API server CPU per 1,000 writes/s', (busiest.apiCores / busiest.achieved) * 1000, 'cores', {
        note: `CPU time at ${busiest.achieved.toFixed(0)} writes/s; etcd ${((busiest.etcdCores / busiest.achieved) * 1000).toFixed(2)}, the writer ${((busiest.benchCores / busiest.achieved) * 1000).toFixed(2)}`,
      });
    }
    await stopWatchers(watchers);
    // Below the saturation this machine showed (~100-150 writes/s at load 10-20), so the watchers' cost shows.
    const fanoutRate = quick ? 25 : 50;
    const byCount: ChurnResult[] = [];
    for (const count of WATCHER_COUNTS) {
      watchers = await startWatchers(plane.kubeconfigPath, count);
      const deletes = count === WATCHER_COUNTS.at(-1) ? Array.from({ length: 10 }, (_, k) => Math.floor(((k + 0.5) * size) / 10)) : [];
      const r = await churn(plane, watchers, writer.renew, size, fanoutRate, seconds, deletes);
      byCount.push(r);
      row(`propagation p99, ${count} watcher${count > 1 ? 's' : ''} at ${fanoutRate} writes/s`, r.p99, 'ms', { target: `<= ${TARGET_P99_MS} ms`, note: churnNote(r) });
      if (r.revocations.length > 0) {
        const sorted = [...r.revocations].sort((a, b) => a - b);
        row(`delete -> all ${count} watchers saw it, max`, sorted.at(-1) as number, 'ms', { target: `<= ${TARGET_REVOCATION_MS} ms`, note: `${sorted.length} deletes under churn, p50 ${percentile(sorted, 50).toFixed(0)} ms` });
      }
      await stopWatchers(watchers);
    }
    const first = byCount[0] as ChurnResult;
    const last = byCount.at(-1) as ChurnResult;
    const extra = (WATCHER_COUNTS.at(-1) as number) - (WATCHER_COUNTS[0] as number);
    const eventsPerSecond = (r: ChurnResult) => r.events / seconds;
    row(`API server CPU per watcher at ${fanoutRate} writes/s`, (last.apiCores - first.apiCores) / extra, 'cores', {
      note: `${WATCHER_COUNTS.map((c, k) => `${c}: ${(byCount[k] as ChurnResult).apiCores.toFixed(3)}`).join(', ')} cores; per 1,000 events/s delivered: ${(((last.apiCores - first.apiCores) / (eventsPerSecond(last) - eventsPerSecond(first))) * 1000).toFixed(3)} cores`,
    });
  } finally {
    writer.close();
    client.close();
    await plane.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function listFromEnv<T extends string | number>(name: string, parse: (s: string) => T, fallback: T[]): T[] {
  const raw = process.env[name];
  return raw ? raw.split(',').map((s) => parse(s.trim())) : fallback;
}

export async function run({ quick }: BenchOptions): Promise<BenchResult[]> {
  const sizes = listFromEnv('KUBE_DRAC_SCALE_SIZES', Number, quick ? [10_000] : [100_000, 300_000, 1_000_000]);
  const shapes = listFromEnv('KUBE_DRAC_SCALE_SHAPES', (s) => {
    if (!SHAPES.includes(s as Shape)) throw new Error(`KUBE_DRAC_SCALE_SHAPES: ${JSON.stringify(s)} is not one of ${SHAPES.join(', ')}`);
    return s as Shape;
  }, SHAPES);
  const rows: BenchResult[] = [];
  for (const size of sizes) {
    for (const shape of shapes) {
      console.log(`  ${shape}, ${size} grants: starting, load ${load()}, ${MB(os.freemem()).toFixed(0)} MB free`);
      try {
        await phase(shape, size, quick, rows);
      } catch (err) {
        // The other phases' figures still count; this one says why it has none.
        console.error(`  ${shape}, ${size} grants failed: ${(err as Error).stack ?? String(err)}`);
        rows.push({ name: `${shape}, ${size / 1000}k: failed`, value: NaN, unit: '', note: (err as Error).message.slice(0, 200) });
      }
    }
  }
  rows.push({ name: 'machine load at the end (1, 5, 15 min)', value: os.loadavg()[0] as number, unit: 'load', note: load() });
  return rows;
}
