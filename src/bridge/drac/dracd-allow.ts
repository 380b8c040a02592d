// DRAC's `dracd.allow`: the login servers allowed to add addresses, one `netmask netaddr` line
// each (`255.255.255.0 192.0.2.0`), `#` comments, IPv4 only, as rpc.dracd read it. Mounted from a
// ConfigMap and reloaded on change; a file that does not parse keeps the last good version.
import { parseIp } from '../../net/ip.ts';
import { ConfigError } from '../../config/reader.ts';
import { ReloadedFile, type MountedFileOptions } from '../../config/reloaded-file.ts';
import { NetworkList } from '../../net/networks.ts';

function ipv4Bytes(text: string): Uint8Array | undefined {
  if (text.includes(':')) return undefined;
  return parseIp(text)?.bytes;
}

/** The prefix length of a contiguous netmask (`255.255.254.0` -> 23), or undefined. */
function prefixLengthOf(mask: Uint8Array): number | undefined {
  const value = (((mask[0] as number) << 24) | ((mask[1] as number) << 16) | ((mask[2] as number) << 8) | (mask[3] as number)) >>> 0;
  const inverted = ~value >>> 0;
  // Contiguous ones then zeros: the inverted mask plus one is a power of two.
  if ((inverted & (inverted + 1)) !== 0) return undefined;
  return 32 - Math.log2(inverted + 1);
}

/**
 * Parse the text of a dracd.allow file into CIDRs. Unlike rpc.dracd, which silently skipped what
 * it could not read, every bad line is a ConfigError naming `file:line`: a typo here would
 * otherwise lock a login server out (or, worse, go unnoticed).
 */
export function parseDracdAllow(text: string, file: string): string[] {
  const cidrs: string[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const where = `${file}:${i + 1}`;
    const hash = raw.indexOf('#');
    const line = (hash === -1 ? raw : raw.slice(0, hash)).trim();
    if (line === '') return;
    const fields = line.split(/\s+/);
    if (fields.length !== 2) {
      throw new ConfigError(where, `expected "netmask netaddr" such as "255.255.255.0 192.0.2.0", got ${JSON.stringify(line)}`);
    }
    const [maskText, addrText] = fields as [string, string];
    const mask = ipv4Bytes(maskText);
    if (!mask) throw new ConfigError(where, `netmask ${JSON.stringify(maskText)} is not an IPv4 address such as 255.255.255.0`);
    const len = prefixLengthOf(mask);
    if (len === undefined) throw new ConfigError(where, `netmask ${maskText} is not contiguous (ones then zeros, such as 255.255.255.0)`);
    const addr = ipv4Bytes(addrText);
    if (!addr) throw new ConfigError(where, `netaddr ${JSON.stringify(addrText)} is not an IPv4 address such as 192.0.2.0`);
    const network = addr.map((b, k) => b & (mask[k] as number));
    if (network.some((b, k) => b !== addr[k])) {
      // rpc.dracd compared (client & mask) == netaddr, so such a line never matched anyone.
      throw new ConfigError(where, `netaddr ${addrText} has host bits outside netmask ${maskText} (it would match no client): write ${network.join('.')}`);
    }
    cidrs.push(`${network.join('.')}/${len}`);
  });
  return cidrs;
}

/** The networks of a dracd.allow file, kept current with it. Construction throws when the first load fails. */
export class DracdAllow {
  private readonly file: ReloadedFile<NetworkList>;

  constructor(opts: MountedFileOptions) {
    const { file } = opts;
    this.file = new ReloadedFile({
      ...opts,
      parse: (text) => NetworkList.parse(parseDracdAllow(text, file), file),
      readError: (code) => new ConfigError(file, `cannot read the dracd.allow file: ${code}`),
      eventPrefix: 'dracd_allow',
      summary: (networks) => ['networks', networks.entries],
    });
  }

  /** Set while the newest file on disk is refused. */
  get lastError(): string | undefined {
    return this.file.lastError;
  }

  /** Whether `ip` lies in one of the file's networks (an IPv4-mapped IPv6 peer counts as IPv4). */
  contains(ip: string): boolean {
    return this.file.current.contains(ip);
  }

  get entries(): readonly string[] {
    return this.file.current.entries;
  }

  /** Re-read the file; returns whether a new version was taken. A broken file keeps the old networks. */
  reload(): boolean {
    return this.file.reload();
  }

  close(): void {
    this.file.close();
  }
}
