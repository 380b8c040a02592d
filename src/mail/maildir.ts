// Reading a Maildir for POP3: a snapshot of new/ and cur/ taken at login, sizes as CRLF octet
// counts, UIDL ids from the unique base name, and deletion at UPDATE.
// (Delivery lives in deliver.ts; the RETR/TOP data in pop3/message-data.ts.)
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { pooledIo, type FileIo } from './io.ts';

export interface MaildirMessage {
  /** The unique part of the file name, before `:2,flags` (stable while flags change). */
  baseName: string;
  /** Where it was when the snapshot was taken (`new/` or `cur/`). */
  path: string;
  /** Size as sent: bare LF counted as CRLF. */
  size: number;
  /** Size of the file. */
  rawSize: number;
  /** RFC 1939 unique-id: 1-70 characters in 0x21-0x7E. */
  uid: string;
}

/** Base name of a Maildir file: the part before the `:2,` info (`;` is an alternative separator on some systems). */
export function maildirBaseName(fileName: string): string {
  const colon = fileName.indexOf(':');
  return colon === -1 ? fileName : fileName.slice(0, colon);
}

const UID_OK = /^[\x21-\x7e]{1,70}$/;

/** UIDL id for a base name: the name itself when it fits RFC 1939, else a stable digest of it. */
export function uidFor(baseName: string): string {
  if (UID_OK.test(baseName)) return baseName;
  return createHash('sha256').update(baseName).digest('base64url').slice(0, 43);
}

/** `,S=<size>,W=<virtual size>` as Dovecot (and our SMTP delivery) put in names. */
export function sizesFromName(baseName: string): { s?: number; w?: number } {
  const out: { s?: number; w?: number } = {};
  for (const m of baseName.matchAll(/,([SW])=(\d+)/g)) {
    if (m[1] === 'S') out.s = Number(m[2]);
    else out.w = Number(m[2]);
  }
  return out;
}

/** Octets after converting bare LF to CRLF; `prevWasCr` carries a CR across chunk boundaries. */
export function crlfSizeOf(buf: Buffer, prevWasCr = false): { size: number; lastWasCr: boolean } {
  let size = buf.length;
  for (let i = buf.indexOf(0x0a); i !== -1; i = buf.indexOf(0x0a, i + 1)) {
    const hadCr = i > 0 ? buf[i - 1] === 0x0d : prevWasCr;
    if (!hadCr) size++;
  }
  return { size, lastWasCr: buf.length > 0 ? buf[buf.length - 1] === 0x0d : prevWasCr };
}

async function computeCrlfSize(file: string): Promise<number> {
  let size = 0;
  let lastWasCr = false;
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 256 * 1024 })) {
    const r = crlfSizeOf(chunk as Buffer, lastWasCr);
    size += r.size;
    lastWasCr = r.lastWasCr;
  }
  return size;
}

/**
 * Maildir files never change content once in new/ or cur/ (only their flags in the name), so a
 * computed size can be remembered by base name and raw size. Bounded; oldest forgotten first.
 */
const sizeCache = new Map<string, number>();
const SIZE_CACHE_MAX = 100_000;

async function sizeOf(file: string, baseName: string, rawSize: number): Promise<number> {
  const { s, w } = sizesFromName(baseName);
  // Trust W= only when S= agrees with the file: a name is just a name.
  if (w !== undefined && s === rawSize && w >= s) return w;
  const key = `${rawSize}/${baseName}`;
  const cached = sizeCache.get(key);
  if (cached !== undefined) return cached;
  const size = await computeCrlfSize(file);
  if (sizeCache.size >= SIZE_CACHE_MAX) sizeCache.delete(sizeCache.keys().next().value as string);
  sizeCache.set(key, size);
  return size;
}

/** Create the Maildir folders (0700) when missing: a user who never got mail has an empty maildrop. */
export async function ensureMaildirFolders(maildir: string): Promise<void> {
  for (const sub of ['cur', 'new', 'tmp']) await fsp.mkdir(path.join(maildir, sub), { recursive: true, mode: 0o700 });
}

/**
 * Delivery order of a Maildir name: `<seconds>.M<microseconds>...` (Dovecot, Postfix, our SMTP),
 * compared as numbers (`M99999` comes before `M100000`), then by name. Other names sort last.
 */
function deliveredAt(baseName: string): number {
  const m = /^(\d+)\.(?:M(\d{1,6})(?!\d))?/.exec(baseName);
  if (!m) return Number.MAX_SAFE_INTEGER;
  return Number(m[1]) * 1e6 + (m[2] === undefined ? 0 : Number(m[2]));
}

/** The names in a Maildir folder (none when it does not exist). */
async function listFolder(dir: string, io: FileIo): Promise<string[]> {
  try {
    return (await io.readdir(dir)).filter((name) => !name.startsWith('.'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

/**
 * File sizes by path. A Maildir file never changes once in new/ or cur/ and its name is never
 * reused (a flag change or a move is a new name), so a name seen before needs no stat: a login
 * then costs two directory reads, not one stat per message. Bounded; oldest forgotten first.
 */
const rawSizes = new Map<string, number>();
const RAW_SIZES_MAX = 200_000;

/** The size of a regular file, undefined when it is gone or not a file. */
async function rawSizeOf(file: string, io: FileIo): Promise<number | undefined> {
  const known = rawSizes.get(file);
  if (known !== undefined) return known;
  let st: fs.Stats;
  try {
    st = await io.stat(file);
  } catch {
    return undefined; // moved or deleted meanwhile
  }
  if (!st.isFile()) return undefined;
  if (rawSizes.size >= RAW_SIZES_MAX) rawSizes.delete(rawSizes.keys().next().value as string);
  rawSizes.set(file, st.size);
  return st.size;
}

export interface SnapshotOptions {
  /**
   * First move what was delivered to new/ into cur/, with the `:2,` info (no flags) appended, as
   * Dovecot's POP3 does when it opens the INBOX (a sync with DROP_RECENT): the mail has now been
   * seen by a reader. The base name, and so the UIDL, does not change. Only with the maildrop
   * locked. A message that cannot be moved stays, and is listed, where it is.
   */
  moveNewToCur?: boolean;
  /** How to reach the folders (lists, moves, sizes); default: the thread pool. */
  io?: FileIo;
}

/**
 * List the messages now in new/ and cur/, oldest first. Later deliveries are not seen by the
 * session that took this snapshot (RFC 1939: numbering is fixed for the session).
 */
export async function snapshotMaildir(maildir: string, opts: SnapshotOptions = {}): Promise<MaildirMessage[]> {
  const newDir = path.join(maildir, 'new');
  const curDir = path.join(maildir, 'cur');
  // Both folders at once; what moves from new/ is then known by name without reading cur/ again.
  const io = opts.io ?? pooledIo;
  const [inCur, inNew] = await Promise.all([listFolder(curDir, io), listFolder(newDir, io)]);
  const files = inCur.map((name) => ({ name, file: path.join(curDir, name) }));
  const moved = await Promise.all(
    inNew.map(async (name) => {
      const stays = { name, file: path.join(newDir, name) };
      if (!opts.moveNewToCur) return stays;
      const to = name.includes(':') ? name : `${name}:2,`;
      try {
        await io.rename(stays.file, path.join(curDir, to));
        return { name: to, file: path.join(curDir, to) };
      } catch (err) {
        // Gone: another reader moved it since we listed new/ (it shows up next session). Otherwise it stays in new/.
        return (err as NodeJS.ErrnoException).code === 'ENOENT' ? undefined : stays;
      }
    }),
  );
  for (const f of moved) if (f !== undefined) files.push(f);
  // Sizes in parallel: one after another, each stat would wait for its own trip to the thread pool.
  const sizes = await Promise.all(files.map((f) => rawSizeOf(f.file, io)));
  const found: Array<{ baseName: string; path: string; rawSize: number }> = [];
  const seen = new Set<string>();
  files.forEach((f, i) => {
    const rawSize = sizes[i];
    if (rawSize === undefined) return;
    const baseName = maildirBaseName(f.name);
    if (seen.has(baseName)) return; // mid-rename by another reader: count it once
    seen.add(baseName);
    found.push({ baseName, path: f.file, rawSize });
  });
  found.sort((a, b) => deliveredAt(a.baseName) - deliveredAt(b.baseName) || (a.baseName < b.baseName ? -1 : a.baseName > b.baseName ? 1 : 0));
  const sized = await Promise.all(
    found.map(async (f) => {
      try {
        return { f, size: await sizeOf(f.path, f.baseName, f.rawSize) };
      } catch {
        return undefined;
      }
    }),
  );
  const messages: MaildirMessage[] = [];
  for (const item of sized) {
    if (item === undefined) continue;
    const { f, size } = item;
    messages.push({ baseName: f.baseName, path: f.path, size, rawSize: f.rawSize, uid: uidFor(f.baseName) });
  }
  return messages;
}

/**
 * Where a message is now: where the snapshot saw it, or, if another reader (an IMAP server)
 * moved it from new/ to cur/ or changed its flags, the file in cur/ with the same base name.
 */
export async function locateMessage(maildir: string, msg: MaildirMessage): Promise<string | undefined> {
  try {
    await fsp.access(msg.path);
    return msg.path;
  } catch {
    /* look elsewhere */
  }
  for (const sub of ['cur', 'new']) {
    let names: string[];
    try {
      names = await fsp.readdir(path.join(maildir, sub));
    } catch {
      continue;
    }
    const name = names.find((n) => maildirBaseName(n) === msg.baseName);
    if (name) return path.join(maildir, sub, name);
  }
  return undefined;
}

/**
 * Remove the messages marked for deletion (UPDATE state). A message already gone counts as
 * deleted. Returns how many were removed and the ones that could not be.
 */
export async function deleteMessages(maildir: string, messages: MaildirMessage[]): Promise<{ deleted: number; failed: MaildirMessage[] }> {
  let deleted = 0;
  const failed: MaildirMessage[] = [];
  for (const msg of messages) {
    const file = await locateMessage(maildir, msg);
    if (file === undefined) {
      deleted++;
      continue;
    }
    try {
      await fsp.unlink(file);
      deleted++;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') deleted++;
      else failed.push(msg);
    }
  }
  return { deleted, failed };
}
