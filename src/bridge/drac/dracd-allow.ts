// DRAC's `dracd.allow`: the login servers allowed to add addresses, one `netmask netaddr` line
// each (`255.255.255.0 192.0.2.0`), `#` comments, IPv4 only, as rpc.dracd read it. Mounted from a
// ConfigMap and reloaded on change; a file that does not parse keeps the last good version.
import fs from 'node:fs';
import { parseIp } from '../../grants/address.ts';
import { ConfigError } from '../../config/reader.ts';
import { FileWatch } from '../../config/file-watch.ts';
import { NetworkList } from '../../net/networks.ts';
import type { Logger } from '../../observability/log.ts';

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

export interface DracdAllowOptions {
  file: string;
  log: Logger;
  /** Re-read at least this often (watch events can be missed); 0 disables polling. */
  pollIntervalMs?: number;
  debounceMs?: number;
}

/** The networks of a dracd.allow file, kept current with it. Construction throws when the first load fails. */
export class DracdAllow {
  private networks: NetworkList;
  private text: string;
  private readonly opts: Required<DracdAllowOptions>;
  private readonly watch: FileWatch;
  private closed = false;
  /** Set while the newest file on disk is refused. */
  lastError: string | undefined;

  constructor(opts: DracdAllowOptions) {
    this.opts = { pollIntervalMs: 30_000, debounceMs: 200, ...opts };
    this.text = this.read();
    this.networks = this.parse(this.text);
    this.opts.log.info('dracd_allow_loaded', { file: this.opts.file, networks: this.networks.entries });
    this.watch = new FileWatch({
      files: [this.opts.file],
      onChange: () => this.reload(),
      pollIntervalMs: this.opts.pollIntervalMs,
      debounceMs: this.opts.debounceMs,
      log: this.opts.log,
      eventPrefix: 'dracd_allow',
    });
  }

  private read(): string {
    try {
      return fs.readFileSync(this.opts.file, 'utf8');
    } catch (err) {
      throw new ConfigError(this.opts.file, `cannot read the dracd.allow file: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
  }

  private parse(text: string): NetworkList {
    return NetworkList.parse(parseDracdAllow(text, this.opts.file), this.opts.file);
  }

  /** Whether `ip` lies in one of the file's networks (an IPv4-mapped IPv6 peer counts as IPv4). */
  contains(ip: string): boolean {
    return this.networks.contains(ip);
  }

  get entries(): readonly string[] {
    return this.networks.entries;
  }

  /** Re-read the file; returns whether a new version was taken. A broken file keeps the old networks. */
  reload(): boolean {
    if (this.closed) return false;
    let text: string;
    let networks: NetworkList;
    try {
      text = this.read();
      if (text === this.text && this.lastError === undefined) return false;
      networks = this.parse(text);
    } catch (err) {
      const message = (err as Error).message;
      if (message !== this.lastError) this.opts.log.error('dracd_allow_reload_refused', { error: message, keeping: this.networks.entries });
      this.lastError = message;
      return false;
    }
    this.networks = networks;
    this.text = text;
    this.lastError = undefined;
    this.opts.log.info('dracd_allow_reloaded', { file: this.opts.file, networks: networks.entries });
    return true;
  }

  close(): void {
    this.closed = true;
    this.watch.close();
  }
}
