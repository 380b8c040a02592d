// Message acceptance at DATA: buffer the message within the size and memory limits, add the
// Received header, stage the local copies, hand the relayed copy onward, and only then make the
// local copies visible. Every answer is a reply the session sends as is.
import type { SMTPServerDataStream, SMTPServerSession } from 'smtp-server';
import { stageMaildirDelivery, type StagedDelivery } from '../mail/deliver.ts';
import { maildirPathFor } from '../mail/paths.ts';
import type { Logger } from '../observability/log.ts';
import type { SmtpConfig } from './config.ts';
import { smtpMessageSize, smtpMessages, smtpUpstreamSeconds } from './metrics.ts';
import { SmtpReplyError, type Onward } from './onward.ts';
import { receivedHeader } from './received.ts';
import { asciiText } from './relay-policy.ts';

/** One mail transaction's envelope as the RCPT decisions left it. */
export interface Transaction {
  /** The address relay decisions use; undefined when a proxy did not name the client. */
  clientIp: string | undefined;
  /** Local recipient -> the user whose Maildir gets it. */
  local: Map<string, string>;
  /** Recipients relayed onward, each once. */
  relayed: string[];
  /** How relaying was allowed (the first relayed recipient's reason), for Received and the log. */
  authorization: string | undefined;
  /** MAIL had SMTPUTF8: replies may carry UTF-8. */
  utf8: boolean;
}

export type AcceptanceConfig = Pick<SmtpConfig, 'hostname' | 'mailRoot' | 'mailLocation' | 'maxMessageSize' | 'maxBufferedBytes'>;

export interface AcceptanceDeps {
  onward: Onward;
  log: Logger;
  now: () => number;
}

export class MessageAcceptance {
  private readonly config: AcceptanceConfig;
  private readonly deps: AcceptanceDeps;
  /** Message bytes held in memory by all sessions together (bounded by maxBufferedBytes). */
  private buffered = 0;

  constructor(config: AcceptanceConfig, deps: AcceptanceDeps) {
    this.config = config;
    this.deps = deps;
  }

  /** Read the DATA stream to its end and accept the message; resolves to the 250 text. */
  async receive(stream: SMTPServerDataStream, session: SMTPServerSession, tx: Transaction): Promise<string> {
    const { config, deps } = this;
    const chunks: Buffer[] = [];
    let size = 0;
    let overBudget = false;
    try {
      await new Promise<void>((resolve, reject) => {
        stream.on('data', (chunk: Buffer) => {
          // Past a limit the rest is read and dropped, so the session stays in step.
          if (stream.sizeExceeded || overBudget) return;
          if (this.buffered + chunk.length > config.maxBufferedBytes) {
            overBudget = true;
            return;
          }
          chunks.push(chunk);
          size += chunk.length;
          this.buffered += chunk.length;
        });
        stream.once('end', () => resolve());
        stream.once('error', reject);
        // The client went away mid-message: smtp-server destroys the stream, maybe without an error.
        stream.once('close', () => reject(new SmtpReplyError(421, '4.4.2 Connection lost during DATA')));
      });
      if (stream.sizeExceeded) {
        smtpMessages.inc({ result: 'rejected' });
        throw new SmtpReplyError(552, `5.3.4 Message size exceeds fixed limit of ${config.maxMessageSize} bytes`);
      }
      if (overBudget) {
        smtpMessages.inc({ result: 'tempfail' });
        deps.log.warn('buffer_budget_exhausted', { session: session.id, maxBufferedBytes: config.maxBufferedBytes });
        throw new SmtpReplyError(452, '4.3.1 Insufficient system resources, try again later');
      }
      return await this.accept(session, tx, Buffer.concat(chunks, size), size);
    } finally {
      this.buffered -= size;
    }
  }

  private async accept(session: SMTPServerSession, tx: Transaction, body: Buffer, size: number): Promise<string> {
    const { config, deps } = this;
    const log = deps.log;
    const from = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
    const header = receivedHeader({
      helo: session.hostNameAppearsAs,
      clientAddress: session.remoteAddress,
      by: config.hostname,
      protocol: session.transmissionType,
      id: session.id,
      authorization: tx.relayed.length > 0 ? (tx.authorization ?? 'relay') : 'local delivery',
      recipients: session.envelope.rcptTo.map((r) => r.address),
      nowMs: deps.now(),
    });
    const message = Buffer.concat([Buffer.from(header), body]);

    // Local copies first, invisible in tmp/; they appear only if the relayed copy is accepted.
    const staged: StagedDelivery[] = [];
    const abortAll = () => Promise.all(staged.map((s) => s.abort().catch(() => undefined)));
    const users = new Map<string, string>();
    for (const [rcpt, user] of tx.local) if (!users.has(user)) users.set(user, rcpt);
    try {
      for (const [user, rcpt] of users) {
        const dir = maildirPathFor(config.mailRoot, config.mailLocation, user);
        const prefix = Buffer.from(`Delivered-To: <${rcpt}>\r\nReturn-Path: <${from}>\r\n`);
        staged.push(await stageMaildirDelivery(dir, Buffer.concat([prefix, message]), { hostname: config.hostname }));
      }
    } catch (err) {
      await abortAll();
      throw localDeliveryFailed(log, session, err);
    }
    let relayNote = '';
    if (tx.relayed.length > 0) {
      try {
        const relayed = await this.relay(session, tx, from, message);
        if (relayed.staged) staged.push(relayed.staged);
        relayNote = relayed.response;
      } catch (err) {
        await abortAll();
        throw err;
      }
    }
    try {
      for (const s of staged) await s.commit();
    } catch (err) {
      throw localDeliveryFailed(log, session, err);
    }
    smtpMessageSize.observe(size);
    if (users.size > 0) smtpMessages.inc({ result: 'delivered' });
    // The one point where a message is accepted for relay: every copy is committed.
    if (tx.relayed.length > 0) smtpMessages.inc({ result: 'relayed' });
    log.info('message_accepted', {
      session: session.id,
      client: tx.clientIp,
      size,
      local: users.size,
      relayed: tx.relayed.length,
      authorization: tx.relayed.length > 0 ? tx.authorization : undefined,
      upstream: relayNote || undefined,
    });
    return `2.0.0 Ok: queued as ${session.id}`;
  }

  /** Hand the relayed copy onward; a refusal becomes the reply the client gets. */
  private async relay(session: SMTPServerSession, tx: Transaction, from: string, message: Buffer): Promise<{ response: string; staged: StagedDelivery | undefined }> {
    const log = this.deps.log;
    const started = performance.now();
    try {
      const { result, staged } = await this.deps.onward.stage({ from, to: tx.relayed, raw: message });
      if (result.rejected.length > 0) {
        // The upstream refused some recipients after we had said yes to all of them; the
        // sender got a bounce (SmarthostOnward), and we keep a trace.
        log.warn('upstream_partial_rejection', { session: session.id, rejected: result.rejected.length, bounced: from !== '' });
      }
      return { response: result.response, staged };
    } catch (err) {
      const reply = err instanceof SmtpReplyError ? err : new SmtpReplyError(451, '4.3.0 Relay failed, try again later');
      smtpMessages.inc({ result: reply.responseCode >= 500 ? 'rejected' : 'tempfail' });
      log.warn('relay_failed', { session: session.id, code: reply.responseCode, reply: reply.message });
      // The upstream's text may quote a UTF-8 address; a client without SMTPUTF8 gets ASCII.
      throw tx.utf8 ? reply : new SmtpReplyError(reply.responseCode, asciiText(reply.message));
    } finally {
      smtpUpstreamSeconds.observe((performance.now() - started) / 1000);
    }
  }
}

function localDeliveryFailed(log: Logger, session: SMTPServerSession, err: unknown): SmtpReplyError {
  log.error('local_delivery_failed', { session: session.id, error: err as Error });
  smtpMessages.inc({ result: 'tempfail' });
  return new SmtpReplyError(451, '4.3.0 Local delivery failed, try again later');
}
