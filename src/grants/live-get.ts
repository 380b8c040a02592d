// The live grant GET: one read of the grant object that would cover an address, straight from the
// API server, for a reader whose watch-fed cache has not seen it yet (the SMTP role's live lookup
// closes the window between a login's write and the watch event).
import type { KubeClient } from '../kube/client.ts';
import { covers, parseIp } from '../net/ip.ts';
import { NeverGrantedError, grantKeyFor, parseGrantAddress } from './address.ts';
import { grantsPath } from './paths.ts';
import type { GrantMatch, RelayGrant } from './types.ts';

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
