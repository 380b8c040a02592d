// CIDR membership for trusted proxies, trusted networks and deny lists.
import { ConfigError } from '../config/reader.ts';
import { covers, parseCidr, parseIp, type IpPrefix } from './ip.ts';

/** ::ffff:0:0/96, the IPv4-mapped addresses, as the IPv6 range it is. */
const IPV4_MAPPED_RANGE: IpPrefix = { family: 6, bytes: new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]), prefixLength: 96 };
const EVERY_IPV4: IpPrefix = { family: 4, bytes: new Uint8Array(4), prefixLength: 0 };

export class NetworkList {
  private readonly networks: readonly IpPrefix[];
  readonly size: number;
  /** The entries as configured, for logs and messages. */
  readonly entries: readonly string[];

  private constructor(networks: IpPrefix[], entries: string[]) {
    this.networks = networks;
    this.entries = entries;
    this.size = entries.length;
  }

  static empty(): NetworkList {
    return new NetworkList([], []);
  }

  /**
   * Parse `10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7`, `::1` (parseCidr). An IPv4-mapped IPv6
   * entry (`::ffff:10.0.0.0/104`) is the IPv4 network it denotes, and an IPv6 entry that spans
   * all of ::ffff:0:0/96 (`::/64`) holds every IPv4 address, whose mapped form it covers (as
   * node's BlockList, which this list replaced, matched). `key` names the config key in errors,
   * e.g. `pop3.trustedProxies`.
   */
  static parse(cidrs: readonly string[], key: string): NetworkList {
    const networks: IpPrefix[] = [];
    cidrs.forEach((entry, i) => {
      const fail = (why: string): never => {
        throw new ConfigError(`${key}[${i}]`, `${why}: expected an IP address or CIDR such as 10.0.0.0/8 or 2001:db8::/32, got ${JSON.stringify(entry)}`);
      };
      if (typeof entry !== 'string' || entry.trim() !== entry || entry === '') fail('not an address');
      const slash = entry.indexOf('/');
      if (!parseIp(slash === -1 ? entry : entry.slice(0, slash))) fail('not an IP address');
      const network = parseCidr(entry) ?? fail('bad prefix length');
      networks.push(network);
      if (network.family === 6 && covers(network, IPV4_MAPPED_RANGE)) networks.push(EVERY_IPV4);
    });
    return new NetworkList(networks, [...cidrs]);
  }

  /** Whether `ip` lies in one of the networks; an IPv4-mapped IPv6 address counts as its IPv4 address. */
  contains(ip: string): boolean {
    if (this.size === 0) return false;
    const address = parseIp(ip);
    if (address === undefined) return false;
    for (const network of this.networks) if (covers(network, address)) return true;
    return false;
  }
}
