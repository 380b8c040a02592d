// net/accept.ts on real sockets: who the client is (the peer, or a trusted proxy's header), the
// slot under the limits, and the connections it ends itself (a refused header, a client gone
// while the limiter answered).
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { after, describe, it } from 'node:test';
import { acceptConnection, type AcceptedConnection, type ClientLimiter } from '../../src/net/accept.ts';
import { ConnectionLimiter } from '../../src/net/limits.ts';
import { proxyHeaderErrors } from '../../src/net/metrics.ts';
import { NetworkList } from '../../src/net/networks.ts';
import { createLogger } from '../../src/observability/log.ts';

const log = createLogger('test');
const servers: net.Server[] = [];
after(() => servers.forEach((s) => s.close()));

/** Connect, send `first`, and give the server side to acceptConnection; resolves to its answer and the two sockets. */
async function acceptOne(first: string, opts: { trusted: string[]; limiter?: ClientLimiter; timeoutMs?: number }) {
  let serverSide: net.Socket | undefined;
  const result = new Promise<AcceptedConnection | undefined>((resolve, reject) => {
    const server = net.createServer((socket) => {
      serverSide = socket;
      socket.on('error', () => undefined);
      acceptConnection(socket, {
        role: 'test',
        trustedProxies: NetworkList.parse(opts.trusted, 'test.trustedProxies'),
        proxyHeaderTimeoutMs: opts.timeoutMs ?? 2000,
        limiter: opts.limiter ?? new ConnectionLimiter({ maxTotal: 0, maxPerAddress: 0 }),
        log,
      }).then(resolve, reject);
    });
    servers.push(server);
    server.listen(0, '127.0.0.1', () => {
      const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1', () => client.write(first));
      client.on('error', () => undefined);
      clients.push(client);
    });
  });
  const clients: net.Socket[] = [];
  const accepted = await result;
  return { accepted, server: serverSide as net.Socket, client: clients[0] as net.Socket };
}

async function readAll(socket: net.Socket): Promise<string> {
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  socket.resume();
  await new Promise((r) => setTimeout(r, 100));
  return Buffer.concat(chunks).toString();
}

void describe('acceptConnection', () => {
  void it('takes the TCP peer as the client when the peer is no trusted proxy, and reads nothing', async () => {
    const { accepted, server, client } = await acceptOne('PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\nHELO\r\n', { trusted: ['10.0.0.0/8'] });
    assert.equal(accepted?.peer, '127.0.0.1');
    assert.equal(accepted?.client?.address, '127.0.0.1');
    assert.equal(accepted?.proxyPeer, undefined);
    assert.equal(accepted?.slot.ok, true);
    // Someone else's header is just data: the role reads it as the client's first line.
    assert.match(await readAll(server), /^PROXY TCP4 192\.0\.2\.1/);
    client.destroy();
  });

  void it('takes the address a trusted proxy names, and puts bytes read past the header back', async () => {
    const { accepted, server, client } = await acceptOne('PROXY TCP4 192.0.2.1 192.0.2.2 1234 25\r\nEHLO x\r\n', { trusted: ['127.0.0.1'] });
    assert.deepEqual(accepted?.client, { address: '192.0.2.1', port: 1234 });
    assert.equal(accepted?.proxyPeer, '127.0.0.1');
    assert.equal(accepted?.readPastHeader, true);
    assert.equal(await readAll(server), 'EHLO x\r\n');
    client.destroy();
  });

  void it('names no client for PROXY UNKNOWN, and counts it under the peer', async () => {
    const keys: string[] = [];
    const limiter: ClientLimiter = { acquire: (ip) => (keys.push(ip), { ok: true, release: () => undefined }) };
    const { accepted, client } = await acceptOne('PROXY UNKNOWN\r\n', { trusted: ['127.0.0.1'], limiter });
    assert.equal(accepted?.client, null);
    assert.equal(accepted?.readPastHeader, false);
    assert.deepEqual(keys, ['127.0.0.1']);
    client.destroy();
  });

  void it('ends the connection on a bad header from a trusted proxy, and counts it under the role', async () => {
    const refusals = async () => (await proxyHeaderErrors.get()).values.filter((v) => v.labels.role === 'test').reduce((n, v) => n + v.value, 0);
    const before = await refusals();
    const { accepted, client } = await acceptOne('HELO not a header\r\n', { trusted: ['127.0.0.1'] });
    assert.equal(accepted, undefined);
    await once(client, 'close');
    assert.equal(await refusals(), before + 1);
  });

  void it('returns a refused slot for the role to answer, counted for the proxied client', async () => {
    const limiter = new ConnectionLimiter({ maxTotal: 0, maxPerAddress: 1 });
    const held = limiter.acquire('192.0.2.1');
    const { accepted, client } = await acceptOne('PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n', { trusted: ['127.0.0.1'], limiter });
    assert.deepEqual(accepted?.slot, { ok: false, reason: 'per-address' });
    assert.equal(held.ok, true);
    client.destroy();
  });

  void it('gives the slot back when the client went away while the limiter answered', async () => {
    let released = 0;
    const limiter: ClientLimiter = {
      acquire: async () => {
        socket.destroy();
        await new Promise((r) => setTimeout(r, 20));
        return { ok: true, release: () => released++ };
      },
    };
    const server = net.createServer();
    servers.push(server);
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
    client.on('error', () => undefined);
    const [socket] = (await once(server, 'connection')) as [net.Socket];
    const accepted = await acceptConnection(socket, { role: 'test', trustedProxies: NetworkList.empty(), proxyHeaderTimeoutMs: 1000, limiter, log });
    assert.equal(accepted, undefined);
    assert.equal(released, 1);
    client.destroy();
  });
});
