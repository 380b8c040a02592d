// The operator's pure parts: when a grant is due, what to do with a fresh read of it, how long
// to back off, and a per-key timer table whose timers replace each other (cert-manager's
// scheduler idea). No sockets here; the clock and the timer functions are injectable.
import type { RelayGrant } from '../grants/types.ts';

/** Node's setTimeout fires at once for delays above 2^31-1 ms; longer waits are chained. */
export const MAX_TIMER_DELAY_MS = 2 ** 31 - 1;

/** The moment a grant may be deleted: its expiry plus the grace for clock skew between nodes. */
export function dueAtMs(expiresAtMs: number, graceMs: number): number {
  return expiresAtMs + graceMs;
}

export function isDue(expiresAtMs: number, graceMs: number, nowMs: number): boolean {
  return dueAtMs(expiresAtMs, graceMs) <= nowMs;
}

/** The delay to hand to setTimeout for a wake-up at `atMs`: never negative, never above the limit. */
export function timerDelayMs(atMs: number, nowMs: number): number {
  return Math.min(MAX_TIMER_DELAY_MS, Math.max(0, atMs - nowMs));
}

export type GrantDecision =
  | { action: 'done'; why: 'gone' | 'deleting' }
  | { action: 'delete'; uid: string; resourceVersion: string; expiresAtMs: number }
  | { action: 'reschedule'; atMs: number }
  | { action: 'skip'; why: 'bad expiresAt' };

/** What to do with a grant just read fresh from the API server (undefined: 404). */
export function decide(grant: RelayGrant | undefined, graceMs: number, nowMs: number): GrantDecision {
  if (grant === undefined) return { action: 'done', why: 'gone' };
  if (grant.metadata.deletionTimestamp !== undefined) return { action: 'done', why: 'deleting' };
  const expiresAtMs = Date.parse(grant.spec?.expiresAt ?? '');
  // The CRD validates expiresAt; without it, a grant we cannot read is left for a human.
  if (Number.isNaN(expiresAtMs)) return { action: 'skip', why: 'bad expiresAt' };
  if (!isDue(expiresAtMs, graceMs, nowMs)) return { action: 'reschedule', atMs: dueAtMs(expiresAtMs, graceMs) };
  return { action: 'delete', uid: grant.metadata.uid ?? '', resourceVersion: grant.metadata.resourceVersion ?? '', expiresAtMs };
}

/** Retry delay after the n-th consecutive failure (1-based): 0.5 s doubling to 30 s, with +-25 % jitter. */
export function backoffMs(failures: number, random: () => number = Math.random): number {
  const base = Math.min(30_000, 500 * 2 ** Math.max(0, Math.min(failures - 1, 10)));
  return Math.round(base * (0.75 + random() * 0.5));
}

export interface Timers {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const realTimers: Timers = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/**
 * One timer per key. `schedule` replaces the key's timer; `fire(key)` is called at `atMs`
 * (late rather than early: a wait beyond Node's limit is chained through intermediate timers).
 */
export class KeyedScheduler {
  private readonly timers: Timers;
  private readonly fire: (key: string) => void;
  private readonly table = new Map<string, { atMs: number; handle: unknown }>();

  constructor(fire: (key: string) => void, timers: Timers = realTimers) {
    this.fire = fire;
    this.timers = timers;
  }

  get size(): number {
    return this.table.size;
  }

  /** When `key` is set to fire, or undefined. */
  scheduledAt(key: string): number | undefined {
    return this.table.get(key)?.atMs;
  }

  schedule(key: string, atMs: number): void {
    const old = this.table.get(key);
    if (old) {
      if (old.atMs === atMs) return;
      this.timers.clearTimeout(old.handle);
    }
    this.arm(key, atMs);
  }

  cancel(key: string): void {
    const old = this.table.get(key);
    if (!old) return;
    this.timers.clearTimeout(old.handle);
    this.table.delete(key);
  }

  cancelAll(): void {
    for (const { handle } of this.table.values()) this.timers.clearTimeout(handle);
    this.table.clear();
  }

  private arm(key: string, atMs: number): void {
    const entry = { atMs, handle: undefined as unknown };
    entry.handle = this.timers.setTimeout(() => {
      if (this.table.get(key) !== entry) return; // replaced meanwhile
      if (this.timers.now() < atMs) {
        this.arm(key, atMs); // an intermediate hop of a very long wait
        return;
      }
      this.table.delete(key);
      this.fire(key);
    }, timerDelayMs(atMs, this.timers.now()));
    this.table.set(key, entry);
  }
}
