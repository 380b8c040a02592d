// One Prometheus registry per process (one role per process), with Node's default process metrics.
import { collectDefaultMetrics, register } from 'prom-client';

export const registry = register;

let defaultsCollected = false;
/** Called once by each role's entry point (not at import, so tests that import roles stay cheap). */
export function collectProcessMetrics(): void {
  if (defaultsCollected) return;
  defaultsCollected = true;
  collectDefaultMetrics({ register: registry, prefix: 'kubedrac_' });
}
