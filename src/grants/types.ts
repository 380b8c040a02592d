// The RelayGrant contract shared by every role (see ARCHITECTURE.md).

export const GROUP = 'kubedrac.io';
export const VERSION = 'v1alpha1';
export const KIND = 'RelayGrant';
export const PLURAL = 'relaygrants';
export const API_VERSION = `${GROUP}/${VERSION}`;

export const LABEL_MANAGED_BY = 'app.kubernetes.io/managed-by';
export const LABEL_SOURCE = 'kubedrac.io/source';
/**
 * Who the grant is for, as a hash (userHash in ./user-label.ts): user names are not valid label
 * values. Set by every write that knows the user; revocation selects a user's grants by it.
 */
export const LABEL_USER_HASH = 'kubedrac.io/user-hash';
/** Stamped by the writer on every write, with millisecond precision, to measure propagation. */
export const ANNOTATION_RENEWED_AT = 'kubedrac.io/renewed-at';

export const GRANT_SOURCES = ['pop3', 'imap', 'drac', 'whoson', 'manual'] as const;
export type GrantSource = (typeof GRANT_SOURCES)[number];

export interface RelayGrantSpec {
  /** Canonical IP, or a CIDR prefix (IPv6 aggregation). */
  address: string;
  user?: string;
  source: GrantSource;
  /** RFC 3339 date-time. */
  expiresAt: string;
}

export interface ObjectMeta {
  name: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

export interface RelayGrant {
  apiVersion: typeof API_VERSION;
  kind: typeof KIND;
  metadata: ObjectMeta;
  spec: RelayGrantSpec;
}

/** What a reader learns about a client address: the grant that covers it, if any. */
export interface GrantMatch {
  /** Object name of the grant (e.g. `v4-202.99.11.120`). */
  name: string;
  /** The grant's address or prefix. */
  address: string;
  user: string;
  expiresAtMs: number;
}

/** The read side every gate uses (SMTP, bridges). */
export interface GrantLookup {
  /** True once the first full list has been loaded. */
  readonly synced: boolean;
  /** The unexpired grant covering `ip` at `nowMs`, or undefined. Never matches an expired grant. */
  lookup(ip: string, nowMs?: number): GrantMatch | undefined;
}

export type RenewOutcome = 'created' | 'patched' | 'skipped';

/** The write side every login path uses (POP3, bridges). */
export interface GrantRenewer {
  /**
   * Create or extend the grant for `clientIp`. Resolves with what was done; rejects only with a
   * GrantWriteError (the login path logs and counts it, never fails the login), also when the
   * address must never be granted (see grantKeyFor). `proxyPeer`: the connection's peer when a
   * PROXY header named `clientIp`, which is never granted.
   */
  renew(clientIp: string, user: string, source: GrantSource, opts?: { proxyPeer?: string }): Promise<RenewOutcome>;
}

export class GrantWriteError extends Error {
  override readonly name = 'GrantWriteError';
  readonly address: string;
  constructor(address: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.address = address;
  }
}
