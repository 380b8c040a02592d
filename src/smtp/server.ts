// The SMTP listener: our own sockets (PROXY header from trusted proxies only, connection limits,
// implicit TLS), handed to smtp-server's connection state machine with the real client address
// (smtp-server-internals.ts). The session handlers, with the relay gate at RCPT, are in
// session.ts; message acceptance at DATA (local delivery, onward relay) is in message.ts.
import net from 'node:net';
import { Duplex } from 'node:stream';
import { SMTPServer, type SMTPServerOptions } from 'smtp-server';
import { PasswordLogin, type PasswordLoginDeps } from '../auth/login.ts';
import type { GrantLookup, GrantMatch } from '../grants/types.ts';
import { acceptConnection, type AcceptedConnection } from '../net/accept.ts';
import { ConnectionLimiter, RateLimiter } from '../net/limits.ts';
import { TlsReloader } from '../net/tls.ts';
import type { Logger } from '../observability/log.ts';
import type { SmtpConfig } from './config.ts';
import { MaildirLocalUsers } from './local-users.ts';
import { MessageAcceptance } from './message.ts';
import { smtpConnections } from './metrics.ts';
import { OutboxOnward, SmarthostOnward, type Onward } from './onward.ts';
import { LiveGrantLookup, RelayPolicy, type LocalUsers } from './relay-policy.ts';
import { disabledCommands, SmtpSessions, type ConnectionInfo } from './session.ts';
import { assertSmtpServerInternals, endSessions, newSessionId, startSession, upgradeToTls } from './smtp-server-internals.ts';

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
  now?: () => number;
}

export interface RunningSmtpServer {
  readonly port: number;
  readonly implicitTlsPort: number | undefined;
  /** Stop listening, end open sessions with 421, and close the smarthost pool. */
  close(): Promise<void>;
}

export async function startSmtpServer(config: SmtpConfig, deps: SmtpDeps): Promise<RunningSmtpServer> {
  assertSmtpServerInternals();
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

  // smtp-server gives handlers the session, not the socket: each session id maps to what we
  // learned about its connection before smtp-server saw it, and to its socket (for close()).
  const connections = new Map<string, ConnectionInfo & { socket: net.Socket | Duplex }>();
  const sessions = new SmtpSessions({
    policy,
    acceptance: new MessageAcceptance(config, { onward, log, now }),
    passwords,
    tls: tlsReloader !== undefined,
    connectionOf: (id) => connections.get(id),
    log,
  });

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
    disabledCommands: disabledCommands(secure, { tls: tlsReloader !== undefined, auth: authEnabled }),
    logger: false,
    ...(tlsReloader ? tlsReloader.serverOptions() : {}),
    ...sessions.handlers(),
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

  /** Start smtp-server's session on `socket` (the raw socket, or TLS over it) for an accepted client. */
  function hand(server: SMTPServer, socket: net.Socket | Duplex, raw: net.Socket, accepted: AcceptedConnection, release: () => void) {
    const id = newSessionId();
    const { client, peer } = accepted;
    smtpConnections.inc();
    connections.set(id, {
      socket,
      clientIp: client?.address,
      release: () => {
        release();
        connections.delete(id);
      },
    });
    raw.once('close', () => {
      // A session that never reached onConnect (refused, dropped) is forgotten too.
      if (!sessions.has(id)) connections.get(id)?.release();
    });
    const addresses = { id, remoteAddress: client?.address ?? peer, remotePort: client?.port ?? raw.remotePort, localAddress: raw.localAddress, localPort: raw.localPort };
    startSession(server, socket, addresses, config.greetingDelayMs, (err) => log.debug('smtp_session_error', { session: id, error: err.message }));
  }

  async function accept(server: SMTPServer, secure: boolean, raw: net.Socket) {
    raw.on('error', () => undefined);
    const accepted = await acceptConnection(raw, { role: 'smtp', trustedProxies: config.trustedProxies, proxyHeaderTimeoutMs: config.proxyHeaderTimeoutMs, limiter, log });
    if (accepted === undefined) return;
    const { slot } = accepted;
    if (!slot.ok) {
      // On the implicit-TLS port nothing may be said before TLS: just close.
      if (secure) raw.destroy();
      else {
        raw.end(`421 4.7.0 ${config.hostname} Too many connections${slot.reason === 'per-address' ? ' from your address' : ''}, try again later\r\n`);
        raw.destroySoon();
      }
      return;
    }
    // Whatever happens from here (a TLS handshake that never ends, too), a closed socket's slot is free.
    raw.once('close', slot.release);
    if (!secure) {
      hand(server, raw, raw, accepted, slot.release);
      return;
    }
    // A TLS socket over a net.Socket reads its handle directly and would miss bytes already
    // read past the PROXY header (the ClientHello): wrap the socket in a stream then.
    const transport = accepted.readPastHeader ? Duplex.from({ readable: raw, writable: raw }) : raw;
    upgradeToTls(server, transport, raw, (err, tlsSocket) => {
      if (err || !tlsSocket) {
        slot.release();
        raw.destroy();
        return;
      }
      hand(server, tlsSocket, raw, accepted, slot.release);
    });
  }

  const listen = (server: SMTPServer, secure: boolean, port: number): Promise<net.Server> =>
    new Promise((resolve, reject) => {
      const l = net.createServer({ pauseOnConnect: false }, (raw) => {
        accept(server, secure, raw).catch((err: unknown) => {
          log.error('accept_failed', { error: err as Error });
          raw.destroy();
        });
      });
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
      for (const s of [plainServer, secureServer]) if (s) endSessions(s, 421, '4.3.2 Server shutting down');
      for (const { socket } of connections.values()) socket.destroy();
      await Promise.all(closed);
      onward.close();
      tlsReloader?.close();
    },
  };
}
