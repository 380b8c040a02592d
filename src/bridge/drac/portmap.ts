// An embedded portmapper, so that `clnt_create(host, 900101, 1, "udp")` finds the DRAC listener
// without a system rpcbind: PMAP version 2 (RFC 1833: NULL, GETPORT, DUMP) for classic clients
// and rpcbind versions 3 and 4 (GETADDR, GETVERSADDR, DUMP, GETTIME) for TI-RPC clients. It
// answers only for the programs registered here (its own and the DRAC program); anything else
// is port 0 / an empty address, and nobody may SET or UNSET from outside.
import { parseIp, formatIp } from '../../net/ip.ts';
import type { Logger } from '../../observability/log.ts';
import { ACCEPT, decodeCall, encodeAcceptError, encodeProgMismatch, encodeSuccess, type RpcCall } from './oncrpc.ts';
import { isWildcardHost, serveRpc, type RpcPeer, type RunningRpcServer } from './rpc-server.ts';
import { XdrReader, type XdrWriter } from './xdr.ts';

export const PMAP_PROGRAM = 100000;
const PMAP_VERSION = 2;
const RPCB_VERSION_LOW = 3;
const RPCB_VERSION_HIGH = 4;
const IPPROTO_TCP = 6;
const IPPROTO_UDP = 17;

const PROC = { NULL: 0, SET: 1, UNSET: 2, GETPORT_OR_GETADDR: 3, DUMP: 4, GETTIME: 6, GETVERSADDR: 9 } as const;
/** Netids and owner strings are short; anything longer is garbage. */
const MAX_STRING = 255;
const OWNER = 'kube-drac';

export interface ProgramRegistration {
  prog: number;
  vers: number;
  transport: 'udp' | 'tcp';
  port: number;
}

export interface PortmapServiceOptions {
  registrations: readonly ProgramRegistration[];
  /** The address the registered programs listen on; a wildcard means "the one the client reached". */
  serviceHost: string;
  /** Whether to answer DUMP over UDP to this peer (a UDP DUMP reply is bigger than its request: a reflection vector). */
  mayDumpOverUdp?: (ip: string) => boolean;
  /** Counts a message that could not be answered as a call. */
  onMalformed?: (reason: string) => void;
}

type Family = 4 | 6;

function familiesOf(host: string): Family[] {
  if (host === '::') return [4, 6];
  const p = parseIp(host);
  if (!p) return [4]; // a host name: classic clients are IPv4
  return host.includes(':') && p.family === 6 ? [6] : [4];
}

/** The netid of a transport in a family: udp, tcp, udp6, tcp6. */
function netidOf(transport: 'udp' | 'tcp', family: Family): string {
  return family === 6 ? `${transport}6` : transport;
}

function parseNetid(netid: string): { transport: 'udp' | 'tcp'; family: Family } | undefined {
  const m = /^(udp|tcp)(6?)$/.exec(netid);
  return m ? { transport: m[1] as 'udp' | 'tcp', family: m[2] ? 6 : 4 } : undefined;
}

/** RFC 5665 universal address: the IP text, then the port as two decimal bytes. */
export function universalAddress(ip: string, port: number): string {
  return `${ip}.${port >> 8}.${port & 255}`;
}

/** The IP of a universal address, canonical, or undefined. */
export function hostOfUniversalAddress(uaddr: string): { ip: string; family: Family } | undefined {
  const m = /^(.+)\.(\d{1,3})\.(\d{1,3})$/.exec(uaddr);
  if (!m) return undefined;
  const p = parseIp(m[1] as string);
  return p ? { ip: formatIp(p), family: p.family } : undefined;
}

function familyOfIp(ip: string | undefined): { ip: string; family: Family } | undefined {
  if (ip === undefined) return undefined;
  const p = parseIp(ip);
  return p ? { ip: formatIp(p), family: p.family } : undefined;
}

export class PortmapService {
  private readonly opts: PortmapServiceOptions;
  private readonly families: Family[];
  private registrations: ProgramRegistration[];

  constructor(opts: PortmapServiceOptions) {
    this.opts = opts;
    this.families = familiesOf(opts.serviceHost);
    this.registrations = [...opts.registrations];
  }

  /** Register the portmapper itself once its port is known (what `rpcinfo -p` lists first). */
  registerSelf(port: number): void {
    for (let vers = PMAP_VERSION; vers <= RPCB_VERSION_HIGH; vers++) {
      for (const transport of ['tcp', 'udp'] as const) this.registrations.unshift({ prog: PMAP_PROGRAM, vers, transport, port });
    }
  }

  /** The registration for prog/vers/transport; another version of the program if that one is not here, as rpcbind does. */
  private find(prog: number, vers: number, transport: 'udp' | 'tcp', exact: boolean): ProgramRegistration | undefined {
    const same = this.registrations.filter((r) => r.prog === prog && r.transport === transport);
    return same.find((r) => r.vers === vers) ?? (exact ? undefined : same[same.length - 1]);
  }

  /**
   * The address to announce for a program reached over `family`: the service's own address when
   * it listens on one; otherwise the one the client reached us on — first as the TI-RPC client
   * says it in `r_addr` (right even behind a Service's NAT), then the socket's local address.
   */
  private hostFor(family: Family, peer: RpcPeer, clientUaddr: string): string | undefined {
    const candidates = [
      isWildcardHost(this.opts.serviceHost) ? undefined : familyOfIp(this.opts.serviceHost),
      hostOfUniversalAddress(clientUaddr),
      familyOfIp(peer.localAddress),
    ];
    for (const c of candidates) if (c && c.family === family && !isWildcardHost(c.ip)) return c.ip;
    return undefined;
  }

  handle(msg: Buffer, peer: RpcPeer): Buffer | undefined {
    const decoded = decodeCall(msg);
    if (decoded.kind === 'drop') {
      this.opts.onMalformed?.(decoded.reason);
      return undefined;
    }
    if (decoded.kind === 'reject') {
      this.opts.onMalformed?.(decoded.reason);
      return decoded.reply;
    }
    const call = decoded.call;
    if (call.prog !== PMAP_PROGRAM) return encodeAcceptError(call.xid, ACCEPT.PROG_UNAVAIL);
    const isPmap = call.vers === PMAP_VERSION;
    if (!isPmap && !(call.vers >= RPCB_VERSION_LOW && call.vers <= RPCB_VERSION_HIGH)) return encodeProgMismatch(call.xid, PMAP_VERSION, RPCB_VERSION_HIGH);
    // The same in every version.
    switch (call.proc) {
      case PROC.NULL:
        return encodeSuccess(call.xid);
      case PROC.SET:
      case PROC.UNSET:
        return encodeSuccess(call.xid, (w) => w.bool(false));
    }
    return isPmap ? this.pmap(call, peer) : this.rpcbind(call, peer);
  }

  private garbage(call: RpcCall, why: string): Buffer {
    this.opts.onMalformed?.(why);
    return encodeAcceptError(call.xid, ACCEPT.GARBAGE_ARGS);
  }

  private pmap(call: RpcCall, peer: RpcPeer): Buffer {
    const r = new XdrReader(call.args);
    switch (call.proc) {
      case PROC.GETPORT_OR_GETADDR: {
        const prog = r.uint32();
        const vers = r.uint32();
        const prot = r.uint32();
        r.uint32(); // port: ignored
        if (r.error() !== undefined) return this.garbage(call, `GETPORT arguments: ${r.error()}`);
        const transport = prot === IPPROTO_TCP ? 'tcp' : prot === IPPROTO_UDP ? 'udp' : undefined;
        const found = transport && this.families.includes(4) ? this.find(prog, vers, transport, false) : undefined;
        return encodeSuccess(call.xid, (w) => w.uint32(found?.port ?? 0));
      }
      case PROC.DUMP:
        if (peer.transport === 'udp' && !(this.opts.mayDumpOverUdp?.(peer.address) ?? true)) return encodeAcceptError(call.xid, ACCEPT.PROC_UNAVAIL);
        return encodeSuccess(call.xid, (w) => {
          // PMAP v2 speaks of IPv4 ports only.
          if (this.families.includes(4)) {
            for (const reg of this.registrations) {
              w.bool(true).uint32(reg.prog).uint32(reg.vers).uint32(reg.transport === 'tcp' ? IPPROTO_TCP : IPPROTO_UDP).uint32(reg.port);
            }
          }
          w.bool(false);
        });
      default:
        return encodeAcceptError(call.xid, ACCEPT.PROC_UNAVAIL);
    }
  }

  private rpcbind(call: RpcCall, peer: RpcPeer): Buffer {
    const r = new XdrReader(call.args);
    switch (call.proc) {
      case PROC.GETPORT_OR_GETADDR:
      case PROC.GETVERSADDR: {
        if (call.proc === PROC.GETVERSADDR && call.vers !== RPCB_VERSION_HIGH) return encodeAcceptError(call.xid, ACCEPT.PROC_UNAVAIL);
        const prog = r.uint32();
        const vers = r.uint32();
        const netid = r.string(MAX_STRING);
        const clientUaddr = r.string(MAX_STRING);
        r.string(MAX_STRING); // owner
        if (r.error() !== undefined) return this.garbage(call, `GETADDR arguments: ${r.error()}`);
        const n = parseNetid(netid);
        let uaddr = '';
        if (n && this.families.includes(n.family)) {
          const found = this.find(prog, vers, n.transport, call.proc === PROC.GETVERSADDR);
          const host = found ? this.hostFor(n.family, peer, clientUaddr) : undefined;
          if (found && host !== undefined) uaddr = universalAddress(host, found.port);
        }
        return encodeSuccess(call.xid, (w) => w.string(uaddr));
      }
      case PROC.DUMP:
        if (peer.transport === 'udp' && !(this.opts.mayDumpOverUdp?.(peer.address) ?? true)) return encodeAcceptError(call.xid, ACCEPT.PROC_UNAVAIL);
        return encodeSuccess(call.xid, (w) => this.dumpRpcb(w, peer));
      case PROC.GETTIME:
        return encodeSuccess(call.xid, (w) => w.uint32(Math.floor(Date.now() / 1000)));
      default:
        return encodeAcceptError(call.xid, ACCEPT.PROC_UNAVAIL);
    }
  }

  private dumpRpcb(w: XdrWriter, peer: RpcPeer): void {
    for (const family of this.families) {
      const host = this.hostFor(family, peer, '');
      if (host === undefined) continue;
      for (const reg of this.registrations) {
        w.bool(true).uint32(reg.prog).uint32(reg.vers).string(netidOf(reg.transport, family)).string(universalAddress(host, reg.port)).string(OWNER);
      }
    }
    w.bool(false);
  }
}

export interface PortmapperOptions extends Omit<PortmapServiceOptions, 'registrations'> {
  host: string;
  port: number;
  registrations: readonly ProgramRegistration[];
  log: Logger;
}

/** Start the portmapper on host:port, UDP and TCP. Port 111 needs root or CAP_NET_BIND_SERVICE. */
export async function startPortmapper(opts: PortmapperOptions): Promise<RunningRpcServer> {
  const service = new PortmapService(opts);
  const server = await serveRpc({
    host: opts.host,
    port: opts.port,
    handler: (msg, peer) => service.handle(msg, peer),
    log: opts.log,
    maxRecordBytes: 8192,
    onMalformed: (_peer, reason) => opts.onMalformed?.(reason),
  });
  service.registerSelf(server.port);
  opts.log.info('portmapper_listening', {
    host: opts.host,
    port: server.port,
    programs: opts.registrations.map((r) => `${r.prog}/${r.vers}/${r.transport}:${r.port}`),
  });
  return server;
}
