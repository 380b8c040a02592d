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
    assert.equal(c.implicitTlsPort, 1995);
    assert.deepEqual(c.login, { failureDelayMs: 2000, maxFailuresPerAddress: 10, maxFailuresPerUser: 30, windowMs: 900_000 });
    assert.deepEqual(c.renamedKeys, []);
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
      implicitTlsPort: 995,
      trustedProxies: ['10.0.0.0/8'],
      denyGrantNetworks: ['192.0.2.0/24'],
      mailRoot: '/srv/mail',
      mailLocation: '%d/%n/Maildir',
      usersFile: '/etc/users',
      defaultPasswordScheme: 'SHA512-CRYPT',
      limits: { maxSessions: 50, maxSessionsPerAddress: 5, maxLineLength: 1024 },
      timeouts: { authorization: '30s', idle: '15m' },
      loginWaitForGrant: '250ms',
      expire: 30,
      loginDelay: '5m',
    });
    assert.equal(c.implicitTlsPort, 995);
    assert.ok(c.trustedProxies.contains('10.1.1.1') && c.denyGrantNetworks.contains('192.0.2.9'));
    assert.equal(c.limits.maxSessionsPerAddress, 5);
    assert.equal(c.timeouts.idleMs, 900_000);
    assert.equal(c.loginWaitForGrantMs, 250);
        assert.equal(c.expire, '30');
    assert.equal(c.loginDelaySeconds, 300);
  });

  it('refuses each kind of mistake, naming the key', () => {
    fails({}, 'pop3.tls', /allowPlaintextAuth/); // nobody could log in
    fails({ allowPlaintextAuth: true, implicitTlsPort: 995 }, 'pop3.implicitTlsPort', /certificate/);
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

  it('reads the login guards from the login section, shared with SMTP AUTH', () => {
    const c = parsePop3Config(new ConfigReader(TLS, 'pop3'), new ConfigReader({ failureDelay: '1s', maxFailuresPerAddress: 3, maxFailuresPerUser: 9, window: '1h' }, 'login'));
    assert.deepEqual(c.login, { failureDelayMs: 1000, maxFailuresPerAddress: 3, maxFailuresPerUser: 9, windowMs: 3_600_000 });
    assert.deepEqual(c.renamedKeys, []);
    assert.throws(() => parsePop3Config(new ConfigReader(TLS, 'pop3'), new ConfigReader({ failureDelay: '2m' }, 'login')), (err: unknown) => err instanceof ConfigError && err.key === 'login.failureDelay');
    assert.throws(() => parsePop3Config(new ConfigReader(TLS, 'pop3'), new ConfigReader({ windw: '1h' }, 'login')), (err: unknown) => err instanceof ConfigError && err.key === 'login.windw');
  });

  it('still reads the old names tlsPort and throttle.*, and lists them to be warned about', () => {
    const c = parse({ ...TLS, tlsPort: 995, throttle: { failureDelay: '1s', maxFailuresPerAddress: 3 } });
    assert.equal(c.implicitTlsPort, 995);
    assert.deepEqual(c.login, { failureDelayMs: 1000, maxFailuresPerAddress: 3, maxFailuresPerUser: 30, windowMs: 900_000 });
    assert.deepEqual(c.renamedKeys, [
      { key: 'pop3.tlsPort', use: 'pop3.implicitTlsPort' },
      { key: 'pop3.throttle.failureDelay', use: 'login.failureDelay' },
      { key: 'pop3.throttle.maxFailuresPerAddress', use: 'login.maxFailuresPerAddress' },
    ]);
    // An old key beside the login section's other keys is fine; the same setting under both names is not.
    const mixed = parsePop3Config(new ConfigReader({ ...TLS, throttle: { window: '1h' } }, 'pop3'), new ConfigReader({ failureDelay: '0s' }, 'login'));
    assert.deepEqual([mixed.login.failureDelayMs, mixed.login.windowMs], [0, 3_600_000]);
    fails({ ...TLS, tlsPort: 995, implicitTlsPort: 996 }, 'pop3.tlsPort', /old name of pop3\.implicitTlsPort/);
    assert.throws(
      () => parsePop3Config(new ConfigReader({ ...TLS, throttle: { window: '1h' } }, 'pop3'), new ConfigReader({ window: '2h' }, 'login')),
      (err: unknown) => err instanceof ConfigError && err.key === 'pop3.throttle.window' && /set only login\.window/.test(err.message),
    );
    fails({ ...TLS, throttle: { failureDelai: '1s' } }, 'pop3.throttle.failureDelai', /unknown key/);
  });
});
