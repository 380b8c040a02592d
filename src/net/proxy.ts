// The PROXY protocol (HAProxy's v1 text and v2 binary headers), read only from trusted proxies.
// Shared by every role that accepts client connections behind a load balancer.
import type net from 'node:net';
import { formatIp, ipOfBytes, isIpv4Text, parseIp } from './ip.ts';
import type { NetworkList } from './networks.ts';

export interface ClientEndpoint {
  address: string;
  port: number;
}

export type ProxyErrorReason = 'malformed' | 'missing' | 'oversized' | 'timeout' | 'closed' | 'untrusted' | 'checksum';

export class ProxyProtocolError extends Error {
  override readonly name = 'ProxyProtocolError';
  /** A short, bounded word for metrics labels and logs. */
  readonly reason: ProxyErrorReason;
  constructor(message: string, reason: ProxyErrorReason = 'malformed') {
    super(message);
    this.reason = reason;
  }
}

export interface ProxyAcceptOptions {
  trustedProxies: NetworkList;
  timeoutMs: number;
}

export type ProxyParseResult =
  | { kind: 'incomplete' }
  | { kind: 'done'; client: ClientEndpoint | null; length: number };

/** v1: "PROXY " ... CRLF, at most 107 bytes including the CRLF. */
export const V1_MAX_LENGTH = 107;
/** v2: 16 fixed bytes + addresses + TLVs. The spec allows 64 KiB; real proxies send < 1 KiB. */
export const V2_MAX_PAYLOAD = 4096;

const V1_PREFIX = Buffer.from('PROXY ', 'latin1');
const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const PP2_TYPE_CRC32C = 0x03;

/** True when `buf` is shorter than `sig` and a prefix of it (more bytes might still match). */
function isPrefixOf(buf: Buffer, sig: Buffer): boolean {
  return buf.length < sig.length && buf.equals(sig.subarray(0, buf.length));
}

/** The canonical address of a v1 TCP4 (dotted quad) or TCP6 (IPv6 text) field, else undefined. */
function v1Address(text: string, family: 4 | 6): string | undefined {
  if (family === 4) return isIpv4Text(text) ? text : undefined;
  const ip = text.includes(':') ? parseIp(text) : undefined;
  // An IPv4-mapped IPv6 address comes back as dotted IPv4.
  return ip && formatIp(ip);
}

function parsePort(text: string): number {
  if (!/^(0|[1-9]\d{0,4})$/.test(text) || Number(text) > 65535) {
    throw new ProxyProtocolError(`PROXY v1: bad port ${JSON.stringify(text)}`);
  }
  return Number(text);
}

function parseV1(buf: Buffer): ProxyParseResult {
  const limit = Math.min(buf.length, V1_MAX_LENGTH);
  const cr = buf.subarray(0, limit).indexOf('\r\n', 0, 'latin1');
  if (cr === -1) {
    if (buf.length >= V1_MAX_LENGTH) throw new ProxyProtocolError(`PROXY v1 line longer than ${V1_MAX_LENGTH} bytes`, 'oversized');
    // A lone LF, NUL or other control byte can never become a valid header.
    for (let i = 0; i < buf.length; i++) {
      const c = buf[i] as number;
      if (c < 0x20 && c !== 0x0d) throw new ProxyProtocolError('PROXY v1: control character in header');
      if (c === 0x0d && i !== buf.length - 1) throw new ProxyProtocolError('PROXY v1: CR without LF');
    }
    return { kind: 'incomplete' };
  }
  const line = buf.subarray(0, cr).toString('latin1');
  const length = cr + 2;
  if (!/^[\x20-\x7e]*$/.test(line)) throw new ProxyProtocolError('PROXY v1: non-printable character in header');
  const parts = line.split(' ');
  const proto = parts[1];
  if (proto === 'UNKNOWN') return { kind: 'done', client: null, length };
  if (proto !== 'TCP4' && proto !== 'TCP6') {
    throw new ProxyProtocolError(`PROXY v1: unknown protocol ${JSON.stringify(proto ?? '')}`);
  }
  if (parts.length !== 6) throw new ProxyProtocolError('PROXY v1: expected "PROXY TCP4|TCP6 src dst sport dport"');
  const [, , src, dst, sport, dport] = parts as [string, string, string, string, string, string];
  const family = proto === 'TCP4' ? 4 : 6;
  const address = v1Address(src, family);
  if (address === undefined || v1Address(dst, family) === undefined) {
    throw new ProxyProtocolError(`PROXY v1: addresses are not ${proto} addresses`);
  }
  parsePort(dport);
  const port = parsePort(sport);
  return { kind: 'done', client: { address, port }, length };
}

function parseV2(buf: Buffer): ProxyParseResult {
  if (buf.length < 16) return { kind: 'incomplete' };
  const verCmd = buf[12] as number;
  const famProto = buf[13] as number;
  const payload = buf.readUInt16BE(14);
  if (verCmd >> 4 !== 2) throw new ProxyProtocolError(`PROXY v2: unsupported version ${verCmd >> 4}`);
  const command = verCmd & 0x0f;
  if (command !== 0 && command !== 1) throw new ProxyProtocolError(`PROXY v2: unknown command ${command}`);
  if (payload > V2_MAX_PAYLOAD) throw new ProxyProtocolError(`PROXY v2: header of ${payload} bytes exceeds ${V2_MAX_PAYLOAD}`, 'oversized');
  const length = 16 + payload;
  if (buf.length < length) return { kind: 'incomplete' };
  const body = buf.subarray(16, length);

  const family = famProto >> 4;
  const transport = famProto & 0x0f;
  const addrLength = family === 1 ? 12 : family === 2 ? 36 : family === 3 ? 216 : 0;
  if (family > 3 || transport > 2) throw new ProxyProtocolError(`PROXY v2: unknown family/protocol 0x${famProto.toString(16)}`);
  if (body.length < addrLength) throw new ProxyProtocolError('PROXY v2: address block shorter than its family requires');
  checkTlvs(buf.subarray(0, length), 16 + addrLength);

  // LOCAL: the proxy speaking for itself (health checks). Never a client address to grant.
  if (command === 0) return { kind: 'done', client: null, length };
  // Only TCP over IPv4/IPv6 identifies a client we could grant; UNSPEC, UDP and UNIX do not.
  if (transport !== 1 || (family !== 1 && family !== 2)) return { kind: 'done', client: null, length };
  if (family === 1) {
    const address = `${body[0]}.${body[1]}.${body[2]}.${body[3]}`;
    return { kind: 'done', client: { address, port: body.readUInt16BE(8) }, length };
  }
  // An IPv4-mapped IPv6 address comes back as dotted IPv4.
  const address = formatIp(ipOfBytes(body.subarray(0, 16)));
  return { kind: 'done', client: { address, port: body.readUInt16BE(32) }, length };
}

/** TLVs must tile the rest of the header exactly; a CRC32C TLV, when present, must match. */
function checkTlvs(header: Buffer, start: number): void {
  let at = start;
  while (at < header.length) {
    if (header.length - at < 3) throw new ProxyProtocolError('PROXY v2: truncated TLV');
    const type = header[at] as number;
    const len = header.readUInt16BE(at + 1);
    if (at + 3 + len > header.length) throw new ProxyProtocolError('PROXY v2: TLV runs past the header');
    if (type === PP2_TYPE_CRC32C) {
      if (len !== 4) throw new ProxyProtocolError('PROXY v2: CRC32C TLV must be 4 bytes');
      const expected = header.readUInt32BE(at + 3);
      const copy = Buffer.from(header);
      copy.fill(0, at + 3, at + 7);
      if (crc32c(copy) !== expected) throw new ProxyProtocolError('PROXY v2: CRC32C mismatch', 'checksum');
    }
    at += 3 + len;
  }
}

let crcTable: Uint32Array | undefined;
/** CRC-32C (Castagnoli), as the PROXY v2 spec's PP2_TYPE_CRC32C uses. */
export function crc32c(data: Uint8Array): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let crc = 0xffffffff;
  for (const byte of data) crc = (crcTable[(crc ^ byte) & 0xff] as number) ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/**
 * Parse a PROXY v1 or v2 header at the start of `buf`. `incomplete` means more bytes are
 * needed; `done` gives the client (null for UNKNOWN / LOCAL / non-TCP families: such a
 * connection must never be granted) and how many bytes the header took. Throws
 * ProxyProtocolError when the bytes cannot be (the start of) a valid header.
 */
export function parseProxyHeader(buf: Buffer): ProxyParseResult {
  if (buf.length === 0) return { kind: 'incomplete' };
  if (buf[0] === 0x50 /* P */) {
    if (isPrefixOf(buf, V1_PREFIX)) return { kind: 'incomplete' };
    if (buf.subarray(0, V1_PREFIX.length).equals(V1_PREFIX)) return parseV1(buf);
  } else if (buf[0] === 0x0d) {
    if (isPrefixOf(buf, V2_SIGNATURE)) return { kind: 'incomplete' };
    if (buf.subarray(0, V2_SIGNATURE.length).equals(V2_SIGNATURE)) return parseV2(buf);
  }
  throw new ProxyProtocolError('expected a PROXY protocol header from the trusted proxy', 'missing');
}

/**
 * Read a PROXY v1 or v2 header from a socket whose peer is in `trustedProxies`. Resolves with
 * the real client (null: never grant) and the bytes that followed the header, which the caller
 * unshifts. The socket is left paused. Rejects with ProxyProtocolError on a malformed, missing
 * or oversized header, on timeout, or when the connection ends first. Peers outside
 * `trustedProxies` must not be passed here; if one is, it is refused.
 */
export function readProxyHeader(
  socket: net.Socket,
  opts: ProxyAcceptOptions,
): Promise<{ client: ClientEndpoint | null; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    const peer = socket.remoteAddress;
    if (peer === undefined || !opts.trustedProxies.contains(peer)) {
      reject(new ProxyProtocolError(`peer ${peer ?? '(unknown)'} is not a trusted proxy`, 'untrusted'));
      return;
    }
    let buffered: Buffer = Buffer.alloc(0);
    const finish = (err: ProxyProtocolError | undefined, value?: { client: ClientEndpoint | null; rest: Buffer }) => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
      socket.off('error', onError);
      socket.pause();
      if (err) reject(err);
      else resolve(value as { client: ClientEndpoint | null; rest: Buffer });
    };
    const onData = (chunk: Buffer) => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      let result: ProxyParseResult;
      try {
        result = parseProxyHeader(buffered);
      } catch (err) {
        finish(err instanceof ProxyProtocolError ? err : new ProxyProtocolError(String(err)));
        return;
      }
      if (result.kind === 'done') {
        finish(undefined, { client: result.client, rest: buffered.subarray(result.length) });
      }
    };
    const onEnd = () => finish(new ProxyProtocolError('connection closed before the PROXY header was complete', 'closed'));
    const onError = (err: Error) => finish(new ProxyProtocolError(`connection error while reading the PROXY header: ${err.message}`, 'closed'));
    const timer = setTimeout(
      () => finish(new ProxyProtocolError(`no complete PROXY header within ${opts.timeoutMs} ms`, 'timeout')),
      opts.timeoutMs,
    );
    socket.on('data', onData);
    socket.on('end', onEnd);
    socket.on('close', onEnd);
    socket.on('error', onError);
    socket.resume();
  });
}
