// The bridge section: every listener off until enabled, defaults, and a clear error per mistake.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { bridgeReads, bridgeWrites, DEFAULT_PORTS, parseBridgeConfig } from '../../src/bridge/config.ts';
import { parseConfig } from '../../src/config/load.ts';
import { ConfigError } from '../../src/config/reader.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bridge-config-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
const keyFile = path.join(dir, 'api-key');
fs.writeFileSync(keyFile, 'a-long-enough-api-key-value\n');
const allowFile = path.join(dir, 'dracd.allow');
fs.writeFileSync(allowFile, '255.255.255.255 127.0.0.1\n');

function parse(yamlText: string) {
  return parseBridgeConfig(parseConfig(yamlText, 'test.yaml').section('bridge'));
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

describe('bridge config', () => {
  it('refuses a bridge with nothing enabled, naming the keys to set', () => {
    mistake('', 'bridge', /no listener is enabled.*bridge\.socketmap.*bridge\.authPolicy/);
    mistake('bridge:\n  socketmap: {enabled: false}\n', 'bridge', /no listener is enabled/);
  });

  it('has loopback-only defaults and the documented ports', () => {
    const c = parse('bridge:\n  socketmap: {enabled: true}\n  policy: {enabled: true}\n  whoson: {enabled: true}\n');
    assert.equal(c.socketmap?.port, DEFAULT_PORTS.socketmap);
    assert.equal(c.socketmap?.mapName, 'drac');
    assert.equal(c.socketmap?.host, '0.0.0.0');
    assert.equal(c.policy?.port, DEFAULT_PORTS.policy);
    assert.equal(c.whoson?.port, 9876);
    assert.equal(c.whoson?.udp, true);
    assert.equal(c.drac, undefined);
    assert.equal(c.authPolicy, undefined);
    const allow = c.socketmap?.allow;
    assert.ok(allow?.contains('127.0.0.1') && allow.contains('::1') && allow.contains('::ffff:127.0.0.9'));
    assert.ok(!allow.contains('10.0.0.1') && !allow.contains('192.0.2.1'), 'nothing outside loopback by default');
    assert.ok(bridgeReads(c));
    assert.ok(bridgeWrites(c), 'whoson LOGIN writes');
  });

  it('reads every key, with per-listener allow-lists overriding the section default', () => {
    const c = parse(`bridge:
  host: 127.0.0.1
  allow: [10.0.0.0/8]
  socketmap: {enabled: true, port: 0, mapName: relay, allow: [192.0.2.0/24]}
  drac:
    enabled: true
    port: 7000
    allowFile: ${allowFile}
    portmapper: {host: 127.0.0.33, port: 111}
  authPolicy: {enabled: true, port: 7001, apiHeaderName: X-Dovecot-Key, apiKeyFile: ${keyFile}}
`);
    assert.equal(c.socketmap?.mapName, 'relay');
    assert.ok(c.socketmap?.allow.contains('192.0.2.7') && !c.socketmap.allow.contains('10.1.1.1'));
    assert.equal(c.drac?.host, '127.0.0.1');
    assert.ok(c.drac?.allow.contains('10.1.1.1'));
    assert.equal(c.drac?.allowFile, allowFile);
    assert.deepEqual(c.drac?.portmapper, { host: '127.0.0.33', port: 111 });
    assert.deepEqual(c.authPolicy?.apiHeader, { name: 'X-Dovecot-Key', value: 'a-long-enough-api-key-value' });
    assert.deepEqual(parse('bridge:\n  drac: {enabled: true, portmapper: {enabled: false}}\n').drac?.portmapper, undefined);
    assert.ok(!bridgeReads(parse('bridge:\n  drac: {enabled: true}\n')), 'a writer-only bridge keeps no cache');
  });

  it('a listener turned off keeps its settings valid: its keys are read and checked, nothing listens', () => {
    const c = parse(
      'bridge:\n  policy: {enabled: true}\n  socketmap: {enabled: false, port: 9400, mapName: drac}\n  authPolicy: {enabled: false, port: 9403, apiKeyFile: /nonexistent}\n  drac: {enabled: false, portmapper: {port: 111}}\n',
    );
    assert.equal(c.socketmap, undefined);
    assert.equal(c.authPolicy, undefined, 'the key file of a disabled listener is not read');
    assert.equal(c.drac, undefined);
    mistake('bridge:\n  policy: {enabled: true}\n  socketmap: {enabled: false, prot: 9400}\n', 'bridge.socketmap.prot', /unknown key/);
    mistake('bridge:\n  policy: {enabled: true}\n  whoson: {enabled: false, port: 99999}\n', 'bridge.whoson.port', /integer from 0 to 65535/);
  });

  it('names the key and what it expected for each kind of mistake', () => {
    mistake('bridge:\n  socketmap: {enabled: yes please}\n', 'bridge.socketmap.enabled', /true or false/);
    mistake('bridge:\n  socketmap: {enabled: true, port: 70000}\n', 'bridge.socketmap.port', /integer from 0 to 65535/);
    mistake('bridge:\n  socketmap: {enabled: true, mapName: "two words"}\n', 'bridge.socketmap.mapName', /map name/);
    mistake('bridge:\n  allow: [10.0.0.0/33]\n  policy: {enabled: true}\n', 'bridge.allow[0]', /CIDR/);
    mistake('bridge:\n  policy: {enabled: true, allow: [everyone]}\n', 'bridge.policy.allow[0]', /CIDR/);
    mistake('bridge:\n  policy: {enabled: true, prot: 1}\n', 'bridge.policy.prot', /unknown key/);
    mistake('bridge:\n  sockemap: {enabled: true}\n', 'bridge.sockemap', /unknown key/);
    mistake('bridge:\n  drac: {enabled: true, allowFile: /nonexistent/dracd.allow}\n', 'bridge.drac.allowFile', /does not exist.*netmask netaddr/);
    mistake('bridge:\n  authPolicy: {enabled: true}\n', 'bridge.authPolicy.apiKeyFile', /is required/);
    mistake(`bridge:\n  authPolicy: {enabled: true, apiKeyFile: ${dir}/missing}\n`, 'bridge.authPolicy.apiKeyFile', /cannot read .*ENOENT/);
    const short = path.join(dir, 'short');
    fs.writeFileSync(short, 'abc\n');
    mistake(`bridge:\n  authPolicy: {enabled: true, apiKeyFile: ${short}}\n`, 'bridge.authPolicy.apiKeyFile', /at least 16 characters/);
    mistake(`bridge:\n  authPolicy: {enabled: true, apiKeyFile: ${keyFile}, apiHeaderName: "X Key"}\n`, 'bridge.authPolicy.apiHeaderName', /header name/);
    mistake('bridge:\n  socketmap: {enabled: true, port: 9000}\n  policy: {enabled: true, port: 9000}\n', 'bridge.policy.port', /already used by bridge\.socketmap\.port/);
  });
});
