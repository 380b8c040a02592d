// Internationalized addresses in SMTP replies, through Python's smtplib: a client that said
// SMTPUTF8 gets its address back as the UTF-8 it sent, byte for byte (on every transport); a
// client that did not gets ASCII only (the domain in A-labels, as it sent it), and a non-ASCII
// mailbox name without SMTPUTF8 is refused with 553 5.6.7.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { asciiAddress, asciiText, hasNonAsciiLocalPart } from '../../src/smtp/relay-policy.ts';
import { run, startTestSmtp, type TestSmtp } from './support.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'smtp-utf8-'));
const certFile = path.join(dir, 'tls.crt');
const keyFile = path.join(dir, 'tls.key');

interface Reply {
  code: number;
  /** The reply text as the bytes on the wire, hex. */
  hex: string;
}

/**
 * One smtplib session: MAIL FROM `from` (with SMTPUTF8 when `utf8`), then RCPT for each of `to`;
 * the raw reply bytes of every command. `sloppy` sends UTF-8 without declaring SMTPUTF8.
 */
async function session(port: number, transport: 'plain' | 'starttls' | 'ssl', from: string, to: string[], opts: { utf8: boolean; sloppy?: boolean }): Promise<Reply[]> {
  const script = `
import json, smtplib, ssl, sys
a = json.loads(sys.stdin.read())
ctx = ssl._create_unverified_context()
s = smtplib.SMTP_SSL('127.0.0.1', a['port'], context=ctx, timeout=15) if a['transport'] == 'ssl' else smtplib.SMTP('127.0.0.1', a['port'], timeout=15)
s.ehlo('python.client.test')
if a['transport'] == 'starttls':
    s.starttls(context=ctx)
    s.ehlo('python.client.test')
assert s.has_extn('smtputf8')
if a['sloppy']:
    s.command_encoding = 'utf-8'
out = [s.mail(a['from'], ['SMTPUTF8'] if a['utf8'] else [])]
for rcpt in a['to']:
    out.append(s.rcpt(rcpt))
s.quit()
print(json.dumps([{'code': c, 'hex': m.hex()} for c, m in out]))
`;
  const r = await run('python3', ['-c', script], JSON.stringify({ port, transport, from, to, utf8: opts.utf8, sloppy: opts.sloppy ?? false }));
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as Reply[];
}

const text = (r: Reply | undefined) => Buffer.from(r?.hex ?? '', 'hex');

let t: TestSmtp;
before(async () => {
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=mx.example.org'], { stdio: 'ignore' });
  t = await startTestSmtp({ tls: { certFile, keyFile }, implicitTlsPort: 0 });
});
after(async () => {
  await t.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

void describe('SMTPUTF8 replies', () => {
  for (const transport of ['plain', 'starttls', 'ssl'] as const) {
    void it(`echo the address as the UTF-8 the client sent (${transport})`, async () => {
      const port = transport === 'ssl' ? (t.server.implicitTlsPort as number) : t.port;
      const replies = await session(port, transport, 'sender@bücher.test', ['user@bücher.test', 'jürgen@example.org', 'bob@example.org'], { utf8: true });
      assert.deepEqual(
        replies.map((r) => r.code),
        [250, 550, 550, 250],
      );
      // The exact bytes: UTF-8 once, not Latin-1 (0xFC) and not UTF-8 of UTF-8 (c3 83 c2 bc).
      assert.deepEqual(text(replies[1]), Buffer.from('5.7.1 <user@bücher.test>: Relay access denied', 'utf8'));
      assert.deepEqual(text(replies[2]), Buffer.from('5.1.1 <jürgen@example.org>: Recipient address rejected: User unknown in local recipient table', 'utf8'));
    });
  }

  void it('show a client without SMTPUTF8 only ASCII: the domain in A-labels, as it sent it', async () => {
    const replies = await session(t.port, 'plain', 'sender@xn--bcher-kva.test', ['user@xn--bcher-kva.test', 'bob@example.org'], { utf8: false });
    assert.deepEqual(
      replies.map((r) => r.code),
      [250, 550, 250],
    );
    assert.equal(text(replies[1]).toString('latin1'), '5.7.1 <user@xn--bcher-kva.test>: Relay access denied');
  });

  void it('refuse a non-ASCII mailbox name without SMTPUTF8 with 553 5.6.7, at MAIL and at RCPT', async () => {
    const atMail = await session(t.port, 'plain', 'jürgen@example.org', [], { utf8: false, sloppy: true });
    assert.equal(atMail[0]?.code, 553);
    assert.match(text(atMail[0]).toString('latin1'), /^5\.6\.7 Must declare SMTPUTF8/);
    const atRcpt = await session(t.port, 'plain', 'sender@client.test', ['jürgen@example.org', 'bob@example.org'], { utf8: false, sloppy: true });
    assert.deepEqual(
      atRcpt.map((r) => r.code),
      [250, 553, 250],
    );
    // A sloppy client's raw UTF-8 domain is still answered in ASCII.
    const rawDomain = await session(t.port, 'plain', 'sender@client.test', ['user@bücher.test'], { utf8: false, sloppy: true });
    assert.equal(text(rawDomain[1]).toString('latin1'), '5.7.1 <user@xn--bcher-kva.test>: Relay access denied');
  });
});

void describe('the ASCII form of an address (pure)', () => {
  void it('writes the domain in A-labels and any other non-ASCII character as ?', () => {
    assert.equal(asciiAddress('user@bücher.test'), 'user@xn--bcher-kva.test');
    assert.equal(asciiAddress('user@Bücher.Example'), 'user@xn--bcher-kva.example');
    assert.equal(asciiAddress('jürgen@bücher.test'), 'j?rgen@xn--bcher-kva.test');
    assert.equal(asciiAddress('postmaster'), 'postmaster');
    assert.equal(asciiAddress('a@[192.0.2.1]'), 'a@[192.0.2.1]');
    assert.equal(asciiAddress('a@b@exämple.org'), 'a@b@xn--exmple-cua.org');
    assert.equal(asciiText('5.1.1 Upstream refused: <jürgen@bücher.test> 用户'), '5.1.1 Upstream refused: <j?rgen@b?cher.test> ??');
  });

  void it('tells which addresses need SMTPUTF8: a non-ASCII mailbox name, not a non-ASCII domain', () => {
    assert.equal(hasNonAsciiLocalPart('jürgen@example.org'), true);
    assert.equal(hasNonAsciiLocalPart('user@bücher.test'), false);
    assert.equal(hasNonAsciiLocalPart('用户'), true);
  });
});
