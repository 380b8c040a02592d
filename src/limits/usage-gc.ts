// Deleting RelayUsage objects that no longer matter: a replica that is gone (no write for three
// heartbeats) and whose buckets all aged out. The operator's leader does it, as it deletes expired
// grants; the SMTP role never deletes anything. Each delete carries the object's uid and
// resourceVersion, so a replica that wrote again in between wins.
import { KubeApiError, type KubeClient } from '../kube/client.ts';
import type { Logger } from '../observability/log.ts';
import { usagePath, type RelayUsage } from './types.ts';
import { BUCKET_MS, usageIsLive } from './usage.ts';

export interface UsageCollectorOptions {
  client: KubeClient;
  namespace: string;
  isLeader: () => boolean;
  log: Logger;
  intervalMs?: number;
  now?: () => number;
}

/** One sweep: deletes what is no longer live; returns the names deleted. */
export async function sweepRelayUsages(client: KubeClient, namespace: string, nowMs: number): Promise<string[]> {
  const list = await client.request<{ items: RelayUsage[] }>('GET', usagePath(namespace), { timeoutMs: 30_000 });
  const deleted: string[] = [];
  for (const usage of list.items) {
    if (usageIsLive(usage, nowMs)) continue;
    const { name, uid, resourceVersion } = usage.metadata;
    try {
      await client.delete(usagePath(namespace, name), { uid, resourceVersion });
      deleted.push(name);
    } catch (err) {
      // 404: gone already; 409: written again since the list, so it is live.
      if (!(err instanceof KubeApiError && (err.status === 404 || err.status === 409))) throw err;
    }
  }
  return deleted;
}

/** Sweeps every interval (a bucket by default) while leading; stop() ends it. */
export function startUsageCollector(opts: UsageCollectorOptions): { stop(): void } {
  const now = opts.now ?? Date.now;
  let quietReason: number | undefined;
  const sweep = () => {
    if (!opts.isLeader()) return;
    sweepRelayUsages(opts.client, opts.namespace, now()).then(
      (deleted) => {
        quietReason = undefined;
        if (deleted.length > 0) opts.log.info('relay_usage_collected', { deleted: deleted.length, names: deleted });
      },
      (err: unknown) => {
        // 403/404: relay limits are not in use here (no RBAC rule, no CRD): say so once.
        const status = err instanceof KubeApiError ? err.status : 0;
        if (status === quietReason) return;
        if (status === 403 || status === 404) quietReason = status;
        opts.log[status === 403 || status === 404 ? 'info' : 'warn']('relay_usage_sweep_failed', { status, error: (err as Error).message });
      },
    );
  };
  const timer = setInterval(sweep, opts.intervalMs ?? BUCKET_MS);
  timer.unref();
  return { stop: () => clearInterval(timer) };
}
