// The grant cache: every reader's view of the RelayGrants of one namespace, fed by list + watch.
// It keeps a compact index (grant name -> address, user, expiry), never whole objects, and answers
// `lookup(ip)` for exact addresses and covering prefixes, checking expiry itself: a grant the
// operator has not deleted yet never matches once its time is up.
//
// The index is a column store: the name maps to a slot, and the slot to an expiry in a
// Float64Array and a user and an address in plain arrays (an IPv4 address is not stored: it is
// the name after `v4-`). That is ~130 bytes a grant instead of ~200 with an object per grant
// (its header and the boxed expiry number); GrantEntry objects are made when asked for.
//
// A full sync is a streaming list (watch-list, KEP 3157: `sendInitialEvents`): one watch that
// starts with every grant as an ADDED event and a bookmark marking the end of them, then goes on
// as a watch, instead of a paged list and a watch after it. At a million grants it took 35 s
// against 50 s and less API server CPU (docs/scaling.md); either way the API server's heap swells
// during it. Servers without it (the WatchList gate off: 1.31, 1.33) get the paged list.
import { EventEmitter } from 'node:events';
import { ClientGrantNames, grantAddressOfName, grantNameOf, parseGrantAddress } from './address.ts';
import type { IpFamily } from '../net/ip.ts';
import { grantCacheEntries, grantCacheSynced, grantPropagation, grantRelists, grantWatchRestarts } from './metrics.ts';
import { grantsPath } from './paths.ts';
import { ANNOTATION_RENEWED_AT, type GrantLookup, type GrantMatch, type RelayGrant } from './types.ts';
import { KubeApiError, watchEventError, type KubeClient, type WatchEvent } from '../kube/client.ts';
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
  /**
   * How a full sync is made: 'watch-list' (default; a server that refuses it gets paged lists
   * from then on) or 'list' (paged lists only: the bench's comparison).
   */
  syncBy?: 'watch-list' | 'list';
}

interface GrantList {
  metadata: { resourceVersion: string; continue?: string };
  items: RelayGrant[];
}

const MAX_BACKOFF_MS = 2000;
/** The annotation of the bookmark that ends a watch-list's initial events. */
const INITIAL_EVENTS_END = 'k8s.io/initial-events-end';

/** A full sync in progress over a watch-list stream: what it has seen, since when. */
interface StreamedSync {
  seen: Set<string>;
  startedMs: number;
}
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
  /** Set while a watch-list stream's initial events are arriving. */
  private streamedSync: StreamedSync | undefined;
  /** How the next full sync is made: a streaming list unless the server refused one. */
  private syncBy: 'watch-list' | 'list';
  private lastSyncBy: 'watch-list' | 'list' | undefined;

  constructor(opts: GrantCacheOptions) {
    super();
    this.client = opts.client;
    this.namespace = opts.namespace;
    this.log = opts.log ?? createLogger('grant-cache');
    this.pageSize = opts.listPageSize ?? 5000;
    this.stallGraceMs = opts.stallGraceMs ?? 30_000;
    this.watchSeconds = opts.watchSeconds ?? [240, 300];
    this.indexUsers = opts.indexUsers ?? true;
    this.syncBy = opts.syncBy ?? 'watch-list';
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

  /** How the last full sync was made (undefined before the first): for diagnostics and tests. */
  get syncedBy(): 'list' | 'watch-list' | undefined {
    return this.lastSyncBy;
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
        if (this.resourceVersion === undefined && this.syncBy === 'list') await this.relist(signal);
        // Still no version to resume from: this watch is the full sync.
        const streaming = this.resourceVersion === undefined;
        this.watchAbort = new AbortController();
        const [minSeconds, maxSeconds] = this.watchSeconds;
        const timeoutSeconds = minSeconds + Math.floor(Math.random() * (maxSeconds - minSeconds));
        const query = streaming
          ? // No resourceVersion with NotOlderThan: a consistent read, as fresh as a list.
            { sendInitialEvents: true, resourceVersionMatch: 'NotOlderThan', allowWatchBookmarks: true, timeoutSeconds }
          : { resourceVersion: this.resourceVersion, allowWatchBookmarks: true, timeoutSeconds };
        if (streaming) this.streamedSync = { seen: new Set(), startedMs: Date.now() };
        await this.client.watch<RelayGrant>(grantsPath(this.namespace), query, (event) => this.onEvent(event), {
          signal: AbortSignal.any([signal, this.watchAbort.signal]),
          // The server ends every watch at timeoutSeconds, but may send nothing before (a bookmark
          // only once the resource's resourceVersion moved): silence is only a stall after that.
          idleTimeoutMs: timeoutSeconds * 1000 + this.stallGraceMs,
          // Not while the initial events arrive: the index is not whole until their bookmark.
          onOpen: () => (this._watching = this.streamedSync === undefined),
        });
        this._watching = false;
        failures = 0;
        if (this.streamedSync) {
          // The server ended the stream before the last initial event (its timeout came first):
          // paged lists, which have no such deadline, make this sync and the later ones.
          this.streamedSync = undefined;
          this.syncBy = 'list';
          this.log.warn('grant_watch_list_incomplete', { timeoutSeconds });
        }
        if (!signal.aborted) grantWatchRestarts.inc({ reason: 'ended' });
      } catch (err) {
        this._watching = false;
        const streamed = this.streamedSync !== undefined;
        this.streamedSync = undefined;
        if (signal.aborted) break;
        if (this.watchAbort.signal.aborted) continue; // restartWatch()
        if (err instanceof KubeApiError && (err.status === 410 || err.reason === 'Expired' || err.reason === 'Gone')) {
          grantWatchRestarts.inc({ reason: 'expired' });
          this.resourceVersion = undefined;
          continue;
        }
        if (streamed && err instanceof KubeApiError && (err.status === 400 || err.status === 422)) {
          // The WatchList feature gate is off on this server (422 Invalid: "sendInitialEvents is
          // forbidden"): paged lists from now on.
          this.syncBy = 'list';
          this.log.info('grant_watch_list_unsupported', { error: err.message });
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
    this.completeSync(seen, resourceVersion, started, 'list');
  }

  /**
   * The end of a full sync, by either means: grants not seen in it were deleted while we were away
   * (a `delete` event each), and the watch goes on from the version the sync showed.
   */
  private completeSync(seen: Set<string>, resourceVersion: string, startedMs: number, by: 'list' | 'watch-list'): void {
    for (const name of [...this.index.keys()]) if (!seen.has(name)) this.remove(name);
    this.resourceVersion = resourceVersion;
    this.lastSyncBy = by;
    grantRelists.inc();
    grantCacheEntries.set(this.index.size);
    const firstTime = !this._synced;
    this._synced = true;
    grantCacheSynced.set(1);
    this.log.info(firstTime ? 'grant_cache_synced' : 'grant_cache_relisted', { grants: this.index.size, ms: Date.now() - startedMs, by });
    this.emit('synced');
    if (firstTime) {
      this.firstSync?.resolve();
      this.firstSync = undefined;
    }
  }

  /** An event of the initial stream of a watch-list: the objects at one version, in no order, then its bookmark. */
  private onInitialEvent(event: WatchEvent<RelayGrant>, sync: StreamedSync): void {
    const obj = event.object;
    switch (event.type) {
      case 'ADDED':
      case 'MODIFIED': {
        // Not a propagation to time: the object may have been written long ago.
        const name = this.upsert(obj);
        if (name) sync.seen.add(name);
        break;
      }
      case 'DELETED':
        this.remove(obj.metadata.name);
        sync.seen.delete(obj.metadata.name);
        break;
      case 'BOOKMARK':
        if (obj.metadata.annotations?.[INITIAL_EVENTS_END] !== 'true') break;
        this.streamedSync = undefined;
        // Each initial object carries its own (older) version; only the bookmark's says where the
        // stream stands, so a watch resumed after this misses nothing.
        this.completeSync(sync.seen, obj.metadata.resourceVersion as string, sync.startedMs, 'watch-list');
        this._watching = true;
        break;
      case 'ERROR':
        throw watchEventError(obj);
    }
  }

  private onEvent(event: WatchEvent<RelayGrant>): void {
    if (this.streamedSync) return this.onInitialEvent(event, this.streamedSync);
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
      case 'ERROR':
        // Ends this watch; the loop relists on 410 and retries otherwise.
        throw watchEventError(obj);
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
