// The `smtp.limits:` section: per-user and per-address relay limits across every SMTP replica.
import os from 'node:os';
import { ConfigError, type ConfigReader } from '../config/reader.ts';
import type { LimitsPolicy, RelayLimit } from './policy.ts';

export interface LimitsConfig extends LimitsPolicy {
  enabled: boolean;
  /** How often a replica publishes its counts (only when they changed). */
  flushIntervalMs: number;
  /** This replica's RelayUsage object: the pod name in a cluster, host and process id elsewhere. */
  replicaName: string;
}

const MAX_PER_HOUR = 100_000_000;
/** A DNS subdomain name, as metadata.name must be. */
const OBJECT_NAME = /^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

/**
 * Host name (a pod's is its name) and process id, lowercased into an object name: two processes
 * on one host differ, and a restarted one reads its own object back if the name is the same.
 */
export function defaultReplicaName(): string {
  const host = os.hostname().toLowerCase().replace(/[^-a-z0-9.]/g, '-').replace(/^[-.]+|[-.]+$/g, '') || 'smtp';
  return `${host.slice(0, 240)}-${process.pid}`;
}

function readLimit(s: ConfigReader, def: RelayLimit): RelayLimit {
  const range = { min: 0, max: MAX_PER_HOUR };
  return { messagesPerHour: s.int('messagesPerHour', def.messagesPerHour, range), recipientsPerHour: s.int('recipientsPerHour', def.recipientsPerHour, range) };
}

export function parseLimitsConfig(section: ConfigReader): LimitsConfig {
  const enabled = section.bool('enabled', false);
  const flushIntervalMs = section.duration('flushInterval', '2s', { minMs: 100, maxMs: 60_000 });
  const replicaName = section.string('replicaName', defaultReplicaName(), {
    re: OBJECT_NAME,
    describe: 'an object name (lowercase letters, digits, - and .), such as smtp-0',
  });
  const u = section.section('perUser');
  const perUser = readLimit(u, { messagesPerHour: 500, recipientsPerHour: 2000 });
  u.finish();
  const a = section.section('perAddress');
  const perAddress = readLimit(a, { messagesPerHour: 2000, recipientsPerHour: 10_000 });
  a.finish();
  const overrides = new Map<string, RelayLimit>();
  for (const o of section.sectionList('overrides')) {
    const user = o.string('user');
    if (overrides.has(user)) throw new ConfigError(o.keyPath('user'), `${JSON.stringify(user)} is listed twice: keep one entry per user`);
    // An override's unset kind is the default's: `{user: demo, messagesPerHour: 100}` keeps perUser's recipients.
    overrides.set(user, readLimit(o, perUser));
    o.finish();
  }
  section.finish();
  return { enabled, flushIntervalMs, replicaName, perUser, perAddress, overrides };
}
