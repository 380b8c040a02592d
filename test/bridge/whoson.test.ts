// The whoson listener over TCP and UDP with raw sockets (Python's socket module for one full
// dialogue, node:net/dgram for the rest; Debian ships no whoson client), grants on the real API
// server: LOGIN creates the grant, QUERY answers `+user` once the cache has it, LOGOUT revokes,
// an unsynced cache never answers `+`, bad requests get `*`, garbage never crashes, strangers
// get nothing. Run with `npm test -- test/bridge/whoson.test.ts`.
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import type { BridgeContext, RunningListener } from '../../src/bridge/listener.ts';
import { datagramRequest, MAX_REQUEST_BYTES, parseRequest, RequestReader, startWhosonListener } from '../../src/bridge/whoson.ts';
import { GrantCache } from '../../src/grants/cache.ts';
import { grantsPath } from '../../src/grants/paths.ts';
import { GrantStore } from '../../src/grants/store.ts';
import type { RelayGrant } from '../../src/grants/types.ts';
import { NetworkList } from '../../src/net/networks.ts';
import { kubeForTest, type TestKube } from '../support/kube.ts';
import { memoryLogger, run } from '../smtp/support.ts';
import { eventually } from '../support/eventually.ts';

const MIN = 60_000;

/** A TCP whoson client: send requests, read replies (a line and a blank line each). */
class WhosonTcp {
  private readonly socket: net.Socket;
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

  send(text: string | Buffer): void {
    this.socket.write(text);
  }

  /** The next reply line (without CRLF CRLF); undefined if the server closed first. */
  async reply(timeoutMs = 5000): Promise<string | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const end = this.buffer.indexOf('\r\n\r\n');
      if (end !== -1) {
        const line = this.buffer.slice(0, end);
        this.buffer = this.buffer.slice(end + 4);
        return line;
      }
      if (this.closed) return undefined;
      if (Date.now() > deadline) assert.fail(`no reply within ${timeoutMs} ms (have ${JSON.stringify(this.buffer)})`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 50);
      });
    }
  }

  async ask(request: string): Promise<string | undefined> {
    this.send(`${request}\r\n\r\n`);
    return this.reply();
  }

  close(): void {
    this.socket.destroy();
  }
}

/** One UDP request; resolves with the reply datagram, or undefined after `waitMs`. */
async function udpAsk(port: number, payload: string | Buffer, waitMs = 5000): Promise<string | undefined> {
  const s = dgram.createSocket('udp4');
  try {
    return await new Promise<string | undefined>((resolve) => {
      const timer = setTimeout(() => resolve(undefined), waitMs);
      s.once('message', (m) => {
        clearTimeout(timer);
        resolve(m.toString('latin1'));
      });
      s.send(typeof payload === 'string' ? Buffer.from(payload, 'latin1') : payload, port, '127.0.0.1');
    });
  } finally {
    s.close();
  }
}

describe('whoson requests (no sockets)', () => {
  it('parses the four commands, case-insensitively, and refuses the rest', () => {
    assert.deepEqual(parseRequest('LOGIN 192.0.2.7 alice'), { kind: 'login', address: '192.0.2.7', user: 'alice' });
    assert.deepEqual(parseRequest('login ::ffff:192.0.2.7 Alice Smith'), { kind: 'login', address: '192.0.2.7', user: 'Alice Smith' });
    assert.deepEqual(parseRequest('LOGOUT 2001:DB8::1'), { kind: 'logout', address: '2001:db8::1' });
    assert.deepEqual(parseRequest('query 192.0.2.7'), { kind: 'query', address: '192.0.2.7' });
    assert.deepEqual(parseRequest('QUIT'), { kind: 'quit' });
    for (const bad of ['', 'HELO x', 'LOGIN', 'LOGIN 192.0.2.7', 'LOGIN host.example alice', 'QUERY 192.0.2.300', 'QUERY 0.0.0.0', 'QUERY 10.0.0.0/8', 'QUERY 192.0.2.7 extra', 'LOGOUT', 'LOGIN 192.0.2.7 a\x01b']) {
      assert.equal(parseRequest(bad).kind, 'bad', JSON.stringify(bad));
    }
  });

  it('frames TCP requests by the blank line, in any chunking, and never throws on garbage', () => {
    const stream = Buffer.from('QUERY 192.0.2.1\r\n\r\nLOGIN 192.0.2.2 bob\n\nQUERY 192.0.2.3\r\nQUERY 192.0.2.4\r\n\r\n');
    for (let chunk = 1; chunk <= 9; chunk++) {
      const r = new RequestReader();
      const got: (string | undefined)[] = [];
      for (let i = 0; i < stream.length; i += chunk) got.push(...r.push(stream.subarray(i, i + chunk)).requests);
      assert.deepEqual(got, ['QUERY 192.0.2.1', 'LOGIN 192.0.2.2 bob', undefined], `chunks of ${chunk}`);
    }
    assert.equal(new RequestReader().push(Buffer.alloc(MAX_REQUEST_BYTES + 1, 0x41)).overflow, true);
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        for (const line of new RequestReader().push(Buffer.from(bytes)).requests) if (line !== undefined) parseRequest(line);
        const d = datagramRequest(Buffer.from(bytes));
        if (d !== undefined) parseRequest(d);
      }),
    );
    assert.equal(datagramRequest(Buffer.from('QUERY 192.0.2.1\r\n\r\n')), 'QUERY 192.0.2.1');
    assert.equal(datagramRequest(Buffer.from('QUERY 192.0.2.1')), 'QUERY 192.0.2.1');
    assert.equal(datagramRequest(Buffer.from('QUERY 192.0.2.1\r\nQUERY 192.0.2.2\r\n\r\n')), undefined);
  });
});

describe('whoson listener on the real API server', () => {
  let k: TestKube;
  let store: GrantStore;
  let brokenStore: GrantStore;
  let cache: GrantCache;
  let w: RunningListener;
  let unsynced: RunningListener;
  let broken: RunningListener;
  let strangers: RunningListener;
  const lines: string[] = [];
  const grantOf = (ip: string) => k.client.get<RelayGrant>(grantsPath(k.namespace, `v4-${ip}`));

  before(async () => {
    k = await kubeForTest('bridge-whoson');
    store = new GrantStore({ client: k.client, namespace: k.namespace, ttlMs: 30 * MIN, renewIntervalMs: 5 * MIN, ipv6PrefixLength: 64 });
    brokenStore = new GrantStore({ client: k.client, namespace: `${k.namespace}-missing`, ttlMs: 30 * MIN, renewIntervalMs: 5 * MIN, ipv6PrefixLength: 64, attempts: 1 });
    cache = new GrantCache({ client: k.client, namespace: k.namespace, log: memoryLogger(lines) });
    await cache.start();
    const ctx: BridgeContext = { grants: cache, store, log: memoryLogger(lines) };
    const allow = NetworkList.parse(['127.0.0.0/8'], 'test');
    w = await startWhosonListener({ host: '127.0.0.1', port: 0, allow, udp: true }, ctx);
    unsynced = await startWhosonListener({ host: '127.0.0.1', port: 0, allow, udp: true }, { ...ctx, grants: { synced: false, lookup: () => cache.lookup('127.0.0.71') } });
    broken = await startWhosonListener({ host: '127.0.0.1', port: 0, allow, udp: false }, { ...ctx, store: brokenStore });
    strangers = await startWhosonListener({ host: '127.0.0.1', port: 0, allow: NetworkList.parse(['127.0.0.2/32'], 'test'), udp: true }, ctx);
  });

  after(async () => {
    await Promise.all([w, unsynced, broken, strangers].map((l) => l?.close()));
    await cache?.stop();
    store?.close();
    brokenStore?.close();
    await k?.cleanup();
  });

  it('binds TCP and UDP on one port number', () => {
    assert.equal(w.udpPort, w.port);
    assert.equal(broken.udpPort, undefined);
  });

  it('TCP: LOGIN creates the grant, QUERY answers +user, LOGOUT revokes it', async () => {
    const c = new WhosonTcp(w.port);
    try {
      assert.equal(await c.ask('QUERY 127.0.0.71'), '-not logged in');
      assert.equal(await c.ask('LOGIN 127.0.0.71 alice@example.org'), '+LOGIN OK');
      const g = await grantOf('127.0.0.71');
      assert.equal(g?.spec.source, 'whoson');
      assert.equal(g?.spec.user, 'alice@example.org');
      await eventually('QUERY +alice', async () => (await c.ask('QUERY 127.0.0.71')) === '+alice@example.org', 10_000, 50);
      assert.equal(await c.ask('LOGOUT 127.0.0.71'), '+LOGOUT record deleted');
      assert.equal(await grantOf('127.0.0.71'), undefined);
      await eventually('QUERY - after LOGOUT', async () => (await c.ask('QUERY 127.0.0.71')) === '-not logged in', 10_000, 50);
      assert.equal(await c.ask('LOGOUT 127.0.0.71'), '+LOGOUT no such record');
      assert.equal(await c.ask('QUIT'), '+QUIT OK');
      assert.equal(await c.reply(), undefined, 'closed after QUIT');
    } finally {
      c.close();
    }
  });

  it('UDP: one datagram per request and per reply', async () => {
    assert.equal(await udpAsk(w.udpPort!, 'LOGIN 127.0.0.73 bob\r\n\r\n'), '+LOGIN OK\r\n\r\n');
    assert.equal((await grantOf('127.0.0.73'))?.spec.user, 'bob');
    await eventually('UDP QUERY +bob', async () => (await udpAsk(w.udpPort!, 'QUERY 127.0.0.73\r\n\r\n')) === '+bob\r\n\r\n', 10_000, 50);
    assert.equal(await udpAsk(w.udpPort!, 'QUERY 127.0.0.74\r\n\r\n'), '-not logged in\r\n\r\n');
    assert.equal(await udpAsk(w.udpPort!, 'LOGOUT 127.0.0.73\r\n\r\n'), '+LOGOUT record deleted\r\n\r\n');
    assert.equal(await grantOf('127.0.0.73'), undefined);
    assert.match((await udpAsk(w.udpPort!, 'FROB 127.0.0.73\r\n\r\n')) ?? '', /^\*/);
    assert.match((await udpAsk(w.udpPort!, Buffer.alloc(4000, 0x51))) ?? '', /^\*/);
  });

  it("Python's socket module over TCP and UDP", async () => {
    const script = `
import socket, sys
port = int(sys.argv[1])
def read_reply(f):
    line = f.readline().decode()
    blank = f.readline().decode()
    assert blank == '\\r\\n', repr(blank)
    return line.rstrip('\\r\\n')
with socket.create_connection(('127.0.0.1', port), timeout=10) as s:
    f = s.makefile('rb')
    for req in ['LOGIN 127.0.0.75 carol', 'QUERY 127.0.0.76', 'BOGUS']:
        s.sendall((req + '\\r\\n\\r\\n').encode())
        print('tcp', read_reply(f))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(10)
u.sendto(b'QUERY 127.0.0.76\\r\\n\\r\\n', ('127.0.0.1', port))
print('udp', u.recvfrom(2048)[0].decode().rstrip('\\r\\n'))
`;
    const r = await run('python3', ['-c', script, String(w.port)]);
    assert.equal(r.code, 0, r.stderr);
    const out = r.stdout.trim().split('\n');
    assert.equal(out[0], 'tcp +LOGIN OK');
    assert.equal(out[1], 'tcp -not logged in');
    assert.match(out[2] ?? '', /^tcp \*/);
    assert.equal(out[3], 'udp -not logged in');
    assert.equal((await grantOf('127.0.0.75'))?.spec.user, 'carol');
  });

  it('IPv6: LOGIN grants the /64, QUERY of another address in it answers +', async () => {
    const c = new WhosonTcp(w.port);
    try {
      assert.equal(await c.ask('LOGIN 2001:db8:5:6::10 grace'), '+LOGIN OK');
      const g = await k.client.get<RelayGrant>(grantsPath(k.namespace, 'v6-20010db8000500060000000000000000-64'));
      assert.equal(g?.spec.address, '2001:db8:5:6::/64');
      await eventually('QUERY +grace', async () => (await c.ask('QUERY 2001:db8:5:6::99')) === '+grace', 10_000, 50);
      assert.equal(await c.ask('QUERY 2001:db8:5:7::10'), '-not logged in');
    } finally {
      c.close();
    }
  });

  it('answers pipelined requests in order on one connection', async () => {
    const c = new WhosonTcp(w.port);
    try {
      c.send('LOGIN 127.0.0.77 dave\r\n\r\nQUERY 127.0.0.78\r\n\r\nHELO\r\n\r\nLOGOUT 127.0.0.77\r\n\r\n');
      assert.deepEqual([await c.reply(), await c.reply(), await c.reply(), await c.reply()], ['+LOGIN OK', '-not logged in', '*unknown command', '+LOGOUT record deleted']);
    } finally {
      c.close();
    }
  });

  it('never answers + while the cache is not synced', async () => {
    const c = new WhosonTcp(unsynced.port);
    try {
      // The grant exists and the lookup would find it: synced=false must win.
      assert.equal(await c.ask('LOGIN 127.0.0.71 alice'), '+LOGIN OK');
      await eventually('the grant in the cache', () => cache.lookup('127.0.0.71') !== undefined, 10_000, 50);
      assert.match((await c.ask('QUERY 127.0.0.71')) ?? '', /^\*/);
      assert.match((await udpAsk(unsynced.udpPort!, 'QUERY 127.0.0.71\r\n\r\n')) ?? '', /^\*/);
    } finally {
      c.close();
    }
  });

  it('answers * when the grant write fails', async () => {
    const c = new WhosonTcp(broken.port);
    try {
      assert.match((await c.ask('LOGIN 127.0.0.79 eve')) ?? '', /^\*/);
      assert.match((await c.ask('LOGOUT 127.0.0.79')) ?? '', /^\*|^\+LOGOUT no such record/);
      assert.equal(await grantOf('127.0.0.79'), undefined);
    } finally {
      c.close();
    }
  });

  it('bad requests get *, garbage and overlong lines never crash, and the port keeps serving', async () => {
    const c = new WhosonTcp(w.port);
    try {
      for (const bad of ['LOGIN 127.0.0.80', 'LOGIN not-an-ip frank', 'QUERY', 'QUERY 127.0.0.80 127.0.0.81', '\x00\xff\x13 binary', 'LOGOUT ::']) {
        assert.match((await c.ask(bad)) ?? '', /^\*/, JSON.stringify(bad));
      }
      c.send('QUERY 127.0.0.80\r\nQUERY 127.0.0.81\r\n\r\n');
      assert.match((await c.reply()) ?? '', /^\*/, 'two request lines without the blank line between');
      c.send(Buffer.alloc(5000, 0x41));
      assert.match((await c.reply()) ?? '', /^\*request longer/);
      assert.equal(await c.reply(), undefined, 'closed after an overlong line');
    } finally {
      c.close();
    }
    assert.equal(await grantOf('127.0.0.80'), undefined);
    const after = new WhosonTcp(w.port);
    try {
      assert.equal(await after.ask('QUERY 127.0.0.82'), '-not logged in');
    } finally {
      after.close();
    }
  });

  it('drops strangers: TCP closed unanswered, UDP unanswered', async () => {
    const c = new WhosonTcp(strangers.port);
    try {
      c.send('LOGIN 127.0.0.83 mallory\r\n\r\n');
      assert.equal(await c.reply(), undefined);
    } finally {
      c.close();
    }
    assert.equal(await udpAsk(strangers.udpPort!, 'LOGIN 127.0.0.83 mallory\r\n\r\n', 500), undefined);
    assert.equal(await grantOf('127.0.0.83'), undefined);
  });
});
