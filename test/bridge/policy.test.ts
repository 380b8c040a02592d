// The Postfix policy reader: the request reader (across chunk splits, every malformed form refused)
// and the pure decision, then the listener over real sockets with grants on the real API server:
// several requests per connection and pipelined in one write, garbage closed without an answer,
// strangers dropped, other connections still answered. Postfix itself talks to it in
// postfix.test.ts. Run with `npm test -- test/bridge/policy.test.ts`.
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { BridgeContext, RunningListener } from '../../src/bridge/listener.ts';
import {
  ACTION_DEFER,
  ACTION_DUNNO,
  ACTION_OK,
  MAX_POLICY_ATTRIBUTES,
  MAX_POLICY_LINE,
  policyAnswer,
  PolicyReader,
  PolicyRequestError,
  type PolicyRequest,
  startPolicyListener,
} from '../../src/bridge/policy.ts';
import { GrantCache } from '../../src/grants/cache.ts';
import { GrantStore } from '../../src/grants/store.ts';
import type { GrantLookup, GrantMatch } from '../../src/grants/types.ts';
import { NetworkList } from '../../src/net/networks.ts';
import { kubeForTest, type TestKube } from '../support/kube.ts';
import { memoryLogger } from '../smtp/support.ts';
import { eventually } from '../support/eventually.ts';

const MIN = 60_000;

/** A request as Postfix 3.7 sends it (abridged), for `client_address`. */
function request(clientAddress: string | undefined, extra = ''): string {
  const attrs = [
    'request=smtpd_access_policy',
    'protocol_state=RCPT',
    'protocol_name=ESMTP',
    ...(clientAddress === undefined ? [] : [`client_address=${clientAddress}`]),
    'client_name=unknown',
    'reverse_client_name=unknown',
    'helo_name=client.example',
    'sender=a@example.org',
    'recipient=b@example.net',
    'recipient_count=0',
    'queue_id=',
    'instance=1a2b.5f3c.4d5e.0',
    'size=0',
    'ccert_subject=',
    'sasl_method=',
  ];
  return `${attrs.join('\n')}\n${extra}\n`;
}

function readAll(chunks: (string | Buffer)[]): PolicyRequest[] {
  const r = new PolicyReader();
  const out: PolicyRequest[] = [];
  for (const c of chunks) r.push(typeof c === 'string' ? Buffer.from(c, 'latin1') : c, (q) => out.push(q));
  return out;
}

function fixedGrants(entries: Record<string, number>, synced = true): GrantLookup {
  return {
    synced,
    lookup(ip: string, nowMs = Date.now()): GrantMatch | undefined {
      const exp = entries[ip];
      return exp !== undefined && exp > nowMs ? { name: `v-${ip}`, address: ip, user: 'u', expiresAtMs: exp } : undefined;
    },
  };
}

describe('policy reader', () => {
  it('reads requests across every split of the stream', () => {
    const stream = request('192.0.2.7') + request('2001:db8::1') + request(undefined);
    const want = [{ clientAddress: '192.0.2.7' }, { clientAddress: '2001:db8::1' }, { clientAddress: undefined }];
    assert.deepEqual(readAll([stream]), want);
    for (let a = 0; a <= stream.length; a += 7) {
      for (let b = a; b <= stream.length; b += 13) {
        assert.deepEqual(readAll([stream.slice(0, a), stream.slice(a, b), stream.slice(b)]), want, `split at ${a},${b}`);
      }
    }
  });

  it('keeps values with = and UTF-8, ignores attributes it does not know', () => {
    assert.deepEqual(readAll([request('192.0.2.7', 'sender=x=y@example.org\nclient_name=m\u00fcller\nfuture_attribute=1\n')]), [{ clientAddress: '192.0.2.7' }]);
    assert.deepEqual(readAll(['request=smtpd_access_policy\nclient_address=\n\n']), [{ clientAddress: '' }]);
  });

  it('refuses malformed requests', () => {
    const bad: [string, string | Buffer][] = [
      ['line without =', 'request=smtpd_access_policy\nclient_address 192.0.2.7\n\n'],
      ['empty name', 'request=smtpd_access_policy\n=192.0.2.7\n\n'],
      ['empty request', '\n'],
      ['no request=', 'client_address=192.0.2.7\n\n'],
      ['other request', 'request=junk\nclient_address=192.0.2.7\n\n'],
      ['NUL byte', 'request=smtpd_access_policy\nclient_address=192.0.2.7\u0000\n\n'],
      ['CR', 'request=smtpd_access_policy\r\nclient_address=192.0.2.7\r\n\r\n'],
      ['binary', Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 10, 10])],
      ['long line', `request=smtpd_access_policy\nclient_name=${'a'.repeat(MAX_POLICY_LINE)}\n\n`],
      ['long line without end', `request=smtpd_access_policy\nclient_name=${'a'.repeat(MAX_POLICY_LINE + 1)}`],
      ['too many attributes', `request=smtpd_access_policy\n${'x=1\n'.repeat(MAX_POLICY_ATTRIBUTES)}\n`],
      ['request too long', `request=smtpd_access_policy\n${`x=${'a'.repeat(4000)}\n`.repeat(9)}\n`],
    ];
    for (const [what, input] of bad) assert.throws(() => readAll([input]), PolicyRequestError, what);
  });

  it('decides OK only for a live grant, DUNNO otherwise, DEFER_IF_REJECT when unsynced', () => {
    const now = 1_800_000_000_000;
    const g = fixedGrants({ '192.0.2.7': now + 1000, '2001:db8::1': now + 1000, '192.0.2.8': now - 1 });
    assert.equal(policyAnswer('192.0.2.7', g, now), ACTION_OK);
    assert.equal(policyAnswer('::ffff:192.0.2.7', g, now), ACTION_OK);
    assert.equal(policyAnswer('2001:DB8:0::1', g, now), ACTION_OK);
    for (const a of ['192.0.2.8', '192.0.2.9', undefined, '', 'unknown', '192.0.2.7 ', '192.0.2', 'fe80::1%eth0']) {
      assert.equal(policyAnswer(a, g, now), ACTION_DUNNO, JSON.stringify(a));
    }
    const unsynced = fixedGrants({ '192.0.2.7': now + 1000 }, false);
    assert.equal(policyAnswer('192.0.2.7', unsynced, now), ACTION_DEFER);
    assert.equal(policyAnswer('unknown', unsynced, now), ACTION_DUNNO);
    assert.match(ACTION_DEFER, /^action=DEFER_IF_REJECT 4\.7\.1 .+\n\n$/);
  });
});

/** A policy client on a raw socket: answers are `action=...` lines ended by an empty line. */
class Client {
  readonly socket: net.Socket;
  private buffer = '';
  private waiters: (() => void)[] = [];
  closed = false;

  constructor(port: number) {
    this.socket = net.connect(port, '127.0.0.1');
    this.socket.on('data', (d: Buffer) => {
      this.buffer += d.toString('latin1');
      this.waiters.splice(0).forEach((w) => w());
    });
    this.socket.on('error', () => undefined);
    this.socket.on('close', () => {
      this.closed = true;
      this.waiters.splice(0).forEach((w) => w());
    });
  }

  async read(n: number, timeoutMs = 5000): Promise<string[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const parts = this.buffer.split('\n\n');
      if (parts.length > n || this.closed) {
        const got = parts.slice(0, Math.min(n, parts.length - 1));
        this.buffer = parts.slice(got.length).join('\n\n');
        return got;
      }
      if (Date.now() > deadline) assert.fail(`no ${n} answers within ${timeoutMs} ms (have ${JSON.stringify(this.buffer)})`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 100);
      });
    }
  }

  async closedByServer(timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      if (Date.now() > deadline) assert.fail('the server did not close the connection');
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  async ask(...addresses: (string | undefined)[]): Promise<string[]> {
    this.socket.write(addresses.map((a) => request(a)).join(''));
    return this.read(addresses.length);
  }

  end(): void {
    this.socket.destroy();
  }
}

describe('policy listener on the real API server', () => {
  let k: TestKube;
  let store: GrantStore;
  let cache: GrantCache;
  let pl: RunningListener;
  let strangers: RunningListener;
  let unsynced: RunningListener;
  const lines: string[] = [];

  before(async () => {
    k = await kubeForTest('bridge-policy');
    store = new GrantStore({ client: k.client, namespace: k.namespace, ttlMs: 30 * MIN, renewIntervalMs: 5 * MIN, ipv6PrefixLength: 64 });
    cache = new GrantCache({ client: k.client, namespace: k.namespace, log: memoryLogger(lines) });
    await cache.start();
    await store.renew('192.0.2.7', 'alice@example.org', 'pop3');
    await store.renew('2001:db8:1:2::99', 'bob@example.org', 'imap');
    await eventually('grants in the cache', () => cache.lookup('192.0.2.7') !== undefined && cache.lookup('2001:db8:1:2::5') !== undefined);
    const ctx: BridgeContext = { grants: cache, store, log: memoryLogger(lines) };
    const allow = NetworkList.parse(['127.0.0.0/8'], 'test');
    pl = await startPolicyListener({ host: '127.0.0.1', port: 0, allow }, ctx);
    strangers = await startPolicyListener({ host: '127.0.0.1', port: 0, allow: NetworkList.parse(['127.0.0.2/32'], 'test') }, ctx);
    unsynced = await startPolicyListener({ host: '127.0.0.1', port: 0, allow }, { ...ctx, grants: { synced: false, lookup: (ip, now) => cache.lookup(ip, now) } });
  });

  after(async () => {
    await Promise.all([pl, strangers, unsynced].map((l) => l?.close()));
    await cache?.stop();
    store?.close();
    await k?.cleanup();
  });

  it('answers several requests per connection, pipelined in one write, in order', async () => {
    const c = new Client(pl.port);
    try {
      assert.deepEqual(await c.ask('192.0.2.7', '192.0.2.9', '2001:db8:1:2::5', '::ffff:192.0.2.7', undefined), [
        'action=OK',
        'action=DUNNO',
        'action=OK',
        'action=OK',
        'action=DUNNO',
      ]);
      assert.deepEqual(await c.ask('192.0.2.9'), ['action=DUNNO']);
      assert.deepEqual(await c.ask('192.0.2.7'), ['action=OK']);
    } finally {
      c.end();
    }
  });

  it('answers a request split across writes at every byte', async () => {
    const c = new Client(pl.port);
    try {
      for (const ch of request('192.0.2.7')) {
        c.socket.write(ch);
        await new Promise((r) => setImmediate(r));
      }
      assert.deepEqual(await c.read(1), ['action=OK']);
    } finally {
      c.end();
    }
  });

  it('closes on garbage without answering it; other connections go on', async () => {
    const other = new Client(pl.port);
    const garbage: (string | Buffer)[] = [
      'client_address 192.0.2.7\n\n',
      'request=smtpd_access_policy\nclient_address=192.0.2.7\u0000\n\n',
      Buffer.from([0x16, 0x03, 0x01, 0x00, 0x10, 0x0a, 0x0a, 0xff, 0xfe]),
      'GET / HTTP/1.0\r\n\r\n',
      `request=smtpd_access_policy\nclient_name=${'a'.repeat(MAX_POLICY_LINE + 10)}`,
      `request=smtpd_access_policy\n${'x=1\n'.repeat(MAX_POLICY_ATTRIBUTES + 1)}`,
    ];
    try {
      for (const g of garbage) {
        const c = new Client(pl.port);
        // A good request first: answered; then the garbage: closed without a word about it.
        c.socket.write(request('192.0.2.7'));
        c.socket.write(g);
        await c.closedByServer();
        assert.deepEqual(await c.read(2, 100), ['action=OK'], JSON.stringify(g).slice(0, 60));
      }
      assert.deepEqual(await other.ask('192.0.2.7'), ['action=OK']);
      const fresh = new Client(pl.port);
      assert.deepEqual(await fresh.ask('192.0.2.7'), ['action=OK']);
      fresh.end();
    } finally {
      other.end();
    }
  });

  it('defers while the cache is not synced, never OK', async () => {
    const c = new Client(unsynced.port);
    try {
      const got = await c.ask('192.0.2.7', 'unknown');
      assert.match(got[0] as string, /^action=DEFER_IF_REJECT 4\.7\.1 /);
      assert.equal(got[1], 'action=DUNNO');
    } finally {
      c.end();
    }
  });

  it('drops peers outside the allow-list without answering', async () => {
    const c = new Client(strangers.port);
    c.socket.write(request('192.0.2.7'));
    await c.closedByServer();
    assert.deepEqual(await c.read(1, 100), []);
  });
});
