// `kube-drac smtp`: the grant cache (list + watch), live lookups for cache misses, the SMTP
// listeners, and the health endpoint (ready once the cache has synced).
import { beginRole, connectKube, runRoleProcess, startGrantCacheInBackground, startRoleHealth } from '../role-process.ts';
import { UserDatabase } from '../auth/passwd-file.ts';
import { LoginThrottle } from '../auth/throttle.ts';
import { PasswordVerifier } from '../auth/verifier.ts';
import type { ConfigDocument } from '../config/load.ts';
import { getGrantFor } from '../grants/live-get.ts';
import { createLogger, type Logger } from '../observability/log.ts';
import { parseSmtpConfig } from './config.ts';
import { KnownLocalUsers } from './local-users.ts';
import { startSmtpServer, type RunningSmtpServer, type SmtpAuthDeps } from './server.ts';

export interface RunningSmtpRole {
  server: RunningSmtpServer;
  /** Port of /metrics, /healthz and /readyz. */
  healthPort: number;
  close(): Promise<void>;
}

export async function runSmtp(doc: ConfigDocument, log: Logger = createLogger('smtp')): Promise<RunningSmtpRole> {
  const config = beginRole(doc, (d) => parseSmtpConfig(d.section('smtp'), d.section('login')));
  const kube = connectKube(doc);
  const { client, namespace } = kube;
  // Listen at once: until the first list is in, relaying is answered 451 and local mail flows.
  const cache = startGrantCacheInBackground(kube, log);

  let users: UserDatabase | undefined;
  let auth: SmtpAuthDeps | undefined;
  let verifier: PasswordVerifier | undefined;
  if (config.usersFile !== undefined) {
    users = new UserDatabase({ file: config.usersFile, log: log.child({ component: 'users' }) });
    if (config.auth.enabled) {
      verifier = new PasswordVerifier();
      auth = {
        users,
        verifier,
        throttle: new LoginThrottle(config.login),
      };
    }
  }
  const knownUsers = users;
  const server = await startSmtpServer(config, {
    grants: cache,
    liveLookup: (ip) => getGrantFor(client, namespace, ip, doc.common.grants.ipv6PrefixLength),
    log,
    auth,
    localUsers: knownUsers ? new KnownLocalUsers((u) => knownUsers.lookup(u) !== undefined) : undefined,
  });
  const health = await startRoleHealth(doc, { ready: () => cache.synced });
  return {
    server,
    healthPort: health.port,
    async close() {
      await server.close();
      await health.close();
      await cache.stop();
      users?.close();
      await verifier?.close();
      client.close();
    },
  };
}

/** `kube-drac smtp [--config FILE]`: run until SIGTERM or SIGINT, then close cleanly. */
export function main(args: string[]): Promise<void> {
  return runRoleProcess('smtp', args, (doc, log) => runSmtp(doc, log));
}
