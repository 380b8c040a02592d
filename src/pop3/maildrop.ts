// A user's Maildir as a POP3 maildrop: locked, new/ mail moved to cur/ and listed once at login,
// streamed, deleted at UPDATE.
import { deleteMessages, ensureMaildirFolders, snapshotMaildir } from '../mail/maildir.ts';
import type { MaildirMessage } from '../mail/maildir.ts';
import { maildirPathFor } from '../mail/paths.ts';
import type { LockOptions } from './lock.ts';
import { lockMaildrop } from './lock.ts';
import { messageData, recycleMessageData } from './message-data.ts';
import type { Maildrop } from './session.ts';

export interface MaildropOptions {
  mailRoot: string;
  /** Dovecot-style location template under mailRoot, e.g. `%d/%n/Maildir`. */
  mailLocation: string;
  lock: LockOptions;
}

/** Maildirs known to have their folders (so a login does not pay three mkdir calls). */
const prepared = new Set<string>();

async function prepare(dir: string): Promise<void> {
  if (prepared.has(dir)) return;
  await ensureMaildirFolders(dir);
  if (prepared.size >= 100_000) prepared.clear();
  prepared.add(dir);
}

/** Lock and list the maildrop of `user`; throws MaildropInUseError when another session has it. */
export async function openMaildrop(user: string, opts: MaildropOptions): Promise<Maildrop> {
  const dir = maildirPathFor(opts.mailRoot, opts.mailLocation, user);
  await prepare(dir);
  let lock;
  try {
    lock = await lockMaildrop(dir, opts.lock);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    // The Maildir was removed since we last saw it: make it again.
    prepared.delete(dir);
    await prepare(dir);
    lock = await lockMaildrop(dir, opts.lock);
  }
  let messages: MaildirMessage[];
  try {
    messages = await snapshotMaildir(dir, { moveNewToCur: true, io: opts.lock.io?.() });
  } catch (err) {
    await lock.release();
    throw err;
  }
  return {
    messages,
    content: (index: number, bodyLines?: number) => messageData(dir, messages[index] as MaildirMessage, bodyLines),
    recycle: recycleMessageData,
    async remove(indexes: number[]) {
      const { deleted, failed } = await deleteMessages(dir, indexes.map((i) => messages[i] as MaildirMessage));
      return { removed: deleted, failed: failed.length };
    },
    release: () => lock.release(),
  };
}
