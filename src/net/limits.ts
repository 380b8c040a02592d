// Connection limits (total and per client address) and per-key token buckets with bounded memory.
import { unmapIpv4 } from './ip.ts';

export interface ConnectionLimits {
  /** Concurrent connections in total; 0 = unlimited. */
  maxTotal: number;
  /** Concurrent connections from one client address; 0 = unlimited. */
  maxPerAddress: number;
}

export type AcquireResult = { ok: true; release: () => void } | { ok: false; reason: 'total' | 'per-address' };

/** A slot's release that does its work the first time it is called and nothing after. */
export function releaseOnce(release: () => void): () => void {
  let released = false;
  return () => {
    if (released) return;
    released = true;
    release();
  };
}

/** The key under which an address is counted: an IPv4-mapped IPv6 address counts as its IPv4. */
export function addressKey(ip: string): string {
  return unmapIpv4(ip) ?? ip.toLowerCase();
}

/** Counts open connections. Each successful `acquire` must be paired with one `release` (idempotent). */
export class ConnectionLimiter {
  private readonly limits: ConnectionLimits;
  private readonly perAddress = new Map<string, number>();
  private totalCount = 0;

  constructor(limits: ConnectionLimits) {
    this.limits = limits;
  }

  get total(): number {
    return this.totalCount;
  }

  countFor(ip: string): number {
    return this.perAddress.get(addressKey(ip)) ?? 0;
  }

  acquire(ip: string): AcquireResult {
    const key = addressKey(ip);
    const current = this.perAddress.get(key) ?? 0;
    if (this.limits.maxTotal > 0 && this.totalCount >= this.limits.maxTotal) return { ok: false, reason: 'total' };
    if (this.limits.maxPerAddress > 0 && current >= this.limits.maxPerAddress) return { ok: false, reason: 'per-address' };
    this.perAddress.set(key, current + 1);
    this.totalCount++;
    return {
      ok: true,
      release: releaseOnce(() => {
        this.totalCount--;
        const n = (this.perAddress.get(key) ?? 1) - 1;
        if (n <= 0) this.perAddress.delete(key);
        else this.perAddress.set(key, n);
      }),
    };
  }
}

export interface TokenBucketOptions {
  /** Burst size: tokens a fresh key starts with and the most it can hold. */
  capacity: number;
  /** Tokens added per second. */
  refillPerSecond: number;
  /**
   * Most keys remembered. When full, the least recently used key is forgotten (it then starts
   * again with a full bucket), so memory stays bounded whatever the number of clients.
   */
  maxKeys: number;
}

interface Bucket {
  tokens: number;
  updatedMs: number;
}

/** A token bucket per key (an address, a user name, a session), in a bounded LRU map. */
export class RateLimiter {
  private readonly opts: TokenBucketOptions;
  private readonly buckets = new Map<string, Bucket>();

  constructor(opts: TokenBucketOptions) {
    if (!(opts.capacity > 0) || !(opts.refillPerSecond >= 0) || !(opts.maxKeys > 0)) {
      throw new RangeError('RateLimiter needs capacity > 0, refillPerSecond >= 0 and maxKeys > 0');
    }
    this.opts = opts;
  }

  get size(): number {
    return this.buckets.size;
  }

  private current(key: string, nowMs: number): Bucket {
    let b = this.buckets.get(key);
    if (b) {
      this.buckets.delete(key); // re-insert: Map order is our LRU order
      const elapsed = Math.max(0, nowMs - b.updatedMs) / 1000;
      b.tokens = Math.min(this.opts.capacity, b.tokens + elapsed * this.opts.refillPerSecond);
      b.updatedMs = nowMs;
    } else {
      b = { tokens: this.opts.capacity, updatedMs: nowMs };
      while (this.buckets.size >= this.opts.maxKeys) {
        const oldest = this.buckets.keys().next().value as string;
        this.buckets.delete(oldest);
      }
    }
    this.buckets.set(key, b);
    return b;
  }

  /** Take `n` tokens if there are that many; false (and nothing taken) otherwise. */
  take(key: string, n = 1, nowMs = Date.now()): boolean {
    const b = this.current(key, nowMs);
    if (b.tokens < n) return false;
    b.tokens -= n;
    return true;
  }

  /** Whether `n` tokens are there now, without taking them. */
  wouldAllow(key: string, n = 1, nowMs = Date.now()): boolean {
    const b = this.buckets.get(key);
    if (!b) return n <= this.opts.capacity;
    const elapsed = Math.max(0, nowMs - b.updatedMs) / 1000;
    return Math.min(this.opts.capacity, b.tokens + elapsed * this.opts.refillPerSecond) >= n;
  }

  /** Milliseconds until `n` tokens will be there (0 when they are now). */
  retryAfterMs(key: string, n = 1, nowMs = Date.now()): number {
    const b = this.buckets.get(key);
    if (!b) return 0;
    const elapsed = Math.max(0, nowMs - b.updatedMs) / 1000;
    const tokens = Math.min(this.opts.capacity, b.tokens + elapsed * this.opts.refillPerSecond);
    if (tokens >= n) return 0;
    if (this.opts.refillPerSecond === 0) return Infinity;
    return Math.ceil(((n - tokens) / this.opts.refillPerSecond) * 1000);
  }

  /** Forget a key (e.g. after a successful login, clear its failure bucket). */
  reset(key: string): void {
    this.buckets.delete(key);
  }
}
