// The password login both roles share (src/auth/login.ts), as pure code: which hash is checked,
// what counts as a failure, what the throttle sees. The protocol ends are tested through real
// clients in test/smtp/auth.test.ts and test/pop3/.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { PasswordLogin, type PasswordLoginDeps } from '../../src/auth/login.ts';
import type { UserEntry } from '../../src/auth/passwd-file.ts';
import { parseStoredPassword, type StoredPassword } from '../../src/auth/schemes.ts';
import { LoginThrottle, type ThrottleVerdict } from '../../src/auth/throttle.ts';
import { memoryLogger } from '../smtp/support.ts';

const ATTEMPT = { throttleAddress: '192.0.2.7', sessionId: 's1' };

function setup(opts: { failureDelayMs?: number; fail?: boolean; throttle?: PasswordLoginDeps['throttle'] } = {}) {
  const entries = new Map<string, UserEntry>([
    ['ideal', { user: 'ideal', password: parseStoredPassword('{PLAIN}secret'), extra: {} }],
    ['locked', { user: 'locked', password: parseStoredPassword('{PLAIN}secret'), extra: { nologin: '' } }],
  ]);
  const checked: StoredPassword[] = [];
  const looked: string[] = [];
  const failures: string[] = [];
  const throttle = opts.throttle ?? new LoginThrottle({ maxFailuresPerAddress: 3, maxFailuresPerUser: 100, windowMs: 3_600_000 });
  const lines: string[] = [];
  const login = new PasswordLogin({
    users: {
      lookup: (u) => {
        looked.push(u);
        return entries.get(u);
      },
    },
    verifier: {
      verify: (stored, password) => {
        checked.push(stored);
        if (opts.fail) return Promise.reject(new Error('worker died'));
        return Promise.resolve(stored.scheme === 'PLAIN' && stored.value === password);
      },
    },
    throttle: {
      check: (a, u, now) => throttle.check(a, u, now),
      failed: (a, u, now) => {
        failures.push(`${a} ${u}`);
        throttle.failed(a, u, now);
      },
    },
    failureDelayMs: opts.failureDelayMs ?? 0,
    log: memoryLogger(lines),
  });
  return { login, checked, looked, failures, lines };
}

describe('PasswordLogin', () => {
  it('accepts the right password and counts nothing against the client', async () => {
    const s = setup();
    const out = await s.login.password('ideal', 'secret', ATTEMPT);
    assert.equal(out.result, 'ok');
    assert.equal(out.result === 'ok' && out.entry.user, 'ideal');
    assert.deepEqual(s.failures, []);
  });

  it('checks a decoy SHA512-CRYPT hash for an unknown user and for a name that is not valid, without looking it up', async () => {
    const s = setup();
    for (const [i, user] of ['nobody', '../ideal', 'a b', ''].entries()) {
      assert.equal((await s.login.password(user, 'secret', { ...ATTEMPT, throttleAddress: `192.0.2.${10 + i}` })).result, 'failed', user);
    }
    assert.equal(s.checked.length, 4, 'a hash is checked every time');
    assert.ok(s.checked.every((c) => c.scheme === 'SHA512-CRYPT' && c === s.checked[0]), 'the same decoy each time');
    assert.deepEqual(s.looked, ['nobody'], 'only a valid name is looked up');
    assert.deepEqual(
      s.lines.map((l) => (JSON.parse(l) as { reason?: string }).reason),
      ['unknown_user', 'invalid_user_name', 'invalid_user_name', 'invalid_user_name'],
    );
  });

  it('checks the decoy the users give, one that costs what most of theirs do', async () => {
    const typical = parseStoredPassword('{PLAIN}typical');
    const checked: StoredPassword[] = [];
    const login = new PasswordLogin({
      users: { lookup: () => undefined, decoyPassword: () => typical },
      verifier: {
        verify: (stored, password) => {
          checked.push(stored);
          return Promise.resolve(stored.value === password);
        },
      },
      throttle: new LoginThrottle({ maxFailuresPerAddress: 3, maxFailuresPerUser: 3, windowMs: 60_000 }),
      failureDelayMs: 0,
      log: memoryLogger(),
    });
    // Even the decoy's own secret fails: the user is unknown.
    assert.equal((await login.password('nobody', 'typical', ATTEMPT)).result, 'failed');
    assert.deepEqual(checked, [typical]);
  });

  it('fails a nologin user with the right password, as a wrong password, and counts it', async () => {
    const s = setup();
    assert.equal((await s.login.password('locked', 'secret', ATTEMPT)).result, 'failed');
    assert.deepEqual(s.failures, ['192.0.2.7 locked']);
  });

  it('answers a success without the failure delay', async () => {
    const s = setup({ failureDelayMs: 60_000 });
    const out = await Promise.race([s.login.password('ideal', 'secret', ATTEMPT), sleep(10_000, 'still waiting', { ref: false })]);
    assert.equal(typeof out === 'string' ? out : out.result, 'ok');
  });

  it('answers failures and throttled attempts after the failure delay', async () => {
    const s = setup({ failureDelayMs: 150 });
    const timed = async (user: string, password: string) => {
      const started = performance.now();
      const out = await s.login.password(user, password, ATTEMPT);
      return { result: out.result, ms: performance.now() - started };
    };
    for (let i = 0; i < 3; i++) {
      const bad = await timed('ideal', 'wrong');
      assert.ok(bad.result === 'failed' && bad.ms >= 145, `${bad.ms} ms`);
    }
    const throttled = await timed('ideal', 'secret');
    assert.ok(throttled.result === 'throttled' && throttled.ms >= 145, `${throttled.ms} ms`);
  });

  it('once throttled, checks no password at all', async () => {
    const s = setup();
    for (let i = 0; i < 3; i++) await s.login.password('ideal', 'wrong', ATTEMPT);
    const before = s.checked.length;
    assert.equal((await s.login.password('ideal', 'secret', ATTEMPT)).result, 'throttled');
    assert.equal(s.checked.length, before);
    assert.equal((await s.login.password('ideal', 'secret', { ...ATTEMPT, throttleAddress: '192.0.2.8' })).result, 'ok', 'another address is not throttled');
  });

  it('waits for a throttle that answers asynchronously (a pop3 worker asking the primary)', async () => {
    let verdict: ThrottleVerdict = 'user';
    const s = setup({ throttle: { check: () => Promise.resolve(verdict), failed: () => undefined } });
    assert.equal((await s.login.password('ideal', 'secret', ATTEMPT)).result, 'throttled');
    verdict = 'allowed';
    assert.equal((await s.login.password('ideal', 'secret', ATTEMPT)).result, 'ok');
  });

  it('a password check that breaks is a temporary failure, not counted as a wrong password', async () => {
    const s = setup({ fail: true, failureDelayMs: 10_000 });
    assert.equal((await s.login.password('ideal', 'secret', ATTEMPT)).result, 'temporary');
    assert.deepEqual(s.failures, []);
  });

  it('APOP of an unknown user fails like a wrong digest', async () => {
    const s = setup();
    assert.equal((await s.login.apop('nobody', '<1.2@host>', '0'.repeat(32), ATTEMPT)).result, 'failed');
    assert.equal((await s.login.apop('ideal', '<1.2@host>', '0'.repeat(32), ATTEMPT)).result, 'failed');
    assert.deepEqual(s.failures, ['192.0.2.7 nobody', '192.0.2.7 ideal']);
  });
});
