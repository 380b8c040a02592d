// Revocation on credential change: when the users file changes, every grant of a user whose
// password changed, who was removed or set `nologin` is deleted, and an Event on the grant says
// why. Run by each pop3 replica (see charts/kube-drac/templates/rbac.yaml for why pop3): each one
// sees the file change and orders the revocation after its own writes in flight; the deletes of
// several replicas are idempotent (404: another replica was first), and only the replica whose
// delete succeeded counts it and posts the Event, so there is one Event per revoked grant.
import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { UserDatabase, type UserEntry } from '../auth/passwd-file.ts';
import type { Scheme } from '../auth/schemes.ts';
import { listGrants } from '../grants/list.ts';
import { grantsPath } from '../grants/paths.ts';
import type { GrantStore } from '../grants/store.ts';
import { API_VERSION, KIND, type RelayGrant } from '../grants/types.ts';
import { UNLABELLED_SELECTOR, userSelector } from '../grants/user-label.ts';
import { KubeApiError, type KubeClient } from '../kube/client.ts';
import { postEvent } from '../kube/events.ts';
import type { Logger } from '../observability/log.ts';
import { credentialChanges, revocationEvent, type CredentialChange } from './credential-changes.ts';
import { grantsRevoked, revocationFailures } from './metrics.ts';

const DELETE_CONCURRENCY = 16;

export interface CredentialRevokerOptions {
  client: KubeClient;
  namespace: string;
  /** This replica's store: its retries are dropped and writes in flight awaited before a pass. */
  store?: Pick<GrantStore, 'settleUser' | 'forget'>;
  log: Logger;
  /**
   * Wait this long after the change before listing: the session processes of this replica
   * (pop3.workers) reload the same file on the same event, and a login they checked against the
   * old file just before must have reached the store by then.
   */
  settleMs?: number;
  /** Who posts the Events. */
  component?: string;
  instance?: string;
}

/** Revokes the grants of users whose credential changed; one pass per change, in order, retried until done. */
export class CredentialRevoker {
  private readonly opts: Required<Omit<CredentialRevokerOptions, 'store'>> & Pick<CredentialRevokerOptions, 'store'>;
  /** Users waiting for their pass, with when it may start (the newest change wins). */
  private readonly queue = new Map<string, { change: CredentialChange; notBeforeMs: number }>();
  private running: Promise<void> | undefined;
  private readonly stop = new AbortController();

  constructor(opts: CredentialRevokerOptions) {
    this.opts = { settleMs: 1000, component: 'kube-drac-pop3', instance: process.env.POD_NAME ?? os.hostname(), ...opts };
  }

  /** The users file's onUsersChanged hook. */
  readonly usersChanged = (before: ReadonlyMap<string, UserEntry>, after: ReadonlyMap<string, UserEntry>): void => {
    const changes = credentialChanges(before, after);
    if (changes.length === 0) return;
    this.opts.log.info('credentials_changed', { users: changes.length });
    const notBeforeMs = Date.now() + this.opts.settleMs;
    for (const change of changes) {
      this.queue.delete(change.user);
      this.queue.set(change.user, { change, notBeforeMs });
    }
    this.running ??= this.drain().finally(() => {
      this.running = undefined;
    });
  };

  /** Resolves once every queued pass is done (tests, and close). */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  /** Stop: a pass under way ends at its next wait; what is still queued is not revoked. */
  async close(): Promise<void> {
    this.stop.abort();
    await this.idle();
  }

  private async drain(): Promise<void> {
    let failures = 0;
    try {
      while (!this.stop.signal.aborted) {
        const next = this.queue.values().next();
        if (next.done) return;
        const queued = next.value;
        const wait = queued.notBeforeMs - Date.now();
        if (wait > 0) await sleep(wait, undefined, { signal: this.stop.signal });
        try {
          await this.revoke(queued.change);
          // A newer change of the same user queued meanwhile gets its own pass.
          if (this.queue.get(queued.change.user) === queued) this.queue.delete(queued.change.user);
          failures = 0;
        } catch (err) {
          if (this.stop.signal.aborted) return;
          revocationFailures.inc();
          this.opts.log.error('revocation_failed', { user: queued.change.user, reason: queued.change.reason, error: err as Error, retrying: true });
          await sleep(Math.min(30_000, 500 * 2 ** failures++), undefined, { signal: this.stop.signal });
        }
      }
    } catch (err) {
      if (!this.stop.signal.aborted) throw err;
    }
  }

  /** Delete every grant of `change.user`; resolves with the names this replica deleted. */
  async revoke(change: CredentialChange): Promise<string[]> {
    const { user } = change;
    await this.opts.store?.settleUser(user);
    const { client, namespace } = this.opts;
    const labelled = await listGrants(client, namespace, userSelector(user));
    const unlabelled = await listGrants(client, namespace, UNLABELLED_SELECTOR);
    const grants = [...labelled, ...unlabelled].filter((g) => g.spec.user === user);
    const deleted: string[] = [];
    const events: Promise<void>[] = [];
    const revokeOne = async (grant: RelayGrant): Promise<void> => {
      const gone = await this.deleteGrant(grant, user);
      if (gone === undefined) return;
      deleted.push(gone.metadata.name);
      this.opts.store?.forget(gone.metadata.name);
      grantsRevoked.inc({ reason: change.reason });
      this.opts.log.info('grant_revoked', { grant: gone.metadata.name, user, reason: change.reason });
      const event = revocationEvent(change);
      const posting = postEvent(this.opts.client, {
        involvedObject: { apiVersion: API_VERSION, kind: KIND, namespace: this.opts.namespace, name: gone.metadata.name, uid: gone.metadata.uid },
        type: 'Normal',
        reason: event.reason,
        message: event.message,
        component: this.opts.component,
        instance: this.opts.instance,
      }).catch((err: unknown) => this.opts.log.warn('event_failed', { grant: gone.metadata.name, error: err as Error }));
      events.push(posting);
    };
    // A few deletes at a time: a user with many grants is revoked in about the time of one
    // round trip per DELETE_CONCURRENCY grants, not one per grant.
    let next = 0;
    await Promise.all(
      Array.from({ length: Math.min(DELETE_CONCURRENCY, grants.length) }, async () => {
        while (next < grants.length) await revokeOne(grants[next++] as RelayGrant);
      }),
    );
    // Best effort, but waited for: a short-lived caller (kubectl drac) must not exit before them.
    await Promise.all(events);
    if (grants.length > 0 || deleted.length > 0) this.opts.log.info('user_revoked', { user, reason: change.reason, found: grants.length, deleted: deleted.length });
    return deleted;
  }

  /**
   * Delete the grant as listed (uid and resourceVersion as preconditions). If it changed since
   * (409) and is still the user's, delete the new version: a renewal that raced the pass may come
   * from a login another replica checked against the old file. Undefined when there was nothing to
   * delete any more (another replica deleted it, or it now belongs to another user).
   */
  private async deleteGrant(grant: RelayGrant, user: string): Promise<RelayGrant | undefined> {
    const path = grantsPath(this.opts.namespace, grant.metadata.name);
    let current: RelayGrant | undefined = grant;
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        await this.opts.client.delete(path, { uid: current.metadata.uid, resourceVersion: current.metadata.resourceVersion });
        return current;
      } catch (err) {
        if (err instanceof KubeApiError && err.status === 404) return undefined;
        if (!(err instanceof KubeApiError && err.status === 409)) throw err;
      }
      current = await this.opts.client.get<RelayGrant>(path);
      if (current === undefined || current.spec.user !== user) return undefined;
    }
    throw new Error(`${grant.metadata.name} kept changing while being revoked`);
  }
}

export interface UsersFileRevocationOptions extends CredentialRevokerOptions {
  usersFile: string;
  defaultScheme?: Scheme;
}

/**
 * Watch the users file for credential changes (a UserDatabase of its own: with pop3.workers > 1 the
 * session processes hold theirs) and revoke through a CredentialRevoker.
 */
export function revokeOnCredentialChange(opts: UsersFileRevocationOptions): { revoker: CredentialRevoker; close(): Promise<void> } {
  const revoker = new CredentialRevoker(opts);
  const users = new UserDatabase({
    file: opts.usersFile,
    log: opts.log,
    ...(opts.defaultScheme ? { defaultScheme: opts.defaultScheme } : {}),
    onUsersChanged: revoker.usersChanged,
  });
  return {
    revoker,
    close: async () => {
      users.close();
      await revoker.close();
    },
  };
}
