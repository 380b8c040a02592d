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
 * One due time per key: `schedule` replaces the key's time (cert-manager's per-key timers that
 * replace each other), `fire(key)` is called at that time, late rather than early. Underneath it
 * is one min-heap and one Node timer for the earliest time, not a Node timer per key: 100k
 * Timeout objects cost ~60 MB of heap, the heap ~3 MB. Replaced and cancelled entries stay in the
 * heap until they reach the top (or a compaction), and are skipped there.
 */
export class KeyedScheduler {
  private readonly timers: Timers;
  private readonly fire: (key: string) => void;
  private readonly due = new Map<string, number>();
  private heapAt: number[] = [];
  private heapKey: string[] = [];
  private handle: unknown;
  private armedAt = Infinity;

  constructor(fire: (key: string) => void, timers: Timers = realTimers) {
    this.fire = fire;
    this.timers = timers;
  }

  get size(): number {
    return this.due.size;
  }

  /** When `key` is set to fire, or undefined. */
  scheduledAt(key: string): number | undefined {
    return this.due.get(key);
  }

  schedule(key: string, atMs: number): void {
    if (this.due.get(key) === atMs) return;
    this.due.set(key, atMs);
    this.push(atMs, key);
    if (this.heapAt.length > 2 * this.due.size + 1024) this.compact();
    this.rearm();
  }

  cancel(key: string): void {
    if (!this.due.delete(key)) return;
    if (this.due.size === 0) this.cancelAll();
  }

  cancelAll(): void {
    this.due.clear();
    this.heapAt = [];
    this.heapKey = [];
    this.disarm();
  }

  private isLive(i: number): boolean {
    return this.due.get(this.heapKey[i] as string) === this.heapAt[i];
  }

  private rearm(): void {
    while (this.heapAt.length > 0 && !this.isLive(0)) this.pop();
    if (this.heapAt.length === 0) {
      this.disarm();
      return;
    }
    const top = this.heapAt[0] as number;
    if (this.handle !== undefined && this.armedAt === top) return;
    this.disarm();
    this.armedAt = top;
    this.handle = this.timers.setTimeout(() => this.onTimer(), timerDelayMs(top, this.timers.now()));
  }

  private disarm(): void {
    if (this.handle !== undefined) this.timers.clearTimeout(this.handle);
    this.handle = undefined;
    this.armedAt = Infinity;
  }

  private onTimer(): void {
    this.handle = undefined;
    this.armedAt = Infinity;
    const now = this.timers.now();
    const fired: string[] = [];
    // A hop of a wait beyond Node's limit finds nothing due yet and just re-arms.
    while (this.heapAt.length > 0 && (this.heapAt[0] as number) <= now) {
      const live = this.isLive(0);
      const key = this.heapKey[0] as string;
      this.pop();
      if (live) {
        this.due.delete(key);
        fired.push(key);
      }
    }
    this.rearm();
    for (const key of fired) this.fire(key);
  }

  private compact(): void {
    this.heapAt = [];
    this.heapKey = [];
    for (const [key, at] of this.due) this.push(at, key);
  }

  private push(at: number, key: string): void {
    const a = this.heapAt;
    const k = this.heapKey;
    let i = a.length;
    a.push(at);
    k.push(key);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if ((a[parent] as number) <= at) break;
      a[i] = a[parent] as number;
      k[i] = k[parent] as string;
      i = parent;
    }
    a[i] = at;
    k[i] = key;
  }

  private pop(): void {
    const a = this.heapAt;
    const k = this.heapKey;
    const lastAt = a.pop() as number;
    const lastKey = k.pop() as string;
    const n = a.length;
    if (n === 0) return;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const r = l + 1;
      const c = r < n && (a[r] as number) < (a[l] as number) ? r : l;
      if ((a[c] as number) >= lastAt) break;
      a[i] = a[c] as number;
      k[i] = k[c] as string;
      i = c;
    }
    a[i] = lastAt;
    k[i] = lastKey;
  }
}
