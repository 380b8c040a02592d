// One Prometheus registry per process (one role per process), with Node's default process metrics.
import { collectDefaultMetrics, register } from 'prom-client';

export const registry = register;

let defaultsCollected = false;
/** Called once by each role's entry point (not at import, so tests that import roles stay cheap). */
export function collectProcessMetrics(): void {
  if (defaultsCollected) return;
  defaultsCollected = true;
  collectDefaultMetrics({ register: registry, prefix: 'kubedrac_' });
  // prom-client's `_total` gauges break the naming rule (`_total` is for counters; promtool check
  // metrics refuses them): the same counts are the `nodejs_active_*` gauges by type, summed.
  for (const what of ['handles', 'requests', 'resources']) registry.removeSingleMetric(`kubedrac_nodejs_active_${what}_total`);
}
