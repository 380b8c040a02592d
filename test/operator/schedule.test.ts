// The operator's pure parts: decisions on a fresh read, backoff, and the queue of due times
// (driven by a hand-made clock, no sockets).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { RelayGrant } from '../../src/grants/types.ts';
import { backoffMs, decide, DueQueue, isDue, MAX_TIMER_DELAY_MS, timerDelayMs, type Timers } from '../../src/operator/schedule.ts';

function grant(expiresAt: string, extra: Partial<RelayGrant['metadata']> = {}): RelayGrant {
  return {
    apiVersion: 'kubedrac.io/v1alpha1',
    kind: 'RelayGrant',
    metadata: { name: 'v4-192.0.2.1', uid: 'u1', resourceVersion: '7', ...extra },
    spec: { address: '192.0.2.1', source: 'pop3', expiresAt },
  };
}

/** Timers on a clock the test moves by hand. */
class ManualTimers implements Timers {
  nowMs = 0;
  private next = 1;
  readonly pending = new Map<number, { at: number; fn: () => void }>();
  /** Every delay ever asked for, to check the clamp. */
  readonly delays: number[] = [];
  now(): number {
    return this.nowMs;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    this.delays.push(ms);
    const id = this.next++;
    this.pending.set(id, { at: this.nowMs + ms, fn });
    return id;
  }
  clearTimeout(handle: unknown): void {
    this.pending.delete(handle as number);
  }
  advance(ms: number): void {
    const end = this.nowMs + ms;
    for (;;) {
      const due = [...this.pending.entries()].filter(([, t]) => t.at <= end).sort((a, b) => a[1].at - b[1].at)[0];
      if (!due) break;
      this.pending.delete(due[0]);
      this.nowMs = Math.max(this.nowMs, due[1].at);
      due[1].fn();
    }
    this.nowMs = end;
  }
}

describe('decide', () => {
  const t0 = Date.parse('2026-01-01T00:00:00Z');
  it('is done when the grant is gone or already being deleted', () => {
    assert.deepEqual(decide(undefined, 30_000, t0), { action: 'done', why: 'gone' });
    assert.deepEqual(decide(grant('2025-01-01T00:00:00Z', { deletionTimestamp: '2026-01-01T00:00:00Z' }), 30_000, t0), { action: 'done', why: 'deleting' });
  });
  it('reschedules a grant that is not due, at expiresAt + grace', () => {
    assert.deepEqual(decide(grant('2026-01-01T00:10:00Z'), 30_000, t0), { action: 'reschedule', atMs: t0 + 10 * 60_000 + 30_000 });
    // expired, but within the grace period: not yet
    assert.deepEqual(decide(grant('2025-12-31T23:59:50Z'), 30_000, t0), { action: 'reschedule', atMs: t0 + 20_000 });
  });
  it('deletes a due grant with the uid and resourceVersion it read', () => {
    assert.deepEqual(decide(grant('2025-12-31T23:59:30Z'), 30_000, t0), { action: 'delete', uid: 'u1', resourceVersion: '7', expiresAtMs: t0 - 30_000 });
  });
  it('leaves a grant with an unreadable expiresAt alone', () => {
    assert.equal(decide(grant('tomorrow'), 0, t0).action, 'skip');
  });
  it('counts grace for isDue', () => {
    assert.equal(isDue(1000, 500, 1499), false);
    assert.equal(isDue(1000, 500, 1500), true);
  });
});

describe('timer delays and backoff', () => {
  it('clamps delays to 0 .. 2^31-1 ms', () => {
    assert.equal(timerDelayMs(100, 200), 0);
    assert.equal(timerDelayMs(300, 200), 100);
    assert.equal(timerDelayMs(10 * 365 * 86_400_000, 0), MAX_TIMER_DELAY_MS);
  });
  it('backs off exponentially up to 30 s, with jitter', () => {
    const mid = () => 0.5;
    assert.equal(backoffMs(1, mid), 500);
    assert.equal(backoffMs(2, mid), 1000);
    assert.equal(backoffMs(5, mid), 8000);
    assert.equal(backoffMs(50, mid), 30_000);
    assert.equal(backoffMs(1, () => 0), 375);
    assert.equal(backoffMs(1, () => 1), 625);
  });
});

/** A DueQueue and its owner, a plain map of key -> due time (the collector's is the grant cache). */
class KeyedScheduler {
  private readonly due = new Map<string, number>();
  readonly queue: DueQueue;
  constructor(fire: (key: string) => void, timers: Timers) {
    this.queue = new DueQueue(
      {
        fire: (key) => {
          this.due.delete(key);
          fire(key);
        },
        dueOf: (key) => this.due.get(key),
        liveKeys: () => this.due.size,
        forEachLive: (fn) => this.due.forEach((at, key) => fn(key, at)),
      },
      timers,
    );
  }
  get size(): number {
    return this.due.size;
  }
  schedule(key: string, at: number): void {
    this.due.set(key, at);
    this.queue.push(key, at);
  }
  cancel(key: string): void {
    this.due.delete(key);
  }
  cancelAll(): void {
    this.due.clear();
    this.queue.clear();
  }
}

describe('DueQueue', () => {
  it('fires each key once at its time', () => {
    const timers = new ManualTimers();
    const fired: string[] = [];
    const s = new KeyedScheduler((k) => fired.push(`${k}@${timers.now()}`), timers);
    s.schedule('a', 100);
    s.schedule('b', 50);
    timers.advance(200);
    assert.deepEqual(fired, ['b@50', 'a@100']);
    assert.equal(s.size, 0);
  });
  it('replaces a key\'s timer when it is scheduled again (a renewal moves it)', () => {
    const timers = new ManualTimers();
    const fired: string[] = [];
    const s = new KeyedScheduler((k) => fired.push(`${k}@${timers.now()}`), timers);
    s.schedule('a', 100);
    timers.advance(90);
    s.schedule('a', 1000);
    timers.advance(500);
    assert.deepEqual(fired, []);
    assert.equal(timers.pending.size, 1, 'one Node timer at a time');
    timers.advance(500);
    assert.deepEqual(fired, ['a@1000']);
  });
  it('cancels', () => {
    const timers = new ManualTimers();
    const fired: string[] = [];
    const s = new KeyedScheduler((k) => fired.push(k), timers);
    s.schedule('a', 100);
    s.schedule('b', 100);
    s.cancel('a');
    timers.advance(100);
    assert.deepEqual(fired, ['b']);
    s.schedule('c', 200);
    s.cancelAll();
    timers.advance(1000);
    assert.deepEqual(fired, ['b']);
    assert.equal(timers.pending.size, 0);
  });
  it('fires a past time at once', () => {
    const timers = new ManualTimers();
    timers.nowMs = 5000;
    const fired: string[] = [];
    const s = new KeyedScheduler((k) => fired.push(k), timers);
    s.schedule('late', 10);
    assert.deepEqual(timers.delays, [0]);
    timers.advance(0);
    assert.deepEqual(fired, ['late']);
  });
  it('drops stale entries: a key moved many times leaves a bounded heap and fires once', () => {
    const timers = new ManualTimers();
    const fired: string[] = [];
    const s = new KeyedScheduler((k) => fired.push(`${k}@${timers.now()}`), timers);
    for (let i = 1; i <= 10_000; i++) s.schedule('renewed', 1000 + i);
    s.schedule('other', 5000);
    assert.ok(s.queue.length <= 2 * s.size + 1025, `heap of ${s.queue.length}`);
    timers.advance(20_000);
    assert.deepEqual(fired, ['other@5000', 'renewed@11000']);
  });
  it('fires a key scheduled twice for the same time once', () => {
    const timers = new ManualTimers();
    const fired: string[] = [];
    const s = new KeyedScheduler((k) => fired.push(k), timers);
    s.schedule('a', 100);
    s.schedule('a', 100);
    timers.advance(200);
    assert.deepEqual(fired, ['a']);
  });
  it('chains waits beyond Node\'s timer limit and never fires early', () => {
    const timers = new ManualTimers();
    const fired: number[] = [];
    const s = new KeyedScheduler(() => fired.push(timers.now()), timers);
    const far = 3 * MAX_TIMER_DELAY_MS + 12345;
    s.schedule('far', far);
    assert.ok(timers.delays.every((d) => d <= MAX_TIMER_DELAY_MS));
    timers.advance(far - 1);
    assert.deepEqual(fired, []);
    timers.advance(1);
    assert.deepEqual(fired, [far]);
    assert.ok(timers.delays.every((d) => d <= MAX_TIMER_DELAY_MS), `delays ${timers.delays.join(',')}`);
  });
});

describe('DueQueue against a model', () => {
  it('fires exactly the live keys, each at its last scheduled time, in time order', () => {
    // Random schedules, replacements and cancels, checked against a plain map.
    let seed = 42;
    const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    const timers = new ManualTimers();
    const fired: [string, number][] = [];
    const s = new KeyedScheduler((k) => fired.push([k, timers.now()]), timers);
    const model = new Map<string, number>();
    for (let step = 0; step < 3000; step++) {
      const key = `k${Math.floor(random() * 200)}`;
      const r = random();
      if (r < 0.7) {
        const at = timers.now() + Math.floor(random() * 500);
        s.schedule(key, at);
        model.set(key, at);
      } else if (r < 0.8) {
        s.cancel(key);
        model.delete(key);
      } else {
        const before = fired.length;
        timers.advance(Math.floor(random() * 100));
        for (const [k, at] of fired.slice(before)) {
          assert.equal(model.get(k), at, `${k} fired at its scheduled time`);
          model.delete(k);
        }
      }
      assert.equal(s.size, model.size);
      assert.ok(timers.pending.size <= 1, 'one Node timer at most');
    }
    for (const [k, at] of fired) assert.ok(at >= 0 && k.startsWith('k'));
    const times = fired.map(([, at]) => at);
    assert.deepEqual(times, [...times].sort((a, b) => a - b));
  });
});
