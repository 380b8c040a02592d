// Maildir tmp/ cleaning: deliveries that never reached new/ (a crash between the write and the
// rename) are removed once 36 hours old, by the POP3 role at start and then periodically; anything
// younger, read or written lately, or not a plain file stays.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { stageMaildirDelivery } from '../../src/mail/deliver.ts';
import { MaildirTmpCleaner, TMP_MAX_AGE_MS, cleanMaildirTmp, maildirsUnder } from '../../src/mail/tmp-cleaner.ts';
import type { Logger } from '../../src/observability/log.ts';
import { runPop3 } from '../../src/pop3/main.ts';
import { RecordingRenewer, makeWorld, maildirOf, pop3Document } from '../pop3/support.ts';
import { eventually } from '../support/eventually.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tmp-cleaner-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));

const HOUR = 3600_000;
const quiet: Logger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined, child: () => quiet };

/** A delivery staged in tmp/ and never committed (what a crash leaves), last touched `ageMs` ago. */
async function leftover(maildir: string, ageMs: number): Promise<string> {
  const tmp = path.join(maildir, 'tmp');
  const before = new Set(fs.existsSync(tmp) ? fs.readdirSync(tmp) : []);
  await stageMaildirDelivery(maildir, Buffer.from('Subject: lost\r\n\r\nnever delivered\r\n'));
  const file = path.join(tmp, fs.readdirSync(tmp).find((n) => !before.has(n)) as string);
  const when = new Date(Date.now() - ageMs);
  fs.utimesSync(file, when, when);
  return file;
}

describe('Maildir tmp/ cleaning', () => {
  it('removes files in tmp/ untouched for 36 hours, and nothing else', async () => {
    const md = path.join(root, 'alice');
    const old = await leftover(md, 37 * HOUR);
    const young = await leftover(md, 35 * HOUR);
    const fresh = await leftover(md, 0);
    // Written long ago but read a moment ago (a slow reader of some other kind): kept.
    const read = await leftover(md, 40 * HOUR);
    fs.utimesSync(read, new Date(), new Date(Date.now() - 40 * HOUR));
    const folder = path.join(md, 'tmp', 'a-folder');
    fs.mkdirSync(folder);
    fs.utimesSync(folder, new Date(Date.now() - 40 * HOUR), new Date(Date.now() - 40 * HOUR));
    fs.writeFileSync(path.join(md, 'new', 'kept-in-new'), 'x');
    fs.utimesSync(path.join(md, 'new', 'kept-in-new'), new Date(0), new Date(0));

    assert.equal(await cleanMaildirTmp(md), 1);
    assert.ok(!fs.existsSync(old));
    for (const f of [young, fresh, read, folder, path.join(md, 'new', 'kept-in-new')]) assert.ok(fs.existsSync(f), f);
    assert.equal(await cleanMaildirTmp(md, Date.now() + 2 * HOUR), 1, 'two hours on, the 35-hour-old one is due');
    assert.ok(!fs.existsSync(young));
    assert.equal(await cleanMaildirTmp(path.join(root, 'nobody')), 0, 'no Maildir, nothing to do');
    assert.equal(TMP_MAX_AGE_MS, 36 * HOUR);
  });

  it('finds every Maildir a location template names', async () => {
    const base = path.join(root, 'templates');
    for (const p of ['example.org/ann/Maildir', 'example.org/bob/Maildir', 'other.test/cy/Maildir', 'example.org/.hidden/Maildir', 'example.org/dee/not-a-maildir']) {
      fs.mkdirSync(path.join(base, p, 'tmp'), { recursive: true });
    }
    const found: string[] = [];
    for await (const md of maildirsUnder(base, '%d/%n/Maildir')) found.push(path.relative(base, md));
    assert.deepEqual(found.filter((f) => fs.existsSync(path.join(base, f))).sort(), ['example.org/ann/Maildir', 'example.org/bob/Maildir', 'other.test/cy/Maildir']);
    const flat: string[] = [];
    for await (const md of maildirsUnder(base, '%u')) flat.push(path.relative(base, md));
    assert.deepEqual(flat.sort(), ['example.org', 'other.test']);
  });

  it('sweeps at start and then periodically', async () => {
    const mailRoot = path.join(root, 'sweep');
    const first = await leftover(path.join(mailRoot, 'ann'), 48 * HOUR);
    const cleaner = new MaildirTmpCleaner({ mailRoot, mailLocation: '%u', log: quiet, intervalMs: 200 });
    cleaner.start();
    try {
      await eventually('the sweep at start', () => !fs.existsSync(first));
      const later = await leftover(path.join(mailRoot, 'bob'), 48 * HOUR);
      await eventually('a periodic sweep', () => !fs.existsSync(later));
    } finally {
      await cleaner.close();
    }
  });

  it('the POP3 role cleans its Maildirs at start, with several workers too', async () => {
    for (const workers of [1, 2]) {
      const world = makeWorld(`tmp-clean-${workers}`);
      try {
        const old = await leftover(maildirOf(world, 'carol'), 37 * HOUR);
        const fresh = await leftover(maildirOf(world, 'carol'), HOUR);
        const role = await runPop3(pop3Document(world, { workers }), quiet, { renewer: new RecordingRenewer() });
        try {
          await eventually(`the old tmp/ file removed (workers: ${workers})`, () => !fs.existsSync(old));
          assert.ok(fs.existsSync(fresh));
        } finally {
          await role.close();
        }
      } finally {
        world.cleanup();
      }
    }
  });
});
