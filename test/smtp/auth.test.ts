// SMTP AUTH has the guards of a POP3 login (src/auth/login.ts), seen from a real client (Python's
// smtplib over STARTTLS): the failure delay, the user-name check, nologin, the throttle per
// address and per user; and an unknown user's answer takes as long as a wrong password's.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { UserDatabase } from '../../src/auth/passwd-file.ts';
import { shaCryptHash } from '../../src/auth/sha-crypt.ts';
import { LoginThrottle } from '../../src/auth/throttle.ts';
import { PasswordVerifier } from '../../src/auth/verifier.ts';
import { registry } from '../../src/observability/metrics.ts';
import { kolmogorovSmirnov, quantile } from '../support/statistics.ts';
import { memoryLogger, run, startTestSmtp, type TestSmtp } from './support.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'smtp-auth-'));
const certFile = path.join(dir, 'tls.crt');
const keyFile = path.join(dir, 'tls.key');
const usersFile = path.join(dir, 'users');
const PASSWORDS = { ideal: 'correct horse', bob: 'bob-pw', carol: 'carol-pw', locked: 'locked-pw' };

interface Attempt {
  mech: 'PLAIN' | 'LOGIN' | 'smtplib';
  user: string;
  password: string;
}
interface Answer {
  code: number;
  text: string;
  seconds: number;
}

/**
 * Python's smtplib from `source`: STARTTLS, then each attempt (on one connection, or each on a
 * new one), timed from sending AUTH to its final reply. `smtplib` is smtplib's own login().
 */
async function smtplibAuth(port: number, source: string, attempts: Attempt[], fresh = false): Promise<Answer[]> {
  const script = `
import base64, json, smtplib, ssl, sys, time
args = json.loads(sys.stdin.read())
ctx = ssl._create_unverified_context()
b64 = lambda s: base64.b64encode(s.encode()).decode()
def connect():
    s = smtplib.SMTP('127.0.0.1', args['port'], source_address=(args['source'], 0), timeout=30)
    s.ehlo('python.client.test')
    s.starttls(context=ctx)
    s.ehlo('python.client.test')
    return s
def auth(s, a):
    t0 = time.perf_counter()
    if a['mech'] == 'smtplib':
        try:
            code, msg = s.login(a['user'], a['password'])
        except smtplib.SMTPAuthenticationError as e:
            code, msg = e.smtp_code, e.smtp_error
    elif a['mech'] == 'PLAIN':
        code, msg = s.docmd('AUTH', 'PLAIN ' + b64('\\0' + a['user'] + '\\0' + a['password']))
    else:
        code, msg = s.docmd('AUTH', 'LOGIN')
        if code == 334:
            code, msg = s.docmd(b64(a['user']))
        if code == 334:
            code, msg = s.docmd(b64(a['password']))
    return {'code': code, 'text': msg.decode(), 'seconds': time.perf_counter() - t0}
out = []
s = None
for a in args['attempts']:
    if s is None or args['fresh']:
        if s is not None:
            s.close()
        s = connect()
    out.append(auth(s, a))
s.close()
print(json.dumps(out))
`;
  const r = await run('python3', ['-c', script], JSON.stringify({ port, source, attempts, fresh }), 120_000);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as Answer[];
}

const wrong = (user: string): Attempt => ({ mech: 'PLAIN', user, password: 'not the password' });

let verifier: PasswordVerifier;
let users: UserDatabase;
before(() => {
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=mx.example.org'], { stdio: 'ignore' });
  const line = (user: string, password: string, extra = '') => `${user}:{SHA512-CRYPT}${shaCryptHash(password)}${extra ? `::::::${extra}` : ''}\n`;
  fs.writeFileSync(
    usersFile,
    line('ideal', PASSWORDS.ideal) + line('bob', PASSWORDS.bob) + line('carol', PASSWORDS.carol) + line('locked', PASSWORDS.locked, 'nologin') + 'cheap:{PLAIN}cheap-pw\n',
  );
  users = new UserDatabase({ file: usersFile, log: memoryLogger(), pollIntervalMs: 0 });
  // As the role runs it: hashes on a worker thread.
  verifier = new PasswordVerifier({ threads: 1 });
});
after(async () => {
  await verifier.close();
  users.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

function startAuthSmtp(login: Record<string, unknown>, throttle: { maxFailuresPerAddress: number; maxFailuresPerUser: number }): Promise<TestSmtp> {
  return startTestSmtp(
    { tls: { certFile, keyFile }, usersFile, auth: { enabled: true } },
    { auth: { users, verifier, throttle: new LoginThrottle({ ...throttle, windowMs: 3_600_000 }) } },
    login,
  );
}

void describe('SMTP AUTH guards, through smtplib', () => {
  const DELAY_S = 0.3;
  let t: TestSmtp;
  before(async () => {
    t = await startAuthSmtp({ failureDelay: '300ms' }, { maxFailuresPerAddress: 3, maxFailuresPerUser: 5 });
  });
  after(async () => {
    await t.close();
  });

  void it('accepts the right password with PLAIN, LOGIN and smtplib.login()', async () => {
    const answers = await smtplibAuth(
      t.port,
      '127.0.0.40',
      [
        { mech: 'PLAIN', user: 'ideal', password: PASSWORDS.ideal },
        { mech: 'LOGIN', user: 'ideal', password: PASSWORDS.ideal },
        { mech: 'smtplib', user: 'ideal', password: PASSWORDS.ideal },
      ],
      true,
    );
    assert.deepEqual(
      answers.map((a) => a.code),
      [235, 235, 235],
      JSON.stringify(answers),
    );
  });

  void it('answers a wrong password, an unknown user and an invalid user name with 535 after the failure delay', async () => {
    const cases: Array<[string, Attempt]> = [
      ['127.0.0.41', wrong('ideal')],
      ['127.0.0.42', wrong('nobody')],
      ['127.0.0.43', wrong('../ideal')],
      ['127.0.0.44', { mech: 'LOGIN', user: 'ideal/..', password: PASSWORDS.ideal }],
      ['127.0.0.45', { mech: 'LOGIN', user: 'bob', password: 'not the password' }],
    ];
    for (const [source, attempt] of cases) {
      const [a] = await smtplibAuth(t.port, source, [attempt]);
      assert.equal(a?.code, 535, `${attempt.user}: ${JSON.stringify(a)}`);
      assert.match(a?.text ?? '', /^5\.7\.8 Authentication credentials invalid/);
      assert.ok((a?.seconds ?? 0) >= DELAY_S, `${attempt.user}: answered after ${a?.seconds} s, before the failure delay`);
    }
    assert.ok(t.log.some((l) => l.includes('"reason":"invalid_user_name"')));
    assert.ok(t.log.some((l) => l.includes('"reason":"unknown_user"')));
  });

  void it('refuses a nologin user even with the right password', async () => {
    const answers = await smtplibAuth(t.port, '127.0.0.46', [{ mech: 'PLAIN', user: 'locked', password: PASSWORDS.locked }]);
    assert.equal(answers[0]?.code, 535, JSON.stringify(answers));
    assert.ok((answers[0]?.seconds ?? 0) >= DELAY_S);
    assert.ok(t.log.some((l) => l.includes('"reason":"nologin"')));
  });

  void it('throttles an address after maxFailuresPerAddress: then even the right password gets 454, late', async () => {
    const answers = await smtplibAuth(t.port, '127.0.0.47', [wrong('bob'), wrong('bob'), wrong('bob'), { mech: 'PLAIN', user: 'bob', password: PASSWORDS.bob }]);
    assert.deepEqual(
      answers.map((a) => a.code),
      [535, 535, 535, 454],
      JSON.stringify(answers),
    );
    assert.match(answers[3]?.text ?? '', /^4\.7\.0 Too many failed authentications/);
    assert.ok((answers[3]?.seconds ?? 0) >= DELAY_S, 'a throttled answer is delayed too');
    // Another address is not affected.
    const other = await smtplibAuth(t.port, '127.0.0.48', [{ mech: 'PLAIN', user: 'bob', password: PASSWORDS.bob }]);
    assert.equal(other[0]?.code, 235);
    const counted = await registry.getSingleMetricAsString('kubedrac_smtp_auth_total');
    for (const result of ['success', 'failure', 'throttled']) assert.match(counted, new RegExp(`kubedrac_smtp_auth_total\\{result="${result}"\\} [1-9]`));
  });

  void it('throttles a user attacked from many addresses after maxFailuresPerUser, and only that user', async () => {
    for (let i = 0; i < 5; i++) {
      const [a] = await smtplibAuth(t.port, `127.0.0.${50 + i}`, [wrong('carol')]);
      assert.equal(a?.code, 535);
    }
    const [carol] = await smtplibAuth(t.port, '127.0.0.55', [{ mech: 'LOGIN', user: 'carol', password: PASSWORDS.carol }]);
    assert.equal(carol?.code, 454, JSON.stringify(carol));
    const [ideal] = await smtplibAuth(t.port, '127.0.0.55', [{ mech: 'LOGIN', user: 'ideal', password: PASSWORDS.ideal }]);
    assert.equal(ideal?.code, 235, JSON.stringify(ideal));
  });
});

void describe('SMTP AUTH timing: an unknown user is answered like a wrong password', () => {
  const TRIES = 200;
  const GROUP = 3;
  /** Below this p-value the two distributions differ; a 1 ms shift must fall below it (checked). */
  const ALPHA = 0.001;
  let t: TestSmtp;
  before(async () => {
    // No failure delay and no throttle: what is compared is the password check itself.
    t = await startAuthSmtp({ failureDelay: '0s' }, { maxFailuresPerAddress: 1_000_000, maxFailuresPerUser: 1_000_000 });
  });
  after(async () => {
    await t.close();
  });

  /**
   * `TRIES` samples of each, in random order on one connection (drift hits both alike), after a
   * warm-up. A sample is the fastest of `GROUP` attempts in a row: on a loaded machine most noise
   * is time we were preempted, which only ever adds, and a leak shifts the fastest as much as any.
   */
  async function measure(a: string, b: string): Promise<{ a: number[]; b: number[] }> {
    const groups: string[] = [];
    for (let i = 0; i < TRIES; i++) groups.push(a, b);
    for (let i = groups.length - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1));
      [groups[i], groups[j]] = [groups[j] as string, groups[i] as string];
    }
    const order = groups.flatMap((user) => Array<string>(GROUP).fill(user));
    const warmUp = Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? a : b));
    const answers = await smtplibAuth(t.port, '127.0.0.60', [...warmUp, ...order].map(wrong));
    const timed = answers.slice(warmUp.length);
    for (const x of timed) assert.equal(x.code, 535);
    const fastest = groups.map((_, g) => Math.min(...timed.slice(g * GROUP, (g + 1) * GROUP).map((x) => x.seconds * 1000)));
    return { a: fastest.filter((_, g) => groups[g] === a), b: fastest.filter((_, g) => groups[g] === b) };
  }

  const summary = (xs: number[]) => `p50 ${quantile(xs, 0.5).toFixed(3)} ms, p90 ${quantile(xs, 0.9).toFixed(3)} ms`;

  void it('the distributions are indistinguishable (two-sample Kolmogorov-Smirnov), and a 1 ms leak would not be', async (ctx) => {
    const unknown: number[] = [];
    const known: number[] = [];
    let same;
    let shifted;
    // When the machine is too busy to resolve 1 ms, more samples are taken (up to three rounds).
    for (let round = 1; round <= 3; round++) {
      const m = await measure('nobody', 'ideal');
      unknown.push(...m.a);
      known.push(...m.b);
      same = kolmogorovSmirnov(unknown, known);
      shifted = kolmogorovSmirnov(
        unknown.map((x) => x + 1),
        known,
      );
      ctx.diagnostic(
        `round ${round}, ${unknown.length} samples each: unknown user ${summary(unknown)}; wrong password ${summary(known)}; KS D=${same.d.toFixed(3)} p=${same.p.toPrecision(3)}; with 1 ms added: D=${shifted.d.toFixed(3)} p=${shifted.p.toPrecision(3)}`,
      );
      if (shifted.p < ALPHA) break;
    }
    assert.ok(same && shifted);
    // The measurement resolves 1 ms: the same samples, one side 1 ms later, are told apart.
    assert.ok(shifted.p < ALPHA, `a 1 ms leak would go unnoticed (p=${shifted.p}): the timings are too noisy to judge`);
    assert.ok(same.p >= ALPHA, `an unknown user is answered differently from a wrong password: D=${same.d} p=${same.p}`);
  });

  void it('the same test tells a cheaper hash from the decoy: it can fail', async (ctx) => {
    // `cheap` has a {PLAIN} password, checked without SHA512-CRYPT's cost: a real difference.
    const { a: unknown, b: cheap } = await measure('nobody', 'cheap');
    const r = kolmogorovSmirnov(unknown, cheap);
    ctx.diagnostic(`unknown user ${summary(unknown)}; {PLAIN} user ${summary(cheap)}; KS D=${r.d.toFixed(3)} p=${r.p.toPrecision(3)}`);
    assert.ok(r.p < ALPHA, `D=${r.d} p=${r.p}`);
  });
});
