// Real clients against the SMTP role: swaks, Python's smtplib, curl, and a raw socket for the
// dialogues no client program will produce (attacks, malformed input).
import net from 'node:net';
import { run, type RunResult } from './support.ts';

export interface SwaksOptions {
  port: number;
  to: string;
  from?: string;
  /** Source address of the connection (any 127.0.0.0/8 address works on Linux). */
  local?: string;
  server?: string;
  extra?: string[];
}

export function swaks(o: SwaksOptions): Promise<RunResult> {
  const args = ['--server', o.server ?? '127.0.0.1', '--port', String(o.port), '--from', o.from ?? 'sender@client.test', '--to', o.to];
  if (o.local) args.push('--local-interface', o.local);
  args.push('--timeout', '15', ...(o.extra ?? []));
  return run('swaks', args);
}

export function proxyArgs(version: 1 | 2, source: string, sourcePort = 40000): string[] {
  const v6 = source.includes(':');
  return [
    '--proxy-version', String(version),
    '--proxy-family', version === 1 ? (v6 ? 'TCP6' : 'TCP4') : (v6 ? 'AF_INET6' : 'AF_INET'),
    '--proxy-source', source,
    '--proxy-source-port', String(sourcePort),
    '--proxy-dest', v6 ? '2001:db8::25' : '192.0.2.25',
    '--proxy-dest-port', '25',
  ];
}

/** Python's smtplib: one message; prints `OK` or the exception class and its args. */
export function smtplibSend(port: number, from: string, to: string[], body: string, source = '127.0.0.1'): Promise<RunResult> {
  const script = `
import smtplib, sys, json
args = json.loads(sys.stdin.read())
try:
    with smtplib.SMTP('127.0.0.1', args['port'], source_address=(args['source'], 0), timeout=15) as s:
        s.ehlo('python.client.test')
        s.sendmail(args['from'], args['to'], args['body'])
    print('OK')
except smtplib.SMTPRecipientsRefused as e:
    print('SMTPRecipientsRefused', json.dumps({k: [v[0], v[1].decode()] for k, v in e.recipients.items()}))
except smtplib.SMTPResponseException as e:
    print(type(e).__name__, e.smtp_code, e.smtp_error.decode())
`;
  return run('python3', ['-c', script], JSON.stringify({ port, from, to, body, source }));
}

export function curlSend(port: number, from: string, to: string, body: string, local = '127.0.0.1'): Promise<RunResult> {
  return run('curl', [
    '--silent', '--show-error', '--max-time', '15',
    '--interface', local,
    `smtp://127.0.0.1:${port}/client.test`,
    '--mail-from', from, '--mail-rcpt', to, '--upload-file', '-',
  ], body);
}

/**
 * A raw SMTP dialogue: connect (optionally from `local`), optionally write `preface` first, then
 * send each step and collect the reply lines until a final line (`NNN `). Resolves with every
 * reply, the greeting first; stops early when the server closes.
 */
export async function dialogue(
  port: number,
  steps: (string | Buffer | { raw: Buffer; replies: number })[],
  opts: { local?: string; preface?: Buffer; timeoutMs?: number } = {},
): Promise<{ replies: string[]; closed: boolean }> {
  const socket = net.connect({ host: '127.0.0.1', port, localAddress: opts.local });
  socket.on('error', () => undefined);
  let buffer = '';
  let closed = false;
  const waiters: (() => void)[] = [];
  socket.on('data', (d: Buffer) => {
    buffer += d.toString('latin1');
    waiters.splice(0).forEach((w) => w());
  });
  socket.on('close', () => {
    closed = true;
    waiters.splice(0).forEach((w) => w());
  });
  const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
  const nextReply = async (): Promise<string | undefined> => {
    for (;;) {
      const m = /^(?:\d{3}-[^\n]*\n)*\d{3}(?: [^\n]*)?\r?\n/.exec(buffer);
      if (m) {
        buffer = buffer.slice(m[0].length);
        return m[0].trimEnd();
      }
      if (closed || Date.now() > deadline) return undefined;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.max(1, deadline - Date.now()));
        waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  };
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  if (opts.preface) socket.write(opts.preface);
  const replies: string[] = [];
  const greeting = await nextReply();
  if (greeting !== undefined) replies.push(greeting);
  for (const step of steps) {
    if (closed) break;
    const raw = typeof step === 'string' ? Buffer.from(`${step}\r\n`) : Buffer.isBuffer(step) ? step : step.raw;
    socket.write(raw);
    const count = typeof step === 'object' && !Buffer.isBuffer(step) ? step.replies : 1;
    let got = 0;
    for (; got < count; got++) {
      const r = await nextReply();
      if (r === undefined) break;
      replies.push(r);
    }
    if (got < count) break;
  }
  socket.destroy();
  return { replies, closed };
}
