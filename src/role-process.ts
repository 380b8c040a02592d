// How every role starts and runs as a process: the start-up steps every role shares (log level,
// process metrics, config, API client, grant cache, health endpoint), and the process around it:
// load its config, start it, and on SIGTERM or SIGINT close it cleanly and exit.
import { loadRoleConfig } from './config/args.ts';
import type { ConfigDocument } from './config/load.ts';
import { GrantCache, type GrantCacheOptions } from './grants/cache.ts';
import { KubeClient } from './kube/client.ts';
import { startHealthServer, type HealthServer, type HealthServerOptions } from './observability/health.ts';
import { createLogger, setLogLevel, type Logger } from './observability/log.ts';
import { collectProcessMetrics } from './observability/metrics.ts';

export interface RunningRole {
  close(): Promise<void>;
}

export async function runRoleProcess(role: string, args: string[], start: (doc: ConfigDocument, log: Logger) => Promise<RunningRole>): Promise<void> {
  const doc = loadRoleConfig(role, args);
  const log = createLogger(role);
  const running = await start(doc, log);
  await new Promise<void>((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => {
      log.info('signal', { signal });
      resolve();
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
  });
  await running.close();
  process.exit(0);
}

/**
 * What every role does first: apply the log level, parse its config section (a config error is
 * thrown before anything is opened), and collect the process metrics.
 */
export function beginRole<C>(doc: ConfigDocument, parse: (doc: ConfigDocument) => C): C {
  setLogLevel(doc.common.log.level);
  const config = parse(doc);
  collectProcessMetrics();
  return config;
}

/** The API client and the namespace a role works in (every role works in one namespace). */
export interface RoleKube {
  client: KubeClient;
  namespace: string;
}

export function connectKube(doc: ConfigDocument): RoleKube {
  return { client: KubeClient.fromPath(doc.common.kubernetes.kubeconfig), namespace: doc.common.kubernetes.namespace };
}

/**
 * A watch-fed grant cache that starts listing at once, in the background: the role listens
 * meanwhile, and its readers answer "try later" until the first list is in.
 */
export function startGrantCacheInBackground(kube: RoleKube, log: Logger, options: Omit<GrantCacheOptions, 'client' | 'namespace' | 'log'> = {}): GrantCache {
  const cache = new GrantCache({ ...kube, log: log.child({ component: 'grant-cache' }), ...options });
  cache.startInBackground();
  return cache;
}

/** The role's /metrics, /healthz and /readyz, on the metrics address of the common config. */
export function startRoleHealth(doc: ConfigDocument, opts: Omit<HealthServerOptions, 'host' | 'port'>): Promise<HealthServer> {
  return startHealthServer({ host: doc.common.metrics.host, port: doc.common.metrics.port, ...opts });
}
