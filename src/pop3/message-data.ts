// A Maildir message as POP3 multi-line data, read in chunks into pooled buffers: the I/O around
// multiline.ts's encoder.
import fs from 'node:fs';
import { locateMessage, type MaildirMessage } from '../mail/maildir.ts';
import { DotStuffer } from './multiline.ts';

// The callback API, not fs/promises: a RETR is two trips to the thread pool (open, read) and a
// close nobody waits for, without a FileHandle and its promises per message.
function openFile(file: string): Promise<number> {
  return new Promise((resolve, reject) => fs.open(file, 'r', (err, fd) => (err ? reject(err) : resolve(fd))));
}

function readAt(fd: number, buf: Buffer, position: number): Promise<number> {
  return new Promise((resolve, reject) => fs.read(fd, buf, 0, buf.length, position, (err, n) => (err ? reject(err) : resolve(n))));
}

/** Open a message where the snapshot saw it, or wherever another reader moved it; undefined when gone. */
async function openMessage(maildir: string, msg: MaildirMessage): Promise<number | undefined> {
  try {
    return await openFile(msg.path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const moved = await locateMessage(maildir, msg);
  return moved === undefined ? undefined : openFile(moved);
}

/**
 * A message as POP3 multi-line data (RETR, or TOP with `bodyLines`), read in chunks: never the
 * whole of a large message in memory. Throws before the first chunk when the message is gone.
 * RETR chunks come from a pool: hand each back with recycleMessageData once it has been written.
 */
export async function* messageData(maildir: string, msg: MaildirMessage, bodyLines?: number): AsyncGenerator<Buffer> {
  const fd = await openMessage(maildir, msg);
  if (fd === undefined) throw new Error(`message ${msg.baseName} is gone`);
  const stuffer = new DotStuffer(bodyLines);
  // The encoder copies what it returns, so a read buffer serves the whole message, and then the
  // next one (from a small pool: fresh buffers per RETR keep the garbage collector busy).
  const buf = readBuffers.pop() ?? Buffer.allocUnsafe(READ_BUFFER_SIZE);
  let total = 0;
  try {
    for (;;) {
      const bytesRead = await readAt(fd, buf, total);
      if (bytesRead === 0) break;
      total += bytesRead;
      const data = buf.subarray(0, bytesRead);
      // Maildir files do not change once delivered: the size seen at login is the end.
      const last = total >= msg.rawSize;
      if (bodyLines === undefined) {
        const target = takeOutputBuffer();
        const encoded = stuffer.push(data, target); // at the start of target: it has room for the worst case
        if (!last) {
          yield encoded;
          continue;
        }
        // The terminator in the same chunk: the reply to a RETR of a typical message is one write.
        const tail = stuffer.end();
        tail.copy(target, encoded.length);
        yield target.subarray(0, encoded.length + tail.length);
        return;
      }
      const out = stuffer.push(data);
      if (out.length > 0) yield out;
      if (stuffer.done || last) break;
    }
  } finally {
    if (readBuffers.length < BUFFER_POOL) readBuffers.push(buf);
    fs.close(fd, () => undefined);
  }
  yield stuffer.end();
}

const READ_BUFFER_SIZE = 128 * 1024;
const BUFFER_POOL = 64;
const readBuffers: Buffer[] = [];
/** `\r\n.\r\n`, the longest terminator. */
const TERMINATOR_ROOM = 5;
/** Encoded RETR data: up to twice what was read. Pooled by their memory, so a slice finds its way back. */
const outputBuffers: Buffer[] = [];
const pooledOutput = new WeakMap<ArrayBufferLike, Buffer>();

function takeOutputBuffer(): Buffer {
  const reused = outputBuffers.pop();
  if (reused !== undefined) return reused;
  const fresh = Buffer.allocUnsafeSlow(2 * READ_BUFFER_SIZE + TERMINATOR_ROOM);
  pooledOutput.set(fresh.buffer, fresh);
  return fresh;
}

/**
 * A chunk from messageData has been written (the socket no longer needs it): its memory may
 * serve another message. Anything else is ignored; a chunk must be given back at most once.
 */
export function recycleMessageData(chunk: Buffer): void {
  const whole = pooledOutput.get(chunk.buffer);
  if (whole !== undefined && outputBuffers.length < BUFFER_POOL) outputBuffers.push(whole);
}
