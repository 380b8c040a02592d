// A user's Maildir as a POP3 maildrop: locked, listed once at login, streamed, deleted at UPDATE.
import { ensureMaildirFolders, snapshotMaildir, locateMessage, openMessageStream, deleteMessages, DotStuffer } from '../mail/maildir.ts';
import type { MaildirMessage } from '../mail/maildir.ts';
import { maildirPathFor } from '../mail/paths.ts';
import type { LockOptions } from './lock.ts';
import { lockMaildrop } from './lock.ts';
import type { Maildrop } from './session.ts';

export interface MaildropOptions {
  mailRoot: string;
  /** Dovecot-style location template under mailRoot, e.g. `%d/%n/Maildir`. */
  mailLocation: string;
  lock: LockOptions;
}

async function* encode(file: string, bodyLines: number | undefined): AsyncGenerator<Buffer> {
  const stuffer = new DotStuffer(bodyLines);
  const stream = openMessageStream(file);
  try {
    for await (const chunk of stream) {
      const out = stuffer.push(chunk as Buffer);
      if (out.length > 0) yield out;
      if (stuffer.done) break;
    }
  } finally {
    stream.destroy();
  }
  yield stuffer.end();
}

/** Lock and list the maildrop of `user`; throws MaildropInUseError when another session has it. */
export async function openMaildrop(user: string, opts: MaildropOptions): Promise<Maildrop> {
  const dir = maildirPathFor(opts.mailRoot, opts.mailLocation, user);
  await ensureMaildirFolders(dir);
  const lock = await lockMaildrop(dir, opts.lock);
  let messages: MaildirMessage[];
  try {
    messages = await snapshotMaildir(dir);
  } catch (err) {
    await lock.release();
    throw err;
  }
  return {
    messages,
    async *content(index: number, bodyLines?: number): AsyncGenerator<Buffer> {
      const msg = messages[index] as MaildirMessage;
      const file = await locateMessage(dir, msg);
      if (file === undefined) throw new Error(`message ${msg.baseName} is gone`);
      yield* encode(file, bodyLines);
    },
    async remove(indexes: number[]) {
      const { deleted, failed } = await deleteMessages(dir, indexes.map((i) => messages[i] as MaildirMessage));
      return { removed: deleted, failed: failed.length };
    },
    release: () => lock.release(),
  };
}
