// Dovecot's auth-policy hook as a grant writer: Dovecot POSTs JSON to `auth_policy_server_url`
// with `?command=allow` before a login (we always allow: kube-drac never blocks a login) and
// `?command=report` after it; a report of a successful IMAP or POP3 login renews the grant of
// the client address (`remote`) for the user (`login`).
//
// Dovecot 2.3 (src/auth/auth-policy.c) builds the body from `auth_policy_request_attributes`,
// every value a JSON string (`remote=%{rip}` -> "remote":"192.0.2.7"), and appends
// `"success":true|false,"policy_reject":true|false` to reports. It sends
// `auth_policy_server_api_header` as `Name: value`, or a bare value as `X-API-Key`. It reads the
// answer to `allow` only; a non-2xx answer is logged by Dovecot and, with the default
// `auth_policy_reject_on_fail = no`, lets the login go on — so refusing a caller without the
// key never blocks anyone either.
//
// Only `protocol` imap and pop3 grant (sources `imap` and `pop3`). Submission and SMTP AUTH
// (`smtp`, Postfix through Dovecot SASL) already relay on their own authenticated session;
// granting their address would open relaying to unauthenticated sessions from it, which is not
// POP-before-SMTP. Anything else (lmtp, sieve, doveadm, an empty protocol) grants nothing.
//
// Metrics (protocol `auth-policy`): `granted` an allow answered, `renewed` a report written,
// `not_granted` a report that grants nothing (failed login, other protocol), `write_failed`,
// `denied` (missing or wrong API key), `malformed` (bad method, command, type, size or JSON).
import crypto from 'node:crypto';
import http from 'node:http';
import type net from 'node:net';
import { canonicalIp, isClientAddress, parseIp } from '../net/ip.ts';
import { listenTcp } from '../net/listen.ts';
import { GrantWriteError, type GrantSource } from '../grants/types.ts';
import { admitPeer, type BridgeContext, type ListenerOptions, type RunningListener } from './listener.ts';
import { bridgeRequests, type BridgeRequestResult } from './metrics.ts';

/** Dovecot's bodies are a few hundred bytes; anything near this is not Dovecot. */
export const MAX_BODY_BYTES = 64 * 1024;
/** Reports whose grant write is still running; beyond this, new reports are answered 503 unwritten. */
export const MAX_PENDING_REPORTS = 1024;
/** How long a report waits for its write before answering 202 (Dovecot gives up after 2 s). */
const REPORT_WAIT_MS = 1500;
/** The CRD's limit on spec.user. */
const MAX_USER_LENGTH = 320;

const ALLOW_ANSWER = JSON.stringify({ status: 0, msg: '' });

const SOURCES: Record<string, GrantSource> = { imap: 'imap', pop3: 'pop3' };

export type AuthPolicyCommand = 'allow' | 'report';

/** The command of a request target (`/path?command=report`, `/x?a=b&command=allow`); undefined if none or unknown or repeated. */
export function commandOf(target: string): AuthPolicyCommand | undefined {
  const q = target.indexOf('?');
  if (q === -1) return undefined;
  const values = new URLSearchParams(target.slice(q + 1)).getAll('command');
  if (values.length !== 1) return undefined;
  return values[0] === 'allow' || values[0] === 'report' ? values[0] : undefined;
}

/** What a report asks of the store. */
export type ReportDecision =
  | { kind: 'renew'; address: string; user: string; source: GrantSource }
  | { kind: 'skip'; reason: string }
  | { kind: 'malformed'; reason: string };

function stringAttr(body: Record<string, unknown>, key: string): string | undefined {
  const v = body[key];
  return typeof v === 'string' ? v : undefined;
}

/** The user as the grant records it: Dovecot's requested name, or empty when it cannot be stored. */
function grantUser(login: string | undefined): string {
  if (login === undefined || login.length > MAX_USER_LENGTH || /[\p{Cc}]/u.test(login)) return '';
  return login;
}

/** Decide a parsed report body: renew only for a successful, unrejected IMAP/POP3 login from a client address. */
export function decideReport(body: unknown): ReportDecision {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return { kind: 'malformed', reason: 'the body is not a JSON object' };
  const b = body as Record<string, unknown>;
  if (typeof b.success !== 'boolean') return { kind: 'malformed', reason: 'a report needs "success": true|false' };
  if (b.policy_reject !== undefined && typeof b.policy_reject !== 'boolean') return { kind: 'malformed', reason: '"policy_reject" must be a boolean' };
  if (!b.success) return { kind: 'skip', reason: 'login failed' };
  if (b.policy_reject === true) return { kind: 'skip', reason: 'login rejected by policy' };
  const protocol = stringAttr(b, 'protocol');
  if (protocol === undefined) return { kind: 'malformed', reason: 'no "protocol" attribute (keep protocol=%s in auth_policy_request_attributes)' };
  const source = Object.hasOwn(SOURCES, protocol.toLowerCase()) ? SOURCES[protocol.toLowerCase()] : undefined;
  if (!source) return { kind: 'skip', reason: `protocol ${JSON.stringify(protocol.slice(0, 32))} does not grant relaying` };
  const remote = stringAttr(b, 'remote');
  if (remote === undefined) return { kind: 'malformed', reason: 'no "remote" attribute (keep remote=%{rip} in auth_policy_request_attributes)' };
  const ip = parseIp(remote);
  if (!ip || !isClientAddress(ip)) return { kind: 'skip', reason: `remote ${JSON.stringify(remote.slice(0, 64))} is not a client address` };
  return { kind: 'renew', address: canonicalIp(remote), user: grantUser(stringAttr(b, 'login')), source };
}

/** Compare a presented key with the configured one in time independent of where they differ. */
export function apiKeyMatches(expected: string, presented: string | undefined): boolean {
  if (presented === undefined) return false;
  const a = crypto.createHash('sha256').update(expected).digest();
  const b = crypto.createHash('sha256').update(presented).digest();
  return crypto.timingSafeEqual(a, b);
}

function isJsonType(contentType: string | undefined): boolean {
  return contentType !== undefined && contentType.split(';')[0]?.trim().toLowerCase() === 'application/json';
}

class BodyTooLarge extends Error {}

/** The request body, at most `limit` bytes (rejects with BodyTooLarge beyond it). */
function readBody(req: http.IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > limit) {
      reject(new BodyTooLarge());
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        req.off('data', onData);
        reject(new BodyTooLarge());
        return;
      }
      chunks.push(chunk);
    };
    req.on('data', onData);
    req.once('end', () => resolve(Buffer.concat(chunks)));
    req.once('error', reject);
  });
}

function answer(res: http.ServerResponse, status: number, body: string, close = false): void {
  if (res.headersSent) return;
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(body),
    ...(close ? { Connection: 'close' } : {}),
  });
  res.end(body);
}

const message = (msg: string) => JSON.stringify({ status: 0, msg });

export interface AuthPolicyListenerOptions extends ListenerOptions {
  /** The header Dovecot sends (`auth_policy_server_api_header`); a bare value arrives as X-API-Key. */
  apiHeader: { name: string; value: string };
}

export async function startAuthPolicyListener(opts: AuthPolicyListenerOptions, ctx: BridgeContext): Promise<RunningListener> {
  const headerName = opts.apiHeader.name.toLowerCase();
  let pending = 0;
  const count = (result: BridgeRequestResult) => bridgeRequests.inc({ protocol: 'auth-policy', result });

  const report = async (decision: ReportDecision & { kind: 'renew' }, peer: string, res: http.ServerResponse) => {
    if (pending >= MAX_PENDING_REPORTS) {
      count('write_failed');
      ctx.log.warn('auth_policy_overloaded', { peer, address: decision.address, pending });
      answer(res, 503, message('too many grant writes pending'));
      return;
    }
    pending++;
    const write = ctx.store.renew(decision.address, decision.user, decision.source).finally(() => pending--);
    let timer: NodeJS.Timeout | undefined;
    const waited = new Promise<'waiting'>((resolve) => (timer = setTimeout(() => resolve('waiting'), REPORT_WAIT_MS)));
    try {
      const outcome = await Promise.race([write, waited]);
      if (outcome === 'waiting') {
        // Answered before Dovecot's timeout; the write goes on (and its failure is logged below).
        answer(res, 202, message('grant write in progress'));
        await write;
      } else {
        answer(res, 200, message(''));
      }
      count('renewed');
      ctx.log.info('auth_policy_grant', { peer, address: decision.address, user: decision.user, source: decision.source, outcome });
    } catch (err) {
      count('write_failed');
      ctx.log.error('auth_policy_write_failed', {
        peer,
        address: decision.address,
        error: err as Error,
        ...(err instanceof GrantWriteError ? {} : { unexpected: true }),
      });
      // Dovecot logs a non-2xx answer ("Policy server HTTP error"), which tells its admin too.
      answer(res, 503, message('grant write failed'));
    } finally {
      clearTimeout(timer);
    }
  };

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const peer = req.socket.remoteAddress ?? '';
    const refuse = (status: number, reason: string, result: BridgeRequestResult = 'malformed') => {
      count(result);
      ctx.log.warn('auth_policy_refused', { peer, status, reason });
      // After a refusal mid-body the stream is not worth resynchronising.
      answer(res, status, JSON.stringify({ error: reason }), true);
    };
    const presented = req.headers[headerName];
    if (presented === undefined) return refuse(401, `missing ${opts.apiHeader.name} header`, 'denied');
    if (typeof presented !== 'string' || !apiKeyMatches(opts.apiHeader.value, presented)) {
      return refuse(403, `wrong ${opts.apiHeader.name} value`, 'denied');
    }
    if (req.method !== 'POST') return refuse(405, `method ${req.method ?? ''} is not POST`);
    const command = commandOf(req.url ?? '');
    if (!command) return refuse(400, 'expected exactly one command=allow or command=report in the query');
    if (!isJsonType(req.headers['content-type'])) return refuse(415, 'Content-Type must be application/json');
    let body: unknown;
    try {
      body = JSON.parse((await readBody(req, MAX_BODY_BYTES)).toString('utf8'));
    } catch (err) {
      if (err instanceof BodyTooLarge) return refuse(413, `body larger than ${MAX_BODY_BYTES} bytes`);
      if (err instanceof SyntaxError) return refuse(400, 'body is not valid JSON');
      throw err;
    }
    if (command === 'allow') {
      if (typeof body !== 'object' || body === null || Array.isArray(body)) return refuse(400, 'the body is not a JSON object');
      count('granted');
      answer(res, 200, ALLOW_ANSWER);
      return;
    }
    const decision = decideReport(body);
    if (decision.kind === 'malformed') return refuse(400, decision.reason);
    if (decision.kind === 'skip') {
      count('not_granted');
      ctx.log.debug('auth_policy_no_grant', { peer, reason: decision.reason });
      answer(res, 200, message(''));
      return;
    }
    await report(decision, peer, res);
  };

  const server = http.createServer(
    {
      keepAlive: true,
      requestTimeout: 10_000,
      headersTimeout: 5_000,
      maxHeaderSize: 8192,
    },
    (req, res) => {
      handle(req, res).catch((err: unknown) => {
        count('malformed');
        ctx.log.error('auth_policy_failed', { peer: req.socket.remoteAddress, error: err as Error });
        answer(res, 500, JSON.stringify({ error: 'internal error' }), true);
      });
    },
  );
  server.keepAliveTimeout = 60_000;
  server.maxConnections = 512;
  server.on('connection', (socket: net.Socket) => {
    if (!admitPeer('auth-policy', opts.allow, socket.remoteAddress)) socket.destroy();
  });
  server.on('clientError', (_err, socket) => {
    count('malformed');
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    socket.destroy();
  });

  const port = await listenTcp(server, opts.host, opts.port);
  ctx.log.info('auth_policy_listening', { host: opts.host, port, allow: opts.allow.entries, header: opts.apiHeader.name });
  return {
    protocol: 'auth-policy',
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
