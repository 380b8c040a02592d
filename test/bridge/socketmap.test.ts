// The socketmap reader: the netstring codec (strict, incremental across any chunk split), the pure
// answer function (all answer forms, sendmail's `ipv6:` and bracketed keys, IPv4-mapped IPv6),
// and the listener over real sockets with grants on the real API server (pipelined requests in
// one write and split across writes, garbage refused with PERM and a close, strangers dropped,
// the server still answering other connections). Run with `npm test -- test/bridge/socketmap.test.ts`.
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { BridgeContext, RunningListener } from '../../src/bridge/listener.ts';
import { bridgeRequests } from '../../src/bridge/metrics.ts';
import { encodeNetstring, NetstringDecoder, NetstringError } from '../../src/bridge/netstring.ts';
import { MAX_SOCKETMAP_REQUEST, socketmapAnswer, socketmapKeyAddress, startSocketmapListener } from '../../src/bridge/socketmap.ts';
import { GrantCache } from '../../src/grants/cache.ts';
import { GrantStore } from '../../src/grants/store.ts';
import type { GrantLookup, GrantMatch } from '../../src/grants/types.ts';
import { NetworkList } from '../../src/net/networks.ts';
import { kubeForTest, type TestKube } from '../support/kube.ts';
import { memoryLogger } from '../smtp/support.ts';
import { eventually } from '../support/eventually.ts';

const MIN = 60_000;

function decodeAll(chunks: Buffer[], max = 1000): string[] {
  const d = new NetstringDecoder(max);
  const out: string[] = [];
  for (const c of chunks) d.push(c, (p) => out.push(p));
  return out;
}

/** A GrantLookup over a fixed map of canonical addresses (our interface, not the Kubernetes API). */
function fixedGrants(entries: Record<string, number>, synced = true): GrantLookup & { asked: string[] } {
  const asked: string[] = [];
  return {
    synced,
    asked,
    lookup(ip: string, nowMs = Date.now()): GrantMatch | undefined {
      asked.push(ip);
      const exp = entries[ip];
      return exp !== undefined && exp > nowMs ? { name: `v-${ip}`, address: ip, user: 'u', expiresAtMs: exp } : undefined;
    },
  };
}

describe('netstrings', () => {
  it('decodes several netstrings in one chunk and in every split of the stream', () => {
    const stream = Buffer.from('4:drac,0:,13:drac 10.0.0.1,');
    const want = ['drac', '', 'drac 10.0.0.1'];
    assert.deepEqual(decodeAll([stream]), want);
    for (let a = 0; a <= stream.length; a++) {
      for (let b = a; b <= stream.length; b++) {
        assert.deepEqual(decodeAll([stream.subarray(0, a), stream.subarray(a, b), stream.subarray(b)]), want, `split at ${a},${b}`);
      }
    }
    // One byte at a time.
    assert.deepEqual(decodeAll([...stream].map((b) => Buffer.from([b]))), want);
  });

  it('refuses leading zeros, non-digits, an empty length, a missing comma and oversize lengths', () => {
    for (const bad of ['01:a,', '00:,', 'x:a,', '-1:a,', ' 1:a,', ':a,', '1:ab', '3:abc;', '1001:', '99999999999', '1:\u0000\u0000']) {
      assert.throws(() => decodeAll([Buffer.from(bad, 'latin1')]), NetstringError, JSON.stringify(bad));
    }
    // The oversize length is refused as soon as its digits say so, before the payload arrives.
    assert.throws(() => decodeAll([Buffer.from('1001')]), /longer than 1000/);
    assert.deepEqual(decodeAll([Buffer.from(`1000:${'a'.repeat(1000)},`)]), ['a'.repeat(1000)]);
  });

  it('refuses more input after an error and holds at most one bounded netstring', () => {
    const d = new NetstringDecoder(10);
    d.push(Buffer.from('10:abcde'), () => assert.fail());
    assert.equal(d.buffered, 8);
    assert.throws(() => d.push(Buffer.from('fghij;'), () => undefined), /comma/);
    assert.throws(() => d.push(Buffer.from('1:a,'), () => undefined), /already failed/);
  });

  it('encodes', () => {
    assert.equal(encodeNetstring('NOTFOUND '), '9:NOTFOUND ,');
    assert.equal(encodeNetstring(''), '0:,');
  });
});

describe('socketmapAnswer', () => {
  const now = 1_800_000_000_000;
  const grants = fixedGrants({ '192.0.2.7': now + 1_234_567, '2001:db8::1': now + 5000, '192.0.2.8': now - 1 });

  it('answers OK with the expiry in epoch seconds for a granted IP, NOTFOUND otherwise', () => {
    assert.equal(socketmapAnswer('drac', 'drac 192.0.2.7', grants, now), `OK ${Math.floor((now + 1_234_567) / 1000)}`);
    assert.equal(socketmapAnswer('drac', 'drac 192.0.2.9', grants, now), 'NOTFOUND ');
    assert.equal(socketmapAnswer('drac', 'drac 192.0.2.8', grants, now), 'NOTFOUND ', 'expired');
  });

  it('never answers OK with an empty value', () => {
    for (const req of ['drac 192.0.2.7', 'drac 192.0.2.9', 'drac unknown', 'drac ']) {
      assert.doesNotMatch(socketmapAnswer('drac', req, grants, now), /^OK ?$/);
    }
  });

  it('answers NOTFOUND for host names, partial networks and other non-IP keys', () => {
    for (const key of ['unknown', 'mail.example.org', '192.0.2', '192.0', '192', '2001:db8', '', ' 192.0.2.7', '192.0.2.7 ', '192.0.2.07', 'fe80::1%eth0', '[unknown]', 'ipv6:192.0.2.7x']) {
      assert.equal(socketmapAnswer('drac', `drac ${key}`, grants, now), 'NOTFOUND ', JSON.stringify(key));
    }
  });

  it("understands sendmail's ipv6: tag (any case), bracketed forms and IPv4-mapped IPv6", () => {
    const v6 = `OK ${Math.floor((now + 5000) / 1000)}`;
    const v4 = `OK ${Math.floor((now + 1_234_567) / 1000)}`;
    assert.equal(socketmapAnswer('drac', 'drac ipv6:2001:db8::1', grants, now), v6);
    assert.equal(socketmapAnswer('drac', 'drac IPv6:2001:DB8:0:0:0:0:0:1', grants, now), v6);
    assert.equal(socketmapAnswer('drac', 'drac [IPv6:2001:db8::1]', grants, now), v6);
    assert.equal(socketmapAnswer('drac', 'drac [192.0.2.7]', grants, now), v4);
    assert.equal(socketmapAnswer('drac', 'drac ::ffff:192.0.2.7', grants, now), v4);
    assert.equal(socketmapAnswer('drac', 'drac ipv6:::ffff:192.0.2.7', grants, now), v4);
    assert.equal(socketmapKeyAddress('ipv6:2001:0db8::0001'), '2001:db8::1');
    assert.equal(socketmapKeyAddress('ipv6:'), undefined);
  });

  it('answers PERM for an unknown map or a request without a key', () => {
    assert.match(socketmapAnswer('drac', 'other 192.0.2.7', grants, now), /^PERM unknown map "other"/);
    assert.match(socketmapAnswer('drac', 'dracx 192.0.2.7', grants, now), /^PERM unknown map/);
    assert.match(socketmapAnswer('drac', 'drac', grants, now), /^PERM /);
    assert.match(socketmapAnswer('drac', '', grants, now), /^PERM /);
  });

  it('answers TEMP for an IP key while the cache is not synced, and never looks it up', () => {
    const unsynced = fixedGrants({ '192.0.2.7': now + 1000 }, false);
    assert.match(socketmapAnswer('drac', 'drac 192.0.2.7', unsynced, now), /^TEMP /);
    assert.equal(socketmapAnswer('drac', 'drac unknown', unsynced, now), 'NOTFOUND ');
    assert.deepEqual(unsynced.asked, []);
  });
});

/** A socketmap client on a raw socket: write bytes, read answer netstrings. */
class Client {
  readonly socket: net.Socket;
  private readonly decoder = new NetstringDecoder(100_000);
  private answers: string[] = [];
  private waiters: (() => void)[] = [];
  closed = false;

  constructor(port: number, localAddress?: string, allowHalfOpen = false) {
    this.socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen, ...(localAddress ? { localAddress } : {}) });
    this.socket.on('data', (d: Buffer) => {
      this.decoder.push(d, (p) => this.answers.push(p));
      this.waiters.splice(0).forEach((w) => w());
    });
    this.socket.on('error', () => undefined);
    this.socket.on('close', () => {
      this.closed = true;
      this.waiters.splice(0).forEach((w) => w());
    });
  }

  /** The next `n` answers; fewer if the server closed first. */
  async read(n: number, timeoutMs = 5000): Promise<string[]> {
    const deadline = Date.now() + timeoutMs;
    while (this.answers.length < n && !this.closed) {
      if (Date.now() > deadline) assert.fail(`no ${n} answers within ${timeoutMs} ms (have ${JSON.stringify(this.answers)})`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 100);
      });
    }
    return this.answers.splice(0, n);
  }

  async closedByServer(timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      if (Date.now() > deadline) assert.fail('the server did not close the connection');
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  async ask(...keys: string[]): Promise<string[]> {
    this.socket.write(keys.map((k) => encodeNetstring(`drac ${k}`)).join(''));
    return this.read(keys.length);
  }

  end(): void {
    this.socket.destroy();
  }
}

describe('socketmap listener on the real API server', () => {
  let k: TestKube;
  let store: GrantStore;
  let cache: GrantCache;
  let sm: RunningListener;
  let strangers: RunningListener;
  let unsynced: RunningListener;
  let quick: RunningListener;
  const lines: string[] = [];
  const counted = async (result: string) =>
    (await bridgeRequests.get()).values.find((v) => v.labels.protocol === 'socketmap' && v.labels.result === result)?.value ?? 0;

  before(async () => {
    k = await kubeForTest('bridge-socketmap');
    store = new GrantStore({ client: k.client, namespace: k.namespace, ttlMs: 30 * MIN, renewIntervalMs: 5 * MIN, ipv6PrefixLength: 64 });
    cache = new GrantCache({ client: k.client, namespace: k.namespace, log: memoryLogger(lines) });
    await cache.start();
    await store.renew('192.0.2.7', 'alice@example.org', 'pop3');
    await store.renew('2001:db8:1:2::99', 'bob@example.org', 'imap');
    await eventually('grants in the cache', () => cache.lookup('192.0.2.7') !== undefined && cache.lookup('2001:db8:1:2::5') !== undefined);
    const ctx: BridgeContext = { grants: cache, store, log: memoryLogger(lines) };
    const allow = NetworkList.parse(['127.0.0.0/8'], 'test');
    sm = await startSocketmapListener({ host: '127.0.0.1', port: 0, allow, mapName: 'drac' }, ctx);
    strangers = await startSocketmapListener({ host: '127.0.0.1', port: 0, allow: NetworkList.parse(['127.0.0.2/32'], 'test'), mapName: 'drac' }, ctx);
    unsynced = await startSocketmapListener({ host: '127.0.0.1', port: 0, allow, mapName: 'drac' }, { ...ctx, grants: { synced: false, lookup: (ip, now) => cache.lookup(ip, now) } });
    quick = await startSocketmapListener({ host: '127.0.0.1', port: 0, allow, mapName: 'drac', idleTimeoutMs: 300 }, ctx);
  });

  after(async () => {
    await Promise.all([sm, strangers, unsynced, quick].map((l) => l?.close()));
    await cache?.stop();
    store?.close();
    await k?.cleanup();
  });

  it('answers pipelined requests in one write, in order, on one persistent connection', async () => {
    const c = new Client(sm.port);
    try {
      const expiry = Math.floor((cache.lookup('192.0.2.7')?.expiresAtMs ?? 0) / 1000);
      const got = await c.ask('unknown', '192.0.2.7', '192.0.2', '192.0.2.8', 'ipv6:2001:db8:1:2::5', '::ffff:192.0.2.7', '[192.0.2.7]');
      assert.deepEqual(got.slice(0, 4), ['NOTFOUND ', `OK ${expiry}`, 'NOTFOUND ', 'NOTFOUND ']);
      assert.match(got[4] as string, /^OK \d{10}$/, 'the /64 grant covers a sendmail ipv6: key');
      assert.deepEqual(got.slice(5), [`OK ${expiry}`, `OK ${expiry}`]);
      // Still open: a later request on the same connection.
      assert.deepEqual(await c.ask('192.0.2.9'), ['NOTFOUND ']);
      assert.match((await c.ask('192.0.2.7'))[0] as string, /^OK \d+$/);
    } finally {
      c.end();
    }
  });

  it('answers requests split across writes at every byte', async () => {
    const c = new Client(sm.port);
    try {
      const stream = `${encodeNetstring('drac 192.0.2.7')}${encodeNetstring('drac unknown')}`;
      for (const ch of stream) {
        c.socket.write(ch);
        await new Promise((r) => setImmediate(r));
      }
      const got = await c.read(2);
      assert.match(got[0] as string, /^OK \d+$/);
      assert.equal(got[1], 'NOTFOUND ');
    } finally {
      c.end();
    }
  });

  it('answers PERM for an unknown map and keeps the connection', async () => {
    const c = new Client(sm.port);
    try {
      c.socket.write(encodeNetstring('other 192.0.2.7'));
      assert.match((await c.read(1))[0] as string, /^PERM unknown map/);
      assert.match((await c.ask('192.0.2.7'))[0] as string, /^OK /);
    } finally {
      c.end();
    }
  });

  it('refuses garbage with PERM and closes; other connections go on', async () => {
    const other = new Client(sm.port);
    const garbage = [
      '01:drac 192.0.2.7,',
      `${MAX_SOCKETMAP_REQUEST + 1}:`,
      '99999999999999999999:',
      '14:drac 192.0.2.7;',
      'drac 192.0.2.7',
      '\u0000\u0000\u0000\u0000',
      'GET / HTTP/1.0\r\n\r\n',
    ];
    try {
      for (const g of garbage) {
        const c = new Client(sm.port);
        // A good request first, answered before the garbage closes the connection.
        c.socket.write(encodeNetstring('drac 192.0.2.9') + g);
        const got = await c.read(2);
        assert.equal(got[0], 'NOTFOUND ', JSON.stringify(g));
        assert.match(got[1] as string, /^PERM bad netstring/, JSON.stringify(g));
        await c.closedByServer();
      }
      // A huge length is refused before the payload: the server does not wait for a megabyte.
      const big = new Client(sm.port);
      big.socket.write('1000000:drac ');
      assert.match((await big.read(1))[0] as string, /^PERM bad netstring: netstring longer than 1000/);
      await big.closedByServer();
      assert.match((await other.ask('192.0.2.7'))[0] as string, /^OK /);
      const fresh = new Client(sm.port);
      assert.match((await fresh.ask('192.0.2.7'))[0] as string, /^OK /);
      fresh.end();
    } finally {
      other.end();
    }
  });

  it('counts answers by result', async () => {
    const before = { granted: await counted('granted'), not: await counted('not_granted'), bad: await counted('malformed') };
    const c = new Client(sm.port);
    await c.ask('192.0.2.7', '192.0.2.9', 'unknown');
    c.socket.write('x');
    await c.read(1);
    await c.closedByServer();
    assert.equal((await counted('granted')) - before.granted, 1);
    assert.equal((await counted('not_granted')) - before.not, 2);
    assert.equal((await counted('malformed')) - before.bad, 1);
  });

  it('closes idle connections, and cuts off a peer that keeps its side open after garbage', async () => {
    const idle = new Client(quick.port);
    assert.match((await idle.ask('192.0.2.7'))[0] as string, /^OK /);
    await idle.closedByServer(3000);
    const stubborn = new Client(sm.port, undefined, true);
    stubborn.socket.write('garbage');
    assert.match((await stubborn.read(1))[0] as string, /^PERM /);
    // Past the grace period the server has let go: our bytes meet a reset, the next write EPIPE.
    await new Promise((r) => setTimeout(r, 2500));
    stubborn.socket.write('more');
    await new Promise((r) => setTimeout(r, 100));
    stubborn.socket.write('again');
    await stubborn.closedByServer(3000);
  });

  it('answers TEMP while the cache is not synced, never OK', async () => {
    const c = new Client(unsynced.port);
    try {
      const got = await c.ask('192.0.2.7', 'unknown');
      assert.match(got[0] as string, /^TEMP /);
      assert.equal(got[1], 'NOTFOUND ');
    } finally {
      c.end();
    }
  });

  it('drops peers outside the allow-list without answering', async () => {
    const c = new Client(strangers.port, '127.0.0.1');
    c.socket.write(encodeNetstring('drac 192.0.2.7'));
    await c.closedByServer();
    assert.deepEqual(await c.read(1, 100), []);
  });
});
