// The few file operations of a POP3 login (the maildrop lock, listing the Maildir), either through
// libuv's thread pool (the default) or on the calling thread. The second is for a process with
// nothing else to do: there each trip to the pool costs ~0.1-0.2 ms here, most of it waking
// threads, against a few microseconds for the call itself. Same calls, same errors, as promises.
import fs from 'node:fs';
import fsp from 'node:fs/promises';

export interface FileIo {
  open: (file: string, flags: string, mode: number) => Promise<number>;
  write: (fd: number, text: string) => Promise<number>;
  /** Read into `buf` from `position`; the bytes read. */
  read: (fd: number, buf: Buffer, position: number) => Promise<number>;
  fstat: (fd: number) => Promise<fs.Stats>;
  stat: (file: string) => Promise<fs.Stats>;
  readdir: (dir: string) => Promise<string[]>;
  rename: (from: string, to: string) => Promise<void>;
  unlink: (file: string) => Promise<void>;
  /** Close, nobody waits for it. */
  close: (fd: number) => void;
}

const call = <T>(run: (cb: (err: NodeJS.ErrnoException | null, value: T) => void) => void): Promise<T> =>
  new Promise((resolve, reject) => run((err, value) => (err ? reject(err) : resolve(value))));

/** Through the thread pool: the event loop goes on meanwhile. */
export const pooledIo: FileIo = {
  open: (file, flags, mode) => call((cb) => fs.open(file, flags, mode, cb)),
  write: (fd, text) => call((cb) => fs.write(fd, text, cb)),
  read: (fd, buf, position) => call((cb) => fs.read(fd, buf, 0, buf.length, position, cb)),
  fstat: (fd) => call((cb) => fs.fstat(fd, cb)),
  stat: (file) => fsp.stat(file),
  readdir: (dir) => fsp.readdir(dir),
  rename: (from, to) => fsp.rename(from, to),
  unlink: (file) => fsp.unlink(file),
  close: (fd) => fs.close(fd, () => undefined),
};

const now = <T>(run: () => T): Promise<T> => {
  try {
    return Promise.resolve(run());
  } catch (err) {
    return Promise.reject(err instanceof Error ? err : new Error(String(err)));
  }
};

/** On the calling thread: only where nothing else waits on its event loop. */
export const inlineIo: FileIo = {
  open: (file, flags, mode) => now(() => fs.openSync(file, flags, mode)),
  write: (fd, text) => now(() => fs.writeSync(fd, text)),
  read: (fd, buf, position) => now(() => fs.readSync(fd, buf, 0, buf.length, position)),
  fstat: (fd) => now(() => fs.fstatSync(fd)),
  stat: (file) => now(() => fs.statSync(file)),
  readdir: (dir) => now(() => fs.readdirSync(dir)),
  rename: (from, to) => now(() => fs.renameSync(from, to)),
  unlink: (file) => now(() => fs.unlinkSync(file)),
  close: (fd) => {
    try {
      fs.closeSync(fd);
    } catch {
      /* as with the callback close: nobody waits for it */
    }
  },
};

export interface ResponsiveIoOptions {
  /** Calls on the calling thread that each take longer than this (ms), `slowCalls` in a row, mean the volume is slow now. */
  slowCallMs: number;
  slowCalls: number;
  /** Once slow, go through the pool for this long (ms), then try the calling thread again. */
  poolForMs: number;
  now?: () => number;
}

/**
 * The calling thread while the volume answers in microseconds (a local disk: a few µs a call,
 * against ~0.1-0.2 ms a trip to the pool), the pool for a while once calls take long (a network
 * volume having a slow moment): slow calls then hold up the event loop a few times, not at every
 * login. Only calls slow one after another count: on a busy machine the scheduler holds up a call
 * now and then (wall time), where a slow volume is slow at every call. `alone()`: nothing else waits
 * on this event loop, so the calling thread is always fine.
 */
export function responsiveIo(alone: () => boolean, opts: ResponsiveIoOptions): () => FileIo {
  const now = opts.now ?? (() => performance.now());
  let slowInARow = 0;
  let poolUntil = -Infinity;
  const timed =
    <A extends unknown[], R>(call: (...args: A) => R) =>
    (...args: A): R => {
      const started = now();
      try {
        return call(...args);
      } finally {
        const ended = now();
        slowInARow = ended - started > opts.slowCallMs ? slowInARow + 1 : 0;
        if (slowInARow >= opts.slowCalls) {
          poolUntil = ended + opts.poolForMs;
          slowInARow = 0; // judged afresh when the calling thread is tried again
        }
      }
    };
  const io: FileIo = {
    open: timed(inlineIo.open),
    write: timed(inlineIo.write),
    read: timed(inlineIo.read),
    fstat: timed(inlineIo.fstat),
    stat: timed(inlineIo.stat),
    readdir: timed(inlineIo.readdir),
    rename: timed(inlineIo.rename),
    unlink: timed(inlineIo.unlink),
    close: timed(inlineIo.close),
  };
  return () => (alone() || now() >= poolUntil ? io : pooledIo);
}
