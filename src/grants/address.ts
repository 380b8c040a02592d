// Which RelayGrant object belongs to a client address: its grant key (the address, or the IPv6
// prefix it is aggregated to), the object name, the inverse of that name, and what may never be
// granted. Parsing and formatting addresses is net/ip.ts's.
import {
  AddressError,
  covers,
  formatIp,
  fullLength,
  ipOfBytes,
  isClientAddress,
  isIpv4Text,
  nonClientReason,
  parseIp,
  prefixOf,
  type IpFamily,
  type IpPrefix,
  type NonClientReason,
} from '../net/ip.ts';

const HEX = '0123456789abcdef';
const BYTE_HEX = Array.from({ length: 256 }, (_, b) => (HEX[b >> 4] as string) + (HEX[b & 15] as string));

/** Lowercase hex of the bytes (an IPv6 address's 32 digits in its grant name). */
function hexOf(bytes: Uint8Array): string {
  let hex = '';
  for (const b of bytes) hex += BYTE_HEX[b] as string;
  return hex;
}

/**
 * Parse a grant address as stored in `spec.address`: a canonical IP, or a canonical CIDR whose
 * host bits are zero and whose length is shorter than a single address. Anything else is refused,
 * so that one address has exactly one spelling and one object name.
 */
export function parseGrantAddress(text: string): IpPrefix {
  const slash = text.indexOf('/');
  const ipText = slash === -1 ? text : text.slice(0, slash);
  const p = parseIp(ipText);
  if (!p || (ipText.includes(':') && p.family === 4)) {
    throw new AddressError(`not a canonical IP address: ${JSON.stringify(text)}`);
  }
  if (slash !== -1) {
    const lenText = text.slice(slash + 1);
    const max = fullLength(p.family);
    if (!/^(0|[1-9]\d{0,2})$/.test(lenText) || Number(lenText) >= max) {
      throw new AddressError(`prefix length must be 0 to ${max - 1}: ${JSON.stringify(text)}`);
    }
    p.prefixLength = Number(lenText);
  }
  const canonical = formatIp(prefixOf(p, p.prefixLength));
  if (canonical !== text) {
    throw new AddressError(`not canonical: ${JSON.stringify(text)} (write ${canonical}, host bits zero)`);
  }
  return p;
}

/** The object name of the grant for a prefix: `v4-<dotted quad>` or `v6-<32 hex digits>`, `-<len>` for a prefix. */
export function grantNameOf(p: IpPrefix): string {
  let body: string;
  if (p.family === 4) {
    body = `v4-${(p.bytes).join('.')}`;
  } else {
    body = `v6-${hexOf(p.bytes)}`;
  }
  return p.prefixLength === fullLength(p.family) ? body : `${body}-${p.prefixLength}`;
}

const NAME_RE = /^v(4)-(\d{1,3}(?:\.\d{1,3}){3})(?:-(\d{1,3}))?$|^v(6)-([0-9a-f]{32})(?:-(\d{1,3}))?$/;

/** Inverse of grantNameOf: the grant address a name stands for; throws AddressError. */
export function grantAddressOfName(name: string): string {
  const m = NAME_RE.exec(name);
  if (!m) throw new AddressError(`not a RelayGrant name: ${JSON.stringify(name)}`);
  let ip: string;
  let len: string | undefined;
  if (m[1]) {
    ip = m[2] as string;
    len = m[3];
  } else {
    const hex = m[5] as string;
    const bytes = new Uint8Array(16);
    for (let i = 0; i < 16; i++) bytes[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
    ip = formatIp(ipOfBytes(bytes));
    len = m[6];
  }
  const address = len === undefined ? ip : `${ip}/${len}`;
  const p = parseGrantAddress(address);
  if (grantNameOf(p) !== name) throw new AddressError(`not a canonical RelayGrant name: ${JSON.stringify(name)}`);
  return address;
}

export interface GrantKey {
  /** `spec.address`: canonical IP, or the aggregated IPv6 prefix. */
  address: string;
  /** `metadata.name`. */
  name: string;
}

/** Why an address may never be granted: no client could have it, or `proxy`: it is the trusted proxy's. */
export type NeverGrantedReason = NonClientReason | 'proxy';

/** The address a grant would be for is one that no grant may name, whoever asks. */
export class NeverGrantedError extends AddressError {
  readonly reason: NeverGrantedReason;
  constructor(address: string, reason: NeverGrantedReason) {
    super(
      reason === 'proxy'
        ? `never granted: ${address} is the address of the proxy that sent the PROXY header`
        : `never granted: ${address} is ${reason === 'unspecified' ? 'an unspecified' : `a ${reason}`} address`,
    );
    this.reason = reason;
  }
}

/**
 * The widest IPv6 prefix a grant may be for (the least `grants.ipv6PrefixLength` accepts); the
 * CRD refuses wider ones too.
 */
export const WIDEST_IPV6_PREFIX = 32;

/** Whether `p` is the IPv6 loopback address ::1. */
function isIpv6Loopback(p: IpPrefix): boolean {
  return p.family === 6 && p.bytes[15] === 1 && p.bytes.every((x, i) => i === 15 || x === 0);
}

export interface GrantKeyOptions {
  /** The connection's peer when a PROXY header named the client: never granted. */
  proxyPeer?: string;
}

/**
 * The grant a login from `clientIp` writes, and the one place that refuses what must never be
 * granted, so that every writer (POP3, the bridge's whoson, DRAC RPC and auth-policy) obeys it:
 * an address no client could have (nonClientReason), and a key that would cover the proxy the
 * header came through. Throws NeverGrantedError for those, AddressError for anything else wrong.
 * IPv6 clients are aggregated to `ipv6PrefixLength` (their privacy addresses change within the
 * /64), never wider than WIDEST_IPV6_PREFIX; the loopback ::1, whose /64 would cover ::, is
 * granted exactly, as IPv4 clients are.
 */
export function grantKeyFor(clientIp: string, ipv6PrefixLength: number, opts: GrantKeyOptions = {}): GrantKey {
  const ip = parseIp(clientIp);
  if (!ip) throw new AddressError(`not an IP address: ${JSON.stringify(clientIp)}`);
  const reason = nonClientReason(ip);
  if (reason !== undefined) throw new NeverGrantedError(formatIp(ip), reason);
  if (!Number.isInteger(ipv6PrefixLength) || ipv6PrefixLength < WIDEST_IPV6_PREFIX || ipv6PrefixLength > 128) {
    throw new AddressError(`IPv6 prefix length must be ${WIDEST_IPV6_PREFIX} to 128, got ${ipv6PrefixLength}`);
  }
  const p = ip.family === 6 && ipv6PrefixLength < 128 && !isIpv6Loopback(ip) ? prefixOf(ip, ipv6PrefixLength) : ip;
  if (opts.proxyPeer !== undefined) {
    const peer = parseIp(opts.proxyPeer);
    if (peer === undefined || covers(p, peer)) throw new NeverGrantedError(formatIp(p), 'proxy');
  }
  return { address: formatIp(p), name: grantNameOf(p) };
}

/**
 * The grant names that could cover one client IP, computed for the hot path of every RCPT: the
 * exact name at once, a prefix's name on demand. Text the strict parser takes as IPv4 is already
 * canonical, so only IPv4-mapped and IPv6 addresses need formatting (IPv6 once, as 32 hex digits).
 */
export class ClientGrantNames {
  readonly family: IpFamily;
  readonly exact: string;
  private readonly ip: IpPrefix;
  private readonly hex: string;

  private constructor(exact: string, ip: IpPrefix, hex: string) {
    this.family = ip.family;
    this.exact = exact;
    this.ip = ip;
    this.hex = hex;
  }

  /** The names for client `ip`; undefined when it is no address, or one never granted (no grant covers it). */
  static of(text: string): ClientGrantNames | undefined {
    const ip = parseIp(text);
    if (!ip || !isClientAddress(ip)) return undefined;
    if (ip.family === 4) return new ClientGrantNames(`v4-${isIpv4Text(text) ? text : formatIp(ip)}`, ip, '');
    const hex = hexOf(ip.bytes);
    return new ClientGrantNames(`v6-${hex}`, ip, hex);
  }

  /** The name of the grant for this address's prefix of length `len`. */
  prefixName(len: number): string {
    if (this.family === 4) return grantNameOf(prefixOf(this.ip, len));
    if (len === 128) return this.exact; // the whole address: its name has no length suffix
    const whole = len >> 2;
    const rest = len & 3;
    let hex = this.hex.slice(0, whole);
    if (rest) hex += HEX[parseInt(this.hex[whole] as string, 16) & ((0xf << (4 - rest)) & 0xf)] as string;
    return `v6-${hex.padEnd(32, '0')}-${len}`;
  }
}
