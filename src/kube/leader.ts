// Leader election on a coordination.k8s.io/v1 Lease, with client-go's semantics:
// - A lease is judged valid by when *we* observed its record change (a monotonic local clock),
//   never by comparing the holder's renewTime with our clock.
// - Every write carries the resourceVersion we read: a 409 means someone else wrote first.
// - The leader renews every retryPeriod; if no renewal succeeds for renewDeadline it stops
//   acting at once. renewDeadline < leaseDuration, and renewals are timed from before the
//   request is sent, so the leader has stopped before any candidate could see the lease expire.
// - stop() releases the Lease (empty holder), so a candidate takes over on its next try.
import { performance } from 'node:perf_hooks';
import { KubeApiError, type KubeClient } from './client.ts';
import { postEvent } from './events.ts';
import { createLogger, type Logger } from '../observability/log.ts';

export interface LeaseSpec {
  holderIdentity?: string;
  leaseDurationSeconds?: number;
  acquireTime?: string;
  renewTime?: string;
  leaseTransitions?: number;
}

export interface Lease {
  apiVersion: 'coordination.k8s.io/v1';
  kind: 'Lease';
  metadata: { name: string; namespace?: string; uid?: string; resourceVersion?: string };
  spec?: LeaseSpec;
}

export interface LeaderElectionSettings {
  leaseName: string;
  namespace: string;
  /** Unique per process: who holds the Lease. */
  identity: string;
  leaseDurationMs: number;
  renewDeadlineMs: number;
  retryPeriodMs: number;
}

export interface LeaderElectorOptions extends LeaderElectionSettings {
  client: KubeClient;
  /** Called synchronously when this process becomes leader. */
  onStartedLeading: () => void;
  /** Called synchronously, before the Lease can pass to anyone else, when this process must stop acting. */
  onStoppedLeading: () => void;
  /** Called when the observed holder changes (our own identity included; '' when released). */
  onNewLeader?: (identity: string) => void;
  /** The component named in the Events posted on the Lease; none are posted when unset. */
  eventComponent?: string;
  log?: Logger;
  /** Monotonic milliseconds; injectable for tests. */
  monotonicNow?: () => number;
  /** Wall-clock milliseconds, for the times written into the Lease. */
  wallNow?: () => number;
}

/** Check the settings the way client-go does; returns an error message or undefined. */
export function checkLeaderElectionSettings(s: Pick<LeaderElectionSettings, 'leaseDurationMs' | 'renewDeadlineMs' | 'retryPeriodMs'>): string | undefined {
  if (s.leaseDurationMs % 1000 !== 0 || s.leaseDurationMs < 1000) return 'leaseDuration must be a whole number of seconds, at least 1s (the Lease stores seconds)';
  if (s.renewDeadlineMs >= s.leaseDurationMs) return 'renewDeadline must be shorter than leaseDuration (the leader must stop acting before the lease can pass)';
  if (s.renewDeadlineMs <= JITTER * s.retryPeriodMs) return `renewDeadline must be longer than ${JITTER} x retryPeriod (at least one retry must fit)`;
  return undefined;
}

const JITTER = 1.2;

/** RFC 3339 with microseconds: the MicroTime format of Lease times. */
export function microTime(ms: number): string {
  return new Date(ms).toISOString().replace(/Z$/, '000Z');
}

/** Identity of the record for change detection: any field changing counts as a renewal seen. */
function recordKey(spec: LeaseSpec | undefined): string {
  return JSON.stringify([spec?.holderIdentity ?? '', spec?.renewTime ?? '', spec?.acquireTime ?? '', spec?.leaseTransitions ?? 0, spec?.leaseDurationSeconds ?? 0]);
}

/**
 * May `identity` take or keep the lease? Yes when nobody holds it, we hold it, or the holder's
 * record has not changed for its lease duration as observed locally.
 */
export function leaseIsFree(spec: LeaseSpec | undefined, identity: string, observedAtMs: number, nowMs: number): boolean {
  const holder = spec?.holderIdentity ?? '';
  if (holder === '' || holder === identity) return true;
  return observedAtMs + (spec?.leaseDurationSeconds ?? 0) * 1000 <= nowMs;
}

/** The record we write to take or renew the lease. */
export function acquiredSpec(old: LeaseSpec | undefined, identity: string, leaseDurationMs: number, wallNowMs: number): LeaseSpec {
  const now = microTime(wallNowMs);
  const ours = (old?.holderIdentity ?? '') === identity;
  return {
    holderIdentity: identity,
    leaseDurationSeconds: Math.round(leaseDurationMs / 1000),
    acquireTime: ours && old?.acquireTime ? old.acquireTime : now,
    renewTime: now,
    leaseTransitions: (old?.leaseTransitions ?? 0) + (ours || old === undefined ? 0 : 1),
  };
}

/** The record a leader writes when it steps down: no holder, so anyone may take it now. */
export function releasedSpec(old: LeaseSpec | undefined, wallNowMs: number): LeaseSpec {
  const now = microTime(wallNowMs);
  return { holderIdentity: '', leaseDurationSeconds: 1, acquireTime: now, renewTime: now, leaseTransitions: old?.leaseTransitions ?? 0 };
}

export function leasePath(namespace: string, name?: string): string {
  const base = `/apis/coordination.k8s.io/v1/namespaces/${encodeURIComponent(namespace)}/leases`;
  return name === undefined ? base : `${base}/${encodeURIComponent(name)}`;
}

export class LeaderElector {
  private readonly opts: LeaderElectorOptions;
  private readonly log: Logger;
  private readonly mono: () => number;
  private readonly wall: () => number;
  /** Our last write while leading (undefined when we are not leading). */
  private lease: Lease | undefined;
  /** Our last write before stepping down: what stop() releases. */
  private held: Lease | undefined;
  private readonly pendingEvents = new Set<Promise<void>>();
  private observedKey = '';
  private observedAtMs = 0;
  private observedHolder: string | undefined;
  private leading = false;
  /** Monotonic time at which the last successful renewal was sent. */
  private renewedAtMs = 0;
  private deadlineTimer: NodeJS.Timeout | undefined;
  private stopping = false;
  private wake = new AbortController();
  private loop: Promise<void> | undefined;

  constructor(opts: LeaderElectorOptions) {
    const problem = checkLeaderElectionSettings(opts);
    if (problem) throw new Error(`leader election: ${problem}`);
    this.opts = opts;
    this.log = opts.log ?? createLogger('leader-election');
    this.mono = opts.monotonicNow ?? (() => performance.now());
    this.wall = opts.wallNow ?? Date.now;
  }

  get identity(): string {
    return this.opts.identity;
  }

  /** True while this process may act as leader: it renewed within the renew deadline. */
  isLeader(): boolean {
    return this.leading && this.mono() - this.renewedAtMs < this.opts.renewDeadlineMs;
  }

  /** The holder last observed in the Lease ('' when released, undefined before the first read). */
  get holder(): string | undefined {
    return this.observedHolder;
  }

  start(): void {
    if (this.loop) throw new Error('LeaderElector already started');
    this.loop = this.run();
  }

  /** Stop campaigning; a leader stops acting first, then releases the Lease. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.wake.abort();
    await this.loop;
    if (this.leading) {
      this.stepDown('stopping');
      await this.release();
    }
    await Promise.all(this.pendingEvents);
  }

  private path(): string {
    return leasePath(this.opts.namespace, this.opts.leaseName);
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.stopping) {
      let ok = false;
      try {
        ok = await this.tryAcquireOrRenew();
        failures = 0;
      } catch (err) {
        // Said once, then every 10th time: an unreachable API server must not flood the log.
        if (!this.stopping && (++failures === 1 || failures % 10 === 0)) {
          this.log.warn(this.leading ? 'lease_renew_failed' : 'lease_acquire_failed', { lease: this.opts.leaseName, error: err as Error, failures });
        }
      }
      if (this.stopping) break;
      // A write that took longer than the deadline is no ground to act on: the next round renews.
      if (ok && this.mono() - this.renewedAtMs >= this.opts.renewDeadlineMs) ok = false;
      if (ok && !this.leading) this.startLeading();
      else if (!ok && this.leading && this.mono() - this.renewedAtMs >= this.opts.renewDeadlineMs) this.stepDown('renew deadline passed');
      const pause = this.leading ? this.opts.retryPeriodMs : this.opts.retryPeriodMs * (1 + Math.random() * (JITTER - 1));
      await this.sleep(pause);
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      if (this.wake.signal.aborted) return resolve();
      const t = setTimeout(resolve, ms);
      this.wake.signal.addEventListener('abort', () => {
        clearTimeout(t);
        resolve();
      }, { once: true });
    });
  }

  private requestTimeoutMs(): number {
    // A renewal must not hang past the deadline; a candidate's read may take a retry period or so.
    if (!this.leading) return Math.max(1000, this.opts.retryPeriodMs);
    return Math.max(200, this.opts.renewDeadlineMs - (this.mono() - this.renewedAtMs));
  }

  private observe(lease: Lease): void {
    const key = recordKey(lease.spec);
    if (key !== this.observedKey) {
      this.observedKey = key;
      this.observedAtMs = this.mono();
    }
    const holder = lease.spec?.holderIdentity ?? '';
    if (holder !== this.observedHolder) {
      this.observedHolder = holder;
      this.log.info('lease_holder_observed', { lease: this.opts.leaseName, holder });
      this.opts.onNewLeader?.(holder);
    }
  }

  /** One round: read (unless we lead and know our last write), then take or renew with optimistic concurrency. */
  private async tryAcquireOrRenew(): Promise<boolean> {
    const timeoutMs = this.requestTimeoutMs();
    const sentAt = this.mono();
    let current = this.leading ? this.lease : undefined;
    if (!current) {
      current = await this.opts.client.get<Lease>(this.path(), { timeoutMs, signal: this.wake.signal });
      if (!current) return this.create(sentAt, timeoutMs);
      this.observe(current);
      if (!leaseIsFree(current.spec, this.opts.identity, this.observedAtMs, this.mono())) {
        this.lease = undefined;
        return false;
      }
    }
    const next: Lease = { ...current, spec: acquiredSpec(current.spec, this.opts.identity, this.opts.leaseDurationMs, this.wall()) };
    try {
      const written = await this.opts.client.request<Lease>('PUT', this.path(), { body: next, timeoutMs, signal: this.wake.signal });
      this.wrote(written, sentAt);
      return true;
    } catch (err) {
      if (err instanceof KubeApiError && err.status === 409) {
        this.lease = undefined; // someone else wrote first; read again next round
        return false;
      }
      throw err;
    }
  }

  private async create(sentAt: number, timeoutMs: number): Promise<boolean> {
    const body: Lease = {
      apiVersion: 'coordination.k8s.io/v1',
      kind: 'Lease',
      metadata: { name: this.opts.leaseName, namespace: this.opts.namespace },
      spec: acquiredSpec(undefined, this.opts.identity, this.opts.leaseDurationMs, this.wall()),
    };
    try {
      const written = await this.opts.client.create<Lease>(leasePath(this.opts.namespace), body, { timeoutMs, signal: this.wake.signal });
      this.wrote(written, sentAt);
      return true;
    } catch (err) {
      if (err instanceof KubeApiError && err.status === 409) return false;
      throw err;
    }
  }

  private wrote(lease: Lease, sentAt: number): void {
    this.lease = lease;
    this.observe(lease);
    this.renewedAtMs = sentAt;
    if (this.leading) this.armDeadline();
  }

  /** Stop acting exactly at the deadline even if the loop is stuck in a slow request. */
  private armDeadline(): void {
    clearTimeout(this.deadlineTimer);
    const left = this.opts.renewDeadlineMs - (this.mono() - this.renewedAtMs);
    this.deadlineTimer = setTimeout(() => {
      if (this.leading && this.mono() - this.renewedAtMs >= this.opts.renewDeadlineMs) this.stepDown('renew deadline passed');
    }, Math.max(0, left));
    this.deadlineTimer.unref();
  }

  private startLeading(): void {
    this.leading = true;
    this.armDeadline();
    this.log.info('leader_started', { lease: this.opts.leaseName, identity: this.opts.identity });
    this.event(`${this.opts.identity} became leader`);
    this.opts.onStartedLeading();
  }

  private stepDown(why: string): void {
    if (!this.leading) return;
    this.leading = false;
    clearTimeout(this.deadlineTimer);
    this.opts.onStoppedLeading();
    const fields = { lease: this.opts.leaseName, identity: this.opts.identity, reason: why };
    if (why === 'stopping') this.log.info('leader_stopped', fields);
    else this.log.warn('leader_stopped', fields);
    this.event(`${this.opts.identity} stopped leading: ${why}`);
    this.held = this.lease;
    this.lease = undefined;
  }

  private async release(): Promise<void> {
    let held = this.held;
    // Two tries: a renewal cut short by stop() may still have landed, making our copy stale.
    for (let attempt = 0; attempt < 2 && held?.spec?.holderIdentity === this.opts.identity; attempt++) {
      try {
        const written = await this.opts.client.request<Lease>('PUT', this.path(), {
          body: { ...held, spec: releasedSpec(held.spec, this.wall()) },
          timeoutMs: 2000,
        });
        this.observe(written);
        this.log.info('lease_released', { lease: this.opts.leaseName, identity: this.opts.identity });
        return;
      } catch (err) {
        if (!(err instanceof KubeApiError && err.status === 409) || attempt > 0) {
          this.log.warn('lease_release_failed', { lease: this.opts.leaseName, error: err as Error });
          return;
        }
        try {
          held = await this.opts.client.get<Lease>(this.path(), { timeoutMs: 2000 });
        } catch {
          return;
        }
      }
    }
  }

  private event(message: string): void {
    const component = this.opts.eventComponent;
    const lease = this.lease ?? this.held;
    if (!component) return;
    const posted = postEvent(this.opts.client, {
      involvedObject: {
        apiVersion: 'coordination.k8s.io/v1',
        kind: 'Lease',
        namespace: this.opts.namespace,
        name: this.opts.leaseName,
        ...(lease?.metadata.uid ? { uid: lease.metadata.uid } : {}),
      },
      type: 'Normal',
      reason: 'LeaderElection',
      message,
      component,
      instance: this.opts.identity,
    })
      .catch((err: unknown) => this.log.warn('lease_event_failed', { lease: this.opts.leaseName, error: err as Error }))
      .finally(() => this.pendingEvents.delete(posted));
    this.pendingEvents.add(posted);
  }
}
