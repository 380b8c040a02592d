// The relay-limit decision at RCPT, as pure code over an in-memory view of the hour's counts
// (the RCPT hot path: a few map lookups, no allocation when under the limit).
import type { UsageCounts } from './types.ts';

/** Per hour; 0 means no limit of that kind. */
export interface RelayLimit {
  messagesPerHour: number;
  recipientsPerHour: number;
}

export interface LimitsPolicy {
  /** Every user's limit unless overridden. */
  perUser: RelayLimit;
  /** Per grant address (an address or an IPv6 prefix), whoever relays from it. */
  perAddress: RelayLimit;
  /** User name -> that user's own limit instead of perUser. */
  overrides: ReadonlyMap<string, RelayLimit>;
}

/** What a relay is counted against. */
export interface LimitSubject {
  /** The grant's spec.user or the SMTP AUTH user; none (a grant without a user): only the address counts. */
  user?: string | undefined;
  /** The grant's spec.address; none for SMTP AUTH from no grant. */
  address?: string | undefined;
  /** Relayed recipients already accepted in this transaction (not counted until DATA is done). */
  pendingRecipients: number;
}

/** The counts in force now, summed over every replica. */
export interface UsageView {
  user(name: string): UsageCounts | undefined;
  address(address: string): UsageCounts | undefined;
}

export type LimitKind = 'user_messages' | 'user_recipients' | 'address_messages' | 'address_recipients';
export const LIMIT_KINDS: readonly LimitKind[] = ['user_messages', 'user_recipients', 'address_messages', 'address_recipients'];

export interface LimitExceeded {
  kind: LimitKind;
  /** The user name or the grant address. */
  subject: string;
  /** What was counted so far this hour (for recipients: with this transaction's). */
  used: number;
  limit: number;
}

export function limitForUser(policy: LimitsPolicy, user: string): RelayLimit {
  return policy.overrides.get(user) ?? policy.perUser;
}

const NONE: UsageCounts = { messages: 0, recipients: 0 };

/**
 * The first limit one more relayed recipient would pass, or undefined when it may be relayed.
 * A message counts once, however many recipients: its first relayed RCPT is checked against the
 * message limit like the others (the message is one more), so a user at the limit gets no new
 * message out, and recipients are checked with the transaction's own pending ones.
 */
export function checkRelayLimit(view: UsageView, policy: LimitsPolicy, subject: LimitSubject): LimitExceeded | undefined {
  if (subject.user !== undefined && subject.user !== '') {
    const limit = limitForUser(policy, subject.user);
    const used = view.user(subject.user) ?? NONE;
    const over = exceeded(limit, used, subject.pendingRecipients, 'user_messages', 'user_recipients', subject.user);
    if (over) return over;
  }
  if (subject.address !== undefined) {
    const used = view.address(subject.address) ?? NONE;
    return exceeded(policy.perAddress, used, subject.pendingRecipients, 'address_messages', 'address_recipients', subject.address);
  }
  return undefined;
}

function exceeded(
  limit: RelayLimit,
  used: UsageCounts,
  pendingRecipients: number,
  messagesKind: LimitKind,
  recipientsKind: LimitKind,
  subject: string,
): LimitExceeded | undefined {
  if (limit.messagesPerHour > 0 && used.messages + 1 > limit.messagesPerHour) {
    return { kind: messagesKind, subject, used: used.messages, limit: limit.messagesPerHour };
  }
  const recipients = used.recipients + pendingRecipients;
  if (limit.recipientsPerHour > 0 && recipients + 1 > limit.recipientsPerHour) {
    return { kind: recipientsKind, subject, used: recipients, limit: limit.recipientsPerHour };
  }
  return undefined;
}

/** The RCPT reply for a relay over a limit: temporary (the hour moves on), with the enhanced code. */
export function limitReply(over: LimitExceeded): { code: 450; message: string } {
  const what = over.kind.endsWith('messages') ? 'messages' : 'recipients';
  const whose = over.kind.startsWith('user') ? 'your' : "your address's";
  return { code: 450, message: `4.7.1 Relay limit reached: ${whose} ${over.limit} ${what} per hour are used up, try again later` };
}
