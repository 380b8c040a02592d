// Config mistakes name the key, the bad value and the expected form.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { loadConfig, parseConfig } from '../../src/config/load.ts';
import { ConfigError, ConfigReader, parseDuration } from '../../src/config/reader.ts';
import { parseRoleArgs } from '../../src/config/args.ts';

function mistake(yamlText: string, key: string, message: RegExp): void {
  assert.throws(
    () => parseConfig(yamlText, 'test.yaml'),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError, String(err));
      assert.equal(err.key, key);
      assert.match(err.message, message);
      return true;
    },
  );
}

describe('config', () => {
  it('has defaults for everything', () => {
    const { common } = parseConfig('# nothing set\n', 'empty.yaml');
    assert.deepEqual(parseConfig('', 'empty.yaml').common, common);
    assert.equal(common.grants.ttlMs, 30 * 60_000);
    assert.equal(common.grants.renewIntervalMs, 5 * 60_000);
    assert.equal(common.grants.ipv6PrefixLength, 64);
    assert.equal(common.metrics.port, 9090);
    assert.equal(common.log.level, 'info');
  });

  it('reads durations in the usual forms', () => {
    assert.equal(parseDuration('30m'), 1_800_000);
    assert.equal(parseDuration('1h30m'), 5_400_000);
    assert.equal(parseDuration('250ms'), 250);
    assert.equal(parseDuration('1.5s'), 1500);
    assert.equal(parseDuration('30'), undefined);
    assert.equal(parseDuration('soon'), undefined);
    const doc = parseConfig('grants:\n  ttl: 2h\n  renewInterval: 90s\n', 'x');
    assert.equal(doc.common.grants.ttlMs, 7_200_000);
    assert.equal(doc.common.grants.renewIntervalMs, 90_000);
  });

  it('names the key and the expected form for each kind of mistake', () => {
    mistake('grants:\n  ttl: 30\n', 'grants.ttl', /expected a duration such as 30m, 10s or 500ms, got 30/);
    mistake('grants:\n  ttl: 10s\n', 'grants.ttl', /must be at least 60000 ms, got "10s"/);
    mistake('grants:\n  ttl: 10m\n  renewInterval: 20m\n', 'grants.renewInterval', /must be shorter than grants.ttl/);
    mistake('grants:\n  ipv6PrefixLength: 200\n', 'grants.ipv6PrefixLength', /expected an integer from 32 to 128, got 200/);
    mistake('grants:\n  ipv6PrefixLength: "64"\n', 'grants.ipv6PrefixLength', /expected an integer from 32 to 128, got "64"/);
    mistake('metrics:\n  port: 70000\n', 'metrics.port', /expected an integer from 0 to 65535, got 70000/);
    mistake('kubernetes:\n  namespace: Mail_NS\n', 'kubernetes.namespace', /expected a Kubernetes namespace name .* got "Mail_NS"/);
    mistake('log:\n  level: loud\n', 'log.level', /expected one of error, warn, info, debug, got "loud"/);
    mistake('grants:\n  tll: 30m\n', 'grants.tll', /unknown key \(known keys here: ipv6PrefixLength, renewInterval, ttl\)/);
    mistake('pop4:\n  x: 1\n', 'pop4', /unknown key/);
    mistake('grants: 30m\n', 'grants', /expected a mapping of keys, got "30m"/);
    mistake('- a\n- b\n', '(top level)', /expected a mapping of keys, got a list/);
    mistake('grants:\n  ttl: [30m\n', '(file)', /test.yaml is not valid YAML/);
  });

  it('checks lists of networks entry by entry', () => {
    const r = new ConfigReader({ trustedNetworks: ['10.0.0.0/8', '2001:db8::/32', '192.0.2.1', '10.0.0.0/33'] }, 'smtp');
    assert.throws(() => r.cidrList('trustedNetworks'), /smtp.trustedNetworks\[3\]: expected an IP address or CIDR .* got "10.0.0.0\/33"/);
    const ok = new ConfigReader({ trustedNetworks: ['10.0.0.0/8'] }, 'smtp');
    assert.deepEqual(ok.cidrList('trustedNetworks'), ['10.0.0.0/8']);
  });

  it('says which file it could not read, and what argument it did not understand', () => {
    assert.throws(() => loadConfig('/nonexistent/kube-drac.yaml'), /cannot read config file \/nonexistent\/kube-drac.yaml: ENOENT/);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kd-config-'));
    fs.writeFileSync(path.join(dir, 'c.yaml'), 'grants:\n  ttl: 45m\n');
    assert.equal(loadConfig(path.join(dir, 'c.yaml')).common.grants.ttlMs, 45 * 60_000);
    assert.deepEqual(parseRoleArgs('pop3', ['--config', 'a.yaml']), { configPath: 'a.yaml' });
    assert.deepEqual(parseRoleArgs('pop3', ['--config=b.yaml']), { configPath: 'b.yaml' });
    assert.throws(() => parseRoleArgs('pop3', ['--confg', 'a.yaml']), /kube-drac pop3: unknown argument "--confg"/);
  });
});
