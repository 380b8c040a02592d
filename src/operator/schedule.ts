// The operator's pure parts: when a grant is due, what to do with a fresh read of it, how long
// to back off, and a queue of due times in which a key's new time replaces its old one
// (cert-manager's per-key timers that replace each other, kept in one heap). No sockets here; the
// clock and the timer functions are injectable.
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

export interface DueQueueOwner {
  /** Called for each key that came due, once per batch, late rather than early. */
  fire(key: string): void;
  /** The key's current due time; an entry with another time (or for a gone key) is stale. */
  dueOf(key: string): number | undefined;
  /** How many keys have a due time. */
  liveKeys(): number;
  /** Every key with its due time, to rebuild the heap without stale entries. */
  forEachLive(fn: (key: string, atMs: number) => void): void;
}

/**
 * Due times for many keys in one min-heap of (time, key) pairs and one Node timer for the
 * earliest, not a Node timer per key (100k Timeout objects cost ~60 MB). The queue keeps nothing
 * per key besides: its owner knows each key's current time (`dueOf`), so scheduling a key again
 * (a renewal moves it) just adds an entry, and an entry that no longer matches when it reaches
 * the top is dropped there. When stale entries make up half the heap it is rebuilt from the
 * owner's keys. ~16 bytes a key, where a Map of key -> time beside the heap cost ~80.
 */
export class DueQueue {
  private readonly timers: Timers;
  private readonly owner: DueQueueOwner;
  private heapAt: number[] = [];
  private heapKey: string[] = [];
  private handle: unknown;
  private armedAt = Infinity;

  constructor(owner: DueQueueOwner, timers: Timers = realTimers) {
    this.owner = owner;
    this.timers = timers;
  }

  /** Entries in the heap, stale ones included. */
  get length(): number {
    return this.heapAt.length;
  }

  /** `key` is due at `atMs` (its owner's dueOf(key) must say so by the time it comes up). */
  push(key: string, atMs: number): void {
    if (this.heapAt.length > 2 * this.owner.liveKeys() + 1024) this.rebuild();
    this.insert(atMs, key);
    if (atMs < this.armedAt) this.rearm();
  }

  clear(): void {
    this.heapAt = [];
    this.heapKey = [];
    this.disarm();
  }

  private isLive(i: number): boolean {
    return this.owner.dueOf(this.heapKey[i] as string) === this.heapAt[i];
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
    const fired = new Set<string>();
    // A hop of a wait beyond Node's limit finds nothing due yet and just re-arms.
    while (this.heapAt.length > 0 && (this.heapAt[0] as number) <= now) {
      if (this.isLive(0)) fired.add(this.heapKey[0] as string);
      this.pop();
    }
    this.rearm();
    for (const key of fired) this.owner.fire(key);
  }

  private rebuild(): void {
    this.heapAt = [];
    this.heapKey = [];
    this.owner.forEachLive((key, at) => this.insert(at, key));
  }

  private insert(at: number, key: string): void {
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
