// Garbage collection of expired RelayGrants: a timer per grant at expiresAt + grace, fed by the
// grant cache; a due grant is read fresh and deleted with preconditions {uid, resourceVersion},
// so a renewal that lands between our read and our delete always wins (409 -> re-read).
// Only the leader deletes; a periodic sweep catches anything a timer missed.
import type { GrantCache, GrantEntry } from '../grants/cache.ts';
import { grantsPath } from '../grants/paths.ts';
import type { RelayGrant } from '../grants/types.ts';
import { KubeApiError, type KubeClient } from '../kube/client.ts';
import { createLogger, type Logger } from '../observability/log.ts';
import { deleteConflicts, gcBulkReads, gcErrors, gcLag, grantsDeleted, setGrantCensus, type GrantCensus } from './metrics.ts';
import { backoffMs, decide, dueAtMs, DueQueue, isDue, realTimers, type Timers } from './schedule.ts';

/** What the collector needs from the grant cache: its expiries and its upsert/delete events. */
export type GrantEvents = Pick<GrantCache, 'expiresAtMsOf' | 'forEachExpiry' | 'on' | 'off' | 'size'>;

/** A grant read by a fresh LIST (`grant` undefined: not there any more). */
interface Prefetched {
  grant: RelayGrant | undefined;
}

export interface GarbageCollectorOptions {
  client: KubeClient;
  namespace: string;
  cache: GrantEvents;
  graceMs: number;
  sweepIntervalMs: number;
  /** Grants read and deleted at the same time. */
  concurrency: number;
  /** Asked before every delete: only the leader deletes. */
  isLeader: () => boolean;
  log?: Logger;
  timers?: Timers;
  /** Longest pause between retries of a failing grant. */
  maxBackoffMs?: number;
  /** Test hook, awaited between the fresh read and the delete (to race a renewal against it). */
  beforeDelete?: (name: string) => Promise<void>;
}

/** Conflicts in a row on one grant before we leave it to its timer. */
const MAX_CONFLICT_ROUNDS = 5;

/**
 * When at least this many due grants wait to be read, and they are at least 1/BULK_SHARE of all
 * grants, one fresh paged LIST reads them all instead of a GET each: a burst of expiries then costs
 * little more than its DELETEs. (A LIST without resourceVersion is a quorum read, as fresh as a GET.)
 */
const BULK_MIN = 64;
const BULK_SHARE = 10;
const BULK_PAGE = 500;

export class GarbageCollector {
  private readonly opts: GarbageCollectorOptions;
  private readonly log: Logger;
  private readonly timers: Timers;
  /**
   * When each grant is due: expiresAt + grace from the cache, unless a fresh read or a failure
   * set another time for it (kept here until the cache has news of the grant).
   */
  private readonly dueQueue: DueQueue;
  private readonly overrides = new Map<string, number>();
  /** Due grants waiting for a worker, with what a bulk read found (undefined: read with a GET). */
  private readonly queue = new Map<string, Prefetched | undefined>();
  private unread = 0;
  private readonly inFlight = new Set<string>();
  /** Due grants being read by a bulk LIST. */
  private readonly listing = new Set<string>();
  private bulkPausedUntil = 0;
  private pumpQueued = false;
  private readonly failures = new Map<string, number>();
  private readonly idleWaiters: (() => void)[] = [];
  private sweepTimer: NodeJS.Timeout | undefined;
  private running = false;
  private lastRetryLogMs = -Infinity;
  private readonly onUpsert = (name: string, entry: GrantEntry) => {
    this.overrides.delete(name);
    this.dueQueue.push(name, dueAtMs(entry.expiresAtMs, this.opts.graceMs));
  };
  private readonly onDelete = (name: string) => {
    this.overrides.delete(name);
    this.failures.delete(name);
  };

  constructor(opts: GarbageCollectorOptions) {
    this.opts = opts;
    this.log = opts.log ?? createLogger('operator');
    this.timers = opts.timers ?? realTimers;
    const { cache, graceMs } = opts;
    this.dueQueue = new DueQueue(
      {
        fire: (name) => {
          this.overrides.delete(name);
          this.enqueue(name);
        },
        dueOf: (name) => {
          const override = this.overrides.get(name);
          if (override !== undefined) return override;
          const expiresAtMs = cache.expiresAtMsOf(name);
          return expiresAtMs === undefined ? undefined : dueAtMs(expiresAtMs, graceMs);
        },
        liveKeys: () => cache.size,
        forEachLive: (fn) => cache.forEachExpiry((name, expiresAtMs) => fn(name, this.overrides.get(name) ?? dueAtMs(expiresAtMs, graceMs))),
      },
      this.timers,
    );
  }

  /** Timers for every cached grant and for every grant the cache learns about from now on. */
  start(): void {
    if (this.running) return;
    this.running = true;
    this.opts.cache.on('upsert', this.onUpsert);
    this.opts.cache.on('delete', this.onDelete);
    this.opts.cache.forEachExpiry((name, expiresAtMs) => this.dueQueue.push(name, dueAtMs(expiresAtMs, this.opts.graceMs)));
    this.sweepTimer = setInterval(() => this.sweep('periodic'), this.opts.sweepIntervalMs);
    this.sweepTimer.unref();
    setGrantCensus(() => this.census());
  }

  async stop(): Promise<void> {
    this.running = false;
    this.opts.cache.off('upsert', this.onUpsert);
    this.opts.cache.off('delete', this.onDelete);
    clearInterval(this.sweepTimer);
    this.dueQueue.clear();
    this.overrides.clear();
    this.queue.clear();
    this.unread = 0;
    setGrantCensus(undefined);
    await this.idle();
  }

  /** Resolves when nothing is queued or in flight. */
  idle(): Promise<void> {
    if (this.busy() === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Queue every cached grant that is due (called periodically, and at once on becoming leader). */
  sweep(why: 'periodic' | 'leader'): number {
    if (!this.running || !this.opts.isLeader()) return 0;
    const now = this.timers.now();
    let due = 0;
    this.opts.cache.forEachExpiry((name, expiresAtMs) => {
      if (isDue(expiresAtMs, this.opts.graceMs, now)) {
        due++;
        this.enqueue(name);
      }
    });
    if (due > 0 || why === 'leader') this.log.info('gc_sweep', { why, due });
    return due;
  }

  census(nowMs: number = this.timers.now()): GrantCensus {
    let active = 0;
    let expiredPending = 0;
    this.opts.cache.forEachExpiry((_name, expiresAtMs) => {
      if (expiresAtMs > nowMs) active++;
      else expiredPending++;
    });
    return { active, expiredPending };
  }

  private busy(): number {
    return this.queue.size + this.inFlight.size + this.listing.size;
  }

  private enqueue(name: string): void {
    if (!this.running || this.inFlight.has(name) || this.listing.has(name) || this.queue.has(name)) return;
    // A follower drops what comes due: the sweep on becoming leader picks it up again.
    if (!this.opts.isLeader()) return;
    this.queue.set(name, undefined);
    this.unread++;
    // Timers that fire together enqueue together: look at the whole batch once, just after.
    if (!this.pumpQueued) {
      this.pumpQueued = true;
      setImmediate(() => {
        this.pumpQueued = false;
        this.pump();
      });
    }
  }

  private pump(): void {
    if (!this.running) return;
    if (
      this.listing.size === 0 &&
      this.unread >= BULK_MIN &&
      this.unread * BULK_SHARE >= this.opts.cache.size &&
      this.timers.now() >= this.bulkPausedUntil
    ) {
      void this.bulkRead();
    }
    while (this.inFlight.size < this.opts.concurrency && this.queue.size > 0) {
      const [name, prefetched] = this.queue.entries().next().value as [string, Prefetched | undefined];
      this.queue.delete(name);
      if (!prefetched) this.unread--;
      this.inFlight.add(name);
      void this.collect(name, prefetched).finally(() => {
        this.inFlight.delete(name);
        this.pump();
        if (this.busy() === 0) for (const w of this.idleWaiters.splice(0)) w();
      });
    }
  }

  /** Read every queued unread grant with one fresh paged LIST, then hand them to the workers. */
  private async bulkRead(): Promise<void> {
    for (const [name, prefetched] of this.queue) {
      if (prefetched) continue;
      this.queue.delete(name);
      this.listing.add(name);
    }
    this.unread = 0;
    gcBulkReads.inc();
    const found = new Map<string, RelayGrant>();
    let failed = false;
    try {
      let cont: string | undefined;
      do {
        const page = await this.opts.client.request<{ metadata: { continue?: string }; items: RelayGrant[] }>('GET', grantsPath(this.opts.namespace), {
          query: { limit: BULK_PAGE, continue: cont },
          timeoutMs: 30_000,
        });
        for (const item of page.items) if (this.listing.has(item.metadata.name)) found.set(item.metadata.name, item);
        cont = page.metadata.continue || undefined;
      } while (cont);
    } catch (err) {
      failed = true;
      this.bulkPausedUntil = this.timers.now() + 5000;
      this.log.warn('gc_bulk_read_failed', { error: err as Error, grants: this.listing.size });
    }
    for (const name of this.listing) {
      if (!this.running) break;
      if (failed) {
        this.queue.set(name, undefined);
        this.unread++;
      } else {
        this.queue.set(name, { grant: found.get(name) });
      }
    }
    this.listing.clear();
    this.pump();
    if (this.busy() === 0) for (const w of this.idleWaiters.splice(0)) w();
  }

  private path(name: string): string {
    return grantsPath(this.opts.namespace, name);
  }

  /** Read fresh, decide, delete with preconditions; re-read on conflict; back off on errors. */
  private async collect(name: string, prefetched: Prefetched | undefined): Promise<void> {
    try {
      for (let round = 0; round < MAX_CONFLICT_ROUNDS; round++) {
        if (!this.running || !this.opts.isLeader()) return;
        const grant = round === 0 && prefetched ? prefetched.grant : await this.opts.client.get<RelayGrant>(this.path(name));
        const decision = decide(grant, this.opts.graceMs, this.timers.now());
        switch (decision.action) {
          case 'done':
            this.failures.delete(name);
            return;
          case 'skip':
            this.log.warn('gc_grant_skipped', { grant: name, reason: decision.why });
            this.failures.delete(name);
            return;
          case 'reschedule':
            this.failures.delete(name);
            this.scheduleAt(name, decision.atMs);
            return;
          case 'delete':
            break;
        }
        await this.opts.beforeDelete?.(name);
        if (!this.running || !this.opts.isLeader()) return;
        try {
          await this.opts.client.delete(this.path(name), { uid: decision.uid, resourceVersion: decision.resourceVersion });
          grantsDeleted.inc();
          gcLag.observe(Math.max(0, this.timers.now() - decision.expiresAtMs) / 1000);
          this.failures.delete(name);
          return;
        } catch (err) {
          if (!(err instanceof KubeApiError)) throw err;
          if (err.status === 404) return;
          if (err.status !== 409) throw err;
          // Renewed (or replaced) since our read: the precondition protected it. Read again.
          deleteConflicts.inc();
        }
      }
      this.retryLater(name, new Error(`${MAX_CONFLICT_ROUNDS} delete conflicts in a row`));
    } catch (err) {
      this.retryLater(name, err as Error);
    }
  }

  private retryLater(name: string, err: Error): void {
    gcErrors.inc();
    const failures = (this.failures.get(name) ?? 0) + 1;
    this.failures.set(name, failures);
    const delay = Math.min(this.opts.maxBackoffMs ?? 10_000, backoffMs(failures));
    // During an outage every due grant fails: one line a second says so, not one per grant.
    const now = this.timers.now();
    if (now - this.lastRetryLogMs >= 1000) {
      this.lastRetryLogMs = now;
      this.log.warn('gc_grant_retry', { grant: name, failures, retryInMs: delay, error: err });
    }
    if (this.running) this.scheduleAt(name, this.timers.now() + delay);
  }

  /** Due at `atMs` rather than at expiresAt + grace, until the cache has news of the grant. */
  private scheduleAt(name: string, atMs: number): void {
    if (this.opts.cache.expiresAtMsOf(name) === undefined) return; // gone from the cache: nothing to collect
    this.overrides.set(name, atMs);
    this.dueQueue.push(name, atMs);
  }
}
