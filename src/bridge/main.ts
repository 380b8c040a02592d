// `kube-drac bridge`: the listeners the `bridge:` section enables, each on its own port, all
// reading through one GrantCache and writing through one GrantStore, and the health endpoint
// (ready once every listener is bound and, when a reader is on, the cache has synced).
import type { ConfigDocument } from '../config/load.ts';
import type { GrantCache } from '../grants/cache.ts';
import { GrantStore } from '../grants/store.ts';
import { GrantWriteError, type GrantLookup } from '../grants/types.ts';
import type { HealthServer } from '../observability/health.ts';
import { createLogger, type Logger } from '../observability/log.ts';
import { beginRole, connectKube, runRoleProcess, startGrantCacheInBackground, startRoleHealth } from '../role-process.ts';
import { startAuthPolicyListener } from './auth-policy.ts';
import { bridgeReads, bridgeWrites, parseBridgeConfig, type BridgeConfig } from './config.ts';
import { startDracRpcListener } from './drac/drac-rpc.ts';
import type { BridgeContext, RunningListener } from './listener.ts';
import { startPolicyListener } from './policy.ts';
import { startSocketmapListener } from './socketmap.ts';
import { startWhosonListener } from './whoson.ts';

export interface RunningBridgeRole {
  /** The listeners bound, in config order (socketmap, policy, whoson, drac, authPolicy). */
  listeners: RunningListener[];
  /** Port of /metrics, /healthz and /readyz. */
  healthPort: number;
  close(): Promise<void>;
}

/** What a bridge with no reader enabled looks up in: nothing, never synced (fail closed). */
const NO_GRANTS: GrantLookup = { synced: false, lookup: () => undefined };

/** What a bridge with no writer enabled writes through: every write refused (never reached). */
const NO_WRITES: BridgeContext['store'] = {
  renew: (ip) => Promise.reject(new GrantWriteError(ip, 'no grant writer is enabled in this bridge')),
  revoke: (ip) => Promise.reject(new GrantWriteError(ip, 'no grant writer is enabled in this bridge')),
};

type ListenerStart = { key: string; start: () => Promise<RunningListener> };

/** The enabled listeners, each with the config key a bind failure is reported under. */
function listenerStarts(config: BridgeConfig, ctx: BridgeContext): ListenerStart[] {
  const starts: ListenerStart[] = [];
  const { socketmap, policy, whoson, drac, authPolicy } = config;
  if (socketmap) starts.push({ key: 'bridge.socketmap', start: () => startSocketmapListener(socketmap, ctx) });
  if (policy) starts.push({ key: 'bridge.policy', start: () => startPolicyListener(policy, ctx) });
  if (whoson) starts.push({ key: 'bridge.whoson', start: () => startWhosonListener(whoson, ctx) });
  if (drac) starts.push({ key: 'bridge.drac', start: () => startDracRpcListener(drac, ctx) });
  if (authPolicy) starts.push({ key: 'bridge.authPolicy', start: () => startAuthPolicyListener(authPolicy, ctx) });
  return starts;
}

/** Start the bridge role from a config document; `close()` stops every listener, then the cache. */
export async function runBridge(doc: ConfigDocument, log: Logger = createLogger('bridge')): Promise<RunningBridgeRole> {
  const config = beginRole(doc, (d) => parseBridgeConfig(d.section('bridge')));
  const kube = connectKube(doc);
  const { client, namespace } = kube;

  // Listen at once: until the first list is in, every reader answers "try later".
  const cache = bridgeReads(config) ? startGrantCacheInBackground(kube, log) : undefined;
  let store: GrantStore | undefined;
  let writerCache: GrantCache | undefined;
  if (bridgeWrites(config)) {
    // The store skips a login's write only on what a cache saw of the API server (issue 13).
    writerCache = cache ?? startGrantCacheInBackground(kube, log, { indexUsers: false });
    store = new GrantStore({ client, namespace, ...doc.common.grants, grants: writerCache, log: log.child({ component: 'grant-store' }) });
  }
  const ctx: BridgeContext = { grants: cache ?? NO_GRANTS, store: store ?? NO_WRITES, log };

  const listeners: RunningListener[] = [];
  let health: HealthServer | undefined;
  const stop = async () => {
    await Promise.all(listeners.map((l) => l.close()));
    await health?.close();
    await cache?.stop();
    store?.close();
    if (writerCache !== cache) await writerCache?.stop();
    client.close();
  };
  try {
    for (const { key, start } of listenerStarts(config, ctx)) {
      try {
        listeners.push(await start());
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        throw new Error(`${key}: cannot listen: ${code ?? (err as Error).message}${code === 'EACCES' ? ' (ports below 1024 need root or CAP_NET_BIND_SERVICE)' : ''}`, { cause: err });
      }
    }
    health = await startRoleHealth(doc, { ready: () => cache?.synced ?? true });
  } catch (err) {
    await stop();
    throw err;
  }
  log.info('bridge_started', {
    metricsPort: health.port,
    listeners: listeners.map((l) => ({ protocol: l.protocol, port: l.port, udpPort: l.udpPort, portmapperPort: l.portmapperPort })),
    reads: cache !== undefined,
    writes: store !== undefined,
  });
  const healthPort = health.port;
  let closing: Promise<void> | undefined;
  return {
    listeners,
    healthPort,
    close: () =>
      (closing ??= (async () => {
        await stop();
        log.info('bridge_stopped');
      })()),
  };
}

/** `kube-drac bridge [--config FILE]`: run until SIGTERM or SIGINT, then close cleanly. */
export function main(args: string[]): Promise<void> {
  return runRoleProcess('bridge', args, (doc, log) => runBridge(doc, log));
}
