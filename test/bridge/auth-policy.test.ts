// The Dovecot auth-policy writer at the HTTP level, with grants on the real API server: the API
// key (missing, wrong, the bare-value X-API-Key form, compared whole), `allow` always allowing,
// reports that grant and reports that must not, and garbage refused without a grant or a crash.
// The real Dovecot is in dovecot-imap.test.ts. Run with `npm test -- test/bridge/auth-policy.test.ts`.
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { apiKeyMatches, commandOf, decideReport, MAX_BODY_BYTES, startAuthPolicyListener } from '../../src/bridge/auth-policy.ts';
import type { BridgeContext, RunningListener } from '../../src/bridge/listener.ts';
import { grantsPath } from '../../src/grants/paths.ts';
import { GrantStore } from '../../src/grants/store.ts';
import type { RelayGrant } from '../../src/grants/types.ts';
import { NetworkList } from '../../src/net/networks.ts';
import { registry } from '../../src/observability/metrics.ts';
import { kubeForTest, type TestKube } from '../support/kube.ts';
import { memoryLogger, run } from '../smtp/support.ts';
import { eventuallyValue } from '../support/eventually.ts';

const MIN = 60_000;
const KEY = 'k3y-for-dovecot-0123456789abcdef';

interface Reply {
  status: number;
  body: string;
}

/** One HTTP request on its own connection (Dovecot's http-client speaks plain HTTP/1.1 like this). */
function post(port: number, target: string, body: string | Buffer, headers: Record<string, string> = {}, method = 'POST'): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, path: target, method, agent: false, headers: { 'Content-Type': 'application/json', 'X-API-Key': KEY, ...headers } },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
      },
    );
    // A server that refuses a huge body may close while it is still being written.
    req.on('error', reject);
    req.end(body);
  });
}

const report = (fields: Record<string, unknown>) =>
  JSON.stringify({ device_id: '', login: 'alice', protocol: 'imap', pwhash: 'a1b2c3', remote: '127.0.0.51', session_id: 'x1', success: true, policy_reject: false, ...fields });

async function requests(result: string): Promise<number> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === 'kubedrac_bridge_requests_total');
  return (m?.values ?? []).filter((v) => v.labels.protocol === 'auth-policy' && v.labels.result === result).reduce((s, v) => s + v.value, 0);
}

describe('auth-policy decisions (no sockets)', () => {
  it('reads the command from the query, with or without other parameters', () => {
    assert.equal(commandOf('/?command=allow'), 'allow');
    assert.equal(commandOf('/policy?site=a&command=report'), 'report');
    assert.equal(commandOf('/'), undefined);
    assert.equal(commandOf('/?command=delete'), undefined);
    assert.equal(commandOf('/?command=allow&command=report'), undefined);
  });

  it('renews only for a successful, unrejected IMAP or POP3 login from a client address', () => {
    assert.deepEqual(decideReport(JSON.parse(report({})) as unknown), { kind: 'renew', address: '127.0.0.51', user: 'alice', source: 'imap' });
    assert.deepEqual(decideReport({ success: true, protocol: 'pop3', remote: '::ffff:192.0.2.7', login: 'bob' }), {
      kind: 'renew',
      address: '192.0.2.7',
      user: 'bob',
      source: 'pop3',
    });
    assert.equal(decideReport(JSON.parse(report({ success: false })) as unknown).kind, 'skip');
    assert.equal(decideReport(JSON.parse(report({ policy_reject: true })) as unknown).kind, 'skip');
    for (const protocol of ['submission', 'smtp', 'lmtp', 'sieve', 'doveadm', '']) {
      assert.equal(decideReport(JSON.parse(report({ protocol })) as unknown).kind, 'skip', protocol);
    }
    for (const remote of ['', 'unknown', '0.0.0.0', '224.0.0.1', '10.0.0.0/8']) {
      assert.equal(decideReport(JSON.parse(report({ remote })) as unknown).kind, 'skip', remote);
    }
    assert.equal(decideReport({ protocol: 'imap', remote: '192.0.2.7' }).kind, 'malformed', 'no success field');
    assert.equal(decideReport({ success: 'true', protocol: 'imap', remote: '192.0.2.7' }).kind, 'malformed');
    assert.equal(decideReport({ success: true, remote: '192.0.2.7' }).kind, 'malformed', 'no protocol');
    assert.equal(decideReport({ success: true, protocol: 'imap' }).kind, 'malformed', 'no remote');
    assert.equal(decideReport([]).kind, 'malformed');
    assert.deepEqual(decideReport({ success: true, protocol: 'imap', remote: '192.0.2.7', login: 'x'.repeat(400) }), {
      kind: 'renew',
      address: '192.0.2.7',
      user: '',
      source: 'imap',
    });
  });

  it('never renews unless success is true and policy_reject is not', () => {
    fc.assert(
      fc.property(fc.dictionary(fc.constantFrom('success', 'policy_reject', 'protocol', 'remote', 'login'), fc.jsonValue()), (body) => {
        const d = decideReport(body);
        if (d.kind === 'renew') assert.ok(body.success === true && body.policy_reject !== true);
      }),
    );
  });

  it('compares API keys whole', () => {
    assert.equal(apiKeyMatches(KEY, KEY), true);
    assert.equal(apiKeyMatches(KEY, KEY.slice(0, -1)), false);
    assert.equal(apiKeyMatches(KEY, `${KEY}x`), false);
    assert.equal(apiKeyMatches(KEY, ''), false);
    assert.equal(apiKeyMatches(KEY, undefined), false);
  });
});

describe('auth-policy listener on the real API server', () => {
  let k: TestKube;
  let store: GrantStore;
  let brokenStore: GrantStore;
  let listener: RunningListener;
  let broken: RunningListener;
  let strangers: RunningListener;
  const lines: string[] = [];

  const grantOf = (ip: string) => k.client.get<RelayGrant>(grantsPath(k.namespace, `v4-${ip}`));

  before(async () => {
    k = await kubeForTest('bridge-auth-policy');
    store = new GrantStore({ client: k.client, namespace: k.namespace, ttlMs: 30 * MIN, renewIntervalMs: 5 * MIN, ipv6PrefixLength: 64 });
    // Writes into a namespace that does not exist fail at once (404), like an API server refusing.
    brokenStore = new GrantStore({ client: k.client, namespace: `${k.namespace}-missing`, ttlMs: 30 * MIN, renewIntervalMs: 5 * MIN, ipv6PrefixLength: 64, attempts: 1 });
    const ctx: BridgeContext = { grants: { synced: false, lookup: () => undefined }, store, log: memoryLogger(lines) };
    const opts = { host: '127.0.0.1', port: 0, allow: NetworkList.parse(['127.0.0.0/8'], 'test'), apiHeader: { name: 'X-API-Key', value: KEY } };
    listener = await startAuthPolicyListener(opts, ctx);
    broken = await startAuthPolicyListener(opts, { ...ctx, store: brokenStore });
    strangers = await startAuthPolicyListener({ ...opts, allow: NetworkList.parse(['127.0.0.2/32'], 'test') }, ctx);
  });

  after(async () => {
    await Promise.all([listener?.close(), broken?.close(), strangers?.close()]);
    store?.close();
    brokenStore?.close();
    await k?.cleanup();
  });

  it('refuses a request without the key (401) or with a wrong one (403), and grants nothing', async () => {
    const denied = await requests('denied');
    const missing = await post(listener.port, '/?command=report', report({ remote: '127.0.0.61' }), { 'X-API-Key': '' });
    assert.equal(missing.status, 403, 'an empty value is a wrong value');
    const absent = await new Promise<number>((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port: listener.port, path: '/?command=report', method: 'POST', agent: false, headers: { 'Content-Type': 'application/json' } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      req.end(report({ remote: '127.0.0.61' }));
    });
    assert.equal(absent, 401);
    const wrong = await post(listener.port, '/?command=report', report({ remote: '127.0.0.61' }), { 'X-API-Key': `${KEY.slice(0, -1)}X` });
    assert.equal(wrong.status, 403);
    const otherHeader = await post(listener.port, '/?command=report', report({ remote: '127.0.0.61' }), { 'X-API-Key': '', Authorization: KEY });
    assert.equal(otherHeader.status, 403);
    assert.equal(await grantOf('127.0.0.61'), undefined);
    assert.equal((await requests('denied')) - denied, 4);
  });

  it('answers allow with status 0 (curl sending the header as Dovecot does for a bare value)', async () => {
    const r = await run('curl', [
      '--silent', '--show-error', '--max-time', '10', '--write-out', '\n%{http_code}',
      '-H', 'Content-Type: application/json', '-H', `X-API-Key: ${KEY}`,
      '--data-binary', JSON.stringify({ login: 'alice', pwhash: 'ab12', remote: '127.0.0.62', device_id: '', protocol: 'imap', session_id: 's' }),
      `http://127.0.0.1:${listener.port}/?command=allow`,
    ]);
    assert.equal(r.code, 0, r.stderr);
    const [body, code] = r.stdout.split('\n');
    assert.equal(code, '200');
    assert.deepEqual(JSON.parse(body as string), { status: 0, msg: '' });
    assert.equal(await grantOf('127.0.0.62'), undefined, 'allow grants nothing');
  });

  it('a successful IMAP report creates the grant with source imap and the user; POP3 with source pop3', async () => {
    const r = await post(listener.port, '/?command=report', report({ remote: '127.0.0.52', login: 'alice@example.org' }));
    // 200 once written; 202 when the (first, slow) write outlasts the wait and goes on.
    assert.ok(r.status === 200 || r.status === 202, `${r.status} ${r.body}`);
    const g = await eventuallyValue('the grant for 127.0.0.52', () => grantOf('127.0.0.52'), 15_000, 50);
    assert.equal(g?.spec.source, 'imap');
    assert.equal(g?.spec.user, 'alice@example.org');
    assert.ok(Date.parse(g.spec.expiresAt) > Date.now() + 25 * MIN);

    // The URL Dovecot builds from a url ending in `&`.
    const p = await post(listener.port, '/policy?site=mx1&command=report', report({ remote: '127.0.0.53', login: 'bob', protocol: 'pop3' }));
    assert.ok(p.status === 200 || p.status === 202, `${p.status} ${p.body}`);
    assert.equal((await eventuallyValue('the grant for 127.0.0.53', () => grantOf('127.0.0.53'), 15_000, 50)).spec.source, 'pop3');
  });

  it('reports of failed, policy-rejected or non-mailbox logins grant nothing', async () => {
    for (const [ip, fields] of [
      ['127.0.0.54', { success: false }],
      ['127.0.0.55', { policy_reject: true }],
      ['127.0.0.56', { protocol: 'submission' }],
      ['127.0.0.57', { protocol: 'smtp' }],
    ] as const) {
      const r = await post(listener.port, '/?command=report', report({ remote: ip, ...fields }));
      assert.equal(r.status, 200, r.body);
      assert.equal(await grantOf(ip), undefined, JSON.stringify(fields));
    }
  });

  it('refuses garbage with 4xx and no grant, and keeps serving', async () => {
    const malformed = await requests('malformed');
    const cases: [string, string | Buffer, Record<string, string>, string, number][] = [
      ['/?command=report', '{"success": true, "remote": "127.0.0.58", ', {}, 'POST', 400],
      ['/?command=report', 'not json at all', {}, 'POST', 400],
      ['/?command=report', Buffer.from([0xff, 0xfe, 0x00, 0x7b]), {}, 'POST', 400],
      ['/?command=report', '[1,2,3]', {}, 'POST', 400],
      ['/?command=report', '"a string"', {}, 'POST', 400],
      ['/?command=allow', 'null', {}, 'POST', 400],
      ['/?command=report', report({ remote: '127.0.0.58' }), { 'Content-Type': 'text/plain' }, 'POST', 415],
      ['/?command=block', report({ remote: '127.0.0.58' }), {}, 'POST', 400],
      ['/', report({ remote: '127.0.0.58' }), {}, 'POST', 400],
      ['/?command=report', '', {}, 'GET', 405],
      ['/?command=report', JSON.stringify({ success: 1, remote: '127.0.0.58', protocol: 'imap' }), {}, 'POST', 400],
    ];
    for (const [target, body, headers, method, status] of cases) {
      const r = await post(listener.port, target, body, headers, method);
      assert.equal(r.status, status, `${method} ${target} ${String(body).slice(0, 40)}`);
    }
    const huge = `{"success":true,"protocol":"imap","remote":"127.0.0.58","login":"${'x'.repeat(MAX_BODY_BYTES)}"}`;
    const big = await post(listener.port, '/?command=report', huge).catch((err: Error) => ({ status: -1, body: err.message }));
    assert.ok(big.status === 413 || big.status === -1, `huge body: ${big.status} ${big.body}`);
    // Declared larger than the cap: refused before reading.
    const declared = await rawExchange(listener.port, `POST /?command=report HTTP/1.1\r\nHost: x\r\nX-API-Key: ${KEY}\r\nContent-Type: application/json\r\nContent-Length: 99999999\r\n\r\n{`);
    assert.match(declared, /^HTTP\/1\.1 413 /);
    // Not HTTP at all.
    const junk = await rawExchange(listener.port, '\x00\x01\x02 garbage\r\n\r\n');
    assert.match(junk, /^HTTP\/1\.1 400 /);
    assert.equal(await grantOf('127.0.0.58'), undefined);
    assert.ok((await requests('malformed')) - malformed >= cases.length);
    const ok = await post(listener.port, '/?command=allow', '{}');
    assert.equal(ok.status, 200);
  });

  it('answers 503 when the grant write fails, and grants nothing', async () => {
    const r = await post(broken.port, '/?command=report', report({ remote: '127.0.0.59' }));
    assert.equal(r.status, 503, r.body);
    assert.equal(await grantOf('127.0.0.59'), undefined);
    assert.ok(lines.some((l) => l.includes('auth_policy_write_failed')));
  });

  it('drops peers outside the allow-list before reading', async () => {
    await assert.rejects(post(strangers.port, '/?command=report', report({ remote: '127.0.0.60' })));
    assert.equal(await grantOf('127.0.0.60'), undefined);
  });

  it('serves many reports on one keep-alive connection', async () => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const sockets = new Set<net.Socket>();
      for (let i = 0; i < 5; i++) {
        const status = await new Promise<number>((resolve, reject) => {
          const req = http.request(
            { host: '127.0.0.1', port: listener.port, path: '/?command=report', method: 'POST', agent, headers: { 'Content-Type': 'application/json', 'X-API-Key': KEY } },
            (res) => {
              res.resume();
              res.on('end', () => resolve(res.statusCode ?? 0));
            },
          );
          req.on('socket', (s) => sockets.add(s));
          req.on('error', reject);
          req.end(report({ remote: '127.0.0.52' }));
        });
        assert.equal(status, 200);
      }
      assert.equal(sockets.size, 1);
    } finally {
      agent.destroy();
    }
  });
});

/** Write raw bytes, resolve with whatever comes back before the server closes (or 5 s). */
function rawExchange(port: number, data: string): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let text = '';
    const timer = setTimeout(() => s.destroy(), 5000);
    s.on('data', (d: Buffer) => (text += d.toString('latin1')));
    s.on('error', () => undefined);
    s.on('close', () => {
      clearTimeout(timer);
      resolve(text);
    });
    s.end(data);
  });
}
