// The maildrop lock (RFC 1939: one session per maildrop). A file created with O_EXCL in the
// Maildir, so it holds across every replica that mounts the same volume. The holder touches it
// periodically; a lock whose holder is gone (same host, dead pid) or that has not been touched
// for `staleMs` (another host died) is broken.
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pooledIo, type FileIo } from '../mail/io.ts';
import { uniqueId } from './ids.ts';

export const LOCK_FILE = '.kubedrac-pop3.lock';

/** Read once: os.hostname() is a uname(2) call at every login otherwise. A pod's name does not change. */
let thisHost: string | undefined;

export interface LockOptions {
  /** Touch the lock this often while held. */
  heartbeatMs: number;
  /** A lock not touched for this long is considered abandoned (several heartbeats). */
  staleMs: number;
  hostname?: string;
  /** How to reach the file, asked at each step (taking, releasing); default: the thread pool. */
  io?: () => FileIo;
}

interface LockContent {
  host: string;
  pid: number;
  token: string;
  since: string;
}

export interface HeldLock {
  release(): Promise<void>;
}

export class MaildropInUseError extends Error {
  override readonly name = 'MaildropInUseError';
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** What a lock file we hold open says; undefined when it cannot be read or parsed. */
async function readContent(io: FileIo, fd: number): Promise<LockContent | undefined> {
  try {
    const buf = Buffer.allocUnsafe(1024);
    const n = await io.read(fd, buf, 0);
    return JSON.parse(buf.toString('utf8', 0, n)) as LockContent;
  } catch {
    return undefined;
  }
}

async function readLock(file: string): Promise<{ content: LockContent | undefined; stat: fs.Stats } | undefined> {
  let stat: fs.Stats;
  let text: string;
  try {
    stat = await fsp.stat(file);
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  try {
    return { content: JSON.parse(text) as LockContent, stat };
  } catch {
    return { content: undefined, stat }; // half-written or foreign: judged by age alone
  }
}

/**
 * Take the lock of `maildir` or throw MaildropInUseError. Other errors (permissions, disk) are
 * thrown as they are: the caller answers `[SYS/TEMP]`.
 */
export async function lockMaildrop(maildir: string, opts: LockOptions): Promise<HeldLock> {
  const file = path.join(maildir, LOCK_FILE);
  const host = opts.hostname ?? (thisHost ??= os.hostname());
  const token = uniqueId();
  const content: LockContent = { host, pid: process.pid, token, since: new Date().toISOString() };

  const io = opts.io ?? (() => pooledIo);
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fileIo = io();
      const fd = await fileIo.open(file, 'wx+', 0o600);
      // The lock is ours from here. What it says lands meanwhile: a reader that finds it still
      // empty judges it by age, and a fresh lock is in use.
      const written = fileIo.write(fd, JSON.stringify(content)).then(
        () => undefined,
        () => undefined,
      );
      return holdLock(file, fd, token, written, opts.heartbeatMs, io);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const existing = await readLock(file);
    if (!existing) continue; // released meanwhile: try again
    const age = Date.now() - existing.stat.mtimeMs;
    const holderDead =
      existing.content !== undefined && existing.content.host === host && existing.content.pid !== process.pid && !isAlive(existing.content.pid);
    if (!holderDead && age < opts.staleMs) throw new MaildropInUseError('maildrop is locked by another session');
    await breakLock(file, existing.stat);
  }
  throw new MaildropInUseError('maildrop lock is contended');
}

/**
 * Remove an abandoned lock without removing a fresh one another replica created meanwhile:
 * move it aside, check it is the very file judged stale (same inode), and put it back if not.
 */
async function breakLock(file: string, stale: fs.Stats): Promise<void> {
  const aside = `${file}.stale.${crypto.randomBytes(6).toString('hex')}`;
  try {
    await fsp.rename(file, aside);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  const moved = await fsp.stat(aside);
  if (moved.ino !== stale.ino || moved.dev !== stale.dev) {
    try {
      await fsp.link(aside, file);
    } catch {
      /* someone else holds a newer lock already; theirs stands */
    }
  }
  await fsp.unlink(aside).catch(() => undefined);
}

/**
 * The lock file stays open while held: its inode cannot be reused meanwhile, so the file at the
 * path is ours exactly when it is that inode and still holds our token.
 */
function holdLock(file: string, fd: number, token: string, written: Promise<void>, heartbeatMs: number, io: () => FileIo): HeldLock {
  // Touch the file we hold, not whatever the path names now (a lock that replaced a broken one).
  const timer = setInterval(() => {
    const now = new Date();
    fs.futimes(fd, now, now, () => undefined);
  }, heartbeatMs);
  timer.unref();
  let released = false;
  return {
    release: async () => {
      if (released) return;
      released = true;
      clearInterval(timer);
      await written;
      const fileIo = io();
      try {
        // Remove only our own lock: if it was broken and re-taken, the file is someone else's.
        const [held, there, content] = await Promise.all([fileIo.fstat(fd), fileIo.stat(file).catch(() => undefined), readContent(fileIo, fd)]);
        if (there !== undefined && there.ino === held.ino && there.dev === held.dev && content?.token === token) await fileIo.unlink(file).catch(() => undefined);
      } catch {
        /* not ours to remove */
      } finally {
        fileIo.close(fd);
      }
    },
  };
}
