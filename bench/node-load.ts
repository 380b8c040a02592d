// The steady load of `npm run bench -- node`, run inside the node's client namespace
// (`ip netns exec NETNS node bench/node-load.ts '<json>'`): POP3S logins and SMTP relays from a
// granted client address, and relay attempts from a stranger's address, until SIGTERM. Prints
// every session's outcome as one JSON line on stdout, so the parent can cut the timeline at
// each fault.
import net from 'node:net';
import tls from 'node:tls';

export interface LoadConfig {
  node: string;
  smtpPort: number;
  pop3sPort: number;
  granted: string;
  stranger: string;
  user: string;
  password: string;
  localDomain: string;
  remoteDomain: string;
  /** Prefix of every relayed message's token, so the parent finds them at the smarthost. */
  tag: string;
}

export interface SessionEvent {
  /** ms since the epoch, when the session ended. */
  t: number;
  kind: 'login' | 'relay' | 'stranger';
  /** The last reply code seen (0: no reply: connection refused, reset or timed out). */
  code: number;
  /** For relays: the message token, and whether the server acknowledged it (250 after DATA). */
  token?: string;
  acked?: boolean;
  /** For strangers: RCPT was accepted (a wrongful relay). */
  wrongful?: boolean;
  error?: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Reads CRLF-terminated lines; an SMTP reply ends at a line whose 4th char is a space. */
class LineReader {
  private buffer = '';
  private waiting: ((line: string | undefined) => void) | undefined;
  private lines: string[] = [];
  private ended = false;

  constructor(socket: net.Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      let i: number;
      while ((i = this.buffer.indexOf('\n')) >= 0) {
        this.lines.push(this.buffer.slice(0, i).replace(/\r$/, ''));
        this.buffer = this.buffer.slice(i + 1);
      }
      this.flush();
    });
    const end = () => {
      this.ended = true;
      this.flush();
    };
    socket.on('close', end);
    socket.on('error', end);
  }

  private flush(): void {
    if (!this.waiting) return;
    if (this.lines.length > 0) {
      const w = this.waiting;
      this.waiting = undefined;
      w(this.lines.shift());
    } else if (this.ended) {
      const w = this.waiting;
      this.waiting = undefined;
      w(undefined);
    }
  }

  line(): Promise<string | undefined> {
    return new Promise((resolve) => {
      this.waiting = resolve;
      this.flush();
    });
  }

  async smtpReply(): Promise<number> {
    for (;;) {
      const l = await this.line();
      if (l === undefined) return 0;
      if (/^\d{3} /.test(l) || /^\d{3}$/.test(l)) return Number(l.slice(0, 3));
    }
  }
}

function connect(c: LoadConfig, port: number, localAddress: string, secure: boolean): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const tcp = net.connect({ host: c.node, port, localAddress });
    const socket = secure ? tls.connect({ socket: tcp, rejectUnauthorized: false }) : tcp;
    if (secure) tcp.once('error', reject);
    socket.setTimeout(20_000, () => socket.destroy(new Error('timeout')));
    socket.once(secure ? 'secureConnect' : 'connect', () => resolve(socket));
    socket.once('error', reject);
  });
}

/** One SMTP session up to RCPT, and through DATA when `token` is given and RCPT is accepted. */
async function smtp(c: LoadConfig, from: string, token: string | undefined): Promise<{ code: number; rcptAccepted: boolean; acked: boolean }> {
  const socket = await connect(c, c.smtpPort, from, false);
  const r = new LineReader(socket);
  const say = (s: string) => socket.write(s + '\r\n');
  try {
    let code = await r.smtpReply();
    if (code !== 220) return { code, rcptAccepted: false, acked: false };
    say('EHLO load.test');
    if ((code = await r.smtpReply()) !== 250) return { code, rcptAccepted: false, acked: false };
    say(`MAIL FROM:<${c.user}@${c.localDomain}>`);
    if ((code = await r.smtpReply()) !== 250) return { code, rcptAccepted: false, acked: false };
    say(`RCPT TO:<someone@${c.remoteDomain}>`);
    code = await r.smtpReply();
    if (code !== 250 || !token) {
      say('QUIT');
      return { code, rcptAccepted: code === 250, acked: false };
    }
    say('DATA');
    if ((code = await r.smtpReply()) !== 354) return { code, rcptAccepted: true, acked: false };
    socket.write(`Subject: ${token}\r\nMessage-ID: <${token}@load.test>\r\n\r\n${token}\r\n.\r\n`);
    code = await r.smtpReply();
    say('QUIT');
    return { code, rcptAccepted: true, acked: code === 250 };
  } finally {
    socket.end();
    setTimeout(() => socket.destroy(), 1000).unref();
  }
}

async function pop3Login(c: LoadConfig): Promise<number> {
  const socket = await connect(c, c.pop3sPort, c.granted, true);
  const r = new LineReader(socket);
  const say = (s: string) => socket.write(s + '\r\n');
  const ok = async () => ((await r.line()) ?? '').startsWith('+OK');
  try {
    if (!(await ok())) return 0;
    say(`USER ${c.user}`);
    if (!(await ok())) return 500;
    say(`PASS ${c.password}`);
    if (!(await ok())) return 500;
    say('QUIT');
    return 200;
  } finally {
    socket.end();
    setTimeout(() => socket.destroy(), 1000).unref();
  }
}

function emit(e: SessionEvent): void {
  process.stdout.write(JSON.stringify(e) + '\n');
}

async function loop(stopped: () => boolean, pauseMs: number, body: () => Promise<SessionEvent>): Promise<void> {
  while (!stopped()) {
    let e: SessionEvent;
    try {
      e = await body();
    } catch (err) {
      e = { t: Date.now(), kind: 'relay', code: 0, error: (err as Error).message };
    }
    emit(e);
    await sleep(pauseMs);
  }
}

if (import.meta.main) {
  const c = JSON.parse(process.argv[2] ?? '{}') as LoadConfig;
  let stop = false;
  process.on('SIGTERM', () => (stop = true));
  let n = 0;
  const stopped = () => stop;
  await Promise.all([
    loop(stopped, 1000, async () => {
      try {
        return { t: Date.now(), kind: 'login', code: await pop3Login(c) };
      } catch (err) {
        return { t: Date.now(), kind: 'login', code: 0, error: (err as Error).message };
      }
    }),
    loop(stopped, 50, async () => {
      const token = `${c.tag}-${++n}`;
      try {
        const r = await smtp(c, c.granted, token);
        return { t: Date.now(), kind: 'relay', code: r.code, token, acked: r.acked };
      } catch (err) {
        return { t: Date.now(), kind: 'relay', code: 0, token, acked: false, error: (err as Error).message };
      }
    }),
    loop(stopped, 100, async () => {
      try {
        const r = await smtp(c, c.stranger, undefined);
        return { t: Date.now(), kind: 'stranger', code: r.code, wrongful: r.rcptAccepted };
      } catch (err) {
        return { t: Date.now(), kind: 'stranger', code: 0, error: (err as Error).message };
      }
    }),
  ]);
}
