// The classic DRAC RPC writer: rpc.dracd's program 900101, so that a qpopper, Dovecot or Cyrus
// built with `dracauth()` renews RelayGrants unchanged. Version 1 takes an IPv4 address (one
// unsigned int, network order), version 2 (Debian's IPv6 extension) a char[16] that XDR sends as
// 16 words. Procedure 1 (ADD) answers an addstat: ADD_SUCCESS once the grant is written,
// ADD_PERM to a caller that is not admitted, ADD_SYSERR when the write failed, ADD_UNKOWN for an
// address nobody can connect from (0.0.0.0, ::, multicast, broadcast, 240/4).
import { formatIp, ipOfBytes, isClientAddress, type IpPrefix } from '../../net/ip.ts';
import { GrantWriteError } from '../../grants/types.ts';
import type { NetworkList } from '../../net/networks.ts';
import { DracdAllow } from './dracd-allow.ts';
import type { BridgeContext, ListenerOptions, RunningListener } from '../listener.ts';
import { bridgeConnections, bridgeRequests, type BridgeRequestResult } from '../metrics.ts';
import { ACCEPT, decodeCall, encodeAcceptError, encodeProgMismatch, encodeSuccess, type RpcCall } from './oncrpc.ts';
import { startPortmapper } from './portmap.ts';
import { serveRpc, type RpcPeer, type RunningRpcServer } from './rpc-server.ts';
import { XdrReader } from './xdr.ts';

export const DRAC_PROGRAM = 900101;
export const DRAC_VERSION_IPV4 = 1;
export const DRAC_VERSION_IPV6 = 2;
export const DRACPROC_NULL = 0;
export const DRACPROC_ADD = 1;

export const ADDSTAT = { ADD_SUCCESS: 0, ADD_PERM: 1, ADD_SYSERR: 2, ADD_UNKOWN: 3 } as const;
export type AddStat = (typeof ADDSTAT)[keyof typeof ADDSTAT];

/** The address an ADD names, decoded from its XDR arguments; undefined for garbage. */
export function decodeAddArgs(vers: number, args: Uint8Array): IpPrefix | undefined {
  const r = new XdrReader(args);
  let bytes: Uint8Array;
  if (vers === DRAC_VERSION_IPV4) {
    const word = r.uint32();
    bytes = new Uint8Array([word >>> 24, (word >>> 16) & 255, (word >>> 8) & 255, word & 255]);
  } else {
    // char[16]: each char is an XDR int, sign-extended by some clients; the low 8 bits are the byte.
    bytes = new Uint8Array(16);
    for (let i = 0; i < 16; i++) bytes[i] = r.int32() & 255;
  }
  if (r.error() !== undefined || r.remaining !== 0) return undefined;
  // An IPv4-mapped IPv6 address is its IPv4 address.
  return ipOfBytes(bytes);
}

interface DracServiceOptions {
  ctx: BridgeContext;
  /** Whether a caller may ADD (CIDR allow-list or dracd.allow). */
  isAdmitted: (ip: string) => boolean;
  /**
   * Answer ADD_SYSERR when the write has not landed by then (it goes on in the background), so
   * that the caller hears "system error" rather than its own RPC timeout (libtirpc: 25 s).
   */
  addTimeoutMs?: number;
}

const ADD_TIMEOUT_MS = 20_000;

/** What the DRAC program answers to one message; transport-free, so it is testable without sockets. */
export class DracService {
  private readonly opts: DracServiceOptions;

  constructor(opts: DracServiceOptions) {
    this.opts = opts;
  }

  private count(result: BridgeRequestResult): void {
    bridgeRequests.inc({ protocol: 'drac', result });
  }

  async handle(msg: Buffer, peer: RpcPeer): Promise<Buffer | undefined> {
    const decoded = decodeCall(msg);
    if (decoded.kind !== 'call') {
      this.count('malformed');
      this.opts.ctx.log.debug('drac_message_refused', { peer: peer.address, transport: peer.transport, reason: decoded.reason });
      return decoded.kind === 'reject' ? decoded.reply : undefined;
    }
    const call = decoded.call;
    if (call.prog !== DRAC_PROGRAM) return this.refuse(call, ACCEPT.PROG_UNAVAIL);
    if (call.vers !== DRAC_VERSION_IPV4 && call.vers !== DRAC_VERSION_IPV6) {
      this.count('malformed');
      return encodeProgMismatch(call.xid, DRAC_VERSION_IPV4, DRAC_VERSION_IPV6);
    }
    if (call.proc === DRACPROC_NULL) return encodeSuccess(call.xid);
    if (call.proc !== DRACPROC_ADD) return this.refuse(call, ACCEPT.PROC_UNAVAIL);
    const ip = decodeAddArgs(call.vers, call.args);
    if (!ip) return this.refuse(call, ACCEPT.GARBAGE_ARGS);
    const stat = await this.add(ip, peer);
    return encodeSuccess(call.xid, (w) => w.uint32(stat));
  }

  private refuse(call: RpcCall, stat: typeof ACCEPT.PROG_UNAVAIL | typeof ACCEPT.PROC_UNAVAIL | typeof ACCEPT.GARBAGE_ARGS): Buffer {
    this.count('malformed');
    return encodeAcceptError(call.xid, stat);
  }

  private withDeadline<T>(write: Promise<T>, address: string): Promise<T> {
    const ms = this.opts.addTimeoutMs ?? ADD_TIMEOUT_MS;
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`the write of the grant for ${address} took longer than ${ms} ms`)), ms);
    });
    return Promise.race([write, deadline]).finally(() => clearTimeout(timer));
  }

  private async add(ip: IpPrefix, peer: RpcPeer): Promise<AddStat> {
    const { ctx, isAdmitted } = this.opts;
    const address = formatIp(ip);
    if (!isAdmitted(peer.address)) {
      this.count('denied');
      ctx.log.warn('drac_add_denied', { peer: peer.address, address, reason: 'caller not in the allow-list or dracd.allow' });
      return ADDSTAT.ADD_PERM;
    }
    if (!isClientAddress(ip)) {
      this.count('malformed');
      ctx.log.warn('drac_add_refused', { peer: peer.address, address, reason: 'not an address a client connects from' });
      return ADDSTAT.ADD_UNKOWN;
    }
    try {
      // DRAC RPC carries no user name; the grant's user stays empty (the CRD allows it).
      const outcome = await this.withDeadline(ctx.store.renew(address, '', 'drac'), address);
      this.count('renewed');
      ctx.log.info('drac_add', { peer: peer.address, address, outcome });
      return ADDSTAT.ADD_SUCCESS;
    } catch (err) {
      this.count('write_failed');
      ctx.log.error('drac_add_write_failed', {
        peer: peer.address,
        address,
        error: err as Error,
        ...(err instanceof GrantWriteError ? {} : { unexpected: true }),
      });
      return ADDSTAT.ADD_SYSERR;
    }
  }
}

export interface DracRpcListenerOptions extends ListenerOptions {
  /** A dracd.allow file (`netmask netaddr` lines); callers in it may ADD, as callers in `allow` may. */
  allowFile?: string;
  /** Where to run the embedded portmapper (UDP and TCP); production: port 111. */
  portmapper?: { host: string; port: number };
}

/**
 * The DRAC program over UDP and TCP on one port number, and the portmapper that points at it.
 * Every caller is answered (NULL, or ADD_PERM when not admitted): `allow` and dracd.allow decide
 * who may ADD, not who may talk. Only a portmapper DUMP over UDP, whose reply outweighs its
 * request, is kept for admitted callers.
 */
export async function startDracRpcListener(opts: DracRpcListenerOptions, ctx: BridgeContext): Promise<RunningListener> {
  const allowFile = opts.allowFile === undefined ? undefined : new DracdAllow({ file: opts.allowFile, log: ctx.log });
  const allow: NetworkList = opts.allow;
  const isAdmitted = (ip: string): boolean => allow.contains(ip) || (allowFile?.contains(ip) ?? false);
  const service = new DracService({ ctx, isAdmitted });
  const servers: RunningRpcServer[] = [];
  const closeAll = async () => {
    allowFile?.close();
    await Promise.all(servers.map((s) => s.close()));
  };
  try {
    const drac = await serveRpc({
      host: opts.host,
      port: opts.port,
      handler: (msg, peer) => service.handle(msg, peer),
      log: ctx.log,
      maxRecordBytes: 4096,
      onPeer: (peer) => bridgeConnections.inc({ protocol: 'drac', result: isAdmitted(peer.address) ? 'accepted' : 'refused' }),
      onMalformed: () => bridgeRequests.inc({ protocol: 'drac', result: 'malformed' }),
    });
    servers.push(drac);
    ctx.log.info('drac_listening', { host: opts.host, port: drac.port, allow: allow.entries, allowFile: opts.allowFile });
    let portmapperPort: number | undefined;
    if (opts.portmapper) {
      const registrations = [DRAC_VERSION_IPV4, DRAC_VERSION_IPV6].flatMap((vers) =>
        (['udp', 'tcp'] as const).map((transport) => ({ prog: DRAC_PROGRAM, vers, transport, port: drac.port })),
      );
      const portmapper = await startPortmapper({
        host: opts.portmapper.host,
        port: opts.portmapper.port,
        registrations,
        serviceHost: opts.host,
        mayDumpOverUdp: isAdmitted,
        onMalformed: () => bridgeRequests.inc({ protocol: 'drac', result: 'malformed' }),
        log: ctx.log,
      });
      servers.push(portmapper);
      portmapperPort = portmapper.port;
    }
    return { protocol: 'drac', port: drac.port, udpPort: drac.udpPort, ...(portmapperPort === undefined ? {} : { portmapperPort }), close: closeAll };
  } catch (err) {
    await closeAll();
    throw err;
  }
}
