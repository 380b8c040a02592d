// Protocol behaviour on the wire, with a raw client: what real clients never show (pipelined
// injection, drops, PROXY headers, garbage).
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { snapshotMaildir } from '../../src/mail/maildir.ts';
import { makeCert } from '../net/certs.ts';
import { RawClient, RecordingRenewer, deliverWithLda, makeWorld, maildirOf, startServer, testMessage, type StartedServer, type World } from './support.ts';

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');

function fill(world: World, user: string, n: number): void {
  for (let i = 1; i <= n; i++) deliverWithLda(world, user, testMessage(`msg ${i}`, [`line one of ${i}`, '.leading dot', 'last']));
}

describe('POP3 protocol (loopback, plaintext allowed)', () => {
  let world: World;
  let s: StartedServer;
  before(async () => {
    world = makeWorld('proto');
    fill(world, 'carol', 3);
    s = await startServer(world, { allowPlaintextAuth: true });
  });
  after(async () => {
    await s.close();
    world.cleanup();
  });

  it('numbers stay fixed, DELE hides a message, RSET brings it back, QUIT deletes', async () => {
    const c = await RawClient.connect(s.server.port);
    assert.match(await c.login('carol', 'carol'), /^\+OK/);
    assert.equal(await c.cmd('STAT'), '+OK 3 ' + (await snapshotMaildir(maildirOf(world, 'carol'))).reduce((n, m) => n + m.size, 0));
    assert.match(await c.cmd('DELE 2'), /^\+OK/);
    assert.match(await c.cmd('DELE 2'), /^-ERR/);
    assert.match(await c.cmd('RETR 2'), /^-ERR/);
    assert.match(await c.cmd('LIST 2'), /^-ERR/);
    assert.match(await c.cmd('LIST 3'), /^\+OK 3 \d+$/);
    c.send('LIST\r\n');
    assert.deepEqual((await c.multiline()).body.split('\r\n').filter(Boolean).map((l) => l.split(' ')[0]), ['1', '3']);
    assert.match(await c.cmd('RSET'), /^\+OK 3 messages/);
    c.send('RETR 2\r\n');
    const retr = await c.multiline();
    assert.match(retr.body, /Subject: msg 2/);
    assert.match(retr.body, /\r\n\.\.leading dot\r\n/);
    assert.match(await c.cmd('DELE 1'), /^\+OK/);
    assert.match(await c.cmd('QUIT'), /^\+OK .*1 messages deleted/);
    assert.equal((await snapshotMaildir(maildirOf(world, 'carol'))).length, 2);
    assert.deepEqual(s.renewer.calls.at(-1), { ip: '127.0.0.1', user: 'carol', source: 'pop3' });
  });

  it('a dropped connection deletes nothing and frees the lock', async () => {
    const before = (await snapshotMaildir(maildirOf(world, 'carol'))).length;
    const c = await RawClient.connect(s.server.port);
    await c.login('carol', 'carol');
    assert.match(await c.cmd('DELE 1'), /^\+OK/);
    c.destroy();
    // The lock is released once the server notices the close; a new login then succeeds.
    let relogin = '';
    for (let i = 0; i < 50 && !relogin.startsWith('+OK'); i++) {
      const d = await RawClient.connect(s.server.port);
      relogin = await d.login('carol', 'carol');
      if (relogin.startsWith('+OK')) assert.match(await d.cmd('STAT'), new RegExp(`^\\+OK ${before} `));
      await d.cmd('QUIT');
      if (!relogin.startsWith('+OK')) await new Promise((r) => setTimeout(r, 100));
    }
    assert.match(relogin, /^\+OK/);
    assert.equal((await snapshotMaildir(maildirOf(world, 'carol'))).length, before);
  });

  it('a second concurrent session gets [IN-USE]; mail delivered meanwhile waits for the next session', async () => {
    const first = await RawClient.connect(s.server.port);
    assert.match(await first.login('carol', 'carol'), /^\+OK/);
    const count = Number((await first.cmd('STAT')).split(' ')[1]);
    const second = await RawClient.connect(s.server.port);
    assert.match(await second.login('carol', 'carol'), /^-ERR \[IN-USE\]/);
    second.destroy();
    deliverWithLda(world, 'carol', testMessage('late', ['arrived during the session']));
    assert.match(await first.cmd('STAT'), new RegExp(`^\\+OK ${count} `));
    await first.cmd('QUIT');
    const third = await RawClient.connect(s.server.port);
    assert.match(await third.login('carol', 'carol'), /^\+OK/);
    assert.match(await third.cmd('STAT'), new RegExp(`^\\+OK ${count + 1} `));
    await third.cmd('QUIT');
  });

  it('moves new mail to cur/ at login as Dovecot does, keeping the UIDL; QUIT deletes it wherever it is', async () => {
    const dir = maildirOf(world, 'alice');
    deliverWithLda(world, 'alice', testMessage('fresh 1', ['a']));
    deliverWithLda(world, 'alice', testMessage('fresh 2', ['b']));
    deliverWithLda(world, 'alice', testMessage('fresh 3', ['c']));
    const delivered = fs.readdirSync(path.join(dir, 'new')).sort();
    assert.equal(delivered.length, 3, 'dovecot-lda delivers into new/');
    const c = await RawClient.connect(s.server.port);
    assert.match(await c.login('alice', world.passwords.alice), /^\+OK Logged in, 3 messages/);
    assert.deepEqual(fs.readdirSync(path.join(dir, 'new')), [], 'new/ is emptied at login');
    assert.deepEqual(fs.readdirSync(path.join(dir, 'cur')).sort(), delivered.map((n) => `${n}:2,`));
    c.send('UIDL\r\n');
    const uids = (await c.multiline()).body.split('\r\n').filter(Boolean).map((l) => l.split(' ')[1]);
    assert.deepEqual([...uids].sort(), delivered, 'the UIDL is the base name, unchanged by the move');
    c.send('RETR 1\r\n');
    assert.match((await c.multiline()).body, /Subject: fresh 1/);
    // Another reader (an IMAP client setting \Seen) renames one meanwhile; one goes back to new/.
    fs.renameSync(path.join(dir, 'cur', `${uids[1]}:2,`), path.join(dir, 'cur', `${uids[1]}:2,S`));
    fs.renameSync(path.join(dir, 'cur', `${uids[2]}:2,`), path.join(dir, 'new', uids[2] as string));
    for (const n of [1, 2, 3]) assert.match(await c.cmd(`DELE ${n}`), /^\+OK/);
    assert.match(await c.cmd('QUIT'), /^\+OK .*3 messages deleted/);
    assert.deepEqual([...fs.readdirSync(path.join(dir, 'cur')), ...fs.readdirSync(path.join(dir, 'new'))], []);
  });

  it('CAPA works before and after login and advertises what is there', async () => {
    const c = await RawClient.connect(s.server.port);
    c.send('CAPA\r\n');
    const pre = (await c.multiline()).body.split('\r\n');
    for (const cap of ['TOP', 'UIDL', 'USER', 'RESP-CODES', 'AUTH-RESP-CODE', 'PIPELINING', 'SASL PLAIN LOGIN', 'STLS', 'EXPIRE NEVER', 'IMPLEMENTATION kube-drac']) {
      assert.ok(pre.includes(cap), cap);
    }
    await c.login('carol', 'carol');
    c.send('CAPA\r\n');
    const post = (await c.multiline()).body.split('\r\n');
    assert.ok(post.includes('TOP') && !post.includes('STLS') && !post.includes('USER'));
    await c.cmd('QUIT');
  });

  it('AUTH PLAIN (initial response and continuation), AUTH LOGIN, and cancel', async () => {
    for (const exchange of [
      async (c: RawClient) => c.cmd(`AUTH PLAIN ${b64('\0carol\0carol')}`),
      async (c: RawClient) => {
        assert.equal(await c.cmd('AUTH PLAIN'), '+ ');
        return c.cmd(b64('carol\0carol\0carol'));
      },
      async (c: RawClient) => {
        assert.equal(await c.cmd('AUTH LOGIN'), '+ VXNlcm5hbWU6');
        assert.equal(await c.cmd(b64('carol')), '+ UGFzc3dvcmQ6');
        return c.cmd(b64('carol'));
      },
      async (c: RawClient) => {
        assert.equal(await c.cmd(`AUTH LOGIN ${b64('carol')}`), '+ UGFzc3dvcmQ6');
        return c.cmd(b64('carol'));
      },
    ]) {
      const c = await RawClient.connect(s.server.port);
      assert.match(await exchange(c), /^\+OK Logged in/);
      await c.cmd('QUIT');
    }
    const c = await RawClient.connect(s.server.port);
    assert.equal(await c.cmd('AUTH PLAIN'), '+ ');
    assert.match(await c.cmd('*'), /^-ERR/);
    assert.match(await c.cmd(`AUTH PLAIN ${b64('bob\0carol\0carol')}`), /^-ERR \[AUTH\]/, 'no acting for another user');
    assert.match(await c.cmd('AUTH PLAIN !!notbase64'), /^-ERR \[AUTH\]/);
    assert.match(await c.cmd('AUTH CRAM-MD5'), /^-ERR \[AUTH\]/);
    c.send('AUTH\r\n');
    assert.equal((await c.multiline()).body, 'PLAIN\r\nLOGIN\r\n');
    await c.cmd('QUIT');
  });

  it('APOP works for a user with a PLAIN secret only, with the per-session timestamp', async () => {
    const apop = async (user: string, secret: string) => {
      const c = await RawClient.connect(s.server.port);
      const banner = /<[^>]+>/.exec(c.greeting)?.[0];
      assert.ok(banner, `greeting advertises APOP: ${c.greeting}`);
      const digest = crypto.createHash('md5').update(banner + secret).digest('hex');
      const r = await c.cmd(`APOP ${user} ${digest}`);
      await c.cmd('QUIT');
      return r;
    };
    assert.match(await apop('carol', world.passwords.carol), /^\+OK Logged in/);
    assert.match(await apop('carol', 'wrong'), /^-ERR \[AUTH\]/);
    // alice's secret is a SHA512-CRYPT hash: APOP cannot work for her, whatever she sends.
    assert.match(await apop('alice', world.passwords.alice), /^-ERR \[AUTH\]/);
  });

  it('unknown user and wrong password get the same reply, and neither gets a grant', async () => {
    const before = s.renewer.calls.length;
    const c = await RawClient.connect(s.server.port);
    const wrong = await c.login('alice', 'not-her-password');
    const unknown = await c.login('nobody-here', 'whatever');
    assert.equal(wrong, '-ERR [AUTH] Authentication failed.');
    assert.equal(unknown, wrong);
    assert.match(await c.cmd('PASS x'), /^-ERR/, 'PASS without USER');
    await c.cmd('QUIT');
    assert.equal(s.renewer.calls.length, before);
  });

  it('SHA512-CRYPT and BLF-CRYPT users log in (passwords may hold spaces)', async () => {
    for (const [user, password] of [['alice', world.passwords.alice], ['bob', world.passwords.bob]] as const) {
      const c = await RawClient.connect(s.server.port);
      assert.match(await c.login(user, password), /^\+OK/);
      await c.cmd('QUIT');
    }
  });

  it('answers malformed input with -ERR and keeps serving', async () => {
    const c = await RawClient.connect(s.server.port);
    assert.match(await c.cmd('FOO'), /^-ERR/);
    assert.match(await c.cmd('STAT'), /^-ERR Not logged in/);
    assert.match(await c.cmd('US\0ER carol'), /^-ERR/);
    assert.match(await c.cmd(''), /^-ERR/);
    assert.match(await c.cmd('x'.repeat(5000)), /^-ERR Line too long/);
    c.send(Buffer.from([0xff, 0xfe, 0x00, 0x80, 0x0d, 0x0a]));
    assert.match(await c.line(), /^-ERR/);
    assert.match(await c.login('carol', 'carol'), /^\+OK/);
    for (const bad of ['RETR', 'RETR 0', 'RETR -1', 'RETR 1x', 'RETR 99999999999', 'TOP 1', 'TOP 1 -1', 'LIST 1 2', 'DELE', 'USER x', 'STLS']) {
      assert.match(await c.cmd(bad), /^-ERR/, bad);
    }
    assert.match(await c.cmd('noop'), /^\+OK/, 'keywords are case-insensitive');
    await c.cmd('QUIT');
  });

  it('a PROXY header from a peer that is not a trusted proxy ends the connection', async () => {
    const before = s.renewer.calls.length;
    const c = await RawClient.connect(s.server.port);
    c.send('PROXY TCP4 198.51.100.7 127.0.0.1 5555 110\r\nUSER carol\r\nPASS carol\r\n');
    assert.match(await c.line(), /^-ERR PROXY/);
    assert.ok(await c.waitClosed());
    assert.equal(s.renewer.calls.length, before);
  });

  it('survives thousands of random and mutated command streams', async () => {
    // Its own server: no failure delay, throttle or error limit, so every stream runs to its end.
    // (STLS and PROXY are left out: they wait for a handshake or end the connection, and have
    // tests of their own.)
    const fuzz = await startServer(world, { allowPlaintextAuth: true, throttle: { failureDelay: '0s', maxFailuresPerAddress: 1000000, maxFailuresPerUser: 1000000 }, limits: { maxErrors: 10000 } });
    after(() => fuzz.close());
    const seeds = ['USER carol', 'PASS carol', 'STAT', 'LIST', 'LIST 1', 'RETR 1', 'TOP 1 0', 'UIDL', 'DELE 1', 'RSET', 'NOOP', 'CAPA', 'AUTH PLAIN', `AUTH PLAIN ${b64('\0carol\0carol')}`, 'AUTH LOGIN', '*', 'APOP carol abc'];
    const rnd = (n: number) => crypto.randomInt(n);
    const mutate = (line: string): Buffer => {
      const b = Buffer.from(line);
      switch (rnd(6)) {
        case 0:
          return crypto.randomBytes(rnd(64));
        case 1:
          if (b.length > 0) b[rnd(b.length)] = rnd(256);
          return b;
        case 2:
          return Buffer.concat([b, crypto.randomBytes(rnd(8))]);
        case 3:
          return b.subarray(0, rnd(b.length + 1));
        default:
          return b;
      }
    };
    const streams = 3000;
    const perConnection = 15;
    let sent = 0;
    const worker = async () => {
      while (sent < streams) {
        const batch = Math.min(perConnection, streams - sent);
        sent += batch;
        const c = await RawClient.connect(fuzz.server.port);
        const parts: Buffer[] = [];
        for (let i = 0; i < batch; i++) {
          const n = 1 + rnd(5);
          for (let j = 0; j < n; j++) parts.push(mutate(seeds[rnd(seeds.length)] as string), Buffer.from(rnd(10) === 0 ? '\n' : '\r\n'));
        }
        c.send(Buffer.concat(parts));
        c.send('\r\n*\r\nQUIT\r\n');
        await c.waitClosed(5000);
        c.destroy();
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    const c = await RawClient.connect(fuzz.server.port);
    assert.match(await c.cmd('NOOP'), /^-ERR/);
    // Locks were all released: carol can log in.
    let r = '';
    for (let i = 0; i < 50 && !r.startsWith('+OK'); i++) {
      r = await c.login('carol', 'carol');
      if (!r.startsWith('+OK')) await new Promise((res) => setTimeout(res, 100));
    }
    assert.match(r, /^\+OK/);
    await c.cmd('QUIT');
  });
});

describe('POP3 TLS rules', () => {
  let world: World;
  let s: StartedServer;
  before(async () => {
    world = makeWorld('tlsrules');
    fill(world, 'carol', 1);
    s = await startServer(world, {});
  });
  after(async () => {
    await s.close();
    world.cleanup();
  });

  it('refuses plaintext USER/PASS and AUTH before TLS, saying TLS is required', async () => {
    const c = await RawClient.connect(s.server.port);
    c.send('CAPA\r\n');
    const caps = (await c.multiline()).body.split('\r\n');
    assert.ok(caps.includes('STLS') && !caps.includes('USER') && !caps.some((l) => l.startsWith('SASL')));
    assert.match(await c.cmd('USER carol'), /^-ERR \[AUTH\] .*(TLS|STLS)/);
    assert.match(await c.cmd(`AUTH PLAIN ${b64('\0carol\0carol')}`), /^-ERR \[AUTH\] .*STLS/);
    await c.cmd('QUIT');
    assert.equal(s.renewer.calls.length, 0);
  });

  it('STLS upgrades, and commands pipelined with it in the clear are not executed', async () => {
    const c = await RawClient.connect(s.server.port);
    c.send('STLS\r\nUSER carol\r\nPASS carol\r\n');
    assert.match(await c.line(), /^\+OK Begin TLS/);
    assert.equal(c.rest(), '', 'no replies to the injected commands');
    await c.startTls();
    assert.match(await c.cmd('STAT'), /^-ERR Not logged in/);
    assert.match(await c.cmd('STLS'), /^-ERR/);
    c.send('CAPA\r\n');
    const caps = (await c.multiline()).body.split('\r\n');
    assert.ok(caps.includes('USER') && !caps.includes('STLS'));
    assert.equal(s.renewer.calls.length, 0);
    assert.match(await c.login('carol', 'carol'), /^\+OK/);
    await c.cmd('QUIT');
    assert.equal(s.renewer.calls.length, 1);
  });

  it('serves a rotated certificate on both ports without a restart', async () => {
    const servedCn = (port: number, stls: boolean) =>
      new Promise<string>((resolve, reject) => {
        const done = (sock: tls.TLSSocket) => {
          const cn = sock.getPeerCertificate().subject.CN;
          sock.destroy();
          resolve(Array.isArray(cn) ? cn.join() : (cn ?? ''));
        };
        if (!stls) {
          const t = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false }, () => done(t));
          t.on('error', reject);
          return;
        }
        const plain = net.connect(port, '127.0.0.1');
        let seen = '';
        plain.on('data', (d: Buffer) => {
          seen += d.toString();
          if (seen.includes('ready')) {
            seen = '';
            plain.write('STLS\r\n');
          } else if (seen.includes('Begin TLS')) {
            plain.removeAllListeners('data');
            const t = tls.connect({ socket: plain, rejectUnauthorized: false }, () => done(t));
            t.on('error', reject);
          }
        });
        plain.on('error', reject);
      });
    assert.equal(await servedCn(s.server.tlsPort as number, false), 'localhost');
    // Rotate: a new pair written over the files the server was started with.
    const next = makeCert(path.join(world.dir, 'rotated'), 'rotated.example');
    fs.copyFileSync(next.keyFile, world.cert.keyFile);
    fs.copyFileSync(next.certFile, world.cert.certFile);
    for (let i = 0; i < 100 && (await servedCn(s.server.tlsPort as number, false)) !== 'rotated.example'; i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(await servedCn(s.server.tlsPort as number, false), 'rotated.example');
    assert.equal(await servedCn(s.server.port, true), 'rotated.example');
  });

  it('implicit TLS on the POP3S port allows login at once', async () => {
    const c = await RawClient.connect(s.server.tlsPort as number, { tls: true });
    assert.match(await c.login('carol', 'carol'), /^\+OK/);
    await c.cmd('QUIT');
  });
});

describe('POP3 grants, proxies, limits', () => {
  const world = makeWorld('grants');
  const started: StartedServer[] = [];
  const start = async (overrides: Record<string, unknown>, renewer?: RecordingRenewer) => {
    const s = await startServer(world, { allowPlaintextAuth: true, ...overrides }, renewer);
    started.push(s);
    return s;
  };
  after(async () => {
    for (const s of started) await s.close();
    world.cleanup();
  });

  it('a trusted proxy passes the real client (v1 and v2); UNKNOWN and LOCAL get no grant', async () => {
    const s = await start({ trustedProxies: ['127.0.0.0/8'] });
    const v2 = (cmd: number, src: number[]) => {
      const h = Buffer.alloc(28);
      Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]).copy(h);
      h[12] = 0x20 | cmd;
      h[13] = 0x11;
      h.writeUInt16BE(12, 14);
      h.set(src, 16);
      h.set([127, 0, 0, 1], 20);
      h.writeUInt16BE(4444, 24);
      h.writeUInt16BE(110, 26);
      return h;
    };
    for (const [header, expected] of [
      [Buffer.from('PROXY TCP4 192.0.2.55 127.0.0.1 4444 110\r\n'), '192.0.2.55'],
      [Buffer.from('PROXY TCP6 2001:db8::7 ::1 4444 110\r\n'), '2001:db8::7'],
      [v2(1, [203, 0, 113, 80]), '203.0.113.80'],
      [Buffer.from('PROXY UNKNOWN\r\n'), undefined],
      [v2(0, [203, 0, 113, 81]), undefined],
    ] as const) {
      const before = s.renewer.calls.length;
      const c = await RawClient.connect(s.server.port, { greeting: false });
      c.send(header);
      assert.match(await c.line(), /^\+OK/);
      assert.match(await c.login('carol', 'carol'), /^\+OK/);
      await c.cmd('QUIT');
      if (expected === undefined) assert.equal(s.renewer.calls.length, before, 'no grant without a client address');
      else assert.equal(s.renewer.calls.at(-1)?.ip, expected);
    }
    // A trusted peer that sends no header, or garbage, is cut off before any greeting.
    const c = await RawClient.connect(s.server.port, { greeting: false });
    c.send('USER carol\r\n');
    assert.ok(await c.waitClosed());
    assert.equal(c.rest(), '');
  });

  it('the deny list gets no grant; a failing or slow grant write never fails the login', async () => {
    const denied = await start({ denyGrantNetworks: ['127.0.0.0/8'] });
    let c = await RawClient.connect(denied.server.port);
    assert.match(await c.login('carol', 'carol'), /^\+OK/);
    await c.cmd('QUIT');
    assert.equal(denied.renewer.calls.length, 0);

    const failing = await start({}, new RecordingRenewer().failing());
    c = await RawClient.connect(failing.server.port);
    assert.match(await c.login('carol', 'carol'), /^\+OK/);
    await c.cmd('QUIT');
    assert.equal(failing.renewer.calls.length, 1);

    const slowRenewer = new RecordingRenewer();
    slowRenewer.delayMs = 60_000;
    const slow = await start({ loginWaitForGrant: '100ms' }, slowRenewer);
    c = await RawClient.connect(slow.server.port);
    assert.match(await c.login('carol', 'carol'), /^\+OK/);
    await c.cmd('QUIT');
  });

  it('throttles failed logins per address: the right password is then refused unchecked', async () => {
    const s = await start({ throttle: { failureDelay: '10ms', maxFailuresPerAddress: 2, window: '1h' } });
    const c = await RawClient.connect(s.server.port);
    assert.match(await c.login('carol', 'bad1'), /^-ERR \[AUTH\]/);
    assert.match(await c.login('carol', 'bad2'), /^-ERR \[AUTH\]/);
    assert.match(await c.login('carol', 'carol'), /^-ERR \[SYS\/TEMP\]/);
    await c.cmd('QUIT');
    assert.equal(s.renewer.calls.length, 0);
  });

  it('limits sessions per address and line length, with clear errors', async () => {
    const s = await start({ limits: { maxSessionsPerAddress: 2, maxLineLength: 512 } });
    const a = await RawClient.connect(s.server.port);
    const b = await RawClient.connect(s.server.port);
    const third = await RawClient.connect(s.server.port, { greeting: false });
    assert.match(await third.line(), /^-ERR \[SYS\/TEMP\] Too many sessions from your address/);
    assert.match(await a.cmd('x'.repeat(600)), /^-ERR Line too long/);
    assert.match(await a.cmd('CAPA'), /^\+OK/);
    a.destroy();
    b.destroy();
  });

  it('a client that leaves during the TLS handshake gives its session slot back', async () => {
    const s = await start({ limits: { maxSessionsPerAddress: 2 } });
    for (let i = 0; i < 5; i++) {
      const sock = net.connect(s.server.tlsPort as number, '127.0.0.1');
      await new Promise((r) => sock.once('connect', r));
      sock.write(Buffer.from([0x16, 0x03, 0x01])); // the start of a ClientHello, then gone
      sock.destroy();
    }
    let reply = '';
    for (let i = 0; i < 100 && !reply.startsWith('+OK'); i++) {
      try {
        const c = await RawClient.connect(s.server.tlsPort as number, { tls: true, greeting: false });
        reply = await c.line().catch(() => '');
        c.destroy();
      } catch {
        reply = ''; // refused while the slots are taken
      }
      if (!reply.startsWith('+OK')) await new Promise((r) => setTimeout(r, 50));
    }
    assert.match(reply, /^\+OK .*ready/);
  });

  it('ends an idle session before login', async () => {
    const s = await start({ timeouts: { authorization: '1s' } });
    const c = await RawClient.connect(s.server.port);
    assert.match(await c.line(), /^-ERR Disconnected for inactivity/);
    assert.ok(await c.waitClosed());
  });
});
