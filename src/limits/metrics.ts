// Metrics of relay limits (SMTP role). No label carries a user name or an address.
import { Counter, Gauge } from 'prom-client';
import { registry } from '../observability/metrics.ts';

export const relayLimited = new Counter({
  name: 'kubedrac_smtp_relay_limited_total',
  help: 'Relayed RCPTs refused with 450 4.7.1 because a relay limit was reached, by kind (user_messages, user_recipients, address_messages, address_recipients).',
  labelNames: ['kind'] as const,
  registers: [registry],
});

export const usagePublishes = new Counter({
  name: 'kubedrac_smtp_usage_publishes_total',
  help: "Writes of this replica's RelayUsage object (one per flush interval at most, only when its counts changed).",
  registers: [registry],
});

export const usagePublishFailures = new Counter({
  name: 'kubedrac_smtp_usage_publish_failures_total',
  help: "Failed writes of this replica's RelayUsage object; mail still flows, counted locally and weighed as if every replica did the same.",
  registers: [registry],
});

export const usageBlind = new Gauge({
  name: 'kubedrac_smtp_usage_blind',
  help: "1 while this replica cannot see the other replicas' counts or publish its own (its new counts then weigh for every replica), else 0.",
  registers: [registry],
});

export const usageReplicas = new Gauge({
  name: 'kubedrac_smtp_usage_replicas',
  help: 'SMTP replicas whose relay counts of the last hour this replica sums (itself included).',
  registers: [registry],
});
