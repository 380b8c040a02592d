// The POP3 role's metrics (defined once, at module level).
import { Counter, Gauge, Histogram } from 'prom-client';
import { registry } from '../observability/metrics.ts';

export const connectionsTotal = new Counter({
  name: 'kubedrac_pop3_connections_total',
  help: 'Client connections accepted by the POP3 server (both ports).',
  registers: [registry],
});

export const connectionsRefused = new Counter({
  name: 'kubedrac_pop3_connections_refused_total',
  help: 'Connections refused at accept by the concurrency limits.',
  labelNames: ['reason'] as const,
  registers: [registry],
});

export const sessionsActive = new Gauge({
  name: 'kubedrac_pop3_sessions_active',
  help: 'POP3 sessions open now.',
  registers: [registry],
});

export const loginsTotal = new Counter({
  name: 'kubedrac_pop3_logins_total',
  help: 'Login attempts by result: success, failure (bad credentials), throttled (refused without checking).',
  labelNames: ['result'] as const,
  registers: [registry],
});

export const retrievedBytes = new Counter({
  name: 'kubedrac_pop3_retrieved_bytes_total',
  help: 'Message bytes sent by RETR and TOP.',
  registers: [registry],
});

export const deletedMessages = new Counter({
  name: 'kubedrac_pop3_deleted_messages_total',
  help: 'Messages removed at QUIT (UPDATE state).',
  registers: [registry],
});

export const tlsHandshakes = new Counter({
  name: 'kubedrac_pop3_tls_handshakes_total',
  help: 'TLS handshakes (STLS and the POP3S port) by result.',
  labelNames: ['result'] as const,
  registers: [registry],
});

export const grantRenewals = new Counter({
  name: 'kubedrac_pop3_grant_renewals_total',
  help: 'Grant renewals requested at login, by outcome: created, patched, skipped, failed, timeout (still retried by the store), denied (deny list), none (no client address).',
  labelNames: ['result'] as const,
  registers: [registry],
});

export const grantWait = new Histogram({
  name: 'kubedrac_pop3_grant_wait_seconds',
  help: 'Time a successful login waited for its grant write (bounded by loginWaitForGrant).',
  buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
  registers: [registry],
});
