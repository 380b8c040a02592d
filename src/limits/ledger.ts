// One SMTP replica's in-memory view of the hour's relay counts: its own counts (by bucket, to
// publish), the objects the other replicas published (from the watch), and their sum, which the
// RCPT decision reads with a few map lookups. Pure: the clock is passed in, I/O is usage-sync.ts.
//
// While the replica cannot see the others or they cannot see it (watch down, publish failing), it
// assumes each of the other replicas relayed as much as it did itself since it lost sight: its own
// new counts weigh R times. In an API outage every replica then takes about its 1/R share of what
// was left, and together they stay within the limit (plus the usual R·r·f of the flush delay).
import { checkRelayLimit, type LimitExceeded, type LimitsPolicy, type LimitSubject, type UsageView } from './policy.ts';
import { API_VERSION, USAGE_KIND, type RelayUsage, type UsageBucket, type UsageCounts } from './types.ts';
import { BUCKET_MS, bucketCounts, bucketStartMs, replicaIsActive, UsageSums } from './usage.ts';

function copyCounts(map: Map<string, UsageCounts>): Record<string, UsageCounts> {
  const out: Record<string, UsageCounts> = {};
  for (const [key, c] of map) out[key] = { messages: c.messages, recipients: c.recipients };
  return out;
}

/** What one relayed message adds, counted once DATA was handed on. */
export interface RelayedMessage {
  user?: string | undefined;
  address?: string | undefined;
  recipients: number;
}

/** Counts by bucket start; the sum of those that still count is kept beside them. */
class BucketedCounts {
  readonly buckets = new Map<number, UsageSums>();
  readonly total = new UsageSums();

  add(startMs: number, message: RelayedMessage): void {
    let bucket = this.buckets.get(startMs);
    if (bucket === undefined) this.buckets.set(startMs, (bucket = new UsageSums()));
    const counts = { messages: 1, recipients: message.recipients };
    for (const sums of [bucket, this.total]) {
      if (message.user !== undefined && message.user !== '') sums.add(sums.users, message.user, counts);
      if (message.address !== undefined) sums.add(sums.addresses, message.address, counts);
    }
  }

  /** Drop the buckets that no longer count at `refMs` and sum the rest again. */
  prune(refMs: number, bucketMs: number): void {
    for (const start of [...this.buckets.keys()]) if (!bucketCounts(start, refMs, bucketMs)) this.buckets.delete(start);
    this.total.users.clear();
    this.total.addresses.clear();
    for (const bucket of this.buckets.values()) {
      for (const [user, c] of bucket.users) this.total.add(this.total.users, user, c);
      for (const [address, c] of bucket.addresses) this.total.add(this.total.addresses, address, c);
    }
  }

  clear(): void {
    this.buckets.clear();
    this.total.users.clear();
    this.total.addresses.clear();
  }
}

export interface UsageLedgerOptions {
  /** This replica's object name; its own object in the watch is not summed (its counts are here). */
  replica: string;
  bucketMs?: number;
}

export class UsageLedger implements UsageView {
  readonly replica: string;
  private readonly bucketMs: number;
  private readonly own = new BucketedCounts();
  /** Own counts since sight was lost, weighed (replicas - 1) more. */
  private readonly unseen = new BucketedCounts();
  private readonly remote = new Map<string, RelayUsage>();
  /** Own (all of it) + remote, over the buckets that count at `refMs`. */
  private readonly totals = new UsageSums();
  /** The end of the current bucket: every sum is taken as of then, so adds and removals agree. */
  private refMs = Number.NEGATIVE_INFINITY;
  private _blind = false;
  private _replicas = 1;
  /** The replicas known when sight was lost: their heartbeats age while blind, they do not stop. */
  private blindReplicas = 1;
  private _dirty = false;
  private readonly scratch: UsageCounts = { messages: 0, recipients: 0 };

  constructor(opts: UsageLedgerOptions) {
    this.replica = opts.replica;
    this.bucketMs = opts.bucketMs ?? BUCKET_MS;
  }

  /** The replicas that may relay now: this one and every other that published lately. */
  get replicas(): number {
    return this._replicas;
  }

  get blind(): boolean {
    return this._blind;
  }

  /** Own counts changed since the last `snapshot`. */
  get dirty(): boolean {
    return this._dirty;
  }

  /** The first limit one more relayed recipient would pass at `nowMs`, or undefined. */
  check(policy: LimitsPolicy, subject: LimitSubject, nowMs: number): LimitExceeded | undefined {
    this.roll(nowMs);
    return checkRelayLimit(this, policy, subject);
  }

  // user() and address() may answer with one reused object while blind: read it before the next call.
  user(name: string): UsageCounts | undefined {
    return this.weighed(this.totals.users.get(name), this._blind ? this.unseen.total.users.get(name) : undefined);
  }

  address(address: string): UsageCounts | undefined {
    return this.weighed(this.totals.addresses.get(address), this._blind ? this.unseen.total.addresses.get(address) : undefined);
  }

  private weighed(seen: UsageCounts | undefined, unseen: UsageCounts | undefined): UsageCounts | undefined {
    if (unseen === undefined) return seen;
    const extra = Math.max(this._replicas, this.blindReplicas) - 1;
    this.scratch.messages = (seen?.messages ?? 0) + extra * unseen.messages;
    this.scratch.recipients = (seen?.recipients ?? 0) + extra * unseen.recipients;
    return this.scratch;
  }

  /** Count one relayed message (after DATA was handed on), for each relayed recipient. */
  count(message: RelayedMessage, nowMs: number): void {
    this.roll(nowMs);
    const start = bucketStartMs(nowMs, this.bucketMs);
    this.own.add(start, message);
    if (this._blind) this.unseen.add(start, message);
    const counts = { messages: 1, recipients: message.recipients };
    if (message.user !== undefined && message.user !== '') this.totals.add(this.totals.users, message.user, counts);
    if (message.address !== undefined) this.totals.add(this.totals.addresses, message.address, counts);
    this._dirty = true;
  }

  /**
   * Sight lost (true) or back (false). Counts made while blind weigh for the replicas that could
   * not see them; once sight is back the others' published objects say what they did.
   */
  setBlind(blind: boolean): void {
    if (blind === this._blind) return;
    this._blind = blind;
    this.blindReplicas = this._replicas;
    this.unseen.clear();
  }

  /** Another replica's object, as listed or watched (this replica's own is left out). */
  upsertRemote(usage: RelayUsage, nowMs: number): void {
    const name = usage.metadata.name;
    if (name === this.replica) return;
    this.roll(nowMs);
    const old = this.remote.get(name);
    if (old !== undefined) this.totals.addUsage(old, this.refMs, -1);
    this.remote.set(name, usage);
    this.totals.addUsage(usage, this.refMs);
    this.countReplicas();
  }

  deleteRemote(name: string, nowMs: number): void {
    const old = this.remote.get(name);
    if (old === undefined) return;
    this.roll(nowMs);
    this.totals.addUsage(old, this.refMs, -1);
    this.remote.delete(name);
    this.countReplicas();
  }

  /** A full list: every other replica's object as it is now. */
  replaceRemote(objects: readonly RelayUsage[], nowMs: number): void {
    this.remote.clear();
    for (const usage of objects) if (usage.metadata.name !== this.replica) this.remote.set(usage.metadata.name, usage);
    this.rebuild(nowMs);
  }

  /** This replica's object from before a restart: its counts are still this replica's. */
  adoptOwn(usage: RelayUsage, nowMs: number): void {
    for (const bucket of usage.spec.buckets ?? []) {
      const parsed = Date.parse(bucket.start);
      if (Number.isNaN(parsed)) continue;
      const start = bucketStartMs(parsed, this.bucketMs);
      for (const [user, c] of Object.entries(bucket.users ?? {})) this.addOwn(start, 'users', user, c);
      for (const [address, c] of Object.entries(bucket.addresses ?? {})) this.addOwn(start, 'addresses', address, c);
    }
    this.rebuild(nowMs);
    this._dirty = true;
  }

  private addOwn(start: number, scope: 'users' | 'addresses', key: string, counts: UsageCounts): void {
    let bucket = this.own.buckets.get(start);
    if (bucket === undefined) this.own.buckets.set(start, (bucket = new UsageSums()));
    bucket.add(bucket[scope], key, counts);
  }

  /** This replica's object to publish: the buckets that still count. Clears `dirty`. */
  snapshot(nowMs: number): RelayUsage {
    this.roll(nowMs);
    const buckets: UsageBucket[] = [...this.own.buckets]
      .sort(([a], [b]) => a - b)
      .map(([start, sums]) => {
        const bucket: UsageBucket = { start: new Date(start).toISOString() };
        // Copies: the published object must not change as this replica counts on.
        if (sums.users.size > 0) bucket.users = copyCounts(sums.users);
        if (sums.addresses.size > 0) bucket.addresses = copyCounts(sums.addresses);
        return bucket;
      });
    this._dirty = false;
    return {
      apiVersion: API_VERSION,
      kind: USAGE_KIND,
      metadata: { name: this.replica },
      spec: { replica: this.replica, bucketSeconds: this.bucketMs / 1000, publishedAt: new Date(nowMs).toISOString(), buckets },
    };
  }

  /** Mark the counts as not yet published (a write that failed is tried again). */
  markDirty(): void {
    this._dirty = true;
  }

  /** At a new bucket, sum again without the buckets that aged out. */
  private roll(nowMs: number): void {
    if (nowMs <= this.refMs) return;
    this.rebuild(nowMs);
  }

  private rebuild(nowMs: number): void {
    this.refMs = bucketStartMs(nowMs, this.bucketMs) + this.bucketMs - 1;
    const hadBuckets = this.own.buckets.size;
    this.own.prune(this.refMs, this.bucketMs);
    // An aged-out bucket is a change to publish: the others must stop counting it too (they do
    // anyway by its start, but the object then shrinks).
    if (this.own.buckets.size !== hadBuckets) this._dirty = true;
    this.unseen.prune(this.refMs, this.bucketMs);
    this.totals.users.clear();
    this.totals.addresses.clear();
    for (const [user, c] of this.own.total.users) this.totals.add(this.totals.users, user, c);
    for (const [address, c] of this.own.total.addresses) this.totals.add(this.totals.addresses, address, c);
    for (const usage of this.remote.values()) this.totals.addUsage(usage, this.refMs);
    this.countReplicas();
  }

  private countReplicas(): void {
    let n = 1;
    for (const usage of this.remote.values()) if (replicaIsActive(usage, this.refMs)) n++;
    this._replicas = n;
  }
}
