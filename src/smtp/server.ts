// The SMTP listener: our own sockets (PROXY header from trusted proxies only, connection limits,
// implicit TLS), handed to smtp-server's connection state machine with the real client address;
// the relay gate at RCPT; local delivery and onward relay at DATA.
import crypto from 'node:crypto';
import net from 'node:net';
import { Duplex } from 'node:stream';
import { SMTPServer, type SMTPServerDataStream, type SMTPServerOptions, type SMTPServerSession } from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import { PasswordLogin, type PasswordLoginDeps } from '../auth/login.ts';
import type { GrantLookup, GrantMatch } from '../grants/types.ts';
import type { RelayLimitGate, RelaySubject } from '../limits/gate.ts';
import { stageMaildirDelivery, type StagedDelivery } from '../mail/deliver.ts';
import { maildirPathFor } from '../mail/paths.ts';
import { ConnectionLimiter, RateLimiter } from '../net/limits.ts';
import { countProxyHeaderError } from '../net/metrics.ts';
import { ProxyProtocolError, readProxyHeader } from '../net/proxy.ts';
import { TlsReloader } from '../net/tls.ts';
import type { Logger } from '../observability/log.ts';
import type { SmtpConfig } from './config.ts';
import { MaildirLocalUsers } from './local-users.ts';
import {
  liveLookups,
  relayDecisions,
  smtpAuth,
  smtpConnections,
  smtpMessageSize,
  smtpMessages,
  smtpSessionsActive,
  smtpUpstreamSeconds,
} from './metrics.ts';
import { OutboxOnward, SmarthostOnward, SmtpReplyError, type Onward } from './onward.ts';
import { receivedHeader } from './received.ts';
import { asciiText, hasNonAsciiLocalPart, LiveGrantLookup, RelayPolicy, type LocalUsers, type RelayDecision } from './relay-policy.ts';

/** What SMTP AUTH checks passwords against (the users file the POP3 role uses), and its throttle. */
export type SmtpAuthDeps = Pick<PasswordLoginDeps, 'users' | 'verifier' | 'throttle'>;

export interface SmtpDeps {
  grants: GrantLookup;
  /** Needed when `auth.enabled`; otherwise AUTH is not offered. */
  auth?: SmtpAuthDeps;
  /** One GET of the grant object covering `ip` (undefined on 404); enables live lookups. */
  liveLookup?: (ip: string) => Promise<GrantMatch | undefined>;
  log: Logger;
  /** Defaults to "a Maildir exists for the user". */
  localUsers?: LocalUsers;
  /** Per-user and per-address relay limits (src/limits/); none: no limits. */
  limits?: RelayLimitGate;
  now?: () => number;
}

export interface RunningSmtpServer {
  readonly port: number;
  readonly implicitTlsPort: number | undefined;
  /** Stop listening, end open sessions with 421, and close the smarthost pool. */
  close(): Promise<void>;
}

/** Per-session state of ours, beside smtp-server's session object. */
interface SessionState {
  /** The address relay decisions use; undefined for PROXY UNKNOWN/LOCAL (never relays). */
  clientIp: string | undefined;
  release: () => void;
  /** Current transaction: local recipient -> user, relayed recipients, how relay was allowed. */
  local: Map<string, string>;
  relayed: string[];
  authorization: string | undefined;
  /** The transaction's MAIL had SMTPUTF8: its replies may carry UTF-8. */
  utf8: boolean;
  /** Whom the transaction's relayed recipients count against (relay limits). */
  limitedAs: RelaySubject | undefined;
}

interface SocketInfo {
  clientIp: string | undefined;
  release: () => void;
}

const NO_RELAY = '(proxy did not name the client)';

/** kubedrac_smtp_auth_total's result label, named as kubedrac_pop3_logins_total's. */
const AUTH_RESULT = { ok: 'success', failed: 'failure', throttled: 'throttled', temporary: 'temporary' } as const;

/**
 * A non-ASCII mailbox name can only be sent with SMTPUTF8 (RFC 6531 3.2, Postfix's wording). A
 * non-ASCII domain is fine: smtp-server hands over A-labels (`xn--`) in Unicode form, and replies
 * show them as A-labels again.
 */
const SMTPUTF8_REQUIRED = () => new SmtpReplyError(553, '5.6.7 Must declare SMTPUTF8 to send unicode address');

export async function startSmtpServer(config: SmtpConfig, deps: SmtpDeps): Promise<RunningSmtpServer> {
  const log = deps.log;
  const now = deps.now ?? Date.now;
  const localUsers = deps.localUsers ?? new MaildirLocalUsers(config.mailRoot, config.mailLocation);
  let live: LiveGrantLookup | undefined;
  if (deps.liveLookup !== undefined && config.liveLookup.enabled) {
    const bucket = new RateLimiter({
      capacity: config.liveLookup.ratePerSecond,
      refillPerSecond: config.liveLookup.ratePerSecond,
      maxKeys: 1,
    });
    live = new LiveGrantLookup({
      fetch: deps.liveLookup,
      tryAcquire: () => bucket.take('global'),
      cacheTtlMs: config.liveLookup.cacheTtlMs,
      foundTtlMs: config.liveLookup.positiveCacheTtlMs,
    });
  }
  const policy = new RelayPolicy({
    localDomains: config.localDomains,
    localUsers,
    trustedNetworks: config.trustedNetworks,
    grants: deps.grants,
    liveLookup: live,
    now,
  });
  const onward: Onward = config.smarthost
    ? new SmarthostOnward(config.smarthost, config.hostname)
    : new OutboxOnward(config.outbox as string, config.hostname);
  const limiter = new ConnectionLimiter({ maxTotal: config.maxClients, maxPerAddress: config.maxClientsPerAddress });
  const tlsReloader = config.tls ? new TlsReloader({ ...config.tls, log }) : undefined;
  const authEnabled = config.auth.enabled && deps.auth !== undefined && tlsReloader !== undefined;
  if (config.auth.enabled && !authEnabled) log.warn('smtp_auth_unavailable', { reason: 'no users file or TLS' });
  const passwords = authEnabled && deps.auth ? new PasswordLogin({ ...deps.auth, failureDelayMs: config.login.failureDelayMs, log, now }) : undefined;

  // Sockets carry what we learned before smtp-server saw them; sessions carry our transaction.
  const socketInfo = new WeakMap<net.Socket | Duplex, SocketInfo>();
  const sessions = new Map<string, SessionState>();
  /** Message bytes held in memory by all sessions together (bounded by maxBufferedBytes). */
  let buffered = 0;

  const stateOf = (session: SMTPServerSession): SessionState => {
    const st = sessions.get(session.id);
    if (!st) throw new SmtpReplyError(421, '4.3.0 Session state lost, closing');
    return st;
  };

  const disabledFor = (secure: boolean): string[] => {
    const off = ['XCLIENT', 'XFORWARD', 'WIZ', 'SHELL', 'KILL'];
    if (!tlsReloader) off.push('STARTTLS');
    if (secure) off.push('STARTTLS');
    if (!secure || !authEnabled) off.push('AUTH');
    return off;
  };

  const options = (secure: boolean): SMTPServerOptions => ({
    name: config.hostname,
    banner: 'kube-drac',
    secure,
    size: config.maxMessageSize,
    maxRecipients: config.maxRecipients,
    maxCommandLength: config.maxLineLength,
    socketTimeout: config.idleTimeoutMs,
    closeTimeout: 1000,
    disableReverseLookup: !config.reverseDns,
    useXClient: false,
    useXForward: false,
    authOptional: true,
    authMethods: ['PLAIN', 'LOGIN'],
    hideSTARTTLS: !tlsReloader || secure,
    // We write enhanced status codes into our own texts; smtp-server's mapping stays off.
    hideENHANCEDSTATUSCODES: true,
    hideDSN: true,
    hideREQUIRETLS: true,
    disabledCommands: disabledFor(secure),
    logger: false,
    ...(tlsReloader ? tlsReloader.serverOptions() : {}),
    onConnect(session, callback) {
      const info = socketInfo.get(findSocket(session.id));
      if (!info) return callback(new SmtpReplyError(421, '4.3.0 Connection state lost, closing'));
      sessions.set(session.id, { clientIp: info.clientIp, release: info.release, local: new Map(), relayed: [], authorization: undefined, utf8: false, limitedAs: undefined });
      session.disabledCommands = disabledFor(session.secure);
      smtpSessionsActive.inc();
      callback();
    },
    onSecure(_socket, session, callback) {
      session.disabledCommands = disabledFor(true);
      callback();
    },
    onAuth(auth, session, callback) {
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
    onMailFrom(address, session, callback) {
      try {
        const st = stateOf(session);
        st.local = new Map();
        st.relayed = [];
        st.authorization = undefined;
        st.limitedAs = undefined;
        st.utf8 = address.args !== false && (address.args as Record<string, unknown>).SMTPUTF8 === true;
        if (!st.utf8 && hasNonAsciiLocalPart(address.address)) return callback(SMTPUTF8_REQUIRED());
        callback();
      } catch (err) {
        callback(err as Error);
      }
    },
    onRcptTo(address, session, callback) {
      let st: SessionState;
      try {
        st = stateOf(session);
      } catch (err) {
        return callback(err as Error);
      }
      if (!st.utf8 && hasNonAsciiLocalPart(address.address)) return callback(SMTPUTF8_REQUIRED());
      const user = typeof session.user === 'string' ? session.user : undefined;
      const decided = policy.decide({ clientIp: st.clientIp ?? NO_RELAY, recipient: address.address, authUser: user, asciiReplies: !st.utf8 });
      const apply = (d: RelayDecision) => {
        relayDecisions.inc({ decision: d.decision, reason: d.reason });
        if (d.liveLookup) liveLookups.inc({ result: d.liveLookup });
        if (d.decision !== 'allowed') {
          log.info('rcpt_refused', { session: session.id, client: st.clientIp, decision: d.decision, reason: d.reason });
          return callback(new SmtpReplyError(d.code ?? 550, d.message ?? '5.7.1 Refused'));
        }
        if (d.localUser !== undefined) st.local.set(address.address, d.localUser);
        else {
          const subject = deps.limits?.subjectOf(d, user);
          const limited = subject && deps.limits?.refusal(subject, st.relayed.length, { session: session.id, client: st.clientIp });
          if (limited) return callback(new SmtpReplyError(limited.code, limited.message));
          st.limitedAs ??= subject;
          if (!st.relayed.includes(address.address)) st.relayed.push(address.address);
          st.authorization ??= d.authorization;
        }
        callback();
      };
      if (decided instanceof Promise) decided.then(apply, (err: unknown) => callback(err as Error));
      else apply(decided);
    },
    onData(stream, session, callback) {
      receiveMessage(stream, session).then(
        (text) => callback(null, text),
        (err: unknown) => callback(err as Error),
      );
    },
    onClose(session) {
      const st = sessions.get(session.id);
      if (st) {
        sessions.delete(session.id);
        smtpSessionsActive.dec();
        st.release();
      }
    },
  });

  const plainServer = new SMTPServer(options(false));
  const secureServer = tlsReloader ? new SMTPServer(options(true)) : undefined;
  for (const s of [plainServer, secureServer]) {
    s?.on('error', (err: Error) => log.warn('smtp_connection_error', { error: err.message }));
  }
  if (tlsReloader) {
    tlsReloader.onReload((ctx) => {
      plainServer.secureContext.set('*', ctx);
      secureServer?.secureContext.set('*', ctx);
    });
  }

  // smtp-server gives handlers the session, not the socket: map the session id to its socket.
  const socketsById = new Map<string, net.Socket | Duplex>();
  const findSocket = (id: string): net.Socket | Duplex => socketsById.get(id) as net.Socket | Duplex;

  async function receiveMessage(stream: SMTPServerDataStream, session: SMTPServerSession): Promise<string> {
    const st = stateOf(session);
    const chunks: Buffer[] = [];
    let size = 0;
    let overBudget = false;
    try {
      await new Promise<void>((resolve, reject) => {
        stream.on('data', (chunk: Buffer) => {
          // Past a limit the rest is read and dropped, so the session stays in step.
          if (stream.sizeExceeded || overBudget) return;
          if (buffered + chunk.length > config.maxBufferedBytes) {
            overBudget = true;
            return;
          }
          chunks.push(chunk);
          size += chunk.length;
          buffered += chunk.length;
        });
        stream.once('end', () => resolve());
        stream.once('error', reject);
        // The client went away mid-message: smtp-server destroys the stream, maybe without an error.
        stream.once('close', () => reject(new SmtpReplyError(421, '4.4.2 Connection lost during DATA')));
      });
      if (stream.sizeExceeded) {
        smtpMessages.inc({ result: 'rejected' });
        throw new SmtpReplyError(552, `5.3.4 Message size exceeds fixed limit of ${config.maxMessageSize} bytes`);
      }
      if (overBudget) {
        smtpMessages.inc({ result: 'tempfail' });
        log.warn('buffer_budget_exhausted', { session: session.id, maxBufferedBytes: config.maxBufferedBytes });
        throw new SmtpReplyError(452, '4.3.1 Insufficient system resources, try again later');
      }
      return await acceptMessage(session, st, Buffer.concat(chunks, size), size);
    } finally {
      buffered -= size;
    }
  }

  async function acceptMessage(session: SMTPServerSession, st: SessionState, body: Buffer, size: number): Promise<string> {
    const from = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
    const recipients = session.envelope.rcptTo.map((r) => r.address);
    const header = receivedHeader({
      helo: session.hostNameAppearsAs,
      clientAddress: session.remoteAddress,
      by: config.hostname,
      protocol: session.transmissionType,
      id: session.id,
      authorization: st.relayed.length > 0 ? (st.authorization ?? 'relay') : 'local delivery',
      recipients,
      nowMs: now(),
    });
    const message = Buffer.concat([Buffer.from(header), body]);

    // Local copies first, invisible in tmp/; they appear only if the relayed copy is accepted.
    const staged: StagedDelivery[] = [];
    const abortAll = () => Promise.all(staged.map((s) => s.abort().catch(() => undefined)));
    const users = new Map<string, string>();
    for (const [rcpt, user] of st.local) if (!users.has(user)) users.set(user, rcpt);
    try {
      for (const [user, rcpt] of users) {
        const dir = maildirPathFor(config.mailRoot, config.mailLocation, user);
        const prefix = Buffer.from(`Delivered-To: <${rcpt}>\r\nReturn-Path: <${from}>\r\n`);
        staged.push(await stageMaildirDelivery(dir, Buffer.concat([prefix, message]), { hostname: config.hostname }));
      }
    } catch (err) {
      await abortAll();
      log.error('local_delivery_failed', { session: session.id, error: err as Error });
      smtpMessages.inc({ result: 'tempfail' });
      throw new SmtpReplyError(451, '4.3.0 Local delivery failed, try again later');
    }
    let relayNote = '';
    if (st.relayed.length > 0) {
      const started = performance.now();
      try {
        const { result, staged: outboxCopy } = await onward.stage({ from, to: st.relayed, raw: message });
        if (outboxCopy) staged.push(outboxCopy);
        if (result.rejected.length > 0) {
          // The upstream refused some recipients after we had said yes to all of them; the
          // sender got a bounce (SmarthostOnward), and we keep a trace.
          log.warn('upstream_partial_rejection', { session: session.id, rejected: result.rejected.length, bounced: from !== '' });
        }
        relayNote = result.response;
      } catch (err) {
        await abortAll();
        const reply = err instanceof SmtpReplyError ? err : new SmtpReplyError(451, '4.3.0 Relay failed, try again later');
        smtpMessages.inc({ result: reply.responseCode >= 500 ? 'rejected' : 'tempfail' });
        log.warn('relay_failed', { session: session.id, code: reply.responseCode, reply: reply.message });
        // The upstream's text may quote a UTF-8 address; a client without SMTPUTF8 gets ASCII.
        throw st.utf8 ? reply : new SmtpReplyError(reply.responseCode, asciiText(reply.message));
      } finally {
        smtpUpstreamSeconds.observe((performance.now() - started) / 1000);
      }
    }
    try {
      for (const s of staged) await s.commit();
    } catch (err) {
      log.error('local_delivery_failed', { session: session.id, error: err as Error });
      smtpMessages.inc({ result: 'tempfail' });
      throw new SmtpReplyError(451, '4.3.0 Local delivery failed, try again later');
    }
    if (st.limitedAs !== undefined && st.relayed.length > 0) deps.limits?.count(st.limitedAs, st.relayed.length);
    smtpMessageSize.observe(size);
    if (users.size > 0) smtpMessages.inc({ result: 'delivered' });
    if (st.relayed.length > 0) smtpMessages.inc({ result: 'relayed' });
    log.info('message_accepted', {
      session: session.id,
      client: st.clientIp,
      size,
      local: users.size,
      relayed: st.relayed.length,
      authorization: st.relayed.length > 0 ? st.authorization : undefined,
      upstream: relayNote || undefined,
    });
    return `2.0.0 Ok: queued as ${session.id}`;
  }

  /** Hand a socket to smtp-server with the client address we determined. */
  function hand(server: SMTPServer, socket: net.Socket | Duplex, raw: net.Socket, client: { address: string; port: number } | null) {
    const id = BigInt(`0x${crypto.randomBytes(10).toString('hex')}`).toString(32).padStart(16, '0');
    const address = client?.address ?? raw.remoteAddress ?? '';
    const acquired = limiter.acquire(address);
    if (!acquired.ok) {
      raw.end(`421 4.7.0 ${config.hostname} Too many connections${acquired.reason === 'per-address' ? ' from your address' : ''}, try again later\r\n`);
      raw.destroySoon();
      return;
    }
    smtpConnections.inc();
    socketsById.set(id, socket);
    socketInfo.set(socket, {
      clientIp: client === null && raw.remoteAddress !== undefined && isProxied(raw) ? undefined : address,
      release: () => {
        acquired.release();
        socketsById.delete(id);
      },
    });
    // smtp-server's connect() with our address, and our greeting delay instead of its fixed 100 ms.
    const conn = new SMTPConnection(server, socket as net.Socket, {
      id,
      remoteAddress: address,
      remotePort: client?.port ?? raw.remotePort,
      localAddress: raw.localAddress,
      localPort: raw.localPort,
      ignore: false,
    });
    server.connections.add(conn);
    conn.on('error', (err: Error) => log.debug('smtp_session_error', { session: id, error: err.message }));
    raw.once('close', () => {
      // A session that never reached onConnect (refused, dropped) still gives its slot back.
      if (!sessions.has(id)) socketInfo.get(socket)?.release();
    });
    conn._setListeners(() => {
      if (config.greetingDelayMs > 0) setTimeout(() => conn.connectionReady(), config.greetingDelayMs).unref();
      else conn.connectionReady();
    });
  }

  const proxiedSockets = new WeakSet<net.Socket>();
  const isProxied = (raw: net.Socket) => proxiedSockets.has(raw);

  function accept(server: SMTPServer, secure: boolean, raw: net.Socket) {
    raw.on('error', () => undefined);
    const peer = raw.remoteAddress;
    const proceed = (client: { address: string; port: number } | null, rest: Buffer) => {
      if (!secure) {
        if (rest.length > 0) raw.unshift(rest);
        hand(server, raw, raw, client);
        return;
      }
      // A TLS socket over a net.Socket reads its handle directly and would miss bytes already
      // read past the PROXY header (the ClientHello): wrap the socket in a stream then.
      let transport: net.Socket | Duplex = raw;
      if (rest.length > 0) {
        raw.unshift(rest);
        const wrapped = Duplex.from({ readable: raw, writable: raw });
        // smtp-server's _upgrade calls setTimeout on what it is given, a method a plain Duplex
        // lacks (the TypeError would end the process): the timeout is the socket's.
        transport = Object.assign(wrapped, {
          setTimeout: (ms: number, callback?: () => void) => {
            raw.setTimeout(ms, callback);
            return wrapped;
          },
        });
      }
      server._upgrade(transport as net.Socket, (err, tlsSocket) => {
        if (err || !tlsSocket) {
          raw.destroy();
          return;
        }
        hand(server, tlsSocket, raw, client);
      });
    };
    if (peer !== undefined && config.trustedProxies.contains(peer)) {
      proxiedSockets.add(raw);
      readProxyHeader(raw, { trustedProxies: config.trustedProxies, timeoutMs: config.proxyHeaderTimeoutMs }).then(
        ({ client, rest }) => proceed(client, rest),
        (err: unknown) => {
          const reason = err instanceof ProxyProtocolError ? err.reason : 'malformed';
          countProxyHeaderError('smtp', reason);
          log.info('proxy_header_refused', { peer, reason });
          raw.destroy();
        },
      );
    } else {
      proceed(null, Buffer.alloc(0));
    }
  }

  const listen = (server: SMTPServer, secure: boolean, port: number): Promise<net.Server> =>
    new Promise((resolve, reject) => {
      const l = net.createServer({ pauseOnConnect: false }, (raw) => accept(server, secure, raw));
      l.once('error', reject);
      l.listen(port, config.listen.host, () => {
        l.off('error', reject);
        l.on('error', (err) => log.error('smtp_listener_error', { error: err.message }));
        resolve(l);
      });
    });

  const listeners: net.Server[] = [await listen(plainServer, false, config.listen.port)];
  if (secureServer && config.implicitTlsPort !== undefined) {
    listeners.push(await listen(secureServer, true, config.implicitTlsPort));
  }
  const portOf = (l: net.Server | undefined) => (l ? (l.address() as net.AddressInfo).port : undefined);
  const port = portOf(listeners[0]) as number;
  const implicitTlsPort = portOf(listeners[1]);
  log.info('smtp_listening', { host: config.listen.host, port, implicitTlsPort });

  return {
    port,
    implicitTlsPort,
    async close() {
      const closed = listeners.map((l) => new Promise<void>((resolve) => l.close(() => resolve())));
      for (const s of [plainServer, secureServer]) {
        for (const conn of s?.connections ?? []) {
          conn.send(421, '4.3.2 Server shutting down');
          conn.close();
        }
      }
      for (const socket of socketsById.values()) socket.destroy();
      await Promise.all(closed);
      onward.close();
      tlsReloader?.close();
    },
  };
}
