// The grant cache: every reader's view of the RelayGrants of one namespace, fed by list + watch.
// It keeps a compact index (grant name -> address, user, expiry), never whole objects, and answers
// `lookup(ip)` for exact addresses and covering prefixes, checking expiry itself: a grant the
// operator has not deleted yet never matches once its time is up.
//
// The index is a column store: the name maps to a slot, and the slot to an expiry in a
// Float64Array and a user and an address in plain arrays (an IPv4 address is not stored: it is
// the name after `v4-`). That is ~130 bytes a grant instead of ~200 with an object per grant
// (its header and the boxed expiry number); GrantEntry objects are made when asked for.
import { EventEmitter } from 'node:events';
import { ClientGrantNames, grantAddressOfName, grantNameOf, parseGrantAddress } from './address.ts';
import type { IpFamily } from '../net/ip.ts';
import { grantCacheEntries, grantCacheSynced, grantPropagation, grantRelists, grantWatchRestarts } from './metrics.ts';
import { grantsPath } from './paths.ts';
import { ANNOTATION_RENEWED_AT, type GrantLookup, type GrantMatch, type RelayGrant } from './types.ts';
import { KubeApiError, type KubeClient, type WatchEvent } from '../kube/client.ts';
import { createLogger, type Logger } from '../observability/log.ts';

export interface GrantEntry {
  /** spec.address, kept so a match needs no parsing. */
  address: string;
  user: string;
  expiresAtMs: number;
}

export interface GrantCacheOptions {
  client: KubeClient;
  namespace: string;
  log?: Logger;
  /** Page size of the initial and repair lists. */
  listPageSize?: number;
  /**
   * A watch the server has not ended this long after its `timeoutSeconds` is treated as stalled
   * (a dead connection). Not sooner: on a quiet namespace the server sends nothing at all.
   */
  stallGraceMs?: number;
  /** The server-side length of each watch, in seconds: [min, max), picked at random per watch. */
  watchSeconds?: [number, number];
  /**
   * false: users are not kept (entries and matches say user ''), ~30 bytes a grant less, for a
   * reader that never shows them (the operator). Default true.
   */
  indexUsers?: boolean;
}

interface GrantList {
  metadata: { resourceVersion: string; continue?: string };
  items: RelayGrant[];
}

const MAX_BACKOFF_MS = 2000;
const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(t);
      resolve();
    }, { once: true });
  });

/**
 * Events: `upsert` (name, entry), `delete` (name), `synced` (after each full list).
 * Readers that need more than `lookup` (the operator's scheduler) listen to them.
 */
export class GrantCache extends EventEmitter implements GrantLookup {
  private readonly client: KubeClient;
  private readonly namespace: string;
  private readonly log: Logger;
  private readonly pageSize: number;
  private readonly stallGraceMs: number;
  private readonly watchSeconds: [number, number];
  private readonly indexUsers: boolean;
  /** Grant name -> slot in the columns below. */
  private readonly index = new Map<string, number>();
  private expiries = new Float64Array(256);
  private readonly users: string[] = [];
  /** undefined: the name's tail (`v4-<address>`), not stored twice. */
  private readonly addresses: (string | undefined)[] = [];
  private readonly freeSlots: number[] = [];
  /** Prefix lengths present per family (length -> number of grants), longest first for lookups. */
  private readonly prefixCounts: Record<IpFamily, Map<number, number>> = { 4: new Map(), 6: new Map() };
  private prefixLengths: Record<IpFamily, number[]> = { 4: [], 6: [] };
  private resourceVersion: string | undefined;
  private resumeFrom: string | undefined;
  private abort = new AbortController();
  private watchAbort = new AbortController();
  private loop: Promise<void> | undefined;
  private firstSync: { resolve: () => void; reject: (err: Error) => void } | undefined;
  private _synced = false;
  private _watching = false;

  constructor(opts: GrantCacheOptions) {
    super();
    this.client = opts.client;
    this.namespace = opts.namespace;
    this.log = opts.log ?? createLogger('grant-cache');
    this.pageSize = opts.listPageSize ?? 5000;
    this.stallGraceMs = opts.stallGraceMs ?? 30_000;
    this.watchSeconds = opts.watchSeconds ?? [240, 300];
    this.indexUsers = opts.indexUsers ?? true;
  }

  get synced(): boolean {
    return this._synced;
  }

  /**
   * True while synced and a watch stream is open: the index then misses nothing older than the
   * events on their way. A writer skips a write on its word only then.
   */
  get watching(): boolean {
    return this._watching;
  }

  get size(): number {
    return this.index.size;
  }

  /** Start listing and watching; resolves after the first full list (or rejects if `signal`-stopped first). */
  start(): Promise<void> {
    if (this.loop) throw new Error('GrantCache already started');
    const first = new Promise<void>((resolve, reject) => (this.firstSync = { resolve, reject }));
    this.loop = this.run();
    return first;
  }

  /**
   * Start without waiting for the first list, for a role that serves at once and answers "try
   * later" until `synced`. The cache logs its own sync; only a start that never completes is
   * worth a line here.
   */
  startInBackground(): void {
    this.start().catch((err: unknown) => this.log.warn('grant_cache_start_stopped', { error: err as Error }));
  }

  async stop(): Promise<void> {
    this.abort.abort();
    this.firstSync?.reject(new Error('grant cache stopped before its first sync'));
    await this.loop;
  }

  /**
   * End the current watch and resume from `resourceVersion` (default: where it was). For
   * diagnostics and tests: resuming from a version the server no longer has exercises the
   * 410 -> relist -> repair path against the real API server.
   */
  restartWatch(resourceVersion?: string): void {
    if (resourceVersion !== undefined) this.resumeFrom = resourceVersion;
    this.watchAbort.abort();
  }

  get(name: string): GrantEntry | undefined {
    const slot = this.index.get(name);
    return slot === undefined ? undefined : { address: this.addressAt(name, slot), user: this.users[slot] as string, expiresAtMs: this.expiries[slot] as number };
  }

  /** The grant's expiry, without making an entry object (the operator's hot path). */
  expiresAtMsOf(name: string): number | undefined {
    const slot = this.index.get(name);
    return slot === undefined ? undefined : this.expiries[slot];
  }

  *entries(): IterableIterator<[string, GrantEntry]> {
    for (const name of this.index.keys()) yield [name, this.get(name) as GrantEntry];
  }

  /** Every grant's name and expiry, without making entry objects (sweeps and counts over all grants). */
  forEachExpiry(fn: (name: string, expiresAtMs: number) => void): void {
    this.index.forEach((slot, name) => fn(name, this.expiries[slot] as number));
  }

  lookup(ip: string, nowMs: number = Date.now()): GrantMatch | undefined {
    const names = ClientGrantNames.of(ip);
    if (!names) return undefined;
    const hit = this.index.get(names.exact);
    if (hit !== undefined && (this.expiries[hit] as number) > nowMs) return this.match(names.exact, hit);
    // Then the covering prefixes, most specific first; usually there is one length (the /64) or none.
    for (const len of this.prefixLengths[names.family]) {
      const name = names.prefixName(len);
      const slot = this.index.get(name);
      if (slot !== undefined && (this.expiries[slot] as number) > nowMs) return this.match(name, slot);
    }
    return undefined;
  }

  private match(name: string, slot: number): GrantMatch {
    return { name, address: this.addressAt(name, slot), user: this.users[slot] as string, expiresAtMs: this.expiries[slot] as number };
  }

  private addressAt(name: string, slot: number): string {
    return this.addresses[slot] ?? name.slice(3);
  }

  private async run(): Promise<void> {
    const signal = this.abort.signal;
    let failures = 0;
    while (!signal.aborted) {
      if (this.resumeFrom !== undefined) {
        this.resourceVersion = this.resumeFrom;
        this.resumeFrom = undefined;
      }
      try {
        if (this.resourceVersion === undefined) await this.relist(signal);
        this.watchAbort = new AbortController();
        const [minSeconds, maxSeconds] = this.watchSeconds;
        const timeoutSeconds = minSeconds + Math.floor(Math.random() * (maxSeconds - minSeconds));
        await this.client.watch<RelayGrant>(
          grantsPath(this.namespace),
          { resourceVersion: this.resourceVersion, allowWatchBookmarks: true, timeoutSeconds },
          (event) => this.onEvent(event),
          {
            signal: AbortSignal.any([signal, this.watchAbort.signal]),
            // The server ends every watch at timeoutSeconds, but may send nothing before (a bookmark
            // only once the resource's resourceVersion moved): silence is only a stall after that.
            idleTimeoutMs: timeoutSeconds * 1000 + this.stallGraceMs,
            onOpen: () => (this._watching = true),
          },
        );
        this._watching = false;
        failures = 0;
        if (!signal.aborted) grantWatchRestarts.inc({ reason: 'ended' });
      } catch (err) {
        this._watching = false;
        if (signal.aborted) break;
        if (this.watchAbort.signal.aborted) continue; // restartWatch()
        if (err instanceof KubeApiError && (err.status === 410 || err.reason === 'Expired' || err.reason === 'Gone')) {
          grantWatchRestarts.inc({ reason: 'expired' });
          this.resourceVersion = undefined;
          continue;
        }
        const stalled = err instanceof KubeApiError && err.reason === 'Timeout';
        grantWatchRestarts.inc({ reason: stalled ? 'stalled' : 'error' });
        failures++;
        // Jittered exponential backoff, capped low: a gate must catch up quickly once the API is back.
        const delay = Math.min(MAX_BACKOFF_MS, 100 * 2 ** Math.min(failures, 5)) * (0.5 + Math.random() / 2);
        if (failures === 1 || failures % 20 === 0) {
          this.log.warn('grant_watch_failed', { error: (err as Error).message, failures, retryInMs: Math.round(delay) });
        }
        await sleep(delay, signal);
      }
    }
  }

  /** A full list: replaces the index, and drops (with `delete` events) grants deleted while we were away. */
  private async relist(signal: AbortSignal): Promise<void> {
    const started = Date.now();
    const seen = new Set<string>();
    let cont: string | undefined;
    let resourceVersion = '';
    do {
      let page: GrantList;
      try {
        page = await this.client.request<GrantList>('GET', grantsPath(this.namespace), {
          query: { limit: this.pageSize, continue: cont },
          signal,
          timeoutMs: 60_000,
        });
      } catch (err) {
        // A continue token that expired mid-list: start the list over.
        if (err instanceof KubeApiError && err.status === 410 && cont) {
          seen.clear();
          cont = undefined;
          continue;
        }
        throw err;
      }
      for (const item of page.items) {
        const name = this.upsert(item);
        if (name) seen.add(name);
      }
      cont = page.metadata.continue || undefined;
      resourceVersion = page.metadata.resourceVersion;
    } while (cont);
    for (const name of [...this.index.keys()]) if (!seen.has(name)) this.remove(name);
    this.resourceVersion = resourceVersion;
    grantRelists.inc();
    grantCacheEntries.set(this.index.size);
    const firstTime = !this._synced;
    this._synced = true;
    grantCacheSynced.set(1);
    this.log.info(firstTime ? 'grant_cache_synced' : 'grant_cache_relisted', { grants: this.index.size, ms: Date.now() - started });
    this.emit('synced');
    if (firstTime) {
      this.firstSync?.resolve();
      this.firstSync = undefined;
    }
  }

  private onEvent(event: WatchEvent<RelayGrant>): void {
    const obj = event.object;
    switch (event.type) {
      case 'ADDED':
      case 'MODIFIED': {
        this.upsert(obj);
        const renewedAt = Date.parse(obj.metadata.annotations?.[ANNOTATION_RENEWED_AT] ?? '');
        if (!Number.isNaN(renewedAt)) grantPropagation.observe(Math.max(0, Date.now() - renewedAt) / 1000);
        break;
      }
      case 'DELETED':
        this.remove(obj.metadata.name);
        break;
      case 'BOOKMARK':
        break;
      case 'ERROR': {
        const status = obj as unknown as { code?: number; reason?: string; message?: string };
        // Ends this watch; the loop relists on 410 and retries otherwise.
        throw new KubeApiError(status.code ?? 500, status.reason, `watch error: ${status.message ?? 'unknown'}`);
      }
    }
    if (obj.metadata?.resourceVersion) this.resourceVersion = obj.metadata.resourceVersion;
    grantCacheEntries.set(this.index.size);
  }

  /**
   * Index one object under the name derived from its address. An object whose name does not match
   * its address (possible only without the CRD's validation) is left out: never trust a mismatch.
   */
  private upsert(obj: RelayGrant): string | undefined {
    const name = obj.metadata.name;
    let derived: string | undefined;
    try {
      derived = grantNameOf(parseGrantAddress(obj.spec?.address ?? ''));
    } catch {
      derived = undefined;
    }
    const expiresAtMs = Date.parse(obj.spec?.expiresAt ?? '');
    if (derived !== name || Number.isNaN(expiresAtMs)) {
      this.log.warn('grant_ignored', { grant: name, reason: derived !== name ? 'name does not match spec.address' : 'bad expiresAt' });
      this.remove(name);
      return undefined;
    }
    let slot = this.index.get(name);
    if (slot === undefined) {
      slot = this.freeSlots.pop() ?? this.index.size;
      if (slot >= this.expiries.length) {
        const grown = new Float64Array(this.expiries.length * 2);
        grown.set(this.expiries);
        this.expiries = grown;
      }
      this.index.set(name, slot);
      this.countPrefix(name, +1);
    }
    const { address } = obj.spec;
    this.expiries[slot] = expiresAtMs;
    this.users[slot] = this.indexUsers ? (obj.spec.user ?? '') : '';
    this.addresses[slot] = name.length === address.length + 3 && name.startsWith('v4-') && name.endsWith(address) ? undefined : address;
    if (this.listenerCount('upsert') > 0) this.emit('upsert', name, this.get(name));
    return name;
  }

  private remove(name: string): void {
    const slot = this.index.get(name);
    if (slot === undefined) return;
    this.index.delete(name);
    this.users[slot] = '';
    this.addresses[slot] = undefined;
    this.freeSlots.push(slot);
    this.countPrefix(name, -1);
    this.emit('delete', name);
  }

  private countPrefix(name: string, delta: number): void {
    if (name.indexOf('-', 3) === -1) return; // a single address: only prefix names carry `-<length>`
    const p = parseGrantAddress(grantAddressOfName(name));
    if (p.prefixLength === (p.family === 4 ? 32 : 128)) return;
    const counts = this.prefixCounts[p.family];
    const n = (counts.get(p.prefixLength) ?? 0) + delta;
    if (n > 0) counts.set(p.prefixLength, n);
    else counts.delete(p.prefixLength);
    this.prefixLengths[p.family] = [...counts.keys()].sort((a, b) => b - a);
  }
}
