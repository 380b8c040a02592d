// The RelayUsage CRD on the real API server: a replica's apply is accepted and replaces its
// buckets whole; counts that make no sense are refused.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { KubeApiError } from '../../src/kube/client.ts';
import { usagePath, type RelayUsage } from '../../src/limits/types.ts';
import { sweepRelayUsages } from '../../src/limits/usage-gc.ts';
import { sumUsage } from '../../src/limits/usage.ts';
import { kubeForTest, type TestKube } from '../support/kube.ts';

let k: TestKube;
before(async () => {
  k = await kubeForTest('usage-crd');
});
after(() => k.cleanup());

const now = Date.now();
const bucket = (ms: number) => new Date(Math.floor(ms / 300_000) * 300_000).toISOString();

function usage(buckets: unknown[]): RelayUsage {
  return {
    apiVersion: 'kubedrac.io/v1alpha1',
    kind: 'RelayUsage',
    metadata: { name: 'smtp-0' },
    spec: { replica: 'smtp-0', bucketSeconds: 300, publishedAt: new Date(now).toISOString(), buckets: buckets as RelayUsage['spec']['buckets'] },
  };
}

describe('RelayUsage CRD', () => {
  it("takes a replica's counts by apply, and a second apply replaces the buckets whole", async () => {
    const path = usagePath(k.namespace, 'smtp-0');
    await k.client.apply(path, usage([
      { start: bucket(now - 600_000), users: { old: { messages: 1, recipients: 1 } } },
      { start: bucket(now), users: { 'demo@example.test': { messages: 2, recipients: 3 } }, addresses: { '127.0.0.1': { messages: 2, recipients: 3 } } },
    ]), 'smtp-0');
    await k.client.apply(path, usage([{ start: bucket(now), users: { 'demo@example.test': { messages: 3, recipients: 4 } } }]), 'smtp-0');
    const stored = await k.client.get<RelayUsage>(path);
    assert.ok(stored);
    assert.equal(stored.spec.buckets.length, 1);
    const sums = sumUsage([stored], now);
    assert.deepEqual(sums.user('demo@example.test'), { messages: 3, recipients: 4 });
    assert.equal(sums.user('old'), undefined);
    assert.equal(sums.address('127.0.0.1'), undefined);
  });

  it('refuses negative counts, a missing count and a start that is no date', async () => {
    for (const [b, re] of [
      [{ start: bucket(now), users: { demo: { messages: -1, recipients: 0 } } }, /messages: Invalid value: -1/],
      [{ start: bucket(now), addresses: { '10.0.0.1': { messages: 1 } } }, /recipients: Required value/],
      [{ start: 'yesterday' }, /start: Invalid value: "yesterday"/],
    ] as const) {
      await assert.rejects(
        k.client.create(usagePath(k.namespace), { ...usage([b]), metadata: { name: 'smtp-bad' } }),
        (err: unknown) => err instanceof KubeApiError && err.status === 422 && re.test(err.message),
      );
    }
  });

  it("the operator's sweep deletes only objects of replicas gone with every bucket aged out", async () => {
    const old = now - 2 * 3_600_000;
    const make = (name: string, publishedAt: number, start: number) => ({
      ...usage([{ start: bucket(start), users: { demo: { messages: 1, recipients: 1 } } }]),
      metadata: { name },
      spec: { replica: name, bucketSeconds: 300, publishedAt: new Date(publishedAt).toISOString(), buckets: [{ start: bucket(start), users: { demo: { messages: 1, recipients: 1 } } }] },
    });
    await k.client.create(usagePath(k.namespace), make('gone', old, old));
    await k.client.create(usagePath(k.namespace), make('gone-recent-counts', old, now - 600_000));
    await k.client.create(usagePath(k.namespace), make('idle-but-running', now, old));
    assert.deepEqual(await sweepRelayUsages(k.client, k.namespace, now), ['gone']);
    const left = await k.client.request<{ items: RelayUsage[] }>('GET', usagePath(k.namespace));
    assert.deepEqual(left.items.map((u) => u.metadata.name).sort(), ['gone-recent-counts', 'idle-but-running', 'smtp-0']);
  });
});
