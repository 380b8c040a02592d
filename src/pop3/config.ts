// The `pop3:` section of the config file, checked, with defaults. Key names follow the smtp
// section where the idea is the same (listen, tls, trustedProxies, mailRoot, mailLocation).
import os from 'node:os';
import type { Scheme } from '../auth/schemes.ts';
import { SCHEMES } from '../auth/schemes.ts';
import { parseLoginConfig, type LoginConfig } from '../auth/config.ts';
import { ConfigError, ConfigReader } from '../config/reader.ts';
import { keyInUse, type RenamedKey } from '../config/renamed.ts';
import { parseListen, parseTlsFiles } from '../config/sections.ts';
import { NetworkList } from '../net/networks.ts';

export interface Pop3Config {
  listen: { host: string; port: number };
  /** POP3S (implicit TLS) port; undefined when TLS is not configured. Formerly `tlsPort`. */
  implicitTlsPort: number | undefined;
  tls: { certFile: string; keyFile: string } | undefined;
  /** Allow USER/PASS and AUTH before TLS (the local all-in-one sets it for loopback only). */
  allowPlaintextAuth: boolean;
  trustedProxies: NetworkList;
  proxyHeaderTimeoutMs: number;
  /** Client addresses that never get a grant (logins still work). */
  denyGrantNetworks: NetworkList;
  mailRoot: string;
  mailLocation: string;
  usersFile: string;
  defaultPasswordScheme: Scheme;
  /** Processes serving sessions; above 1, a primary holds what they must share (see cluster.ts). */
  workers: number;
  /** Worker threads for password hashing, per process (default: the CPU count shared among the workers). */
  passwordThreads: number;
  limits: {
    maxSessions: number;
    maxSessionsPerAddress: number;
    maxLineLength: number;
    commandsPerSecond: number;
    commandBurst: number;
    /** Consecutive bad commands before the session is closed. */
    maxErrors: number;
  };
  timeouts: {
    /** Idle limit before login (short). */
    authorizationMs: number;
    /** Idle limit after login (RFC 1939: at least 10 minutes). */
    idleMs: number;
  };
  /** How long the +OK of a login waits for the grant write. */
  loginWaitForGrantMs: number;
  /** The `login:` section (shared with SMTP AUTH), or the deprecated pop3.throttle keys. */
  login: LoginConfig;
  lock: { heartbeatMs: number; staleMs: number };
  /** CAPA EXPIRE: `NEVER` or a number of days. */
  expire: string;
  /** CAPA LOGIN-DELAY in seconds (0: not advertised). */
  loginDelaySeconds: number;
  /** Name in the greeting and CAPA IMPLEMENTATION. */
  implementation: string;
  /** Deprecated keys this section used, for the role to warn about. */
  renamedKeys: RenamedKey[];
}

const HOST = { re: /^[A-Za-z0-9.:-]+$/, describe: 'a host name or IP address such as 0.0.0.0 or ::' };

/**
 * Read and check `pop3:` (and `login:`, the guards shared with SMTP AUTH); throws ConfigError
 * naming the key on any mistake.
 */
export function parsePop3Config(section: ConfigReader, loginSection: ConfigReader = new ConfigReader({}, 'login')): Pop3Config {
  const renamedKeys: RenamedKey[] = [];
  const listen = parseListen(section, 1110, HOST);
  const tls = parseTlsFiles(section);
  // `implicitTlsPort`, as in the smtp section; `tlsPort` is its old name.
  const port = keyInUse({ reader: section, key: 'implicitTlsPort' }, { reader: section, key: 'tlsPort' }, renamedKeys);
  let implicitTlsPort: number | undefined;
  if (port.reader.has(port.key)) {
    implicitTlsPort = port.reader.port(port.key);
    if (tls === undefined) throw new ConfigError(port.reader.keyPath(port.key), 'needs a certificate: set pop3.tls.certFile and pop3.tls.keyFile');
  } else if (tls !== undefined) {
    implicitTlsPort = 1995;
  }
  const allowPlaintextAuth = section.bool('allowPlaintextAuth', false);
  if (tls === undefined && !allowPlaintextAuth) {
    throw new ConfigError(
      section.keyPath('tls'),
      'is required: without a certificate nobody could log in (passwords are refused before TLS); set pop3.tls.certFile and keyFile, or allowPlaintextAuth: true for local testing',
    );
  }

  const trustedProxies = NetworkList.parse(section.cidrList('trustedProxies'), section.keyPath('trustedProxies'));
  const proxyHeaderTimeoutMs = section.duration('proxyHeaderTimeout', '5s', { minMs: 100, maxMs: 60_000 });
  const denyGrantNetworks = NetworkList.parse(section.cidrList('denyGrantNetworks'), section.keyPath('denyGrantNetworks'));

  const mailRoot = section.string('mailRoot', '/var/mail/kube-drac', { re: /^\//, describe: 'an absolute path such as /var/mail/kube-drac' });
  const mailLocation = section.string('mailLocation', '%u', {
    re: /^(?!\/)(?!.*(?:^|\/)\.\.(?:\/|$)).*%[und]/,
    describe: 'a relative path template with %u, %n or %d, such as %d/%n/Maildir',
  });
  const usersFile = section.string('usersFile', '/etc/kube-drac/users/passwd');
  const defaultPasswordScheme = section.oneOf('defaultPasswordScheme', SCHEMES, 'CRYPT');
  const workers = section.int('workers', 1, { min: 1, max: 64 });
  const passwordThreads = section.int('passwordThreads', Math.max(1, Math.round(os.availableParallelism() / workers)), { min: 0, max: 64 });

  const lim = section.section('limits');
  const limits = {
    maxSessions: lim.int('maxSessions', 1000, { min: 1, max: 1_000_000 }),
    maxSessionsPerAddress: lim.int('maxSessionsPerAddress', 20, { min: 1, max: 1_000_000 }),
    // RFC 2449 allows 255-octet commands; AUTH responses carry base64 and need more.
    maxLineLength: lim.int('maxLineLength', 2048, { min: 512, max: 65_536 }),
    commandsPerSecond: lim.int('commandsPerSecond', 200, { min: 1, max: 1_000_000 }),
    commandBurst: lim.int('commandBurst', 1000, { min: 1, max: 1_000_000 }),
    maxErrors: lim.int('maxErrors', 20, { min: 1, max: 10_000 }),
  };
  if (limits.maxSessionsPerAddress > limits.maxSessions) {
    throw new ConfigError(lim.keyPath('maxSessionsPerAddress'), `must not exceed maxSessions (${limits.maxSessions})`);
  }
  lim.finish();

  const to = section.section('timeouts');
  const timeouts = {
    authorizationMs: to.duration('authorization', '60s', { minMs: 1000, maxMs: 3_600_000 }),
    idleMs: to.duration('idle', '10m', { minMs: 600_000, maxMs: 86_400_000 }),
  };
  to.finish();

  const loginWaitForGrantMs = section.duration('loginWaitForGrant', '1s', { maxMs: 30_000 });

  // pop3.throttle is the old name of the login section, from before SMTP AUTH shared it.
  const login = parseLoginConfig(loginSection, { section: section.section('throttle'), renamed: renamedKeys });

  const lk = section.section('lock');
  const lock = { heartbeatMs: lk.duration('heartbeat', '30s', { minMs: 100, maxMs: 3_600_000 }), staleMs: lk.duration('stale', '2m', { minMs: 1000 }) };
  if (lock.staleMs < 3 * lock.heartbeatMs) {
    throw new ConfigError(lk.keyPath('stale'), `must be at least 3 heartbeats (${3 * lock.heartbeatMs} ms), or live sessions would lose their lock`);
  }
  lk.finish();

  // EXPIRE: a number of days (YAML integer) or NEVER.
  let expire = 'NEVER';
  if (section.has('expire')) {
    try {
      expire = String(section.int('expire', undefined, { min: 0, max: 99_999 }));
    } catch {
      expire = section.string('expire', undefined, { re: /^NEVER$/, describe: 'NEVER or a number of days from 0 to 99999' });
    }
  }
  const loginDelaySeconds = Math.round(section.duration('loginDelay', '0s', { maxMs: 86_400_000 }) / 1000);
  const implementation = section.string('implementation', 'kube-drac', { re: /^[\x21-\x7e]{1,64}$/, describe: 'one word of printable ASCII' });

  section.finish();
  return {
    listen,
    implicitTlsPort,
    tls,
    allowPlaintextAuth,
    trustedProxies,
    proxyHeaderTimeoutMs,
    denyGrantNetworks,
    mailRoot,
    mailLocation,
    usersFile,
    defaultPasswordScheme,
    workers,
    passwordThreads,
    limits,
    timeouts,
    loginWaitForGrantMs,
    login,
    lock,
    expire,
    loginDelaySeconds,
    implementation,
    renamedKeys,
  };
}

/** Pop3Config as JSON can carry it (to a worker process): network lists as their CIDRs. */
export type Pop3ConfigWire = Omit<Pop3Config, 'trustedProxies' | 'denyGrantNetworks'> & { trustedProxies: string[]; denyGrantNetworks: string[] };

export function pop3ConfigToWire(config: Pop3Config): Pop3ConfigWire {
  return { ...config, trustedProxies: [...config.trustedProxies.entries], denyGrantNetworks: [...config.denyGrantNetworks.entries] };
}

export function pop3ConfigFromWire(wire: Pop3ConfigWire): Pop3Config {
  return {
    ...wire,
    trustedProxies: NetworkList.parse(wire.trustedProxies, 'pop3.trustedProxies'),
    denyGrantNetworks: NetworkList.parse(wire.denyGrantNetworks, 'pop3.denyGrantNetworks'),
  };
}
