// Watching mounted files for changes. Kubernetes updates a Secret or ConfigMap volume in place by
// swapping a `..data` symlink, so the files' own inodes never change: watch their directories,
// debounce the bursts of events a swap makes, and re-read periodically as a safety net (watches
// can miss events, e.g. on network filesystems).
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from '../observability/log.ts';

export interface FileWatchOptions {
  /** The files whose directories to watch. */
  files: string[];
  /** Called (debounced) after a change, and on every poll. */
  onChange: () => void;
  /** Re-read this often even without a watch event; 0 disables polling. */
  pollIntervalMs: number;
  debounceMs: number;
  log: Logger;
  /** Prefix of the log events (`<prefix>_watch_error`, `<prefix>_watch_unavailable`). */
  eventPrefix: string;
}

export class FileWatch {
  private readonly watchers: fs.FSWatcher[] = [];
  private readonly poll: NodeJS.Timeout | undefined;
  private debounce: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly opts: FileWatchOptions;

  constructor(opts: FileWatchOptions) {
    this.opts = opts;
    for (const dir of new Set(opts.files.map((f) => path.dirname(path.resolve(f))))) {
      try {
        const w = fs.watch(dir, { persistent: false }, () => this.schedule());
        w.on('error', (err) => opts.log.warn(`${opts.eventPrefix}_watch_error`, { dir, error: err }));
        this.watchers.push(w);
      } catch (err) {
        opts.log.warn(`${opts.eventPrefix}_watch_unavailable`, { dir, error: err as Error });
      }
    }
    if (opts.pollIntervalMs > 0) {
      this.poll = setInterval(() => opts.onChange(), opts.pollIntervalMs);
      this.poll.unref();
    }
  }

  private schedule(): void {
    if (this.closed) return;
    clearTimeout(this.debounce);
    this.debounce = setTimeout(() => this.opts.onChange(), this.opts.debounceMs);
    this.debounce.unref();
  }

  close(): void {
    this.closed = true;
    clearInterval(this.poll);
    clearTimeout(this.debounce);
    for (const w of this.watchers) w.close();
    this.watchers.length = 0;
  }
}
