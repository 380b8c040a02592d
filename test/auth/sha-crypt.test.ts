import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { parseShaCryptSetting, shaCrypt, shaCryptHash, shaCryptVerify } from '../../src/auth/sha-crypt.ts';

// The test vectors of Drepper's specification ("Unix crypt using SHA-256 and SHA-512").
const SPEC_512: Array<[string, string, string]> = [
  ['$6$saltstring', 'Hello world!', '$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1'],
  ['$6$rounds=10000$saltstringsaltstring', 'Hello world!', '$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.'],
  ['$6$rounds=5000$toolongsaltstring', 'This is just a test', '$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0'],
  ['$6$rounds=1400$anotherlongsaltstring', 'a very much longer text to encrypt.  This one even stretches over morethan one line.', '$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3CmLs66x9t0oSwbtEW7o7UmJEiDwGqd8p4ur1'],
  ['$6$rounds=77777$short', 'we have a short salt string but not a short password', '$6$rounds=77777$short$WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1a1x3yRULJ5CCaUeOxFmtlcGZelFl5CxtgfiAc0'],
  ['$6$rounds=123456$asaltof16chars..', 'a short string', '$6$rounds=123456$asaltof16chars..$BtCwjqMJGx5hrJhZywWvt0RLE8uZ4oPwcelCjmw2kSYu.Ec6ycULevoBK25fs2xXgMNrCzIMVcgEJAstJeonj1'],
  ['$6$rounds=10$roundstoolow', 'the minimum number is still observed', '$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbpBYYBaHHrsX.'],
];
const SPEC_256: Array<[string, string, string]> = [
  ['$5$saltstring', 'Hello world!', '$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5'],
  ['$5$rounds=10000$saltstringsaltstring', 'Hello world!', '$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA'],
  ['$5$rounds=5000$toolongsaltstring', 'This is just a test', '$5$rounds=5000$toolongsaltstrin$Un/5jzAHMgOGZ5.mWJpuVolil07guHPvOW8mGRcvxa5'],
];

describe('SHA-crypt', () => {
  it('matches the specification vectors (SHA-512)', () => {
    for (const [setting, password, expected] of SPEC_512) {
      assert.equal(shaCrypt(password, parseShaCryptSetting(setting)!), expected, setting);
      assert.ok(shaCryptVerify(password, expected));
      assert.ok(!shaCryptVerify(password + 'x', expected));
    }
  });

  it('matches the specification vectors (SHA-256)', () => {
    for (const [setting, password, expected] of SPEC_256) {
      assert.equal(shaCrypt(password, parseShaCryptSetting(setting)!), expected, setting);
    }
  });

  it('verifies hashes made by openssl passwd -6 and -5, including non-ASCII passwords', () => {
    // (openssl refuses an empty password; doveadm's test below covers it.)
    for (const password of ['secret', 'pässwörd ✓', 'a'.repeat(100)]) {
      for (const flag of ['-6', '-5']) {
        const hash = execFileSync('openssl', ['passwd', flag, '-stdin'], { input: password + '\n' }).toString().trim();
        assert.ok(shaCryptVerify(password, hash), `${flag} ${password}`);
        assert.ok(!shaCryptVerify(password + '!', hash));
      }
    }
  });

  it('verifies hashes made by doveadm pw (SHA512-CRYPT, SHA256-CRYPT, rounds), including the empty password', () => {
    for (const password of ['secret', '', 'x:y$z']) {
      for (const scheme of ['SHA512-CRYPT', 'SHA256-CRYPT']) {
        const out = execFileSync('doveadm', ['pw', '-s', scheme, '-p', password]).toString().trim();
        const hash = out.replace(/^\{[^}]+\}/, '');
        assert.ok(shaCryptVerify(password, hash), `${scheme} ${JSON.stringify(password)}`);
        assert.ok(!shaCryptVerify(password + '!', hash));
      }
    }
    const rounds = execFileSync('doveadm', ['pw', '-s', 'SHA512-CRYPT', '-r', '7000', '-p', 'pw']).toString().trim();
    assert.match(rounds, /rounds=7000/);
    assert.ok(shaCryptVerify('pw', rounds.replace(/^\{[^}]+\}/, '')));
  });

  it('makes hashes that openssl reproduces from the same salt', () => {
    const mine = shaCryptHash('hunter2');
    const salt = mine.split('$')[2]!;
    const theirs = execFileSync('openssl', ['passwd', '-6', '-salt', salt, '-stdin'], { input: 'hunter2\n' }).toString().trim();
    assert.equal(mine, theirs);
  });

  it('matches glibc crypt(3) for every password length up to 3 blocks a round and every salt length', (t) => {
    // Python's crypt module is the C library's crypt(3) (deprecated, gone in Python 3.13).
    const probe = (cases: Array<[string, string]>) =>
      execFileSync('python3', ['-W', 'ignore', '-c', 'import crypt,json,sys\nfor p,s in json.load(sys.stdin): print(crypt.crypt(p,s))'], {
        input: JSON.stringify(cases),
      })
        .toString()
        .trim()
        .split('\n');
    try {
      probe([['x', '$6$x']]);
    } catch {
      return t.skip('no python3 crypt module');
    }
    const alphabet = './0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
    const pick = (chars: string, n: number) => Array.from({ length: n }, () => chars[Math.floor(Math.random() * chars.length)]).join('');
    const printable = Array.from({ length: 95 }, (_, i) => String.fromCharCode(32 + i)).join('');
    const cases: Array<[string, string]> = [];
    // Lengths 0-200 put C at every offset mod 8 in every layout, in rounds of one, two and three blocks.
    for (let len = 0; len <= 200; len++) {
      const salt = pick(alphabet, len % 17);
      cases.push([pick(printable, len), len % 5 === 0 ? `$6$${salt}` : `$6$rounds=${1000 + len}$${salt}`]);
    }
    cases.push(['pässwörd ✓', '$6$rounds=1000$saltsaltsaltsalt']);
    const expected = probe(cases);
    cases.forEach(([password, setting], i) => assert.equal(shaCrypt(password, parseShaCryptSetting(setting)!), expected[i], `${JSON.stringify(password)} ${setting}`));
  });

  it('refuses strings that are not SHA-crypt', () => {
    assert.equal(parseShaCryptSetting('$1$abc$def'), undefined);
    assert.equal(parseShaCryptSetting('plain'), undefined);
    assert.ok(!shaCryptVerify('x', '$2y$10$abc'));
  });
});
