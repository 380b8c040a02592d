import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { parseStoredPassword } from '../../src/auth/schemes.ts';
import { shaCryptHash } from '../../src/auth/sha-crypt.ts';
import { PasswordVerifier } from '../../src/auth/verifier.ts';

// A POP3 login alone in its process hashes on the event loop (idle), unless the scheduler held the
// last such hash up (a busy machine): then the worker threads take the hashes for a while.
describe('PasswordVerifier on the calling thread', () => {
  const stored = parseStoredPassword(`{SHA512-CRYPT}${shaCryptHash('secret')}`);
  /**
   * Where the hash ran: a hash here is done before the call returns, so its answer settles within
   * a few microtasks; a worker thread's answer comes in a message, which no microtask can bring.
   * (Racing it against setImmediate was not enough: a worker that finished while the loop was in
   * its check phase answered in the next poll phase, before the next setImmediate, and looked
   * like a hash here: CI saw it once.)
   */
  const where = async (v: PasswordVerifier, password = 'secret'): Promise<'here' | 'worker'> => {
    let settled = false;
    const answer = v.verify(stored, password).then((ok) => ((settled = true), ok));
    for (let i = 0; i < 10; i++) await Promise.resolve();
    const first = settled ? 'here' : 'worker';
    assert.equal(await answer, password === 'secret');
    return first;
  };
  const verifiers: PasswordVerifier[] = [];
  after(() => Promise.all(verifiers.map((v) => v.close())));

  it('hashes right here while idle and not held up; on a worker thread for a while after a hash that was', async () => {
    const clock = { t: 0, step: 0 };
    const v = new PasswordVerifier({ threads: 1, idle: () => true, now: () => (clock.t += clock.step) });
    verifiers.push(v);
    assert.equal(await where(v), 'here', 'idle: on the calling thread');
    clock.step = 50; // every reading of the clock 50 ms later: a hash that took far more than its CPU
    assert.equal(await where(v), 'here', 'this one still ran here, and was held up');
    clock.step = 0;
    assert.equal(await where(v, 'wrong'), 'worker', 'the next goes to the worker thread');
    assert.equal(await where(v), 'worker');
    clock.t += 10_001;
    assert.equal(await where(v), 'here', 'and later, the calling thread again');
  });

  it('never hashes here when something else waits on the event loop', async () => {
    const v = new PasswordVerifier({ threads: 1, idle: () => false });
    verifiers.push(v);
    for (let i = 0; i < 3; i++) assert.equal(await where(v), 'worker');
  });
});
