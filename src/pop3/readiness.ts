// Whether the mail root can be used: checked in the background, since a hung network volume must
// make /readyz say no rather than hang it. The POP3 role needs to read the Maildirs and to write in
// them (locks, new/ to cur/, DELE), so a read-only mount or a stale NFS handle is not ready.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import type { Logger } from '../observability/log.ts';

export interface MailRootProbeOptions {
  mailRoot: string;
  log: Logger;
  /** Check this often. */
  intervalMs?: number;
  /** A check still running after this long (a hung mount) counts as failed. */
  timeoutMs?: number;
}

export class MailRootProbe {
  private readonly opts: Required<MailRootProbeOptions>;
  private problem: string | undefined = 'not checked yet';
  private runningSince: number | undefined;
  private readonly timer: NodeJS.Timeout;

  constructor(opts: MailRootProbeOptions) {
    this.opts = { intervalMs: 2000, timeoutMs: 10_000, ...opts };
    this.timer = setInterval(() => void this.check(), this.opts.intervalMs);
    this.timer.unref();
  }

  /** Check now; resolves when the check is done. A check already running is not doubled. */
  async check(): Promise<void> {
    if (this.runningSince !== undefined) return;
    this.runningSince = Date.now();
    let problem: string | undefined;
    try {
      const st = await fsp.stat(this.opts.mailRoot);
      if (!st.isDirectory()) problem = 'is not a directory';
      else await fsp.access(this.opts.mailRoot, fs.constants.R_OK | fs.constants.W_OK | fs.constants.X_OK);
    } catch (err) {
      problem = (err as NodeJS.ErrnoException).code ?? String(err);
    }
    this.runningSince = undefined;
    if (problem !== this.problem) {
      if (problem === undefined) this.opts.log.info('mail_root_usable', { mailRoot: this.opts.mailRoot });
      else this.opts.log.warn('mail_root_unusable', { mailRoot: this.opts.mailRoot, problem });
    }
    this.problem = problem;
  }

  /** Why the mail root cannot be used, or undefined when it can. */
  get unusable(): string | undefined {
    if (this.runningSince !== undefined && Date.now() - this.runningSince > this.opts.timeoutMs) {
      return `mail root ${this.opts.mailRoot}: no answer for ${Date.now() - this.runningSince} ms`;
    }
    return this.problem === undefined ? undefined : `mail root ${this.opts.mailRoot}: ${this.problem}`;
  }

  close(): void {
    clearInterval(this.timer);
  }
}
