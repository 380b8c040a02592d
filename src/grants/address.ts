// The one place that knows what a client address is, how it is canonicalized, and which grant
// object name belongs to it. Every role imports this; nothing else parses or names addresses.

export type IpFamily = 4 | 6;

export class AddressError extends Error {
  override readonly name = 'AddressError';
}

/** A parsed IP address or prefix: 4 or 16 bytes, and the prefix length (32/128 for one address). */
export interface IpPrefix {
  family: IpFamily;
  bytes: Uint8Array;
  prefixLength: number;
}

const HEX = '0123456789abcdef';
const BYTE_HEX = Array.from({ length: 256 }, (_, b) => (HEX[b >> 4] as string) + (HEX[b & 15] as string));

/** Lowercase hex of the bytes (an IPv6 address's 32 digits in its grant name). */
function hexOf(bytes: Uint8Array): string {
  let hex = '';
  for (const b of bytes) hex += BYTE_HEX[b] as string;
  return hex;
}

function parseIpv4Into(text: string, out: Uint8Array, offset: number): boolean {
  let part = 0;
  let digits = 0;
  let index = 0;
  for (let i = 0; i <= text.length; i++) {
    const c = i < text.length ? text.charCodeAt(i) : 46; /* '.' terminates the last part */
    if (c >= 48 && c <= 57) {
      // No leading zeros: `010.0.0.1` is octal to some parsers and decimal to others.
      if (digits === 1 && part === 0) return false;
      part = part * 10 + (c - 48);
      if (++digits > 3 || part > 255) return false;
    } else if (c === 46) {
      if (digits === 0 || index > 3) return false;
      out[offset + index++] = part;
      part = 0;
      digits = 0;
    } else {
      return false;
    }
  }
  return index === 4;
}

/** IPv6 text -> 16 bytes, in one pass (lookups parse a client address on every RCPT). */
function parseIpv6(text: string): Uint8Array | undefined {
  const n = text.length;
  if (n < 2 || n > 45) return undefined;
  const words = new Uint16Array(8);
  let count = 0; // words written
  let gap = -1; // word index where `::` stands
  let i = 0;
  if (text.charCodeAt(0) === 58 /* : */) {
    if (text.charCodeAt(1) !== 58) return undefined;
    gap = 0;
    i = 2;
    if (i === n) return new Uint8Array(16);
  }
  while (i < n) {
    if (count === 8) return undefined;
    // One group of 1-4 hex digits, or a trailing dotted quad.
    let value = 0;
    let digits = 0;
    const start = i;
    for (; i < n; i++) {
      const c = text.charCodeAt(i);
      let d: number;
      if (c >= 48 && c <= 57) d = c - 48;
      else if (c >= 97 && c <= 102) d = c - 87;
      else if (c >= 65 && c <= 70) d = c - 55;
      else break;
      if (++digits > 4) return undefined;
      value = value * 16 + d;
    }
    if (i < n && text.charCodeAt(i) === 46 /* . */) {
      if (count > 6) return undefined;
      const v4 = new Uint8Array(4);
      if (!parseIpv4Into(text.slice(start), v4, 0)) return undefined;
      words[count++] = ((v4[0] as number) << 8) | (v4[1] as number);
      words[count++] = ((v4[2] as number) << 8) | (v4[3] as number);
      break;
    }
    if (digits === 0) return undefined;
    words[count++] = value;
    if (i === n) break;
    if (text.charCodeAt(i) !== 58) return undefined;
    i++;
    if (i < n && text.charCodeAt(i) === 58) {
      if (gap !== -1) return undefined;
      gap = count;
      i++;
    } else if (i === n) {
      return undefined; // a single trailing colon
    }
  }
  if (gap === -1 ? count !== 8 : count > 7) return undefined;
  const bytes = new Uint8Array(16);
  const tail = gap === -1 ? 0 : count - gap;
  for (let w = 0; w < count; w++) {
    const at = gap !== -1 && w >= gap ? 8 - tail + (w - gap) : w;
    bytes[at * 2] = (words[w] as number) >> 8;
    bytes[at * 2 + 1] = (words[w] as number) & 0xff;
  }
  return bytes;
}

function isIpv4Mapped(b: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return false;
  return b[10] === 0xff && b[11] === 0xff;
}

/**
 * Parse an IP address strictly: dotted-quad IPv4 without leading zeros, or IPv6 in any RFC 4291
 * text form. Zone ids (`fe80::1%eth0`) are refused: a zone is not an address. IPv4-mapped IPv6
 * (`::ffff:a.b.c.d`) is the IPv4 address: a dual-stack socket reports IPv4 clients that way.
 */
export function parseIp(text: string): IpPrefix | undefined {
  if (text.includes(':')) {
    const bytes = parseIpv6(text);
    if (!bytes) return undefined;
    if (isIpv4Mapped(bytes)) return { family: 4, bytes: bytes.slice(12), prefixLength: 32 };
    return { family: 6, bytes, prefixLength: 128 };
  }
  const bytes = new Uint8Array(4);
  return parseIpv4Into(text, bytes, 0) ? { family: 4, bytes, prefixLength: 32 } : undefined;
}

/** RFC 5952 text: lowercase, no leading zeros, the longest run (>= 2) of zero groups as `::`. */
function formatIpv6(b: Uint8Array): string {
  const words: number[] = [];
  for (let i = 0; i < 16; i += 2) words.push(((b[i] as number) << 8) | (b[i + 1] as number));
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (w: number) => w.toString(16);
  if (bestStart === -1) return words.map(hex).join(':');
  return `${words.slice(0, bestStart).map(hex).join(':')}::${words.slice(bestStart + bestLen).map(hex).join(':')}`;
}

export function formatIp(p: IpPrefix): string {
  const ip = p.family === 4 ? (p.bytes).join('.') : formatIpv6(p.bytes);
  return p.prefixLength === (p.family === 4 ? 32 : 128) ? ip : `${ip}/${p.prefixLength}`;
}

/** Canonical text of a client IP (IPv4-mapped -> IPv4, IPv6 per RFC 5952); throws AddressError. */
export function canonicalIp(text: string): string {
  const p = parseIp(text);
  if (!p) throw new AddressError(`not an IP address: ${JSON.stringify(text)}`);
  return formatIp(p);
}

function maskInPlace(bytes: Uint8Array, prefixLength: number): void {
  for (let i = 0; i < bytes.length; i++) {
    const keep = Math.max(0, Math.min(8, prefixLength - i * 8));
    bytes[i] = (bytes[i] as number) & ((0xff << (8 - keep)) & 0xff);
  }
}

/** The prefix of `ip` of length `prefixLength` (the network address with its length). */
export function prefixOf(ip: IpPrefix, prefixLength: number): IpPrefix {
  const bytes = ip.bytes.slice();
  maskInPlace(bytes, prefixLength);
  return { family: ip.family, bytes, prefixLength };
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
    const max = p.family === 4 ? 32 : 128;
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
  return p.prefixLength === (p.family === 4 ? 32 : 128) ? body : `${body}-${p.prefixLength}`;
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
    const groups: string[] = [];
    for (let i = 0; i < 32; i += 4) groups.push(hex.slice(i, i + 4));
    ip = canonicalIp(groups.join(':'));
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

/** Why an address may never be granted (see neverGrantedReason); `proxy`: it is the trusted proxy's. */
export type NeverGrantedReason = 'unspecified' | 'broadcast' | 'multicast' | 'reserved' | 'proxy';

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

/**
 * Why no client could be at address `p`, so that a grant for it would be a mistake or an attack
 * (a PROXY header naming `0.0.0.0`, `255.255.255.255` or a multicast group): IPv4 0.0.0.0/8
 * ("this network", 0.0.0.0 unspecified), 224.0.0.0/4 multicast, 240.0.0.0/4 reserved (and
 * 255.255.255.255 broadcast); IPv6 ff00::/8 multicast, and ::/96 but ::1 (:: unspecified, the
 * deprecated IPv4-compatible addresses). IPv4-mapped IPv6 is IPv4 here (parseIp). The CRD's CEL
 * refuses the same ranges (crds/relaygrants.kubedrac.io.yaml): change both together.
 */
export function neverGrantedReason(p: IpPrefix): NeverGrantedReason | undefined {
  const b = p.bytes;
  const first = b[0] as number;
  if (p.family === 4) {
    if (first === 0) return b[1] === 0 && b[2] === 0 && b[3] === 0 ? 'unspecified' : 'reserved';
    if (first < 224) return undefined;
    if (first < 240) return 'multicast';
    return b[1] === 255 && b[2] === 255 && b[3] === 255 && first === 255 ? 'broadcast' : 'reserved';
  }
  if (first === 0xff) return 'multicast';
  for (let i = 0; i < 12; i++) if (b[i] !== 0) return undefined;
  if (b[12] === 0 && b[13] === 0 && b[14] === 0) return b[15] === 0 ? 'unspecified' : b[15] === 1 ? undefined : 'reserved';
  return 'reserved';
}

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
 * an address no client could have (neverGrantedReason), and a key that would cover the proxy the
 * header came through. Throws NeverGrantedError for those, AddressError for anything else wrong.
 * IPv6 clients are aggregated to `ipv6PrefixLength` (their privacy addresses change within the
 * /64), never wider than WIDEST_IPV6_PREFIX; the loopback ::1, whose /64 would cover ::, is
 * granted exactly, as IPv4 clients are.
 */
export function grantKeyFor(clientIp: string, ipv6PrefixLength: number, opts: GrantKeyOptions = {}): GrantKey {
  const ip = parseIp(clientIp);
  if (!ip) throw new AddressError(`not an IP address: ${JSON.stringify(clientIp)}`);
  const reason = neverGrantedReason(ip);
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

/** Whether prefix `outer` covers address or prefix `inner`. */
export function covers(outer: IpPrefix, inner: IpPrefix): boolean {
  if (outer.family !== inner.family || outer.prefixLength > inner.prefixLength) return false;
  const masked = prefixOf(inner, outer.prefixLength);
  for (let i = 0; i < outer.bytes.length; i++) if (masked.bytes[i] !== outer.bytes[i]) return false;
  return true;
}

/** True when `text` is an IPv4 address in canonical form (checked without allocating). */
function isCanonicalIpv4(text: string, from: number): boolean {
  let parts = 0;
  let digits = 0;
  let value = 0;
  for (let i = from; i <= text.length; i++) {
    const c = i < text.length ? text.charCodeAt(i) : 46;
    if (c >= 48 && c <= 57) {
      if (digits === 1 && value === 0) return false;
      value = value * 10 + (c - 48);
      if (++digits > 3 || value > 255) return false;
    } else if (c === 46) {
      if (digits === 0 || ++parts > 4) return false;
      digits = 0;
      value = 0;
    } else {
      return false;
    }
  }
  return parts === 4;
}

/**
 * neverGrantedReason for canonical IPv4 text, from its first octet alone (the hot path of every
 * RCPT): all of 0.0.0.0/8 and 224.0.0.0/3 are never granted.
 */
function grantableIpv4(text: string): boolean {
  let first = 0;
  for (let i = 0, c = text.charCodeAt(0); c !== 46; c = text.charCodeAt(++i)) first = first * 10 + (c - 48);
  return first !== 0 && first < 224;
}

/**
 * The grant names that could cover one client IP, computed for the hot path of every RCPT: the
 * exact name at once, a prefix's name on demand. Text a strict parser accepts as IPv4 is already
 * canonical, so only IPv6 needs formatting (once, as 32 hex digits).
 */
export class ClientGrantNames {
  readonly family: IpFamily;
  readonly exact: string;
  private readonly text: string;
  private readonly hex: string;

  private constructor(family: IpFamily, exact: string, text: string, hex: string) {
    this.family = family;
    this.exact = exact;
    this.text = text;
    this.hex = hex;
  }

  /** The names for client `ip`; undefined when it is no address, or one never granted (no grant covers it). */
  static of(ip: string): ClientGrantNames | undefined {
    if (isCanonicalIpv4(ip, 0)) return grantableIpv4(ip) ? new ClientGrantNames(4, `v4-${ip}`, ip, '') : undefined;
    // Dual-stack sockets report IPv4 clients as ::ffff:a.b.c.d.
    if (ip.length > 7 && ip.charCodeAt(0) === 58 && /^::ffff:/i.test(ip) && isCanonicalIpv4(ip, 7)) {
      const v4 = ip.slice(7);
      return grantableIpv4(v4) ? new ClientGrantNames(4, `v4-${v4}`, v4, '') : undefined;
    }
    const parsed = parseIp(ip);
    if (!parsed || neverGrantedReason(parsed) !== undefined) return undefined;
    if (parsed.family === 4) {
      const v4 = formatIp(parsed);
      return new ClientGrantNames(4, `v4-${v4}`, v4, '');
    }
    const hex = hexOf(parsed.bytes);
    return new ClientGrantNames(6, `v6-${hex}`, '', hex);
  }

  /** The name of the grant for this address's prefix of length `len`. */
  prefixName(len: number): string {
    if (this.family === 4) return grantNameOf(prefixOf(parseIp(this.text) as IpPrefix, len));
    if (len === 128) return this.exact; // the whole address: its name has no length suffix
    const whole = len >> 2;
    const rest = len & 3;
    let hex = this.hex.slice(0, whole);
    if (rest) hex += HEX[parseInt(this.hex[whole] as string, 16) & ((0xf << (4 - rest)) & 0xf)] as string;
    return `v6-${hex.padEnd(32, '0')}-${len}`;
  }
}
