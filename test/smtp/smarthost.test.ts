// Onward relay through a real Postfix on loopback: intact delivery, permanent refusals passed on,
// and 451 while Postfix is down with the retried message arriving exactly once.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { swaks } from './peers.ts';
import { startPostfix, type PostfixInstance } from '../../harness/postfix.ts';
import { startTestSmtp, type TestSmtp } from './support.ts';

let postfix: PostfixInstance;
let t: TestSmtp;

before(async () => {
  postfix = await startPostfix({
    domains: ['remote.test'],
    mainCf: [
      'smtpd_relay_restrictions = check_recipient_access inline:{ { refused@remote.test = 550 5.1.1 Mailbox unknown here } }, permit_mynetworks, reject_unauth_destination',
    ],
  });
  t = await startTestSmtp({ smarthost: { host: '127.0.0.1', port: postfix.port, connectionTimeout: '2s' } });
  t.grants.grants.push({ address: '127.0.0.5', user: 'ideal', expiresAtMs: Date.now() + 3_600_000 });
});
after(async () => {
  await t?.close();
  postfix?.cleanup();
});

const withMarker = (msgs: string[], marker: string) => msgs.filter((m) => m.includes(marker));

void describe('relay through Postfix', () => {
  void it('delivers the message intact, with our Received header', async () => {
    const marker = `intact-${Date.now()}`;
    const body = [
      `Subject: ${marker}`,
      'Content-Type: text/plain; charset=utf-8',
      '',
      '.a line that starts with a dot',
      '..two dots',
      'trailing spaces   ',
      'tab\there',
      '',
      'end',
    ].join('\r\n');
    const r = await swaks({ port: t.port, to: 'x@remote.test', local: '127.0.0.5', extra: ['--data', body] });
    assert.equal(r.code, 0, r.stdout);
    const got = withMarker(await postfix.waitForDelivered(1), marker);
    assert.equal(got.length, 1);
    const m = got[0] as string;
    assert.match(m, /\(authorized: pop-before-smtp grant v4-127\.0\.0\.5\)/);
    assert.match(m, /Received: from \S+ \(\[127\.0\.0\.5\]\)\n\tby mx\.example\.org \(kube-drac\)/);
    assert.ok(m.includes('\n\n.a line that starts with a dot\n..two dots\ntrailing spaces   \ntab\there\n\nend\n'), m);
  });

  void it("passes a smarthost's permanent refusal on as 5xx", async () => {
    const r = await swaks({ port: t.port, to: 'refused@remote.test', local: '127.0.0.5' });
    assert.equal(r.code, 26, r.stdout);
    assert.match(r.stdout, /<\*\* 550 5\.1\.1 Upstream refused: .*Mailbox unknown here/);
  });

  void it('bounces to the sender when the smarthost refuses some recipients after accepting others', async () => {
    const marker = `partial-${Date.now()}`;
    const r = await swaks({ port: t.port, from: 'sender@remote.test', to: 'x@remote.test,refused@remote.test', local: '127.0.0.5', extra: ['--header', `Subject: ${marker}`] });
    assert.equal(r.code, 0, r.stdout);
    const deadline = Date.now() + 10_000;
    let got: string[] = [];
    while (Date.now() < deadline) {
      got = withMarker(postfix.delivered(), marker);
      if (got.length >= 2) break;
      await new Promise((res) => setTimeout(res, 50));
    }
    const bounce = got.find((m) => m.includes('Undelivered Mail Returned to Sender'));
    assert.ok(bounce, `no bounce among ${got.length} messages`);
    assert.match(bounce, /Final-Recipient: rfc822; refused@remote\.test\nAction: failed\nStatus: 5\.1\.1\n/);
    assert.match(bounce, /Mailbox unknown here/);
    assert.match(bounce, /Return-Path: <>/);
    assert.equal(got.filter((m) => !m.includes('Undelivered Mail')).length, 1, 'the message itself arrived once');
  });

  void it('answers 451 while Postfix is down, local copies included; the retry arrives once', async () => {
    const marker = `retry-${Date.now()}`;
    const bobBefore = t.messages(`${t.mailRoot}/bob`).length;
    postfix.stop();
    const down = await swaks({ port: t.port, to: 'x@remote.test,bob@example.org', local: '127.0.0.5', extra: ['--header', `Subject: ${marker}`] });
    assert.equal(down.code, 26, down.stdout);
    assert.match(down.stdout, /<\*\* 451 4\.4\.1 Upstream relay unavailable/);
    assert.equal(t.messages(`${t.mailRoot}/bob`).length, bobBefore, 'no local copy of a deferred message');
    postfix.start();
    const up = await swaks({ port: t.port, to: 'x@remote.test,bob@example.org', local: '127.0.0.5', extra: ['--header', `Subject: ${marker}`] });
    assert.equal(up.code, 0, up.stdout);
    const all = await postfix.waitForDelivered(1);
    const deadline = Date.now() + 3000;
    while (withMarker(postfix.delivered(), marker).length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.ok(all.length > 0);
    assert.equal(withMarker(postfix.delivered(), marker).length, 1);
    assert.equal(withMarker(t.messages(`${t.mailRoot}/bob`), marker).length, 1);
  });
});
