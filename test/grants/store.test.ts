// The grant store against the real API server: create, renew, coalescing on what the writer's own
// GrantCache saw (deleted and edited grants are written again, another replica's renewal counts),
// races, typed errors.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { KubeClient } from '../../src/kube/client.ts';
import { grantsPath } from '../../src/grants/paths.ts';
import { GrantCache } from '../../src/grants/cache.ts';
import { GrantStore, isFreshEnough, seenExpiry } from '../../src/grants/store.ts';
import { GrantWriteError, type RelayGrant } from '../../src/grants/types.ts';
import { userHash } from '../../src/grants/user-label.ts';
import { registry } from '../../src/observability/metrics.ts';
import { kubeForTest, type TestKube } from '../support/kube.ts';
import { eventually } from '../support/eventually.ts';

const MIN = 60_000;

async function writes(op: string): Promise<number> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === 'kubedrac_grant_writes_total');
  return m?.values.find((v) => v.labels.op === op)?.value ?? 0;
}

describe('isFreshEnough (coalescing rule)', () => {
  it('skips a write only while the known expiry runs past now + ttl - renewInterval', () => {
    const ttl = 30 * MIN;
    const renew = 5 * MIN;
    assert.equal(isFreshEnough(undefined, 0, ttl, renew), false);
    assert.equal(isFreshEnough(ttl, 0, ttl, renew), true);
    assert.equal(isFreshEnough(ttl, renew - 1, ttl, renew), true);
    assert.equal(isFreshEnough(ttl, renew, ttl, renew), false);
  });
});

describe('seenExpiry (what a skip may rely on)', () => {
  it('is nothing while the cache is not watching, whatever the store wrote itself', () => {
    assert.equal(seenExpiry(false, 5000, 5000), undefined);
    assert.equal(seenExpiry(false, undefined, 5000), undefined);
  });
  it('is the own write while its event is on the way, else what the watch showed', () => {
    assert.equal(seenExpiry(true, 9000, 5000), 9000);
    assert.equal(seenExpiry(true, undefined, 5000), 5000);
    assert.equal(seenExpiry(true, undefined, undefined), undefined);
  });
});

describe('GrantStore on the real API server', () => {
  let k: TestKube;
  let now = Date.parse('2030-01-01T00:00:00Z');
  let cache: GrantCache;
  let store: GrantStore;
  const get = (name: string) => k.client.get<RelayGrant>(grantsPath(k.namespace, name));
  const storeOptions = () => ({ client: k.client, namespace: k.namespace, ttlMs: 30 * MIN, renewIntervalMs: 5 * MIN, ipv6PrefixLength: 64, now: () => now });

  before(async () => {
    k = await kubeForTest('store');
    cache = new GrantCache({ client: k.client, namespace: k.namespace });
    await cache.start();
    await eventually('the watch', () => cache.watching);
    store = new GrantStore({ ...storeOptions(), grants: cache });
  });
  after(async () => {
    store.close();
    await cache.stop();
    await k.cleanup();
  });

  it('creates the grant named after the address, with the contract fields', async () => {
    assert.equal(await store.renew('192.0.2.10', 'ideal', 'pop3'), 'created');
    const g = await get('v4-192.0.2.10');
    assert.ok(g);
    assert.deepEqual(g.spec, { address: '192.0.2.10', user: 'ideal', source: 'pop3', expiresAt: '2030-01-01T00:30:00Z' });
    assert.equal(g.metadata.labels?.['app.kubernetes.io/managed-by'], 'kube-drac');
    assert.equal(g.metadata.labels?.['kubedrac.io/source'], 'pop3');
    assert.equal(g.metadata.annotations?.['kubedrac.io/renewed-at'], '2030-01-01T00:00:00.000Z');
  });

  it('coalesces: no write while the grant runs long enough, a patch once it does not', async () => {
    const skippedBefore = await writes('skipped');
    now += 4 * MIN;
    assert.equal(await store.renew('192.0.2.10', 'ideal', 'pop3'), 'skipped');
    assert.equal(await store.renew('::ffff:192.0.2.10', 'ideal', 'pop3'), 'skipped', 'mapped IPv6 is the same client');
    assert.equal((await writes('skipped')) - skippedBefore, 2);
    const before = await get('v4-192.0.2.10');
    now += 2 * MIN;
    assert.equal(await store.renew('192.0.2.10', 'other', 'pop3'), 'patched');
    const renewed = await get('v4-192.0.2.10');
    assert.equal(renewed?.spec.expiresAt, '2030-01-01T00:36:00Z');
    assert.equal(renewed?.spec.user, 'other');
    assert.equal(renewed?.metadata.uid, before?.metadata.uid, 'one object per address: renewals patch it');
  });

  it('labels the grant with its user\'s hash; a writer that knows no user (DRAC) keeps the user and label', async () => {
    const start = now;
    assert.equal(await store.renew('192.0.2.40', 'ideal', 'pop3'), 'created');
    const labelled = await get('v4-192.0.2.40');
    assert.equal(labelled?.metadata.labels?.['kubedrac.io/user-hash'], userHash('ideal'));
    now += 10 * MIN;
    assert.equal(await store.renew('192.0.2.40', '', 'drac'), 'patched');
    const renewed = await get('v4-192.0.2.40');
    assert.equal(renewed?.spec.user, 'ideal', 'who last authenticated there stays');
    assert.equal(renewed?.spec.source, 'drac');
    assert.equal(renewed?.metadata.labels?.['kubedrac.io/user-hash'], userHash('ideal'));
    assert.equal(renewed?.metadata.labels?.['kubedrac.io/source'], 'drac');
    assert.equal(await store.renew('192.0.2.41', '', 'drac'), 'created');
    const anonymous = await get('v4-192.0.2.41');
    assert.equal(anonymous?.spec.user, '');
    assert.equal(anonymous?.metadata.labels?.['kubedrac.io/user-hash'], undefined);
    now = start;
  });

  it('a renewal clears the managedFields record, and later renewals do not bring it back', async () => {
    const managedFields = async (name: string) => ((await get(name))?.metadata as { managedFields?: unknown[] } | undefined)?.managedFields;
    assert.equal(await store.renew('192.0.2.99', 'ideal', 'pop3'), 'created');
    assert.ok((await managedFields('v4-192.0.2.99'))?.length, 'the API server records ownership on create');
    now += 6 * MIN;
    assert.equal(await store.renew('192.0.2.99', 'ideal', 'pop3'), 'patched');
    assert.equal(await managedFields('v4-192.0.2.99'), undefined);
    now += 6 * MIN;
    assert.equal(await store.renew('192.0.2.99', 'other', 'pop3'), 'patched');
    const renewed = await get('v4-192.0.2.99');
    assert.equal(renewed?.spec.user, 'other');
    assert.equal(await managedFields('v4-192.0.2.99'), undefined);
  });

  it('aggregates IPv6 clients to their /64', async () => {
    assert.equal(await store.renew('2001:db8:1:2:aaaa:bbbb:cccc:dddd', 'v6user', 'imap'), 'created');
    const g = await get('v6-20010db8000100020000000000000000-64');
    assert.equal(g?.spec.address, '2001:db8:1:2::/64');
    assert.equal(await store.renew('2001:db8:1:2::9', 'v6user', 'imap'), 'skipped');
  });

  it('shares one write between simultaneous logins from one address', async () => {
    const before = (await writes('create')) + (await writes('patch'));
    const outcomes = await Promise.all(Array.from({ length: 10 }, () => store.renew('192.0.2.11', 'burst', 'pop3')));
    assert.deepEqual(new Set(outcomes), new Set(['created']));
    assert.equal((await writes('create')) + (await writes('patch')) - before, 1);
  });

  it('resolves a create race between replicas: the loser patches', async () => {
    const replicas = Array.from(
      { length: 4 },
      () => new GrantStore({ client: k.client, namespace: k.namespace, ttlMs: 30 * MIN, renewIntervalMs: 5 * MIN, ipv6PrefixLength: 64, now: () => now }),
    );
    const outcomes = await Promise.all(replicas.map((r, i) => r.renew('192.0.2.12', `u${i}`, 'pop3')));
    replicas.forEach((r) => r.close());
    assert.equal(outcomes.filter((o) => o === 'created').length, 1, outcomes.join());
    assert.equal(outcomes.filter((o) => o === 'patched').length, 3, outcomes.join());
  });

  it('rejects a bad address with a typed error', async () => {
    await assert.rejects(store.renew('not-an-ip', 'x', 'pop3'), (err: unknown) => err instanceof GrantWriteError && /not an IP/.test(err.message));
  });

  it('fails fast with a typed error when RBAC forbids the write', async () => {
    const kc = JSON.parse(fs.readFileSync(k.kubeconfigPath, 'utf8')) as { users: { user: Record<string, unknown> }[] };
    kc.users[0]!.user.as = 'system:serviceaccount:mail:nobody';
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'kd-')), 'kubeconfig');
    fs.writeFileSync(file, JSON.stringify(kc));
    const client = KubeClient.fromPath(file);
    const denied = new GrantStore({ client, namespace: k.namespace, ttlMs: 30 * MIN, renewIntervalMs: 5 * MIN, ipv6PrefixLength: 64 });
    await assert.rejects(denied.renew('192.0.2.13', 'x', 'pop3'), (err: unknown) => err instanceof GrantWriteError && /403/.test(err.message));
    denied.close();
    client.close();
    assert.equal(await get('v4-192.0.2.13'), undefined);
  });

  it('writes again after the grant was deleted with the client, as kubectl does', async () => {
    assert.equal(await store.renew('192.0.2.20', 'deleted', 'pop3'), 'created');
    assert.equal(await store.renew('192.0.2.20', 'deleted', 'pop3'), 'skipped');
    await k.kubectl('delete', 'rg', 'v4-192.0.2.20');
    await eventually('the deletion in the cache', () => cache.get('v4-192.0.2.20') === undefined);
    assert.equal(await store.renew('192.0.2.20', 'deleted', 'pop3'), 'created', 'the login after the deletion writes the grant back');
    assert.ok(await get('v4-192.0.2.20'));
  });

  it('writes again after the grant was patched to expire sooner', async () => {
    assert.equal(await store.renew('192.0.2.21', 'edited', 'pop3'), 'created');
    const iso = (ms: number) => new Date(ms).toISOString().replace('.000Z', 'Z');
    const sooner = iso(now + 10 * MIN);
    await k.kubectl('patch', 'rg', 'v4-192.0.2.21', '--type=merge', '-p', JSON.stringify({ spec: { expiresAt: sooner } }));
    await eventually('the edit in the cache', () => cache.expiresAtMsOf('v4-192.0.2.21') === Date.parse(sooner));
    assert.equal(await store.renew('192.0.2.21', 'edited', 'pop3'), 'patched');
    assert.equal((await get('v4-192.0.2.21'))?.spec.expiresAt, iso(now + 30 * MIN));
  });

  it('takes another replica\'s renewal as fresh', async () => {
    const otherCache = new GrantCache({ client: k.client, namespace: k.namespace });
    await otherCache.start();
    const other = new GrantStore({ ...storeOptions(), grants: otherCache });
    try {
      assert.equal(await other.renew('192.0.2.22', 'elsewhere', 'pop3'), 'created');
      await eventually('the other replica\'s grant in this cache', () => cache.get('v4-192.0.2.22') !== undefined);
      assert.equal(await store.renew('192.0.2.22', 'here', 'pop3'), 'skipped');
    } finally {
      other.close();
      await otherCache.stop();
    }
  });

  it('does not write twice for a burst of logins right after its write, before the watch event', async () => {
    const before = (await writes('create')) + (await writes('patch'));
    assert.equal(await store.renew('192.0.2.23', 'burst', 'pop3'), 'created');
    // Straight after the write: the watch event is very likely still on its way.
    const outcomes = await Promise.all(Array.from({ length: 10 }, () => store.renew('192.0.2.23', 'burst', 'pop3')));
    assert.deepEqual(new Set(outcomes), new Set(['skipped']));
    assert.equal((await writes('create')) + (await writes('patch')) - before, 1);
  });

  it('never skips on its own belief while its cache is not watching', async () => {
    const idle = new GrantCache({ client: k.client, namespace: k.namespace }); // never started
    const blind = new GrantStore({ ...storeOptions(), grants: idle });
    try {
      assert.equal(await blind.renew('192.0.2.24', 'blind', 'pop3'), 'created');
      assert.equal(await blind.renew('192.0.2.24', 'blind', 'pop3'), 'patched');
    } finally {
      blind.close();
    }
  });

  it('revokes', async () => {
    assert.equal(await store.revoke('192.0.2.11'), true);
    assert.equal(await get('v4-192.0.2.11'), undefined);
    assert.equal(await store.revoke('192.0.2.11'), false);
    assert.equal(await store.renew('192.0.2.11', 'again', 'pop3'), 'created', 'a revoked grant is written again at the next login');
  });
});
