// parseSmtpConfig: the defaults, and one test per kind of mistake, each naming the key.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { ConfigError, ConfigReader } from '../../src/config/reader.ts';
import { parseSmtpConfig } from '../../src/smtp/config.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'smtp-config-'));
const secret = path.join(dir, 'secret');
fs.writeFileSync(secret, 's3cret\n');
after(() => fs.rmSync(dir, { recursive: true, force: true }));

const minimal = { outbox: '/tmp/outbox' };
const parse = (data: Record<string, unknown>) => parseSmtpConfig(new ConfigReader(data, 'smtp'));

void describe('parseSmtpConfig', () => {
  void it('has safe defaults', () => {
    const c = parse(minimal);
    assert.deepEqual(c.listen, { host: '0.0.0.0', port: 2525 });
    assert.equal(c.implicitTlsPort, undefined);
    assert.equal(c.tls, undefined);
    assert.equal(c.trustedNetworks.size, 0);
    assert.equal(c.trustedProxies.size, 0);
    assert.equal(c.reverseDns, false);
    assert.equal(c.auth.enabled, false);
    assert.equal(c.liveLookup.enabled, true);
    assert.equal(c.idleTimeoutMs, 300_000);
    assert.equal(c.maxMessageSize, 10_240_000);
    assert.equal(c.smarthost, undefined);
    assert.equal(c.outbox, '/tmp/outbox');
  });

  void it('reads a full section', () => {
    const c = parse({
      hostname: 'mx.example.org',
      listen: { host: '127.0.0.1', port: 25 },
      tls: { certFile: '/c.pem', keyFile: '/k.pem' },
      implicitTlsPort: 465,
      localDomains: ['Example.ORG', 'mail.example.net.'],
      mailRoot: '/srv/mail',
      mailLocation: '%d/%n/Maildir',
      trustedNetworks: ['10.0.0.0/8', '::ffff:192.0.2.0/120'],
      trustedProxies: ['127.0.0.1'],
      smarthost: { host: 'relay.example.net', port: 587, requireTLS: true, auth: { user: 'kd', passwordFile: secret } },
      maxRecipients: 10,
      liveLookup: { enabled: false, ratePerSecond: 5, negativeCacheTtl: '30s' },
    });
    assert.deepEqual(c.localDomains, ['example.org', 'mail.example.net']);
    assert.equal(c.implicitTlsPort, 465);
    assert.ok(c.trustedNetworks.contains('::ffff:10.9.9.9'));
    assert.ok(c.trustedNetworks.contains('192.0.2.200'));
    assert.ok(!c.trustedNetworks.contains('192.0.3.1'));
    assert.deepEqual(c.smarthost?.auth, { user: 'kd', password: 's3cret' });
    assert.equal(c.smarthost?.port, 587);
    assert.equal(c.liveLookup.cacheTtlMs, 30_000);
  });

  const mistakes: { name: string; data: Record<string, unknown>; key: string; text: RegExp }[] = [
    { name: 'a typo in a key', data: { ...minimal, localDomain: ['x.org'] }, key: 'smtp.localDomain', text: /unknown key/ },
    { name: 'a typo in a nested key', data: { ...minimal, listen: { prot: 25 } }, key: 'smtp.listen.prot', text: /unknown key/ },
    { name: 'a port out of range', data: { ...minimal, listen: { port: 70000 } }, key: 'smtp.listen.port', text: /0 to 65535/ },
    { name: 'a port given as text', data: { ...minimal, listen: { port: '25' } }, key: 'smtp.listen.port', text: /integer/ },
    { name: 'a bad listen host', data: { ...minimal, listen: { host: 'not a host' } }, key: 'smtp.listen.host', text: /host name or IP/ },
    { name: 'a bad local domain', data: { ...minimal, localDomains: ['exa mple.org'] }, key: 'smtp.localDomains[0]', text: /domain/ },
    { name: 'local domains not a list', data: { ...minimal, localDomains: 'example.org' }, key: 'smtp.localDomains', text: /list/ },
    { name: 'a bad CIDR in trustedNetworks', data: { ...minimal, trustedNetworks: ['10.0.0.0/33'] }, key: 'smtp.trustedNetworks[0]', text: /CIDR/ },
    { name: 'a host name in trustedProxies', data: { ...minimal, trustedProxies: ['haproxy'] }, key: 'smtp.trustedProxies[0]', text: /CIDR/ },
    { name: 'tls without a key', data: { ...minimal, tls: { certFile: '/c.pem' } }, key: 'smtp.tls.keyFile', text: /required/ },
    { name: 'implicit TLS without certificates', data: { ...minimal, implicitTlsPort: 465 }, key: 'smtp.implicitTlsPort', text: /certificate/ },
    { name: 'neither smarthost nor outbox', data: {}, key: 'smtp.smarthost', text: /required/ },
    { name: 'both smarthost and outbox', data: { ...minimal, smarthost: { host: 'relay.example.net' } }, key: 'smtp.outbox', text: /either/ },
    { name: 'smarthost without host', data: { smarthost: { port: 25 } }, key: 'smtp.smarthost.host', text: /required/ },
    { name: 'smarthost secure and requireTLS', data: { smarthost: { host: 'r.example', secure: true, requireTLS: true } }, key: 'smtp.smarthost.requireTLS', text: /STARTTLS/ },
    {
      name: 'smarthost password over plaintext',
      data: { smarthost: { host: 'r.example', auth: { user: 'u', passwordFile: secret } } },
      key: 'smtp.smarthost.auth',
      text: /password/,
    },
    {
      name: 'smarthost password file missing',
      data: { smarthost: { host: 'r.example', secure: true, auth: { user: 'u', passwordFile: path.join(dir, 'nope') } } },
      key: 'smtp.smarthost.auth.passwordFile',
      text: /ENOENT/,
    },
    { name: 'a size limit that is not a number', data: { ...minimal, maxMessageSize: '10M' }, key: 'smtp.maxMessageSize', text: /integer/ },
    { name: 'a buffer budget below the message size', data: { ...minimal, maxBufferedBytes: 2_000_000, maxMessageSize: 3_000_000 }, key: 'smtp.maxBufferedBytes', text: /maxMessageSize/ },
    { name: 'zero recipients', data: { ...minimal, maxRecipients: 0 }, key: 'smtp.maxRecipients', text: /from 1/ },
    { name: 'per-address limit above the total', data: { ...minimal, maxClients: 10, maxClientsPerAddress: 20 }, key: 'smtp.maxClientsPerAddress', text: /maxClients/ },
    { name: 'a timeout without a unit', data: { ...minimal, idleTimeout: 300 }, key: 'smtp.idleTimeout', text: /duration/ },
    { name: 'a timeout too short', data: { ...minimal, idleTimeout: '10ms' }, key: 'smtp.idleTimeout', text: /at least/ },
    { name: 'an absolute mail location', data: { ...minimal, mailLocation: '/etc/%u' }, key: 'smtp.mailLocation', text: /relative path template/ },
    { name: 'a mail location without a user', data: { ...minimal, mailLocation: 'Maildir' }, key: 'smtp.mailLocation', text: /%u/ },
    { name: 'a mail location climbing out', data: { ...minimal, mailLocation: '../%u' }, key: 'smtp.mailLocation', text: /relative/ },
    { name: 'AUTH without TLS', data: { ...minimal, usersFile: '/u', auth: { enabled: true } }, key: 'smtp.auth.enabled', text: /TLS/ },
    {
      name: 'AUTH without users file',
      data: { ...minimal, tls: { certFile: '/c', keyFile: '/k' }, auth: { enabled: true } },
      key: 'smtp.auth.enabled',
      text: /usersFile/,
    },
    { name: 'AUTH given as a string', data: { ...minimal, auth: { enabled: 'yes' } }, key: 'smtp.auth.enabled', text: /true or false/ },
    { name: 'a live lookup rate of zero', data: { ...minimal, liveLookup: { ratePerSecond: 0 } }, key: 'smtp.liveLookup.ratePerSecond', text: /from 1/ },
    { name: 'a section that is a list', data: { ...minimal, liveLookup: [] }, key: 'smtp.liveLookup', text: /mapping/ },
  ];
  for (const m of mistakes) {
    void it(`refuses ${m.name}`, () => {
      assert.throws(
        () => parse(m.data),
        (err: unknown) => {
          assert.ok(err instanceof ConfigError, String(err));
          assert.equal(err.key, m.key);
          assert.match(err.message, m.text);
          return true;
        },
      );
    });
  }
});
