// The transport under the DRAC program and the embedded portmapper: one handler served over UDP
// (a reply per datagram, retransmits answered from a short replay cache) and TCP (persistent,
// record-marked, pipelined, replies in request order) on the same port number.
import crypto from 'node:crypto';
import dgram from 'node:dgram';
import net from 'node:net';
import { bindUdp, listenTcp } from '../../net/listen.ts';
import type { Logger } from '../../observability/log.ts';
import { encodeRecord, RecordReader } from './oncrpc.ts';

export interface RpcPeer {
  transport: 'udp' | 'tcp';
  address: string;
  port: number;
  /** The local address the request arrived on: known for TCP and for a UDP socket bound to one address. */
  localAddress: string | undefined;
}

/** Answers one RPC message (undefined: send nothing). Must not throw; a throw is logged and dropped. */
export type RpcHandler = (msg: Buffer, peer: RpcPeer) => Buffer | undefined | Promise<Buffer | undefined>;

export interface RpcServerOptions {
  host: string;
  /** 0: any free port that is free for both UDP and TCP. */
  port: number;
  handler: RpcHandler;
  log: Logger;
  /** Called for each TCP connection and each UDP datagram, before anything is read from it. */
  onPeer?: (peer: RpcPeer) => void;
  /** Called when the transport itself refuses input (a record over the size limit). */
  onMalformed?: (peer: RpcPeer, reason: string) => void;
  maxRecordBytes?: number;
  idleTimeoutMs?: number;
  maxConnections?: number;
  /**
   * How long a UDP retransmit (byte-identical datagram from the same peer) gets the first answer
   * again instead of being handled twice. libtirpc clients retransmit after 15 s, classic ones
   * after 5 s; default 30 s (the cache is bounded in entries, so a flood only shortens it).
   */
  replayWindowMs?: number;
}

export interface RunningRpcServer {
  port: number;
  udpPort: number;
  close(): Promise<void>;
}

const WILDCARDS = new Set(['0.0.0.0', '::', '']);
export const isWildcardHost = (host: string): boolean => WILDCARDS.has(host);

/** Requests of one TCP connection being worked on at once before it stops reading. */
const MAX_INFLIGHT_PER_CONNECTION = 64;
const REPLAY_CACHE_ENTRIES = 16_384;

function unmapped(address: string | undefined): string | undefined {
  return address?.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
}

/** Replies to recent datagrams, so a client's retransmit is answered without doing the work twice. */
class ReplayCache {
  private readonly entries = new Map<string, { at: number; reply: Promise<Buffer | undefined> }>();
  private readonly windowMs: number;
  constructor(windowMs: number) {
    this.windowMs = windowMs;
  }

  get(key: string, now: number): Promise<Buffer | undefined> | undefined {
    const e = this.entries.get(key);
    return e && now - e.at < this.windowMs ? e.reply : undefined;
  }

  set(key: string, now: number, reply: Promise<Buffer | undefined>): void {
    // Map order is insertion order: drop expired entries from the front, and the oldest when full.
    for (const [k, e] of this.entries) {
      if (now - e.at < this.windowMs && this.entries.size < REPLAY_CACHE_ENTRIES) break;
      this.entries.delete(k);
    }
    this.entries.set(key, { at: now, reply });
  }
}

export async function serveRpc(opts: RpcServerOptions): Promise<RunningRpcServer> {
  const { handler, log } = opts;
  const maxRecordBytes = opts.maxRecordBytes ?? 65_536;
  const idleTimeoutMs = opts.idleTimeoutMs ?? 120_000;
  const replay = new ReplayCache(opts.replayWindowMs ?? 30_000);
  const sockets = new Set<net.Socket>();
  const udpLocal = isWildcardHost(opts.host) ? undefined : opts.host;

  const call = async (msg: Buffer, peer: RpcPeer): Promise<Buffer | undefined> => {
    try {
      return await handler(msg, peer);
    } catch (err) {
      log.error('rpc_handler_failed', { transport: peer.transport, peer: peer.address, error: err as Error });
      return undefined;
    }
  };

  const server = net.createServer((socket) => {
    const peer: RpcPeer = {
      transport: 'tcp',
      address: unmapped(socket.remoteAddress) ?? '',
      port: socket.remotePort ?? 0,
      localAddress: unmapped(socket.localAddress),
    };
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    socket.setTimeout(idleTimeoutMs, () => socket.destroy());
    socket.setNoDelay(true);
    opts.onPeer?.(peer);
    const records = new RecordReader(maxRecordBytes);
    let inflight = 0;
    let tail: Promise<void> = Promise.resolve();
    socket.on('data', (chunk: Buffer) => {
      const pushed = records.push(chunk);
      for (const record of pushed.records) {
        inflight++;
        if (inflight >= MAX_INFLIGHT_PER_CONNECTION) socket.pause();
        const reply = call(record, peer);
        // Handled concurrently, answered in order.
        tail = tail.then(async () => {
          const out = await reply;
          inflight--;
          if (socket.destroyed) return;
          if (out) socket.write(encodeRecord(out));
          if (inflight < MAX_INFLIGHT_PER_CONNECTION && socket.isPaused()) socket.resume();
        });
      }
      if (pushed.error !== undefined) {
        opts.onMalformed?.(peer, pushed.error);
        log.warn('rpc_record_refused', { peer: peer.address, error: pushed.error });
        // The stream cannot be resynchronised: answer what came before, then close.
        void tail.then(() => socket.destroy());
        socket.pause();
      }
    });
  });
  server.maxConnections = opts.maxConnections ?? 256;

  const makeUdp = (): dgram.Socket => {
    const socket = dgram.createSocket({ type: opts.host.includes(':') ? 'udp6' : 'udp4' });
    socket.on('message', (msg, rinfo) => {
      const peer: RpcPeer = { transport: 'udp', address: unmapped(rinfo.address) ?? '', port: rinfo.port, localAddress: udpLocal };
      opts.onPeer?.(peer);
      if (msg.length > maxRecordBytes) {
        opts.onMalformed?.(peer, `datagram of ${msg.length} bytes exceeds the limit of ${maxRecordBytes}`);
        return;
      }
      // A retransmit is byte-identical: same xid, same call. The digest keeps the cache small.
      const key = `${rinfo.address}|${rinfo.port}|${crypto.createHash('sha1').update(msg).digest('base64')}`;
      const now = Date.now();
      let reply = replay.get(key, now);
      if (!reply) {
        reply = call(msg, peer);
        replay.set(key, now, reply);
      }
      void reply.then((out) => {
        if (out) socket.send(out, rinfo.port, rinfo.address, (err) => err && log.warn('rpc_udp_send_failed', { peer: peer.address, error: err }));
      });
    });
    return socket;
  };

  // TCP first; then UDP on the same number. With port 0, a number taken for UDP means another try.
  let port: number;
  let udp: dgram.Socket;
  for (let attempt = 0; ; attempt++) {
    port = await listenTcp(server, opts.host, opts.port);
    udp = makeUdp();
    try {
      await bindUdp(udp, opts.host, port);
      break;
    } catch (err) {
      try {
        udp.close();
      } catch {
        // never bound: nothing to close
      }
      await new Promise<void>((r) => server.close(() => r()));
      if (opts.port !== 0 || attempt >= 20 || (err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err;
    }
  }
  udp.on('error', (err) => log.error('rpc_udp_error', { error: err }));

  return {
    port,
    udpPort: port,
    close: async () => {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      });
      await new Promise<void>((resolve) => udp.close(() => resolve()));
    },
  };
}
