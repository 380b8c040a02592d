// Relay limits across two SMTP replicas on the real API server, with swaks as the client: the
// user's messages through either replica add up, the next relay is answered 450 4.7.1 on both,
// local delivery still flows, and a restarted replica takes its counts back from its object.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ConfigReader } from '../../src/config/reader.ts';
import { parseLimitsConfig } from '../../src/limits/config.ts';
import { startRelayLimits, type RunningRelayLimits } from '../../src/limits/start.ts';
import { usagePath, type RelayUsage } from '../../src/limits/types.ts';
import { sumUsage } from '../../src/limits/usage.ts';
import { registry } from '../../src/observability/metrics.ts';
import { eventually } from '../support/eventually.ts';
import { kubeForTest, type TestKube } from '../support/kube.ts';
import { swaks } from '../smtp/peers.ts';
import { ListGrantLookup, memoryLogger, startTestSmtp, type TestSmtp } from '../smtp/support.ts';

const CLIENT = '127.0.0.31';
let k: TestKube;
const grants = new ListGrantLookup([{ address: CLIENT, user: 'demo', expiresAtMs: Date.now() + 3_600_000 }]);
const limitsFor = (replica: string) =>
  parseLimitsConfig(new ConfigReader({ enabled: true, replicaName: replica, flushInterval: '100ms', perUser: { messagesPerHour: 3 } }, 'smtp.limits'));
const replicas: { limits: RunningRelayLimits; smtp: TestSmtp; log: string[] }[] = [];

async function startReplica(name: string) {
  const log: string[] = [];
  const limits = startRelayLimits({ config: limitsFor(name), client: k.client, namespace: k.namespace, log: memoryLogger(log) });
  const smtp = await startTestSmtp({}, { grants, limits: limits.gate, log: memoryLogger(log) });
  const r = { limits, smtp, log };
  replicas.push(r);
  return r;
}

const relay = (port: number) => swaks({ port, to: 'someone@elsewhere.test', local: CLIENT });

async function sample(name: string, labels: Record<string, string>): Promise<number> {
  const metric = (await registry.getMetricsAsJSON()).find((m) => m.name === name);
  const values = metric?.values as { labels: Record<string, string>; value: number }[] | undefined;
  return values?.find((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x))?.value ?? 0;
}
const limitedCount = (kind: string) => sample('kubedrac_smtp_relay_limited_total', { kind });
const limitDecisions = () => sample('kubedrac_smtp_relay_decisions_total', { decision: 'tempfail', reason: 'limit' });

before(async () => {
  k = await kubeForTest('limits-replicas');
});
after(async () => {
  for (const r of replicas) {
    await r.smtp.close();
    await r.limits.stop();
  }
  await k.cleanup();
});

describe('relay limits across replicas', () => {
  it("sums a user's relays through both replicas and refuses the next with 450 4.7.1 on either", async () => {
    const a = await startReplica('smtp-a');
    const b = await startReplica('smtp-b');
    for (let i = 0; i < 2; i++) {
      const sent = await relay(a.smtp.port);
      assert.equal(sent.code, 0, sent.stdout);
    }
    await eventually("replica b sees a's two messages", () => b.limits.ledger.user('demo')?.messages === 2);
    const third = await relay(b.smtp.port);
    assert.equal(third.code, 0, third.stdout);
    await eventually("replica a sees b's message", () => a.limits.ledger.user('demo')?.messages === 3);

    const limitedBefore = await limitedCount('user_messages');
    const decisionsBefore = await limitDecisions();
    for (const r of [a, b]) {
      const refused = await relay(r.smtp.port);
      assert.equal(refused.code, 24, refused.stdout);
      assert.match(refused.stdout, /<\*\* 450 4\.7\.1 Relay limit reached: your 3 messages per hour are used up, try again later/);
      // Local delivery is never limited.
      const local = await swaks({ port: r.smtp.port, to: 'ideal@example.org', local: CLIENT });
      assert.equal(local.code, 0, local.stdout);
      const line = r.log.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.event === 'relay_limited');
      assert.deepEqual([line?.user, line?.kind, line?.used, line?.limit], ['demo', 'user_messages', 3, 3]);
    }
    assert.equal((await limitedCount('user_messages')) - limitedBefore, 2);
    assert.equal((await limitDecisions()) - decisionsBefore, 2, 'the gate counts them as tempfail/limit, not allowed');
    assert.equal(a.smtp.messages(a.smtp.outbox).length + b.smtp.messages(b.smtp.outbox).length, 3, 'exactly the limit was relayed');

    // What `kubectl drac top` reads: one object per replica, summing to the same.
    await eventually('both objects published', async () => {
      const list = await k.client.request<{ items: RelayUsage[] }>('GET', usagePath(k.namespace));
      return list.items.length === 2 && sumUsage(list.items, Date.now()).user('demo')?.messages === 3;
    });
  });

  it('a restarted replica takes its counts back from its own object before it publishes', async () => {
    const a = replicas[0];
    assert.ok(a);
    await a.smtp.close();
    await a.limits.stop();
    replicas.splice(0, 1);
    const again = await startReplica('smtp-a');
    await eventually('the restarted replica sees all three', () => again.limits.ledger.user('demo')?.messages === 3);
    const refused = await relay(again.smtp.port);
    assert.equal(refused.code, 24, refused.stdout);
    await again.limits.sync.flush();
    const own = await k.client.get<RelayUsage>(usagePath(k.namespace, 'smtp-a'));
    assert.equal(sumUsage(own ? [own] : [], Date.now()).user('demo')?.messages, 2, 'its own two, not overwritten by a fresh start');
  });
});
