// The session handlers smtp-server calls: connect, STARTTLS, AUTH, MAIL, RCPT (the relay gate),
// DATA (handed to MessageAcceptance) and close. Our per-session state lives here, beside
// smtp-server's session object; the socket side (limits, client address) lives in server.ts.
import type { SMTPServerOptions, SMTPServerSession } from 'smtp-server';
import type { PasswordLogin } from '../auth/login.ts';
import type { Logger } from '../observability/log.ts';
import type { MessageAcceptance, Transaction } from './message.ts';
import { liveLookups, relayDecisions, smtpAuth, smtpSessionsActive } from './metrics.ts';
import { SmtpReplyError } from './onward.ts';
import { hasNonAsciiLocalPart, type RelayDecision, type RelayPolicy } from './relay-policy.ts';

/** What server.ts learned about a session's connection before smtp-server saw it. */
export interface ConnectionInfo {
  /** The address relay decisions use; undefined for PROXY UNKNOWN/LOCAL (never relays). */
  clientIp: string | undefined;
  /** Give the connection's slot back (idempotent). */
  release: () => void;
}

/** Per-session state of ours: the connection, and the current transaction. */
interface SessionState extends Transaction {
  release: () => void;
}

export interface SessionHandlerDeps {
  policy: RelayPolicy;
  acceptance: MessageAcceptance;
  /** Present when AUTH is offered (on TLS only). */
  passwords: PasswordLogin | undefined;
  /** STARTTLS can be offered (a certificate is configured). */
  tls: boolean;
  /** The connection a session id was started on (see server.ts). */
  connectionOf: (sessionId: string) => ConnectionInfo | undefined;
  log: Logger;
}

export type SessionHandlers = Pick<SMTPServerOptions, 'onConnect' | 'onSecure' | 'onAuth' | 'onMailFrom' | 'onRcptTo' | 'onData' | 'onClose'>;

const NO_RELAY = '(proxy did not name the client)';

/** kubedrac_smtp_auth_total's result label, named as kubedrac_pop3_logins_total's. */
const AUTH_RESULT = { ok: 'success', failed: 'failure', throttled: 'throttled', temporary: 'temporary' } as const;

/** Our state of a session smtp-server still runs is gone (never expected): end it. */
const SESSION_LOST = () => new SmtpReplyError(421, '4.3.0 Session state lost, closing');

/**
 * A non-ASCII mailbox name can only be sent with SMTPUTF8 (RFC 6531 3.2, Postfix's wording). A
 * non-ASCII domain is fine: smtp-server hands over A-labels (`xn--`) in Unicode form, and replies
 * show them as A-labels again.
 */
const SMTPUTF8_REQUIRED = () => new SmtpReplyError(553, '5.6.7 Must declare SMTPUTF8 to send unicode address');

/** The commands a session may not use, by whether it is on TLS. */
export function disabledCommands(secure: boolean, opts: { tls: boolean; auth: boolean }): string[] {
  const off = ['XCLIENT', 'XFORWARD', 'WIZ', 'SHELL', 'KILL'];
  if (!opts.tls) off.push('STARTTLS');
  if (secure) off.push('STARTTLS');
  if (!secure || !opts.auth) off.push('AUTH');
  return off;
}

/** The sessions of one SMTP server (both listeners), and the handlers smtp-server calls for them. */
export class SmtpSessions {
  private readonly deps: SessionHandlerDeps;
  private readonly sessions = new Map<string, SessionState>();

  constructor(deps: SessionHandlerDeps) {
    this.deps = deps;
  }

  /** Whether smtp-server has started a session (onConnect) on this id. */
  has(sessionId: string): boolean {
    return this.sessions.has(sessionId);
  }

  private disabledFor(secure: boolean): string[] {
    return disabledCommands(secure, { tls: this.deps.tls, auth: this.deps.passwords !== undefined });
  }

  /**
   * The relay gate, once a decision is in for one recipient: counted and logged; an allowed
   * recipient joins the transaction as local or relayed. The refusal to answer, or undefined.
   */
  private admitRecipient(session: SMTPServerSession, st: SessionState, recipient: string, d: RelayDecision): SmtpReplyError | undefined {
    relayDecisions.inc({ decision: d.decision, reason: d.reason });
    if (d.liveLookup) liveLookups.inc({ result: d.liveLookup });
    if (d.decision !== 'allowed') {
      this.deps.log.info('rcpt_refused', { session: session.id, client: st.clientIp, decision: d.decision, reason: d.reason });
      return new SmtpReplyError(d.code ?? 550, d.message ?? '5.7.1 Refused');
    }
    if (d.localUser !== undefined) st.local.set(recipient, d.localUser);
    else {
      if (!st.relayed.includes(recipient)) st.relayed.push(recipient);
      st.authorization ??= d.authorization;
    }
    return undefined;
  }

  /** The handlers for smtp-server's options. */
  handlers(): SessionHandlers {
    const { deps, sessions } = this;
    return {
      onConnect: (session, callback) => {
        const info = deps.connectionOf(session.id);
        if (!info) return callback(new SmtpReplyError(421, '4.3.0 Connection state lost, closing'));
        sessions.set(session.id, { clientIp: info.clientIp, release: info.release, local: new Map(), relayed: [], authorization: undefined, utf8: false });
        session.disabledCommands = this.disabledFor(session.secure);
        smtpSessionsActive.inc();
        callback();
      },
      onSecure: (_socket, session, callback) => {
        session.disabledCommands = this.disabledFor(true);
        callback();
      },
      onAuth: (auth, session, callback) => {
        const passwords = deps.passwords;
        if (passwords === undefined) return callback(new SmtpReplyError(502, '5.5.1 AUTH not available'));
        if (!session.secure) return callback(new SmtpReplyError(538, '5.7.11 Encryption required for requested authentication mechanism'));
        const user = auth.username ?? '';
        // The same guards as a POP3 login: throttle, decoy hash for unknown users, failure delay,
        // user-name check, nologin (src/auth/login.ts).
        passwords.password(user, auth.password ?? '', { throttleAddress: session.remoteAddress, sessionId: session.id }).then(
          (outcome) => {
            smtpAuth.inc({ result: AUTH_RESULT[outcome.result] });
            switch (outcome.result) {
              case 'ok':
                return callback(null, { user });
              case 'failed':
                return callback(new SmtpReplyError(535, '5.7.8 Authentication credentials invalid'));
              case 'throttled':
                return callback(new SmtpReplyError(454, '4.7.0 Too many failed authentications, try again later'));
              case 'temporary':
                return callback(new SmtpReplyError(454, '4.7.0 Temporary authentication failure'));
            }
          },
          () => callback(new SmtpReplyError(454, '4.7.0 Temporary authentication failure')),
        );
      },
      onMailFrom: (address, session, callback) => {
        const st = sessions.get(session.id);
        if (!st) return callback(SESSION_LOST());
        st.local = new Map();
        st.relayed = [];
        st.authorization = undefined;
        st.utf8 = address.args !== false && (address.args as Record<string, unknown>).SMTPUTF8 === true;
        if (!st.utf8 && hasNonAsciiLocalPart(address.address)) return callback(SMTPUTF8_REQUIRED());
        callback();
      },
      onRcptTo: (address, session, callback) => {
        const st = sessions.get(session.id);
        if (!st) return callback(SESSION_LOST());
        if (!st.utf8 && hasNonAsciiLocalPart(address.address)) return callback(SMTPUTF8_REQUIRED());
        const user = typeof session.user === 'string' ? session.user : undefined;
        const decided = deps.policy.decide({ clientIp: st.clientIp ?? NO_RELAY, recipient: address.address, authUser: user, asciiReplies: !st.utf8 });
        // Most decisions are synchronous (the cache); only a live lookup waits.
        if (decided instanceof Promise) {
          decided.then(
            (d) => callback(this.admitRecipient(session, st, address.address, d)),
            (err: unknown) => callback(err as Error),
          );
        } else callback(this.admitRecipient(session, st, address.address, decided));
      },
      onData: (stream, session, callback) => {
        const st = sessions.get(session.id);
        if (!st) return callback(SESSION_LOST());
        deps.acceptance.receive(stream, session, st).then(
          (text) => callback(null, text),
          (err: unknown) => callback(err as Error),
        );
      },
      onClose: (session) => {
        const st = sessions.get(session.id);
        if (st) {
          sessions.delete(session.id);
          smtpSessionsActive.dec();
          st.release();
        }
      },
    };
  }
}
