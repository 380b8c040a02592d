// `kube-drac operator`: the grant cache (list + watch), Lease leader election, and garbage
// collection of expired RelayGrants by the leader; /metrics, /healthz and /readyz.
import v8 from 'node:v8';
import { beginRole, connectKube, runRoleProcess, startRoleHealth } from '../role-process.ts';
import type { ConfigDocument } from '../config/load.ts';
import { GrantCache } from '../grants/cache.ts';
import { grantsPath } from '../grants/paths.ts';
import { KubeApiError, type KubeClient } from '../kube/client.ts';
import { LeaderElector } from '../kube/leader.ts';
import { createLogger, type Logger } from '../observability/log.ts';
import { parseOperatorConfig, type OperatorConfig } from './config.ts';
import { GarbageCollector } from './gc.ts';
import { operatorLeader } from './metrics.ts';

export const CRD_MISSING_MESSAGE =
  'the RelayGrant CRD (relaygrants.kubedrac.io) is not installed in this cluster: install it with `kubectl apply -f crds/` (from the kube-drac sources or release) and start the operator again';

/**
 * Fail fast, with what to do, when the CRD is missing; wait (and say so) while the API server
 * cannot be reached. Other refusals (e.g. RBAC) are errors too.
 */
export async function checkGrantsServed(client: KubeClient, namespace: string, log: Logger, signal?: AbortSignal): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await client.request('GET', grantsPath(namespace), { query: { limit: 1 }, timeoutMs: 5000 });
      return;
    } catch (err) {
      if (!(err instanceof KubeApiError)) throw err;
      if (err.status === 404) throw new Error(CRD_MISSING_MESSAGE, { cause: err });
      if (err.status !== 0 && err.status < 500) throw new Error(`cannot list RelayGrants in namespace ${namespace}: ${err.message}`, { cause: err });
      if (attempt === 1 || attempt % 10 === 0) log.warn('api_unreachable', { error: err, attempt });
      if (signal?.aborted) throw err;
      await new Promise((r) => setTimeout(r, Math.min(5000, 250 * attempt)));
    }
  }
}

export interface RunningOperator {
  config: OperatorConfig;
  elector: LeaderElector;
  gc: GarbageCollector;
  cache: GrantCache;
  healthPort: number;
  /** Stop acting, release the Lease, stop watching. */
  close(): Promise<void>;
}

export interface OperatorHooks {
  /** Test hook passed to the collector: awaited between its fresh read and its delete. */
  beforeDelete?: (name: string) => Promise<void>;
}

export async function runOperator(doc: ConfigDocument, log: Logger = createLogger('operator'), hooks: OperatorHooks = {}): Promise<RunningOperator> {
  const config = beginRole(doc, (d) => parseOperatorConfig(d.section('operator')));
  const { client, namespace } = connectKube(doc);
  try {
    await checkGrantsServed(client, namespace, log);
  } catch (err) {
    client.close();
    throw err;
  }
  // Expiries are all the collector reads. Small list pages bound the heap a relist of 100k
  // grants needs at once (a 5000-grant page is ~10 MB parsed); the operator can wait a few seconds.
  const cache = new GrantCache({ client, namespace, log: log.child({ component: 'grant-cache' }), indexUsers: false, listPageSize: 1000 });
  await cache.start();

  operatorLeader.set(0);
  // The elector and the collector refer to each other: the collector asks who leads, the
  // elector tells the collector to sweep when it starts leading (only after elector.start()).
  const elector = new LeaderElector({
    client,
    namespace,
    ...config.leaderElection,
    eventComponent: 'kube-drac-operator',
    log: log.child({ component: 'leader-election' }),
    onStartedLeading: () => {
      operatorLeader.set(1);
      gc.sweep('leader');
    },
    onStoppedLeading: () => operatorLeader.set(0),
  });
  const gc = new GarbageCollector({
    client,
    namespace,
    cache,
    graceMs: config.graceMs,
    sweepIntervalMs: config.sweepIntervalMs,
    concurrency: config.deleteConcurrency,
    isLeader: () => elector.isLeader(),
    log: log.child({ component: 'gc' }),
    beforeDelete: hooks.beforeDelete,
  });
  gc.start();
  elector.start();
  const health = await startRoleHealth(doc, { ready: () => cache.synced });
  log.info('operator_started', {
    namespace,
    identity: config.leaderElection.identity,
    lease: config.leaderElection.leaseName,
    graceMs: config.graceMs,
    healthPort: health.port,
    grants: cache.size,
  });
  let closing: Promise<void> | undefined;
  return {
    config,
    elector,
    gc,
    cache,
    healthPort: health.port,
    close() {
      closing ??= (async () => {
        await elector.stop(); // stops the collector acting, then releases the Lease
        await gc.stop();
        await cache.stop();
        await health.close();
        client.close();
        log.info('operator_stopped', { identity: config.leaderElection.identity });
      })();
      return closing;
    },
  };
}

/**
 * V8 settings for this process, which holds one small record per grant and otherwise mostly
 * waits on the API server. With V8's defaults the young generation grows to 2 x 16 MB and the old
 * one may grow up to 4x between collections, so 20 MB of grants took 100+ MB of heap. Here the
 * young generation stays at its initial size, the old one grows by 20 % at a time, and V8 favours
 * size over speed: the heap stays within ~20 % of what is live, for more and smaller collections
 * (the operator's work is API round trips, not CPU). Set at start-up, before the cache fills;
 * these flags are read at each collection, so setting them at run time takes effect.
 */
export const OPERATOR_V8_FLAGS = ['--optimize-for-size', '--semi-space-growth-factor=1', '--heap-growing-percent=20'];

export function main(args: string[]): Promise<void> {
  for (const flag of OPERATOR_V8_FLAGS) v8.setFlagsFromString(flag);
  return runRoleProcess('operator', args, (doc, log) => runOperator(doc, log));
}
