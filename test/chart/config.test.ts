// The config files the chart renders are accepted by the roles' own parsers, so chart and code
// cannot drift: a key the chart writes that a role does not know fails here, not in a pod.
// Run: npm test -- test/chart/config.test.ts
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { parseBridgeConfig } from '../../src/bridge/config.ts';
import { parseDracdAllow } from '../../src/bridge/drac/dracd-allow.ts';
import { parseConfig, type ConfigDocument } from '../../src/config/load.ts';
import { parseOperatorConfig } from '../../src/operator/config.ts';
import { parsePop3Config } from '../../src/pop3/config.ts';
import { parseSmtpConfig } from '../../src/smtp/config.ts';
import { MINIMAL, VALUES_ALL, find, render } from './support.ts';

let root = '';

/**
 * The ConfigMap's files as a pod would read them. Files the chart mounts from Secrets (read
 * while parsing: the smarthost password, the bridge's API key) are placed under a temp root
 * standing in for /etc/kube-drac; other ConfigMap files (dracd.allow) are written there too.
 */
async function renderedConfigs(args: string[]): Promise<Record<string, ConfigDocument>> {
  const objects = await render(args);
  const data = (find(objects, 'ConfigMap', objects.find((o) => o.kind === 'ConfigMap' && o.metadata.name.endsWith('-config'))?.metadata.name ?? '') as unknown as {
    data: Record<string, string>;
  }).data;
  const docs: Record<string, ConfigDocument> = {};
  fs.mkdirSync(path.join(root, 'config'), { recursive: true });
  for (const [file, text] of Object.entries(data)) {
    if (!file.endsWith('.yaml')) fs.writeFileSync(path.join(root, 'config', file), text);
  }
  for (const [file, text] of Object.entries(data)) {
    if (file.endsWith('.yaml')) docs[file.replace(/\.yaml$/, '')] = parseConfig(text.replaceAll('/etc/kube-drac/', `${root}/`), `ConfigMap ${file}`);
  }
  return docs;
}

describe("the chart's rendered config, read by the roles' parsers", () => {
  before(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'kube-drac-chart-config-'));
    fs.mkdirSync(path.join(root, 'smarthost'));
    fs.writeFileSync(path.join(root, 'smarthost', 'password'), 's3cret\n');
    fs.mkdirSync(path.join(root, 'bridge'));
    fs.writeFileSync(path.join(root, 'bridge', 'api-key'), 'dovecot-policy-key-0123456789\n');
  });
  after(() => fs.rmSync(root, { recursive: true, force: true }));

  test('the minimal values: every role accepts its file', async () => {
    const docs = await renderedConfigs(MINIMAL);
    assert.deepEqual(Object.keys(docs).sort(), ['operator', 'pop3', 'smtp'], 'no bridge unless enabled');

    const pop3Doc = docs.pop3!;
    const pop3 = parsePop3Config(pop3Doc.section('pop3'), pop3Doc.section('login'));
    assert.deepEqual(pop3.listen, { host: '0.0.0.0', port: 1110 });
    assert.equal(pop3.implicitTlsPort, 1995);
    assert.deepEqual(pop3.renamedKeys, [], 'the chart writes no deprecated key');
    assert.deepEqual(pop3.tls, { certFile: `${root}/tls/tls.crt`, keyFile: `${root}/tls/tls.key` });
    assert.equal(pop3.allowPlaintextAuth, false);
    assert.equal(pop3.usersFile, `${root}/users/passwd`);
    assert.equal(pop3.mailRoot, '/var/mail/kube-drac');
    assert.equal(pop3.trustedProxies.size, 0, 'no PROXY headers believed by default');
    assert.equal(pop3Doc.common.grants.ttlMs, 30 * 60_000);
    assert.deepEqual(pop3Doc.common.metrics, { host: '0.0.0.0', port: 9090 });
    // The namespace is left to $POD_NAMESPACE (the downward API).
    assert.equal(pop3Doc.common.kubernetes.kubeconfig, undefined);

    const smtp = parseSmtpConfig(docs.smtp!.section('smtp'));
    assert.deepEqual(smtp.listen, { host: '0.0.0.0', port: 2525 });
    assert.equal(smtp.implicitTlsPort, undefined);
    assert.equal(smtp.smarthost?.host, 'relay.example.org');
    assert.equal(smtp.smarthost?.requireTLS, true);
    assert.equal(smtp.outbox, undefined);
    assert.equal(smtp.trustedNetworks.size, 0);
    assert.equal(smtp.mailLocation, pop3.mailLocation, 'pop3 and smtp agree on where Maildirs are');
    assert.equal(smtp.mailRoot, pop3.mailRoot);

    const op = parseOperatorConfig(docs.operator!.section('operator'));
    assert.equal(op.leaderElection.leaseName, 'r-kube-drac-operator');
    assert.equal(op.graceMs, 30_000);
  });

  test('every option on: every role accepts its file and sees the values', async () => {
    const docs = await renderedConfigs(['-f', VALUES_ALL]);
    for (const doc of Object.values(docs)) {
      assert.equal(doc.common.grants.ttlMs, 45 * 60_000);
      assert.equal(doc.common.grants.renewIntervalMs, 3 * 60_000);
      assert.equal(doc.common.grants.ipv6PrefixLength, 56);
      assert.deepEqual(doc.common.metrics, { host: '::', port: 9191 });
      assert.equal(doc.common.log.level, 'debug');
    }

    const pop3 = parsePop3Config(docs.pop3!.section('pop3'), docs.pop3!.section('login'));
    assert.equal(pop3.listen.host, '::');
    assert.equal(pop3.trustedProxies.size, 2);
    assert.equal(pop3.denyGrantNetworks.size, 1);
    assert.equal(pop3.mailLocation, '%d/%n/Maildir');
    assert.equal(pop3.usersFile, `${root}/users/users.passwd`);
    assert.equal(pop3.limits.maxSessions, 500);
    assert.equal(pop3.timeouts.idleMs, 15 * 60_000);
    assert.deepEqual(pop3.login, { failureDelayMs: 1000, maxFailuresPerAddress: 5, maxFailuresPerUser: 20, windowMs: 600_000 });
    assert.deepEqual(parseSmtpConfig(docs.smtp!.section('smtp'), docs.smtp!.section('login')).login, pop3.login, 'SMTP AUTH has the same guards');
    assert.equal(pop3.lock.staleMs, 60_000);
    assert.equal(pop3.expire, '30');
    assert.equal(pop3.loginDelaySeconds, 60);
    assert.equal(pop3.implementation, 'mail-pop');
    assert.equal(pop3.defaultPasswordScheme, 'SHA512-CRYPT');

    const smtp = parseSmtpConfig(docs.smtp!.section('smtp'));
    assert.equal(smtp.hostname, 'mail.example.org');
    assert.equal(smtp.implicitTlsPort, 2465);
    assert.deepEqual(smtp.localDomains, ['example.org', 'example.net']);
    assert.equal(smtp.trustedNetworks.size, 1);
    assert.equal(smtp.trustedProxies.size, 2);
    assert.deepEqual(smtp.smarthost?.auth, { user: 'kube-drac', password: 's3cret' });
    assert.equal(smtp.smarthost?.port, 587);
    assert.equal(smtp.auth.enabled, true);
    assert.equal(smtp.usersFile, `${root}/users/users.passwd`);
    assert.equal(smtp.maxMessageSize, 20_000_000);
    assert.equal(smtp.maxBufferedBytes, 536_870_912);
    assert.equal(smtp.greetingDelayMs, 1000);
    assert.equal(smtp.reverseDns, true);
    assert.deepEqual(smtp.liveLookup, { enabled: true, ratePerSecond: 50, cacheTtlMs: 2000, positiveCacheTtlMs: 1000 });

    const bridge = parseBridgeConfig(docs.bridge!.section('bridge'));
    assert.deepEqual(bridge.socketmap && [bridge.socketmap.host, bridge.socketmap.port, bridge.socketmap.mapName], ['::', 9400, 'drac']);
    assert.ok(bridge.socketmap?.allow.contains('127.0.0.1') && bridge.socketmap.allow.contains('10.244.3.4') && bridge.socketmap.allow.contains('192.0.2.25'));
    assert.ok(!bridge.socketmap?.allow.contains('192.0.2.26'), 'nobody else');
    assert.equal(bridge.policy?.port, 9401);
    assert.equal(bridge.whoson?.udp, true);
    assert.deepEqual(bridge.drac?.portmapper, { host: '::', port: 1111 });
    assert.equal(bridge.drac?.allowFile, `${root}/config/dracd.allow`);
    assert.deepEqual(parseDracdAllow(fs.readFileSync(`${root}/config/dracd.allow`, 'utf8'), 'dracd.allow'), ['198.51.100.0/24', '203.0.113.110/32']);
    assert.deepEqual(bridge.authPolicy?.apiHeader, { name: 'X-Dovecot-Key', value: 'dovecot-policy-key-0123456789' });

    const op = parseOperatorConfig(docs.operator!.section('operator'));
    assert.equal(op.leaderElection.leaseName, 'mail-operator');
    assert.equal(op.leaderElection.leaseDurationMs, 20_000);
    assert.equal(op.deleteConcurrency, 8);
    assert.equal(op.sweepIntervalMs, 30_000);
  });

  test('a value the schema allows but the role refuses is caught here (renewInterval not below ttl)', async () => {
    const docs = await renderedConfigs([...MINIMAL, '--set', 'grants.renewInterval=30m']).catch((err: unknown) => err as Error);
    assert.ok(docs instanceof Error, 'parseConfig must refuse it');
    assert.match(docs.message, /grants\.renewInterval: must be shorter than grants\.ttl/);
  });
});
