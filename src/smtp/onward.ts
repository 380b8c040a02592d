// Where relayed mail goes: the smarthost, answered before we answer our client (no queue of our
// own to lose), or an outbox Maildir for the local all-in-one.
import { createTransport } from 'nodemailer';
import { stageMaildirDelivery, type StagedDelivery } from '../mail/deliver.ts';
import type { SmarthostConfig } from './config.ts';

/** An SMTP reply to give our client: smtp-server writes `responseCode` and the message as is. */
export class SmtpReplyError extends Error {
  override readonly name = 'SmtpReplyError';
  readonly responseCode: number;
  constructor(responseCode: number, message: string) {
    super(message);
    this.responseCode = responseCode;
  }
}

export interface OnwardMessage {
  /** Envelope sender; '' for the null sender `<>`. */
  from: string;
  to: string[];
  /** The whole message with CRLF line ends, our Received header included. */
  raw: Buffer;
}

export interface OnwardResult {
  /** The upstream's final answer, for our log. */
  response: string;
  /** Recipients the upstream refused after accepting others (cannot be told to our client). */
  rejected: string[];
}

/**
 * Stage the relayed copy and, once the local copies are staged too, `commit`. A smarthost sends
 * during stage (its acceptance is what commit stands for); an outbox writes tmp/ during stage and
 * renames during commit, exactly like a local mailbox.
 */
export interface Onward {
  stage(msg: OnwardMessage): Promise<{ result: OnwardResult; staged?: StagedDelivery }>;
  close(): void;
}

const ENHANCED = /^\d{3}[ -]([245]\.\d{1,3}\.\d{1,3})\s+(.*)$/s;

/** Turn a nodemailer failure into the reply for our client: 5xx passed on, anything else 451. */
export function upstreamReply(err: unknown): SmtpReplyError {
  const e = err as { responseCode?: unknown; response?: unknown; code?: unknown; message?: unknown };
  const code = typeof e.responseCode === 'number' ? e.responseCode : undefined;
  const response = typeof e.response === 'string' ? e.response.split(/\r?\n/).pop()?.trim() ?? '' : '';
  if (code !== undefined && code >= 500 && code < 600) {
    const m = ENHANCED.exec(response);
    const enhanced = m?.[1]?.startsWith('5') ? m[1] : '5.0.0';
    const text = (m ? m[2] : response.replace(/^\d{3}[ -]/, '')) ?? '';
    return new SmtpReplyError(code, `${enhanced} Upstream refused: ${text.slice(0, 400)}`);
  }
  if (code !== undefined && code >= 400 && code < 500) {
    const m = ENHANCED.exec(response);
    const enhanced = m?.[1]?.startsWith('4') ? m[1] : '4.0.0';
    return new SmtpReplyError(451, `${enhanced} Upstream deferred the message, try again later`);
  }
  return new SmtpReplyError(451, '4.4.1 Upstream relay unavailable, try again later');
}

export class SmarthostOnward implements Onward {
  private readonly transport: ReturnType<typeof createTransport>;

  constructor(cfg: SmarthostConfig, ourName: string) {
    this.transport = createTransport({
      pool: true,
      maxConnections: 8,
      maxMessages: 1000,
      host: cfg.host,
      port: cfg.port,
      secure: cfg.secure,
      requireTLS: cfg.requireTLS,
      ignoreTLS: false,
      name: ourName,
      auth: cfg.auth ? { user: cfg.auth.user, pass: cfg.auth.password } : undefined,
      tls: { rejectUnauthorized: cfg.verifyCertificate },
      connectionTimeout: cfg.connectionTimeoutMs,
      greetingTimeout: cfg.connectionTimeoutMs,
      socketTimeout: 5 * 60_000,
      logger: false,
    });
  }

  async stage(msg: OnwardMessage): Promise<{ result: OnwardResult }> {
    let info: { response?: unknown; rejected?: unknown };
    try {
      info = (await this.transport.sendMail({ envelope: { from: msg.from, to: msg.to }, raw: msg.raw })) as typeof info;
    } catch (err) {
      throw upstreamReply(err);
    }
    const rejected = Array.isArray(info.rejected) ? info.rejected.map((r) => String(r)) : [];
    return { result: { response: typeof info.response === 'string' ? info.response : '', rejected } };
  }

  close(): void {
    this.transport.close();
  }
}

export class OutboxOnward implements Onward {
  private readonly maildir: string;
  private readonly hostname: string;

  constructor(maildir: string, hostname: string) {
    this.maildir = maildir;
    this.hostname = hostname;
  }

  async stage(msg: OnwardMessage): Promise<{ result: OnwardResult; staged: StagedDelivery }> {
    const envelope =
      `Return-Path: <${msg.from}>\r\n` + msg.to.map((to) => `X-Original-To: <${to}>\r\n`).join('');
    const staged = await stageMaildirDelivery(this.maildir, Buffer.concat([Buffer.from(envelope), msg.raw]), {
      hostname: this.hostname,
    });
    return { result: { response: 'stored in outbox', rejected: [] }, staged };
  }

  close(): void {}
}
