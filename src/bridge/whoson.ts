// whoson (TCP and UDP, one port number): login servers say `LOGIN <ip> <user>` and
// `LOGOUT <ip>`, MTAs ask `QUERY <ip>`; each request is a line ended by CRLF and a blank line,
// each reply one line beginning `+` (yes), `-` (no) or `*` (bad request or our own trouble),
// then a blank line. A positive QUERY reply carries the user after the `+` (what `wso_query()`
// hands its caller). Over UDP one datagram is one request, answered by one datagram.
//
// LOGIN renews the grant (source `whoson`), LOGOUT revokes it, QUERY reads the grant cache: an
// unsynced cache answers `*` (a whoson client's "error": Exim's lookup defers), never `+`.
// Peers outside `allow` are dropped before anything is read (TCP) or answered (UDP); every admitted
// peer may read and write, as with classic whosond. UDP source addresses can be forged: keep
// `allow` to networks where that cannot happen, or turn UDP off.
import dgram from 'node:dgram';
import net from 'node:net';
import { canonicalIp, isClientAddress, parseIp } from '../net/ip.ts';
import { bindUdp, listenTcp } from '../net/listen.ts';
import { GrantWriteError } from '../grants/types.ts';
import { admitPeer, type BridgeContext, type ListenerOptions, type RunningListener } from './listener.ts';
import { bridgeRequests, type BridgeRequestResult } from './metrics.ts';

/** Longest request we read (whoson's own server takes 1 KB datagrams). */
export const MAX_REQUEST_BYTES = 1024;
/** Requests of one TCP connection queued before it stops reading. */
const MAX_QUEUED_PER_CONNECTION = 16;
const IDLE_TIMEOUT_MS = 120_000;
const MAX_USER_LENGTH = 320;

export type WhosonRequest =
  | { kind: 'login'; address: string; user: string }
  | { kind: 'logout'; address: string }
  | { kind: 'query'; address: string }
  | { kind: 'quit' }
  | { kind: 'bad'; reason: string };

/** Parse one request line (without its CRLF). Keywords are case-insensitive; words split on blanks. */
export function parseRequest(line: string): WhosonRequest {
  const words = line.trim().split(/[ \t]+/);
  const verb = (words[0] ?? '').toUpperCase();
  if (verb === '') return { kind: 'bad', reason: 'empty request' };
  if (verb === 'QUIT') return { kind: 'quit' };
  if (verb !== 'LOGIN' && verb !== 'LOGOUT' && verb !== 'QUERY') return { kind: 'bad', reason: 'unknown command' };
  const ipText = words[1];
  if (ipText === undefined) return { kind: 'bad', reason: `${verb} needs an IP address` };
  const ip = parseIp(ipText);
  if (!ip || !isClientAddress(ip)) return { kind: 'bad', reason: 'not a client IP address' };
  const address = canonicalIp(ipText);
  if (verb === 'QUERY') return words.length === 2 ? { kind: 'query', address } : { kind: 'bad', reason: 'QUERY takes one address' };
  if (verb === 'LOGOUT') return words.length === 2 ? { kind: 'logout', address } : { kind: 'bad', reason: 'LOGOUT takes one address' };
  // whoson stores whatever follows the address as the user; the grant needs something it can record.
  const user = words.slice(2).join(' ');
  if (user === '') return { kind: 'bad', reason: 'LOGIN needs a user' };
  if (user.length > MAX_USER_LENGTH || /\p{Cc}/u.test(user)) return { kind: 'bad', reason: 'user name too long or with control characters' };
  return { kind: 'login', address, user };
}

/**
 * Splits a TCP byte stream into requests: a non-empty line, then a blank line. Lines end in LF
 * with an optional CR. A request line followed by another non-empty line is answered as bad.
 */
export class RequestReader {
  private buffer = '';
  private line: string | undefined;

  /** The complete requests in `chunk` (each its line, or undefined for a malformed one); `overflow` when a line exceeds the limit. */
  push(chunk: Buffer): { requests: (string | undefined)[]; overflow: boolean } {
    this.buffer += chunk.toString('latin1');
    const requests: (string | undefined)[] = [];
    for (;;) {
      const nl = this.buffer.indexOf('\n');
      if (nl === -1) break;
      const text = this.buffer.slice(0, nl).replace(/\r$/, '');
      this.buffer = this.buffer.slice(nl + 1);
      if (this.line === undefined) {
        // Blank lines between requests are ignored.
        if (text !== '') this.line = text;
      } else if (text === '') {
        requests.push(this.line);
        this.line = undefined;
      } else {
        requests.push(undefined);
        this.line = undefined;
      }
    }
    return { requests, overflow: this.buffer.length > MAX_REQUEST_BYTES };
  }
}

/** The request of a UDP datagram: its first line, the rest blank (the terminator may be missing). */
export function datagramRequest(msg: Buffer): string | undefined {
  const lines = msg.toString('latin1').split('\n').map((l) => l.replace(/\r$/, ''));
  const first = lines[0] ?? '';
  return first !== '' && lines.slice(1).every((l) => l === '') ? first : undefined;
}

/** A reply line on the wire: the status character, the text, CRLF and the blank line. */
export function formatReply(status: '+' | '-' | '*', text: string): Buffer {
  return Buffer.from(`${status}${text.replace(/[\r\n]/g, ' ')}\r\n\r\n`, 'latin1');
}

export interface WhosonReply {
  reply: Buffer;
  /** QUIT: close the TCP connection after the reply. */
  close: boolean;
}

/** Answers whoson requests against the grant cache and store; transport-free. */
export class WhosonService {
  private readonly ctx: BridgeContext;

  constructor(ctx: BridgeContext) {
    this.ctx = ctx;
  }

  private count(result: BridgeRequestResult): void {
    bridgeRequests.inc({ protocol: 'whoson', result });
  }

  async handle(line: string | undefined, peer: string): Promise<WhosonReply> {
    const req = line === undefined ? ({ kind: 'bad', reason: 'a request is one line followed by a blank line' } as const) : parseRequest(line);
    const { ctx } = this;
    const done = (status: '+' | '-' | '*', text: string, close = false): WhosonReply => ({ reply: formatReply(status, text), close });
    switch (req.kind) {
      case 'bad':
        this.count('malformed');
        ctx.log.debug('whoson_bad_request', { peer, reason: req.reason });
        return done('*', req.reason);
      case 'quit':
        return done('+', 'QUIT OK', true);
      case 'query': {
        if (!ctx.grants.synced) {
          this.count('unavailable');
          return done('*', 'grants not loaded yet, try later');
        }
        const match = ctx.grants.lookup(req.address);
        if (!match) {
          this.count('not_granted');
          return done('-', 'not logged in');
        }
        this.count('granted');
        return done('+', match.user);
      }
      case 'login':
        try {
          const outcome = await ctx.store.renew(req.address, req.user, 'whoson');
          this.count('renewed');
          ctx.log.info('whoson_login', { peer, address: req.address, user: req.user, outcome });
          return done('+', 'LOGIN OK');
        } catch (err) {
          this.count('write_failed');
          ctx.log.error('whoson_login_failed', { peer, address: req.address, error: err as Error, ...(err instanceof GrantWriteError ? {} : { unexpected: true }) });
          return done('*', 'grant write failed, try later');
        }
      case 'logout':
        try {
          const deleted = await ctx.store.revoke(req.address);
          this.count('revoked');
          ctx.log.info('whoson_logout', { peer, address: req.address, deleted });
          return done('+', deleted ? 'LOGOUT record deleted' : 'LOGOUT no such record');
        } catch (err) {
          this.count('write_failed');
          ctx.log.error('whoson_logout_failed', { peer, address: req.address, error: err as Error });
          return done('*', 'grant revoke failed, try later');
        }
    }
  }
}

function unmapped(address: string | undefined): string {
  return address?.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : (address ?? '');
}

function serveTcp(service: WhosonService, allow: ListenerOptions['allow']): { server: net.Server; sockets: Set<net.Socket> } {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    if (!admitPeer('whoson', allow, socket.remoteAddress)) {
      socket.destroy();
      return;
    }
    const peer = unmapped(socket.remoteAddress);
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    socket.setTimeout(IDLE_TIMEOUT_MS, () => socket.destroy());
    socket.setNoDelay(true);
    const reader = new RequestReader();
    let queued = 0;
    let closing = false;
    let tail: Promise<void> = Promise.resolve();
    socket.on('data', (chunk: Buffer) => {
      if (closing) return;
      const { requests, overflow } = reader.push(chunk);
      for (const line of requests) {
        queued++;
        if (queued >= MAX_QUEUED_PER_CONNECTION) socket.pause();
        // One at a time, in order: a LOGIN then QUERY of the same address answers as written.
        tail = tail.then(async () => {
          if (closing || socket.destroyed) return;
          const r = await service.handle(line, peer);
          queued--;
          if (socket.destroyed) return;
          socket.write(r.reply);
          if (r.close) {
            closing = true;
            socket.end();
          } else if (queued < MAX_QUEUED_PER_CONNECTION && socket.isPaused()) socket.resume();
        });
      }
      if (overflow) {
        closing = true;
        bridgeRequests.inc({ protocol: 'whoson', result: 'malformed' });
        void tail.then(() => {
          if (!socket.destroyed) socket.end(formatReply('*', `request longer than ${MAX_REQUEST_BYTES} bytes`));
        });
      }
    });
  });
  server.maxConnections = 256;
  return { server, sockets };
}

function serveUdp(service: WhosonService, allow: ListenerOptions['allow'], host: string): dgram.Socket {
  const socket = dgram.createSocket({ type: host.includes(':') ? 'udp6' : 'udp4' });
  socket.on('message', (msg, rinfo) => {
    // Nothing goes back to a stranger: a reply to a forged source would be a reflection.
    if (!admitPeer('whoson', allow, rinfo.address)) return;
    const line = msg.length > MAX_REQUEST_BYTES ? undefined : datagramRequest(msg);
    void service.handle(line, unmapped(rinfo.address)).then((r) => {
      socket.send(r.reply, rinfo.port, rinfo.address, () => undefined);
    });
  });
  socket.on('error', () => undefined);
  return socket;
}

const closeServer = (server: net.Server, sockets: Set<net.Socket>) =>
  new Promise<void>((resolve) => {
    server.close(() => resolve());
    for (const s of sockets) s.destroy();
  });

export async function startWhosonListener(opts: ListenerOptions & { udp: boolean }, ctx: BridgeContext): Promise<RunningListener> {
  const service = new WhosonService(ctx);
  const { server, sockets } = serveTcp(service, opts.allow);
  let port = await listenTcp(server, opts.host, opts.port);
  let udp: dgram.Socket | undefined;
  if (opts.udp) {
    // UDP on the TCP port's number; with port 0, a number already taken for UDP means another try.
    for (let attempt = 0; ; attempt++) {
      udp = serveUdp(service, opts.allow, opts.host);
      try {
        await bindUdp(udp, opts.host, port);
        break;
      } catch (err) {
        udp.close();
        await closeServer(server, sockets);
        if (opts.port !== 0 || attempt >= 10) throw err;
        port = await listenTcp(server, opts.host, 0);
      }
    }
  }
  ctx.log.info('whoson_listening', { host: opts.host, port, udp: opts.udp, allow: opts.allow.entries });
  const boundUdp = udp;
  return {
    protocol: 'whoson',
    port,
    ...(boundUdp ? { udpPort: port } : {}),
    close: async () => {
      await Promise.all([closeServer(server, sockets), boundUdp ? new Promise<void>((r) => boundUdp.close(() => r())) : Promise.resolve()]);
    },
  };
}
