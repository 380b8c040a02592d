// IP addresses as text and bytes: the one parser, formatter and prefix matcher. Everything that
// reads a client address (PROXY headers, trusted networks, grant names, the relay decision, the
// bridge's protocols) goes through here, so that they all agree on what an address is: strict
// dotted quads without leading zeros, IPv6 in any RFC 4291 form but without a zone id, and an
// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is that IPv4 address. It sits on the ground floor
// (it imports nothing) so that net/, grants/ and bridge/ can all use it.

export type IpFamily = 4 | 6;

export class AddressError extends Error {
  override readonly name: string = 'AddressError';
}

/** A parsed IP address or prefix: 4 or 16 bytes, and the prefix length (32/128 for one address). */
export interface IpPrefix {
  family: IpFamily;
  bytes: Uint8Array;
  prefixLength: number;
}

/** The prefix length of a single address of the family. */
export function fullLength(family: IpFamily): number {
  return family === 4 ? 32 : 128;
}

/**
 * Scan a dotted quad from `from` to the end of `text`, writing its bytes to `out` when given.
 * One scanner serves both: the check of canonical IPv4 text on the hot path allocates nothing.
 */
function scanIpv4(text: string, from: number, out?: Uint8Array): boolean {
  let part = 0;
  let digits = 0;
  let index = 0;
  for (let i = from; i <= text.length; i++) {
    const c = i < text.length ? text.charCodeAt(i) : 46; /* '.' terminates the last part */
    if (c >= 48 && c <= 57) {
      // No leading zeros: `010.0.0.1` is octal to some parsers and decimal to others.
      if (digits === 1 && part === 0) return false;
      part = part * 10 + (c - 48);
      if (++digits > 3 || part > 255) return false;
    } else if (c === 46) {
      if (digits === 0 || index > 3) return false;
      if (out) out[index] = part;
      index++;
      part = 0;
      digits = 0;
    } else {
      return false;
    }
  }
  return index === 4;
}

/**
 * Whether `text` is an IPv4 address as parseIp accepts it. Such text is already canonical (there
 * is one spelling of each dotted quad without leading zeros), so callers may use it as it is.
 */
export function isIpv4Text(text: string): boolean {
  return scanIpv4(text, 0);
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
      if (!scanIpv4(text, start, v4)) return undefined;
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
 * The address of 4 or 16 raw bytes (PROXY v2, DRAC RPC). 16 bytes of IPv4-mapped IPv6 are the
 * IPv4 address, as in parseIp.
 */
export function ipOfBytes(bytes: Uint8Array): IpPrefix {
  if (bytes.length === 4) return { family: 4, bytes: bytes.slice(), prefixLength: 32 };
  if (bytes.length !== 16) throw new AddressError(`an IP address has 4 or 16 bytes, not ${bytes.length}`);
  if (isIpv4Mapped(bytes)) return { family: 4, bytes: bytes.slice(12), prefixLength: 32 };
  return { family: 6, bytes: bytes.slice(), prefixLength: 128 };
}

/** IPv6 text as its 16 bytes, IPv4-mapped or not; IPv4 text as 4 bytes. */
function parseIpAsWritten(text: string): IpPrefix | undefined {
  if (text.includes(':')) {
    const bytes = parseIpv6(text);
    return bytes && { family: 6, bytes, prefixLength: 128 };
  }
  const bytes = new Uint8Array(4);
  return scanIpv4(text, 0, bytes) ? { family: 4, bytes, prefixLength: 32 } : undefined;
}

/** Whether `text` starts with `::ffff:`, in either case. */
function isMappedPrefix(text: string): boolean {
  if (text.charCodeAt(0) !== 58 || text.charCodeAt(1) !== 58 || text.charCodeAt(6) !== 58) return false;
  for (let i = 2; i < 6; i++) if ((text.charCodeAt(i) | 0x20) !== 102 /* f */) return false;
  return true;
}

/**
 * Parse an IP address strictly: dotted-quad IPv4 without leading zeros, or IPv6 in any RFC 4291
 * text form. Zone ids (`fe80::1%eth0`) are refused: a zone is not an address. IPv4-mapped IPv6
 * (`::ffff:a.b.c.d`, `::ffff:a01:203`) is the IPv4 address: a dual-stack socket reports IPv4
 * clients that way.
 */
export function parseIp(text: string): IpPrefix | undefined {
  // A dual-stack socket's spelling of an IPv4 client first: it is the common case on every RCPT.
  if (text.length > 7 && isMappedPrefix(text)) {
    const bytes = new Uint8Array(4);
    if (scanIpv4(text, 7, bytes)) return { family: 4, bytes, prefixLength: 32 };
  }
  const p = parseIpAsWritten(text);
  return p && p.family === 6 && isIpv4Mapped(p.bytes) ? { family: 4, bytes: p.bytes.slice(12), prefixLength: 32 } : p;
}

/** The dotted IPv4 address inside IPv4-mapped IPv6 text (`::ffff:10.1.2.3`), else undefined. */
export function unmapIpv4(text: string): string | undefined {
  if (!text.includes(':')) return undefined;
  const p = parseIp(text);
  return p?.family === 4 ? formatIp(p) : undefined;
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

/** Canonical text: dotted quad, or RFC 5952 IPv6; `/<length>` for a prefix shorter than one address. */
export function formatIp(p: IpPrefix): string {
  const b = p.bytes;
  const ip = p.family === 4 ? `${b[0]}.${b[1]}.${b[2]}.${b[3]}` : formatIpv6(b);
  return p.prefixLength === fullLength(p.family) ? ip : `${ip}/${p.prefixLength}`;
}

/** Canonical text of a client IP (IPv4-mapped -> IPv4, IPv6 per RFC 5952); throws AddressError. */
export function canonicalIp(text: string): string {
  // Text the strict parser takes as IPv4 is canonical already: spared a parse and a format.
  if (isIpv4Text(text)) return text;
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
 * Whether prefix `outer` covers address or prefix `inner`. Families never mix: an IPv4 address
 * (however it was written) is covered only by IPv4 prefixes.
 */
export function covers(outer: IpPrefix, inner: IpPrefix): boolean {
  if (outer.family !== inner.family || outer.prefixLength > inner.prefixLength) return false;
  const full = outer.prefixLength >> 3;
  for (let i = 0; i < full; i++) if (outer.bytes[i] !== inner.bytes[i]) return false;
  const rest = outer.prefixLength & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return (((outer.bytes[full] as number) ^ (inner.bytes[full] as number)) & mask) === 0;
}

/**
 * Parse `10.0.0.0/8`, `2001:db8::/32` or a single address. Host bits may be set (they are
 * cleared); the length is 1-3 decimal digits, at most the family's. An IPv4-mapped IPv6 prefix
 * of length 96 or more (`::ffff:10.0.0.0/104`) is the IPv4 prefix it denotes (`10.0.0.0/8`); a
 * shorter one stays IPv6.
 */
export function parseCidr(text: string): IpPrefix | undefined {
  const slash = text.indexOf('/');
  const p = parseIpAsWritten(slash === -1 ? text : text.slice(0, slash));
  if (!p) return undefined;
  let len = p.prefixLength;
  if (slash !== -1) {
    const lenText = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(lenText) || Number(lenText) > len) return undefined;
    len = Number(lenText);
  }
  if (p.family === 6 && len >= 96 && isIpv4Mapped(p.bytes)) return prefixOf({ family: 4, bytes: p.bytes.slice(12), prefixLength: 32 }, len - 96);
  return prefixOf(p, len);
}

/** Why no client could connect from an address (see nonClientReason). */
export type NonClientReason = 'unspecified' | 'broadcast' | 'multicast' | 'reserved';

/**
 * Why no client could be at address `p`, so that trusting or granting it would be a mistake or an
 * attack (a PROXY header naming `0.0.0.0`, `255.255.255.255` or a multicast group): IPv4 0.0.0.0/8
 * ("this network", 0.0.0.0 unspecified), 224.0.0.0/4 multicast, 240.0.0.0/4 reserved (and
 * 255.255.255.255 broadcast); IPv6 ff00::/8 multicast, and ::/96 but ::1 (:: unspecified, the
 * deprecated IPv4-compatible addresses). IPv4-mapped IPv6 is IPv4 here (parseIp). The CRD's CEL
 * refuses the same ranges (crds/relaygrants.kubedrac.io.yaml): change both together.
 */
export function nonClientReason(p: IpPrefix): NonClientReason | undefined {
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

/** Whether a client could ever connect from this address: not unspecified, multicast, broadcast or reserved. */
export function isClientAddress(p: IpPrefix): boolean {
  return nonClientReason(p) === undefined;
}
