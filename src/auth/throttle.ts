// Brute-force defence for any login path: failures are counted per client address and per user
// in token buckets; once either bucket is empty, attempts are refused without checking the password.
import { addressKey, RateLimiter } from '../net/limits.ts';

export interface ThrottleOptions {
  /** Failures an address may make in `window` before it is throttled. */
  maxFailuresPerAddress: number;
  /** Failures against one user (from anywhere) in `window` before that user is throttled. */
  maxFailuresPerUser: number;
  /** The window over which the allowance refills completely. */
  windowMs: number;
  /** Bound on remembered addresses and users (each). */
  maxKeys?: number;
}

export type ThrottleVerdict = 'allowed' | 'address' | 'user';

export class LoginThrottle {
  private readonly byAddress: RateLimiter;
  private readonly byUser: RateLimiter;

  constructor(opts: ThrottleOptions) {
    const maxKeys = opts.maxKeys ?? 100_000;
    this.byAddress = new RateLimiter({ capacity: opts.maxFailuresPerAddress, refillPerSecond: (opts.maxFailuresPerAddress * 1000) / opts.windowMs, maxKeys });
    this.byUser = new RateLimiter({ capacity: opts.maxFailuresPerUser, refillPerSecond: (opts.maxFailuresPerUser * 1000) / opts.windowMs, maxKeys });
  }

  /** May `address` try a password for `user` now? (Does not count anything.) */
  check(address: string, user: string, nowMs = Date.now()): ThrottleVerdict {
    if (!this.byAddress.wouldAllow(addressKey(address), 1, nowMs)) return 'address';
    if (!this.byUser.wouldAllow(user, 1, nowMs)) return 'user';
    return 'allowed';
  }

  /** Count a failed attempt against both the address and the user. */
  failed(address: string, user: string, nowMs = Date.now()): void {
    this.byAddress.take(addressKey(address), 1, nowMs);
    this.byUser.take(user, 1, nowMs);
  }
}
