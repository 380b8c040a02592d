// The password check every login path shares (POP3 USER/PASS, AUTH and APOP; SMTP AUTH PLAIN and
// LOGIN), with its guards in one place: the brute-force throttle is asked first; a user name that
// is not valid, or not in the users file, is checked against a decoy hash (one that costs what
// most users' do) so that the answer takes as long as a wrong password for a real user; a
// `nologin` user fails like a wrong password; and every failure is answered `failureDelayMs`
// after the attempt started.
import crypto from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { isValidUserName } from './user-name.ts';
import type { Logger } from '../observability/log.ts';
import type { UserDatabase, UserEntry } from './passwd-file.ts';
import { parseStoredPassword, verifyApop, type StoredPassword } from './schemes.ts';
import { shaCryptHash } from './sha-crypt.ts';
import type { ThrottleVerdict } from './throttle.ts';
import type { PasswordVerifier } from './verifier.ts';

/**
 * A LoginThrottle, or (pop3.workers > 1) a worker's copy of the primary's, whose check may be a
 * question to another process.
 */
export interface FailureThrottle {
  check(address: string, user: string, nowMs: number): ThrottleVerdict | Promise<ThrottleVerdict>;
  failed(address: string, user: string, nowMs: number): void;
}

export interface PasswordLoginDeps {
  /** With `decoyPassword`, unknown users are checked against what most users' checks cost. */
  users: Pick<UserDatabase, 'lookup'> & Partial<Pick<UserDatabase, 'decoyPassword'>>;
  verifier: Pick<PasswordVerifier, 'verify'>;
  throttle: FailureThrottle;
  /** Every failed or throttled attempt is answered this long after it started (login.failureDelay). */
  failureDelayMs: number;
  log: Logger;
  now?: () => number;
}

/** Who is trying: the address failures count against, and the session for the logs. */
export interface LoginAttempt {
  throttleAddress: string;
  sessionId: string;
}

export type PasswordOutcome = { result: 'ok'; entry: UserEntry } | { result: 'failed' } | { result: 'throttled' } | { result: 'temporary' };

/** Why a login failed, for the log only: the client always sees the same answer. */
type FailureReason = 'invalid_user_name' | 'unknown_user' | 'wrong_password' | 'nologin';

export class PasswordLogin {
  private readonly deps: PasswordLoginDeps;
  private readonly now: () => number;
  /** Checked for unknown users when the users give none (an empty file): SHA512-CRYPT, 5000 rounds. */
  private readonly decoy: StoredPassword;

  constructor(deps: PasswordLoginDeps) {
    this.deps = deps;
    this.now = deps.now ?? Date.now;
    this.decoy = parseStoredPassword(`{SHA512-CRYPT}${shaCryptHash(crypto.randomBytes(18).toString('base64'))}`);
  }

  /** A password (POP3 USER/PASS and AUTH PLAIN, SMTP AUTH) against the stored hash. */
  password(user: string, password: string, attempt: LoginAttempt): Promise<PasswordOutcome> {
    return this.attempt(user, attempt, (entry) => this.deps.verifier.verify(entry?.password ?? this.decoyPassword(), password));
  }

  /** APOP: MD5(banner + secret), possible only for users whose secret is stored in the clear. */
  apop(user: string, banner: string, digest: string, attempt: LoginAttempt): Promise<PasswordOutcome> {
    return this.attempt(user, attempt, (entry) => Promise.resolve(entry !== undefined && verifyApop(entry.password, banner, digest)));
  }

  /**
   * For an unknown user: a hash that costs what most users' cost, so the answer takes as long as
   * a wrong password's (a real user's hash: a match is still a failure, the user being unknown).
   */
  private decoyPassword(): StoredPassword {
    return this.deps.users.decoyPassword?.() ?? this.decoy;
  }

  private async attempt(user: string, attempt: LoginAttempt, check: (entry: UserEntry | undefined) => Promise<boolean>): Promise<PasswordOutcome> {
    const started = this.now();
    const d = this.deps;
    const later = async (outcome: PasswordOutcome): Promise<PasswordOutcome> => {
      // Date.now() counts whole milliseconds and timers run on the event loop's cached clock, so
      // one sleep can end a fraction of a millisecond early: sleep until the clock is past the due
      // time, so that a failure is never answered before its delay (a few rounds at most: an
      // injected clock that stands still must not hold the answer for ever).
      const due = started + d.failureDelayMs;
      for (let round = 0, left = due - this.now(); d.failureDelayMs > 0 && left >= 0 && round < 3; round++, left = due - this.now()) await sleep(left + 1);
      return outcome;
    };

    const verdict = await d.throttle.check(attempt.throttleAddress, user, started);
    if (verdict !== 'allowed') {
      d.log.warn('login_throttled', { session: attempt.sessionId, by: verdict });
      return later({ result: 'throttled' });
    }

    const validName = isValidUserName(user);
    const entry = validName ? d.users.lookup(user) : undefined;
    let ok: boolean;
    try {
      ok = await check(entry);
    } catch (err) {
      d.log.error('password_check_failed', { session: attempt.sessionId, error: err as Error });
      return { result: 'temporary' };
    }
    let reason: FailureReason | undefined;
    if (!validName) reason = 'invalid_user_name';
    else if (entry === undefined) reason = 'unknown_user';
    else if (!ok) reason = 'wrong_password';
    else if ('nologin' in entry.extra) reason = 'nologin';
    if (reason !== undefined || entry === undefined) {
      d.throttle.failed(attempt.throttleAddress, user, started);
      d.log.info('login_failed', { session: attempt.sessionId, reason });
      return later({ result: 'failed' });
    }
    return { result: 'ok', entry };
  }
}
