// `kube-drac pop3`: the POP3 listeners, the grant store that logins renew grants through, and the
// health endpoint (ready while the listeners are bound, users are loaded and the mail root is usable). SIGTERM (via runRoleProcess) stops accepting, ends sessions without deleting anything.
import type { ConfigDocument } from '../config/load.ts';
import type { GrantCache } from '../grants/cache.ts';
import { GrantStore } from '../grants/store.ts';
import type { GrantRenewer } from '../grants/types.ts';
import type { KubeClient } from '../kube/client.ts';
import { MaildirTmpCleaner } from '../mail/tmp-cleaner.ts';
import { createLogger, type Logger } from '../observability/log.ts';
import { logRenamedKeys } from '../config/renamed.ts';
import { beginRole, connectKube, runRoleProcess, startGrantCacheInBackground, startRoleHealth } from '../role-process.ts';
import { parsePop3Config } from './config.ts';
import { startPop3Cluster } from './cluster.ts';
import { startPop3Server, type Pop3Server } from './server.ts';

export interface RunningPop3Role {
  server: Pop3Server;
  /** Port of /metrics, /healthz and /readyz. */
  healthPort: number;
  close(): Promise<void>;
}

export interface RunPop3Options {
  /** Use this instead of a GrantStore on the configured cluster (tests, or a process sharing one). */
  renewer?: GrantRenewer;
}

/** Start the POP3 role from a config document; `close()` ends sessions (deleting nothing) and stops. */
export async function runPop3(doc: ConfigDocument, log: Logger = createLogger('pop3'), opts: RunPop3Options = {}): Promise<RunningPop3Role> {
  const config = beginRole(doc, (d) => parsePop3Config(d.section('pop3'), d.section('login')));
  logRenamedKeys(log, config.renamedKeys);

  let client: KubeClient | undefined;
  let store: GrantStore | undefined;
  let grants: GrantCache | undefined;
  let renewer = opts.renewer;
  if (renewer === undefined) {
    const kube = connectKube(doc);
    client = kube.client;
    // The store skips a login's write only on what this cache saw of the API server (issue 13).
    grants = startGrantCacheInBackground(kube, log, { indexUsers: false });
    store = new GrantStore({ ...kube, ...doc.common.grants, grants, log: log.child({ component: 'grant-store' }) });
    renewer = store;
  }

  const cluster = config.workers > 1 ? await startPop3Cluster(config, { renewer, log, logLevel: doc.common.log.level }) : undefined;
  const server: Pop3Server = cluster ?? (await startPop3Server(config, { renewer, log }));
  let health;
  try {
    health = await startRoleHealth(doc, {
      ready: () => server.notReadyReasons().length === 0,
      metrics: cluster && (() => cluster.metrics()),
    });
  } catch (err) {
    await server.close();
    store?.close();
    await grants?.stop();
    client?.close();
    throw err;
  }
  const healthServer = health;
  // One sweep of the Maildirs' tmp/ per replica (not per worker), at start and periodically.
  const tmpCleaner = new MaildirTmpCleaner({ mailRoot: config.mailRoot, mailLocation: config.mailLocation, log: log.child({ component: 'maildir-tmp' }) });
  tmpCleaner.start();
  let closing: Promise<void> | undefined;
  return {
    server,
    healthPort: healthServer.port,
    close: () =>
      (closing ??= (async () => {
        await server.close();
        await tmpCleaner.close();
        await healthServer.close();
        store?.close();
        await grants?.stop();
        client?.close();
        log.info('pop3_stopped');
      })()),
  };
}

/** `kube-drac pop3 [--config FILE]`: run until SIGTERM or SIGINT, then close cleanly. */
export function main(args: string[]): Promise<void> {
  return runRoleProcess('pop3', args, (doc, log) => runPop3(doc, log));
}
