// The pure side of relay limits: window arithmetic, sums over published objects, the decision at
// RCPT, and the `smtp.limits` config with its errors.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError, ConfigReader } from '../../src/config/reader.ts';
import { parseLimitsConfig } from '../../src/limits/config.ts';
import { checkRelayLimit, limitReply, type LimitsPolicy } from '../../src/limits/policy.ts';
import type { RelayUsage, UsageBucket } from '../../src/limits/types.ts';
import { BUCKET_MS, bucketCounts, bucketStartMs, HEARTBEAT_MS, replicaIsActive, publishedLimitExceeded, sumUsage, topUsers, usageIsLive, WINDOW_MS } from '../../src/limits/usage.ts';

const T0 = Date.parse('2026-12-02T10:00:00Z');
const iso = (ms: number) => new Date(ms).toISOString();

function usage(replica: string, buckets: UsageBucket[]): RelayUsage {
  return { apiVersion: 'kubedrac.io/v1alpha1', kind: 'RelayUsage', metadata: { name: replica }, spec: { replica, bucketSeconds: 300, publishedAt: iso(T0), buckets } };
}

const policy: LimitsPolicy = {
  perUser: { messagesPerHour: 3, recipientsPerHour: 5 },
  perAddress: { messagesPerHour: 10, recipientsPerHour: 0 },
  overrides: new Map([['vip', { messagesPerHour: 100, recipientsPerHour: 100 }]]),
};

describe('usage window', () => {
  it('counts a bucket while any part of it lies in the last hour, never a future one', () => {
    const start = bucketStartMs(T0 + 7 * 60_000);
    assert.equal(start, T0 + BUCKET_MS);
    assert.equal(bucketCounts(start, start), true);
    assert.equal(bucketCounts(start, start + WINDOW_MS + BUCKET_MS - 1), true);
    assert.equal(bucketCounts(start, start + WINDOW_MS + BUCKET_MS), false);
    assert.equal(bucketCounts(start, start - 1), false);
  });

  it('sums users and addresses over replicas and buckets in the window only', () => {
    const objects = [
      usage('a', [
        { start: iso(T0 - WINDOW_MS - BUCKET_MS), users: { demo: { messages: 50, recipients: 50 } } }, // aged out
        { start: iso(T0), users: { demo: { messages: 1, recipients: 2 } }, addresses: { '127.0.0.1': { messages: 1, recipients: 2 } } },
      ]),
      usage('b', [{ start: iso(T0 - 30 * 60_000), users: { demo: { messages: 2, recipients: 2 }, ideal: { messages: 1, recipients: 9 } } }]),
    ];
    const sums = sumUsage(objects, T0 + 60_000);
    assert.deepEqual(sums.user('demo'), { messages: 3, recipients: 4 });
    assert.deepEqual(sums.user('ideal'), { messages: 1, recipients: 9 });
    assert.deepEqual(sums.address('127.0.0.1'), { messages: 1, recipients: 2 });
    assert.deepEqual(topUsers(sums, 1), [{ user: 'ideal', messages: 1, recipients: 9 }]);
    assert.equal(publishedLimitExceeded(objects, policy, { user: 'demo', address: '127.0.0.1' }, T0 + 60_000)?.kind, 'user_messages');
    assert.equal(publishedLimitExceeded(objects, policy, { user: 'ideal' }, T0 + 60_000)?.kind, 'user_recipients');
    assert.equal(publishedLimitExceeded(objects, policy, { user: 'nobody', address: '10.9.9.9' }, T0 + 60_000), undefined);
  });

  it('an object is live while a bucket still counts or its replica writes (heartbeats)', () => {
    const u = usage('a', [{ start: iso(T0), users: { demo: { messages: 1, recipients: 1 } } }]);
    assert.equal(usageIsLive(u, T0 + WINDOW_MS), true);
    assert.equal(usageIsLive(u, T0 + WINDOW_MS + BUCKET_MS), false);
    assert.equal(replicaIsActive(u, T0 + 3 * HEARTBEAT_MS - 1), true);
    assert.equal(usageIsLive(usage('a', []), T0 + 3 * HEARTBEAT_MS - 1), true);
    assert.equal(usageIsLive(usage('a', []), T0 + 3 * HEARTBEAT_MS), false);
  });
});

describe('checkRelayLimit', () => {
  const view = (users: Record<string, [number, number]>, addresses: Record<string, [number, number]> = {}) => ({
    user: (u: string) => (users[u] ? { messages: users[u][0], recipients: users[u][1] } : undefined),
    address: (a: string) => (addresses[a] ? { messages: addresses[a][0], recipients: addresses[a][1] } : undefined),
  });

  it('lets a user relay up to the limit, then names the limit that was reached', () => {
    assert.equal(checkRelayLimit(view({ demo: [2, 2] }), policy, { user: 'demo', address: '127.0.0.1', pendingRecipients: 0 }), undefined);
    assert.deepEqual(checkRelayLimit(view({ demo: [3, 3] }), policy, { user: 'demo', pendingRecipients: 0 }), {
      kind: 'user_messages',
      subject: 'demo',
      used: 3,
      limit: 3,
    });
  });

  it("counts the transaction's pending recipients against the recipient limit", () => {
    const subject = { user: 'demo', pendingRecipients: 2 };
    assert.equal(checkRelayLimit(view({ demo: [1, 2] }), policy, subject), undefined);
    assert.equal(checkRelayLimit(view({ demo: [1, 3] }), policy, subject)?.kind, 'user_recipients');
  });

  it('uses an override instead of the default, and the address limit for every user of an address', () => {
    assert.equal(checkRelayLimit(view({ vip: [50, 50] }), policy, { user: 'vip', pendingRecipients: 0 }), undefined);
    const over = checkRelayLimit(view({ vip: [1, 1] }, { '10.0.0.1': [10, 99] }), policy, { user: 'vip', address: '10.0.0.1', pendingRecipients: 0 });
    assert.equal(over?.kind, 'address_messages');
    // recipientsPerHour 0: no limit of that kind
    assert.equal(checkRelayLimit(view({}, { '10.0.0.1': [0, 1e6] }), policy, { address: '10.0.0.1', pendingRecipients: 0 }), undefined);
  });

  it('answers 450 4.7.1 with a text that says which limit', () => {
    const reply = limitReply({ kind: 'user_messages', subject: 'demo', used: 3, limit: 3 });
    assert.equal(reply.code, 450);
    assert.match(reply.message, /^4\.7\.1 Relay limit reached: your 3 messages per hour are used up/);
  });
});

describe('smtp.limits config', () => {
  const parse = (data: unknown) => parseLimitsConfig(new ConfigReader(data, 'smtp.limits'));

  it('is off by default, with defaults that an override may change in part', () => {
    const off = parse(undefined);
    assert.equal(off.enabled, false);
    assert.equal(off.flushIntervalMs, 2000);
    const on = parse({ enabled: true, perUser: { messagesPerHour: 10 }, overrides: [{ user: 'demo', messagesPerHour: 100 }] });
    assert.deepEqual(on.perUser, { messagesPerHour: 10, recipientsPerHour: 2000 });
    assert.deepEqual(on.overrides.get('demo'), { messagesPerHour: 100, recipientsPerHour: 2000 });
  });

  it('names the key of a mistake', () => {
    const cases: [unknown, RegExp][] = [
      [{ perUser: { messagesPerHour: -1 } }, /^smtp\.limits\.perUser\.messagesPerHour: expected an integer from 0/],
      [{ overrides: [{ messagesPerHour: 1 }] }, /^smtp\.limits\.overrides\[0\]\.user: is required/],
      [{ overrides: [{ user: 'a' }, { user: 'a' }] }, /^smtp\.limits\.overrides\[1\]\.user: "a" is listed twice/],
      [{ overrides: { demo: 1 } }, /^smtp\.limits\.overrides: expected a list of mappings/],
      [{ replicaName: 'Smtp_0' }, /^smtp\.limits\.replicaName: expected an object name/],
      [{ perUser: { messages: 1 } }, /^smtp\.limits\.perUser\.messages: unknown key/],
    ];
    for (const [data, re] of cases) assert.throws(() => parse(data), (err: Error) => err instanceof ConfigError && re.test(err.message), JSON.stringify(data));
  });
});
