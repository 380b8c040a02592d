// What a POP3 login does: the password check with its guards (src/auth/login.ts, shared with
// SMTP AUTH), then the maildrop lock and the grant for the client address.
import type { UserDatabase } from '../auth/passwd-file.ts';
import { PasswordLogin, type FailureThrottle, type PasswordOutcome } from '../auth/login.ts';
import type { PasswordVerifier } from '../auth/verifier.ts';
import type { GrantRenewer } from '../grants/types.ts';
import type { NetworkList } from '../net/networks.ts';
import type { Logger } from '../observability/log.ts';
import { MaildropInUseError } from './lock.ts';
import { grantRenewals, grantWait, loginsTotal } from './metrics.ts';
import type { LoginOutcome, Maildrop } from './session.ts';

export interface LoginDeps {
  users: Pick<UserDatabase, 'lookup'>;
  verifier: Pick<PasswordVerifier, 'verify'>;
  /** A LoginThrottle, or with several workers the primary's. */
  throttle: FailureThrottle;
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
  private readonly passwords: PasswordLogin;

  constructor(deps: LoginDeps) {
    this.deps = deps;
    this.passwords = new PasswordLogin(deps);
  }

  /** USER/PASS and AUTH: check the password against the stored hash. */
  login(user: string, password: string, client: LoginClient): Promise<LoginOutcome> {
    return this.passwords.password(user, password, client).then((checked) => this.afterCheck(user, checked, client));
  }

  /** APOP: MD5(banner + secret), possible only for users whose secret is stored in the clear. */
  apop(user: string, banner: string, digest: string, client: LoginClient): Promise<LoginOutcome> {
    return this.passwords.apop(user, banner, digest, client).then((checked) => this.afterCheck(user, checked, client));
  }

  private async afterCheck(user: string, checked: PasswordOutcome, client: LoginClient): Promise<LoginOutcome> {
    const d = this.deps;
    switch (checked.result) {
      case 'throttled':
        loginsTotal.inc({ result: 'throttled' });
        return { result: 'throttled' };
      case 'failed':
        loginsTotal.inc({ result: 'failure' });
        return { result: 'failed' };
      case 'temporary':
        return { result: 'temporary', reason: 'password check failed' };
      case 'ok':
        break;
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
      grantRenewals.inc({ result: 'none' });
      return;
    }
    if (d.denyGrantNetworks.contains(address)) {
      grantRenewals.inc({ result: 'denied' });
      d.log.info('grant_denied_by_network', { session: client.sessionId });
      return;
    }
    const started = process.hrtime.bigint();
    const write = d.renewer.renew(address, user, 'pop3', { proxyPeer: client.proxyPeer }).then(
      (outcome) => {
        grantRenewals.inc({ result: outcome });
        return outcome;
      },
      (err: unknown) => {
        grantRenewals.inc({ result: 'failed' });
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
      grantRenewals.inc({ result: 'timeout' });
      d.log.warn('grant_write_slow', { session: client.sessionId, waitedMs: d.loginWaitForGrantMs });
    }
  }
}
