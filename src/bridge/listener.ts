// What every bridge listener shares: the one grant cache (readers) and the one grant store
// (writers), the allow-list of client networks, and how a listener reports what it bound.
import type { GrantLookup, GrantRenewer } from '../grants/types.ts';
import type { NetworkList } from '../net/networks.ts';
import type { Logger } from '../observability/log.ts';
import { bridgeConnections } from './metrics.ts';

export const BRIDGE_PROTOCOLS = ['socketmap', 'policy', 'whoson', 'drac', 'auth-policy'] as const;
export type BridgeProtocol = (typeof BRIDGE_PROTOCOLS)[number];

/** The write side a bridge needs beyond renew: whoson LOGOUT takes a grant away. */
export interface GrantRevoker {
  revoke(clientIp: string): Promise<boolean>;
}

export interface BridgeContext {
  /** The one GrantCache of the process; `synced` false means every reader answers "try later". */
  grants: GrantLookup;
  /** The one GrantStore of the process (writers only). */
  store: GrantRenewer & GrantRevoker;
  log: Logger;
}

export interface ListenerOptions {
  host: string;
  /** 0 picks a free port (tests). */
  port: number;
  /** Peers outside these networks are refused before a byte is read. */
  allow: NetworkList;
}

export interface RunningListener {
  protocol: BridgeProtocol;
  /** The TCP port bound (the HTTP port for auth-policy). */
  port: number;
  /** The UDP port bound, for protocols that also speak UDP. */
  udpPort?: number;
  /** The embedded portmapper's port (DRAC RPC with the portmapper on). */
  portmapperPort?: number;
  close(): Promise<void>;
}

/**
 * Whether a peer may talk to a listener: its address must be in `allow` (an IPv4-mapped IPv6
 * peer counts as its IPv4 address). Counts refused peers; accepted ones are counted too, so a
 * dashboard can show the share refused.
 */
export function admitPeer(protocol: BridgeProtocol, allow: NetworkList, remoteAddress: string | undefined): boolean {
  const ok = remoteAddress !== undefined && allow.contains(remoteAddress);
  bridgeConnections.inc({ protocol, result: ok ? 'accepted' : 'refused' });
  return ok;
}
