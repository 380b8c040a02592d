// The SMTP server's two hooks into relay limits: a check at RCPT for a recipient the gate would
// relay, and the count once the message was handed on. Local delivery never reaches either.
import type { Logger } from '../observability/log.ts';
import type { LimitsConfig } from './config.ts';
import type { UsageLedger } from './ledger.ts';
import { relayLimited } from './metrics.ts';
import { limitReply } from './policy.ts';

/** Who a relayed message counts against: the grant's user and address, or the SMTP AUTH user. */
export interface RelaySubject {
  user: string | undefined;
  address: string | undefined;
}

/** What the relay gate said about a relayed recipient (a subset of smtp's RelayDecision). */
export interface RelayAuthorization {
  reason: string;
  grant?: { user: string; address: string } | undefined;
}

export class RelayLimitGate {
  private readonly config: LimitsConfig;
  private readonly ledger: UsageLedger;
  private readonly log: Logger;
  private readonly now: () => number;

  constructor(opts: { config: LimitsConfig; ledger: UsageLedger; log: Logger; now?: () => number }) {
    this.config = opts.config;
    this.ledger = opts.ledger;
    this.log = opts.log;
    this.now = opts.now ?? Date.now;
  }

  /**
   * What a relay allowed this way counts against; undefined for trusted networks (the old
   * access.db RELAY lines: the site's own servers), which no limit applies to.
   */
  subjectOf(allowed: RelayAuthorization, authUser: string | undefined): RelaySubject | undefined {
    if (allowed.reason === 'trusted') return undefined; // also when the client did SMTP AUTH
    if (allowed.grant !== undefined) return { user: allowed.grant.user || undefined, address: allowed.grant.address };
    if (authUser !== undefined) return { user: authUser, address: undefined };
    return undefined;
  }

  /** The 450 reply when one more relayed recipient would pass a limit; undefined to accept it. */
  refusal(subject: RelaySubject, pendingRecipients: number, context: { session: string; client: string | undefined }): { code: number; message: string } | undefined {
    const over = this.ledger.check(this.config, { user: subject.user, address: subject.address, pendingRecipients }, this.now());
    if (over === undefined) return undefined;
    relayLimited.inc({ kind: over.kind });
    this.log.info('relay_limited', { ...context, user: subject.user, address: subject.address, kind: over.kind, used: over.used, limit: over.limit, blind: this.ledger.blind });
    return limitReply(over);
  }

  /** Count a message once its relayed copy was accepted onward, with its relayed recipients. */
  count(subject: RelaySubject, recipients: number): void {
    this.ledger.count({ user: subject.user, address: subject.address, recipients }, this.now());
  }
}
