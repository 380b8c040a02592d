// The operator role's metrics, defined once. No label ever carries an address or a user name.
import { Counter, Gauge, Histogram } from 'prom-client';
import { registry } from '../observability/metrics.ts';

export const operatorLeader = new Gauge({
  name: 'kubedrac_operator_leader',
  help: '1 while this operator process holds the Lease and may delete grants, else 0.',
  registers: [registry],
});

export const grantsDeleted = new Counter({
  name: 'kubedrac_operator_grants_deleted_total',
  help: 'Expired RelayGrants deleted by this operator.',
  registers: [registry],
});

export const gcLag = new Histogram({
  name: 'kubedrac_operator_gc_lag_seconds',
  help: 'Deletion time minus the grant\'s expiresAt (the grace period is part of it).',
  buckets: [0.5, 1, 2, 5, 10, 20, 30, 32, 35, 40, 60, 120, 300, 900],
  registers: [registry],
});

export const deleteConflicts = new Counter({
  name: 'kubedrac_operator_delete_conflicts_total',
  help: 'Deletes refused by their preconditions (the grant was renewed or replaced meanwhile); re-read and rescheduled.',
  registers: [registry],
});

export const gcErrors = new Counter({
  name: 'kubedrac_operator_gc_errors_total',
  help: 'Failed reads or deletes of a due grant (retried with backoff).',
  registers: [registry],
});

export interface GrantCensus {
  active: number;
  expiredPending: number;
}

let census: (() => GrantCensus) | undefined;

/** The source of the two gauges below, counted over the grant cache at scrape time. */
export function setGrantCensus(fn: (() => GrantCensus) | undefined): void {
  census = fn;
}

export const grantsActive = new Gauge({
  name: 'kubedrac_grants_active',
  help: 'RelayGrants not yet expired, as seen by this operator\'s cache.',
  registers: [registry],
  collect() {
    if (census) this.set(census().active);
  },
});

export const grantsExpiredPending = new Gauge({
  name: 'kubedrac_grants_expired_pending',
  help: 'RelayGrants past their expiresAt and not deleted yet (the grace period included).',
  registers: [registry],
  collect() {
    if (census) this.set(census().expiredPending);
  },
});

export const gcBulkReads = new Counter({
  name: 'kubedrac_operator_bulk_reads_total',
  help: 'Fresh paged LISTs that read a burst of due grants at once instead of a GET each.',
  registers: [registry],
});
