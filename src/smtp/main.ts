// `kube-drac smtp`: the grant cache (list + watch), live lookups for cache misses, the SMTP
// listeners, and the health endpoint (ready once the cache has synced).
import { runRoleProcess } from '../role-process.ts';
import { UserDatabase } from '../auth/passwd-file.ts';
import { LoginThrottle } from '../auth/throttle.ts';
import { PasswordVerifier } from '../auth/verifier.ts';
import type { ConfigDocument } from '../config/load.ts';
import { NeverGrantedError, grantKeyFor, parseGrantAddress } from '../grants/address.ts';
import { covers, parseIp } from '../net/ip.ts';
import { GrantCache } from '../grants/cache.ts';
import { grantsPath } from '../grants/paths.ts';
import type { GrantMatch, RelayGrant } from '../grants/types.ts';
import { KubeClient } from '../kube/client.ts';
import { startHealthServer } from '../observability/health.ts';
import { createLogger, setLogLevel, type Logger } from '../observability/log.ts';
import { collectProcessMetrics } from '../observability/metrics.ts';
import { parseSmtpConfig } from './config.ts';
import { KnownLocalUsers } from './local-users.ts';
import { startSmtpServer, type RunningSmtpServer, type SmtpAuthDeps } from './server.ts';

/**
 * One GET of the grant object that would cover `ip` (the exact address for IPv4, the configured
 * prefix for IPv6): undefined when there is none, it is being deleted, or it does not cover `ip`.
 */
export async function getGrantFor(client: KubeClient, namespace: string, ip: string, ipv6PrefixLength: number): Promise<GrantMatch | undefined> {
  let key;
  try {
    key = grantKeyFor(ip, ipv6PrefixLength);
  } catch (err) {
    if (err instanceof NeverGrantedError) return undefined; // no grant may cover it: refused, not deferred
    throw err;
  }
  const grant = await client.get<RelayGrant>(grantsPath(namespace, key.name));
  if (grant === undefined || grant.metadata.deletionTimestamp !== undefined) return undefined;
  const expiresAtMs = Date.parse(grant.spec.expiresAt);
  const target = parseIp(ip);
  let address;
  try {
    address = parseGrantAddress(grant.spec.address);
  } catch {
    return undefined;
  }
  if (!Number.isFinite(expiresAtMs) || target === undefined || !covers(address, target)) return undefined;
  return { name: grant.metadata.name, address: grant.spec.address, user: grant.spec.user ?? '', expiresAtMs };
}

export interface RunningSmtpRole {
  server: RunningSmtpServer;
  /** Port of /metrics, /healthz and /readyz. */
  healthPort: number;
  close(): Promise<void>;
}

export async function runSmtp(doc: ConfigDocument, log: Logger = createLogger('smtp')): Promise<RunningSmtpRole> {
  setLogLevel(doc.common.log.level);
  const config = parseSmtpConfig(doc.section('smtp'), doc.section('login'));
  collectProcessMetrics();
  const { namespace } = doc.common.kubernetes;
  const client = KubeClient.fromPath(doc.common.kubernetes.kubeconfig);
  const cache = new GrantCache({ client, namespace, log: log.child({ component: 'grant-cache' }) });
  // Listen at once: until the first list is in, relaying is answered 451 and local mail flows.
  cache.startInBackground();

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
  const health = await startHealthServer({ host: doc.common.metrics.host, port: doc.common.metrics.port, ready: () => cache.synced });
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
