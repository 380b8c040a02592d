// ONC RPC version 2 messages (RFC 5531) and TCP record marking. Pure: bytes in, bytes out.
// Server side: decode a CALL into what to dispatch or what to answer at once; encode the
// replies. Client side (tests, benchmark): encode a CALL, decode a REPLY.
import { XdrReader, XdrWriter } from './xdr.ts';

export const RPC_VERSION = 2;
const CALL = 0;
const REPLY = 1;
const MSG_ACCEPTED = 0;
const MSG_DENIED = 1;
const RPC_MISMATCH = 0;
const AUTH_ERROR = 1;

export const AUTH_NONE = 0;
export const AUTH_SYS = 1;
/** RFC 5531: credentials and verifiers carry at most 400 bytes. */
const MAX_AUTH_BYTES = 400;
/** auth_stat AUTH_BADCRED: a flavor we do not take. */
const AUTH_BADCRED = 1;

export const ACCEPT = {
  SUCCESS: 0,
  PROG_UNAVAIL: 1,
  PROG_MISMATCH: 2,
  PROC_UNAVAIL: 3,
  GARBAGE_ARGS: 4,
  SYSTEM_ERR: 5,
} as const;
export type AcceptStat = (typeof ACCEPT)[keyof typeof ACCEPT];

export interface RpcCall {
  xid: number;
  prog: number;
  vers: number;
  proc: number;
  /** The procedure's arguments, still encoded (a view into the message). */
  args: Uint8Array;
}

export type DecodedCall =
  | { kind: 'call'; call: RpcCall }
  /** Answer `reply` and dispatch nothing (wrong RPC version, an unknown credential flavor). */
  | { kind: 'reject'; xid: number; reply: Buffer; reason: string }
  /** Not answerable: too short to hold a call header, or not a call at all. Drop it. */
  | { kind: 'drop'; reason: string };

/**
 * Decode a CALL message. AUTH_NONE and AUTH_SYS credentials are taken and ignored (DRAC admits
 * callers by source address); other flavors are refused with AUTH_ERROR. Never throws.
 */
export function decodeCall(msg: Uint8Array): DecodedCall {
  const r = new XdrReader(msg);
  const xid = r.uint32();
  const mtype = r.uint32();
  if (r.error() !== undefined) return { kind: 'drop', reason: `short message: ${r.error()}` };
  if (mtype !== CALL) return { kind: 'drop', reason: mtype === REPLY ? 'a reply, not a call' : `unknown message type ${mtype}` };
  const rpcvers = r.uint32();
  if (r.error() !== undefined) return { kind: 'drop', reason: `short call header: ${r.error()}` };
  if (rpcvers !== RPC_VERSION) {
    return { kind: 'reject', xid, reply: encodeRpcMismatch(xid), reason: `RPC version ${rpcvers}` };
  }
  const prog = r.uint32();
  const vers = r.uint32();
  const proc = r.uint32();
  const credFlavor = r.uint32();
  r.opaque(MAX_AUTH_BYTES);
  r.uint32(); // verifier flavor
  r.opaque(MAX_AUTH_BYTES);
  if (r.error() !== undefined) return { kind: 'drop', reason: `short call header: ${r.error()}` };
  if (credFlavor !== AUTH_NONE && credFlavor !== AUTH_SYS) {
    return { kind: 'reject', xid, reply: encodeAuthError(xid, AUTH_BADCRED), reason: `credential flavor ${credFlavor}` };
  }
  return { kind: 'call', call: { xid, prog, vers, proc, args: r.rest() } };
}

function acceptedHeader(xid: number, stat: AcceptStat, resultHint = 0): XdrWriter {
  return new XdrWriter(28 + resultHint)
    .uint32(xid)
    .uint32(REPLY)
    .uint32(MSG_ACCEPTED)
    .uint32(AUTH_NONE) // verifier: none
    .uint32(0)
    .uint32(stat);
}

/** MSG_ACCEPTED SUCCESS with the results `encode` writes. */
export function encodeSuccess(xid: number, encode?: (w: XdrWriter) => void): Buffer {
  const w = acceptedHeader(xid, ACCEPT.SUCCESS, 16);
  encode?.(w);
  return w.toBuffer();
}

/** MSG_ACCEPTED with PROG_UNAVAIL, PROC_UNAVAIL, GARBAGE_ARGS or SYSTEM_ERR. */
export function encodeAcceptError(xid: number, stat: Exclude<AcceptStat, 0 | 2>): Buffer {
  return acceptedHeader(xid, stat).toBuffer();
}

/** MSG_ACCEPTED PROG_MISMATCH: the versions of the program we serve. */
export function encodeProgMismatch(xid: number, low: number, high: number): Buffer {
  return acceptedHeader(xid, ACCEPT.PROG_MISMATCH).uint32(low).uint32(high).toBuffer();
}

/** MSG_DENIED RPC_MISMATCH: we speak RPC version 2 only. */
export function encodeRpcMismatch(xid: number): Buffer {
  return new XdrWriter(24).uint32(xid).uint32(REPLY).uint32(MSG_DENIED).uint32(RPC_MISMATCH).uint32(RPC_VERSION).uint32(RPC_VERSION).toBuffer();
}

export function encodeAuthError(xid: number, authStat: number): Buffer {
  return new XdrWriter(20).uint32(xid).uint32(REPLY).uint32(MSG_DENIED).uint32(AUTH_ERROR).uint32(authStat).toBuffer();
}

// ---- client side ----

/** A CALL with AUTH_NONE credentials and verifier. */
export function encodeCall(xid: number, prog: number, vers: number, proc: number, args?: Uint8Array): Buffer {
  const w = new XdrWriter(40 + (args?.byteLength ?? 0))
    .uint32(xid)
    .uint32(CALL)
    .uint32(RPC_VERSION)
    .uint32(prog)
    .uint32(vers)
    .uint32(proc)
    .uint32(AUTH_NONE)
    .uint32(0)
    .uint32(AUTH_NONE)
    .uint32(0);
  if (args) w.opaqueFixed(args);
  return w.toBuffer();
}

export type DecodedReply =
  | { kind: 'accepted'; xid: number; stat: AcceptStat; results: Uint8Array; low?: number; high?: number }
  | { kind: 'denied'; xid: number; reason: 'rpc_mismatch' | 'auth_error'; detail: number[] }
  | { kind: 'invalid'; reason: string };

export function decodeReply(msg: Uint8Array): DecodedReply {
  const r = new XdrReader(msg);
  const xid = r.uint32();
  const mtype = r.uint32();
  const replyStat = r.uint32();
  if (r.error() !== undefined) return { kind: 'invalid', reason: r.error() ?? '' };
  if (mtype !== REPLY) return { kind: 'invalid', reason: `message type ${mtype}` };
  if (replyStat === MSG_DENIED) {
    const rejectStat = r.uint32();
    const detail = rejectStat === RPC_MISMATCH ? [r.uint32(), r.uint32()] : [r.uint32()];
    if (r.error() !== undefined) return { kind: 'invalid', reason: r.error() ?? '' };
    return { kind: 'denied', xid, reason: rejectStat === RPC_MISMATCH ? 'rpc_mismatch' : 'auth_error', detail };
  }
  r.uint32();
  r.opaque(MAX_AUTH_BYTES);
  const stat = r.uint32();
  if (r.error() !== undefined) return { kind: 'invalid', reason: r.error() ?? '' };
  if (stat > ACCEPT.SYSTEM_ERR) return { kind: 'invalid', reason: `accept_stat ${stat}` };
  if (stat === ACCEPT.PROG_MISMATCH) {
    const low = r.uint32();
    const high = r.uint32();
    if (r.error() !== undefined) return { kind: 'invalid', reason: r.error() ?? '' };
    return { kind: 'accepted', xid, stat, results: new Uint8Array(0), low, high };
  }
  return { kind: 'accepted', xid, stat: stat as AcceptStat, results: r.rest() };
}

// ---- record marking (RFC 5531 section 11): a record is fragments, each with a 4-byte header
// whose top bit marks the last fragment and whose low 31 bits give its length ----

const LAST_FRAGMENT = 0x8000_0000;

/** One record of one fragment: what we send over TCP. */
export function encodeRecord(msg: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(4 + msg.byteLength);
  out.writeUInt32BE((LAST_FRAGMENT | msg.byteLength) >>> 0, 0);
  out.set(msg, 4);
  return out;
}

export type RecordPush = { records: Buffer[]; error?: undefined } | { records: Buffer[]; error: string };

/**
 * Reassembles records from a TCP byte stream. A record larger than `maxRecordBytes` (counting
 * its fragment headers, so endless empty fragments are bounded too) is an error: the caller
 * closes the connection, since the stream cannot be resynchronised.
 */
export class RecordReader {
  private readonly max: number;
  private pending: Buffer = Buffer.alloc(0);
  private fragments: Buffer[] = [];
  /** Bytes of the record being assembled, headers included. */
  private recordBytes = 0;
  private failed: string | undefined;

  constructor(maxRecordBytes: number) {
    this.max = maxRecordBytes;
  }

  push(chunk: Buffer): RecordPush {
    const records: Buffer[] = [];
    if (this.failed !== undefined) return { records, error: this.failed };
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    for (;;) {
      if (this.pending.length < 4) break;
      const header = this.pending.readUInt32BE(0);
      const length = header & 0x7fff_ffff;
      if (this.recordBytes + 4 + length > this.max) {
        this.failed = `record of at least ${this.recordBytes + 4 + length} bytes exceeds the limit of ${this.max}`;
        this.pending = Buffer.alloc(0);
        this.fragments = [];
        return { records, error: this.failed };
      }
      if (this.pending.length < 4 + length) break;
      this.fragments.push(this.pending.subarray(4, 4 + length));
      this.recordBytes += 4 + length;
      this.pending = this.pending.subarray(4 + length);
      if ((header & LAST_FRAGMENT) !== 0) {
        records.push(this.fragments.length === 1 ? Buffer.from(this.fragments[0] as Buffer) : Buffer.concat(this.fragments));
        this.fragments = [];
        this.recordBytes = 0;
      }
    }
    return { records };
  }
}
