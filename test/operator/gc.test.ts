// Garbage collection by an in-process operator on the real API server: expired grants go within
// grace + 2 s, future and renewed grants stay, a renewal racing the delete is never lost, and
// many grants expiring together all go.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { parseConfig } from '../../src/config/load.ts';
import { grantsPath } from '../../src/grants/paths.ts';
import type { RelayGrant } from '../../src/grants/types.ts';
import { KubeApiError } from '../../src/kube/client.ts';
import { registry } from '../../src/observability/metrics.ts';
import { runOperator, type RunningOperator } from '../../src/operator/main.ts';
import { kubeForTest, type TestKube } from '../support/kube.ts';
import { createGrant, grantExists, sleep, testAddress } from './support.ts';
import { eventually } from '../support/eventually.ts';

const GRACE_MS = 1000;

async function metric(name: string): Promise<number> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === name);
  if (!m) return NaN;
  if (String(m.type) === 'histogram') {
    return (m.values as { value: number; metricName?: string }[]).find((v) => v.metricName === `${name}_count`)?.value ?? 0;
  }
  return m.values.reduce((sum, v) => sum + v.value, 0);
}

describe('operator garbage collection on the real API server', () => {
  let k: TestKube;
  let op: RunningOperator;
  /** Per-grant test hook run between the operator's fresh read and its delete. */
  const racing = new Map<string, () => Promise<void>>();
  let next = 1;
  const nextIndex = () => next++;

  before(async () => {
    k = await kubeForTest('gc');
    const doc = parseConfig(
      `kubernetes: {namespace: ${k.namespace}, kubeconfig: ${JSON.stringify(k.kubeconfigPath)}}
metrics: {host: 127.0.0.1, port: 0}
log: {level: warn}
operator:
  grace: ${GRACE_MS}ms
  sweepInterval: 2s
  leaderElection: {identity: gc-test, leaseDuration: 2s, renewDeadline: 1500ms, retryPeriod: 200ms}
`,
      'gc-test.yaml',
    );
    op = await runOperator(doc, undefined, { beforeDelete: (name) => racing.get(name)?.() ?? Promise.resolve() });
    await eventually('the operator leads', () => op.elector.isLeader());
  });
  after(async () => {
    await op.close();
    await k.cleanup();
  });

  it('leads alone and says so in its metric', async () => {
    assert.equal(await metric('kubedrac_operator_leader'), 1);
  });

  it('deletes expired grants within grace + 2 s, and keeps future ones', async () => {
    const deletedBefore = await metric('kubedrac_operator_grants_deleted_total');
    const lagBefore = await metric('kubedrac_operator_gc_lag_seconds');
    const now = Date.now();
    const expiresSoon = now + 500;
    const soon = await createGrant(k.client, k.namespace, nextIndex(), expiresSoon);
    const expiredLongAgo = await createGrant(k.client, k.namespace, nextIndex(), now - 3_600_000);
    const future = await createGrant(k.client, k.namespace, nextIndex(), now + 3_600_000);
    await eventually('the long-expired grant is deleted', async () => !(await grantExists(k.client, k.namespace, expiredLongAgo)), GRACE_MS + 2000);
    await eventually(
      'the grant expiring now is deleted within grace + 2 s',
      async () => !(await grantExists(k.client, k.namespace, soon)),
      expiresSoon + GRACE_MS + 2000 - Date.now(),
    );
    assert.equal(await grantExists(k.client, k.namespace, future), true);
    assert.equal((await metric('kubedrac_operator_grants_deleted_total')) - deletedBefore, 2);
    assert.equal((await metric('kubedrac_operator_gc_lag_seconds')) - lagBefore, 2);
    assert.ok((await metric('kubedrac_grants_active')) >= 1);
  });

  it('counts active and expired-pending grants over its cache', async () => {
    const expiresAt = Date.now() + 3_600_000;
    const name = await createGrant(k.client, k.namespace, nextIndex(), expiresAt);
    await eventually('the cache has it', () => op.cache.get(name) !== undefined);
    const now = op.gc.census(expiresAt - 1);
    const later = op.gc.census(expiresAt);
    assert.ok(now.active >= 1);
    assert.equal(later.active, now.active - 1);
    assert.equal(later.expiredPending, now.expiredPending + 1);
    const current = op.gc.census();
    assert.equal(await metric('kubedrac_grants_active'), current.active);
    assert.equal(await metric('kubedrac_grants_expired_pending'), current.expiredPending);
  });

  it('keeps a grant renewed just before its timer fires', async () => {
    const expiresAt = Date.now() + 800;
    const name = await createGrant(k.client, k.namespace, nextIndex(), expiresAt);
    // The timer is due at expiresAt + grace; renew a moment before that.
    await sleep(expiresAt + GRACE_MS - 250 - Date.now());
    await k.client.mergePatch(grantsPath(k.namespace, name), { spec: { expiresAt: new Date(Date.now() + 3_600_000).toISOString() } });
    await sleep(GRACE_MS + 1500);
    assert.equal(await grantExists(k.client, k.namespace, name), true);
  });

  /**
   * `rounds` grants come due together (or one by one); each one's renewal is injected between
   * the operator's read and its delete. Even rounds: the renewal lands before the delete (always
   * a conflict). Odd rounds: the renewal is sent and the delete follows 0-8 ms later, a true race.
   * Whatever the order, a renewal that succeeded is never lost.
   */
  async function race(rounds: number, together: boolean): Promise<void> {
    const conflictsBefore = await metric('kubedrac_operator_delete_conflicts_total');
    const bulkBefore = await metric('kubedrac_operator_bulk_reads_total');
    const outcomes: { name: string; renewed: boolean; renewedTo: string }[] = [];
    const settled: Promise<void>[] = [];
    const dueTogether = Date.now() + 1500;
    const indexes = Array.from({ length: rounds }, nextIndex);
    const creates: Promise<string>[] = [];
    for (const [i, index] of indexes.entries()) {
      const { name } = testAddress(index);
      const renewedTo = new Date(Date.now() + 3_600_000 + i).toISOString();
      let done!: () => void;
      settled.push(new Promise<void>((r) => (done = r)));
      racing.set(name, async () => {
        racing.delete(name);
        const renew = k.client
          .mergePatch<RelayGrant>(grantsPath(k.namespace, name), { spec: { expiresAt: renewedTo } })
          .then(
            () => outcomes.push({ name, renewed: true, renewedTo }),
            (err: unknown) => {
              assert.ok(err instanceof KubeApiError && err.status === 404, String(err));
              outcomes.push({ name, renewed: false, renewedTo });
            },
          )
          .finally(done);
        if (i % 2 === 0) await renew;
        else await sleep((i * 7) % 9);
      });
      const create = createGrant(k.client, k.namespace, index, together ? dueTogether - GRACE_MS : Date.now() - 60_000);
      if (together) creates.push(create);
      else await create;
    }
    await Promise.all(creates);
    await Promise.all(settled);
    await op.gc.idle();
    await sleep(300);
    assert.equal(outcomes.length, rounds);
    for (const o of outcomes) {
      const current = await k.client.get<RelayGrant>(grantsPath(k.namespace, o.name));
      if (o.renewed) {
        assert.ok(current, `${o.name}: its renewal succeeded, so it must exist`);
        assert.equal(new Date(current.spec.expiresAt).toISOString(), o.renewedTo);
      } else {
        // The delete reached the server first and the renewal got 404: the writer creates it anew.
        assert.equal(current, undefined);
      }
    }
    const conflicts = (await metric('kubedrac_operator_delete_conflicts_total')) - conflictsBefore;
    assert.ok(conflicts >= rounds / 2, `every injected renewal caused a conflict (${conflicts})`);
    const bulk = (await metric('kubedrac_operator_bulk_reads_total')) - bulkBefore;
    if (together) assert.ok(bulk >= 1, 'read with a bulk LIST');
    else assert.equal(bulk, 0, 'read with a GET each');
  }

  it('never loses a renewal racing the delete: 24 grants coming due one by one (GET each)', () => race(24, false));

  it('never loses a renewal racing the delete: 80 grants coming due together (one bulk LIST)', () => race(80, true));

  it('deletes many grants expiring together', async () => {
    const count = 200;
    const expiresAt = Date.now() + 4000;
    const names: string[] = [];
    const indexes = Array.from({ length: count }, nextIndex);
    for (let i = 0; i < indexes.length; i += 20) {
      names.push(...(await Promise.all(indexes.slice(i, i + 20).map((n) => createGrant(k.client, k.namespace, n, expiresAt)))));
    }
    await eventually(
      'all of them are gone',
      async () => {
        const list = await k.client.request<{ items: RelayGrant[] }>('GET', grantsPath(k.namespace));
        const left = new Set(list.items.map((g) => g.metadata.name));
        return names.every((n) => !left.has(n));
      },
      Math.max(0, expiresAt - Date.now()) + GRACE_MS + 15_000,
    );
  });
});
