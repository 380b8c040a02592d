// The grant store: how a login path creates or renews the grant of a client address.
// Coalesced (a login skips its write only while the grant is really in the API server, as this
// replica's GrantCache last saw it through its watch, with an expiresAt far enough off), merge-patched
// (404 -> create, create 409 -> patch), retried with backoff and jitter, and never throwing
// anything but a GrantWriteError into a login path. A write that still fails keeps being retried
// in the background until it lands or the grant it would have written has expired.
import { grantKeyFor, type GrantKey } from './address.ts';
import { type AddressError } from '../net/ip.ts';
import type { GrantCache } from './cache.ts';
import { grantWrites } from './metrics.ts';
import { grantsPath } from './paths.ts';
import { userHash } from './user-label.ts';
import {
  ANNOTATION_RENEWED_AT,
  API_VERSION,
  GrantWriteError,
  KIND,
  LABEL_MANAGED_BY,
  LABEL_SOURCE,
  LABEL_USER_HASH,
  type GrantRenewer,
  type GrantSource,
  type RelayGrant,
  type RenewOutcome,
} from './types.ts';
import { KubeApiError, type KubeClient } from '../kube/client.ts';
import { createLogger, type Logger } from '../observability/log.ts';

export interface GrantStoreOptions {
  client: KubeClient;
  namespace: string;
  ttlMs: number;
  renewIntervalMs: number;
  ipv6PrefixLength: number;
  /**
   * The writer's view of the grants the API server holds (its own GrantCache on the same
   * namespace). Without one, or while it is not watching, every login writes: a skip is never
   * made on the store's own belief alone.
   */
  grants?: GrantsSeen;
  log?: Logger;
  /** Attempts within one renew() call before it rejects (the background retry goes on). */
  attempts?: number;
  now?: () => number;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Worth retrying: the server was unreachable, overloaded or briefly unable to answer. */
function isTransient(err: unknown): boolean {
  if (!(err instanceof KubeApiError)) return false;
  return err.status === 0 || err.status === 429 || err.status >= 500;
}

function backoffMs(attempt: number, capMs: number): number {
  return Math.min(capMs, 50 * 2 ** attempt) * (0.5 + Math.random() / 2);
}

/** Whether `expiresAtMs` still runs past the point where this replica would renew it. */
export function isFreshEnough(expiresAtMs: number | undefined, nowMs: number, ttlMs: number, renewIntervalMs: number): boolean {
  return expiresAtMs !== undefined && expiresAtMs > nowMs + ttlMs - renewIntervalMs;
}

/** What the store reads of a GrantCache. */
export type GrantsSeen = Pick<GrantCache, 'watching' | 'expiresAtMsOf' | 'on' | 'off'>;

/**
 * The expiry a skip may rely on: this replica's own write while its watch event is still on the
 * way (`ownWrite`, dropped by the first event about the grant after the write), else what the
 * watch last showed. Undefined while the cache is not watching: its picture may miss deletions.
 */
export function seenExpiry(watching: boolean, ownWrite: number | undefined, cached: number | undefined): number | undefined {
  if (!watching) return undefined;
  return ownWrite ?? cached;
}

/** A grant object exactly as a login writes it (the bench fills its control plane with these). */
export function grantObject(key: GrantKey, user: string, source: GrantSource, expiresAtMs: number, nowMs: number): RelayGrant {
  return {
    apiVersion: API_VERSION,
    kind: KIND,
    metadata: {
      name: key.name,
      labels: { [LABEL_MANAGED_BY]: 'kube-drac', [LABEL_SOURCE]: source, ...(user === '' ? {} : { [LABEL_USER_HASH]: userHash(user) }) },
      annotations: { [ANNOTATION_RENEWED_AT]: new Date(nowMs).toISOString() },
    },
    spec: {
      address: key.address,
      user,
      source,
      // Whole seconds, as DRAC kept them; the renewed-at annotation carries the milliseconds.
      expiresAt: new Date(Math.ceil(expiresAtMs / 1000) * 1000).toISOString().replace('.000Z', 'Z'),
    },
  };
}

/**
 * The merge-patch of a renewal. `managedFields: [{}]` clears the server's field-ownership record,
 * and the API server then skips field tracking on every later update of the object (it tracks
 * only objects that already have managedFields): a grant is ~490 bytes in etcd instead of ~880,
 * and so is every watch event and list item of it; etcd's db per grant halves and the API server
 * holds 1.7x the grants in the same memory (docs/scaling.md). Nothing reads the record: every
 * writer of a grant writes all its fields.
 */
export function renewalPatch(grant: RelayGrant): Record<string, unknown> {
  const { labels, annotations } = grant.metadata;
  // A writer that does not know the user (DRAC's ADD names none) leaves the one who last
  // authenticated there, and the label that says so, as they are.
  if (grant.spec.user === '') {
    return { metadata: { managedFields: [{}], labels: { [LABEL_SOURCE]: grant.spec.source }, annotations }, spec: { source: grant.spec.source, expiresAt: grant.spec.expiresAt } };
  }
  return { metadata: { managedFields: [{}], labels, annotations }, spec: grant.spec };
}

interface Pending {
  key: GrantKey;
  user: string;
  source: GrantSource;
  expiresAtMs: number;
}

export class GrantStore implements GrantRenewer {
  private readonly opts: Required<Omit<GrantStoreOptions, 'log' | 'grants'>> & { log: Logger; grants: GrantsSeen | undefined };
  /**
   * This replica's writes whose watch event has not arrived yet (name -> expiry written), so that
   * a burst of logins right after a write does not write again. Any event about the grant (this
   * write's own, another replica's renewal, an edit, a deletion) hands the answer back to the cache.
   */
  private readonly ownWrites = new Map<string, number>();
  private readonly forgetOwnWrite = (name: string) => this.ownWrites.delete(name);
  private readonly inflight = new Map<string, { user: string; write: Promise<RenewOutcome> }>();
  /** Writes that failed, being retried in the background; the newest login wins. */
  private readonly retrying = new Map<string, Pending>();
  private pruneTimer: NodeJS.Timeout;
  private closed = false;

  constructor(opts: GrantStoreOptions) {
    this.opts = { attempts: 3, now: Date.now, log: createLogger('grant-store'), grants: undefined, ...opts };
    this.opts.grants?.on('upsert', this.forgetOwnWrite);
    this.opts.grants?.on('delete', this.forgetOwnWrite);
    this.pruneTimer = setInterval(() => this.prune(), Math.max(1000, Math.min(60_000, opts.renewIntervalMs))).unref();
  }

  async renew(clientIp: string, user: string, source: GrantSource, opts?: { proxyPeer?: string }): Promise<RenewOutcome> {
    let key: GrantKey;
    try {
      key = grantKeyFor(clientIp, this.opts.ipv6PrefixLength, opts);
    } catch (err) {
      grantWrites.inc({ op: 'failed' });
      throw new GrantWriteError(clientIp, (err as AddressError).message, { cause: err });
    }
    const now = this.opts.now();
    if (isFreshEnough(this.seenExpiryOf(key.name), now, this.opts.ttlMs, this.opts.renewIntervalMs)) {
      grantWrites.inc({ op: 'skipped' });
      return 'skipped';
    }
    // Logins from one address at the same moment share one write.
    const running = this.inflight.get(key.name);
    if (running) return running.write;
    const pending: Pending = { key, user, source, expiresAtMs: now + this.opts.ttlMs };
    const write = this.writeWithRetries(pending, this.opts.attempts, 1000).finally(() => this.inflight.delete(key.name));
    this.inflight.set(key.name, { user, write });
    try {
      return await write;
    } catch (err) {
      this.retryInBackground(pending);
      throw err;
    }
  }

  private seenExpiryOf(name: string): number | undefined {
    const grants = this.opts.grants;
    return seenExpiry(grants?.watching ?? false, this.ownWrites.get(name), grants?.expiresAtMsOf(name));
  }

  /** Delete the grant of an address or prefix (whoson LOGOUT, tests, admin tools). */
  async revoke(clientIp: string): Promise<boolean> {
    const key = grantKeyFor(clientIp, this.opts.ipv6PrefixLength);
    this.ownWrites.delete(key.name);
    this.retrying.delete(key.name);
    try {
      await this.opts.client.delete(grantsPath(this.opts.namespace, key.name));
      return true;
    } catch (err) {
      if (err instanceof KubeApiError && err.status === 404) return false;
      throw new GrantWriteError(key.address, `revoking ${key.name}: ${(err as Error).message}`, { cause: err });
    }
  }

  /**
   * Before `user`'s grants are revoked (their credential changed): drop this store's background
   * retries of the user's writes and wait for its writes in flight, so that none of them lands
   * after the revocation and brings a grant back.
   */
  async settleUser(user: string): Promise<void> {
    for (const [name, p] of this.retrying) if (p.user === user) this.retrying.delete(name);
    const writes = [...this.inflight.values()].filter((w) => w.user === user).map((w) => w.write.catch(() => undefined));
    await Promise.all(writes);
  }

  /** A grant was deleted by someone who knew why (a revocation): the next login writes it again. */
  forget(name: string): void {
    this.ownWrites.delete(name);
    this.retrying.delete(name);
  }

  close(): void {
    this.closed = true;
    clearInterval(this.pruneTimer);
    this.opts.grants?.off('upsert', this.forgetOwnWrite);
    this.opts.grants?.off('delete', this.forgetOwnWrite);
  }

  private async writeWithRetries(p: Pending, attempts: number, capMs: number): Promise<RenewOutcome> {
    for (let attempt = 0; ; attempt++) {
      try {
        const outcome = await this.write(p);
        // Only a cache that is watching can hand this back (see ownWrites); without one, nothing to keep.
        if (this.opts.grants) this.ownWrites.set(p.key.name, p.expiresAtMs);
        grantWrites.inc({ op: outcome === 'created' ? 'create' : 'patch' });
        return outcome;
      } catch (err) {
        if (!isTransient(err) || attempt + 1 >= attempts || this.closed) {
          grantWrites.inc({ op: 'failed' });
          throw new GrantWriteError(p.key.address, `writing RelayGrant ${p.key.name}: ${(err as Error).message}`, { cause: err });
        }
        await sleep(backoffMs(attempt, capMs));
      }
    }
  }

  /** One write: merge-patch; 404 -> create; 409 on create (someone else created it) -> patch. */
  private async write(p: Pending): Promise<RenewOutcome> {
    const { client, namespace } = this.opts;
    const path = grantsPath(namespace, p.key.name);
    const body = grantObject(p.key, p.user, p.source, p.expiresAtMs, this.opts.now());
    try {
      await client.mergePatch(path, renewalPatch(body));
      return 'patched';
    } catch (err) {
      if (!(err instanceof KubeApiError && err.status === 404)) throw err;
    }
    try {
      await client.create(grantsPath(namespace), body);
      return 'created';
    } catch (err) {
      if (!(err instanceof KubeApiError && err.status === 409)) throw err;
    }
    await client.mergePatch(path, renewalPatch(body));
    return 'patched';
  }

  private retryInBackground(p: Pending): void {
    const already = this.retrying.has(p.key.name);
    this.retrying.set(p.key.name, p);
    if (already || this.closed) return;
    void (async () => {
      let attempt = 0;
      for (;;) {
        const latest = this.retrying.get(p.key.name);
        if (!latest || this.closed) return;
        if (latest.expiresAtMs <= this.opts.now()) {
          this.retrying.delete(p.key.name);
          this.opts.log.warn('grant_write_abandoned', { grant: p.key.name, reason: 'the grant would have expired' });
          return;
        }
        await sleep(backoffMs(attempt++ + 3, 30_000));
        const current = this.retrying.get(p.key.name);
        if (!current || this.closed) return;
        try {
          await this.writeWithRetries(current, 1, 0);
          if (this.retrying.get(p.key.name) === current) this.retrying.delete(p.key.name);
          this.opts.log.info('grant_write_recovered', { grant: p.key.name, attempts: attempt });
        } catch (err) {
          if (!isTransient((err as Error).cause)) {
            this.retrying.delete(p.key.name);
            this.opts.log.error('grant_write_abandoned', { grant: p.key.name, error: (err as Error).message });
            return;
          }
        }
      }
    })();
  }

  private prune(): void {
    const now = this.opts.now();
    for (const [name, expiresAtMs] of this.ownWrites) if (expiresAtMs <= now) this.ownWrites.delete(name);
  }
}
