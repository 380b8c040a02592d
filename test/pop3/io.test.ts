import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { pooledIo, responsiveIo } from '../../src/mail/io.ts';
import { tempDir } from '../net/certs.ts';

// The lock and the Maildir listing go through responsiveIo: on the calling thread while the volume
// is fast, through the thread pool for a while once it is slow (src/mail/io.ts).
describe('responsiveIo', () => {
  const dir = tempDir('responsive-io');
  after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'f');
  fs.writeFileSync(file, 'x');
  /** A clock that moves on by `callMs` at every reading: each timed call then takes `callMs`. */
  const clock = () => {
    const c = { t: 1000, callMs: 0.01 };
    return Object.assign(c, { now: () => (c.t += c.callMs) });
  };
  const opts = { slowCallMs: 1, slowCalls: 8, poolForMs: 10_000 };

  it('stays on the calling thread while calls are fast, and calls held up by the scheduler now and then do not change that', async () => {
    const c = clock();
    const choose = responsiveIo(() => false, { ...opts, now: c.now });
    for (let i = 0; i < 50; i++) assert.equal((await choose().stat(file)).size, 1);
    assert.notEqual(choose(), pooledIo);
    for (let i = 0; i < 20; i++) {
      c.callMs = i % 2 === 0 ? 15 : 0.01;
      await choose().stat(file);
    }
    c.callMs = 0.01;
    assert.notEqual(choose(), pooledIo);
  });

  it('goes through the pool once calls are slow, and tries the calling thread again after poolForMs', async () => {
    const c = clock();
    const choose = responsiveIo(() => false, { ...opts, now: c.now });
    c.callMs = 3;
    let calls = 0;
    while (choose() !== pooledIo) {
      await choose().stat(file);
      calls++;
      assert.ok(calls <= opts.slowCalls, 'a volume slow at every call is noticed within a few calls');
    }
    assert.ok(calls > 1, 'not at the first slow call');
    assert.equal((await choose().stat(file)).size, 1, 'the pool answers the same');
    c.t += opts.poolForMs + 1;
    assert.notEqual(choose(), pooledIo);
  });

  it('always uses the calling thread when nothing else waits on the event loop', async () => {
    const c = clock();
    const choose = responsiveIo(() => true, { ...opts, now: c.now });
    c.callMs = 50;
    for (let i = 0; i < 20; i++) await choose().stat(file);
    assert.notEqual(choose(), pooledIo);
  });
});
