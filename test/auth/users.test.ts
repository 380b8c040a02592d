import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { PasswdFileError, UserDatabase, parsePasswdFile } from '../../src/auth/passwd-file.ts';
import { PasswordSchemeError, costClass, parseStoredPassword, verifyPassword } from '../../src/auth/schemes.ts';
import { LoginThrottle } from '../../src/auth/throttle.ts';
import { PasswordVerifier } from '../../src/auth/verifier.ts';
import { createLogger } from '../../src/observability/log.ts';

const log = createLogger('test');
const doveadm = (scheme: string, password: string) => execFileSync('doveadm', ['pw', '-s', scheme, '-p', password]).toString().trim();

describe('password schemes', () => {
  it('verifies hashes made by doveadm for every supported scheme', async () => {
    for (const scheme of ['SHA512-CRYPT', 'SHA256-CRYPT', 'BLF-CRYPT', 'ARGON2ID', 'ARGON2I', 'PLAIN']) {
      const stored = parseStoredPassword(doveadm(scheme, 'correct horse'));
      assert.equal(stored.scheme, scheme);
      assert.equal(await verifyPassword(stored, 'correct horse'), true, scheme);
      assert.equal(await verifyPassword(stored, 'correct horsE'), false, scheme);
    }
  });

  it('CRYPT (the default without braces) goes by the $id$ prefix', async () => {
    for (const scheme of ['SHA512-CRYPT', 'BLF-CRYPT', 'ARGON2ID']) {
      const bare = doveadm(scheme, 'pw').replace(/^\{[^}]+\}/, '');
      const stored = parseStoredPassword(bare);
      assert.equal(stored.scheme, 'CRYPT');
      assert.ok(await verifyPassword(stored, 'pw'), scheme);
      assert.ok(!(await verifyPassword(stored, 'pW')), scheme);
    }
  });

  it('refuses unknown schemes and values that do not fit their scheme', () => {
    for (const bad of ['{MD5}abc', '{SHA512-CRYPT}$5$x$y', '{BLF-CRYPT}$2y$10$short', '{ARGON2ID}$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA', 'abcdefghijklm', '$1$salt$hash']) {
      assert.throws(() => parseStoredPassword(bad), PasswordSchemeError, bad);
    }
  });
});

describe('the decoy password for unknown users', () => {
  it('costClass names what a check costs: the crypt setting without salt, else the scheme', () => {
    const cases: Array<[string, string]> = [
      [doveadm('SHA512-CRYPT', 'x'), '$6$'],
      [`{SHA512-CRYPT}${doveadm('SHA512-CRYPT', 'x').replace('{SHA512-CRYPT}$6$', '$6$rounds=10000$')}`, '$6$rounds=10000$'],
      [doveadm('SHA512-CRYPT', 'x').replace(/^\{[^}]+\}/, ''), '$6$'],
      [doveadm('BLF-CRYPT', 'x'), doveadm('BLF-CRYPT', 'y').replace(/^\{[^}]+\}/, '').slice(0, 7)],
      [doveadm('ARGON2ID', 'x'), doveadm('ARGON2ID', 'y').replace(/^\{[^}]+\}/, '').replace(/\$[^$]*\$[^$]*$/, '$')],
      ['{PLAIN}x', 'PLAIN'],
    ];
    for (const [field, expected] of cases) assert.equal(costClass(parseStoredPassword(field)), expected, field);
  });

  it('is a password of the cost most users have, and follows the file', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kubedrac-decoy-'));
    after(() => fs.rmSync(dir, { recursive: true, force: true }));
    const file = path.join(dir, 'users');
    const blf = () => doveadm('BLF-CRYPT', 'pw');
    fs.writeFileSync(file, `a:{PLAIN}a\nb:${blf()}\nc:${blf()}\nd:${doveadm('SHA512-CRYPT', 'pw')}\n`);
    const db = new UserDatabase({ file, log, pollIntervalMs: 0 });
    after(() => db.close());
    assert.equal(db.decoyPassword()?.scheme, 'BLF-CRYPT');
    fs.writeFileSync(file, 'a:{PLAIN}a\nb:{PLAIN}b\n');
    assert.equal(db.reload(), true);
    assert.equal(db.decoyPassword()?.scheme, 'PLAIN');
  });
});

describe('passwd-file', () => {
  it('parses users, extra fields, comments and blank lines', () => {
    const users = parsePasswdFile(
      ['# users', '', 'alice:{PLAIN}secret::::::userdb_quota_rule=*:storage=1G nologin', 'bob@example.org:{PLAIN}p:1000:1000::/home/bob::', 'carol:{PLAIN}a:b:c::::x=1:y'].join('\n'),
      'users',
    );
    assert.equal(users.size, 3);
    assert.deepEqual(users.get('alice')?.extra, { 'userdb_quota_rule': '*:storage=1G', nologin: '' });
    assert.equal(users.get('bob@example.org')?.password.value, 'p');
    assert.equal(users.get('carol')?.password.value, 'a');
    assert.deepEqual(users.get('carol')?.extra, { x: '1:y' });
  });

  it('names the line of a mistake', () => {
    for (const [text, line] of [
      ['alice:{PLAIN}x\nbroken-line', 2],
      ['alice:{PLAIN}x\nalice:{PLAIN}y', 2],
      ['../etc:{PLAIN}x', 1],
      ['alice:{NOPE}x', 1],
    ] as const) {
      assert.throws(() => parsePasswdFile(text, 'users'), (err: unknown) => err instanceof PasswdFileError && err.message.includes(`users line ${line}`), text);
    }
  });

  it('reloads on change and keeps the last good file when the new one is broken', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kubedrac-users-'));
    after(() => fs.rmSync(dir, { recursive: true, force: true }));
    const file = path.join(dir, 'users');
    fs.writeFileSync(file, 'alice:{PLAIN}one\n');
    const db = new UserDatabase({ file, log, pollIntervalMs: 0 });
    after(() => db.close());
    assert.equal(db.lookup('alice')?.password.value, 'one');
    fs.writeFileSync(file, 'alice:{PLAIN}two\nbob:{PLAIN}b\n');
    assert.ok(db.reload());
    assert.equal(db.size, 2);
    fs.writeFileSync(file, 'alice:{PLAIN}three\nthis line is broken\n');
    assert.ok(!db.reload());
    assert.equal(db.lookup('alice')?.password.value, 'two');
    assert.match(db.lastError ?? '', /line 2/);
    fs.rmSync(file);
    assert.ok(!db.reload());
    assert.equal(db.size, 2, 'a vanished file keeps the users too');
    fs.writeFileSync(file, 'carol:{PLAIN}c\n');
    // The directory watch picks this one up by itself.
    await new Promise<void>((resolve, reject) => {
      const started = Date.now();
      const tick = () => (db.lookup('carol') ? resolve() : Date.now() - started > 10_000 ? reject(new Error('no reload')) : setTimeout(tick, 50));
      tick();
    });
    assert.equal(db.lookup('alice'), undefined);
    assert.throws(() => new UserDatabase({ file: path.join(dir, 'missing'), log }), PasswdFileError);
  });
});

describe('PasswordVerifier', () => {
  it('verifies on worker threads and inline for PLAIN', async () => {
    const v = new PasswordVerifier({ threads: 2 });
    after(() => v.close());
    const sha = parseStoredPassword(doveadm('SHA512-CRYPT', 's3cret'));
    const results = await Promise.all([v.verify(sha, 's3cret'), v.verify(sha, 'nope'), v.verify(sha, 's3cret'), v.verify(parseStoredPassword('{PLAIN}x'), 'x')]);
    assert.deepEqual(results, [true, false, true, true]);
  });
});

describe('PasswordVerifier when idle', () => {
  it('hashes SHA512-CRYPT of up to 5000 rounds on the calling thread when idle, anything costlier on a worker', async () => {
    let asked = 0;
    const v = new PasswordVerifier({
      threads: 1,
      idle: () => {
        asked++;
        return true;
      },
    });
    after(() => v.close());
    const sha = parseStoredPassword(doveadm('SHA512-CRYPT', 's3cret'));
    assert.equal(await v.verify(sha, 's3cret'), true);
    assert.equal(await v.verify(sha, 'nope'), false);
    assert.equal(await v.verify(parseStoredPassword(`{CRYPT}${sha.value}`), 's3cret'), true);
    assert.equal(asked, 3);
    // More rounds, or another scheme: not asked, off to the worker thread.
    const costly = parseStoredPassword(execFileSync('doveadm', ['pw', '-s', 'SHA512-CRYPT', '-r', '6000', '-p', 's3cret']).toString().trim());
    assert.equal(await v.verify(costly, 's3cret'), true);
    assert.equal(await v.verify(parseStoredPassword(doveadm('SHA256-CRYPT', 's3cret')), 's3cret'), true);
    assert.equal(asked, 3);
  });
});

describe('LoginThrottle', () => {
  it('throttles an address, then a user attacked from many addresses, and refills over the window', () => {
    const t = new LoginThrottle({ maxFailuresPerAddress: 3, maxFailuresPerUser: 5, windowMs: 60_000 });
    const now = 1_000_000;
    for (let i = 0; i < 3; i++) {
      assert.equal(t.check('192.0.2.1', 'alice', now), 'allowed');
      t.failed('192.0.2.1', 'alice', now);
    }
    assert.equal(t.check('192.0.2.1', 'bob', now), 'address');
    assert.equal(t.check('::ffff:192.0.2.1', 'bob', now), 'address');
    t.failed('192.0.2.2', 'alice', now);
    t.failed('192.0.2.3', 'alice', now);
    assert.equal(t.check('192.0.2.9', 'alice', now), 'user');
    assert.equal(t.check('192.0.2.9', 'bob', now), 'allowed');
    assert.equal(t.check('192.0.2.1', 'bob', now + 60_000), 'allowed');
  });
});
