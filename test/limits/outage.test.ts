// Relay limits while the API server is away (stopped, on a control plane of the test's own): mail
// keeps flowing, publish failures are counted, and the two blind replicas together relay no more
// than the limit, each about its half of what was left; once the server is back they agree again.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ConfigReader } from '../../src/config/reader.ts';
import { KubeClient } from '../../src/kube/client.ts';
import { installCrds } from '../../src/kube/crds.ts';
import { parseLimitsConfig } from '../../src/limits/config.ts';
import { startRelayLimits, type RunningRelayLimits } from '../../src/limits/start.ts';
import { usagePath, type RelayUsage } from '../../src/limits/types.ts';
import { sumUsage } from '../../src/limits/usage.ts';
import type { ControlPlane } from '../../src/local/control-plane.ts';
import { registry } from '../../src/observability/metrics.ts';
import { eventually } from '../support/eventually.ts';
import { ownControlPlane } from '../support/kube.ts';
import { swaks } from '../smtp/peers.ts';
import { ListGrantLookup, memoryLogger, startTestSmtp, type TestSmtp } from '../smtp/support.ts';

const CLIENT = '127.0.0.32';
const LIMIT = 10;
const grants = new ListGrantLookup([{ address: CLIENT, user: 'demo', expiresAtMs: Date.now() + 3_600_000 }]);
let plane: ControlPlane;
const replicas: { limits: RunningRelayLimits; smtp: TestSmtp; client: KubeClient }[] = [];

async function startReplica(name: string) {
  const client = KubeClient.fromPath(plane.kubeconfigPath);
  const config = parseLimitsConfig(new ConfigReader({ enabled: true, replicaName: name, flushInterval: '100ms', perUser: { messagesPerHour: LIMIT } }, 'smtp.limits'));
  const limits = startRelayLimits({ config, client, namespace: 'mail', log: memoryLogger() });
  const smtp = await startTestSmtp({}, { grants, limits: limits.gate });
  const r = { limits, smtp, client };
  replicas.push(r);
  return r;
}

const relay = (port: number) => swaks({ port, to: 'someone@elsewhere.test', local: CLIENT });

/** Relay through one replica until it refuses; how many it took. */
async function relayUntilRefused(port: number): Promise<number> {
  for (let n = 0; ; n++) {
    const r = await relay(port);
    if (r.code === 24) {
      assert.match(r.stdout, /<\*\* 450 4\.7\.1 Relay limit reached/);
      return n;
    }
    assert.equal(r.code, 0, r.stdout);
    assert.ok(n < LIMIT, 'never more than the limit');
  }
}

async function publishFailures(): Promise<number> {
  const metric = (await registry.getMetricsAsJSON()).find((m) => m.name === 'kubedrac_smtp_usage_publish_failures_total');
  return (metric?.values[0]?.value) ?? 0;
}

before(async () => {
  plane = await ownControlPlane('mail');
});
after(async () => {
  for (const r of replicas) {
    await r.smtp.close();
    await r.limits.stop();
    r.client.close();
  }
  await plane.stop();
});

describe('relay limits in an API outage', () => {
  it('says how to install a missing RelayUsage CRD (a chart upgrade does not), and mail flows meanwhile', async () => {
    const lines: string[] = [];
    const client = KubeClient.fromPath(plane.kubeconfigPath);
    const config = parseLimitsConfig(new ConfigReader({ enabled: true, replicaName: 'smtp-nocrd', perUser: { messagesPerHour: 1 } }, 'smtp.limits'));
    const limits = startRelayLimits({ config, client, namespace: 'mail', log: memoryLogger(lines) });
    const smtp = await startTestSmtp({}, { grants, limits: limits.gate });
    try {
      await eventually('the error line', () => lines.some((l) => l.includes('"event":"relay_usage_watch_failed"')));
      const line = JSON.parse(lines.find((l) => l.includes('relay_usage_watch_failed')) as string) as { level: string; error: string };
      assert.equal(line.level, 'error');
      assert.match(line.error, /^the RelayUsage CRD \(relayusages\.kubedrac\.io\) is not installed: apply it with `kubectl apply -f crds\/relayusages\.kubedrac\.io\.yaml`/);
      assert.equal((await relay(smtp.port)).code, 0, 'relaying works');
      assert.equal((await relay(smtp.port)).code, 24, 'and its own count is still enforced');
    } finally {
      await smtp.close();
      await limits.stop();
      client.close();
    }
    const c = plane.client();
    await installCrds(c);
    c.close();
  });

  it('keeps the limit with the API server stopped, and agrees again once it is back', async () => {
    const a = await startReplica('smtp-a');
    const b = await startReplica('smtp-b');
    for (let i = 0; i < 4; i++) assert.equal((await relay(a.smtp.port)).code, 0);
    await eventually('each sees the other and the four messages', () =>
      b.limits.ledger.user('demo')?.messages === 4 && a.limits.ledger.replicas === 2 && b.limits.ledger.replicas === 2,
    );

    const failuresBefore = await publishFailures();
    await plane.stop({ keepData: true });
    await eventually('both replicas know they are blind', () => a.limits.ledger.blind && b.limits.ledger.blind, 15_000);
    const relayed = [await relayUntilRefused(a.smtp.port), await relayUntilRefused(b.smtp.port)];
    assert.deepEqual(relayed, [3, 3], 'each took its half of the 6 left: 4 + 3 + 3 = the limit');
    // Mail is never blocked by the outage: local delivery flows.
    assert.equal((await swaks({ port: a.smtp.port, to: 'ideal@example.org', local: CLIENT })).code, 0);
    await eventually('the failed publishes are counted', async () => (await publishFailures()) > failuresBefore, 15_000);

    await plane.start();
    await eventually('both see again, and the counts agree', () =>
      !a.limits.ledger.blind && !b.limits.ledger.blind && a.limits.ledger.user('demo')?.messages === 10 && b.limits.ledger.user('demo')?.messages === 10,
      30_000,
    );
    for (const r of [a, b]) assert.equal((await relay(r.smtp.port)).code, 24);
    const list = await a.client.request<{ items: RelayUsage[] }>('GET', usagePath('mail'));
    assert.equal(sumUsage(list.items, Date.now()).user('demo')?.messages, LIMIT);
  });
});
