// Password verification on a small pool of worker threads: a SHA512-CRYPT or bcrypt hash costs
// milliseconds of CPU, which must not stall every other session on the event loop.
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import type { HashAnswer, HashJob } from './hash-worker.ts';
import type { StoredPassword } from './schemes.ts';
import { cryptKind, isExpensive, verifyPassword } from './schemes.ts';
import { parseShaCryptSetting, ROUNDS_DEFAULT } from './sha-crypt.ts';

/** SHA512-CRYPT of at most the default rounds: a hash short enough to run on an idle event loop. */
function isBoundedShaCrypt(stored: StoredPassword): boolean {
  if (stored.scheme !== 'SHA512-CRYPT' && !(stored.scheme === 'CRYPT' && cryptKind(stored.value) === 'sha')) return false;
  const setting = parseShaCryptSetting(stored.value);
  return setting !== undefined && setting.variant === '6' && setting.rounds <= ROUNDS_DEFAULT;
}

/**
 * Jobs handed to one thread at a time: with a second one waiting in its port, a thread goes from
 * one hash to the next without going to sleep and being woken for each (at c=16 the sleeps and
 * wake-ups cost ~0.2-0.4 ms of CPU per login). The least busy thread gets the next job.
 */
const JOBS_PER_THREAD = 2;

export interface PasswordVerifierOptions {
  /** Worker threads; default: the number of CPUs. 0 verifies on the calling thread. */
  threads?: number;
  /** Jobs waiting beyond this are refused (the login answers [SYS/TEMP]) instead of queueing without end. */
  maxQueue?: number;
  /**
   * Whether nothing else on the calling thread's event loop would wait for a hash now (the POP3
   * server: no other connection in this process). A hash of bounded cost (SHA512-CRYPT of at most
   * the default 5000 rounds, ~1.5 ms) then runs right here, saving the trip to a worker thread and
   * back (~0.15 ms of a login that nobody else waits behind) -- unless the machine is busy (below).
   */
  idle?: () => boolean;
  now?: () => number;
}

/**
 * A hash on the calling thread that took this much longer than the CPU it used was held up by the
 * scheduler: the machine is busy, and a thread that does the hash and every session's small steps
 * alike is then scheduled later for all of them (at load 15 on 2 CPUs a login took twice as long as
 * with the hash on a worker thread). Hashes go to the worker threads for INLINE_PAUSE_MS after.
 */
const HELD_UP = { ratio: 1.5, slackMs: 0.5 };
const INLINE_PAUSE_MS = 10_000;

export class VerifierBusyError extends Error {
  override readonly name = 'VerifierBusyError';
}

interface Pending {
  resolve: (ok: boolean) => void;
  reject: (err: Error) => void;
}

interface Slot {
  worker: Worker;
  busy: number;
}

export class PasswordVerifier {
  private readonly slots: Slot[] = [];
  private readonly pending = new Map<number, Pending & { slot: Slot }>();
  private readonly queue: Array<{ job: HashJob } & Pending> = [];
  private readonly maxQueue: number;
  private readonly idle: (() => boolean) | undefined;
  private readonly now: () => number;
  /** No hash on the calling thread before this time (see HELD_UP). */
  private inlineAgainAt = -Infinity;
  private nextId = 1;
  private closed = false;

  constructor(opts: PasswordVerifierOptions = {}) {
    const threads = opts.threads ?? Math.max(1, os.availableParallelism());
    this.maxQueue = opts.maxQueue ?? 1000;
    this.idle = opts.idle;
    this.now = opts.now ?? (() => performance.now());
    for (let i = 0; i < threads; i++) this.slots.push(this.spawn());
  }

  private spawn(): Slot {
    // The sources run as .ts (tests, npm start) and as compiled .js (the image): name the sibling.
    const worker = new Worker(new URL(import.meta.url.endsWith('.ts') ? './hash-worker.ts' : './hash-worker.js', import.meta.url));
    worker.unref();
    const slot: Slot = { worker, busy: 0 };
    worker.on('message', (answer: HashAnswer) => {
      const p = this.pending.get(answer.id);
      if (!p) return;
      this.pending.delete(answer.id);
      slot.busy--;
      if (answer.error !== undefined) p.reject(new Error(answer.error));
      else p.resolve(answer.ok);
      this.drain();
    });
    worker.on('error', (err: Error) => this.replace(slot, err));
    worker.on('exit', (code) => {
      if (!this.closed) this.replace(slot, new Error(`password worker exited with code ${code}`));
    });
    return slot;
  }

  /** A dead worker fails its jobs (the logins answer [SYS/TEMP]) and is replaced. */
  private replace(slot: Slot, err: Error): void {
    const index = this.slots.indexOf(slot);
    if (index === -1) return;
    for (const [id, p] of this.pending) {
      if (p.slot === slot) {
        this.pending.delete(id);
        p.reject(err);
      }
    }
    void slot.worker.terminate();
    if (!this.closed) this.slots[index] = this.spawn();
    this.drain();
  }

  private drain(): void {
    while (this.queue.length > 0) {
      const slot = this.slots.reduce<Slot | undefined>((best, s) => (s.busy < JOBS_PER_THREAD && (best === undefined || s.busy < best.busy) ? s : best), undefined);
      if (!slot) return;
      const item = this.queue.shift() as { job: HashJob } & Pending;
      slot.busy++;
      this.pending.set(item.job.id, { resolve: item.resolve, reject: item.reject, slot });
      slot.worker.postMessage(item.job);
    }
  }

  verify(stored: StoredPassword, password: string): Promise<boolean> {
    if (this.closed) return Promise.reject(new Error('password verifier is closed'));
    if (this.slots.length === 0 || !isExpensive(stored)) return verifyPassword(stored, password);
    if (this.pending.size === 0 && this.queue.length === 0 && isBoundedShaCrypt(stored) && this.idle?.() === true && this.now() >= this.inlineAgainAt) {
      return this.verifyHere(stored, password);
    }
    if (this.queue.length >= this.maxQueue) return Promise.reject(new VerifierBusyError('too many logins waiting for password checks'));
    return new Promise((resolve, reject) => {
      this.queue.push({ job: { id: this.nextId++, stored, password }, resolve, reject });
      this.drain();
    });
  }

  /** On the calling thread, noting whether the scheduler held it up meanwhile. */
  private async verifyHere(stored: StoredPassword, password: string): Promise<boolean> {
    const started = this.now();
    // The process's CPU, not the thread's: the thread's is counted in whole ticks here. The worker
    // threads are idle meanwhile (nothing pending), so this is mostly the hash.
    const cpu = process.cpuUsage();
    try {
      return await verifyPassword(stored, password);
    } finally {
      const used = process.cpuUsage(cpu);
      const cpuMs = (used.user + used.system) / 1000;
      const ended = this.now();
      if (ended - started > cpuMs * HELD_UP.ratio + HELD_UP.slackMs) this.inlineAgainAt = ended + INLINE_PAUSE_MS;
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const item of this.queue.splice(0)) item.reject(new Error('password verifier is closed'));
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
    for (const p of this.pending.values()) p.reject(new Error('password verifier is closed'));
    this.pending.clear();
  }
}
