// Grant library benchmark on the local control plane: (a) write -> cache propagation,
// (b) lookup cost with 100k grants, (c) cache memory per 100k grants, (d) initial sync time.
import { GrantCache } from '../src/grants/cache.ts';
import { grantsPath } from '../src/grants/paths.ts';
import { GrantStore } from '../src/grants/store.ts';
import type { KubeClient } from '../src/kube/client.ts';
import { ensureNamespace, installCrds } from '../src/kube/crds.ts';
import { ControlPlane } from '../src/local/control-plane.ts';
import { percentile, type BenchOptions, type BenchResult } from './types.ts';

const MIN = 60_000;
const gc = (globalThis as { gc?: () => void }).gc ?? (() => undefined);

function ipv4(i: number): string {
  return `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
}

async function createMany(client: KubeClient, namespace: string, count: number, concurrency = 48): Promise<number> {
  const started = Date.now();
  const expiresAt = new Date(Date.now() + 60 * MIN).toISOString();
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      for (let i = next++; i < count; i = next++) {
        const address = ipv4(i);
        await client.create(grantsPath(namespace), {
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

async function syncTime(client: KubeClient, namespace: string): Promise<{ ms: number; cache: GrantCache }> {
  const cache = new GrantCache({ client, namespace });
  const started = performance.now();
  await cache.start();
  return { ms: performance.now() - started, cache };
}

/** Heap the cache retains: heap with it, minus heap once it is stopped and unreachable. */
async function retainedHeap(holder: { cache?: GrantCache }): Promise<number> {
  gc();
  gc();
  const withCache = process.memoryUsage().heapUsed;
  await holder.cache?.stop();
  holder.cache = undefined;
  await new Promise((r) => setTimeout(r, 100));
  gc();
  gc();
  return withCache - process.memoryUsage().heapUsed;
}

/** Sync time and lookup costs with the big index; the cache is left in `holder` for the heap figure. */
async function syncAndLookups(client: KubeClient, namespace: string, big: number, holder: { cache?: GrantCache }): Promise<BenchResult[]> {
  const rows: BenchResult[] = [];
  const b = await syncTime(client, namespace);
  holder.cache = b.cache;
  rows.push({ name: `initial sync of ${big} grants`, value: b.ms, unit: 'ms', target: big === 100_000 ? '<= 10000 ms' : undefined });
  // (b) lookup cost with the big index: hits, misses, mapped IPv6, and IPv6 with a /64 present.
  const bigCache = b.cache;
  const hits = Array.from({ length: 4096 }, (_, n) => ipv4((n * 7919) % big));
  const misses = Array.from({ length: 4096 }, (_, n) => `172.16.${(n >> 8) & 255}.${n & 255}`);
  const mapped = hits.map((ip) => `::ffff:${ip}`);
  const v6 = Array.from({ length: 4096 }, (_, n) => `2001:db8:${n.toString(16)}::${(n * 31).toString(16)}`);
  await client.create(grantsPath(namespace), {
    apiVersion: 'kubedrac.io/v1alpha1',
    kind: 'RelayGrant',
    metadata: { name: 'v6-20010db8000100000000000000000000-64' },
    spec: { address: '2001:db8:1::/64', source: 'manual', expiresAt: new Date(Date.now() + 60 * MIN).toISOString() },
  });
  while (!bigCache.lookup('2001:db8:1::5')) await new Promise((r) => setTimeout(r, 10));
  const now = Date.now();
  const measure = (ips: string[], expectHit: boolean): number => {
    const rounds = 200;
    let found = 0;
    for (let w = 0; w < 20; w++) for (const ip of ips) if (bigCache.lookup(ip, now)) found++;
    found = 0;
    const t0 = process.hrtime.bigint();
    for (let r = 0; r < rounds; r++) for (const ip of ips) if (bigCache.lookup(ip, now)) found++;
    const ns = Number(process.hrtime.bigint() - t0) / (rounds * ips.length);
    if ((found > 0) !== expectHit) throw new Error('lookup benchmark sanity check failed');
    return ns;
  };
  rows.push({ name: `lookup, IPv4 hit (${big} grants)`, value: measure(hits, true), unit: 'ns/call', target: '<= 1000 ns' });
  rows.push({ name: 'lookup, IPv4 miss', value: measure(misses, false), unit: 'ns/call', target: '<= 1000 ns' });
  rows.push({ name: 'lookup, IPv4-mapped IPv6 hit', value: measure(mapped, true), unit: 'ns/call', target: '<= 1000 ns' });
  rows.push({ name: 'lookup, IPv6 with a /64 grant present', value: measure(v6, true), unit: 'ns/call', target: '<= 1000 ns' });
  return rows;
}

async function bigIndexFigures(client: KubeClient, namespace: string, big: number): Promise<BenchResult[]> {
  const holder: { cache?: GrantCache } = {};
  const rows = await syncAndLookups(client, namespace, big, holder);
  const heapBytes = await retainedHeap(holder);
  rows.push({
    name: 'cache heap per 100k grants',
    value: ((heapBytes / big) * 100_000) / 1e6,
    unit: 'MB',
    target: '<= 40 MB',
    note: `measured with ${big} grants`,
  });
  return rows;
}

export async function run({ quick }: BenchOptions): Promise<BenchResult[]> {
  const big = quick ? 20_000 : 100_000;
  const small = 10_000;
  const writes = quick ? 300 : 1000;
  const rows: BenchResult[] = [];
  const plane = new ControlPlane();
  await plane.start();
  const client = plane.client();
  try {
    await installCrds(client);
    for (const ns of ['bench-prop', 'bench-small', 'bench-big']) await ensureNamespace(client, ns);

    // (a) propagation: each write timed from just before its request to its watch event here.
    const cache = new GrantCache({ client, namespace: 'bench-prop' });
    await cache.start();
    // Warm-up: the API server's first writes to a new resource are slow (storage and CEL set-up).
    const warm = new GrantStore({ client, namespace: 'bench-prop', ttlMs: 30 * MIN, renewIntervalMs: 5 * MIN, ipv6PrefixLength: 64 });
    for (let w = 0; w < 50; w++) await warm.renew(`192.168.0.${w}`, 'warmup', 'pop3');
    warm.close();
    const store = new GrantStore({ client, namespace: 'bench-prop', ttlMs: 30 * MIN, renewIntervalMs: 5 * MIN, ipv6PrefixLength: 64 });
    const sentAt = new Map<string, number>();
    const latencies: number[] = [];
    cache.on('upsert', (name: string) => {
      const t0 = sentAt.get(name);
      if (t0 !== undefined) {
        latencies.push(performance.now() - t0);
        sentAt.delete(name);
      }
    });
    let i = 0;
    const writeStarted = Date.now();
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        for (let n = i++; n < writes; n = i++) {
          sentAt.set(`v4-${ipv4(n)}`, performance.now());
          await store.renew(ipv4(n), 'bench', 'pop3');
        }
      }),
    );
    const writeRate = (writes / (Date.now() - writeStarted)) * 1000;
    while (latencies.length < writes) await new Promise((r) => setTimeout(r, 10));
    latencies.sort((a, b) => a - b);
    rows.push({ name: `propagation p50 (${writes} writes, 4 writers)`, value: percentile(latencies, 50), unit: 'ms' });
    rows.push({ name: 'propagation p99', value: percentile(latencies, 99), unit: 'ms', target: '<= 50 ms' });
    rows.push({ name: 'grant writes through GrantStore', value: writeRate, unit: 'writes/s' });
    await cache.stop();
    store.close();

    // Fill two namespaces for the sync and memory figures.
    const smallRate = await createMany(client, 'bench-small', small);
    const bigRate = await createMany(client, 'bench-big', big);
    rows.push({ name: 'raw creates (48 concurrent, setup)', value: (smallRate + bigRate) / 2, unit: 'creates/s' });

    // (d) sync times, (c) memory.
    const s = await syncTime(client, 'bench-small');
    await s.cache.stop();
    rows.push({ name: `initial sync of ${small} grants`, value: s.ms, unit: 'ms' });
    rows.push(...(await bigIndexFigures(client, 'bench-big', big)));
  } finally {
    client.close();
    await plane.stop();
  }
  return rows;
}
