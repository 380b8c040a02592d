// What a POP3 login does: throttle check, password check (same reply and delay for an unknown
// user and a wrong password), maildrop lock, and the grant for the client address.
import crypto from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { UserDatabase, UserEntry } from '../auth/passwd-file.ts';
import { parseStoredPassword, verifyApop } from '../auth/schemes.ts';
import type { StoredPassword } from '../auth/schemes.ts';
import { shaCryptHash } from '../auth/sha-crypt.ts';
import type { PasswordVerifier } from '../auth/verifier.ts';
import type { GrantRenewer } from '../grants/types.ts';
import { isValidUserName } from '../mail/paths.ts';
import type { NetworkList } from '../net/networks.ts';
import type { Logger } from '../observability/log.ts';
import { MaildropInUseError } from './lock.ts';
import { grantWait, grantWrites, loginsTotal } from './metrics.ts';
import type { LoginOutcome, Maildrop } from './session.ts';
import type { SharedThrottle } from './shared.ts';

export interface LoginDeps {
  users: Pick<UserDatabase, 'lookup'>;
  verifier: Pick<PasswordVerifier, 'verify'>;
  /** A LoginThrottle, or with several workers the primary's. */
  throttle: SharedThrottle;
  openMaildrop(user: string): Promise<Maildrop>;
  renewer: GrantRenewer;
  denyGrantNetworks: NetworkList;
  failureDelayMs: number;
  loginWaitForGrantMs: number;
  log: Logger;
}

export interface LoginClient {
  /** The address that gets the grant: the TCP peer, or the PROXY client; null = never grant. */
  grantAddress: string | null;
  /** The address failures are counted against (the client, else the proxy's peer). */
  throttleAddress: string;
  /** The connection's peer when a PROXY header named the client: never granted. */
  proxyPeer?: string;
  sessionId: string;
}

export class Pop3Login {
  private readonly deps: LoginDeps;
  /** Checked for unknown users, so they cost the same time as known ones. */
  private readonly decoy: StoredPassword;

  constructor(deps: LoginDeps) {
    this.deps = deps;
    this.decoy = parseStoredPassword(`{SHA512-CRYPT}${shaCryptHash(crypto.randomBytes(18).toString('base64'))}`);
  }

  /** USER/PASS and AUTH: check the password against the stored hash. */
  login(user: string, password: string, client: LoginClient): Promise<LoginOutcome> {
    return this.attempt(user, client, (entry) => this.deps.verifier.verify(entry?.password ?? this.decoy, password));
  }

  /** APOP: MD5(banner + secret), possible only for users whose secret is stored in the clear. */
  apop(user: string, banner: string, digest: string, client: LoginClient): Promise<LoginOutcome> {
    return this.attempt(user, client, (entry) => Promise.resolve(entry !== undefined && verifyApop(entry.password, banner, digest)));
  }

  private async attempt(user: string, client: LoginClient, check: (entry: UserEntry | undefined) => Promise<boolean>): Promise<LoginOutcome> {
    const started = Date.now();
    const d = this.deps;
    const failLater = async <T extends LoginOutcome>(outcome: T): Promise<T> => {
      await sleep(Math.max(0, started + d.failureDelayMs - Date.now()));
      return outcome;
    };

    const verdict = await d.throttle.check(client.throttleAddress, user, started);
    if (verdict !== 'allowed') {
      loginsTotal.inc({ result: 'throttled' });
      d.log.warn('login_throttled', { session: client.sessionId, by: verdict });
      return failLater({ result: 'throttled' });
    }

    const entry = isValidUserName(user) ? d.users.lookup(user) : undefined;
    let ok: boolean;
    try {
      ok = await check(entry);
    } catch (err) {
      d.log.error('password_check_failed', { session: client.sessionId, error: err as Error });
      return { result: 'temporary', reason: 'password check failed' };
    }
    if (!ok || entry === undefined || 'nologin' in entry.extra) {
      d.throttle.failed(client.throttleAddress, user, started);
      loginsTotal.inc({ result: 'failure' });
      d.log.info('login_failed', { session: client.sessionId });
      return failLater({ result: 'failed' });
    }

    // The credentials were right: the grant is deserved whatever the maildrop says (locked by
    // another session, or unreadable for now), so it is written while the maildrop opens.
    loginsTotal.inc({ result: 'success' });
    const granted = this.grant(user, client);
    let maildrop: Maildrop;
    try {
      maildrop = await d.openMaildrop(user);
    } catch (err) {
      await granted;
      if (err instanceof MaildropInUseError) {
        d.log.info('maildrop_in_use', { session: client.sessionId, user });
        return { result: 'in-use' };
      }
      d.log.error('maildrop_open_failed', { session: client.sessionId, user, error: err as Error });
      return { result: 'temporary', reason: 'maildrop unavailable' };
    }
    await granted;
    d.log.info('login', { session: client.sessionId, user, messages: maildrop.messages.length });
    return { result: 'ok', maildrop };
  }

  /** Renew the grant, waiting at most loginWaitForGrantMs; never fails the login. */
  private async grant(user: string, client: LoginClient): Promise<void> {
    const d = this.deps;
    const address = client.grantAddress;
    if (address === null) {
      grantWrites.inc({ result: 'none' });
      return;
    }
    if (d.denyGrantNetworks.contains(address)) {
      grantWrites.inc({ result: 'denied' });
      d.log.info('grant_denied_by_network', { session: client.sessionId });
      return;
    }
    const started = process.hrtime.bigint();
    const write = d.renewer.renew(address, user, 'pop3', { proxyPeer: client.proxyPeer }).then(
      (outcome) => {
        grantWrites.inc({ result: outcome });
        return outcome;
      },
      (err: unknown) => {
        grantWrites.inc({ result: 'failed' });
        d.log.warn('grant_write_failed', { session: client.sessionId, error: err as Error });
        return 'failed' as const;
      },
    );
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), d.loginWaitForGrantMs);
    });
    const result = await Promise.race([write, timeout]);
    clearTimeout(timer);
    grantWait.observe(Number(process.hrtime.bigint() - started) / 1e9);
    if (result === 'timeout') {
      grantWrites.inc({ result: 'timeout' });
      d.log.warn('grant_write_slow', { session: client.sessionId, waitedMs: d.loginWaitForGrantMs });
    }
  }
}
