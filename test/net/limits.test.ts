import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConnectionLimiter, RateLimiter } from '../../src/net/limits.ts';

describe('ConnectionLimiter', () => {
  it('limits per address and in total, and releases once', () => {
    const lim = new ConnectionLimiter({ maxTotal: 3, maxPerAddress: 2 });
    const a1 = lim.acquire('192.0.2.1');
    const a2 = lim.acquire('::ffff:192.0.2.1');
    assert.ok(a1.ok && a2.ok);
    assert.deepEqual(lim.acquire('192.0.2.1'), { ok: false, reason: 'per-address' });
    const b1 = lim.acquire('2001:db8::1');
    assert.ok(b1.ok);
    assert.deepEqual(lim.acquire('192.0.2.9'), { ok: false, reason: 'total' });
    a1.release();
    a1.release();
    assert.equal(lim.total, 2);
    assert.equal(lim.countFor('192.0.2.1'), 1);
    assert.ok(lim.acquire('192.0.2.1').ok);
  });

  it('0 means unlimited', () => {
    const lim = new ConnectionLimiter({ maxTotal: 0, maxPerAddress: 0 });
    for (let i = 0; i < 1000; i++) assert.ok(lim.acquire('192.0.2.1').ok);
    assert.equal(lim.total, 1000);
  });
});

describe('RateLimiter', () => {
  it('allows a burst, then refills over time', () => {
    const rl = new RateLimiter({ capacity: 3, refillPerSecond: 1, maxKeys: 10 });
    const t = 1_000_000;
    assert.ok(rl.take('a', 1, t));
    assert.ok(rl.take('a', 1, t));
    assert.ok(rl.take('a', 1, t));
    assert.ok(!rl.take('a', 1, t));
    assert.equal(rl.retryAfterMs('a', 1, t), 1000);
    assert.ok(!rl.take('a', 1, t + 999));
    assert.ok(rl.take('a', 1, t + 2000));
    assert.ok(rl.take('b', 1, t), 'keys are independent');
    // Two seconds refilled two tokens; one is left.
    assert.ok(rl.wouldAllow('a', 1, t + 2000));
    assert.ok(!rl.wouldAllow('a', 2, t + 2000));
    assert.ok(rl.wouldAllow('a', 2, t + 3000));
  });

  it('never holds more than capacity', () => {
    const rl = new RateLimiter({ capacity: 2, refillPerSecond: 100, maxKeys: 10 });
    rl.take('a', 1, 0);
    assert.ok(rl.take('a', 2, 1_000_000));
    assert.ok(!rl.take('a', 1, 1_000_000));
  });

  it('keeps memory bounded by forgetting the least recently used key', () => {
    const rl = new RateLimiter({ capacity: 1, refillPerSecond: 0, maxKeys: 100 });
    for (let i = 0; i < 10_000; i++) rl.take(`k${i}`, 1, 0);
    assert.equal(rl.size, 100);
    // k9999 is remembered (empty), k0 was forgotten (full again).
    assert.ok(!rl.take('k9999', 1, 0));
    assert.ok(rl.take('k0', 1, 0));
    assert.equal(rl.retryAfterMs('k0', 1, 0), Infinity);
  });

  it('reset forgets a key', () => {
    const rl = new RateLimiter({ capacity: 1, refillPerSecond: 0, maxKeys: 10 });
    rl.take('u', 1, 0);
    assert.ok(!rl.take('u', 1, 0));
    rl.reset('u');
    assert.ok(rl.take('u', 1, 0));
  });

  it('refuses nonsense options', () => {
    assert.throws(() => new RateLimiter({ capacity: 0, refillPerSecond: 1, maxKeys: 1 }), RangeError);
  });
});
