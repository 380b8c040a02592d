// What every role's listener does first with a new connection: learn who the client is (the TCP
// peer, or the address in a PROXY header from a trusted proxy, never anyone else's header) and
// take its slot under the connection limits. The role then answers a refusal in its own protocol.
import type net from 'node:net';
import type { Logger } from '../observability/log.ts';
import type { AcquireResult } from './limits.ts';
import { countProxyHeaderError } from './metrics.ts';
import type { NetworkList } from './networks.ts';
import { ProxyProtocolError, readProxyHeader, type ClientEndpoint } from './proxy.ts';

/** A ConnectionLimiter, or one that asks another process (the POP3 cluster's primary). */
export interface ClientLimiter {
  acquire(ip: string): AcquireResult | Promise<AcquireResult>;
}

export interface AcceptOptions {
  /** The role label of kubedrac_proxy_header_errors_total. */
  role: string;
  trustedProxies: NetworkList;
  proxyHeaderTimeoutMs: number;
  limiter: ClientLimiter;
  log: Logger;
}

export interface AcceptedConnection {
  /** The TCP peer ('' when the socket no longer knows it). */
  peer: string;
  /**
   * The client: the TCP peer, or the source a trusted proxy's header named; null when that header
   * named none (PROXY UNKNOWN, v2 LOCAL): such a connection is nobody's and never relays or grants.
   */
  client: ClientEndpoint | null;
  /** The trusted proxy the connection came through, if it did. */
  proxyPeer: string | undefined;
  /** Bytes arrived past the PROXY header (already unshifted back into the socket). */
  readPastHeader: boolean;
  /** The connection's slot under the limits, counted for the client (else the peer). */
  slot: AcquireResult;
}

/**
 * Read the PROXY header when the peer is a trusted proxy, then acquire a slot. Undefined when the
 * connection is already over: a refused header (counted, logged, socket destroyed), or a socket
 * that went away while the limiter answered (its slot given back).
 */
export async function acceptConnection(socket: net.Socket, opts: AcceptOptions): Promise<AcceptedConnection | undefined> {
  const peer = socket.remoteAddress ?? '';
  let client: ClientEndpoint | null = { address: peer, port: socket.remotePort ?? 0 };
  let proxyPeer: string | undefined;
  let readPastHeader = false;
  if (peer !== '' && opts.trustedProxies.contains(peer)) {
    proxyPeer = peer;
    try {
      const header = await readProxyHeader(socket, { trustedProxies: opts.trustedProxies, timeoutMs: opts.proxyHeaderTimeoutMs });
      client = header.client;
      readPastHeader = header.rest.length > 0;
      if (readPastHeader) socket.unshift(header.rest);
    } catch (err) {
      const reason = err instanceof ProxyProtocolError ? err.reason : 'malformed';
      countProxyHeaderError(opts.role, reason);
      opts.log.warn('proxy_header_refused', { peer, reason, error: err as Error });
      socket.destroy();
      return undefined;
    }
  }
  const slot = await opts.limiter.acquire(client?.address ?? peer);
  if (slot.ok && socket.destroyed) {
    slot.release(); // gone while we asked
    return undefined;
  }
  return { peer, client, proxyPeer, readPastHeader, slot };
}
