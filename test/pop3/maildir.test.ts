import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { crlfSizeOf, maildirBaseName, snapshotMaildir, uidFor } from '../../src/mail/maildir.ts';
import { DotStuffer } from '../../src/pop3/multiline.ts';
import { inlineIo, pooledIo } from '../../src/mail/io.ts';
import { LOCK_FILE, MaildropInUseError, lockMaildrop } from '../../src/pop3/lock.ts';
import { tempDir } from '../net/certs.ts';
import { deliverWithLda, makeWorld, maildirOf, testMessage } from './support.ts';

/** Encode `text` split into chunks at every position in `cuts`, as a stream would deliver it. */
function stuff(text: string, cuts: number[] = [], bodyLines?: number): string {
  const buf = Buffer.from(text, 'latin1');
  const st = new DotStuffer(bodyLines);
  const out: Buffer[] = [];
  let at = 0;
  for (const cut of [...cuts, buf.length]) {
    out.push(st.push(buf.subarray(at, cut)));
    at = cut;
    if (st.done) break;
  }
  out.push(st.end());
  return Buffer.concat(out).toString('latin1');
}

describe('DotStuffer', () => {
  it('turns LF into CRLF, stuffs leading dots, and terminates', () => {
    assert.equal(stuff('a\n.b\n..c\nd.\n'), 'a\r\n..b\r\n...c\r\nd.\r\n.\r\n');
    assert.equal(stuff('.\n'), '..\r\n.\r\n');
    assert.equal(stuff('a\r\nb\r\n'), 'a\r\nb\r\n.\r\n', 'CRLF input is sent as it is');
    assert.equal(stuff(''), '.\r\n');
    assert.equal(stuff('no newline at end'), 'no newline at end\r\n.\r\n');
    assert.equal(stuff('ends in CR\r'), 'ends in CR\r\n.\r\n');
  });

  it('gives the same bytes however the input is chunked', () => {
    const text = 'H: v\r\n.x\n\n.\r\n..y\nz\r\n\r\n.end';
    const whole = stuff(text);
    for (let i = 0; i <= text.length; i++) {
      for (let j = i; j <= text.length; j += 3) assert.equal(stuff(text, [i, j]), whole, `cuts ${i},${j}`);
    }
    for (let i = 0; i <= text.length; i++) assert.equal(stuff(text, [i], 1), stuff(text, [], 1), `TOP cut ${i}`);
  });

  it('RETR encoding matches a byte-by-byte reference on random data, large and small', () => {
    // The reference: what RFC 1939 asks, one byte at a time.
    const reference = (bytes: Buffer): Buffer => {
      const out: number[] = [];
      let prev = 0x0a;
      for (const c of bytes) {
        if (c === 0x0a && prev !== 0x0d) out.push(0x0d);
        if (c === 0x2e && prev === 0x0a) out.push(0x2e);
        out.push(c);
        prev = c;
      }
      return Buffer.from(out);
    };
    const alphabet = [0x0a, 0x0d, 0x2e, 0x61, 0x00, 0xff];
    let seed = 7;
    const random = (n: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    for (const size of [0, 1, 15, 16, 17, 31, 33, 100, 1000, 70_000, 200_000]) {
      for (let round = 0; round < (size > 10_000 ? 3 : 200); round++) {
        // Sparse line ends in long inputs (like mail), dense ones in short inputs.
        const density = size > 10_000 ? 40 : 3;
        const bytes = Buffer.alloc(size, 0x61);
        for (let i = 0; i < size; i++) if (random(density) === 0) bytes[i] = alphabet[random(alphabet.length)] as number;
        const st = new DotStuffer();
        const got = Buffer.concat([st.push(bytes.subarray(0, size >> 1)), st.push(bytes.subarray(size >> 1))]);
        assert.ok(got.equals(reference(bytes)), `size ${size} round ${round}`);
      }
    }
  });

  it('TOP sends the header, the blank line and n body lines', () => {
    const msg = 'A: 1\nB: 2\n\nl1\n.l2\nl3\n';
    assert.equal(stuff(msg, [], 0), 'A: 1\r\nB: 2\r\n\r\n.\r\n');
    assert.equal(stuff(msg, [], 2), 'A: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\n.\r\n');
    assert.equal(stuff(msg, [], 99), stuff(msg));
    assert.equal(stuff('A: 1\r\n\r\nbody\r\n', [], 0), 'A: 1\r\n\r\n.\r\n');
    assert.equal(stuff('only headers\n', [], 5), 'only headers\r\n.\r\n');
  });

  it('sizes count bare LF as two octets, across chunk edges', () => {
    assert.equal(crlfSizeOf(Buffer.from('a\nb\r\nc')).size, 7);
    const first = crlfSizeOf(Buffer.from('a\r'));
    assert.equal(first.size + crlfSizeOf(Buffer.from('\nb'), first.lastWasCr).size, 4);
  });
});

describe('Maildir reading', () => {
  const world = makeWorld('maildir');
  after(() => world.cleanup());

  it('lists what dovecot-lda delivered, oldest first, with CRLF sizes and UIDL from the base name', async () => {
    deliverWithLda(world, 'alice', testMessage('first', ['one', '.two']));
    deliverWithLda(world, 'alice', testMessage('second', ['three']));
    const dir = maildirOf(world, 'alice');
    const list = await snapshotMaildir(dir);
    assert.equal(list.length, 2);
    for (const m of list) {
      const raw = fs.readFileSync(m.path);
      assert.equal(m.size, crlfSizeOf(raw).size);
      assert.equal(m.uid, maildirBaseName(path.basename(m.path)));
      assert.match(m.uid, /^[\x21-\x7e]{1,70}$/);
    }
    assert.match(fs.readFileSync(list[0]!.path, 'utf8'), /Subject: first/);
    // A message moved to cur/ with flags keeps its UIDL.
    const moved = path.join(dir, 'cur', `${list[0]!.baseName}:2,S`);
    fs.renameSync(list[0]!.path, moved);
    const again = await snapshotMaildir(dir);
    assert.deepEqual(again.map((m) => m.uid), list.map((m) => m.uid));
  });

  it('lists and moves new/ to cur/ the same on the calling thread as through the thread pool', async () => {
    deliverWithLda(world, 'bob', testMessage('one', ['a']));
    deliverWithLda(world, 'bob', testMessage('two', ['b']));
    const dir = maildirOf(world, 'bob');
    const inline = await snapshotMaildir(dir, { moveNewToCur: true, io: inlineIo });
    assert.equal(inline.length, 2);
    assert.ok(inline.every((m) => m.path.includes(`${path.sep}cur${path.sep}`)));
    assert.deepEqual(await snapshotMaildir(dir, { io: pooledIo }), inline);
    assert.deepEqual(await snapshotMaildir(path.join(world.dir, 'no-such-maildir'), { io: inlineIo }), []);
  });

  it('orders by delivery time, microseconds compared as numbers', async () => {
    const dir = path.join(world.dir, 'order-maildir');
    for (const sub of ['new', 'cur', 'tmp']) fs.mkdirSync(path.join(dir, sub), { recursive: true });
    for (const name of ['1700000001.M5P1.h', '1700000000.M100000P1.h', '1700000000.M99999P2.h:2,S', '1700000000.M7P3.h', 'odd-name']) {
      fs.writeFileSync(path.join(dir, name.includes(':') ? 'cur' : 'new', name), 'x\n');
    }
    assert.deepEqual(
      (await snapshotMaildir(dir)).map((m) => m.uid),
      ['1700000000.M7P3.h', '1700000000.M99999P2.h', '1700000000.M100000P1.h', '1700000001.M5P1.h', 'odd-name'],
    );
  });

  it('computes sizes itself when the name has no W=, and hashes over-long names', async () => {
    const dir = path.join(world.dir, 'plain-maildir');
    for (const sub of ['new', 'cur', 'tmp']) fs.mkdirSync(path.join(dir, sub), { recursive: true });
    const long = `1700000000.${'x'.repeat(80)}.host`;
    fs.writeFileSync(path.join(dir, 'new', long), 'A: b\n\nbody\n');
    fs.writeFileSync(path.join(dir, 'new', '1600000000.M1P1.host,S=999,W=5'), 'x\n'); // lying name
    const list = await snapshotMaildir(dir);
    assert.equal(list.length, 2);
    assert.equal(list[0]!.size, 3, 'a W= that disagrees with the file is ignored');
    assert.equal(list[1]!.size, 14);
    assert.equal(list[1]!.uid, uidFor(long));
    assert.match(list[1]!.uid, /^[\x21-\x7e]{1,70}$/);
  });
});

// The same lock whether its files are reached through the thread pool or on the calling thread
// (a process with one session: src/mail/io.ts).
for (const [name, io] of [['thread pool', pooledIo], ['calling thread', inlineIo]] as const) {
  describe(`maildrop lock (${name})`, () => {
    const dir = tempDir(`lock-${name.replace(/ /g, '-')}`);
    after(() => fs.rmSync(dir, { recursive: true, force: true }));
    const opts = { heartbeatMs: 1000, staleMs: 60_000, io: () => io };

    it('is exclusive until released', async () => {
      const held = await lockMaildrop(dir, opts);
      await assert.rejects(lockMaildrop(dir, opts), MaildropInUseError);
      await assert.rejects(lockMaildrop(dir, { ...opts, hostname: 'other-replica' }), MaildropInUseError);
      await held.release();
      const again = await lockMaildrop(dir, opts);
      await again.release();
      assert.ok(!fs.existsSync(path.join(dir, LOCK_FILE)));
    });

    it('breaks a lock whose process on this host is gone', async () => {
      const host = 'this-host';
      fs.writeFileSync(path.join(dir, LOCK_FILE), JSON.stringify({ host, pid: 2 ** 22 + 12345, token: 't', since: '' }));
      const held = await lockMaildrop(dir, { ...opts, hostname: host });
      await held.release();
    });

    it('breaks a lock from another host only once it is stale', async () => {
      const file = path.join(dir, LOCK_FILE);
      fs.writeFileSync(file, JSON.stringify({ host: 'gone-replica', pid: 1, token: 't', since: '' }));
      await assert.rejects(lockMaildrop(dir, opts), MaildropInUseError);
      const old = new Date(Date.now() - 120_000);
      fs.utimesSync(file, old, old);
      const held = await lockMaildrop(dir, opts);
      // Releasing removes only our own lock file.
      await held.release();
      assert.ok(!fs.existsSync(file));
    });

    it('does not remove a lock that another session took after ours was broken', async () => {
      const held = await lockMaildrop(dir, opts);
      const file = path.join(dir, LOCK_FILE);
      // What a session that judged ours stale does: move it aside, remove it, create its own.
      fs.renameSync(file, `${file}.stale.x`);
      fs.rmSync(`${file}.stale.x`);
      fs.writeFileSync(file, JSON.stringify({ host: 'other', pid: 1, token: 'theirs', since: '' }), { flag: 'wx' });
      await held.release();
      assert.equal((JSON.parse(fs.readFileSync(file, 'utf8')) as { token: string }).token, 'theirs');
      fs.rmSync(file);
    });

    it('a lock file overwritten in place with another token is not removed either', async () => {
      const held = await lockMaildrop(dir, opts);
      const file = path.join(dir, LOCK_FILE);
      await new Promise((r) => setTimeout(r, 50)); // our own content has landed
      fs.writeFileSync(file, JSON.stringify({ host: 'other', pid: 1, token: 'theirs', since: '' }));
      await held.release();
      assert.ok(fs.existsSync(file));
      fs.rmSync(file);
    });
  });
}
