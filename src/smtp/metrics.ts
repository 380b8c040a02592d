// The SMTP role's metrics, defined once. No label ever carries an address or a user name.
import { Counter, Gauge, Histogram } from 'prom-client';
import { registry } from '../observability/metrics.ts';

export const smtpConnections = new Counter({
  name: 'kubedrac_smtp_connections_total',
  help: 'SMTP connections accepted (after the PROXY header, if any).',
  registers: [registry],
});

export const smtpSessionsActive = new Gauge({
  name: 'kubedrac_smtp_sessions_active',
  help: 'SMTP sessions open now.',
  registers: [registry],
});

export const smtpAuth = new Counter({
  name: 'kubedrac_smtp_auth_total',
  help: 'SMTP AUTH attempts by result: success, failure (bad credentials), throttled (refused unchecked), temporary.',
  labelNames: ['result'] as const,
  registers: [registry],
});

export const relayDecisions = new Counter({
  name: 'kubedrac_smtp_relay_decisions_total',
  help: 'RCPT decisions of the relay gate.',
  labelNames: ['decision', 'reason'] as const,
  registers: [registry],
});

export const smtpMessages = new Counter({
  name: 'kubedrac_smtp_messages_total',
  help: 'Messages after DATA: delivered locally, relayed onward, rejected (5xx) or deferred (4xx).',
  labelNames: ['result'] as const,
  registers: [registry],
});

export const smtpMessageSize = new Histogram({
  name: 'kubedrac_smtp_message_size_bytes',
  help: 'Size of accepted messages in bytes.',
  buckets: [1024, 4096, 16_384, 65_536, 262_144, 1_048_576, 4_194_304, 16_777_216],
  registers: [registry],
});

export const smtpUpstreamSeconds = new Histogram({
  name: 'kubedrac_smtp_upstream_seconds',
  help: 'Time the smarthost took to accept (or refuse) a relayed message.',
  buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  registers: [registry],
});

export const liveLookups = new Counter({
  name: 'kubedrac_grant_live_lookups_total',
  help: 'Cache misses confirmed against the API server, by result.',
  labelNames: ['result'] as const,
  registers: [registry],
});
