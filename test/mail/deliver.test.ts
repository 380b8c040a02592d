// Maildir delivery: content, line ends, names, atomicity on failure.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { crlfToLf, deliverToMaildir, maildirName, stageMaildirDelivery } from '../../src/mail/deliver.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'deliver-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));

void describe('deliverToMaildir', () => {
  void it('creates the Maildir and stores the message in new/ with LF line ends', async () => {
    const md = path.join(root, 'alice');
    const msg = Buffer.from('Subject: hi\r\n\r\nline one\r\n.dot stays\r\nbare\nlf\r\n');
    const p = await deliverToMaildir(md, msg, { hostname: 'mx.example' });
    assert.equal(path.dirname(p), path.join(md, 'new'));
    assert.equal(fs.readFileSync(p, 'utf8'), 'Subject: hi\n\nline one\n.dot stays\nbare\nlf\n');
    for (const sub of ['tmp', 'new', 'cur']) assert.ok(fs.statSync(path.join(md, sub)).isDirectory());
    assert.deepEqual(fs.readdirSync(path.join(md, 'tmp')), []);
    assert.equal(fs.statSync(p).mode & 0o777, 0o600);
    const size = fs.statSync(p).size;
    assert.match(path.basename(p), new RegExp(`\\.mx\\.example,S=${size},W=${size + 6}$`));
  });

  void it('gives every delivery its own name', async () => {
    const md = path.join(root, 'bob');
    const names = await Promise.all(Array.from({ length: 50 }, () => deliverToMaildir(md, Buffer.from('x\r\n'))));
    assert.equal(new Set(names).size, 50);
    assert.equal(fs.readdirSync(path.join(md, 'new')).length, 50);
  });

  void it('leaves nothing behind when the write fails', async () => {
    const md = path.join(root, 'carol');
    fs.mkdirSync(path.join(md, 'tmp'), { recursive: true });
    fs.mkdirSync(path.join(md, 'cur'));
    fs.writeFileSync(path.join(md, 'new'), 'not a directory');
    await assert.rejects(deliverToMaildir(md, Buffer.from('x\r\n'), { create: false }));
    assert.deepEqual(fs.readdirSync(path.join(md, 'tmp')), []);
  });

  void it('escapes / and : in the host part of the name', () => {
    const n = maildirName(1, 2, 'a/b:c', 1_700_000_000_123);
    assert.match(n, /^1700000000\.M123\d{3}P\d+Q\d+R[0-9a-f]{8}\.a\\057b\\072c,S=1,W=2$/);
    assert.ok(!n.includes('/'));
  });

  void it('converts only CRLF pairs', () => {
    assert.equal(crlfToLf(Buffer.from('a\r\nb\rc\n\r\n')).toString(), 'a\nb\rc\n\n');
    const lf = Buffer.from('plain\n');
    assert.equal(crlfToLf(lf), lf);
  });
});

void describe('stageMaildirDelivery', () => {
  void it('keeps the message in tmp/ until commit', async () => {
    const md = path.join(root, 'dave');
    const staged = await stageMaildirDelivery(md, Buffer.from('staged\r\n'));
    assert.equal(fs.readdirSync(path.join(md, 'tmp')).length, 1);
    assert.deepEqual(fs.readdirSync(path.join(md, 'new')), []);
    const p = await staged.commit();
    assert.equal(fs.readFileSync(p, 'utf8'), 'staged\n');
    assert.deepEqual(fs.readdirSync(path.join(md, 'tmp')), []);
    await assert.rejects(staged.commit(), /already committed/);
  });

  void it('abort removes the staged file and never shows it', async () => {
    const md = path.join(root, 'erin');
    const staged = await stageMaildirDelivery(md, Buffer.from('dropped\r\n'));
    await staged.abort();
    await staged.abort();
    assert.deepEqual(fs.readdirSync(path.join(md, 'tmp')), []);
    assert.deepEqual(fs.readdirSync(path.join(md, 'new')), []);
  });
});
