// Bridge metrics, defined once. Labels are the protocol and a small fixed set of outcomes; never
// an address or a user.
import { Counter } from 'prom-client';

export const bridgeConnections = new Counter({
  name: 'kubedrac_bridge_connections_total',
  help: 'Connections (TCP) or datagrams (UDP) arriving at a bridge listener, by whether the peer was in its allow-list.',
  labelNames: ['protocol', 'result'] as const,
});

/**
 * result: `granted` (a reader answered yes), `not_granted`, `unavailable` (cache not synced: a
 * "try later" answer), `renewed` / `revoked` (a writer changed a grant), `write_failed`,
 * `denied` (caller not admitted to write), `malformed` (refused as a protocol error).
 */
export const bridgeRequests = new Counter({
  name: 'kubedrac_bridge_requests_total',
  help: 'Requests answered by the bridge listeners, by protocol and outcome.',
  labelNames: ['protocol', 'result'] as const,
});

export type BridgeRequestResult = 'granted' | 'not_granted' | 'unavailable' | 'renewed' | 'revoked' | 'write_failed' | 'denied' | 'malformed';
