// A mounted file (a Secret's users, a ConfigMap's dracd.allow) parsed whole and re-read when it
// changes. A version that cannot be read or parsed is refused as a whole and the last good one
// stays in force: half a file would lock people out, or let the wrong ones in.
import fs from 'node:fs';
import type { Logger } from '../observability/log.ts';
import { FileWatch } from './file-watch.ts';

export interface ReloadedFileOptions<T> {
  file: string;
  /** The file's text as the value in force; throws (with `file:line`) on a version to refuse. */
  parse: (text: string) => T;
  /** The error for a file that cannot be read, from the errno code. */
  readError: (code: string) => Error;
  /** Prefix of the log events: `<prefix>_loaded`, `<prefix>_reloaded`, `<prefix>_reload_refused`. */
  eventPrefix: string;
  /** The field (name and value) that sums a version up in those events, e.g. `users: 12`. */
  summary: (value: T) => [string, unknown];
  log: Logger;
  /** Re-read at least this often (watch events can be missed); 0 disables polling. Default 30 s. */
  pollIntervalMs?: number;
  /** Wait this long after a watch event for the burst of a volume update to end. Default 200 ms. */
  debounceMs?: number;
  /** Called after a new version was taken (by a watch event, a poll or `reload()`), with the one it replaced. */
  onChanged?: (before: T, after: T) => void;
}

/** What the owner of a reloaded file takes from its own options. */
export type MountedFileOptions = Pick<ReloadedFileOptions<unknown>, 'file' | 'log' | 'pollIntervalMs' | 'debounceMs'>;

/** The parsed file, kept current with it. Construction throws when the first load fails. */
export class ReloadedFile<T> {
  private value: T;
  private text: string;
  private readonly opts: ReloadedFileOptions<T>;
  private readonly watch: FileWatch;
  private closed = false;
  /** Set while the newest file on disk is refused (for readiness and logs). */
  lastError: string | undefined;

  constructor(opts: ReloadedFileOptions<T>) {
    this.opts = opts;
    this.text = this.read();
    this.value = opts.parse(this.text);
    opts.log.info(`${opts.eventPrefix}_loaded`, { file: opts.file, ...this.summary(this.value) });
    this.watch = new FileWatch({
      files: [opts.file],
      onChange: () => this.reload(),
      pollIntervalMs: opts.pollIntervalMs ?? 30_000,
      debounceMs: opts.debounceMs ?? 200,
      log: opts.log,
      eventPrefix: opts.eventPrefix,
    });
  }

  /** The last good version. */
  get current(): T {
    return this.value;
  }

  /** Re-read the file; returns whether a new version was taken. A broken file keeps the last good one. */
  reload(): boolean {
    if (this.closed) return false;
    let text: string;
    let value: T;
    try {
      text = this.read();
      // The same text again is news only after a refused version: the good one is back on disk.
      if (text === this.text && this.lastError === undefined) return false;
      value = this.opts.parse(text);
    } catch (err) {
      const message = (err as Error).message;
      if (message !== this.lastError) {
        const [, keeping] = this.opts.summary(this.value);
        this.opts.log.error(`${this.opts.eventPrefix}_reload_refused`, { error: message, keeping });
      }
      this.lastError = message;
      return false;
    }
    const before = this.value;
    this.value = value;
    this.text = text;
    this.lastError = undefined;
    this.opts.log.info(`${this.opts.eventPrefix}_reloaded`, { file: this.opts.file, ...this.summary(value) });
    this.opts.onChanged?.(before, value);
    return true;
  }

  close(): void {
    this.closed = true;
    this.watch.close();
  }

  private read(): string {
    try {
      return fs.readFileSync(this.opts.file, 'utf8');
    } catch (err) {
      throw this.opts.readError((err as NodeJS.ErrnoException).code ?? String(err));
    }
  }

  private summary(value: T): Record<string, unknown> {
    const [field, summary] = this.opts.summary(value);
    return { [field]: summary };
  }
}
