// Shared pieces of the POP3 tests: a temp world (certificate, users file, mail root), mail
// delivered by Dovecot's real LDA, a started server with a recording GrantRenewer, and a raw client.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { parseConfig, type ConfigDocument } from '../../src/config/load.ts';
import { ConfigReader } from '../../src/config/reader.ts';
import type { GrantRenewer, GrantSource, RenewOutcome } from '../../src/grants/types.ts';
import { GrantWriteError } from '../../src/grants/types.ts';
import { createLogger } from '../../src/observability/log.ts';
import { parsePop3Config } from '../../src/pop3/config.ts';
import { startPop3Server, type Pop3Server } from '../../src/pop3/server.ts';
import { makeCert, tempDir, type TestCert } from '../net/certs.ts';

export const log = createLogger('pop3-test');

export interface World {
  dir: string;
  cert: TestCert;
  usersFile: string;
  mailRoot: string;
  /** user -> password of the users in the file. */
  passwords: { alice: string; bob: string; carol: string };
  cleanup(): void;
}

/** alice: SHA512-CRYPT (made by doveadm), bob: BLF-CRYPT, carol: PLAIN. */
export function makeWorld(name: string): World {
  const dir = tempDir(`pop3-${name}`);
  fs.chmodSync(dir, 0o755);
  const cert = makeCert(path.join(dir, 'tls'));
  const mailRoot = path.join(dir, 'mail');
  fs.mkdirSync(mailRoot, { mode: 0o777 });
  fs.chmodSync(mailRoot, 0o777);
  const passwords = { alice: 'alice-secret', bob: 'bob secret with spaces', carol: 'carol' };
  const pw = (scheme: string, p: string) => execFileSync('doveadm', ['pw', '-s', scheme, '-p', p]).toString().trim();
  const usersFile = path.join(dir, 'users');
  fs.writeFileSync(
    usersFile,
    [`alice:${pw('SHA512-CRYPT', passwords.alice)}`, `bob:${pw('BLF-CRYPT', passwords.bob)}`, `carol:{PLAIN}${passwords.carol}`, ''].join('\n'),
  );
  return { dir, cert, usersFile, mailRoot, passwords, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** The Maildir of `user` under the world's mail root (mailLocation `%u`). */
export function maildirOf(world: World, user: string): string {
  return path.join(world.mailRoot, user);
}

/**
 * Deliver `message` (LF line ends) into `user`'s Maildir with Dovecot's LDA, as a real MDA
 * would. It runs unprivileged (as nobody): as root it would insist on an auth service.
 */
export function deliverWithLda(world: World, user: string, message: string): void {
  const conf = path.join(world.dir, `lda-${user}.conf`);
  fs.writeFileSync(
    conf,
    [`mail_location = maildir:${maildirOf(world, user)}`, 'ssl = no', 'log_path = /dev/null', 'postmaster_address = postmaster@example.org', ''].join('\n'),
  );
  fs.chmodSync(conf, 0o644);
  execFileSync(
    'setpriv',
    ['--reuid=65534', '--regid=65534', '--clear-groups', '/usr/lib/dovecot/dovecot-lda', '-c', conf, '-e', '-f', 'sender@example.org'],
    { input: message, env: { HOME: world.mailRoot, PATH: process.env.PATH ?? '/usr/bin:/bin' } },
  );
}

/** A config document for runPop3 on free loopback ports with the world's files; `pop3` keys override. */
export function pop3Document(world: World, pop3: Record<string, unknown> = {}): ConfigDocument {
  return parseConfig(
    JSON.stringify({
      metrics: { host: '127.0.0.1', port: 0 },
      pop3: {
        listen: { host: '127.0.0.1', port: 0 },
        tls: { certFile: world.cert.certFile, keyFile: world.cert.keyFile },
        tlsPort: 0,
        allowPlaintextAuth: true,
        mailRoot: world.mailRoot,
        usersFile: world.usersFile,
        passwordThreads: 1,
        ...pop3,
      },
    }),
    'test',
  );
}

export function testMessage(subject: string, bodyLines: string[]): string {
  return [`From: Sender <sender@example.org>`, `To: someone@example.org`, `Subject: ${subject}`, `Message-ID: <${subject.replace(/\W/g, '')}@example.org>`, '', ...bodyLines, ''].join('\n');
}

export class RecordingRenewer implements GrantRenewer {
  readonly calls: Array<{ ip: string; user: string; source: GrantSource }> = [];
  failWith: Error | undefined;
  delayMs = 0;
  async renew(ip: string, user: string, source: GrantSource): Promise<RenewOutcome> {
    this.calls.push({ ip, user, source });
    if (this.delayMs > 0) await new Promise((r) => setTimeout(r, this.delayMs).unref());
    if (this.failWith) throw this.failWith;
    return 'created';
  }
  failing(): this {
    this.failWith = new GrantWriteError('x', 'API server unreachable');
    return this;
  }
}

export interface StartedServer<R extends GrantRenewer = RecordingRenewer> {
  server: Pop3Server;
  renewer: R;
  close(): Promise<void>;
}

/** Start a server on free loopback ports with the world's files; `overrides` go into the pop3 section. */
export async function startServer<R extends GrantRenewer = RecordingRenewer>(
  world: World,
  overrides: Record<string, unknown> = {},
  renewer: R = new RecordingRenewer() as unknown as R,
): Promise<StartedServer<R>> {
  const section = {
    listen: { host: '127.0.0.1', port: 0 },
    tls: { certFile: world.cert.certFile, keyFile: world.cert.keyFile },
    tlsPort: 0,
    mailRoot: world.mailRoot,
    mailLocation: '%u',
    usersFile: world.usersFile,
    passwordThreads: 1,
    throttle: { failureDelay: '50ms' },
    ...overrides,
  };
  const config = parsePop3Config(new ConfigReader(section, 'pop3'));
  const server = await startPop3Server(config, { renewer, log });
  return { server, renewer, close: () => server.close() };
}

/** A minimal line client for protocol details real clients hide (pipelining, raw bytes, drops). */
export class RawClient {
  socket: net.Socket;
  private buffer = '';
  private waiters: Array<() => void> = [];
  closed = false;
  greeting = '';

  private constructor(socket: net.Socket) {
    this.socket = socket;
    this.listen(socket);
  }

  private listen(socket: net.Socket): void {
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => {
      this.buffer += d;
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => undefined);
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    w.forEach((f) => f());
  }

  static async connect(port: number, opts: { tls?: boolean; greeting?: boolean } = {}): Promise<RawClient> {
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = opts.tls
        ? tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false }, () => resolve(s))
        : net.connect(port, '127.0.0.1', () => resolve(s));
      s.once('error', reject);
    });
    const c = new RawClient(socket);
    if (opts.greeting !== false) c.greeting = await c.line();
    return c;
  }

  /** Wait until `predicate(buffer)` returns a cut position, then return the text before it. */
  private async take(find: (buf: string) => number, what: string, timeoutMs = 10_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const at = find(this.buffer);
      if (at !== -1) {
        const out = this.buffer.slice(0, at);
        this.buffer = this.buffer.slice(at);
        return out;
      }
      if (this.closed) throw new Error(`connection closed while waiting for ${what}; had ${JSON.stringify(this.buffer)}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; had ${JSON.stringify(this.buffer)}`);
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 200);
      });
    }
  }

  /** One reply line, without CRLF. */
  async line(): Promise<string> {
    const text = await this.take((b) => {
      const i = b.indexOf('\r\n');
      return i === -1 ? -1 : i + 2;
    }, 'a line');
    return text.slice(0, -2);
  }

  /** A multi-line reply: the status line, then the data up to `.` (still dot-stuffed). */
  async multiline(): Promise<{ status: string; body: string }> {
    const status = await this.line();
    if (!status.startsWith('+OK')) return { status, body: '' };
    const body = await this.take((b) => {
      if (b.startsWith('.\r\n')) return 3;
      const i = b.indexOf('\r\n.\r\n');
      return i === -1 ? -1 : i + 5;
    }, 'the end of a multi-line reply');
    return { status, body: body === '.\r\n' ? '' : body.slice(0, -3) };
  }

  send(text: string | Buffer): void {
    this.socket.write(text);
  }

  async cmd(line: string): Promise<string> {
    this.send(line + '\r\n');
    return this.line();
  }

  async login(user: string, password: string): Promise<string> {
    const r = await this.cmd(`USER ${user}`);
    if (!r.startsWith('+OK')) return r;
    return this.cmd(`PASS ${password}`);
  }

  /** Upgrade with STLS-style TLS on the same socket. */
  async startTls(): Promise<void> {
    const plain = this.socket;
    plain.removeAllListeners('data');
    plain.removeAllListeners('close');
    const secure = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const s = tls.connect({ socket: plain, rejectUnauthorized: false, servername: 'localhost' }, () => resolve(s));
      s.once('error', reject);
    });
    this.socket = secure;
    this.listen(secure);
  }

  /** Whether the server closes the connection (within the wait). */
  async waitClosed(timeoutMs = 10_000): Promise<boolean> {
    try {
      await this.take(() => -1, 'close', timeoutMs);
    } catch {
      return this.closed;
    }
    return this.closed;
  }

  rest(): string {
    return this.buffer;
  }

  destroy(): void {
    this.socket.destroy();
  }
}
