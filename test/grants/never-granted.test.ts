// Addresses that must never be granted, whoever asks, on the real API server: a `kubectl apply` of
// such a grant is refused by the CRD, a POP3 login through a trusted proxy whose header names one
// (or names the proxy itself) writes nothing, and SMTP does not relay for such a header.
// Run with `npm test -- test/grants/never-granted.test.ts`.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { NeverGrantedError, grantNameOf, parseGrantAddress } from '../../src/grants/address.ts';
import { GrantCache } from '../../src/grants/cache.ts';
import { GrantStore } from '../../src/grants/store.ts';
import { API_VERSION, GrantWriteError, KIND, type RelayGrant } from '../../src/grants/types.ts';
import { getGrantFor } from '../../src/grants/live-get.ts';
import { RawClient, makeWorld, startServer, type StartedServer, type World } from '../pop3/support.ts';
import { proxyArgs, swaks } from '../smtp/peers.ts';
import { memoryLogger, startTestSmtp, type TestSmtp } from '../smtp/support.ts';
import { kubeForTest, type TestKube } from '../support/kube.ts';
import { eventually } from '../support/eventually.ts';

const SWAKS_RELAYED = 0;
const SWAKS_RCPT_REFUSED = 24;

describe('addresses that are never granted, on the real API server', () => {
  let k: TestKube;
  let world: World;
  let store: GrantStore;
  let cache: GrantCache;
  let pop3: StartedServer<GrantStore>;
  let smtp: TestSmtp;
  before(async () => {
    k = await kubeForTest('never-granted');
    world = makeWorld('never-granted');
    store = new GrantStore({ client: k.client, namespace: k.namespace, ttlMs: 30 * 60_000, renewIntervalMs: 5 * 60_000, ipv6PrefixLength: 64 });
    cache = new GrantCache({ client: k.client, namespace: k.namespace, log: memoryLogger() });
    await cache.start();
    // The proxy in front of both is 127.0.0.1: every connection below comes from it with a header.
    pop3 = await startServer(world, { allowPlaintextAuth: true, trustedProxies: ['127.0.0.1'] }, store);
    smtp = await startTestSmtp({ trustedProxies: ['127.0.0.1'] }, { grants: cache, liveLookup: (ip) => getGrantFor(k.client, k.namespace, ip, 64) });
  });
  after(async () => {
    await smtp?.close();
    await pop3?.close();
    store?.close();
    await cache?.stop();
    await k?.cleanup();
    world?.cleanup();
  });

  const grantNames = async () => (await k.client.request<{ items: RelayGrant[] }>('GET', `/apis/kubedrac.io/v1alpha1/namespaces/${k.namespace}/relaygrants`)).items.map((g) => g.metadata.name);

  it('kubectl apply of a grant for such an address, or a prefix covering one or wider than /32, is refused', async () => {
    const manifest = (address: string): RelayGrant => ({
      apiVersion: API_VERSION,
      kind: KIND,
      metadata: { name: grantNameOf(parseGrantAddress(address)) },
      spec: { address, user: 'admin', source: 'manual', expiresAt: '2030-01-01T00:00:00Z' },
    });
    const apply = async (address: string): Promise<string> => {
      const file = path.join(world.dir, `grant-${address.replace(/[^0-9a-f.]/g, '_')}.json`);
      fs.writeFileSync(file, JSON.stringify(manifest(address)));
      try {
        return await k.kubectl('apply', '-f', file);
      } catch (err) {
        return `refused: ${(err as { stderr?: string }).stderr ?? String(err)}`;
      }
    };
    for (const address of ['0.0.0.0', '255.255.255.255', '224.0.0.251', '239.1.2.3', '240.0.0.1', '0.1.2.3', '::', 'ff02::1', '::102:304', '0.0.0.0/0', '192.0.0.0/2', '224.0.0.0/4', '::/64']) {
      assert.match(await apply(address), /^refused: [^]*spec\.address: Invalid value: [^]*must not be an address no client can have/, address);
    }
    assert.match(await apply('2001::/16'), /^refused: [^]*must not be an IPv6 prefix wider than \/32/);
    for (const address of ['192.0.2.10', '::1', '10.1.0.0/16', '2001:db8::/32', '223.255.255.255', 'fe80::1']) {
      assert.match(await apply(address), /created/, address);
    }
  });

  it('the grant store refuses them whoever asks, and writes nothing', async () => {
    for (const [ip, proxyPeer] of [
      ['0.0.0.0', undefined],
      ['::ffff:0.0.0.0', undefined],
      ['::ffff:255.255.255.255', undefined],
      ['ff02::fb', undefined],
      ['198.51.100.7', '198.51.100.7'],
      ['2001:db8:5:6::99', '2001:db8:5:6::1'],
    ] as const) {
      await assert.rejects(
        store.renew(ip, 'someone', 'whoson', { proxyPeer }),
        (err: unknown) => err instanceof GrantWriteError && err.cause instanceof NeverGrantedError,
        ip,
      );
    }
    const names = await grantNames();
    for (const name of ['v4-0.0.0.0', 'v4-255.255.255.255', 'v4-198.51.100.7', 'v6-20010db8000500060000000000000000-64']) assert.ok(!names.includes(name), name);
  });

  it('a login through the proxy whose header names such an address, or the proxy, grants nothing; SMTP does not relay for them', async () => {
    const login = async (header: string) => {
      const c = await RawClient.connect(pop3.server.port, { greeting: false });
      c.send(`${header}\r\n`);
      assert.match(await c.line(), /^\+OK/);
      const reply = await c.login('carol', world.passwords.carol);
      await c.cmd('QUIT');
      return reply;
    };
    const never = [
      'PROXY TCP4 0.0.0.0 127.0.0.1 40000 110',
      'PROXY TCP4 255.255.255.255 127.0.0.1 40000 110',
      'PROXY TCP4 224.0.0.1 127.0.0.1 40000 110',
      'PROXY TCP6 ::ffff:0.0.0.0 ::1 40000 110',
      'PROXY TCP6 ::ffff:255.255.255.255 ::1 40000 110',
      // The proxy's own address: what a health check or a misconfigured proxy would send.
      'PROXY TCP4 127.0.0.1 127.0.0.1 40000 110',
    ];
    // The logins themselves succeed (the user may read mail); only the grant is refused.
    for (const header of never) assert.match(await login(header), /^\+OK Logged in/, header);
    // A real client through the same proxy does get one (so that the test above can fail).
    assert.match(await login('PROXY TCP4 192.0.2.44 127.0.0.1 40000 110'), /^\+OK Logged in/);
    await eventually('the grant of the real client', async () => (await grantNames()).includes('v4-192.0.2.44'), 30_000);
    const names = await grantNames();
    for (const name of ['v4-0.0.0.0', 'v4-255.255.255.255', 'v4-224.0.0.1', 'v4-127.0.0.1']) assert.ok(!names.includes(name), `${name} in ${names.join(', ')}`);

    await eventually('the grant in the cache', () => cache.lookup('192.0.2.44') !== undefined, 30_000);
    const relayed = await swaks({ port: smtp.port, to: 'x@remote.test', extra: proxyArgs(1, '192.0.2.44') });
    assert.equal(relayed.code, SWAKS_RELAYED, relayed.stdout);
    for (const source of ['0.0.0.0', '255.255.255.255', '127.0.0.1', '224.0.0.1']) {
      for (const version of [1, 2] as const) {
        const r = await swaks({ port: smtp.port, to: 'x@remote.test', extra: proxyArgs(version, source) });
        assert.equal(r.code, SWAKS_RCPT_REFUSED, `${source} (PROXY v${version}): ${r.stdout}`);
        assert.match(r.stdout, /550 5\.7\.1/);
      }
    }
  });
});
