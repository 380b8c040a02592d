import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError, ConfigReader } from '../../src/config/reader.ts';
import { parsePop3Config } from '../../src/pop3/config.ts';

const TLS = { tls: { certFile: '/etc/tls/tls.crt', keyFile: '/etc/tls/tls.key' } };
const parse = (data: Record<string, unknown>) => parsePop3Config(new ConfigReader(data, 'pop3'));

function fails(data: Record<string, unknown>, key: string, text?: RegExp): void {
  assert.throws(
    () => parse(data),
    (err: unknown) => err instanceof ConfigError && err.key === key && (text === undefined || text.test(err.message)),
    `${JSON.stringify(data)} should fail on ${key}`,
  );
}

describe('pop3 config', () => {
  it('has safe defaults once a certificate is given', () => {
    const c = parse(TLS);
    assert.deepEqual(c.listen, { host: '0.0.0.0', port: 1110 });
    assert.equal(c.tlsPort, 1995);
    assert.equal(c.allowPlaintextAuth, false);
    assert.equal(c.loginWaitForGrantMs, 1000);
    assert.equal(c.timeouts.idleMs, 600_000);
    assert.equal(c.expire, 'NEVER');
    assert.equal(c.loginDelaySeconds, 0);
    assert.equal(c.trustedProxies.size, 0);
    assert.equal(c.mailLocation, '%u');
  });

  it('reads every knob', () => {
    const c = parse({
      ...TLS,
      listen: { host: '::', port: 110 },
      tlsPort: 995,
      trustedProxies: ['10.0.0.0/8'],
      denyGrantNetworks: ['192.0.2.0/24'],
      mailRoot: '/srv/mail',
      mailLocation: '%d/%n/Maildir',
      usersFile: '/etc/users',
      defaultPasswordScheme: 'SHA512-CRYPT',
      limits: { maxSessions: 50, maxSessionsPerAddress: 5, maxLineLength: 1024 },
      timeouts: { authorization: '30s', idle: '15m' },
      loginWaitForGrant: '250ms',
      throttle: { failureDelay: '1s', maxFailuresPerAddress: 3, maxFailuresPerUser: 9, window: '1h' },
      expire: 30,
      loginDelay: '5m',
    });
    assert.equal(c.tlsPort, 995);
    assert.ok(c.trustedProxies.contains('10.1.1.1') && c.denyGrantNetworks.contains('192.0.2.9'));
    assert.equal(c.limits.maxSessionsPerAddress, 5);
    assert.equal(c.timeouts.idleMs, 900_000);
    assert.equal(c.loginWaitForGrantMs, 250);
    assert.equal(c.throttle.windowMs, 3_600_000);
    assert.equal(c.expire, '30');
    assert.equal(c.loginDelaySeconds, 300);
  });

  it('refuses each kind of mistake, naming the key', () => {
    fails({}, 'pop3.tls', /allowPlaintextAuth/); // nobody could log in
    fails({ allowPlaintextAuth: true, tlsPort: 995 }, 'pop3.tlsPort', /certificate/);
    fails({ ...TLS, tls: { certFile: '/x' } }, 'pop3.tls.keyFile', /required/);
    fails({ ...TLS, listen: { port: 70000 } }, 'pop3.listen.port');
    fails({ ...TLS, trustedProxies: ['10.0.0.0/33'] }, 'pop3.trustedProxies[0]');
    fails({ ...TLS, denyGrantNetworks: 'all' }, 'pop3.denyGrantNetworks', /list/);
    fails({ ...TLS, mailRoot: 'relative/path' }, 'pop3.mailRoot', /absolute/);
    fails({ ...TLS, mailLocation: '/abs/%u' }, 'pop3.mailLocation');
    fails({ ...TLS, mailLocation: '../%u' }, 'pop3.mailLocation');
    fails({ ...TLS, mailLocation: 'fixed' }, 'pop3.mailLocation');
    fails({ ...TLS, defaultPasswordScheme: 'MD5' }, 'pop3.defaultPasswordScheme');
    fails({ ...TLS, limits: { maxSessions: 5, maxSessionsPerAddress: 10 } }, 'pop3.limits.maxSessionsPerAddress', /maxSessions/);
    fails({ ...TLS, limits: { maxLineLength: 100 } }, 'pop3.limits.maxLineLength');
    fails({ ...TLS, timeouts: { idle: '5m' } }, 'pop3.timeouts.idle', /at least/); // RFC 1939: >= 10 minutes
    fails({ ...TLS, timeouts: { authorization: 'soon' } }, 'pop3.timeouts.authorization', /duration/);
    fails({ ...TLS, loginWaitForGrant: '1m' }, 'pop3.loginWaitForGrant', /at most/);
    fails({ ...TLS, lock: { heartbeat: '1m', stale: '1m' } }, 'pop3.lock.stale', /heartbeats/);
    fails({ ...TLS, expire: 'sometimes' }, 'pop3.expire', /NEVER/);
    fails({ ...TLS, implementation: 'two words' }, 'pop3.implementation');
    fails({ ...TLS, allowPlaintextAuth: 'yes' }, 'pop3.allowPlaintextAuth', /true or false/);
    fails({ ...TLS, maxSesions: 5 }, 'pop3.maxSesions', /unknown key/);
    fails({ ...TLS, limits: { maxSesions: 5 } }, 'pop3.limits.maxSesions', /unknown key/);
  });
});
