// The TCP side the line and netstring readers (socketmap, policy) share: a listener that refuses
// strangers before reading, closes idle connections and stops reading from a peer that does not
// read its answers.
import net from 'node:net';
import { admitPeer, type BridgeContext, type BridgeProtocol, type ListenerOptions, type RunningListener } from './listener.ts';
import { bridgeRequests } from './metrics.ts';

/** Postfix and sendmail keep socketmap and policy connections open between lookups. */
export const DEFAULT_IDLE_TIMEOUT_MS = 10 * 60_000;
/** Output queued for a peer that does not read before we stop reading from it. */
const MAX_PENDING_OUTPUT = 256 * 1024;

/** Counters bound once: per-request label lookups would cost more than the decision. */
export function bridgeCounters(protocol: BridgeProtocol) {
  return {
    granted: bridgeRequests.labels({ protocol, result: 'granted' }),
    notGranted: bridgeRequests.labels({ protocol, result: 'not_granted' }),
    unavailable: bridgeRequests.labels({ protocol, result: 'unavailable' }),
    malformed: bridgeRequests.labels({ protocol, result: 'malformed' }),
  };
}

export interface StreamListenerOptions extends ListenerOptions {
  /** Idle connections are closed after this long (default 10 minutes). */
  idleTimeoutMs?: number;
}

/** How long a connection we are closing may take to finish reading its last answers. */
const CLOSE_GRACE_MS = 2000;

/** Send FIN after what was written; a peer that does not close its side in time is cut off. */
export function endConnection(socket: net.Socket): void {
  socket.end();
  socket.setTimeout(CLOSE_GRACE_MS);
}

/** Called once per admitted connection; returns what handles each chunk read from it. */
export type ConnectionHandler = (socket: net.Socket, peer: string) => (chunk: Buffer) => void;

/**
 * A TCP listener for the line/netstring readers: refuses strangers before reading, closes idle
 * connections, stops reading from a peer that does not read its answers, never crashes on a
 * socket error.
 */
export async function startStreamListener(
  protocol: BridgeProtocol,
  opts: StreamListenerOptions,
  ctx: BridgeContext,
  handler: ConnectionHandler,
): Promise<RunningListener> {
  const sockets = new Set<net.Socket>();
  const idleMs = opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
  const server = net.createServer((socket) => {
    if (!admitPeer(protocol, opts.allow, socket.remoteAddress)) {
      socket.destroy();
      return;
    }
    const peer = socket.remoteAddress ?? '';
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', (err) => {
      ctx.log.debug(`${protocol}_connection_error`, { peer, error: err });
      socket.destroy();
    });
    socket.setTimeout(idleMs, () => {
      ctx.log.debug(`${protocol}_idle_timeout`, { peer });
      socket.destroy();
    });
    socket.setNoDelay(true);
    const onChunk = handler(socket, peer);
    socket.on('data', (chunk: Buffer) => {
      onChunk(chunk);
      if (socket.writableLength > MAX_PENDING_OUTPUT && !socket.isPaused()) {
        socket.pause();
        socket.once('drain', () => socket.resume());
      }
    });
  });
  server.maxConnections = 1024;
  server.on('error', (err) => ctx.log.warn(`${protocol}_listener_error`, { error: err }));
  const port = await new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: opts.host, port: opts.port, exclusive: true }, () => {
      server.off('error', reject);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
  ctx.log.info(`${protocol}_listening`, { host: opts.host, port, allow: opts.allow.entries });
  return {
    protocol,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      }),
  };
}
