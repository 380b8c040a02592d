// API writes per address per renew interval with 2 and 4 pop3 replicas (`npm run bench -- writes`,
// issue 13 item 1). Each replica is a GrantStore with its own KubeClient and its own GrantCache on
// a local control plane, as each pop3 role process holds. Every address logs in about once a
// second at a random replica; the renew interval is shortened to 10 s (ttl 60 s) so that a run
// spans several intervals. Target: <= 1.0 whatever the number of replicas (a replica takes a
// grant another one renewed as fresh, because its cache saw the renewal).
import { GrantCache } from '../src/grants/cache.ts';
import { GrantStore } from '../src/grants/store.ts';
import { KubeClient } from '../src/kube/client.ts';
import { ensureNamespace, installCrds } from '../src/kube/crds.ts';
import { ControlPlane } from '../src/local/control-plane.ts';
import type { BenchOptions, BenchResult } from './types.ts';

const TTL_MS = 60_000;
const RENEW_INTERVAL_MS = 10_000;
const ADDRESSES = 40;
const LOGIN_GAP_MS = 1000;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

interface Replica {
  client: KubeClient;
  cache: GrantCache;
  store: GrantStore;
}

async function startReplica(kubeconfigPath: string, namespace: string): Promise<Replica> {
  const client = KubeClient.fromPath(kubeconfigPath);
  const cache = new GrantCache({ client, namespace, indexUsers: false });
  await cache.start();
  const store = new GrantStore({ client, namespace, ttlMs: TTL_MS, renewIntervalMs: RENEW_INTERVAL_MS, ipv6PrefixLength: 64, grants: cache });
  return { client, cache, store };
}

async function stopReplica(r: Replica): Promise<void> {
  r.store.close();
  await r.cache.stop();
  r.client.close();
}

async function measure(plane: ControlPlane, replicas: number, intervals: number): Promise<{ perAddressPerInterval: number; writes: number; logins: number; failed: number }> {
  const namespace = `bench-writes-${replicas}`;
  const admin = plane.client();
  await ensureNamespace(admin, namespace);
  admin.close();
  const fleet = await Promise.all(Array.from({ length: replicas }, () => startReplica(plane.kubeconfigPath, namespace)));
  let writes = 0;
  let logins = 0;
  let failed = 0;
  const durationMs = intervals * RENEW_INTERVAL_MS;
  const end = performance.now() + durationMs;
  try {
    await Promise.all(
      Array.from({ length: ADDRESSES }, async (_, a) => {
        await sleep(Math.random() * LOGIN_GAP_MS);
        while (performance.now() < end) {
          const replica = fleet[Math.floor(Math.random() * replicas)] as Replica;
          logins++;
          try {
            const outcome = await replica.store.renew(`192.0.2.${a + 1}`, `user${a}`, 'pop3');
            if (outcome !== 'skipped') writes++;
          } catch {
            failed++;
          }
          await sleep(LOGIN_GAP_MS * (0.5 + Math.random()));
        }
      }),
    );
  } finally {
    await Promise.all(fleet.map(stopReplica));
  }
  return { perAddressPerInterval: writes / ADDRESSES / intervals, writes, logins, failed };
}

export async function run({ quick }: BenchOptions): Promise<BenchResult[]> {
  const intervals = quick ? 3 : 6;
  const plane = new ControlPlane();
  await plane.start();
  const rows: BenchResult[] = [];
  try {
    const admin = plane.client();
    await installCrds(admin);
    admin.close();
    // Warm-up: the API server's first writes to a new resource are slow (storage and CEL set-up).
    await measure(plane, 1, 1);
    for (const replicas of [2, 4]) {
      const m = await measure(plane, replicas, intervals);
      rows.push({
        name: `API writes per address per renew interval, ${replicas} replicas`,
        value: m.perAddressPerInterval,
        unit: 'writes',
        target: '<= 1.0',
        note: `${m.writes} writes for ${m.logins} logins of ${ADDRESSES} addresses over ${intervals} intervals of ${RENEW_INTERVAL_MS / 1000} s${m.failed ? `, ${m.failed} failed` : ''}`,
      });
    }
  } finally {
    await plane.stop();
  }
  return rows;
}
