// CIDR membership for trusted proxies, trusted networks and deny lists, over node:net's BlockList.
import net from 'node:net';
import { ConfigError } from '../config/reader.ts';

const MAPPED_DOTTED = /^::ffff:(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})$/i;

/**
 * The IPv4 address inside an IPv4-mapped IPv6 address (`::ffff:10.1.2.3`, `::ffff:a01:203`,
 * `0:0:0:0:0:ffff:10.1.2.3`), else undefined. A dual-stack socket reports IPv4 peers this way.
 */
export function unmapIpv4(ip: string): string | undefined {
  if (!ip.includes(':')) return undefined;
  const dotted = MAPPED_DOTTED.exec(ip);
  if (dotted) return net.isIPv4(dotted[1] as string) ? (dotted[1]) : undefined;
  if (!net.isIPv6(ip)) return undefined;
  // Expand to 8 groups, then check for 0:0:0:0:0:ffff:x:y.
  const expanded = expandIpv6(ip);
  if (!expanded) return undefined;
  if (expanded.slice(0, 5).some((w) => w !== 0) || expanded[5] !== 0xffff) return undefined;
  const hi = expanded[6] as number;
  const lo = expanded[7] as number;
  return `${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`;
}

/** The 8 16-bit words of an IPv6 address (any valid text form), or undefined. */
export function expandIpv6(ip: string): number[] | undefined {
  if (!net.isIPv6(ip)) return undefined;
  let text = ip;
  // A trailing dotted quad (`::ffff:1.2.3.4`) becomes two hex groups.
  const lastColon = text.lastIndexOf(':');
  const tail = text.slice(lastColon + 1);
  if (tail.includes('.')) {
    const [a, b, c, d] = tail.split('.').map(Number) as [number, number, number, number];
    text = `${text.slice(0, lastColon + 1)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const parse = (s: string): number[] => (s === '' ? [] : s.split(':').map((g) => parseInt(g, 16)));
  const halves = text.split('::');
  const head = parse(halves[0] as string);
  if (halves.length === 1) return head.length === 8 ? head : undefined;
  const rest = parse(halves[1] as string);
  const missing = 8 - head.length - rest.length;
  if (missing < 1) return undefined;
  return [...head, ...new Array<number>(missing).fill(0), ...rest];
}

export class NetworkList {
  private readonly list: net.BlockList;
  readonly size: number;
  /** The entries as configured, for logs and messages. */
  readonly entries: readonly string[];

  private constructor(list: net.BlockList, entries: string[]) {
    this.list = list;
    this.entries = entries;
    this.size = entries.length;
  }

  static empty(): NetworkList {
    return new NetworkList(new net.BlockList(), []);
  }

  /**
   * Parse `10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7`, `::1`. An IPv4-mapped IPv6 entry
   * (`::ffff:10.0.0.0/104`) is stored as the IPv4 network it denotes. `key` names the config
   * key in errors, e.g. `pop3.trustedProxies`.
   */
  static parse(cidrs: readonly string[], key: string): NetworkList {
    const list = new net.BlockList();
    cidrs.forEach((entry, i) => {
      const fail = (why: string): never => {
        throw new ConfigError(`${key}[${i}]`, `${why}: expected an IP address or CIDR such as 10.0.0.0/8 or 2001:db8::/32, got ${JSON.stringify(entry)}`);
      };
      if (typeof entry !== 'string' || entry.trim() !== entry || entry === '') fail('not an address');
      const slash = entry.indexOf('/');
      const ip = slash === -1 ? entry : entry.slice(0, slash);
      let family = net.isIP(ip);
      if (family === 0) fail('not an IP address');
      let prefix = family === 4 ? 32 : 128;
      if (slash !== -1) {
        const lenText = entry.slice(slash + 1);
        if (!/^\d{1,3}$/.test(lenText) || Number(lenText) > prefix) fail('bad prefix length');
        prefix = Number(lenText);
      }
      let address = ip;
      const v4 = family === 6 ? unmapIpv4(ip) : undefined;
      if (v4 !== undefined && prefix >= 96) {
        address = v4;
        family = 4;
        prefix -= 96;
      }
      list.addSubnet(address, prefix, family === 4 ? 'ipv4' : 'ipv6');
    });
    return new NetworkList(list, [...cidrs]);
  }

  /** Whether `ip` lies in one of the networks; an IPv4-mapped IPv6 address counts as its IPv4 address. */
  contains(ip: string): boolean {
    if (this.size === 0) return false;
    const family = net.isIP(ip);
    if (family === 4) return this.list.check(ip, 'ipv4');
    if (family === 6) {
      const v4 = unmapIpv4(ip);
      if (v4 !== undefined) return this.list.check(v4, 'ipv4');
      return this.list.check(ip, 'ipv6');
    }
    return false;
  }
}
