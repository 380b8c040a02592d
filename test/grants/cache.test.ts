// The grant cache against the real API server: it follows creates, renewals and deletions,
// refuses expired grants, relists on 410, and catches up after the API server and etcd restart.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { grantKeyFor } from '../../src/grants/address.ts';
import { GrantCache } from '../../src/grants/cache.ts';
import { grantsPath } from '../../src/grants/paths.ts';
import { GrantStore } from '../../src/grants/store.ts';
import { KubeClient } from '../../src/kube/client.ts';
import type { ControlPlane } from '../../src/local/control-plane.ts';
import { registry } from '../../src/observability/metrics.ts';
import { kubeForTest, ownControlPlane, type TestKube } from '../support/kube.ts';
import { eventually } from '../support/eventually.ts';

const MIN = 60_000;

function grant(name: string, address: string, expiresAtMs: number, user = 'ideal') {
  return {
    apiVersion: 'kubedrac.io/v1alpha1',
    kind: 'RelayGrant',
    metadata: { name },
    spec: { address, user, source: 'manual', expiresAt: new Date(expiresAtMs).toISOString() },
  };
}

async function metricValue(name: string): Promise<number> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === name);
  return (m?.values ?? []).reduce((sum, v) => sum + v.value, 0);
}

async function stalledRestarts(): Promise<number> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === 'kubedrac_grant_watch_restarts_total');
  return m?.values.find((v) => v.labels.reason === 'stalled')?.value ?? 0;
}

describe('GrantCache on the shared API server', () => {
  let k: TestKube;
  let cache: GrantCache;
  before(async () => {
    k = await kubeForTest('cache');
    await k.client.create(grantsPath(k.namespace), grant('v4-198.51.100.1', '198.51.100.1', Date.now() + 30 * MIN));
    cache = new GrantCache({ client: k.client, namespace: k.namespace });
    assert.equal(cache.synced, false);
    await cache.start();
  });
  after(async () => {
    await cache.stop();
    await k.cleanup();
  });

  it('is synced after the first list and holds what existed', () => {
    assert.equal(cache.synced, true);
    assert.equal(cache.syncedBy, 'watch-list', 'a 1.37 API server streams the initial list');
    assert.equal(cache.lookup('198.51.100.1')?.user, 'ideal');
    assert.equal(cache.lookup('::ffff:198.51.100.1')?.name, 'v4-198.51.100.1');
    assert.equal(cache.lookup('198.51.100.2'), undefined);
  });

  it('follows a create, a renewal and a delete', async () => {
    const path = grantsPath(k.namespace, 'v4-198.51.100.7');
    await k.client.create(grantsPath(k.namespace), grant('v4-198.51.100.7', '198.51.100.7', Date.now() + 5 * MIN));
    await eventually('created grant in cache', () => cache.lookup('198.51.100.7') !== undefined);
    const first = cache.lookup('198.51.100.7')!.expiresAtMs;
    const later = Date.now() + 60 * MIN;
    await k.client.mergePatch(path, { spec: { expiresAt: new Date(later).toISOString(), user: 'other' } });
    await eventually('renewal in cache', () => (cache.lookup('198.51.100.7')?.expiresAtMs ?? 0) > first);
    assert.equal(cache.lookup('198.51.100.7')?.user, 'other');
    await k.client.delete(path);
    await eventually('deletion in cache', () => cache.lookup('198.51.100.7') === undefined);
    assert.equal(cache.get('v4-198.51.100.7'), undefined);
  });

  it('never matches a grant that is stored but expired', async () => {
    await k.client.create(grantsPath(k.namespace), grant('v4-198.51.100.8', '198.51.100.8', Date.now() - 1000));
    await eventually('expired grant indexed', () => cache.get('v4-198.51.100.8') !== undefined);
    assert.equal(cache.lookup('198.51.100.8'), undefined);
    const soon = Date.now() + 2 * MIN;
    await k.client.create(grantsPath(k.namespace), grant('v4-198.51.100.9', '198.51.100.9', soon));
    await eventually('grant indexed', () => cache.get('v4-198.51.100.9') !== undefined);
    assert.ok(cache.lookup('198.51.100.9', soon - 1000));
    assert.equal(cache.lookup('198.51.100.9', soon + 1000), undefined);
  });

  it('matches every address inside an IPv6 /64 grant and nothing outside it', async () => {
    await k.client.create(
      grantsPath(k.namespace),
      grant('v6-20010db8000a000b0000000000000000-64', '2001:db8:a:b::/64', Date.now() + 10 * MIN),
    );
    await eventually('prefix grant indexed', () => cache.lookup('2001:db8:a:b::1') !== undefined);
    assert.equal(cache.lookup('2001:db8:a:b:ffff:1:2:3')?.address, '2001:db8:a:b::/64');
    assert.equal(cache.lookup('2001:DB8:A:B::99')?.name, 'v6-20010db8000a000b0000000000000000-64');
    assert.equal(cache.lookup('2001:db8:a:c::1'), undefined);
    assert.equal(cache.lookup('2001:db8:a::1'), undefined);
  });

  it('keeps each grant\'s address, user and expiry in its slot as grants come and go', async () => {
    const lean = new GrantCache({ client: k.client, namespace: k.namespace, indexUsers: false });
    await lean.start();
    try {
      const t = Date.now() + 20 * MIN;
      const grants = [
        grant('v4-198.51.100.30', '198.51.100.30', t, 'u30'),
        grant('v4-10.1.0.0-16', '10.1.0.0/16', t + 1000, 'u16'),
        grant('v6-20010db8000c000d0000000000000000-64', '2001:db8:c:d::/64', t + 2000, 'u64'),
      ];
      for (const g of grants) await k.client.create(grantsPath(k.namespace), g);
      await k.client.delete(grantsPath(k.namespace, 'v4-198.51.100.30'));
      // Takes the freed slot.
      await k.client.create(grantsPath(k.namespace), grant('v4-198.51.100.31', '198.51.100.31', t + 3000, 'u31'));
      for (const c of [cache, lean]) await eventually('all indexed', () => c.get('v4-198.51.100.31') !== undefined && c.get('v4-198.51.100.30') === undefined);
      assert.deepEqual(cache.get('v4-10.1.0.0-16'), { address: '10.1.0.0/16', user: 'u16', expiresAtMs: t + 1000 });
      assert.deepEqual(cache.get('v4-198.51.100.31'), { address: '198.51.100.31', user: 'u31', expiresAtMs: t + 3000 });
      assert.equal(cache.lookup('10.1.2.3')?.address, '10.1.0.0/16');
      assert.equal(cache.lookup('2001:db8:c:d::5')?.user, 'u64');
      assert.equal(cache.expiresAtMsOf('v6-20010db8000c000d0000000000000000-64'), t + 2000);
      assert.equal(cache.expiresAtMsOf('v4-198.51.100.30'), undefined);
      const expiries = new Map<string, number>();
      cache.forEachExpiry((name, at) => expiries.set(name, at));
      assert.deepEqual(new Map([...cache.entries()].map(([name, e]) => [name, e.expiresAtMs])), expiries);
      assert.equal(expiries.size, cache.size);
      // A cache told not to keep users answers the same, with user ''.
      assert.deepEqual(lean.get('v4-198.51.100.31'), { address: '198.51.100.31', user: '', expiresAtMs: t + 3000 });
      assert.equal(lean.lookup('10.1.2.3')?.name, 'v4-10.1.0.0-16');
    } finally {
      await lean.stop();
    }
  });

  it('resumes from a stale resourceVersion by relisting (the server answers 410 Gone)', async () => {
    const relistsBefore = await metricValue('kubedrac_grant_cache_relists_total');
    cache.restartWatch('1');
    await eventually('relist after 410', async () => (await metricValue('kubedrac_grant_cache_relists_total')) > relistsBefore);
    assert.ok(cache.lookup('198.51.100.1'), 'the index survives a relist');
    assert.equal(cache.syncedBy, 'watch-list');
    await k.client.create(grantsPath(k.namespace), grant('v4-198.51.100.21', '198.51.100.21', Date.now() + 10 * MIN));
    await eventually('watching again after the relist', () => cache.lookup('198.51.100.21') !== undefined);
  });
});

/**
 * A TCP path to the API server whose open connections the test can freeze: bytes stop flowing
 * both ways but nothing is closed (a dead peer behind a NAT or a partition, not a reset). New
 * connections still pass.
 */
class FreezableLink {
  private readonly server: net.Server;
  private readonly pairs = new Set<[net.Socket, net.Socket]>();
  constructor(target: { host: string; port: number }) {
    this.server = net.createServer((inbound) => {
      const outbound = net.connect(target.port, target.host);
      const pair: [net.Socket, net.Socket] = [inbound, outbound];
      this.pairs.add(pair);
      for (const s of pair) {
        s.on('error', () => undefined);
        s.on('close', () => this.pairs.delete(pair));
      }
      inbound.pipe(outbound).pipe(inbound);
    });
  }
  listen(): Promise<number> {
    return new Promise((resolve) => this.server.listen(0, '127.0.0.1', () => resolve((this.server.address() as net.AddressInfo).port)));
  }
  freeze(): void {
    for (const [a, b] of this.pairs) {
      a.unpipe(b);
      b.unpipe(a);
      a.pause();
      b.pause();
    }
    this.pairs.clear();
  }
  close(): void {
    this.server.close();
  }
}

describe('watch stalls (issue 13 item 2): a quiet watch is not a dead one, a dead one is found', () => {
  let k: TestKube;
  before(async () => {
    k = await kubeForTest('quiet-watch');
  });
  after(() => k.cleanup());

  it('gets no event from the API server until the server ends it at timeoutSeconds', async () => {
    // The premise of the stall fix: bookmarks are sent only once the resource's resourceVersion
    // moved past the watch's, so a quiet watch is silent for its whole life. An idle timeout
    // shorter than timeoutSeconds (the old 90 s against 240-300 s) therefore always fired.
    const list = await k.client.request<{ metadata: { resourceVersion: string } }>('GET', grantsPath(k.namespace));
    const events: string[] = [];
    const started = Date.now();
    await k.client.watch(
      grantsPath(k.namespace),
      { resourceVersion: list.metadata.resourceVersion, allowWatchBookmarks: true, timeoutSeconds: 4 },
      (e) => events.push(e.type),
      { idleTimeoutMs: 60_000 },
    );
    const ms = Date.now() - started;
    // Nothing but bookmarks (and on a cluster where no grant anywhere changes, not even those:
    // other tests write grants in other namespaces, which moves the resource's version).
    assert.ok(events.every((e) => e === 'BOOKMARK'), events.join());
    assert.ok(ms >= 3500 && ms < 30_000, `the server ended the watch itself after ${ms} ms`);
  });

  it('restarts such watches as ended, never as stalled, and still sees a delete at once', async () => {
    const stalledBefore = await stalledRestarts();
    // Watches of 3 s, declared stalled 1 s after that: several quiet watches in 12 s.
    const cache = new GrantCache({ client: k.client, namespace: k.namespace, watchSeconds: [3, 4], stallGraceMs: 1000 });
    const origin = await metricValue('kubedrac_grant_watch_restarts_total');
    await cache.start();
    try {
      await new Promise((r) => setTimeout(r, 12_000));
      const ended = (await metricValue('kubedrac_grant_watch_restarts_total')) - origin;
      assert.ok(ended >= 2, `quiet watches ended by the server and resumed: ${ended}`);
      assert.equal((await stalledRestarts()) - stalledBefore, 0, 'no quiet watch was taken for a stalled one');
      await k.client.create(grantsPath(k.namespace), grant('v4-198.51.100.60', '198.51.100.60', Date.now() + 30 * MIN));
      await eventually('the grant in the cache', () => cache.lookup('198.51.100.60') !== undefined, 2000);
      await k.client.delete(grantsPath(k.namespace, 'v4-198.51.100.60'));
      await eventually('the delete in the cache', () => cache.lookup('198.51.100.60') === undefined, 2000);
    } finally {
      await cache.stop();
    }
  });

  it('is declared stalled once the server would have ended it, and the cache resumes on a new connection', async () => {
    const kubeconfig = fs.readFileSync(k.kubeconfigPath, 'utf8');
    const server = /https:\/\/127\.0\.0\.1:(\d+)/.exec(kubeconfig);
    assert.ok(server, 'the test kubeconfig names a loopback API server');
    const link = new FreezableLink({ host: '127.0.0.1', port: Number(server[1]) });
    const port = await link.listen();
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'kd-link-')), 'kubeconfig');
    fs.writeFileSync(file, kubeconfig.replace(server[0], `https://127.0.0.1:${port}`), { mode: 0o600 });
    const client = KubeClient.fromPath(file);
    const stalledBefore = await stalledRestarts();
    const cache = new GrantCache({ client, namespace: k.namespace, watchSeconds: [3, 4], stallGraceMs: 1000 });
    await cache.start();
    try {
      await eventually('the watch', () => cache.watching);
      link.freeze();
      await k.client.create(grantsPath(k.namespace), grant('v4-198.51.100.70', '198.51.100.70', Date.now() + 30 * MIN));
      // The frozen watch never ends by itself: 3 s (timeoutSeconds) + 1 s grace, then a new watch.
      await eventually('the stall to be declared', async () => (await stalledRestarts()) > stalledBefore, 10_000);
      await eventually('the grant, through the new connection', () => cache.lookup('198.51.100.70') !== undefined, 5000);
    } finally {
      await cache.stop();
      client.close();
      link.close();
    }
  });
});

describe('GrantCache and GrantStore across an API server and etcd restart', () => {
  let plane: ControlPlane;
  before(async () => {
    plane = await ownControlPlane('mail', { crds: true });
  });
  after(() => plane.stop());

  it('catches up after both were killed and restarted on the same data', async () => {
    const client = plane.client();
    const store = new GrantStore({ client, namespace: 'mail', ttlMs: 30 * MIN, renewIntervalMs: 5 * MIN, ipv6PrefixLength: 64 });
    const cache = new GrantCache({ client, namespace: 'mail' });
    await cache.start();
    assert.equal(await store.renew('203.0.113.1', 'alice', 'pop3'), 'created');
    await eventually('first grant', () => cache.lookup('203.0.113.1') !== undefined);

    await plane.kill();
    // The login path does not fail for the API's fault: the write is retried in the background.
    await assert.rejects(store.renew('203.0.113.2', 'bob', 'pop3'), { name: 'GrantWriteError' });
    assert.ok(cache.lookup('203.0.113.1'), 'a disconnected cache still answers from what it holds');
    await plane.start();

    await eventually('the background retry lands once the server is back', () => cache.lookup('203.0.113.2') !== undefined, 60_000);
    assert.equal(cache.lookup('203.0.113.2')?.user, 'bob');
    await client.delete(grantsPath('mail', 'v4-203.0.113.1'));
    await eventually('deletion after restart', () => cache.lookup('203.0.113.1') === undefined, 20_000);
    assert.equal(await store.renew('2001:db8:5:6::77', 'carol', 'pop3'), 'created');
    await eventually('IPv6 grant after restart', () => cache.lookup('2001:db8:5:6::1')?.user === 'carol', 20_000);

    // An API server outage during which a grant vanishes from etcd: the restarted server cannot
    // replay that deletion (its watch cache starts anew, so our resume gets 410), and only the
    // relist can reveal it. The cache must drop the grant.
    const relists = await metricValue('kubedrac_grant_cache_relists_total');
    await plane.kill({ only: 'kube-apiserver' });
    const key = Buffer.from('/registry/kubedrac.io/relaygrants/mail/v4-203.0.113.2').toString('base64');
    const res = await fetch(`${plane.etcdUrl}/v3/kv/deleterange`, { method: 'POST', body: JSON.stringify({ key }) });
    assert.equal(((await res.json()) as { deleted?: string }).deleted, '1');
    await plane.start();
    await eventually('missed deletion repaired by a relist', () => cache.lookup('203.0.113.2') === undefined, 30_000);
    assert.equal(cache.syncedBy, 'watch-list', 'the repair came from the streamed list');
    assert.ok((await metricValue('kubedrac_grant_cache_relists_total')) > relists);
    await cache.stop();
    store.close();
    client.close();
  });
});

describe('GrantCache full syncs: a streamed list (watch-list) and paged lists give the same index', () => {
  let k: TestKube;
  const names: string[] = [];
  before(async () => {
    k = await kubeForTest('cache-sync');
    const t = Date.now() + 30 * MIN;
    // More than two pages of the paged list below, and IPv6 prefixes among them.
    const keys = [
      ...Array.from({ length: 120 }, (_, i) => grantKeyFor(`192.0.2.${i}`, 64)),
      ...Array.from({ length: 30 }, (_, i) => grantKeyFor(`2001:db8:${i.toString(16)}::1`, 64)),
    ];
    await Promise.all(keys.map(({ name, address }, i) => {
      names.push(name);
      return k.client.create(grantsPath(k.namespace), grant(name, address, t + i, `user${i}`));
    }));
  });
  after(() => k.cleanup());

  it('holds the same grants, users and expiries either way, and both follow later events', async () => {
    const streamed = new GrantCache({ client: k.client, namespace: k.namespace });
    const paged = new GrantCache({ client: k.client, namespace: k.namespace, syncBy: 'list', listPageSize: 50 });
    try {
      await Promise.all([streamed.start(), paged.start()]);
      assert.equal(streamed.syncedBy, 'watch-list');
      assert.equal(paged.syncedBy, 'list');
      assert.equal(streamed.size, names.length);
      assert.deepEqual(new Map(streamed.entries()), new Map(paged.entries()));
      // Watching from the bookmark's version: nothing written after the initial events is missed.
      await k.client.delete(grantsPath(k.namespace, 'v4-192.0.2.7'));
      await k.client.create(grantsPath(k.namespace), grant('v4-192.0.2.200', '192.0.2.200', Date.now() + MIN));
      for (const c of [streamed, paged]) {
        await eventually('the delete and the create', () => c.get('v4-192.0.2.7') === undefined && c.lookup('192.0.2.200') !== undefined);
        assert.ok(c.watching);
      }
      assert.deepEqual(new Map(streamed.entries()), new Map(paged.entries()));
    } finally {
      await Promise.all([streamed.stop(), paged.stop()]);
    }
  });
});

describe('GrantCache on an API server without watch-list (the WatchList gate off, as 1.31 and 1.33 ship)', () => {
  let plane: ControlPlane;
  before(async () => {
    plane = await ownControlPlane('mail', { crds: true, apiServerFlags: ['--feature-gates=WatchList=false'] });
    const c = plane.client();
    await c.create(grantsPath('mail'), grant('v4-198.51.100.9', '198.51.100.9', Date.now() + 30 * MIN));
    c.close();
  });
  after(() => plane.stop());

  it('falls back to paged lists, for the first sync and after a 410', async () => {
    const client = plane.client();
    const cache = new GrantCache({ client, namespace: 'mail' });
    try {
      await cache.start();
      assert.equal(cache.syncedBy, 'list');
      assert.equal(cache.lookup('198.51.100.9')?.user, 'ideal');
      const relists = await metricValue('kubedrac_grant_cache_relists_total');
      cache.restartWatch('1');
      await eventually('relist after 410', async () => (await metricValue('kubedrac_grant_cache_relists_total')) > relists);
      assert.equal(cache.syncedBy, 'list');
      await client.create(grantsPath('mail'), grant('v4-198.51.100.10', '198.51.100.10', Date.now() + MIN));
      await eventually('watching after the fallback', () => cache.lookup('198.51.100.10') !== undefined);
    } finally {
      await cache.stop();
      client.close();
    }
  });
});
