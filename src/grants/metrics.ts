// Metrics of the shared grant library (store and cache), registered once per process.
import { Counter, Gauge, Histogram } from 'prom-client';
import { registry } from '../observability/metrics.ts';

export const grantWrites = new Counter({
  name: 'kubedrac_grant_writes_total',
  help: 'RelayGrant writes by outcome: create, patch, skipped (coalesced: the grant already ran long enough), failed.',
  labelNames: ['op'] as const,
  registers: [registry],
});

export const grantCacheEntries = new Gauge({
  name: 'kubedrac_grant_cache_entries',
  help: 'RelayGrants held in this process\'s cache (expired ones included until deleted).',
  registers: [registry],
});

export const grantCacheSynced = new Gauge({
  name: 'kubedrac_grant_cache_synced',
  help: '1 once the grant cache has loaded its first full list, else 0.',
  registers: [registry],
});

export const grantPropagation = new Histogram({
  name: 'kubedrac_grant_propagation_seconds',
  help: 'Time from a grant write (the kubedrac.io/renewed-at annotation) to its watch event in this cache.',
  buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  registers: [registry],
});

export const grantWatchRestarts = new Counter({
  name: 'kubedrac_grant_watch_restarts_total',
  help: 'Grant watch restarts by reason: ended (server closed it), expired (410: relist), error, stalled.',
  labelNames: ['reason'] as const,
  registers: [registry],
});

export const grantRelists = new Counter({
  name: 'kubedrac_grant_cache_relists_total',
  help: 'Full lists of RelayGrants loaded into the cache (the first sync included).',
  registers: [registry],
});
