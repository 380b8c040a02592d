// STARTTLS and implicit TLS (also behind a PROXY v2 header), and IPv4-mapped peers on a
// dual-stack listener, with swaks as the client.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { UserDatabase } from '../../src/auth/passwd-file.ts';
import { LoginThrottle } from '../../src/auth/throttle.ts';
import { PasswordVerifier } from '../../src/auth/verifier.ts';
import { dialogue, proxyArgs, swaks } from './peers.ts';
import { ListGrantLookup, memoryLogger, run, startTestSmtp, type TestSmtp } from './support.ts';

const certDir = fs.mkdtempSync(path.join(os.tmpdir(), 'smtp-tls-'));
const certFile = path.join(certDir, 'tls.crt');
const keyFile = path.join(certDir, 'tls.key');
let t: TestSmtp;

before(async () => {
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=mx.example.org'], { stdio: 'ignore' });
  t = await startTestSmtp({ tls: { certFile, keyFile }, implicitTlsPort: 0, trustedProxies: ['127.0.0.1'] });
  t.grants.grants.push({ address: '127.0.0.5', expiresAtMs: Date.now() + 3_600_000 }, { address: '202.99.11.120', expiresAtMs: Date.now() + 3_600_000 });
});
after(async () => {
  await t?.close();
  fs.rmSync(certDir, { recursive: true, force: true });
});

void describe('TLS', () => {
  void it('offers STARTTLS (and no AUTH) in plaintext, and not again after it', async () => {
    const r = await swaks({ port: t.port, to: 'x@remote.test', local: '127.0.0.5', extra: ['--tls', '--quit-after', 'EHLO'] });
    assert.equal(r.code, 0, r.stdout);
    const [plain, secure] = r.stdout.split('TLS started');
    assert.match(plain ?? '', /250[- ]STARTTLS/);
    assert.doesNotMatch(plain ?? '', /AUTH/);
    assert.doesNotMatch(secure ?? '', /STARTTLS|AUTH/);
  });

  void it('relays over STARTTLS with a grant; the Received header says ESMTPS', async () => {
    const r = await swaks({ port: t.port, to: 'x@remote.test', local: '127.0.0.5', extra: ['--tls', '--header', 'Subject: over-starttls'] });
    assert.equal(r.code, 0, r.stdout);
    const m = t.messages(t.outbox).find((x) => x.includes('over-starttls')) ?? '';
    assert.match(m, /with ESMTPS id/);
  });

  void it('refuses relay over TLS without a grant', async () => {
    const r = await swaks({ port: t.port, to: 'x@remote.test', local: '127.0.0.6', extra: ['--tls'] });
    assert.equal(r.code, 24, r.stdout);
  });

  void it('speaks TLS from the first byte on the implicit TLS port', async () => {
    const r = await swaks({ port: t.server.implicitTlsPort as number, to: 'x@remote.test', local: '127.0.0.5', extra: ['--tls-on-connect'] });
    assert.equal(r.code, 0, r.stdout);
    assert.doesNotMatch(r.stdout, /STARTTLS/);
  });

  void it('reads a PROXY v2 header before the TLS handshake from the trusted proxy', async () => {
    const ok = await swaks({ port: t.server.implicitTlsPort as number, to: 'x@remote.test', local: '127.0.0.1', extra: ['--tls-on-connect', ...proxyArgs(2, '202.99.11.120')] });
    assert.equal(ok.code, 0, ok.stdout);
    const no = await swaks({ port: t.server.implicitTlsPort as number, to: 'x@remote.test', local: '127.0.0.1', extra: ['--tls-on-connect', ...proxyArgs(2, '203.0.113.7')] });
    assert.equal(no.code, 24, no.stdout);
  });

  void it('discards commands pipelined after STARTTLS in plaintext', async () => {
    const { replies } = await dialogue(t.port, ['EHLO a', { raw: Buffer.from('STARTTLS\r\nMAIL FROM:<a@b.test>\r\n'), replies: 2 }], { local: '127.0.0.6', timeoutMs: 1500 });
    assert.match(replies[2] ?? '', /^220 /);
    assert.equal(replies.length, 3, 'the injected MAIL got no plaintext answer');
  });
});

void describe('connection limits on the implicit TLS port', () => {
  let limited: TestSmtp | undefined;
  after(async () => {
    await limited?.close();
  });

  void it('closes a client past the per-address limit before TLS, saying nothing in plaintext, and takes the slot back', async () => {
    limited = await startTestSmtp({ tls: { certFile, keyFile }, implicitTlsPort: 0, maxClients: 3, maxClientsPerAddress: 1 });
    const port = limited.server.implicitTlsPort as number;
    const net = await import('node:net');
    const tls = await import('node:tls');
    const hold = tls.connect({ socket: net.connect({ host: '127.0.0.1', port, localAddress: '127.0.0.40' }), rejectUnauthorized: false });
    await new Promise<void>((resolve) => hold.once('data', () => resolve()));
    const refused = net.connect({ host: '127.0.0.1', port, localAddress: '127.0.0.40' });
    let said = '';
    refused.on('data', (chunk: Buffer) => (said += chunk.toString('latin1')));
    await new Promise<void>((resolve) => refused.once('close', () => resolve()));
    assert.equal(said, '', 'a refused client on the TLS port was sent plaintext');
    hold.destroy();
    let again = await swaks({ port, to: 'someone@example.org', local: '127.0.0.40', extra: ['--tls-on-connect', '--quit-after', 'EHLO'] });
    for (let i = 0; i < 50 && again.code !== 0; i++) {
      await new Promise((r) => setTimeout(r, 20));
      again = await swaks({ port, to: 'someone@example.org', local: '127.0.0.40', extra: ['--tls-on-connect', '--quit-after', 'EHLO'] });
    }
    assert.equal(again.code, 0, again.stdout);
  });
});

void describe('dual-stack listener', () => {
  let d: TestSmtp | undefined;
  after(async () => {
    await d?.close();
  });

  void it('matches IPv4-mapped peers against IPv4 grants', async (ctx) => {
    try {
      d = await startTestSmtp({ listen: { host: '::', port: 0 } });
    } catch (err) {
      ctx.skip(`no IPv6 here: ${(err as Error).message}`);
      return;
    }
    d.grants.grants.push({ address: '127.0.0.5', expiresAtMs: Date.now() + 3_600_000 });
    const ok = await swaks({ port: d.port, to: 'x@remote.test', local: '127.0.0.5' });
    assert.equal(ok.code, 0, ok.stdout);
    const no = await swaks({ port: d.port, to: 'x@remote.test', local: '127.0.0.6' });
    assert.equal(no.code, 24, no.stdout);
    assert.ok(d.messages(d.outbox).some((m) => m.includes('([127.0.0.5])')), 'Received names the IPv4 address');
  });
});

void describe('SMTP AUTH (optional, after TLS only)', () => {
  let a: TestSmtp | undefined;
  let verifier: PasswordVerifier | undefined;
  let users: UserDatabase | undefined;
  before(async () => {
    const usersFile = path.join(certDir, 'users');
    fs.writeFileSync(usersFile, 'ideal:{PLAIN}correct horse\n');
    users = new UserDatabase({ file: usersFile, log: memoryLogger(), pollIntervalMs: 0 });
    verifier = new PasswordVerifier({ threads: 0 });
    a = await startTestSmtp(
      { tls: { certFile, keyFile }, usersFile, auth: { enabled: true } },
      { auth: { users, verifier, throttle: new LoginThrottle({ maxFailuresPerAddress: 3, maxFailuresPerUser: 10, windowMs: 60_000 }) } },
    );
  });
  after(async () => {
    await a?.close();
    await verifier?.close();
    users?.close();
  });

  void it('relays for an authenticated user over STARTTLS, and says so in Received', async () => {
    const r = await swaks({ port: a!.port, to: 'x@remote.test', local: '127.0.0.6', extra: ['--tls', '--auth', 'PLAIN', '--auth-user', 'ideal', '--auth-password', 'correct horse', '--header', 'Subject: authed'] });
    assert.equal(r.code, 0, r.stdout);
    assert.match(a!.messages(a!.outbox).find((m) => m.includes('authed')) ?? '', /\(authorized: smtp auth ideal\)/);
  });

  void it('does not offer AUTH before STARTTLS', async () => {
    const r = await swaks({ port: a!.port, to: 'x@remote.test', local: '127.0.0.6', extra: ['--auth', 'PLAIN', '--auth-user', 'ideal', '--auth-password', 'correct horse'] });
    assert.notEqual(r.code, 0, r.stdout);
    assert.doesNotMatch(r.stdout, /250[- ]AUTH/);
  });

  void it('refuses a wrong password with 535 5.7.8, then throttles the address', async () => {
    const codes: (number | null)[] = [];
    let last = '';
    for (let i = 0; i < 4; i++) {
      const r = await swaks({ port: a!.port, to: 'x@remote.test', local: '127.0.0.7', extra: ['--tls', '--auth', 'PLAIN', '--auth-user', 'ideal', '--auth-password', 'wrong'] });
      codes.push(r.code);
      last = r.stdout;
    }
    assert.deepEqual(codes, [28, 28, 28, 28]);
    assert.match(last, /454 4\.7\.0 Too many failed authentications/);
    // The right password from that address is throttled too, until the window refills.
    const r = await swaks({ port: a!.port, to: 'x@remote.test', local: '127.0.0.7', extra: ['--tls', '--auth', 'PLAIN', '--auth-user', 'ideal', '--auth-password', 'correct horse'] });
    assert.equal(r.code, 28, r.stdout);
  });
});

void describe('grant cache not synced yet', () => {
  let u: TestSmtp | undefined;
  after(async () => {
    await u?.close();
  });
  void it('defers relaying with 451 4.7.1 but still accepts local mail', async () => {
    const grants = new ListGrantLookup([{ address: '127.0.0.5', expiresAtMs: Date.now() + 3_600_000 }]);
    grants.synced = false;
    u = await startTestSmtp({}, { grants });
    const relay = await swaks({ port: u.port, to: 'x@remote.test', local: '127.0.0.5' });
    assert.equal(relay.code, 24, relay.stdout);
    assert.match(relay.stdout, /451 4\.7\.1 <x@remote\.test>: Relay access temporarily deferred/);
    const local = await swaks({ port: u.port, to: 'bob@example.org', local: '127.0.0.5' });
    assert.equal(local.code, 0, local.stdout);
  });
});

void describe('certificate rotation', () => {
  let r: TestSmtp | undefined;
  const rotDir = fs.mkdtempSync(path.join(os.tmpdir(), 'smtp-rot-'));
  const cert = path.join(rotDir, 'tls.crt');
  const key = path.join(rotDir, 'tls.key');
  const makeCert = (cn: string, k: string, c: string) =>
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', k, '-out', c, '-days', '2', '-subj', `/CN=${cn}`], { stdio: 'ignore' });
  after(async () => {
    await r?.close();
    fs.rmSync(rotDir, { recursive: true, force: true });
  });

  void it('serves a replaced certificate without a restart', async () => {
    makeCert('mx.example.org', key, cert);
    r = await startTestSmtp({ tls: { certFile: cert, keyFile: key } });
    const port = r.port;
    const subject = async (): Promise<string> => {
      const out = await run('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-starttls', 'smtp', '-noservername'], 'QUIT\r\n', 10_000);
      return /CN ?= ?([\w.-]+)/.exec(`${out.stdout}\n${out.stderr}`)?.[1] ?? '';
    };
    assert.equal(await subject(), 'mx.example.org');
    // As a Secret volume does it: new files are moved into place, then the watch reloads them.
    makeCert('rotated.example.org', `${key}.new`, `${cert}.new`);
    fs.renameSync(`${key}.new`, key);
    fs.renameSync(`${cert}.new`, cert);
    let now = '';
    for (let i = 0; i < 50 && now !== 'rotated.example.org'; i++) {
      await new Promise((res) => setTimeout(res, 100));
      now = await subject();
    }
    assert.equal(now, 'rotated.example.org');
  });
});
