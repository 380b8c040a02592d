// Server certificates from mounted files, reloaded when they change. Kubernetes rotates a Secret
// volume in place by swapping the `..data` symlink, so the files' own inodes never change: watch
// the directories, and re-read periodically as a safety net (watches can miss events).
import { X509Certificate, createHash } from 'node:crypto';
import fs from 'node:fs';
import tls from 'node:tls';
import { FileWatch } from '../config/file-watch.ts';
import type { Logger } from '../observability/log.ts';
import { tlsReloads } from './metrics.ts';

export interface TlsFiles {
  certFile: string;
  keyFile: string;
}

export interface TlsReloaderOptions extends TlsFiles {
  log: Logger;
  /** Re-read the files this often even when no watch event came. 0 disables polling. */
  pollIntervalMs?: number;
  /** Coalesce the burst of events of one rotation. */
  debounceMs?: number;
  minVersion?: tls.SecureVersion;
}

interface Loaded {
  digest: string;
  options: tls.SecureContextOptions;
  context: tls.SecureContext;
  notAfter: string;
}

export class TlsFilesError extends Error {
  override readonly name = 'TlsFilesError';
}

function loadFiles(files: TlsFiles, minVersion: tls.SecureVersion): Loaded {
  let cert: Buffer;
  let key: Buffer;
  try {
    cert = fs.readFileSync(files.certFile);
    key = fs.readFileSync(files.keyFile);
  } catch (err) {
    throw new TlsFilesError(`cannot read TLS files: ${(err as Error).message}`);
  }
  const digest = createHash('sha256').update(cert).update('\0').update(key).digest('hex');
  const options: tls.SecureContextOptions = { cert, key, minVersion };
  let context: tls.SecureContext;
  let notAfter: string;
  try {
    // Throws on a key that does not match the certificate (half-rotated files).
    context = tls.createSecureContext(options);
    notAfter = new X509Certificate(cert).validTo;
  } catch (err) {
    throw new TlsFilesError(`${files.certFile} / ${files.keyFile}: ${(err as Error).message}`);
  }
  return { digest, options, context, notAfter };
}

/**
 * The current certificate and key as a `tls.SecureContext`, kept up to date with the files.
 * Use `serverOptions()` for `tls.createServer` and then `attach(server)`, so that clients with
 * and without SNI get the new certificate; use `context` for STLS/STARTTLS upgrades with
 * `new tls.TLSSocket(socket, { isServer: true, secureContext })`.
 */
export class TlsReloader {
  private loaded: Loaded;
  private readonly opts: Required<Omit<TlsReloaderOptions, 'log'>> & { log: Logger };
  private readonly watch: FileWatch;
  private readonly servers = new Set<tls.Server>();
  private readonly listeners: Array<(context: tls.SecureContext) => void> = [];
  private closed = false;

  /** Load the files now (throws TlsFilesError when they are unusable) and start watching. */
  constructor(opts: TlsReloaderOptions) {
    this.opts = { pollIntervalMs: 60_000, debounceMs: 200, minVersion: 'TLSv1.2', ...opts };
    this.loaded = loadFiles(this.opts, this.opts.minVersion);
    this.opts.log.info('tls_loaded', { certFile: this.opts.certFile, notAfter: this.loaded.notAfter });
    this.watch = new FileWatch({
      files: [this.opts.certFile, this.opts.keyFile],
      onChange: () => this.reload(),
      pollIntervalMs: this.opts.pollIntervalMs,
      debounceMs: this.opts.debounceMs,
      log: this.opts.log,
      eventPrefix: 'tls',
    });
  }

  get context(): tls.SecureContext {
    return this.loaded.context;
  }

  get notAfter(): string {
    return this.loaded.notAfter;
  }

  /** Options for `tls.createServer`: the current certificate and an SNI callback that follows reloads. */
  serverOptions(): tls.TlsOptions {
    return {
      ...this.loaded.options,
      SNICallback: (_servername, cb) => cb(null, this.loaded.context),
    };
  }

  /** Keep `server`'s default context (used for clients without SNI) current. */
  attach(server: tls.Server): void {
    this.servers.add(server);
    server.once('close', () => this.servers.delete(server));
  }

  onReload(listener: (context: tls.SecureContext) => void): void {
    this.listeners.push(listener);
  }

  /** Re-read the files; a change is applied, a broken pair is logged and the old one kept. Returns whether it changed. */
  reload(): boolean {
    if (this.closed) return false;
    let next: Loaded;
    try {
      next = loadFiles(this.opts, this.opts.minVersion);
    } catch (err) {
      tlsReloads.inc({ result: 'failure' });
      this.opts.log.warn('tls_reload_failed', { error: err as Error, keeping: this.loaded.notAfter });
      return false;
    }
    if (next.digest === this.loaded.digest) return false;
    this.loaded = next;
    for (const server of this.servers) server.setSecureContext(next.options);
    for (const listener of this.listeners) listener(next.context);
    tlsReloads.inc({ result: 'success' });
    this.opts.log.info('tls_reloaded', { certFile: this.opts.certFile, notAfter: next.notAfter });
    return true;
  }

  close(): void {
    this.closed = true;
    this.watch.close();
    this.servers.clear();
  }
}
