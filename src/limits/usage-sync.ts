// The I/O of relay counting: publishes this replica's RelayUsage object (one server-side apply per
// flush interval at most, only when the counts changed; never a write per message) and keeps the
// ledger's view of the other replicas' objects by list + watch. A failure never stops mail: the
// ledger keeps counting, and while this replica is blind its new counts weigh for every replica.
import { KubeApiError, watchEventError, type KubeClient, type WatchEvent } from '../kube/client.ts';
import { createLogger, type Logger } from '../observability/log.ts';
import type { UsageLedger } from './ledger.ts';
import { usageBlind, usagePublishes, usagePublishFailures, usageReplicas } from './metrics.ts';
import { usagePath, type RelayUsage } from './types.ts';
import { HEARTBEAT_MS } from './usage.ts';

export interface RelayUsageSyncOptions {
  client: KubeClient;
  namespace: string;
  ledger: UsageLedger;
  flushIntervalMs: number;
  log?: Logger;
  now?: () => number;
  /** Server-side length of each watch, in seconds: [min, max). */
  watchSeconds?: [number, number];
}

interface UsageList {
  metadata: { resourceVersion: string };
  items: RelayUsage[];
}

const FIELD_MANAGER = 'kube-drac-smtp';
const CRD_MISSING =
  'the RelayUsage CRD (relayusages.kubedrac.io) is not installed: apply it with `kubectl apply -f crds/relayusages.kubedrac.io.yaml`; until then each replica counts only its own relays';
const MAX_BACKOFF_MS = 2000;
/** A write that has not answered by then has failed (the replica is blind until one succeeds). */
const PUBLISH_TIMEOUT_MS = 5000;

export class RelayUsageSync {
  private readonly opts: RelayUsageSyncOptions;
  private readonly ledger: UsageLedger;
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly abort = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  private loop: Promise<void> | undefined;
  private publishing: Promise<void> | undefined;
  /** This replica's object from before a restart has been read (from the first list): publishing may overwrite it. */
  private adopted = false;
  private watching = false;
  private publishFailing = false;
  private publishFailures = 0;
  private publishedAtMs = Number.NEGATIVE_INFINITY;

  constructor(opts: RelayUsageSyncOptions) {
    this.opts = opts;
    this.ledger = opts.ledger;
    this.log = opts.log ?? createLogger('relay-usage');
    this.now = opts.now ?? Date.now;
  }

  /** Start watching and publishing; returns at once (until the first list the replica is blind). */
  start(): void {
    if (this.loop) throw new Error('RelayUsageSync already started');
    this.updateBlind();
    this.loop = this.watchLoop();
    this.timer = setInterval(() => void this.flush(), this.opts.flushIntervalMs);
    this.timer.unref();
  }

  /** Publish now if the counts changed or a heartbeat is due (one write in flight at most). */
  flush(): Promise<void> {
    if (this.publishing) return this.publishing;
    if (!this.adopted) return Promise.resolve();
    if (!this.ledger.dirty && this.now() - this.publishedAtMs < HEARTBEAT_MS) return Promise.resolve();
    this.publishing = this.publish().finally(() => (this.publishing = undefined));
    return this.publishing;
  }

  /** A last publish (bounded by its timeout), then stop. */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.flush();
    this.abort.abort();
    await this.loop;
  }

  private async publish(): Promise<void> {
    const usage = this.ledger.snapshot(this.now());
    try {
      await this.opts.client.apply(usagePath(this.opts.namespace, usage.metadata.name), usage, FIELD_MANAGER, { timeoutMs: PUBLISH_TIMEOUT_MS });
      usagePublishes.inc();
      this.publishedAtMs = Date.parse(usage.spec.publishedAt);
      if (this.publishFailing) this.log.info('relay_usage_published', { replica: usage.metadata.name, afterFailures: this.publishFailures });
      this.publishFailing = false;
      this.publishFailures = 0;
    } catch (err) {
      this.ledger.markDirty();
      usagePublishFailures.inc();
      this.publishFailing = true;
      this.publishFailures++;
      if (this.publishFailures === 1 || this.publishFailures % 30 === 0) {
        this.log.warn('relay_usage_publish_failed', { replica: usage.metadata.name, failures: this.publishFailures, error: (err as Error).message });
      }
    }
    this.updateBlind();
  }

  private updateBlind(): void {
    const blind = !this.watching || this.publishFailing;
    if (blind !== this.ledger.blind) {
      this.log[blind ? 'warn' : 'info'](blind ? 'relay_usage_blind' : 'relay_usage_sighted', {
        replicas: this.ledger.replicas,
        watching: this.watching,
        publishFailing: this.publishFailing,
      });
    }
    this.ledger.setBlind(blind);
    usageBlind.set(blind ? 1 : 0);
    usageReplicas.set(this.ledger.replicas);
  }

  private setWatching(watching: boolean): void {
    this.watching = watching;
    this.updateBlind();
  }

  private async watchLoop(): Promise<void> {
    const signal = this.abort.signal;
    const path = usagePath(this.opts.namespace);
    const [minSeconds, maxSeconds] = this.opts.watchSeconds ?? [240, 300];
    let resourceVersion: string | undefined;
    let failures = 0;
    while (!signal.aborted) {
      try {
        if (resourceVersion === undefined) {
          const list = await this.opts.client.request<UsageList>('GET', path, { signal, timeoutMs: 30_000 });
          const own = list.items.find((u) => u.metadata.name === this.ledger.replica);
          if (!this.adopted && own !== undefined) this.ledger.adoptOwn(own, this.now());
          this.adopted = true;
          this.ledger.replaceRemote(list.items, this.now());
          resourceVersion = list.metadata.resourceVersion;
        }
        const timeoutSeconds = minSeconds + Math.floor(Math.random() * (maxSeconds - minSeconds));
        await this.opts.client.watch<RelayUsage>(
          path,
          { resourceVersion, allowWatchBookmarks: true, timeoutSeconds },
          (event) => {
            resourceVersion = this.onEvent(event) ?? resourceVersion;
          },
          { signal, idleTimeoutMs: timeoutSeconds * 1000 + 30_000, onOpen: () => this.setWatching(true) },
        );
        failures = 0;
      } catch (err) {
        if (signal.aborted) break;
        if (err instanceof KubeApiError && (err.status === 410 || err.reason === 'Expired' || err.reason === 'Gone')) {
          resourceVersion = undefined;
          continue;
        }
        this.setWatching(false);
        failures++;
        const delay = Math.min(MAX_BACKOFF_MS, 100 * 2 ** Math.min(failures, 5)) * (0.5 + Math.random() / 2);
        if (failures === 1 || failures % 20 === 0) {
          // A chart upgrade does not install new CRDs (Helm installs crds/ only on first install).
          const missing = err instanceof KubeApiError && err.status === 404;
          this.log[missing ? 'error' : 'warn']('relay_usage_watch_failed', {
            failures,
            error: missing ? CRD_MISSING : (err as Error).message,
            retryInMs: Math.round(delay),
          });
        }
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, delay);
          signal.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true });
        });
      }
    }
    this.watching = false;
  }

  /** Apply one event to the ledger; returns the resourceVersion to resume from. */
  private onEvent(event: WatchEvent<RelayUsage>): string | undefined {
    const obj = event.object;
    switch (event.type) {
      case 'ADDED':
      case 'MODIFIED':
        this.ledger.upsertRemote(obj, this.now());
        break;
      case 'DELETED':
        this.ledger.deleteRemote(obj.metadata.name, this.now());
        break;
      case 'BOOKMARK':
        break;
      case 'ERROR':
        throw watchEventError(obj);
    }
    usageReplicas.set(this.ledger.replicas);
    return obj.metadata?.resourceVersion;
  }
}
