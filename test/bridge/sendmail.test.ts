// Debian's sendmail (unpacked, private: own .cf built with m4 from sendmail-cf, own queue and
// port) with the shipped fail-closed ruleset (contrib/sendmail/kube-drac.m4) over the bridge's
// socket map, grants on the real API server. A client on 127.0.0.9 (not a local address for this
// sendmail: checked) is refused without a grant (550), accepted with one (250), refused again
// once it is revoked, and deferred (451, never 250) while the cache is not synced or the bridge
// is down; local recipients are still accepted then. Classic DRAC's ruleset, run the same way,
// relays for everyone while the bridge is down: why it is not shipped.
// Run with `npm test -- test/bridge/sendmail.test.ts`.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { BridgeContext, RunningListener } from '../../src/bridge/listener.ts';
import { startSocketmapListener } from '../../src/bridge/socketmap.ts';
import { GrantCache } from '../../src/grants/cache.ts';
import { GrantStore } from '../../src/grants/store.ts';
import { NetworkList } from '../../src/net/networks.ts';
import { kubeForTest, type TestKube } from '../support/kube.ts';
import { swaks } from '../smtp/peers.ts';
import { memoryLogger } from '../smtp/support.ts';
import { CLASSIC_DRAC_HACK, sendmailUnavailable, shippedHack, startSendmail, type Sendmail } from './sendmail.ts';
import { eventually } from '../support/eventually.ts';

const MIN = 60_000;
const CLIENT = '127.0.0.9';
const LOCAL_RCPT = 'postmaster@mx.sendmail.test';

const skip = sendmailUnavailable() ?? false;

/** The reply to RCPT TO for `to`, sent from `CLIENT` (swaks quits after RCPT: nothing is queued). */
async function rcptReply(s: Sendmail, to = 'x@remote.test'): Promise<string> {
  const r = await swaks({ port: s.port, to, from: 'sender@client.test', local: CLIENT, extra: ['--quit-after', 'RCPT'] });
  const lines = r.stdout.split('\n');
  const i = lines.findIndex((l) => l.includes('-> RCPT TO:'));
  assert.ok(i !== -1, `no RCPT in the dialogue:\n${r.stdout}${r.stderr}`);
  return (lines[i + 1] ?? '').replace(/^<[-*~]+\s+/, '');
}

/** A port nothing listens on: a bridge that is down. */
async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

describe('sendmail with the fail-closed ruleset over the socket map', { skip }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bridge-sendmail-'));
  let k: TestKube;
  let store: GrantStore;
  let cache: GrantCache;
  let socketmap: RunningListener | undefined;
  let unsyncedMap: RunningListener | undefined;
  let sendmail: Sendmail | undefined;
  let sendmailUnsynced: Sendmail | undefined;
  let classic: Sendmail | undefined;

  before(async () => {
    k = await kubeForTest('bridge-sendmail');
    store = new GrantStore({ client: k.client, namespace: k.namespace, ttlMs: 30 * MIN, renewIntervalMs: 5 * MIN, ipv6PrefixLength: 64 });
    cache = new GrantCache({ client: k.client, namespace: k.namespace, log: memoryLogger() });
    await cache.start();
    const ctx: BridgeContext = { grants: cache, store, log: memoryLogger() };
    const allow = NetworkList.parse(['127.0.0.0/8'], 'test');
    const live = await startSocketmapListener({ host: '127.0.0.1', port: 0, allow, mapName: 'drac' }, ctx);
    socketmap = live;
    // The same grants, but a cache that has not loaded yet: the map answers TEMP.
    const unsynced = await startSocketmapListener(
      { host: '127.0.0.1', port: 0, allow, mapName: 'drac' },
      { ...ctx, grants: { synced: false, lookup: (ip: string, now?: number) => cache.lookup(ip, now) } },
    );
    unsyncedMap = unsynced;
    sendmail = await startSendmail({ dir: path.join(dir, 'fail-closed'), map: `inet:${live.port}@127.0.0.1`, hack: shippedHack() });
    sendmailUnsynced = await startSendmail({ dir: path.join(dir, 'unsynced'), map: `inet:${unsynced.port}@127.0.0.1`, hack: shippedHack() });
    classic = await startSendmail({ dir: path.join(dir, 'classic'), map: `inet:${await closedPort()}@127.0.0.1`, hack: CLASSIC_DRAC_HACK });
  });

  after(async () => {
    await Promise.all([sendmail?.stop(), sendmailUnsynced?.stop(), classic?.stop()]);
    await Promise.all([socketmap?.close(), unsyncedMap?.close()]);
    await cache?.stop();
    store?.close();
    await k?.cleanup();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('does not count the client address as local ($=w, $=R)', async () => {
    const out = await sendmail!.addressTest('$=w\n$=R\n');
    assert.match(out, /mx\.sendmail\.test/);
    assert.doesNotMatch(out, /127\.0\.0\.9/);
    assert.doesNotMatch(out, /^127\.?$/m);
  });

  it('the raw .cf rules in contrib are the rules the m4 file builds', () => {
    const rules = (text: string) => text.split('\n').filter((l) => l.startsWith('R') && l.includes('$'));
    const built = fs.readFileSync(sendmail!.cf, 'utf8');
    const start = built.lastIndexOf('SLocal_check_rcpt');
    const section = built.slice(start, built.indexOf('\nS', start + 1));
    const raw = fs.readFileSync(path.join(import.meta.dirname, '../../contrib/sendmail/kube-drac.cf'), 'utf8');
    assert.deepEqual(rules(section).map((l) => l.replace(/\s+/g, ' ')), rules(raw).map((l) => l.replace(/\s+/g, ' ')));
    assert.match(built, /^Kdrac socket -T<TMPF> inet:\d+@127\.0\.0\.1$/m);
  });

  it('no grant -> 550 5.7.1 relaying denied', async () => {
    assert.match(await rcptReply(sendmail!), /^550 5\.7\.1 <x@remote\.test>\.\.\. Relaying denied/);
  });

  it('grant -> 250; revoked -> 550 again', async () => {
    await store.renew(CLIENT, 'alice', 'pop3');
    await eventually('the grant in the cache', () => cache.lookup(CLIENT) !== undefined);
    assert.match(await rcptReply(sendmail!), /^250 2\.1\.5 <x@remote\.test>\.\.\. Recipient ok/);

    assert.equal(await store.revoke(CLIENT), true);
    await eventually('the grant to leave the cache', () => cache.lookup(CLIENT) === undefined);
    assert.match(await rcptReply(sendmail!), /^550 5\.7\.1 .*Relaying denied/);
  });

  it('cache not synced (TEMP) -> 451 4.3.0 even for a granted client; local recipients still 250', async () => {
    await store.renew(CLIENT, 'alice', 'pop3');
    await eventually('the grant in the cache', () => cache.lookup(CLIENT) !== undefined);
    assert.match(await rcptReply(sendmailUnsynced!), /^451 4\.3\.0 Relay authorization temporarily unavailable/);
    assert.match(await rcptReply(sendmailUnsynced!, LOCAL_RCPT), /^250 /);
  });

  it('bridge down -> 451 4.3.0, never 250; local recipients still 250', async () => {
    // The grant is live: only the bridge is missing.
    assert.match(await rcptReply(sendmail!), /^250 /, 'relays while the bridge is up');
    await socketmap!.close();
    socketmap = undefined;
    const reply = await rcptReply(sendmail!);
    assert.doesNotMatch(reply, /^2/);
    assert.match(reply, /^451 4\.3\.0 Relay authorization temporarily unavailable/);
    assert.match(await rcptReply(sendmail!, LOCAL_RCPT), /^250 /);
  });

  it("classic DRAC's ruleset over the same map fails open when the bridge is down (why it is not shipped)", async () => {
    assert.match(await rcptReply(classic!), /^250 2\.1\.5 <x@remote\.test>\.\.\. Recipient ok/);
  });
});
