// The TCP side the line and netstring readers (socketmap, policy) share: a listener that refuses
// strangers before reading, closes idle connections and stops reading from a peer that does not
// read its answers, and the loop that answers each chunk a peer sends in one write. A reader
// brings only its framing and its decision (a RequestAnswerer).
import net from 'node:net';
import { listenTcp } from '../net/listen.ts';
import { admitPeer, type BridgeContext, type BridgeProtocol, type ListenerOptions, type RunningListener } from './listener.ts';
import { bridgeRequests } from './metrics.ts';

/** Postfix and sendmail keep socketmap and policy connections open between lookups. */
export const DEFAULT_IDLE_TIMEOUT_MS = 10 * 60_000;
/** Output queued for a peer that does not read before we stop reading from it. */
const MAX_PENDING_OUTPUT = 256 * 1024;

export interface StreamListenerOptions extends ListenerOptions {
  /** Idle connections are closed after this long (default 10 minutes). */
  idleTimeoutMs?: number;
}

/** How long a connection we are closing may take to finish reading its last answers. */
const CLOSE_GRACE_MS = 2000;

/** Send FIN after what was written; a peer that does not close its side in time is cut off. */
function endConnection(socket: net.Socket): void {
  socket.end();
  socket.setTimeout(CLOSE_GRACE_MS);
}

/** How one answer counts in `kubedrac_bridge_requests_total`. */
const ANSWER_RESULTS = ['granted', 'notGranted', 'unavailable', 'malformed'] as const;
export type AnswerResult = (typeof ANSWER_RESULTS)[number];

/** A reader's side of one connection: its request framing and its pure decision. */
export interface RequestAnswerer {
  /**
   * Answer every request complete in `chunk` (with what came before it), in order, through
   * `send`. Throws when the stream cannot be read on: the connection then closes.
   */
  answer(chunk: Buffer, nowMs: number, send: (answer: string, result: AnswerResult) => void): void;
  /** What to send before closing after `answer` threw (may be ''); logs why. */
  lastWords(err: unknown): string;
}

/**
 * A TCP listener for the line/netstring readers: refuses strangers before reading, closes idle
 * connections, stops reading from a peer that does not read its answers, never crashes on a
 * socket error. Each chunk read is answered in one write, and counted once.
 */
export async function startStreamListener(
  protocol: BridgeProtocol,
  opts: StreamListenerOptions,
  ctx: BridgeContext,
  open: (peer: string) => RequestAnswerer,
): Promise<RunningListener> {
  // Counters bound once: per-request label lookups would cost more than the decision.
  const counters = {
    granted: bridgeRequests.labels({ protocol, result: 'granted' }),
    notGranted: bridgeRequests.labels({ protocol, result: 'not_granted' }),
    unavailable: bridgeRequests.labels({ protocol, result: 'unavailable' }),
    malformed: bridgeRequests.labels({ protocol, result: 'malformed' }),
  };
  const answerChunks = (socket: net.Socket, peer: string): ((chunk: Buffer) => void) => {
    const answerer = open(peer);
    const tally: Record<AnswerResult, number> = { granted: 0, notGranted: 0, unavailable: 0, malformed: 0 };
    let out = '';
    const send = (answer: string, result: AnswerResult) => {
      out += answer;
      tally[result]++;
    };
    let closing = false;
    return (chunk) => {
      if (closing) return;
      try {
        answerer.answer(chunk, Date.now(), send);
      } catch (err) {
        closing = true;
        tally.malformed++;
        out += answerer.lastWords(err);
      }
      if (out !== '') socket.write(out, 'latin1');
      out = '';
      if (closing) endConnection(socket);
      for (const result of ANSWER_RESULTS) {
        if (tally[result] !== 0) counters[result].inc(tally[result]);
        tally[result] = 0;
      }
    };
  };
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
    const onChunk = answerChunks(socket, peer);
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
  const port = await listenTcp(server, opts.host, opts.port);
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
