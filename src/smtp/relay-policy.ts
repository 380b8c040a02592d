// The relay decision at RCPT time, as pure code: what sendmail's `Kdrac` map and `access.db`
// RELAY lines decided, without sockets or API calls (the live lookup is an injected function).
import { domainToASCII, domainToUnicode } from 'node:url';
import { canonicalIp } from '../net/ip.ts';
import type { GrantLookup, GrantMatch } from '../grants/types.ts';

export type RelayVerdict = 'allowed' | 'denied' | 'tempfail';
export type RelayReason = 'local' | 'trusted' | 'grant' | 'live_lookup' | 'auth' | 'no_grant' | 'unsynced';

export interface RelayDecision {
  decision: RelayVerdict;
  reason: RelayReason;
  /** For local recipients: the user whose Maildir gets the message. */
  localUser?: string;
  /** For relayed recipients: how the relay was authorized, for the Received header. */
  authorization?: string;
  /** The grant that allowed the relay. */
  grant?: GrantMatch;
  /** What the live lookup did, when one was consulted. */
  liveLookup?: LiveLookupResult;
  /** Reply for a refusal: code and text with the enhanced status code written in. */
  code?: number;
  message?: string;
}

export interface RelayRequest {
  /** The client address: TCP peer or the address of a PROXY header from a trusted proxy. */
  clientIp: string;
  /** The RCPT address as smtp-server parsed it (`local@domain`, or the bare `postmaster`). */
  recipient: string;
  /** The SMTP AUTH user, set only when AUTH is enabled and was done over TLS. */
  authUser?: string;
  /**
   * The client did not say SMTPUTF8, so replies must be ASCII (RFC 6531 3.2): they show the
   * recipient's domain in A-labels, as such a client sent it (smtp-server hands over Unicode).
   */
  asciiReplies?: boolean;
}

/** Finds the mailbox owner of a local recipient; undefined when there is none. */
export interface LocalUsers {
  userFor(localPart: string, domain: string): string | undefined;
}

export interface AddressSet {
  contains(ip: string): boolean;
}

export type LiveLookupResult = 'found' | 'not_found' | 'cached_negative' | 'rate_limited' | 'error';

/** A cache miss confirmed against the API server (see LiveGrantLookup). */
export interface LiveLookup {
  lookup(ip: string, nowMs: number): Promise<{ result: LiveLookupResult; match?: GrantMatch }>;
}

export interface RelayPolicyOptions {
  /** Domains whose recipients are delivered here (compared case-insensitively, IDNs as Unicode). */
  localDomains: readonly string[];
  localUsers: LocalUsers;
  /** The old `access.db RELAY` lines. */
  trustedNetworks: AddressSet;
  grants: GrantLookup;
  liveLookup?: LiveLookup;
  now?: () => number;
}

/** Lowercase Unicode form, so `Example.ORG` and `xn--...` match what smtp-server hands over. */
export function normalizeDomain(domain: string): string {
  let lower = domain.toLowerCase();
  if (lower.endsWith('.')) lower = lower.slice(0, -1);
  // Only punycode needs the (costly) IDNA conversion; smtp-server already hands over Unicode.
  if (!lower.includes('xn--')) return lower;
  return domainToUnicode(lower) || lower;
}

export function splitAddress(address: string): { localPart: string; domain: string } {
  const at = address.lastIndexOf('@');
  if (at === -1) return { localPart: address, domain: '' };
  return { localPart: address.slice(0, at), domain: address.slice(at + 1) };
}

/**
 * `local@domain` with the domain in A-labels (`xn--...`), for a reply to a client without
 * SMTPUTF8; any other non-ASCII character (which such a client may not send) becomes `?`.
 */
const NON_ASCII = /[\u0080-\u{10ffff}]/u;

/** Whether the mailbox name (before the last @) needs SMTPUTF8 (RFC 6531 3.2). */
export function hasNonAsciiLocalPart(address: string): boolean {
  return NON_ASCII.test(splitAddress(address).localPart);
}

export function asciiAddress(address: string): string {
  const { localPart, domain } = splitAddress(address);
  if (domain === '') return asciiText(localPart);
  return `${asciiText(localPart)}@${asciiText(domainToASCII(domain) || domain)}`;
}

/** Reply text for a client without SMTPUTF8: every non-ASCII character becomes `?`. */
export function asciiText(text: string): string {
  return text.replace(/[\u0080-\u{10ffff}]/gu, '?');
}

/** Recipient text for a reply line: no brackets or control characters from the client. */
function shown(recipient: string): string {
  let out = '';
  for (const ch of recipient) {
    const c = ch.codePointAt(0) as number;
    if (c >= 0x20 && c !== 0x7f && ch !== '<' && ch !== '>') out += ch;
  }
  return `<${out}>`;
}

export function relayDenied(recipient: string): string {
  return `5.7.1 ${shown(recipient)}: Relay access denied`;
}

export class RelayPolicy {
  private readonly localDomains: ReadonlySet<string>;
  private readonly opts: RelayPolicyOptions;
  private readonly now: () => number;

  constructor(opts: RelayPolicyOptions) {
    this.opts = opts;
    this.localDomains = new Set(opts.localDomains.map(normalizeDomain));
    this.now = opts.now ?? Date.now;
  }

  /**
   * Decide one RCPT. Synchronous whenever the answer is known locally (the common case, a few
   * hundred nanoseconds); a Promise only when a cache miss is confirmed by a live lookup.
   */
  decide(req: RelayRequest): RelayDecision | Promise<RelayDecision> {
    const { localPart, domain } = splitAddress(req.recipient);
    const replyRecipient = req.asciiReplies === true && NON_ASCII.test(req.recipient) ? asciiAddress(req.recipient) : req.recipient;
    if (domain === '' || this.localDomains.has(normalizeDomain(domain))) {
      const user = this.opts.localUsers.userFor(localPart, domain);
      if (user === undefined) {
        return {
          decision: 'denied',
          reason: 'local',
          code: 550,
          message: `5.1.1 ${shown(replyRecipient)}: Recipient address rejected: User unknown in local recipient table`,
        };
      }
      return { decision: 'allowed', reason: 'local', localUser: user };
    }

    // IPv6, and IPv4-mapped IPv6 above all, is put in canonical form first (a dotted quad from a
    // socket already is).
    let ip: string;
    try {
      ip = canonicalIp(req.clientIp);
    } catch {
      // An unparseable peer (should not happen with a TCP socket) never relays.
      return this.denied(replyRecipient);
    }
    if (this.opts.trustedNetworks.contains(ip)) {
      return { decision: 'allowed', reason: 'trusted', authorization: `trusted network ${ip}` };
    }
    if (req.authUser !== undefined) {
      return { decision: 'allowed', reason: 'auth', authorization: `smtp auth ${req.authUser}` };
    }
    const nowMs = this.now();
    const grants = this.opts.grants;
    if (!grants.synced) {
      return this.tempfail(replyRecipient, 'relay authorization not loaded yet');
    }
    const match = grants.lookup(ip, nowMs);
    // The cache never returns an expired grant; checked again so that a stale cache cannot open
    // the relay either.
    if (match !== undefined && match.expiresAtMs > nowMs) {
      return {
        decision: 'allowed',
        reason: 'grant',
        grant: match,
        authorization: `pop-before-smtp grant ${match.name}`,
      };
    }
    const live = this.opts.liveLookup;
    if (live === undefined) return this.denied(replyRecipient);
    return live.lookup(ip, nowMs).then(
      ({ result, match: found }) => this.afterLiveLookup(replyRecipient, result, found, nowMs),
      () => this.afterLiveLookup(replyRecipient, 'error', undefined, nowMs),
    );
  }

  private afterLiveLookup(
    recipient: string,
    result: LiveLookupResult,
    found: GrantMatch | undefined,
    nowMs: number,
  ): RelayDecision {
    if (result === 'found' && found !== undefined && found.expiresAtMs > nowMs) {
      return {
        decision: 'allowed',
        reason: 'live_lookup',
        grant: found,
        liveLookup: result,
        authorization: `pop-before-smtp grant ${found.name} via live lookup`,
      };
    }
    if (result === 'error') {
      // The cache says no, but the grant may have been written a moment ago and the API server
      // cannot tell us: the client retries later rather than being refused for our own fault.
      return { ...this.tempfail(recipient, 'relay authorization temporarily unavailable'), liveLookup: result };
    }
    return { ...this.denied(recipient), liveLookup: result };
  }

  private denied(recipient: string): RelayDecision {
    return { decision: 'denied', reason: 'no_grant', code: 550, message: relayDenied(recipient) };
  }

  private tempfail(recipient: string, why: string): RelayDecision {
    return {
      decision: 'tempfail',
      reason: 'unsynced',
      code: 451,
      message: `4.7.1 ${shown(recipient)}: Relay access temporarily deferred: ${why}, try again later`,
    };
  }
}

export interface LiveGrantLookupOptions {
  /** One GET of the grant object for this client address; undefined on 404. */
  fetch: (ip: string) => Promise<GrantMatch | undefined>;
  /** The global rate limit: true when a lookup may be made now (a token bucket). */
  tryAcquire: () => boolean;
  /** How long a miss is remembered per address (it only delays a grant the watch has not shown yet). */
  cacheTtlMs: number;
  /**
   * How long a find is remembered per address: a revoked grant keeps relaying that long, so keep
   * it within the revocation bound (2 s). It spares the API server a GET per RCPT of a burst while
   * the watch is behind.
   */
  foundTtlMs: number;
  /** Bound on remembered addresses, so a flood of strangers cannot grow memory. */
  maxEntries?: number;
}

interface Remembered {
  untilMs: number;
  match: GrantMatch | undefined;
}

/**
 * Confirms cache misses with a live GET, at most `tryAcquire` allows, remembering each answer per
 * address for a short while and sharing one GET between concurrent RCPTs from the same address.
 */
export class LiveGrantLookup implements LiveLookup {
  private readonly opts: LiveGrantLookupOptions;
  private readonly remembered = new Map<string, Remembered>();
  private readonly inFlight = new Map<string, Promise<GrantMatch | undefined>>();
  private readonly maxEntries: number;

  constructor(opts: LiveGrantLookupOptions) {
    this.opts = opts;
    this.maxEntries = opts.maxEntries ?? 100_000;
  }

  async lookup(ip: string, nowMs: number): Promise<{ result: LiveLookupResult; match?: GrantMatch }> {
    const known = this.remembered.get(ip);
    if (known !== undefined) {
      if (known.untilMs > nowMs) {
        if (known.match !== undefined && known.match.expiresAtMs > nowMs) return { result: 'found', match: known.match };
        return { result: 'cached_negative' };
      }
      this.remembered.delete(ip);
    }
    let pending = this.inFlight.get(ip);
    if (pending === undefined) {
      if (!this.opts.tryAcquire()) return { result: 'rate_limited' };
      pending = this.opts.fetch(ip);
      this.inFlight.set(ip, pending);
      const clear = () => this.inFlight.delete(ip);
      pending.then(clear, clear);
    }
    let match: GrantMatch | undefined;
    try {
      match = await pending;
    } catch {
      return { result: 'error' };
    }
    const found = match !== undefined && match.expiresAtMs > nowMs;
    this.remember(ip, found ? match : undefined, nowMs + (found ? this.opts.foundTtlMs : this.opts.cacheTtlMs));
    if (found) return { result: 'found', match };
    return { result: 'not_found' };
  }

  private remember(ip: string, match: GrantMatch | undefined, untilMs: number): void {
    if (this.remembered.size >= this.maxEntries) {
      // Maps iterate in insertion order: drop the oldest entry.
      const oldest = this.remembered.keys().next();
      if (!oldest.done) this.remembered.delete(oldest.value);
    }
    this.remembered.delete(ip);
    this.remembered.set(ip, { untilMs, match });
  }
}
