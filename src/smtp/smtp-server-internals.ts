// The one place that uses smtp-server's private API. We accept sockets ourselves (PROXY header,
// limits, implicit TLS over a socket that has already been read) and then hand them to
// smtp-server's connection state machine with the client address we determined. Its public
// `connect()` cannot take over an upgraded socket and greets after a fixed 100 ms, so this
// module starts the SMTPConnection itself. An smtp-server upgrade that changes these members
// makes `smtpServerInternalsProblems()` name them (test/smtp/smtp-server-internals.test.ts,
// and startSmtpServer refuses to start).
import crypto from 'node:crypto';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import type tls from 'node:tls';
import { SMTPServer } from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';

/** The version whose internals this module was written against (node_modules/smtp-server). */
export const SMTP_SERVER_VERSION_CHECKED = '3.21.6';

/** Where a session's socket comes from, as smtp-server's connect() would have read it. */
export interface SessionAddresses {
  id: string;
  remoteAddress: string;
  remotePort: number | undefined;
  localAddress: string | undefined;
  localPort: number | undefined;
}

/** A session id in smtp-server's own form (16 base-32 digits). */
export function newSessionId(): string {
  return BigInt(`0x${crypto.randomBytes(10).toString('hex')}`).toString(32).padStart(16, '0');
}

/**
 * smtp-server's connect() with our addresses and our greeting delay instead of its fixed 100 ms:
 * the connection is registered in `server.connections` (so closing ends it) and greets once its
 * listeners are set and `greetingDelayMs` has passed.
 */
export function startSession(
  server: SMTPServer,
  socket: net.Socket | Duplex,
  addresses: SessionAddresses,
  greetingDelayMs: number,
  onError: (err: Error) => void,
): void {
  const conn = new SMTPConnection(server, socket as net.Socket, { ...addresses, ignore: false });
  server.connections.add(conn);
  conn.on('error', onError);
  conn._setListeners(() => {
    if (greetingDelayMs > 0) setTimeout(() => conn.connectionReady(), greetingDelayMs).unref();
    else conn.connectionReady();
  });
}

/**
 * The TLS handshake of smtp-server's implicit-TLS listener, on a socket we accepted. A socket with
 * bytes already read past a PROXY header is passed as a Duplex over it: `_upgrade` calls
 * setTimeout on what it is given, a method a plain Duplex lacks (the TypeError would end the
 * process), so `timeoutOf` is the raw socket whose timeout that is.
 */
export function upgradeToTls(
  server: SMTPServer,
  transport: net.Socket | Duplex,
  timeoutOf: net.Socket,
  callback: (err: Error | null, tlsSocket?: tls.TLSSocket) => void,
): void {
  const socket =
    transport === timeoutOf
      ? timeoutOf
      : Object.assign(transport, {
          setTimeout: (ms: number, cb?: () => void) => {
            timeoutOf.setTimeout(ms, cb);
            return transport;
          },
        });
  server._upgrade(socket as net.Socket, callback);
}

/** Send `code text` to every open session of `server` and close it. */
export function endSessions(server: SMTPServer, code: number, text: string): void {
  for (const conn of server.connections) {
    conn.send(code, text);
    conn.close();
  }
}

/**
 * What this module relies on that the installed smtp-server no longer has, each named (empty when
 * all is there). Checked on a throwaway server, without listening.
 */
export function smtpServerInternalsProblems(): string[] {
  const problems: string[] = [];
  const proto = SMTPConnection.prototype as unknown as Record<string, unknown>;
  for (const method of ['_setListeners', 'connectionReady', 'send', 'close']) {
    if (typeof proto[method] !== 'function') problems.push(`SMTPConnection.prototype.${method} is not a function`);
  }
  if (SMTPConnection.length !== 3) problems.push(`new SMTPConnection(server, socket, options) now takes ${SMTPConnection.length} arguments`);
  const server = new SMTPServer({ logger: false, secure: false, hideSTARTTLS: true });
  const fields = server as unknown as Record<string, unknown>;
  if (!(fields.connections instanceof Set)) problems.push('SMTPServer#connections is not a Set');
  if (typeof fields._upgrade !== 'function') problems.push('SMTPServer#_upgrade is not a function');
  else if ((fields._upgrade as (...a: unknown[]) => void).length !== 2) problems.push('SMTPServer#_upgrade(socket, callback) changed its arguments');
  // _upgrade looks up the socket here; without the map it throws on every implicit-TLS accept.
  if (!(fields._pendingSockets instanceof Map)) problems.push('SMTPServer#_pendingSockets (read by _upgrade) is not a Map');
  if (!(server.secureContext instanceof Map)) problems.push('SMTPServer#secureContext is not a Map');
  return problems;
}

/** Throw one error naming every problem (see smtpServerInternalsProblems). */
export function assertSmtpServerInternals(): void {
  const problems = smtpServerInternalsProblems();
  if (problems.length > 0) {
    throw new Error(
      `smtp-server's private API changed (src/smtp/smtp-server-internals.ts was written against ${SMTP_SERVER_VERSION_CHECKED}): ${problems.join('; ')}`,
    );
  }
}
