// Real clients against the POP3 server, on Maildirs filled by Dovecot's LDA: Python's poplib,
// curl and fetchmail. The server runs with its production defaults for TLS (no plaintext auth).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { snapshotMaildir } from '../../src/mail/maildir.ts';
import { deliverWithLda, makeWorld, maildirOf, startServer, testMessage, type StartedServer, type World } from './support.ts';

const run = promisify(execFile);
const POPLIB = fileURLToPath(new URL('./clients/poplib_client.py', import.meta.url));

interface PoplibOutput {
  stls?: string;
  welcome: string;
  steps: Array<{ step: string; result: unknown }>;
}

async function poplib(mode: 'stls' | 'ssl' | 'plain', port: number, world: World, user: string, password: string, ...steps: string[]): Promise<PoplibOutput> {
  const { stdout } = await run('python3', [POPLIB, mode, String(port), world.cert.certFile, user, password, ...steps], { timeout: 60_000 });
  return JSON.parse(stdout) as PoplibOutput;
}

const result = (out: PoplibOutput, step: string) => out.steps.find((s) => s.step === step)?.result;

/** A message with lines that need care: a leading dot, a lone dot, a long line, non-ASCII. */
const TRICKY_BODY = ['first line', '.starts with a dot', '.', '..two dots', 'x'.repeat(900), 'grüße', 'last line'];

describe('real POP3 clients', () => {
  let world: World;
  let s: StartedServer;
  before(async () => {
    world = makeWorld('clients');
    for (const user of ['alice', 'carol']) {
      deliverWithLda(world, user, testMessage(`hello ${user}`, TRICKY_BODY));
      deliverWithLda(world, user, testMessage(`second ${user}`, ['short']));
    }
    s = await startServer(world, {});
  });
  after(async () => {
    await s.close();
    world.cleanup();
  });

  it('poplib: STLS, USER/PASS, STAT, LIST, UIDL, RETR, TOP, QUIT; the message arrives intact', async () => {
    const out = await poplib('stls', s.server.port, world, 'alice', world.passwords.alice, 'capa', 'user', 'stat', 'list', 'uidl', 'retr:1', 'top:1:2', 'quit');
    assert.match(out.stls ?? '', /^\+OK/);
    assert.ok('TOP' in (result(out, 'capa') as object));
    assert.match(result(out, 'user') as string, /^\+OK/);
    const [count, size] = result(out, 'stat') as [number, number];
    assert.equal(count, 2);
    const listed = await snapshotMaildir(maildirOf(world, 'alice'));
    assert.equal(size, listed.reduce((n, m) => n + m.size, 0));
    assert.deepEqual(result(out, 'uidl'), listed.map((m, i) => `${i + 1} ${m.uid}`));
    const retr = result(out, 'retr:1') as { text: string; octets: number };
    // poplib undoes dot-stuffing: the body must be exactly what was delivered.
    const delivered = fs.readFileSync(listed[0]!.path, 'utf8');
    assert.equal(retr.text + '\n', delivered);
    assert.ok(retr.text.includes('\n.starts with a dot\n.\n..two dots\n'));
    const top = result(out, 'top:1:2') as { lines: string[] };
    assert.deepEqual(top.lines.slice(-3), ['', 'first line', '.starts with a dot']);
    assert.match(result(out, 'quit') as string, /^\+OK/);
    assert.deepEqual(s.renewer.calls.at(-1), { ip: '127.0.0.1', user: 'alice', source: 'pop3' });
  });

  it('poplib: POP3_SSL with raw AUTH PLAIN and AUTH LOGIN; DELE + QUIT deletes, DELE + drop does not', async () => {
    let out = await poplib('ssl', s.server.tlsPort as number, world, 'carol', world.passwords.carol, 'authplain', 'stat', 'dele:1', 'drop');
    assert.match(result(out, 'authplain') as string, /^\+OK/);
    assert.equal((await snapshotMaildir(maildirOf(world, 'carol'))).length, 2, 'a dropped session deletes nothing');
    // The drop releases the lock once the server sees the close.
    for (let i = 0; i < 50; i++) {
      out = await poplib('ssl', s.server.tlsPort as number, world, 'carol', world.passwords.carol, 'authlogin', 'dele:1', 'quit');
      if (typeof result(out, 'authlogin') === 'string') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.match(result(out, 'authlogin') as string, /^\+OK/);
    assert.match(result(out, 'quit') as string, /^\+OK/);
    const left = await snapshotMaildir(maildirOf(world, 'carol'));
    assert.equal(left.length, 1);
    assert.match(fs.readFileSync(left[0]!.path, 'utf8'), /Subject: second carol/);
  });

  it('poplib: a wrong password is refused with [AUTH], and plaintext login without TLS is refused', async () => {
    let out = await poplib('stls', s.server.port, world, 'alice', 'wrong', 'user');
    assert.match(JSON.stringify(result(out, 'user')), /\[AUTH\] Authentication failed/);
    out = await poplib('plain', s.server.port, world, 'alice', world.passwords.alice, 'user');
    assert.match(JSON.stringify(result(out, 'user')), /\[AUTH\].*TLS/);
  });

  it('curl: pop3:// with --ssl-reqd (STLS) lists and retrieves, pop3s:// retrieves, and plain pop3:// cannot log in', async () => {
    const base = ['-s', '--cacert', world.cert.certFile, '-u', `alice:${world.passwords.alice}`, '--max-time', '30'];
    const list = await run('curl', [...base, '--ssl-reqd', `pop3://127.0.0.1:${s.server.port}/`]);
    assert.match(list.stdout, /^1 \d+\r\n2 \d+\r\n$/);
    const msg = await run('curl', [...base, '--ssl-reqd', `pop3://127.0.0.1:${s.server.port}/1`]);
    assert.match(msg.stdout, /Subject: hello alice/);
    assert.match(msg.stdout, /\r\n\.starts with a dot\r\n\.\r\n\.\.two dots\r\n/, 'curl undoes dot-stuffing');
    const uidl = await run('curl', [...base, '--ssl-reqd', '-X', 'UIDL', `pop3://127.0.0.1:${s.server.port}/`]);
    const listed = await snapshotMaildir(maildirOf(world, 'alice'));
    assert.equal(uidl.stdout, listed.map((m, i) => `${i + 1} ${m.uid}\r\n`).join(''));
    const implicit = await run('curl', [...base, `pop3s://127.0.0.1:${s.server.tlsPort}/2`]);
    assert.match(implicit.stdout, /Subject: second alice/);
    await assert.rejects(run('curl', [...base, `pop3://127.0.0.1:${s.server.port}/1`]), 'without TLS the login is refused');
  });

  it('fetchmail: keep mode fetches each message once (UIDL), nokeep + flush fetches the new one and deletes all', async () => {
    const user = 'fetchy';
    for (let i = 1; i <= 3; i++) deliverWithLda(world, user, testMessage(`fetch ${i}`, ['.dotted', `body ${i}`]));
    fs.appendFileSync(world.usersFile, `${user}:{PLAIN}fetch-pw\n`);
    // The users file is reloaded on change; wait until the new user can log in.
    for (let i = 0; i < 100; i++) {
      const out = await poplib('stls', s.server.port, world, user, 'fetch-pw', 'user', 'quit');
      if (typeof result(out, 'user') === 'string') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const home = path.join(world.dir, 'fetchmail-home');
    fs.mkdirSync(home, { mode: 0o700 });
    const sink = path.join(home, 'delivered.mbox');
    const rc = path.join(home, 'fetchmailrc');
    const fetch = async (keep: boolean) => {
      fs.writeFileSync(
        rc,
        [
          `poll localhost via 127.0.0.1 service ${s.server.port} protocol POP3 uidl`,
          `  user ${user} password fetch-pw`,
          `  sslproto tls1.2+ sslcertck sslcertfile ${world.cert.certFile} sslcommonname localhost`,
          `  mda "/bin/sh -c 'cat >> ${sink}; echo ==END== >> ${sink}'"`,
          `  ${keep ? 'keep' : 'nokeep flush'}`,
          '',
        ].join('\n'),
        { mode: 0o600 },
      );
      return run('fetchmail', ['-f', rc, '-i', path.join(home, 'fetchids'), '--nosyslog', '--nodetach'], {
        env: { HOME: home, PATH: process.env.PATH ?? '/usr/bin:/bin', FETCHMAILHOME: home },
        timeout: 60_000,
      }).catch((err: { code?: number; stdout?: string; stderr?: string }) => err);
    };
    const first = await fetch(true);
    assert.ok(fs.existsSync(sink), `fetchmail delivered nothing: ${JSON.stringify(first)}`);
    let got = fs.readFileSync(sink, 'utf8');
    assert.equal(got.split('==END==').length - 1, 3, got);
    assert.match(got, /Subject: fetch 1[\s\S]*\n\.dotted\n/);
    assert.equal((await snapshotMaildir(maildirOf(world, user))).length, 3, 'keep leaves the messages');
    await fetch(true);
    got = fs.readFileSync(sink, 'utf8');
    assert.equal(got.split('==END==').length - 1, 3, 'nothing new in keep mode: UIDL remembered');
    deliverWithLda(world, user, testMessage('fetch 4', ['new']));
    await fetch(false);
    got = fs.readFileSync(sink, 'utf8');
    assert.equal(got.split('==END==').length - 1, 4, 'only the new message is fetched');
    assert.equal((await snapshotMaildir(maildirOf(world, user))).length, 0, 'nokeep + flush deletes what it fetched and what it had seen');
  });
});
