// A real Debian Postfix (a private instance from harness/postfix.ts) asking our two readers
// whether a client may relay, with grants on the real API server: once through
// `check_client_access socketmap:inet:127.0.0.1:PORT:drac`, once through `check_policy_service`.
// The SMTP client is Python's smtplib, bound to 127.0.0.5 (mynetworks holds only 127.0.0.2).
// Four cases each: not granted -> 554 5.7.1, granted -> 250, revoked -> 554 again, bridge down ->
// 4xx (never 250); and a cache that is not synced -> 4xx. Run with `npm test -- test/bridge/postfix.test.ts`.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import type { BridgeContext, RunningListener } from '../../src/bridge/listener.ts';
import { startPolicyListener } from '../../src/bridge/policy.ts';
import { startSocketmapListener } from '../../src/bridge/socketmap.ts';
import { GrantCache } from '../../src/grants/cache.ts';
import { GrantStore } from '../../src/grants/store.ts';
import { NetworkList } from '../../src/net/networks.ts';
import { kubeForTest, type TestKube } from '../support/kube.ts';
import { memoryLogger } from '../smtp/support.ts';
import { startPostfix, type PostfixInstance } from '../../harness/postfix.ts';

const run = promisify(execFile);
const MIN = 60_000;
const CLIENT = '127.0.0.5';

/** smtplib from CLIENT: EHLO, MAIL, RCPT to a domain Postfix does not own; prints the RCPT reply. */
const SMTP_CLIENT = `
import smtplib, sys
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), local_hostname='client.test', timeout=30, source_address=(sys.argv[2], 0))
s.ehlo()
s.mail('someone@client.test')
code, msg = s.rcpt('friend@outside.example')
print(code, msg.decode())
try:
    s.quit()
except Exception:
    pass
`;
import { eventually } from '../support/eventually.ts';

async function rcptReply(postfix: PostfixInstance): Promise<string> {
  const { stdout } = await run('/usr/bin/python3', ['-c', SMTP_CLIENT, String(postfix.port), CLIENT], { timeout: 40_000 });
  return stdout.trim();
}

/** What we saw, printed at the end so a reader of the test output sees Postfix's exact words. */
const observed: string[] = [];

for (const kind of ['socketmap', 'policy'] as const) {
  describe(`Debian Postfix with ${kind === 'socketmap' ? 'check_client_access socketmap' : 'check_policy_service'}`, () => {
    let k: TestKube;
    let store: GrantStore;
    let cache: GrantCache;
    let listener: RunningListener;
    let postfix: PostfixInstance;
    let pretendUnsynced = false;
    const lines: string[] = [];

    before(async () => {
      k = await kubeForTest(`bridge-postfix-${kind}`);
      store = new GrantStore({ client: k.client, namespace: k.namespace, ttlMs: 30 * MIN, renewIntervalMs: 5 * MIN, ipv6PrefixLength: 64 });
      cache = new GrantCache({ client: k.client, namespace: k.namespace, log: memoryLogger(lines) });
      await cache.start();
      // The real cache, behind a switch that makes it look unsynced (as after a restart).
      const grants = { get synced() { return !pretendUnsynced && cache.synced; }, lookup: (ip: string, now?: number) => cache.lookup(ip, now) };
      const ctx: BridgeContext = { grants, store, log: memoryLogger(lines) };
      const opts = { host: '127.0.0.1', port: 0, allow: NetworkList.parse(['127.0.0.0/8'], 'test') };
      listener = kind === 'socketmap' ? await startSocketmapListener({ ...opts, mapName: 'drac' }, ctx) : await startPolicyListener(opts, ctx);
      const check =
        kind === 'socketmap' ? `check_client_access socketmap:inet:127.0.0.1:${listener.port}:drac` : `check_policy_service inet:127.0.0.1:${listener.port}`;
      postfix = await startPostfix({
        domains: ['local.test'],
        mainCf: [
          'mynetworks = 127.0.0.2/32',
          `smtpd_relay_restrictions = permit_mynetworks, ${check}, reject_unauth_destination`,
          // Keep the bridge-down case short: one try, a short timeout.
          'smtpd_policy_service_timeout = 3s',
          'smtpd_policy_service_try_limit = 1',
          'smtpd_policy_service_max_idle = 2s',
        ],
      });
    });

    after(async () => {
      postfix?.cleanup();
      await listener?.close();
      await cache?.stop();
      store?.close();
      await k?.cleanup();
    });

    it('refuses to relay for a client without a grant (554 5.7.1)', async () => {
      const reply = await rcptReply(postfix);
      observed.push(`${kind} not granted: ${reply}`);
      assert.match(reply, /^554 5\.7\.1 .*Relay access denied/);
    });

    it('relays for a granted client (250)', async () => {
      await store.renew(CLIENT, 'alice@example.org', 'pop3');
      await eventually('the grant in the cache', () => cache.lookup(CLIENT) !== undefined);
      const reply = await rcptReply(postfix);
      observed.push(`${kind} granted: ${reply}`);
      assert.match(reply, /^250 /);
    });

    it('refuses again once the grant is revoked', async () => {
      assert.equal(await store.revoke(CLIENT), true);
      await eventually('the grant gone from the cache', () => cache.lookup(CLIENT) === undefined);
      const reply = await rcptReply(postfix);
      observed.push(`${kind} revoked: ${reply}`);
      assert.match(reply, /^554 5\.7\.1 .*Relay access denied/);
    });

    it('answers 4xx, never 250, while the cache is not synced (even with a grant)', async () => {
      await store.renew(CLIENT, 'alice@example.org', 'pop3');
      await eventually('the grant in the cache', () => cache.lookup(CLIENT) !== undefined);
      pretendUnsynced = true;
      try {
        const reply = await rcptReply(postfix);
        observed.push(`${kind} cache not synced: ${reply}`);
        assert.match(reply, /^4\d\d 4\.\d\.\d /);
      } finally {
        pretendUnsynced = false;
      }
      assert.match(await rcptReply(postfix), /^250 /);
    });

    it('answers 4xx, never 250, when the bridge is down (even with a grant)', async () => {
      assert.ok(cache.lookup(CLIENT));
      await listener.close();
      const reply = await rcptReply(postfix);
      observed.push(`${kind} bridge down: ${reply}`);
      assert.match(reply, /^4\d\d 4\.\d\.\d /);
    });
  });
}

after(() => {
  process.stdout.write(`# Postfix RCPT replies observed:\n${observed.map((l) => `#   ${l}`).join('\n')}\n`);
});
