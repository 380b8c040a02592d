// Summing published relay counts over the sliding hour: pure functions over RelayUsage objects,
// shared by the SMTP replicas (src/limits/ledger.ts) and by `kubectl drac top` and `why`.
import { checkRelayLimit, type LimitExceeded, type LimitsPolicy } from './policy.ts';
import type { RelayUsage, UsageCounts } from './types.ts';

/** Limits are per hour. */
export const WINDOW_MS = 3_600_000;
/** Counts are kept in 5-minute buckets: 12 make the hour (13 while the current one fills). */
export const BUCKET_MS = 300_000;

/** Start of the bucket holding `ms`. */
export function bucketStartMs(ms: number, bucketMs: number = BUCKET_MS): number {
  return Math.floor(ms / bucketMs) * bucketMs;
}

/**
 * Whether a bucket still counts at `nowMs`: while any part of it lies within the last hour. So a
 * relay is counted for at least an hour and at most an hour and one bucket: a limit errs towards
 * refusing, never towards relaying more than it says.
 */
export function bucketCounts(startMs: number, nowMs: number, bucketMs: number = BUCKET_MS, windowMs: number = WINDOW_MS): boolean {
  return startMs + bucketMs > nowMs - windowMs && startMs <= nowMs;
}

/** Messages and recipients per user and per grant address, summed over replicas and buckets. */
export class UsageSums {
  readonly users = new Map<string, UsageCounts>();
  readonly addresses = new Map<string, UsageCounts>();

  user(name: string): UsageCounts | undefined {
    return this.users.get(name);
  }

  address(address: string): UsageCounts | undefined {
    return this.addresses.get(address);
  }

  /** Add (or with `sign` -1, take away) counts. */
  add(map: Map<string, UsageCounts>, key: string, counts: UsageCounts, sign: 1 | -1 = 1): void {
    const current = map.get(key);
    if (current === undefined) {
      if (sign > 0) map.set(key, { messages: counts.messages, recipients: counts.recipients });
      return;
    }
    current.messages += sign * counts.messages;
    current.recipients += sign * counts.recipients;
    if (current.messages <= 0 && current.recipients <= 0) map.delete(key);
  }

  /** Add (or take away) every bucket of `usage` that counts at `nowMs`. */
  addUsage(usage: RelayUsage, nowMs: number, sign: 1 | -1 = 1): void {
    const bucketMs = usage.spec.bucketSeconds * 1000;
    for (const bucket of usage.spec.buckets ?? []) {
      const startMs = Date.parse(bucket.start);
      if (Number.isNaN(startMs) || !bucketCounts(startMs, nowMs, bucketMs)) continue;
      for (const [user, counts] of Object.entries(bucket.users ?? {})) this.add(this.users, user, counts, sign);
      for (const [address, counts] of Object.entries(bucket.addresses ?? {})) this.add(this.addresses, address, counts, sign);
    }
  }
}

/** What every replica published, summed over the hour before `nowMs` (`kubectl drac top`, `why`). */
export function sumUsage(objects: Iterable<RelayUsage>, nowMs: number): UsageSums {
  const sums = new UsageSums();
  for (const usage of objects) sums.addUsage(usage, nowMs);
  return sums;
}

/**
 * Whether the next relay for this user or grant address would be refused at `nowMs`, going by the
 * published objects alone (`kubectl drac why`; a replica also counts what it has not published).
 */
export function publishedLimitExceeded(
  objects: Iterable<RelayUsage>,
  policy: LimitsPolicy,
  subject: { user?: string | undefined; address?: string | undefined },
  nowMs: number,
): LimitExceeded | undefined {
  return checkRelayLimit(sumUsage(objects, nowMs), policy, { ...subject, pendingRecipients: 0 });
}

/** The users who relayed most, by recipients then messages, at most `n`. */
export function topUsers(sums: UsageSums, n: number): { user: string; messages: number; recipients: number }[] {
  return [...sums.users]
    .map(([user, c]) => ({ user, messages: c.messages, recipients: c.recipients }))
    .sort((a, b) => b.recipients - a.recipients || b.messages - a.messages || (a.user < b.user ? -1 : 1))
    .slice(0, n);
}

/**
 * A running replica writes its object at least this often, even with nothing new to count, so that
 * the others know how many replicas may relay.
 */
export const HEARTBEAT_MS = BUCKET_MS;

/** Whether the object's replica is running: it wrote within three heartbeats. */
export function replicaIsActive(usage: RelayUsage, nowMs: number): boolean {
  const publishedAt = Date.parse(usage.spec.publishedAt);
  return Number.isNaN(publishedAt) || publishedAt > nowMs - 3 * HEARTBEAT_MS;
}

/**
 * Whether the object still matters at `nowMs`: a bucket still counts, or its replica is running.
 * One that does not may be deleted.
 */
export function usageIsLive(usage: RelayUsage, nowMs: number): boolean {
  if (replicaIsActive(usage, nowMs)) return true;
  const bucketMs = usage.spec.bucketSeconds * 1000;
  return (usage.spec.buckets ?? []).some((b) => {
    const startMs = Date.parse(b.start);
    // An unreadable start is kept (never delete counts we cannot read); the CRD refuses them anyway.
    return Number.isNaN(startMs) || startMs + bucketMs > nowMs - WINDOW_MS;
  });
}
