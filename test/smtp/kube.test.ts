// The seed's dialogue against the real API server: relay refused -> `kubectl apply` of a
// RelayGrant -> relay accepted -> `kubectl delete rg` -> refused again; expired grants, IPv6 /64
// grants through PROXY v2, and the live lookup that closes the window before the watch event.
// Run with `npm test -- test/smtp/kube.test.ts`.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { grantKeyFor } from '../../src/grants/address.ts';
import { GrantCache } from '../../src/grants/cache.ts';
import { grantsPath } from '../../src/grants/paths.ts';
import { API_VERSION, KIND, type RelayGrant } from '../../src/grants/types.ts';
import { parseConfig } from '../../src/config/load.ts';
import { getGrantFor } from '../../src/grants/live-get.ts';
import { runSmtp } from '../../src/smtp/main.ts';
import { kubeForTest, type TestKube } from '../support/kube.ts';
import { proxyArgs, swaks } from './peers.ts';
import { ListGrantLookup, memoryLogger, startTestSmtp, type TestSmtp } from './support.ts';
import { eventually } from '../support/eventually.ts';

let k: TestKube;
let cache: GrantCache;
let t: TestSmtp;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'smtp-kube-'));

function grantManifest(address: string, expiresAt: Date): RelayGrant {
  const key = grantKeyFor(address.split('/')[0] as string, address.includes('/') ? Number(address.split('/')[1]) : 128);
  return {
    apiVersion: API_VERSION,
    kind: KIND,
    metadata: { name: key.name, labels: { 'app.kubernetes.io/managed-by': 'kube-drac', 'kubedrac.io/source': 'manual' } },
    spec: { address: key.address, user: 'ideal', source: 'manual', expiresAt: expiresAt.toISOString().replace(/\.\d{3}Z$/, 'Z') },
  };
}

async function kubectlApply(g: RelayGrant): Promise<void> {
  const file = path.join(tmp, `${g.metadata.name}.json`);
  fs.writeFileSync(file, JSON.stringify(g));
  await k.kubectl('apply', '-f', file);
}

before(async () => {
  k = await kubeForTest('smtp-seed');
  cache = new GrantCache({ client: k.client, namespace: k.namespace, log: memoryLogger() });
  await cache.start();
  t = await startTestSmtp(
    { trustedProxies: ['127.0.0.1'], liveLookup: { enabled: false } },
    { grants: cache },
  );
});
after(async () => {
  await t?.close();
  await cache?.stop();
  await k?.cleanup();
  fs.rmSync(tmp, { recursive: true, force: true });
});

void describe('relay gate on the real API server', () => {
  void it('refused -> kubectl apply -> accepted -> kubectl delete -> refused again', async () => {
    const before = await swaks({ port: t.port, to: 'x@remote.test', local: '127.0.0.21' });
    assert.equal(before.code, 24, before.stdout);

    await kubectlApply(grantManifest('127.0.0.21', new Date(Date.now() + 30 * 60_000)));
    await eventually('the grant in the cache', () => cache.lookup('127.0.0.21') !== undefined);
    const granted = await swaks({ port: t.port, to: 'x@remote.test', local: '127.0.0.21' });
    assert.equal(granted.code, 0, granted.stdout);
    assert.ok(t.messages(t.outbox).some((m) => m.includes('(authorized: pop-before-smtp grant v4-127.0.0.21)')));

    await k.kubectl('delete', 'rg', 'v4-127.0.0.21');
    await eventually('the grant to leave the cache', () => cache.lookup('127.0.0.21') === undefined);
    const after = await swaks({ port: t.port, to: 'x@remote.test', local: '127.0.0.21' });
    assert.equal(after.code, 24, after.stdout);
  });

  void it('refuses a grant that is stored but expired', async () => {
    await kubectlApply(grantManifest('127.0.0.22', new Date(Date.now() - 60_000)));
    await eventually('the expired grant to be listed', () => cache.size > 0);
    const r = await swaks({ port: t.port, to: 'x@remote.test', local: '127.0.0.22' });
    assert.equal(r.code, 24, r.stdout);
  });

  void it('an IPv6 /64 grant allows another address in the /64 and nothing outside it', async () => {
    await kubectlApply(grantManifest('2001:db8:77:1::/64', new Date(Date.now() + 30 * 60_000)));
    await eventually('the /64 grant in the cache', () => cache.lookup('2001:db8:77:1::1') !== undefined);
    const inside = await swaks({ port: t.port, to: 'x@remote.test', local: '127.0.0.1', extra: proxyArgs(2, '2001:db8:77:1:abcd::42') });
    assert.equal(inside.code, 0, inside.stdout);
    const outside = await swaks({ port: t.port, to: 'x@remote.test', local: '127.0.0.1', extra: proxyArgs(2, '2001:db8:77:2::42') });
    assert.equal(outside.code, 24, outside.stdout);
  });
});

void describe('live lookup against the real API server', () => {
  let blind: TestSmtp;
  before(async () => {
    // A cache that never hears of the new grant: only the live GET can find it.
    blind = await startTestSmtp({}, { grants: new ListGrantLookup(), liveLookup: (ip) => getGrantFor(k.client, k.namespace, ip, 64) });
  });
  after(async () => {
    await blind?.close();
  });

  void it('finds a grant the cache has not seen yet, and nothing for strangers', async () => {
    const g = grantManifest('127.0.0.23', new Date(Date.now() + 30 * 60_000));
    await k.client.create<RelayGrant>(grantsPath(k.namespace), g);
    const ok = await swaks({ port: blind.port, to: 'x@remote.test', local: '127.0.0.23' });
    assert.equal(ok.code, 0, ok.stdout);
    assert.ok(blind.messages(blind.outbox).some((m) => m.includes('grant v4-127.0.0.23 via live lookup')));
    const no = await swaks({ port: blind.port, to: 'x@remote.test', local: '127.0.0.24' });
    assert.equal(no.code, 24, no.stdout);
  });

  void it('getGrantFor ignores expired grants and grants for other addresses', async () => {
    assert.equal(await getGrantFor(k.client, k.namespace, '127.0.0.22', 64).then((m) => m && m.expiresAtMs > Date.now()), false);
    assert.equal(await getGrantFor(k.client, k.namespace, '127.0.0.99', 64), undefined);
    const v6 = await getGrantFor(k.client, k.namespace, '2001:db8:77:1::5', 64);
    assert.equal(v6?.name, 'v6-20010db8007700010000000000000000-64');
  });
});

void describe('runSmtp (the role entry point)', () => {
  void it('watches grants, relays for them, and is ready once synced', async () => {
    const yaml = `
kubernetes: { namespace: ${k.namespace}, kubeconfig: ${JSON.stringify(k.kubeconfigPath)} }
metrics: { host: 127.0.0.1, port: 0 }
log: { level: warn }
smtp:
  hostname: mx.example.org
  listen: { host: 127.0.0.1, port: 0 }
  localDomains: [example.org]
  mailRoot: ${JSON.stringify(path.join(tmp, 'mail'))}
  outbox: ${JSON.stringify(path.join(tmp, 'outbox'))}
`;
    const role = await runSmtp(parseConfig(yaml, 'test'));
    try {
      const deadline = Date.now() + 10_000;
      let ready = 0;
      while (Date.now() < deadline && ready !== 200) {
        ready = (await fetch(`http://127.0.0.1:${role.healthPort}/readyz`)).status;
        if (ready !== 200) await new Promise((r) => setTimeout(r, 50));
      }
      assert.equal(ready, 200);
      await kubectlApply(grantManifest('127.0.0.25', new Date(Date.now() + 30 * 60_000)));
      // The live lookup finds it even before the watch event, so no wait is needed here.
      const ok = await swaks({ port: role.server.port, to: 'x@remote.test', local: '127.0.0.25' });
      assert.equal(ok.code, 0, ok.stdout);
      const no = await swaks({ port: role.server.port, to: 'x@remote.test', local: '127.0.0.26' });
      assert.equal(no.code, 24, no.stdout);
      const metrics = await (await fetch(`http://127.0.0.1:${role.healthPort}/metrics`)).text();
      assert.match(metrics, /kubedrac_smtp_relay_decisions_total\{decision="denied",reason="no_grant"\} [1-9]/);
      assert.match(metrics, /kubedrac_smtp_messages_total\{result="relayed"\} [1-9]/);
    } finally {
      await role.close();
    }
  });
});
