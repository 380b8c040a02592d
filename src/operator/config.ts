// The `operator:` section of the config file, checked whole before anything starts.
import os from 'node:os';
import crypto from 'node:crypto';
import { ConfigError, type ConfigReader } from '../config/reader.ts';
import { checkLeaderElectionSettings } from '../kube/leader.ts';

export interface OperatorConfig {
  /** A grant is deleted this long after its expiresAt (clock skew between nodes). */
  graceMs: number;
  /** How often the whole cache is checked for due grants a timer might have missed. */
  sweepIntervalMs: number;
  /** Grants read and deleted at the same time. */
  deleteConcurrency: number;
  leaderElection: {
    leaseName: string;
    /** Who we are in the Lease; unique per process. */
    identity: string;
    leaseDurationMs: number;
    renewDeadlineMs: number;
    retryPeriodMs: number;
  };
}

const NAME = { re: /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, describe: 'a Kubernetes object name (lowercase letters, digits, - and .)' };

/** $POD_NAME in a pod (unique and readable), else host name; a random suffix keeps restarts apart. */
function defaultIdentity(): string {
  return `${process.env.POD_NAME ?? os.hostname()}_${crypto.randomBytes(4).toString('hex')}`;
}

export function parseOperatorConfig(r: ConfigReader): OperatorConfig {
  const graceMs = r.duration('grace', '30s', { minMs: 0, maxMs: 24 * 3_600_000 });
  const sweepIntervalMs = r.duration('sweepInterval', '60s', { minMs: 1000 });
  const deleteConcurrency = r.int('deleteConcurrency', 16, { min: 1, max: 64 });
  const le = r.section('leaderElection');
  const leaderElection = {
    leaseName: le.string('leaseName', 'kube-drac-operator', NAME),
    identity: le.string('identity', defaultIdentity()),
    leaseDurationMs: le.duration('leaseDuration', '15s', { minMs: 1000 }),
    renewDeadlineMs: le.duration('renewDeadline', '10s', { minMs: 100 }),
    retryPeriodMs: le.duration('retryPeriod', '2s', { minMs: 50 }),
  };
  const problem = checkLeaderElectionSettings(leaderElection);
  if (problem) {
    const key = problem.startsWith('leaseDuration') ? 'leaseDuration' : 'renewDeadline';
    throw new ConfigError(le.keyPath(key), `${problem}; got leaseDuration ${leaderElection.leaseDurationMs} ms, renewDeadline ${leaderElection.renewDeadlineMs} ms, retryPeriod ${leaderElection.retryPeriodMs} ms`);
  }
  le.finish();
  r.finish();
  return { graceMs, sweepIntervalMs, deleteConcurrency, leaderElection };
}
