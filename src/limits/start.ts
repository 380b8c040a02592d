// Relay limits for one SMTP replica: the ledger, its sync with the API server, and the gate the
// server calls. One function, so the role's main wires it in a line.
import type { KubeClient } from '../kube/client.ts';
import type { Logger } from '../observability/log.ts';
import type { LimitsConfig } from './config.ts';
import { RelayLimitGate } from './gate.ts';
import { UsageLedger } from './ledger.ts';
import { RelayUsageSync } from './usage-sync.ts';

export interface RunningRelayLimits {
  gate: RelayLimitGate;
  ledger: UsageLedger;
  sync: RelayUsageSync;
  /** Publish what is left and stop watching. */
  stop(): Promise<void>;
}

export function startRelayLimits(opts: { config: LimitsConfig; client: KubeClient; namespace: string; log: Logger; now?: () => number }): RunningRelayLimits {
  const log = opts.log.child({ component: 'relay-limits' });
  const ledger = new UsageLedger({ replica: opts.config.replicaName });
  const sync = new RelayUsageSync({ client: opts.client, namespace: opts.namespace, ledger, flushIntervalMs: opts.config.flushIntervalMs, log, now: opts.now });
  sync.start();
  const { perUser, perAddress, overrides } = opts.config;
  log.info('relay_limits_enabled', { replica: ledger.replica, perUser, perAddress, overrides: overrides.size, flushIntervalMs: opts.config.flushIntervalMs });
  const gate = new RelayLimitGate({ config: opts.config, ledger, log, now: opts.now });
  return { gate, ledger, sync, stop: () => sync.stop() };
}
