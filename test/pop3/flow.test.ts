// Input limits and flow control of a POP3 session against real sockets: clients that burst past
// the command rate, read slowly, never read, or go away, must neither jam the session nor keep
// the maildrop locked after they are gone.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { RawClient, makeWorld, startServer, type StartedServer, type World } from './support.ts';

const SLOW_DOWN = /^-ERR \[SYS\/TEMP\] Too many commands; slow down\.$/;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Read `n` reply lines; returns how many were the rate limit's "slow down". */
async function readReplies(c: RawClient, n: number): Promise<{ ok: number; slowDown: number }> {
  let ok = 0;
  let slowDown = 0;
  for (let i = 0; i < n; i++) {
    const line = await c.line();
    if (line === '+OK ') ok++;
    else if (SLOW_DOWN.test(line)) slowDown++;
    else assert.fail(`reply ${i + 1}: ${line}`);
  }
  return { ok, slowDown };
}

/** CAPA's reply, read to its end. */
async function capa(c: RawClient): Promise<string> {
  c.send('CAPA\r\n');
  const { status, body } = await c.multiline();
  assert.match(status, /^\+OK/);
  return body;
}

describe('POP3 flow control and command rate', () => {
  let world: World;
  let s: StartedServer;
  before(async () => {
    world = makeWorld('flow');
    // A small allowance, so that a test-sized burst goes past it.
    s = await startServer(world, { allowPlaintextAuth: true, limits: { commandsPerSecond: 20, commandBurst: 100 } });
  });
  after(async () => {
    await s.close();
    world.cleanup();
  });

  const login = async () => {
    const c = await RawClient.connect(s.server.port);
    assert.match(await c.login('carol', world.passwords.carol), /^\+OK Logged in/);
    return c;
  };

  it('2000 NOOPs every 10 ms, each reply read: "slow down" past the rate, then normal service', async () => {
    const c = await login();
    let sent = 0;
    const sending = (async () => {
      for (; sent < 2000; sent++) {
        c.send('NOOP\r\n');
        await sleep(10);
      }
    })();
    const counts = await readReplies(c, 2000);
    await sending;
    assert.equal(counts.ok + counts.slowDown, 2000);
    assert.ok(counts.slowDown > 0, 'a rate above commandsPerSecond is told to slow down');
    assert.ok(counts.ok > 100, `more than the burst is served at the refill rate (${counts.ok})`);
    await sleep(300);
    assert.equal(await c.cmd('NOOP'), '+OK ');
    assert.match(await c.cmd('STAT'), /^\+OK 0 0$/);
    assert.match(await c.cmd('QUIT'), /^\+OK/);
  });

  it('a burst of 3000 pipelined NOOPs in one write: every one answered, then normal service', async () => {
    const c = await login();
    c.send('NOOP\r\n'.repeat(3000));
    const counts = await readReplies(c, 3000);
    assert.ok(counts.slowDown >= 2000, `past the burst, slowed down (${counts.slowDown})`);
    await sleep(300);
    assert.equal(await c.cmd('NOOP'), '+OK ');
    assert.match(await c.cmd('QUIT'), /^\+OK/);
  });

  it('a CAPA flood before login that is read only later: every reply comes, then the login works', async () => {
    const c = await RawClient.connect(s.server.port);
    const flood = 3000;
    c.socket.pause(); // reads nothing for now: the server's replies back up
    c.send('CAPA\r\n'.repeat(flood));
    await sleep(1000);
    c.socket.resume();
    let capas = 0;
    let slowDown = 0;
    for (let i = 0; i < flood; i++) {
      const line = await c.line();
      if (line.startsWith('+OK')) {
        // The rest of the CAPA list.
        while ((await c.line()) !== '.');
        capas++;
      } else if (SLOW_DOWN.test(line)) slowDown++;
      else assert.fail(`reply ${i + 1}: ${line}`);
    }
    assert.equal(capas + slowDown, flood);
    assert.ok(slowDown > 0 && capas >= 100, `capas ${capas}, slow down ${slowDown}`);
    await sleep(300);
    assert.match(await capa(c), /USER/);
    assert.match(await c.login('carol', world.passwords.carol), /^\+OK Logged in/);
    assert.match(await c.cmd('QUIT'), /^\+OK/);
  });

  it('a client that reads slowly gets every reply, in order', async () => {
    const c = await login();
    const n = 400;
    for (let i = 0; i < n; i++) c.send(i % 2 === 0 ? 'NOOP\r\n' : 'STAT\r\n');
    c.socket.pause();
    let read = 0;
    while (read < n) {
      c.socket.resume();
      await sleep(5);
      c.socket.pause();
      while (read < n && /\r\n/.test(c.rest())) {
        const line = await c.line();
        assert.ok(line === '+OK ' || line === '+OK 0 0' || SLOW_DOWN.test(line), line);
        read++;
      }
    }
    c.socket.resume();
    await sleep(300);
    assert.equal(await c.cmd('NOOP'), '+OK ');
    assert.match(await c.cmd('QUIT'), /^\+OK/);
  });

  it('a client that floods without reading and then closes frees the maildrop at once', async () => {
    const c = await login();
    c.socket.pause();
    // Far more than the server queues or buffers: it stops reading from this client.
    const chunk = 'NOOP\r\n'.repeat(10_000);
    for (let i = 0; i < 20; i++) c.send(chunk);
    await sleep(500);
    // A close with replies unread: the kernel resets the connection.
    c.destroy();
    const started = Date.now();
    let reply = '';
    // "At once": the next session gets the maildrop, not [IN-USE], within a second.
    while (Date.now() - started < 1000) {
      const next = await RawClient.connect(s.server.port);
      reply = await next.login('carol', world.passwords.carol);
      if (reply.startsWith('+OK')) {
        assert.match(await next.cmd('QUIT'), /^\+OK/);
        break;
      }
      next.destroy();
      await sleep(50);
    }
    assert.match(reply, /^\+OK Logged in/);
  });

  it('a client that sends its commands and half-closes gets every reply, QUIT included', async () => {
    const c = await RawClient.connect(s.server.port);
    c.socket.end(`USER carol\r\nPASS ${world.passwords.carol}\r\nSTAT\r\nQUIT\r\n`);
    assert.match(await c.line(), /^\+OK/);
    assert.match(await c.line(), /^\+OK Logged in/);
    assert.match(await c.line(), /^\+OK 0 0$/);
    assert.match(await c.line(), /^\+OK Logging out/);
    assert.ok(await c.waitClosed(5000));
  });
});
