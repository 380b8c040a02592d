// The operator section: defaults, and a clear error per kind of mistake.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseConfig } from '../../src/config/load.ts';
import { ConfigError } from '../../src/config/reader.ts';
import { parseOperatorConfig } from '../../src/operator/config.ts';

function parse(yamlText: string) {
  return parseOperatorConfig(parseConfig(yamlText, 'test.yaml').section('operator'));
}

function mistake(yamlText: string, key: string, message: RegExp): void {
  assert.throws(
    () => parse(yamlText),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError, String(err));
      assert.equal(err.key, key);
      assert.match(err.message, message);
      return true;
    },
  );
}

describe('operator config', () => {
  it('has the defaults of the issue', () => {
    const c = parse('');
    assert.equal(c.graceMs, 30_000);
    assert.equal(c.sweepIntervalMs, 60_000);
    assert.equal(c.deleteConcurrency, 16);
    assert.equal(c.leaderElection.leaseName, 'kube-drac-operator');
    assert.equal(c.leaderElection.leaseDurationMs, 15_000);
    assert.equal(c.leaderElection.renewDeadlineMs, 10_000);
    assert.equal(c.leaderElection.retryPeriodMs, 2000);
    assert.match(c.leaderElection.identity, /_[0-9a-f]{8}$/);
    assert.notEqual(parse('').leaderElection.identity, c.leaderElection.identity, 'identities differ per process start');
  });

  it('reads every key', () => {
    const c = parse(`operator:
  grace: 1s
  sweepInterval: 5s
  deleteConcurrency: 4
  leaderElection:
    leaseName: gc.mail
    identity: op-a
    leaseDuration: 3s
    renewDeadline: 2s
    retryPeriod: 500ms
`);
    assert.deepEqual(c, {
      graceMs: 1000,
      sweepIntervalMs: 5000,
      deleteConcurrency: 4,
      leaderElection: { leaseName: 'gc.mail', identity: 'op-a', leaseDurationMs: 3000, renewDeadlineMs: 2000, retryPeriodMs: 500 },
    });
    assert.equal(parse('operator: {grace: 0s}').graceMs, 0);
  });

  it('names the key, the value and the expected form for each mistake', () => {
    mistake('operator: {grace: 30}', 'operator.grace', /expected a duration such as 30m, 10s or 500ms, got 30/);
    mistake('operator: {grace: soon}', 'operator.grace', /got "soon"/);
    mistake('operator: {sweepInterval: 10ms}', 'operator.sweepInterval', /at least 1000 ms/);
    mistake('operator: {deleteConcurrency: 0}', 'operator.deleteConcurrency', /an integer from 1 to 64, got 0/);
    mistake('operator: {deleteConcurrency: many}', 'operator.deleteConcurrency', /got "many"/);
    mistake('operator: {gracePeriod: 1s}', 'operator.gracePeriod', /unknown key \(known keys here: .*grace/);
    mistake('operator: {leaderElection: {leaseName: Kube_Drac}}', 'operator.leaderElection.leaseName', /a Kubernetes object name/);
    mistake('operator: {leaderElection: {leaseDuration: 1500ms}}', 'operator.leaderElection.leaseDuration', /whole number of seconds/);
    mistake('operator: {leaderElection: {leaseDuration: 10s, renewDeadline: 10s}}', 'operator.leaderElection.renewDeadline', /shorter than leaseDuration/);
    mistake('operator: {leaderElection: {renewDeadline: 2s, retryPeriod: 2s}}', 'operator.leaderElection.renewDeadline', /longer than 1.2 x retryPeriod/);
    mistake('operator: {leaderElection: {retryPeriod: 1}}', 'operator.leaderElection.retryPeriod', /expected a duration/);
    mistake('operator: {leaderElection: {lease: x}}', 'operator.leaderElection.lease', /unknown key/);
    mistake('operator: [grace]', 'operator', /expected a mapping of keys, got a list/);
  });
});
