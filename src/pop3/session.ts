// One POP3 session as a state machine (RFC 1939, 2449 CAPA, 2595 STLS, 3206 codes, 5034 SASL):
// AUTHORIZATION -> TRANSACTION -> UPDATE. It sees lines and answers through a SessionIo; sockets,
// TLS and timers live in server.ts, passwords and grants in login.ts, the Maildir in maildrop.ts.

export type Pop3State = 'AUTHORIZATION' | 'TRANSACTION' | 'UPDATE' | 'CLOSED';

export interface MaildropMessage {
  size: number;
  uid: string;
}

/** The locked maildrop of a logged-in user, fixed for the session. */
export interface Maildrop {
  readonly messages: readonly MaildropMessage[];
  /** Message `index` (0-based) as POP3 data: dot-stuffed, CRLF, ending with `.\r\n`. */
  content(index: number, bodyLines?: number): AsyncIterable<Buffer>;
  /** A chunk of content has been sent and is no longer needed: its memory may be reused. */
  recycle?(chunk: Buffer): void;
  /** UPDATE: remove these (0-based) messages. */
  remove(indexes: number[]): Promise<{ removed: number; failed: number }>;
  /** Unlock. Safe to call more than once. */
  release(): Promise<void>;
}

export type LoginOutcome =
  | { result: 'ok'; maildrop: Maildrop }
  | { result: 'failed' }
  | { result: 'throttled' }
  | { result: 'in-use' }
  | { result: 'temporary'; reason: string };

export interface SessionIo {
  /** Send text as it is (the session adds CRLF). */
  write(text: string): void;
  /**
   * Send the status line `head` (the session adds CRLF) and then a stream of bytes (message
   * data), respecting backpressure; `sent` is told of each chunk once the socket is done with it.
   */
  writeStream(head: string, chunks: AsyncIterable<Buffer>, sent?: (chunk: Buffer) => void): Promise<number>;
  /** Upgrade to TLS after `+OK` was sent; input received before the handshake must be discarded. */
  startTls(): Promise<void>;
  /** End the connection after what was written has been sent. */
  close(): void;
}

export interface SessionOptions {
  /** STLS may be offered (a certificate is configured and this is not the implicit TLS port). */
  tlsAvailable: boolean;
  /** Already TLS (implicit TLS port). */
  secure: boolean;
  /** Allow USER/PASS and AUTH without TLS. */
  allowPlaintextAuth: boolean;
  /** CAPA EXPIRE value: days, or 'NEVER'. */
  expire: string;
  /** CAPA LOGIN-DELAY value in seconds (0 = not advertised). */
  loginDelaySeconds: number;
  implementation: string;
  /** Consecutive bad commands before the session is ended. */
  maxErrors: number;
  login(user: string, password: string): Promise<LoginOutcome>;
  /**
   * The APOP timestamp (`<...@...>`) for the greeting, when some user's secret allows APOP;
   * undefined: APOP is neither advertised nor accepted.
   */
  apopBanner?: string;
  apop?(user: string, banner: string, digest: string): Promise<LoginOutcome>;
  onEvent?(event: string, fields: Record<string, unknown>): void;
}

const SASL_MECHANISMS = ['PLAIN', 'LOGIN'] as const;

type Pending =
  | { kind: 'none' }
  | { kind: 'auth-plain' }
  | { kind: 'auth-login-user' }
  | { kind: 'auth-login-pass'; user: string };

const NUMBER = /^[1-9]\d{0,9}$/;
const COUNT = /^(0|[1-9]\d{0,9})$/;

function decodeBase64(text: string): Buffer | undefined {
  if (text === '=') return Buffer.alloc(0);
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) return undefined;
  return Buffer.from(text, 'base64');
}

export class Pop3Session {
  state: Pop3State = 'AUTHORIZATION';
  private secure: boolean;
  private readonly opts: SessionOptions;
  private readonly io: SessionIo;
  private user: string | undefined;
  private pending: Pending = { kind: 'none' };
  private maildrop: Maildrop | undefined;
  private deleted = new Set<number>();
  private errors = 0;
  private stlsDone = false;

  constructor(io: SessionIo, opts: SessionOptions) {
    this.io = io;
    this.opts = opts;
    this.secure = opts.secure;
  }

  greeting(): void {
    const banner = this.opts.apopBanner === undefined ? '' : ` ${this.opts.apopBanner}`;
    this.io.write(`+OK ${this.opts.implementation} POP3 server ready.${banner}`);
  }

  get isSecure(): boolean {
    return this.secure;
  }

  private plaintextAllowed(): boolean {
    return this.secure || this.opts.allowPlaintextAuth;
  }

  private ok(text: string): void {
    this.io.write(`+OK ${text}`);
    this.errors = 0;
  }

  /** An error reply; too many in a row end the session. */
  private err(text: string, countAsError = true): void {
    this.io.write(`-ERR ${text}`);
    if (!countAsError) return;
    this.errors++;
    if (this.errors >= this.opts.maxErrors) {
      this.io.write('-ERR Too many invalid commands, closing.');
      void this.abort();
    }
  }

  /** The connection is ending without QUIT: unlock, delete nothing. */
  async abort(): Promise<void> {
    const wasOpen = this.state !== 'CLOSED';
    this.state = 'CLOSED';
    const drop = this.maildrop;
    this.maildrop = undefined;
    if (drop) await drop.release();
    if (wasOpen) this.io.close();
  }

  /** A line too long to be a command: answered, and any SASL exchange in progress is cancelled. */
  lineTooLong(): void {
    this.pending = { kind: 'none' };
    this.err('Line too long.');
  }

  /** Handle one input line (without its CRLF). Lines must be fed one at a time, in order. */
  async handle(line: string): Promise<void> {
    if (this.state === 'CLOSED' || this.state === 'UPDATE') return;
    if (this.pending.kind !== 'none') return this.continueSasl(line);
    if (line.includes('\0')) return this.err('NUL byte in command.');
    const space = line.indexOf(' ');
    const keyword = (space === -1 ? line : line.slice(0, space)).toUpperCase();
    const rest = space === -1 ? '' : line.slice(space + 1);
    const args = rest === '' ? [] : rest.split(' ');

    if (keyword === 'CAPA') return this.capa();
    if (keyword === 'QUIT') return this.quit();
    if (this.state === 'AUTHORIZATION') {
      switch (keyword) {
        case 'USER':
          return this.userCommand(rest);
        case 'PASS':
          return this.passCommand(rest);
        case 'AUTH':
          return this.authCommand(args);
        case 'STLS':
          return this.stls();
        case 'APOP':
          return this.apopCommand(args);
        case 'PROXY':
          // A PROXY header from a peer that is not a trusted proxy: never believed, connection ended.
          this.io.write('-ERR PROXY protocol is not accepted from this address.');
          return this.abort();
        case 'STAT':
        case 'LIST':
        case 'RETR':
        case 'DELE':
        case 'NOOP':
        case 'RSET':
        case 'TOP':
        case 'UIDL':
          return this.err('Not logged in.');
        default:
          return this.err('Unknown command.');
      }
    }
    // TRANSACTION
    switch (keyword) {
      case 'STAT':
        return args.length === 0 ? this.stat() : this.err('STAT takes no arguments.');
      case 'LIST':
        return this.list(args);
      case 'UIDL':
        return this.uidl(args);
      case 'RETR':
        return this.retr(args);
      case 'TOP':
        return this.top(args);
      case 'DELE':
        return this.dele(args);
      case 'NOOP':
        return args.length === 0 ? this.ok('') : this.err('NOOP takes no arguments.');
      case 'RSET':
        return this.rset(args);
      case 'USER':
      case 'PASS':
      case 'AUTH':
      case 'APOP':
        return this.err('Already logged in.');
      case 'STLS':
        return this.err('STLS is only allowed before login.');
      default:
        return this.err('Unknown command.');
    }
  }

  private capa(): void {
    const lines = ['+OK Capability list follows', 'TOP', 'UIDL', 'RESP-CODES', 'AUTH-RESP-CODE', 'PIPELINING'];
    if (this.state === 'AUTHORIZATION') {
      if (this.plaintextAllowed()) lines.push('USER', `SASL ${SASL_MECHANISMS.join(' ')}`);
      if (this.opts.tlsAvailable && !this.secure && !this.stlsDone) lines.push('STLS');
    }
    lines.push(`EXPIRE ${this.opts.expire}`);
    if (this.opts.loginDelaySeconds > 0) lines.push(`LOGIN-DELAY ${this.opts.loginDelaySeconds}`);
    lines.push(`IMPLEMENTATION ${this.opts.implementation}`, '.');
    this.io.write(lines.join('\r\n'));
    this.errors = 0;
  }

  private tlsRequired(): void {
    this.err('[AUTH] Plaintext authentication disallowed on non-secure connections; use STLS or the POP3S port.');
  }

  private userCommand(rest: string): void {
    if (!this.plaintextAllowed()) return this.tlsRequired();
    if (rest === '' || rest.length > 255) return this.err('USER needs a user name.');
    this.user = rest;
    this.ok('Send your password.');
  }

  private async passCommand(rest: string): Promise<void> {
    if (!this.plaintextAllowed()) return this.tlsRequired();
    const user = this.user;
    this.user = undefined;
    if (user === undefined) return this.err('Send USER first.');
    // RFC 1939: the password may contain spaces; it is the whole rest of the line.
    await this.login(user, rest);
  }

  private apopCommand(args: string[]): Promise<void> | void {
    const banner = this.opts.apopBanner;
    if (banner === undefined || !this.opts.apop) return this.err('APOP is not available; use USER/PASS or AUTH.');
    // Same rule as for passwords: the user name and the session are not to be seen in the clear.
    if (!this.plaintextAllowed()) return this.tlsRequired();
    if (args.length !== 2) return this.err('APOP takes a user name and a digest.');
    const apop = this.opts.apop.bind(this.opts);
    return this.login(args[0] as string, '', () => apop(args[0] as string, banner, (args[1] as string).toLowerCase()));
  }

  private authCommand(args: string[]): Promise<void> | void {
    if (args.length === 0) {
      // RFC 1734-style listing, still sent by some clients.
      this.io.write(['+OK', ...SASL_MECHANISMS, '.'].join('\r\n'));
      return;
    }
    if (!this.plaintextAllowed()) return this.tlsRequired();
    const mech = (args[0] as string).toUpperCase();
    if (args.length > 2) return this.err('[AUTH] Too many arguments.');
    const initial = args[1];
    if (mech === 'PLAIN') {
      if (initial === undefined) {
        this.pending = { kind: 'auth-plain' };
        this.io.write('+ ');
        return;
      }
      return this.authPlain(initial);
    }
    if (mech === 'LOGIN') {
      if (initial === undefined) {
        this.pending = { kind: 'auth-login-user' };
        this.io.write('+ VXNlcm5hbWU6');
        return;
      }
      return this.authLoginUser(initial);
    }
    return this.err('[AUTH] Unsupported authentication mechanism.');
  }

  private continueSasl(line: string): Promise<void> | void {
    const pending = this.pending;
    this.pending = { kind: 'none' };
    if (line === '*') return this.err('[AUTH] Authentication cancelled.', false);
    switch (pending.kind) {
      case 'auth-plain':
        return this.authPlain(line);
      case 'auth-login-user':
        return this.authLoginUser(line);
      case 'auth-login-pass': {
        const password = decodeBase64(line);
        if (!password) return this.err('[AUTH] Invalid base64 data.');
        return this.login(pending.user, password.toString('utf8'));
      }
      default:
        return undefined;
    }
  }

  private authPlain(response: string): Promise<void> | void {
    const decoded = decodeBase64(response);
    if (!decoded) return this.err('[AUTH] Invalid base64 data.');
    const parts = decoded.toString('utf8').split('\0');
    if (parts.length !== 3) return this.err('[AUTH] Invalid PLAIN response.');
    const [authz, authc, password] = parts as [string, string, string];
    // No proxy authorization: the identity acted for must be the one authenticated.
    if (authz !== '' && authz !== authc) return this.login('\0invalid', password);
    return this.login(authc, password);
  }

  private authLoginUser(response: string): void {
    const user = decodeBase64(response);
    if (!user) return this.err('[AUTH] Invalid base64 data.');
    this.pending = { kind: 'auth-login-pass', user: user.toString('utf8') };
    this.io.write('+ UGFzc3dvcmQ6');
  }

  private async login(user: string, password: string, check?: () => Promise<LoginOutcome>): Promise<void> {
    const outcome = await (check ? check() : this.opts.login(user, password));
    if (this.state !== 'AUTHORIZATION') {
      // The connection went away while we were checking: give the lock back.
      if (outcome.result === 'ok') await outcome.maildrop.release();
      return;
    }
    switch (outcome.result) {
      case 'ok':
        this.maildrop = outcome.maildrop;
        this.state = 'TRANSACTION';
        this.ok(`Logged in, ${outcome.maildrop.messages.length} messages.`);
        return;
      case 'failed':
        return this.err('[AUTH] Authentication failed.');
      case 'throttled':
        return this.err('[SYS/TEMP] Too many failed logins; try again later.');
      case 'in-use':
        return this.err('[IN-USE] Mailbox is locked by another POP3 session.');
      case 'temporary':
        return this.err('[SYS/TEMP] Temporary server failure; try again later.');
    }
  }

  private async stls(): Promise<void> {
    if (!this.opts.tlsAvailable || this.secure) return this.err(this.secure ? 'Already using TLS.' : 'STLS is not available.');
    if (this.stlsDone) return this.err('STLS already done.');
    this.io.write('+OK Begin TLS negotiation.');
    this.stlsDone = true;
    try {
      await this.io.startTls();
    } catch {
      await this.abort();
      return;
    }
    // Nothing said before the handshake carries over (RFC 2595 section 4).
    this.secure = true;
    this.user = undefined;
    this.pending = { kind: 'none' };
  }

  // TRANSACTION state

  private get drop(): Maildrop {
    return this.maildrop as Maildrop;
  }

  /** Parse a message number; answers the error itself and returns undefined when unusable. */
  private messageIndex(arg: string | undefined): number | undefined {
    if (arg === undefined || !NUMBER.test(arg)) {
      this.err('Invalid message number.');
      return undefined;
    }
    const n = Number(arg);
    if (n > this.drop.messages.length) {
      this.err('There is no such message.');
      return undefined;
    }
    if (this.deleted.has(n - 1)) {
      this.err('Message is deleted.');
      return undefined;
    }
    return n - 1;
  }

  private stat(): void {
    let count = 0;
    let size = 0;
    this.drop.messages.forEach((m, i) => {
      if (this.deleted.has(i)) return;
      count++;
      size += m.size;
    });
    this.ok(`${count} ${size}`);
  }

  private list(args: string[]): void {
    if (args.length > 1) return this.err('LIST takes at most one argument.');
    if (args.length === 1) {
      const i = this.messageIndex(args[0]);
      if (i !== undefined) this.ok(`${i + 1} ${(this.drop.messages[i] as MaildropMessage).size}`);
      return;
    }
    const lines: string[] = [];
    let size = 0;
    this.drop.messages.forEach((m, i) => {
      if (this.deleted.has(i)) return;
      lines.push(`${i + 1} ${m.size}`);
      size += m.size;
    });
    this.io.write([`+OK ${lines.length} messages (${size} octets)`, ...lines, '.'].join('\r\n'));
    this.errors = 0;
  }

  private uidl(args: string[]): void {
    if (args.length > 1) return this.err('UIDL takes at most one argument.');
    if (args.length === 1) {
      const i = this.messageIndex(args[0]);
      if (i !== undefined) this.ok(`${i + 1} ${(this.drop.messages[i] as MaildropMessage).uid}`);
      return;
    }
    const lines: string[] = [];
    this.drop.messages.forEach((m, i) => {
      if (!this.deleted.has(i)) lines.push(`${i + 1} ${m.uid}`);
    });
    this.io.write(['+OK', ...lines, '.'].join('\r\n'));
    this.errors = 0;
  }

  private async retr(args: string[]): Promise<void> {
    if (args.length !== 1) return this.err('RETR takes one message number.');
    const i = this.messageIndex(args[0]);
    if (i === undefined) return;
    await this.send(i, `${(this.drop.messages[i] as MaildropMessage).size} octets`);
  }

  private async top(args: string[]): Promise<void> {
    if (args.length !== 2) return this.err('TOP takes a message number and a line count.');
    if (!COUNT.test(args[1] as string)) return this.err('Invalid line count.');
    const i = this.messageIndex(args[0]);
    if (i === undefined) return;
    await this.send(i, 'Top of message follows', Number(args[1]));
  }

  private async send(i: number, text: string, bodyLines?: number): Promise<void> {
    // Open before answering +OK: a message that vanished gets a clean -ERR, not a broken reply.
    const content = this.drop.content(i, bodyLines)[Symbol.asyncIterator]();
    let first: IteratorResult<Buffer>;
    try {
      first = await content.next();
    } catch {
      return this.err('[SYS/TEMP] The message cannot be read now.');
    }
    this.errors = 0;
    const rest = async function* () {
      if (!first.done) yield first.value;
      for (let r = await content.next(); !r.done; r = await content.next()) yield r.value;
    };
    const drop = this.drop;
    const bytes = await this.io.writeStream(`+OK ${text}`, rest(), drop.recycle?.bind(drop));
    this.opts.onEvent?.('retrieved', { bytes, top: bodyLines !== undefined });
  }

  private dele(args: string[]): void {
    if (args.length !== 1) return this.err('DELE takes one message number.');
    const i = this.messageIndex(args[0]);
    if (i === undefined) return;
    this.deleted.add(i);
    this.ok(`Message ${i + 1} deleted.`);
  }

  private rset(args: string[]): void {
    if (args.length !== 0) return this.err('RSET takes no arguments.');
    this.deleted.clear();
    const size = this.drop.messages.reduce((sum, m) => sum + m.size, 0);
    this.ok(`${this.drop.messages.length} messages (${size} octets).`);
  }

  private async quit(): Promise<void> {
    if (this.state === 'AUTHORIZATION') {
      this.io.write('+OK Bye.');
      this.state = 'CLOSED';
      this.io.close();
      return;
    }
    this.state = 'UPDATE';
    const drop = this.drop;
    const marked = [...this.deleted].sort((a, b) => a - b);
    let reply: string;
    try {
      const { removed, failed } = marked.length > 0 ? await drop.remove(marked) : { removed: 0, failed: 0 };
      this.opts.onEvent?.('deleted', { count: removed });
      reply = failed > 0 ? `-ERR [SYS/TEMP] ${failed} of ${marked.length} messages could not be deleted.` : `+OK Logging out, ${removed} messages deleted.`;
    } catch {
      reply = '-ERR [SYS/TEMP] Messages could not be deleted.';
    }
    this.maildrop = undefined;
    await drop.release();
    this.state = 'CLOSED';
    this.io.write(reply);
    this.io.close();
  }
}
