// The socketmap reader (sendmail `K<name> socket inet:PORT@HOST`, Postfix
// `socketmap:inet:HOST:PORT:<name>`): requests `<len>:<mapname> <key>,`, one answer netstring
// each, in order, on persistent connections. A client address with a live grant answers
// `OK <expiry epoch seconds>` (all-numeric: access(5) reads it as OK; sendmail gets a value to
// rewrite to); anything else `NOTFOUND `, an unsynced cache `TEMP`, an unknown map `PERM`.
// The decision is pure (`socketmapAnswer`); the listener only frames bytes.
import net from 'node:net';
import { formatIp, parseIp } from '../net/ip.ts';
import type { GrantLookup } from '../grants/types.ts';
import { admitPeer, type BridgeContext, type BridgeProtocol, type ListenerOptions, type RunningListener } from './listener.ts';
import { bridgeRequests } from './metrics.ts';
import { encodeNetstring, NetstringDecoder, NetstringError } from './netstring.ts';

/** Longest request netstring we read: `drac ` plus an address in any form fits many times over. */
export const MAX_SOCKETMAP_REQUEST = 1000;
/** Postfix and sendmail keep socketmap connections open between lookups. */
export const DEFAULT_IDLE_TIMEOUT_MS = 10 * 60_000;
/** Output queued for a peer that does not read before we stop reading from it. */
const MAX_PENDING_OUTPUT = 256 * 1024;

export const NOTFOUND = 'NOTFOUND ';
const TEMP_UNSYNCED = 'TEMP grants not loaded yet, try later';

/**
 * The key as an IP address, or undefined. Understands sendmail's forms: `IPv6:` tags (which
 * sendmail lower-cases to `ipv6:` before a map lookup) and a bracketed `[addr]`.
 */
export function socketmapKeyAddress(key: string): string | undefined {
  let k = key;
  if (k.length > 2 && k.charCodeAt(0) === 91 /* [ */ && k.charCodeAt(k.length - 1) === 93 /* ] */) k = k.slice(1, -1);
  if (k.length > 5 && k.charCodeAt(4) === 58 /* : */ && k.slice(0, 5).toLowerCase() === 'ipv6:') k = k.slice(5);
  const p = parseIp(k);
  return p ? formatIp(p) : undefined;
}

/**
 * The answer payload (not yet a netstring) to one socketmap request `<mapname> <key>`. Non-IP keys
 * (Postfix asks with the client host name first, then the address, then parent networks) are
 * NOTFOUND even before the cache is synced: no grant could ever match them.
 */
export function socketmapAnswer(mapName: string, request: string, grants: GrantLookup, nowMs: number): string {
  const space = request.indexOf(' ');
  if (space === -1) return 'PERM request must be "<map> <key>"';
  if (space !== mapName.length || !request.startsWith(mapName)) {
    return `PERM unknown map ${JSON.stringify(request.slice(0, Math.min(space, 64)))}`;
  }
  const address = socketmapKeyAddress(request.slice(space + 1));
  if (address === undefined) return NOTFOUND;
  if (!grants.synced) return TEMP_UNSYNCED;
  const match = grants.lookup(address, nowMs);
  return match ? `OK ${Math.floor(match.expiresAtMs / 1000)}` : NOTFOUND;
}

/** Counters bound once: per-request label lookups would cost more than the decision. */
function counters(protocol: BridgeProtocol) {
  return {
    granted: bridgeRequests.labels({ protocol, result: 'granted' }),
    notGranted: bridgeRequests.labels({ protocol, result: 'not_granted' }),
    unavailable: bridgeRequests.labels({ protocol, result: 'unavailable' }),
    malformed: bridgeRequests.labels({ protocol, result: 'malformed' }),
  };
}
export { counters as bridgeCounters };

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

export async function startSocketmapListener(opts: StreamListenerOptions & { mapName: string }, ctx: BridgeContext): Promise<RunningListener> {
  const { mapName } = opts;
  const { grants } = ctx;
  const count = counters('socketmap');
  return startStreamListener('socketmap', opts, ctx, (socket, peer) => {
    const decoder = new NetstringDecoder(MAX_SOCKETMAP_REQUEST);
    let closing = false;
    return (chunk) => {
      if (closing) return;
      const nowMs = Date.now();
      let out = '';
      let granted = 0;
      let notGranted = 0;
      let unavailable = 0;
      let malformed = 0;
      try {
        decoder.push(chunk, (request) => {
          const answer = socketmapAnswer(mapName, request, grants, nowMs);
          switch (answer.charCodeAt(0)) {
            case 79 /* OK */:
              granted++;
              break;
            case 78 /* NOTFOUND */:
              notGranted++;
              break;
            case 84 /* TEMP */:
              unavailable++;
              break;
            default:
              malformed++;
          }
          out += encodeNetstring(answer);
        });
      } catch (err) {
        // The stream cannot be resynchronised: answer what we can, then close.
        closing = true;
        malformed++;
        if (err instanceof NetstringError) {
          out += encodeNetstring(`PERM bad netstring: ${err.message}`);
          ctx.log.debug('socketmap_bad_netstring', { peer, reason: err.message });
        } else {
          out += encodeNetstring('TEMP internal error');
          ctx.log.warn('socketmap_internal_error', { peer, error: err as Error });
        }
      }
      if (out !== '') socket.write(out, 'latin1');
      if (closing) endConnection(socket);
      if (granted) count.granted.inc(granted);
      if (notGranted) count.notGranted.inc(notGranted);
      if (unavailable) count.unavailable.inc(unavailable);
      if (malformed) count.malformed.inc(malformed);
    };
  });
}
