// The RelayUsage contract: one object per SMTP replica with the relay counts it published
// (crds/relayusages.kubedrac.io.yaml). Read by every SMTP replica and by `kubectl drac top/why`.
import { GROUP, VERSION, API_VERSION, LABEL_MANAGED_BY, type ObjectMeta } from '../grants/types.ts';

export const USAGE_KIND = 'RelayUsage';
export const USAGE_PLURAL = 'relayusages';
export { API_VERSION, LABEL_MANAGED_BY };

/** Relayed messages, and relayed recipients (a message to three relayed recipients counts 1 and 3). */
export interface UsageCounts {
  messages: number;
  recipients: number;
}

export interface UsageBucket {
  /** RFC 3339; a multiple of bucketSeconds since the Unix epoch. */
  start: string;
  /** Per user: the grant's spec.user, or the SMTP AUTH user. */
  users?: Record<string, UsageCounts>;
  /** Per grant address: the grant's spec.address (an address or an IPv6 prefix). */
  addresses?: Record<string, UsageCounts>;
}

export interface RelayUsageSpec {
  replica: string;
  bucketSeconds: number;
  /** RFC 3339, when the replica last wrote the object. */
  publishedAt: string;
  /** Only buckets with counts, oldest first. */
  buckets: UsageBucket[];
}

export interface RelayUsage {
  apiVersion: typeof API_VERSION;
  kind: typeof USAGE_KIND;
  metadata: ObjectMeta;
  spec: RelayUsageSpec;
}

export function usagePath(namespace: string, name?: string): string {
  const base = `/apis/${GROUP}/${VERSION}/namespaces/${encodeURIComponent(namespace)}/${USAGE_PLURAL}`;
  return name === undefined ? base : `${base}/${encodeURIComponent(name)}`;
}
