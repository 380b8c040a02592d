// The replica's in-memory view: own counts plus the others' published objects, aging by bucket,
// the weighing of its own counts while blind, and the object it publishes.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { UsageLedger } from '../../src/limits/ledger.ts';
import type { LimitsPolicy } from '../../src/limits/policy.ts';
import { BUCKET_MS, WINDOW_MS } from '../../src/limits/usage.ts';

const T0 = Date.parse('2026-12-02T10:00:00Z');
const policy: LimitsPolicy = { perUser: { messagesPerHour: 10, recipientsPerHour: 0 }, perAddress: { messagesPerHour: 0, recipientsPerHour: 0 }, overrides: new Map() };
const demo = { user: 'demo', address: '127.0.0.1', recipients: 2 };

describe('UsageLedger', () => {
  it("sums its own counts and another replica's object, and publishes only its own", () => {
    const a = new UsageLedger({ replica: 'a' });
    const b = new UsageLedger({ replica: 'b' });
    for (let i = 0; i < 3; i++) a.count(demo, T0 + i);
    assert.equal(a.dirty, true);
    const published = a.snapshot(T0 + 10);
    assert.equal(a.dirty, false);
    assert.deepEqual(published.spec.buckets, [{ start: new Date(T0).toISOString(), users: { demo: { messages: 3, recipients: 6 } }, addresses: { '127.0.0.1': { messages: 3, recipients: 6 } } }]);
    b.upsertRemote(published, T0 + 20);
    b.count(demo, T0 + 30);
    assert.deepEqual(b.user('demo'), { messages: 4, recipients: 8 });
    assert.equal(b.replicas, 2);
    // A newer object replaces the old one's counts, it does not add to them.
    a.count(demo, T0 + 40);
    b.upsertRemote(a.snapshot(T0 + 50), T0 + 50);
    assert.deepEqual(b.user('demo'), { messages: 5, recipients: 10 });
    b.deleteRemote('a', T0 + 60);
    assert.deepEqual(b.user('demo'), { messages: 1, recipients: 2 });
    // Its own object in the watch is not counted twice.
    b.upsertRemote(b.snapshot(T0 + 70), T0 + 70);
    assert.deepEqual(b.user('demo'), { messages: 1, recipients: 2 });
  });

  it('forgets a bucket an hour after it ended, and the object shrinks', () => {
    const a = new UsageLedger({ replica: 'a' });
    a.count(demo, T0);
    a.count(demo, T0 + BUCKET_MS);
    assert.equal(a.user('demo')?.messages, 2);
    assert.equal(a.check(policy, { user: 'demo', pendingRecipients: 0 }, T0 + WINDOW_MS + BUCKET_MS - 1), undefined);
    assert.equal(a.user('demo')?.messages, 2);
    a.snapshot(T0 + WINDOW_MS);
    a.check(policy, { user: 'demo', pendingRecipients: 0 }, T0 + WINDOW_MS + BUCKET_MS);
    assert.equal(a.user('demo')?.messages, 1);
    assert.equal(a.dirty, true, 'an aged-out bucket is a change to publish');
    assert.equal(a.snapshot(T0 + WINDOW_MS + BUCKET_MS).spec.buckets.length, 1);
  });

  it('refuses once the sum over replicas reaches the limit', () => {
    const a = new UsageLedger({ replica: 'a' });
    const b = new UsageLedger({ replica: 'b' });
    for (let i = 0; i < 6; i++) a.count(demo, T0);
    for (let i = 0; i < 3; i++) b.count(demo, T0);
    b.upsertRemote(a.snapshot(T0), T0);
    assert.equal(b.check(policy, { user: 'demo', pendingRecipients: 0 }, T0), undefined);
    b.count(demo, T0);
    assert.deepEqual(b.check(policy, { user: 'demo', pendingRecipients: 0 }, T0), { kind: 'user_messages', subject: 'demo', used: 10, limit: 10 });
  });

  it('while blind, its new counts weigh for every replica it knows, so together they keep the limit', () => {
    const ledgers = ['a', 'b'].map((replica) => new UsageLedger({ replica }));
    const [a, b] = ledgers as [UsageLedger, UsageLedger];
    for (let i = 0; i < 4; i++) a.count(demo, T0);
    b.upsertRemote(a.snapshot(T0), T0);
    a.upsertRemote(b.snapshot(T0), T0);
    // An API outage: neither sees the other any more.
    for (const l of ledgers) l.setBlind(true);
    const relayed = ledgers.map((l) => {
      let n = 0;
      while (l.check(policy, { user: 'demo', pendingRecipients: 0 }, T0 + 1) === undefined) {
        l.count(demo, T0 + 1);
        n++;
      }
      return n;
    });
    assert.deepEqual(relayed, [3, 3], 'each takes half of the 6 left');
    // A long outage: the other's heartbeat ages out of sight, but it is still weighed for.
    const later = T0 + 20 * 60_000;
    assert.equal(a.check(policy, { user: 'demo', pendingRecipients: 0 }, later)?.kind, 'user_messages');
    assert.equal(a.replicas, 1);
    // Sight back: the weighing ends, the published objects say the rest.
    a.setBlind(false);
    assert.equal(a.user('demo')?.messages, 7);
    a.upsertRemote(b.snapshot(T0 + 2), T0 + 2);
    assert.equal(a.user('demo')?.messages, 10);
  });

  it('takes back its own object after a restart', () => {
    const before = new UsageLedger({ replica: 'a' });
    for (let i = 0; i < 5; i++) before.count(demo, T0);
    const restarted = new UsageLedger({ replica: 'a' });
    restarted.adoptOwn(before.snapshot(T0), T0 + 1);
    restarted.count(demo, T0 + 2);
    assert.deepEqual(restarted.user('demo'), { messages: 6, recipients: 12 });
    assert.equal(restarted.snapshot(T0 + 3).spec.buckets[0]?.users?.demo?.messages, 6);
  });
});
