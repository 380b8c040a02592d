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

/** The bounce for recipients the upstream refused after we had accepted the message. */
export function deliveryStatusNotification(ourName: string, msg: OnwardMessage, reasons: { rcpt: string; response: string }[], nowMs: number): Buffer {
  const boundary = `kd-${nowMs.toString(36)}-${Math.random().toString(36).slice(2)}`;
  const date = new Date(nowMs).toUTCString().replace(/GMT$/, '+0000');
  const oneLine = (t: string) => t.replace(/[\r\n]+/g, ' ').slice(0, 500);
  const headerEnd = msg.raw.indexOf('\r\n\r\n');
  const originalHeaders = msg.raw.subarray(0, headerEnd === -1 ? Math.min(msg.raw.length, 64 * 1024) : headerEnd + 2).toString('latin1');
  const lines = [
    `From: Mail Delivery System <MAILER-DAEMON@${ourName}>`,
    `To: <${msg.from}>`,
    'Subject: Undelivered Mail Returned to Sender',
    `Date: ${date}`,
    `Message-ID: <${boundary}@${ourName}>`,
    'Auto-Submitted: auto-replied',
    'MIME-Version: 1.0',
    `Content-Type: multipart/report; report-type=delivery-status; boundary="${boundary}"`,
    '',
    `--${boundary}`,
    'Content-Type: text/plain; charset=us-ascii',
    '',
    `This is the mail system at ${ourName}.`,
    'Your message was accepted, but the next relay refused it for these recipients:',
    '',
    ...reasons.map((r) => `<${r.rcpt}>: ${oneLine(r.response)}`),
    '',
    `--${boundary}`,
    'Content-Type: message/delivery-status',
    '',
    `Reporting-MTA: dns; ${ourName}`,
    `Arrival-Date: ${date}`,
    ...reasons.flatMap((r) => {
      const status = /\b([45]\.\d{1,3}\.\d{1,3})\b/.exec(r.response)?.[1] ?? '5.0.0';
      return ['', `Final-Recipient: rfc822; ${r.rcpt}`, 'Action: failed', `Status: ${status.replace(/^4/, '5')}`, `Diagnostic-Code: smtp; ${oneLine(r.response)}`];
    }),
    '',
    `--${boundary}`,
    'Content-Type: text/rfc822-headers',
    '',
    originalHeaders.replace(/\r\n$/, ''),
    '',
    `--${boundary}--`,
    '',
  ];
  return Buffer.from(lines.join('\r\n'), 'latin1');
}

export class SmarthostOnward implements Onward {
  private readonly transport: ReturnType<typeof createTransport>;

  private readonly ourName: string;

  constructor(cfg: SmarthostConfig, ourName: string) {
    this.ourName = ourName;
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
    let info: { response?: unknown; rejected?: unknown; rejectedErrors?: unknown };
    try {
      info = (await this.transport.sendMail({ envelope: { from: msg.from, to: msg.to }, raw: msg.raw })) as typeof info;
    } catch (err) {
      throw upstreamReply(err);
    }
    const rejected = Array.isArray(info.rejected) ? info.rejected.map((r) => String(r)) : [];
    if (rejected.length > 0) {
      // The upstream took the message for some recipients and refused the others after we had
      // said yes to all of them: as any MTA that already accepted, tell the sender by a bounce.
      const errors = Array.isArray(info.rejectedErrors) ? (info.rejectedErrors as { recipient?: unknown; response?: unknown }[]) : [];
      const reasons = rejected.map((rcpt) => {
        const e = errors.find((x) => x.recipient === rcpt);
        return { rcpt, response: typeof e?.response === 'string' ? e.response : 'refused by the upstream relay' };
      });
      await this.bounce(msg, reasons);
    }
    return { result: { response: typeof info.response === 'string' ? info.response : '', rejected } };
  }

  /** A delivery status notification (RFC 3464) to the sender; never for the null sender. */
  private async bounce(msg: OnwardMessage, reasons: { rcpt: string; response: string }[]): Promise<void> {
    if (msg.from === '') return;
    const dsn = deliveryStatusNotification(this.ourName, msg, reasons, Date.now());
    try {
      await this.transport.sendMail({ envelope: { from: '', to: [msg.from] }, raw: dsn });
    } catch {
      // Nothing more can be done without a queue; the caller logs the partial rejection.
    }
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
