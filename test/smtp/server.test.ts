// The SMTP role against real clients: swaks, Python smtplib, curl; PROXY v1/v2 from trusted and
// untrusted peers; a table of attacks; malformed SMTP. Client addresses are 127.0.0.x sources.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { curlSend, dialogue, proxyArgs, smtplibSend, swaks } from './peers.ts';
import { startTestSmtp, type TestSmtp } from './support.ts';

const HOUR = 3_600_000;
const DENIED = /550 5\.7\.1 <x@remote\.test>: Relay access denied/;

let t: TestSmtp;
before(async () => {
  t = await startTestSmtp({ trustedProxies: ['127.0.0.1'], trustedNetworks: ['127.0.0.64/30'], maxMessageSize: 20_000, maxRecipients: 5 });
  const later = Date.now() + HOUR;
  t.grants.grants.push(
    { address: '127.0.0.5', user: 'ideal', expiresAtMs: later },
    { address: '127.0.0.1', user: 'proxy-itself', expiresAtMs: later },
    { address: '202.99.11.120', user: 'ideal', expiresAtMs: later },
    { address: '2001:db8:1:2::/64', user: 'v6', expiresAtMs: later },
    { address: '127.0.0.8', user: 'expired', expiresAtMs: Date.now() - 1000 },
  );
});
after(async () => {
  await t.close();
});

const outboxCount = () => t.messages(t.outbox).length;

void describe('swaks', () => {
  void it('is refused relay without a grant (exit 24)', async () => {
    const r = await swaks({ port: t.port, to: 'x@remote.test', local: '127.0.0.6' });
    assert.equal(r.code, 24, r.stdout);
    assert.match(r.stdout, DENIED);
  });

  void it('relays with a grant, with a Received header naming client, HELO and the grant', async () => {
    const before = outboxCount();
    const r = await swaks({ port: t.port, to: 'x@remote.test', local: '127.0.0.5', extra: ['--helo', 'laptop.client.test'] });
    assert.equal(r.code, 0, r.stdout);
    assert.match(r.stdout, /250 2\.0\.0 Ok: queued as/);
    const msgs = t.messages(t.outbox);
    assert.equal(msgs.length, before + 1);
    const last = msgs.find((m) => m.includes('laptop.client.test')) as string;
    assert.match(last, /Received: from laptop\.client\.test \(\[127\.0\.0\.5\]\)\n\tby mx\.example\.org \(kube-drac\) with ESMTP id \w+\n\t\(authorized: pop-before-smtp grant v4-127\.0\.0\.5\)/);
    assert.match(last, /X-Original-To: <x@remote\.test>/);
    assert.ok(!last.includes('\r\n'), 'stored with LF line ends');
  });

  void it('relays for a trusted network', async () => {
    const r = await swaks({ port: t.port, to: 'x@remote.test', local: '127.0.0.65' });
    assert.equal(r.code, 0, r.stdout);
  });

  void it('refuses an expired grant that is still stored', async () => {
    const r = await swaks({ port: t.port, to: 'x@remote.test', local: '127.0.0.8' });
    assert.equal(r.code, 24, r.stdout);
  });

  void it('delivers to a local user from anyone, and refuses unknown local users with 5.1.1', async () => {
    const r = await swaks({ port: t.port, to: 'bob@example.org', local: '127.0.0.6', extra: ['--body', 'hello bob'] });
    assert.equal(r.code, 0, r.stdout);
    const bob = t.messages(`${t.mailRoot}/bob`);
    assert.equal(bob.length, 1);
    assert.match(bob[0] as string, /^Delivered-To: <bob@example\.org>\nReturn-Path: <sender@client\.test>\nReceived: from .*\n.*\n\t\(authorized: local delivery\)\n\tfor <bob@example\.org>;/);
    assert.match(bob[0] as string, /\n\nhello bob\n/);
    const u = await swaks({ port: t.port, to: 'nobody@example.org', local: '127.0.0.6' });
    assert.equal(u.code, 24);
    assert.match(u.stdout, /550 5\.1\.1 <nobody@example\.org>/);
  });

  for (const version of [1, 2] as const) {
    void it(`PROXY v${version} from the trusted proxy: the named client is judged`, async () => {
      const granted = await swaks({ port: t.port, to: 'x@remote.test', local: '127.0.0.1', extra: proxyArgs(version, '202.99.11.120') });
      assert.equal(granted.code, 0, granted.stdout);
      const stranger = await swaks({ port: t.port, to: 'x@remote.test', local: '127.0.0.1', extra: proxyArgs(version, '203.0.113.9') });
      assert.equal(stranger.code, 24, stranger.stdout);
      const last = t.messages(t.outbox).filter((m) => m.includes('[202.99.11.120]'));
      assert.ok(last.length >= 1);
    });

    void it(`PROXY v${version} from an untrusted peer is not believed`, async () => {
      const before = outboxCount();
      const r = await swaks({ port: t.port, to: 'x@remote.test', local: '127.0.0.6', extra: proxyArgs(version, '202.99.11.120') });
      assert.notEqual(r.code, 0, r.stdout);
      assert.equal(outboxCount(), before);
    });
  }

  void it('PROXY v2 with an IPv6 client: the /64 grant covers it, the next /64 does not', async () => {
    const inside = await swaks({ port: t.port, to: 'x@remote.test', local: '127.0.0.1', extra: proxyArgs(2, '2001:db8:1:2:aaaa::99') });
    assert.equal(inside.code, 0, inside.stdout);
    const outside = await swaks({ port: t.port, to: 'x@remote.test', local: '127.0.0.1', extra: proxyArgs(2, '2001:db8:1:3::99') });
    assert.equal(outside.code, 24, outside.stdout);
    assert.ok(t.messages(t.outbox).some((m) => m.includes('([IPv6:2001:db8:1:2:aaaa::99])')));
  });
});

void describe('other real clients', () => {
  void it('Python smtplib: relayed with a grant, refused without', async () => {
    const ok = await smtplibSend(t.port, 'a@client.test', ['x@remote.test'], 'Subject: py\r\n\r\nfrom python\r\n', '127.0.0.5');
    assert.equal(ok.stdout.trim(), 'OK', ok.stderr);
    const no = await smtplibSend(t.port, 'a@client.test', ['x@remote.test'], 'Subject: py\r\n\r\nfrom python\r\n', '127.0.0.6');
    assert.match(no.stdout, /^SMTPRecipientsRefused .*"x@remote\.test": \[550, "5\.7\.1 <x@remote\.test>: Relay access denied"\]/);
  });

  void it('curl smtp://: relayed with a grant, refused without', async () => {
    const ok = await curlSend(t.port, 'a@client.test', 'x@remote.test', 'Subject: curl\r\n\r\nfrom curl\r\n', '127.0.0.5');
    assert.equal(ok.code, 0, ok.stderr);
    assert.ok(t.messages(t.outbox).some((m) => m.includes('from curl')));
    const no = await curlSend(t.port, 'a@client.test', 'x@remote.test', 'Subject: curl\r\n\r\nfrom curl\r\n', '127.0.0.6');
    assert.notEqual(no.code, 0);
    assert.match(no.stderr, /550/);
  });
});

// Every way we know of to get relay without a grant of one's own. Each must end refused.
const v2Header = (src: number[], cmd = 0x21): Buffer => {
  const sig = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');
  const body = Buffer.from([...src, 192, 0, 2, 25, 0x9c, 0x40, 0, 25]);
  return Buffer.concat([sig, Buffer.from([cmd, 0x11, 0, body.length]), body]);
};
const attacks: { name: string; local: string; preface?: Buffer; steps: string[] }[] = [
  { name: 'stranger, plain', local: '127.0.0.6', steps: ['EHLO a', 'MAIL FROM:<a@b.test>', 'RCPT TO:<x@remote.test>'] },
  { name: 'grant exists for another address', local: '127.0.0.9', steps: ['EHLO 127.0.0.5', 'MAIL FROM:<a@b.test>', 'RCPT TO:<x@remote.test>'] },
  { name: 'spoofed PROXY v1 from an untrusted peer', local: '127.0.0.6', preface: Buffer.from('PROXY TCP4 202.99.11.120 192.0.2.25 40000 25\r\n'), steps: ['EHLO a', 'MAIL FROM:<a@b.test>', 'RCPT TO:<x@remote.test>'] },
  { name: 'spoofed PROXY v2 from an untrusted peer', local: '127.0.0.6', preface: v2Header([202, 99, 11, 120]), steps: ['EHLO a', 'MAIL FROM:<a@b.test>', 'RCPT TO:<x@remote.test>'] },
  { name: 'PROXY UNKNOWN from the trusted (and granted) proxy', local: '127.0.0.1', preface: Buffer.from('PROXY UNKNOWN\r\n'), steps: ['EHLO a', 'MAIL FROM:<a@b.test>', 'RCPT TO:<x@remote.test>'] },
  { name: 'PROXY v2 LOCAL from the trusted (and granted) proxy', local: '127.0.0.1', preface: v2Header([0, 0, 0, 0], 0x20), steps: ['EHLO a', 'MAIL FROM:<a@b.test>', 'RCPT TO:<x@remote.test>'] },
  { name: 'XCLIENT ADDR of a granted address', local: '127.0.0.6', steps: ['EHLO a', 'XCLIENT ADDR=202.99.11.120', 'MAIL FROM:<a@b.test>', 'RCPT TO:<x@remote.test>'] },
  { name: 'XFORWARD ADDR of a granted address', local: '127.0.0.6', steps: ['EHLO a', 'XFORWARD ADDR=202.99.11.120', 'MAIL FROM:<a@b.test>', 'RCPT TO:<x@remote.test>'] },
  { name: 'expired grant', local: '127.0.0.8', steps: ['EHLO a', 'MAIL FROM:<a@b.test>', 'RCPT TO:<x@remote.test>'] },
  { name: 'source route through a local domain', local: '127.0.0.6', steps: ['EHLO a', 'MAIL FROM:<a@b.test>', 'RCPT TO:<@example.org:x@remote.test>'] },
  { name: 'percent hack', local: '127.0.0.6', steps: ['EHLO a', 'MAIL FROM:<a@b.test>', 'RCPT TO:<x%remote.test@example.org>'] },
  { name: 'bang path', local: '127.0.0.6', steps: ['EHLO a', 'MAIL FROM:<a@b.test>', 'RCPT TO:<remote.test!x@example.org>'] },
  { name: 'quoted local part with @', local: '127.0.0.6', steps: ['EHLO a', 'MAIL FROM:<a@b.test>', 'RCPT TO:<"x@remote.test"@example.org>'] },
  { name: 'local domain with a trailing dot trick', local: '127.0.0.6', steps: ['EHLO a', 'MAIL FROM:<a@b.test>', 'RCPT TO:<x@remote.test.>'] },
  { name: 'AUTH when it is off', local: '127.0.0.6', steps: ['EHLO a', 'AUTH PLAIN AGlkZWFsAHNlY3JldA==', 'MAIL FROM:<a@b.test>', 'RCPT TO:<x@remote.test>'] },
  { name: 'HELO naming the trusted network', local: '127.0.0.6', steps: ['HELO [127.0.0.65]', 'MAIL FROM:<a@b.test>', 'RCPT TO:<x@remote.test>'] },
];

void describe('relay attacks (all refused)', () => {
  for (const a of attacks) {
    void it(a.name, async () => {
      const before = outboxCount();
      const { replies } = await dialogue(t.port, [...a.steps, 'DATA', 'Subject: attack', '.', 'QUIT'], { local: a.local, preface: a.preface });
      const accepted = replies.some((r) => /^250 2\.0\.0 Ok: queued/.test(r));
      assert.ok(!accepted, `relayed! ${replies.join(' | ')}`);
      assert.equal(outboxCount(), before);
      // Every RCPT to a remote address got a refusal (or the session never got that far).
      const rcptReplies = replies.filter((r) => /Relay access denied|5\.1\.1|^5\d\d /.test(r));
      assert.ok(rcptReplies.length > 0 || replies.length <= 1, replies.join(' | '));
    });
  }
});

void describe('malformed SMTP', () => {
  const healthy = async () => {
    const r = await swaks({ port: t.port, to: 'bob@example.org', local: '127.0.0.6', extra: ['--quit-after', 'RCPT'] });
    assert.equal(r.code, 0, `server not healthy after abuse: ${r.stdout}`);
  };

  void it('binary garbage gets 500s and then a 421', async () => {
    const garbage = Buffer.from(Array.from({ length: 200 }, (_, i) => (i * 37) % 256));
    const { replies } = await dialogue(t.port, Array.from({ length: 12 }, () => Buffer.concat([garbage, Buffer.from('\r\n')])), { local: '127.0.0.10' });
    assert.ok(replies.slice(1).every((r) => /^(500|421) /.test(r)), replies.join(' | '));
    assert.ok(replies.some((r) => r.startsWith('421 ')));
    await healthy();
  });

  void it('an over-long command line is refused and the session closed', async () => {
    const { replies, closed } = await dialogue(t.port, [`EHLO ${'a'.repeat(100_000)}`], { local: '127.0.0.10' });
    assert.match(replies[1] ?? '', /^421 /);
    assert.ok(closed || replies.length === 2);
    await healthy();
  });

  void it('DATA without RCPT and RCPT without MAIL are sequence errors', async () => {
    const { replies } = await dialogue(t.port, ['EHLO a', 'DATA', 'RCPT TO:<bob@example.org>', 'MAIL FROM:<a@b.test>', 'DATA', 'QUIT'], { local: '127.0.0.10' });
    assert.deepEqual(replies.slice(2).map((r) => r.slice(0, 3)), ['503', '503', '250', '503', '221']);
  });

  void it('pipelined abuse: many commands in one write get one reply each, in order', async () => {
    const batch = ['EHLO a', 'MAIL FROM:<a@b.test>', ...Array.from({ length: 8 }, (_, i) => `RCPT TO:<u${i}@remote.test>`), 'RSET', 'NOOP', 'QUIT'];
    // All in one write, from a granted client: the recipient limit (5) answers 452 past the fifth.
    const raw = Buffer.from(batch.map((c) => `${c}\r\n`).join(''));
    const { replies } = await dialogue(t.port, [{ raw, replies: batch.length }], { local: '127.0.0.5' });
    const codes = replies.slice(1).map((r) => r.slice(0, 3));
    assert.deepEqual(codes, ['250', '250', '250', '250', '250', '250', '250', '452', '452', '452', '250', '250', '221']);
    await healthy();
  });

  void it('a message over the size limit gets 552 5.3.4 and the session goes on', async () => {
    const big = `Subject: big\r\n\r\n${'x'.repeat(998)}\r\n`.repeat(30);
    const { replies } = await dialogue(t.port, ['EHLO a', 'MAIL FROM:<a@b.test>', 'RCPT TO:<bob@example.org>', 'DATA', `${big}.`, 'MAIL FROM:<a@b.test>', 'QUIT'], { local: '127.0.0.10' });
    assert.match(replies[5] ?? '', /^552 5\.3\.4 /);
    assert.match(replies[6] ?? '', /^250 /);
  });

  void it('MAIL FROM with a SIZE above the limit is refused up front', async () => {
    const { replies } = await dialogue(t.port, ['EHLO a', 'MAIL FROM:<a@b.test> SIZE=999999999', 'QUIT'], { local: '127.0.0.10' });
    assert.match(replies[2] ?? '', /^552 /);
  });

  void it('a client that talks before the greeting is still answered in order', async () => {
    const { replies } = await dialogue(t.port, ['NOOP'], { local: '127.0.0.10', preface: Buffer.from('EHLO early\r\n') });
    assert.match(replies[0] ?? '', /^220 mx\.example\.org ESMTP/);
  });

  void it('HTTP requests are refused', async () => {
    const { replies } = await dialogue(t.port, ['GET / HTTP/1.1'], { local: '127.0.0.10' });
    assert.match(replies[1] ?? '', /^421 /);
    await healthy();
  });
});

void describe('connection limits', () => {
  let l: TestSmtp | undefined;
  after(async () => {
    await l?.close();
  });

  void it('answers 421 past the per-address limit and takes the slot back on close', async () => {
    l = await startTestSmtp({ maxClients: 3, maxClientsPerAddress: 1 });
    const net = await import('node:net');
    const hold = net.connect({ host: '127.0.0.1', port: l.port, localAddress: '127.0.0.30' });
    await new Promise<void>((resolve) => hold.once('data', () => resolve()));
    const second = await dialogue(l.port, ['QUIT'], { local: '127.0.0.30' });
    assert.match(second.replies[0] ?? '', /^421 4\.7\.0 .*Too many connections from your address/);
    const other = await dialogue(l.port, ['QUIT'], { local: '127.0.0.31' });
    assert.match(other.replies[0] ?? '', /^220 /);
    hold.destroy();
    // The held slot is given back once the server sees the close.
    let again = await dialogue(l.port, ['QUIT'], { local: '127.0.0.30' });
    for (let i = 0; i < 50 && !/^220 /.test(again.replies[0] ?? ''); i++) {
      await new Promise((r) => setTimeout(r, 20));
      again = await dialogue(l.port, ['QUIT'], { local: '127.0.0.30' });
    }
    assert.match(again.replies[0] ?? '', /^220 /);
  });
});

void describe('memory budget for message data', () => {
  let m: TestSmtp | undefined;
  after(async () => {
    await m?.close();
  });

  void it('answers 452 4.3.1 when all sessions together would hold too much, and recovers', async () => {
    m = await startTestSmtp({ maxMessageSize: 1_048_576, maxBufferedBytes: 1_048_576 });
    const net = await import('node:net');
    const chunk = `Subject: held\r\n\r\n${`${'y'.repeat(998)}\r\n`.repeat(600)}`;
    // Session A: a 600 KB message whose end has not been sent yet.
    const a = net.connect({ host: '127.0.0.1', port: m.port, localAddress: '127.0.0.40' });
    let aText = '';
    a.on('data', (d: Buffer) => (aText += d.toString()));
    const waitFor = async (re: RegExp) => {
      for (let i = 0; i < 200 && !re.test(aText); i++) await new Promise((r) => setTimeout(r, 10));
    };
    await waitFor(/^220 /m);
    a.write('EHLO a\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n');
    await waitFor(/^354 /m);
    a.write(chunk);
    // Session B: another 600 KB does not fit next to A's (once the server has read A's data; a
    // B that got in before that was simply delivered, so try again).
    let b = '';
    for (let i = 0; i < 30 && !b.startsWith('452'); i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, 100));
      const r = await dialogue(m.port, ['EHLO b', 'MAIL FROM:<a@b.test>', 'RCPT TO:<bob@example.org>', 'DATA', `${chunk}.`], { local: '127.0.0.41' });
      b = r.replies[5] ?? '';
    }
    assert.match(b, /^452 4\.3\.1 /);
    a.write('.\r\nQUIT\r\n');
    await waitFor(/^221 /m);
    a.destroy();
    assert.match(aText, /^250 2\.0\.0 Ok: queued/m);
    const c = await dialogue(m.port, ['EHLO c', 'MAIL FROM:<a@b.test>', 'RCPT TO:<bob@example.org>', 'DATA', `${chunk}.`], { local: '127.0.0.42' });
    assert.match(c.replies[5] ?? '', /^250 /);
  });
});
