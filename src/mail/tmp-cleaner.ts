// Cleaning Maildir tmp/ folders, as Maildir readers do (the Maildir spec: "a reader should delete
// files in tmp/ that have not been accessed in 36 hours"; Dovecot does it too). A delivery writes
// into tmp/ and renames into new/; one killed between the two (a crash, an OOM kill, a pod
// evicted mid-message) leaves its file in tmp/, where nothing would ever look at it again. The
// POP3 role, the reader, sweeps every Maildir under the mail root at start and then periodically.
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../observability/log.ts';

/** A tmp/ file not read or written for this long is a delivery that will never finish. */
export const TMP_MAX_AGE_MS = 36 * 3600_000;
/** How often the mail root is swept (Dovecot checks a Maildir's tmp/ at most every 8 hours). */
export const TMP_SWEEP_INTERVAL_MS = 8 * 3600_000;

/**
 * Remove the files in `maildir`/tmp whose last access and last change are both older than
 * `maxAgeMs`. Returns how many were removed; a missing tmp/ is no error (nothing to clean).
 */
export async function cleanMaildirTmp(maildir: string, nowMs = Date.now(), maxAgeMs = TMP_MAX_AGE_MS): Promise<number> {
  const tmp = path.join(maildir, 'tmp');
  let names: string[];
  try {
    names = await fsp.readdir(tmp);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return 0;
    throw err;
  }
  let removed = 0;
  for (const name of names) {
    const file = path.join(tmp, name);
    try {
      const st = await fsp.lstat(file);
      if (!st.isFile() || Math.max(st.atimeMs, st.mtimeMs) > nowMs - maxAgeMs) continue;
      await fsp.unlink(file);
      removed++;
    } catch (err) {
      // Gone meanwhile (another replica sweeping, a delivery finishing): nothing left to do.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
  return removed;
}

/**
 * Every Maildir a location template can name under `mailRoot`: each template segment with a
 * `%u`, `%n` or `%d` stands for any folder (not a dot folder), a literal one for itself.
 */
export async function* maildirsUnder(mailRoot: string, mailLocation: string): AsyncGenerator<string> {
  const segments = mailLocation.split('/').filter((s) => s !== '' && s !== '.');
  async function* walk(dir: string, depth: number): AsyncGenerator<string> {
    if (depth === segments.length) {
      yield dir;
      return;
    }
    const segment = segments[depth] as string;
    if (!/%[und]/.test(segment)) {
      yield* walk(path.join(dir, segment.replace(/%%/g, '%')), depth + 1);
      return;
    }
    let entries;
    try {
      entries = await fsp.readdir(dir, { withFileTypes: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return;
      throw err;
    }
    for (const e of entries) if (e.isDirectory() && !e.name.startsWith('.')) yield* walk(path.join(dir, e.name), depth + 1);
  }
  yield* walk(mailRoot, 0);
}

export interface MaildirTmpCleanerOptions {
  mailRoot: string;
  /** Dovecot-style location template under mailRoot, e.g. `%d/%n/Maildir`. */
  mailLocation: string;
  log: Logger;
  intervalMs?: number;
  maxAgeMs?: number;
}

/** Sweeps every Maildir's tmp/ under the mail root: at start, then every `intervalMs`. */
export class MaildirTmpCleaner {
  private readonly opts: Required<MaildirTmpCleanerOptions>;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private closed = false;

  constructor(opts: MaildirTmpCleanerOptions) {
    this.opts = { intervalMs: TMP_SWEEP_INTERVAL_MS, maxAgeMs: TMP_MAX_AGE_MS, ...opts };
  }

  /** The first sweep starts now, in the background (a large mail root must not delay serving). */
  start(): void {
    void this.sweep();
    this.timer = setInterval(() => void this.sweep(), this.opts.intervalMs);
    this.timer.unref();
  }

  /** One sweep over the mail root (one at a time); never throws, it logs. */
  sweep(): Promise<void> {
    this.running ??= this.sweepOnce().finally(() => (this.running = undefined));
    return this.running;
  }

  private async sweepOnce(): Promise<void> {
    const started = Date.now();
    let maildirs = 0;
    let removed = 0;
    try {
      for await (const maildir of maildirsUnder(this.opts.mailRoot, this.opts.mailLocation)) {
        if (this.closed) return;
        maildirs++;
        try {
          removed += await cleanMaildirTmp(maildir, Date.now(), this.opts.maxAgeMs);
        } catch (err) {
          this.opts.log.warn('maildir_tmp_clean_failed', { maildir, error: err as Error });
        }
      }
    } catch (err) {
      this.opts.log.warn('maildir_tmp_sweep_failed', { mailRoot: this.opts.mailRoot, error: err as Error });
      return;
    }
    const fields = { maildirs, removed, ms: Date.now() - started };
    if (removed > 0) this.opts.log.info('maildir_tmp_cleaned', fields);
    else this.opts.log.debug('maildir_tmp_cleaned', fields);
  }

  /** Stop sweeping; resolves once a sweep in progress has stopped. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    await this.running;
  }
}
