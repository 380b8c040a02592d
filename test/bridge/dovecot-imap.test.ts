// Debian's Dovecot IMAP (a private instance: own config, base_dir, port, Maildirs) with
// `auth_policy_server_url` pointed at the auth-policy listener, grants on the real API server:
// a successful login with Python's imaplib creates the RelayGrant (source imap, the user), a
// failed login creates none, the SMTP role then relays for that address and not for others; a
// Dovecot holding a wrong key still logs users in (kube-drac never blocks a login) but grants
// nothing, nor does one whose bridge is down.
// Run with `npm test -- test/bridge/dovecot-imap.test.ts` (needs dovecot-imapd).
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startAuthPolicyListener } from '../../src/bridge/auth-policy.ts';
import type { BridgeContext, RunningListener } from '../../src/bridge/listener.ts';
import { GrantCache } from '../../src/grants/cache.ts';
import { grantsPath } from '../../src/grants/paths.ts';
import { GrantStore } from '../../src/grants/store.ts';
import type { RelayGrant } from '../../src/grants/types.ts';
import { NetworkList } from '../../src/net/networks.ts';
import { kubeForTest, type TestKube } from '../support/kube.ts';
import { swaks } from '../smtp/peers.ts';
import { memoryLogger, run, startTestSmtp, type TestSmtp } from '../smtp/support.ts';
import { eventually, eventuallyValue } from '../support/eventually.ts';

const MIN = 60_000;
const KEY = 'dovecot-policy-key-0123456789abcdef';
const PASSWORD = 'imap-password';
/** Client source addresses, one per case, so each grant is the case's own. */
const GOOD = '127.0.0.41';
const FAILED = '127.0.0.43';
const STRANGER = '127.0.0.42';
const WRONG_KEY_CLIENT = '127.0.0.44';
const BRIDGE_DOWN_CLIENT = '127.0.0.45';

const hasDovecotImap = fs.existsSync('/usr/lib/dovecot/imap') && fs.existsSync('/usr/lib/dovecot/imap-login');
const skip = hasDovecotImap ? false : 'needs dovecot-imapd (apt-get install dovecot-imapd)';

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

interface Dovecot {
  port: number;
  dir: string;
  log(): string;
  stop(): Promise<void>;
}

/** A private Dovecot IMAP server whose auth process reports to `policyUrl` with `apiHeader`. */
async function startDovecot(root: string, name: string, policyUrl: string, apiHeader: string): Promise<Dovecot> {
  const dir = path.join(root, name);
  fs.mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const conf = path.join(dir, 'dovecot.conf');
  const logPath = path.join(dir, 'dovecot.log');
  fs.writeFileSync(
    conf,
    `
base_dir = ${dir}/run
state_dir = ${dir}/state
log_path = ${logPath}
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_cache_size = 0
auth_failure_delay = 0
auth_debug = yes
mail_location = maildir:${root}/mail/%u
passdb {
  driver = passwd-file
  args = scheme=SHA512-CRYPT ${root}/users
}
userdb {
  driver = static
  args = uid=65534 gid=65534 home=${root}/mail/%u
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = ${port}
  }
  inet_listener imaps {
    port = 0
  }
}
auth_policy_server_url = ${policyUrl}
auth_policy_server_api_header = ${apiHeader}
auth_policy_hash_nonce = kube-drac-test-nonce
auth_policy_report_after_auth = yes
`,
  );
  const child: ChildProcess = spawn('dovecot', ['-c', conf, '-F'], { stdio: 'ignore' });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const log = () => (fs.existsSync(logPath) ? fs.readFileSync(logPath, 'utf8') : '');
  const stop = async () => {
    if (child.exitCode === null) child.kill('SIGTERM');
    await exited;
  };
  for (let i = 0; i < 100; i++) {
    const up = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (up) return { port, dir, log, stop };
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  await stop();
  throw new Error(`dovecot did not start:\n${log()}`);
}

/** Python's imaplib logs in from `source` and selects INBOX; resolves with `OK` or `NO <error>`. */
async function imapLogin(port: number, source: string, user: string, password: string): Promise<string> {
  const script = `
import imaplib, json, socket, sys
a = json.loads(sys.argv[1])
class SourcedIMAP(imaplib.IMAP4):
    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout, source_address=(a['source'], 0))
m = SourcedIMAP('127.0.0.1', a['port'], timeout=15)
try:
    m.login(a['user'], a['password'])
    typ, _ = m.select('INBOX')
    print('OK', typ)
    m.logout()
except imaplib.IMAP4.error as e:
    print('NO', e)
`;
  const r = await run('python3', ['-c', script, JSON.stringify({ port, source, user, password })]);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout.trim();
}

describe('Dovecot IMAP reporting logins to the auth-policy listener', { skip }, () => {
  let k: TestKube;
  let store: GrantStore;
  let cache: GrantCache;
  let policy: RunningListener;
  let dovecot: Dovecot | undefined;
  let wrongKeyDovecot: Dovecot | undefined;
  let bridgeDownDovecot: Dovecot | undefined;
  let smtp: TestSmtp | undefined;
  const lines: string[] = [];
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'bridge-dovecot-'));
  const grantOf = (ip: string) => k.client.get<RelayGrant>(grantsPath(k.namespace, `v4-${ip}`));

  before(async () => {
    // Dovecot's mail processes run as nobody: the tree must be reachable and the Maildirs theirs.
    fs.chmodSync(root, 0o755);
    const hash = execFileSync('doveadm', ['pw', '-s', 'SHA512-CRYPT', '-p', PASSWORD]).toString().trim();
    fs.writeFileSync(path.join(root, 'users'), `alice:${hash}\nbob:${hash}\n`, { mode: 0o644 });
    for (const u of ['alice', 'bob']) for (const sub of ['new', 'cur', 'tmp']) fs.mkdirSync(path.join(root, 'mail', u, sub), { recursive: true });
    execFileSync('chown', ['-R', '65534:65534', path.join(root, 'mail')]);

    k = await kubeForTest('bridge-dovecot-imap');
    store = new GrantStore({ client: k.client, namespace: k.namespace, ttlMs: 30 * MIN, renewIntervalMs: 5 * MIN, ipv6PrefixLength: 64 });
    cache = new GrantCache({ client: k.client, namespace: k.namespace, log: memoryLogger(lines) });
    await cache.start();
    const ctx: BridgeContext = { grants: cache, store, log: memoryLogger(lines) };
    policy = await startAuthPolicyListener(
      { host: '127.0.0.1', port: 0, allow: NetworkList.parse(['127.0.0.0/8'], 'test'), apiHeader: { name: 'X-API-Key', value: KEY } },
      ctx,
    );
    // The bare-value header form (Dovecot sends it as X-API-Key).
    dovecot = await startDovecot(root, 'good', `http://127.0.0.1:${policy.port}/`, KEY);
    // The `Name: value` form with a wrong value, and a URL ending in `&`.
    wrongKeyDovecot = await startDovecot(root, 'wrong-key', `http://127.0.0.1:${policy.port}/policy?site=test&`, `X-API-Key: not-the-${KEY}`);
    // Nothing listens there: the bridge is down.
    bridgeDownDovecot = await startDovecot(root, 'bridge-down', `http://127.0.0.1:${await freePort()}/`, KEY);
    smtp = await startTestSmtp({ liveLookup: { enabled: false } }, { grants: cache });
  });

  after(async () => {
    await dovecot?.stop();
    await wrongKeyDovecot?.stop();
    await bridgeDownDovecot?.stop();
    await smtp?.close();
    await policy?.close();
    await cache?.stop();
    store?.close();
    await k?.cleanup();
    fs.rmSync(root, { recursive: true, force: true });
  });

  it('a successful IMAP login creates the grant (source imap, the user); the SMTP role then relays for that address only', async () => {
    assert.equal((await swaks({ port: smtp!.port, to: 'x@remote.test', local: GOOD })).code, 24, 'no relay before the login');
    assert.equal(await imapLogin(dovecot!.port, GOOD, 'alice', PASSWORD), 'OK OK');
    const g = await eventuallyValue(`the grant for ${GOOD}`, () => grantOf(GOOD), 15_000, 50);
    assert.equal(g?.spec.source, 'imap');
    assert.equal(g?.spec.user, 'alice');
    assert.equal(g?.spec.address, GOOD);
    // What Dovecot actually sent (auth_debug logs the JSON): the report of the success.
    assert.match(dovecot!.log(), /Policy server request JSON: \{.*"login":"alice".*"protocol":"imap".*"remote":"127\.0\.0\.41".*"success":true,"policy_reject":false/);

    await eventually('the grant in the SMTP role cache', () => cache.lookup(GOOD) !== undefined, 15_000, 50);
    const relayed = await swaks({ port: smtp!.port, to: 'x@remote.test', local: GOOD });
    assert.equal(relayed.code, 0, relayed.stdout);
    const refused = await swaks({ port: smtp!.port, to: 'x@remote.test', local: STRANGER });
    assert.equal(refused.code, 24, refused.stdout);
    assert.match(refused.stdout, /<\*\* 550 5\.7\.1 .*Relay access denied/);
  });

  it('a failed login creates no grant', async () => {
    const reportsBefore = (dovecot!.log().match(/"success":false/g) ?? []).length;
    assert.match(await imapLogin(dovecot!.port, FAILED, 'bob', 'wrong-password'), /^NO .*AUTHENTICATIONFAILED|^NO /);
    // Wait until Dovecot has sent the report of the failure and we have answered it.
    await eventually('the failure report', () => (dovecot!.log().match(/"success":false/g) ?? []).length > reportsBefore, 15_000, 50);
    await eventually('the answer to the failure report', () => lines.filter((l) => l.includes('auth_policy_no_grant')).length > 0, 15_000, 50);
    assert.equal(await grantOf(FAILED), undefined);
    assert.equal((await swaks({ port: smtp!.port, to: 'x@remote.test', local: FAILED })).code, 24);
  });

  it('a Dovecot with a wrong key still logs users in, and grants nothing', async () => {
    assert.equal(await imapLogin(wrongKeyDovecot!.port, WRONG_KEY_CLIENT, 'alice', PASSWORD), 'OK OK');
    await eventually('Dovecot logging our refusal', () => /Policy server HTTP error: 403/.test(wrongKeyDovecot!.log()), 15_000, 50);
    assert.equal(await grantOf(WRONG_KEY_CLIENT), undefined);
  });

  it('a Dovecot whose bridge is down still logs users in (auth_policy_reject_on_fail = no), and grants nothing', async () => {
    assert.equal(await imapLogin(bridgeDownDovecot!.port, BRIDGE_DOWN_CLIENT, 'alice', PASSWORD), 'OK OK');
    assert.match(bridgeDownDovecot!.log(), /Policy server HTTP error/);
    assert.equal(await grantOf(BRIDGE_DOWN_CLIENT), undefined);
  });
});
