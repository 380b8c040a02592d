// The POP3 server: sockets, PROXY headers, TLS (STLS and implicit), limits and timeouts around
// the Pop3Session state machine.
import crypto from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import type { FailureThrottle } from '../auth/login.ts';
import { UserDatabase } from '../auth/passwd-file.ts';
import { LoginThrottle } from '../auth/throttle.ts';
import { PasswordVerifier } from '../auth/verifier.ts';
import type { GrantRenewer } from '../grants/types.ts';
import { acceptConnection } from '../net/accept.ts';
import { ConnectionLimiter, RateLimiter } from '../net/limits.ts';
import { TlsReloader } from '../net/tls.ts';
import { inlineIo, pooledIo } from '../mail/io.ts';
import type { Logger } from '../observability/log.ts';
import type { Pop3Config } from './config.ts';
import { Pop3Login, type LoginClient } from './login.ts';
import { openMaildrop } from './maildrop.ts';
import { MailRootProbe } from './readiness.ts';
import { connectionsRefused, connectionsTotal, deletedMessages, retrievedBytes, sessionsActive, tlsHandshakes } from './metrics.ts';
import type { SessionIo } from './session.ts';
import { Pop3Session } from './session.ts';
import type { SharedLimiter } from './shared.ts';

export interface Pop3ServerDeps {
  renewer: GrantRenewer;
  log: Logger;
  /** With several workers, the primary's throttle and session limits (see shared.ts); else our own. */
  throttle?: FailureThrottle;
  limiter?: SharedLimiter;
  /**
   * Bind listeners of our own with SO_REUSEPORT (a cluster worker: the kernel spreads the
   * connections over the workers' sockets) instead of sharing the cluster primary's.
   */
  reusePort?: boolean;
}

export interface Pop3Server {
  /** The plain (STLS) port actually bound. */
  port: number;
  /** The POP3S port actually bound, when TLS is configured. */
  tlsPort: number | undefined;
  /**
   * Why this server would not serve a login correctly now (empty when ready): a listener not
   * bound, no users loaded, the mail root unusable. Not the grant store: logins do not need it.
   */
  notReadyReasons(): string[];
  /** Stop accepting, end every session (nothing is deleted), release resources. */
  close(): Promise<void>;
}

// Lines are fed to the session one at a time; more input waits behind the one in progress. The
// socket is not read while too many lines wait or too much of our output is unsent (a client that
// does not read its replies), and read again once both are down to half: every path through pump()
// ends with that check, so a session never stays paused with nothing left to unpause it.
const MAX_QUEUED_LINES = 256;
const MAX_UNSENT_BYTES = 256 * 1024;
/** A line too long to be a command, as queued (a real line cannot hold a NUL). */
const TOO_LONG = '\0too-long';
const SLOW_DOWN = '-ERR [SYS/TEMP] Too many commands; slow down.\r\n';

class Connection {
  private socket: net.Socket;
  private readonly session: Pop3Session;
  private readonly server: ServerContext;
  private readonly log: Logger;
  private buffer: Buffer = Buffer.alloc(0);
  private discarding = false;
  private readonly queue: string[] = [];
  /** We stopped reading the socket (see MAX_QUEUED_LINES). */
  private paused = false;
  /** The client has sent its FIN: once what it sent before is answered, the session ends. */
  private peerEnded = false;
  private busy = false;
  private closed = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly commands: RateLimiter;
  private readonly onData = (chunk: Buffer) => this.receive(chunk);
  private readonly onClose = () => this.closedByPeer();
  private readonly onEnd = () => {
    this.peerEnded = true;
    void this.pump();
  };
  private readonly onDrain = () => this.regulate();
  readonly done: Promise<void>;
  private resolveDone!: () => void;

  constructor(socket: net.Socket, server: ServerContext, opts: { secure: boolean; client: Omit<LoginClient, 'sessionId'>; log: Logger }) {
    this.socket = socket;
    this.server = server;
    this.log = opts.log;
    this.done = new Promise((r) => (this.resolveDone = r));
    const cfg = server.config;
    this.commands = new RateLimiter({ capacity: cfg.limits.commandBurst, refillPerSecond: cfg.limits.commandsPerSecond, maxKeys: 1 });
    const sessionId = crypto.randomBytes(6).toString('hex');
    const client: LoginClient = { ...opts.client, sessionId };
    const io: SessionIo = {
      write: (text) => this.write(text + '\r\n'),
      writeStream: (head, chunks, sent) => this.writeStream(head, chunks, sent),
      startTls: () => this.startTls(),
      close: () => this.end(),
    };
    this.session = new Pop3Session(io, {
      tlsAvailable: server.tls !== undefined,
      secure: opts.secure,
      allowPlaintextAuth: cfg.allowPlaintextAuth,
      expire: cfg.expire,
      loginDelaySeconds: cfg.loginDelaySeconds,
      implementation: cfg.implementation,
      maxErrors: cfg.limits.maxErrors,
      login: (user, password) => server.login.login(user, password, client),
      // RFC 1939's timestamp, unique per session; only when some user could use APOP at all.
      apopBanner: server.users.hasPlainSecrets ? `<${process.pid}.${sessionId}@${server.config.implementation}>` : undefined,
      apop: (user, banner, digest) => server.login.apop(user, banner, digest, client),
      onEvent: (event, fields) => {
        if (event === 'retrieved') retrievedBytes.inc(fields.bytes as number);
        else if (event === 'deleted') deletedMessages.inc(fields.count as number);
      },
    });
    this.attach(socket);
    this.session.greeting();
    this.armTimer();
  }

  private attach(socket: net.Socket): void {
    this.socket = socket;
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('drain', this.onDrain);
    socket.on('close', this.onClose);
    socket.on('error', (err) => this.log.debug('socket_error', { error: err }));
    this.paused = false;
    socket.resume();
  }

  /** Stop reading while input or output backs up; read again once both are down to half. */
  private regulate(): void {
    if (this.closed) return;
    const queued = this.queue.length;
    const unsent = this.socket.writableLength;
    if (!this.paused && (queued > MAX_QUEUED_LINES || unsent > MAX_UNSENT_BYTES)) {
      this.paused = true;
      this.socket.pause();
    } else if (this.paused && queued <= MAX_QUEUED_LINES / 2 && unsent <= MAX_UNSENT_BYTES / 2) {
      this.paused = false;
      this.socket.resume();
    }
  }

  private write(text: string): void {
    if (!this.closed && this.socket.writable) this.socket.write(text);
  }

  /**
   * A status line and message data, with backpressure; stops early (without error) if the client
   * goes away. Corked, so that the line and a message that fits one chunk leave in one write.
   */
  private async writeStream(head: string, chunks: AsyncIterable<Buffer>, sent?: (chunk: Buffer) => void): Promise<number> {
    const socket = this.socket;
    let bytes = 0;
    socket.cork();
    try {
      this.write(head + '\r\n');
      for await (const chunk of chunks) {
        if (this.closed || !socket.writable) break;
        bytes += chunk.length;
        const more = socket.write(chunk, sent && (() => sent(chunk)));
        if (!more) {
          // Corked, nothing drains: send what is buffered, then wait until the peer has read it.
          socket.uncork();
          await drained(socket);
          socket.cork();
        }
        this.armTimer();
      }
    } finally {
      socket.uncork();
    }
    return bytes;
  }

  private receive(chunk: Buffer): void {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    const max = this.server.config.limits.maxLineLength;
    for (;;) {
      const lf = this.buffer.indexOf(0x0a);
      if (lf === -1) {
        if (this.buffer.length > max) {
          // Too long: answer once, then drop the rest of that line as it comes.
          if (!this.discarding) this.enqueue(null);
          this.discarding = true;
          this.buffer = Buffer.alloc(0);
        }
        break;
      }
      const raw = this.buffer.subarray(0, lf);
      this.buffer = this.buffer.subarray(lf + 1);
      if (this.discarding) {
        this.discarding = false;
        continue;
      }
      if (raw.length > max) {
        this.enqueue(null);
        continue;
      }
      const line = raw.length > 0 && raw[raw.length - 1] === 0x0d ? raw.subarray(0, raw.length - 1) : raw;
      this.enqueue(line.toString('utf8'));
    }
    this.regulate();
    void this.pump();
  }

  /** null stands for a line that was too long. */
  private enqueue(line: string | null): void {
    this.queue.push(line ?? TOO_LONG);
  }

  private async pump(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      while (this.queue.length > 0 && !this.closed) {
        // A client that does not read its replies: answer nothing more until it has read them.
        if (this.socket.writableLength > MAX_UNSENT_BYTES) await drained(this.socket);
        else await this.run(this.queue.shift() as string);
        this.regulate();
      }
      // The client said all it will say and it has been answered: end the session (a dropped
      // connection deletes nothing) instead of waiting for a timeout with the maildrop locked.
      if (this.peerEnded && this.queue.length === 0) await this.session.abort();
    } catch (err) {
      this.log.error('session_failed', { error: err as Error });
      this.write('-ERR [SYS/TEMP] Internal error.\r\n');
      await this.session.abort();
    } finally {
      this.busy = false;
    }
  }

  /** One queued line: answered by the session, unless it is too long or over the command rate. */
  private async run(line: string): Promise<void> {
    this.armTimer();
    if (line === TOO_LONG) return this.session.lineTooLong();
    if (!this.commands.take('c')) return this.write(SLOW_DOWN);
    await this.session.handle(line);
    this.armTimer(); // the state may have changed (login): pick its timeout
  }

  /** STLS: drop every byte received so far, then handshake on the same socket. */
  private async startTls(): Promise<void> {
    const plain = this.socket;
    const reloader = this.server.tls as TlsReloader;
    plain.off('data', this.onData);
    plain.off('end', this.onEnd);
    plain.off('drain', this.onDrain);
    plain.pause();
    this.queue.length = 0;
    this.buffer = Buffer.alloc(0);
    this.discarding = false;
    // Bytes already read from the kernel but not yet delivered would be fed to TLS as records;
    // read them out and throw them away (they were sent in the clear, before the handshake).
    while (plain.read() !== null) {
      /* discard */
    }
    await new Promise<void>((resolve) => (plain.writableLength === 0 ? resolve() : plain.once('drain', resolve)));
    const secure = await handshake(plain, reloader, this.server.config.timeouts.authorizationMs);
    plain.off('close', this.onClose);
    this.attach(secure);
  }

  private armTimer(): void {
    clearTimeout(this.timer);
    if (this.closed) return;
    const cfg = this.server.config.timeouts;
    const ms = this.session.state === 'TRANSACTION' ? cfg.idleMs : cfg.authorizationMs;
    this.timer = setTimeout(() => {
      this.write('-ERR Disconnected for inactivity.\r\n');
      void this.session.abort();
    }, ms);
    this.timer.unref();
  }

  private end(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    this.socket.end();
    // Do not wait forever for a peer that never reads.
    setTimeout(() => this.socket.destroy(), 5000).unref();
  }

  private closedByPeer(): void {
    clearTimeout(this.timer);
    this.closed = true;
    // A dropped connection deletes nothing (RFC 1939: no UPDATE without QUIT).
    void this.session.abort().finally(() => this.resolveDone());
  }

  /** Server shutdown: end the session without UPDATE. */
  shutdown(): void {
    this.write('-ERR [SYS/TEMP] Server shutting down.\r\n');
    this.end();
    this.socket.destroy();
  }
}

/** Settles once what was written to `socket` has gone out, or it closed. */
function drained(socket: net.Socket): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = () => {
      socket.off('drain', done);
      socket.off('close', done);
      resolve();
    };
    socket.on('drain', done);
    socket.on('close', done);
  });
}

/** TLS server handshake on `socket`; settles on success, error, close or after `timeoutMs`. */
function handshake(socket: net.Socket, reloader: TlsReloader, timeoutMs: number): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const secure = new tls.TLSSocket(socket, {
      isServer: true,
      secureContext: reloader.context,
      SNICallback: (_name, cb) => cb(null, reloader.context),
    });
    const fail = (err: Error) => {
      cleanup();
      tlsHandshakes.inc({ result: 'failure' });
      secure.destroy();
      socket.destroy();
      reject(err);
    };
    const onError = (err: Error) => fail(err);
    const onClose = () => fail(new Error('connection closed during the TLS handshake'));
    const timer = setTimeout(() => fail(new Error(`no TLS handshake within ${timeoutMs} ms`)), timeoutMs);
    timer.unref();
    const cleanup = () => {
      clearTimeout(timer);
      secure.off('error', onError);
      secure.off('close', onClose);
      secure.off('end', onClose);
    };
    secure.once('error', onError);
    secure.once('close', onClose);
    // Half-open sockets (see listen): a client's FIN does not close the socket by itself.
    secure.once('end', onClose);
    secure.once('secure', () => {
      cleanup();
      tlsHandshakes.inc({ result: 'success' });
      resolve(secure);
    });
  });
}

interface ServerContext {
  config: Pop3Config;
  users: UserDatabase;
  tls: TlsReloader | undefined;
  login: Pop3Login;
}

export async function startPop3Server(config: Pop3Config, deps: Pop3ServerDeps): Promise<Pop3Server> {
  const log = deps.log;
  const users = new UserDatabase({ file: config.usersFile, log, defaultScheme: config.defaultPasswordScheme });
  const sockets = new Set<net.Socket>();
  // A login alone in this process hashes on the event loop: nobody else's session waits behind it.
  const alone = () => sockets.size <= 1;
  const verifier = new PasswordVerifier({ threads: config.passwordThreads, idle: alone });
  const fileIo = () => (alone() ? inlineIo : pooledIo);
  const reloader = config.tls ? new TlsReloader({ ...config.tls, log }) : undefined;
  const login = new Pop3Login({
    users,
    verifier,
    throttle: deps.throttle ?? new LoginThrottle(config.login),
    // Likewise its lock and Maildir listing take no trips to the thread pool.
    openMaildrop: (user) => openMaildrop(user, { mailRoot: config.mailRoot, mailLocation: config.mailLocation, lock: { ...config.lock, io: fileIo } }),
    renewer: deps.renewer,
    denyGrantNetworks: config.denyGrantNetworks,
    failureDelayMs: config.login.failureDelayMs,
    loginWaitForGrantMs: config.loginWaitForGrantMs,
    log,
  });
  const ctx: ServerContext = { config, users, tls: reloader, login };
  const limiter = deps.limiter ?? new ConnectionLimiter({ maxTotal: config.limits.maxSessions, maxPerAddress: config.limits.maxSessionsPerAddress });
  const connections = new Set<Connection>();

  const accept = async (socket: net.Socket, implicitTls: boolean): Promise<void> => {
    connectionsTotal.inc();
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    socket.setNoDelay(true);
    const accepted = await acceptConnection(socket, { role: 'pop3', trustedProxies: config.trustedProxies, proxyHeaderTimeoutMs: config.proxyHeaderTimeoutMs, limiter, log });
    if (accepted === undefined) return;
    const { peer, proxyPeer, slot } = accepted;
    const grantAddress = accepted.client?.address ?? null;
    if (!slot.ok) {
      connectionsRefused.inc({ reason: slot.reason });
      const text = slot.reason === 'total' ? 'Too many sessions on this server' : 'Too many sessions from your address';
      // On the POP3S port nothing may be said before TLS: just close.
      if (implicitTls) socket.destroy();
      else socket.end(`-ERR [SYS/TEMP] ${text}; try again later.\r\n`);
      setTimeout(() => socket.destroy(), 2000).unref();
      return;
    }
    let stream: net.Socket = socket;
    if (implicitTls) {
      try {
        stream = await handshake(socket, reloader as TlsReloader, config.timeouts.authorizationMs);
      } catch (err) {
        log.debug('tls_handshake_failed', { peer, error: err as Error });
        slot.release();
        return;
      }
    }
    sessionsActive.inc();
    const conn = new Connection(stream, ctx, { secure: implicitTls, client: { grantAddress, throttleAddress: grantAddress ?? peer, proxyPeer }, log });
    connections.add(conn);
    void conn.done.finally(() => {
      connections.delete(conn);
      sessionsActive.dec();
      slot.release();
    });
  };

  const listen = (port: number, implicitTls: boolean): Promise<net.Server> =>
    new Promise((resolve, reject) => {
      // Half-open: a client that sends its last commands and its FIN at once still gets the answers
      // (the session ends once they are written, see Connection.pump).
      const server = net.createServer({ pauseOnConnect: true, allowHalfOpen: true }, (socket) => {
        accept(socket, implicitTls).catch((err: unknown) => {
          log.error('accept_failed', { error: err as Error });
          socket.destroy();
        });
      });
      server.once('error', reject);
      const options = deps.reusePort ? { exclusive: true, reusePort: true } : {};
      server.listen({ port, host: config.listen.host, ...options }, () => {
        server.off('error', reject);
        server.on('error', (err) => log.error('server_error', { error: err }));
        resolve(server);
      });
    });

  const mailRoot = new MailRootProbe({ mailRoot: config.mailRoot, log });
  const servers: net.Server[] = [];
  try {
    await mailRoot.check();
    servers.push(await listen(config.listen.port, false));
    if (config.implicitTlsPort !== undefined) servers.push(await listen(config.implicitTlsPort, true));
  } catch (err) {
    servers.forEach((s) => s.close());
    mailRoot.close();
    users.close();
    reloader?.close();
    await verifier.close();
    throw err;
  }
  const port = (servers[0]?.address() as net.AddressInfo).port;
  const tlsPort = servers[1] ? (servers[1].address() as net.AddressInfo).port : undefined;
  log.info('pop3_listening', { host: config.listen.host, port, tlsPort });

  let closing = false;
  return {
    port,
    tlsPort,
    notReadyReasons: () => {
      const reasons: string[] = [];
      if (closing || servers.some((s) => !s.listening)) reasons.push('listeners closed');
      // An empty file parses, but nobody could log in: keep such a rollout from becoming ready.
      if (users.size === 0) reasons.push(`no users in ${config.usersFile}`);
      const root = mailRoot.unusable;
      if (root !== undefined) reasons.push(root);
      return reasons;
    },
    close: async () => {
      closing = true;
      mailRoot.close();
      const closingServers = servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve())));
      const ending = [...connections].map((c) => {
        c.shutdown();
        return c.done;
      });
      for (const s of sockets) s.destroy();
      await Promise.all([...closingServers, ...ending]);
      users.close();
      reloader?.close();
      await verifier.close();
    },
  };
}
