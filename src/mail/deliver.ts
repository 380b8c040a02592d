// Atomic Maildir delivery: write into tmp/, fsync the file, rename into new/, fsync new/.
// Once deliverToMaildir resolves, the message survives a crash; before, new/ never holds half of it.
import crypto from 'node:crypto';
import fsCb from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

let sequence = 0;

/** The host part of a Maildir name, with `/` and `:` escaped as the Maildir convention says. */
function maildirHost(hostname: string): string {
  return hostname.replace(/\//g, '\\057').replace(/:/g, '\\072');
}

/**
 * A name unique across processes and hosts: `<sec>.M<usec>P<pid>Q<seq>R<random>.<host>`, plus
 * Dovecot's `,S=<size>,W=<size with CRLF>` so readers can size the message without opening it.
 */
export function maildirName(size: number, virtualSize: number, hostname = os.hostname(), nowMs = Date.now()): string {
  const sec = Math.floor(nowMs / 1000);
  const usec = (nowMs % 1000) * 1000 + Math.floor(Math.random() * 1000);
  const rand = crypto.randomBytes(4).toString('hex');
  sequence = (sequence + 1) % 1_000_000_000;
  return `${sec}.M${usec}P${process.pid}Q${sequence}R${rand}.${maildirHost(hostname)},S=${size},W=${virtualSize}`;
}

/** SMTP carries CRLF line ends; a Maildir stores LF (as Dovecot and Postfix do). */
export function crlfToLf(message: Buffer): Buffer {
  if (message.indexOf('\r\n') === -1) return message;
  const out = Buffer.allocUnsafe(message.length);
  let w = 0;
  let start = 0;
  for (;;) {
    const cr = message.indexOf('\r\n', start);
    if (cr === -1) break;
    w += message.copy(out, w, start, cr);
    out[w++] = 0x0a;
    start = cr + 2;
  }
  w += message.copy(out, w, start);
  return out.subarray(0, w);
}

function countLf(b: Buffer): number {
  let n = 0;
  for (let i = b.indexOf(0x0a); i !== -1; i = b.indexOf(0x0a, i + 1)) n++;
  return n;
}

// Plain descriptors rather than FileHandle objects: this path runs for every message, and the
// callback API costs the event loop noticeably less per call.
const openExclusive = (file: string) => promisify(fsCb.open)(file, fsCb.constants.O_WRONLY | fsCb.constants.O_CREAT | fsCb.constants.O_EXCL, 0o600);
const fdatasync = promisify(fsCb.fdatasync);
const closeFd = promisify(fsCb.close);
const writeFd = promisify(fsCb.write);

async function writeAll(fd: number, data: Buffer): Promise<void> {
  let off = 0;
  while (off < data.length) off += (await writeFd(fd, data, off, data.length - off)).bytesWritten;
}

/** Create `tmp/`, `new/` and `cur/` (mode 0700) if missing. */
export async function ensureMaildir(maildir: string): Promise<void> {
  for (const sub of ['tmp', 'new', 'cur']) await fs.mkdir(path.join(maildir, sub), { recursive: true, mode: 0o700 });
}

async function fsyncDirNow(dir: string): Promise<void> {
  const fh = await fs.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

interface DirSync {
  running: Promise<void> | undefined;
  next: Promise<void> | undefined;
}
const dirSyncs = new Map<string, DirSync>();

/**
 * fsync a directory, shared between concurrent deliveries (group commit): a caller is served by a
 * sync that starts after its call, so its rename is covered; callers arriving while one sync runs
 * share the single next one instead of each queueing their own.
 */
export function fsyncDir(dir: string): Promise<void> {
  let s = dirSyncs.get(dir);
  if (!s) {
    s = { running: undefined, next: undefined };
    dirSyncs.set(dir, s);
  }
  const state = s;
  const start = (): Promise<void> => {
    const p = fsyncDirNow(dir).finally(() => {
      if (state.running === p) state.running = undefined;
      if (!state.running && !state.next) dirSyncs.delete(dir);
    });
    state.running = p;
    return p;
  };
  if (!state.running) return start();
  state.next ??= state.running
    .catch(() => undefined)
    .then(() => {
      state.next = undefined;
      return start();
    });
  return state.next;
}

export interface DeliverOptions {
  hostname?: string;
  /** Create the Maildir's folders when missing (default true). */
  create?: boolean;
}

/** A message written and fsynced in tmp/, not yet visible: commit() renames it into new/. */
export interface StagedDelivery {
  /** Rename into new/ and fsync new/; resolves with the final path. */
  commit(): Promise<string>;
  /** Remove the temporary file (a no-op after commit). */
  abort(): Promise<void>;
}

/**
 * Write one message (with CRLF or LF line ends) into `maildir`/tmp and fsync it. Nothing is visible
 * to readers until commit(); on a write failure the temporary file is removed and the error thrown.
 * Lets a caller stage local copies, try the smarthost, and only then make them appear (or drop them).
 */
export async function stageMaildirDelivery(maildir: string, message: Buffer, opts: DeliverOptions = {}): Promise<StagedDelivery> {
  const body = crlfToLf(message);
  const name = maildirName(body.length, body.length + countLf(body), opts.hostname);
  const tmpPath = path.join(maildir, 'tmp', name);
  const newPath = path.join(maildir, 'new', name);
  let fd: number;
  try {
    fd = await openExclusive(tmpPath);
  } catch (err) {
    // Folders are created on first delivery only: one open is cheaper than three mkdirs each time.
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || opts.create === false) throw err;
    await ensureMaildir(maildir);
    fd = await openExclusive(tmpPath);
  }
  try {
    try {
      await writeAll(fd, body);
      // Data and the metadata needed to read it back (size); the rename is made durable by new/'s fsync.
      await fdatasync(fd);
    } finally {
      await closeFd(fd);
    }
  } catch (err) {
    await fs.rm(tmpPath, { force: true });
    throw err;
  }
  let state: 'staged' | 'committed' | 'aborted' = 'staged';
  return {
    async commit() {
      if (state !== 'staged') throw new Error(`delivery already ${state}`);
      try {
        await fs.rename(tmpPath, newPath);
      } catch (err) {
        state = 'aborted';
        await fs.rm(tmpPath, { force: true });
        throw err;
      }
      state = 'committed';
      await fsyncDir(path.join(maildir, 'new'));
      return newPath;
    },
    async abort() {
      if (state !== 'staged') return;
      state = 'aborted';
      await fs.rm(tmpPath, { force: true });
    },
  };
}

/**
 * Deliver one message (with CRLF or LF line ends) into `maildir`. Resolves with the path in new/
 * once the file and the directory entry are on disk; on failure nothing is left in new/ and the
 * temporary file is removed.
 */
export async function deliverToMaildir(maildir: string, message: Buffer, opts: DeliverOptions = {}): Promise<string> {
  const staged = await stageMaildirDelivery(maildir, message, opts);
  return staged.commit();
}
