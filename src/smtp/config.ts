// The `smtp:` section of the config file, checked whole before anything listens.
import os from 'node:os';
import { parseLoginConfig, type LoginConfig } from '../auth/config.ts';
import { ConfigError, ConfigReader } from '../config/reader.ts';
import { parseListen, parseTlsFiles, readSecretFile } from '../config/sections.ts';
import { NetworkList } from '../net/networks.ts';

export interface SmarthostConfig {
  host: string;
  port: number;
  /** Implicit TLS from the first byte (port 465 style). */
  secure: boolean;
  /** Refuse to send unless STARTTLS succeeds. */
  requireTLS: boolean;
  /** Verify the smarthost's certificate (turn off only for a test peer with a self-signed one). */
  verifyCertificate: boolean;
  auth: { user: string; password: string } | undefined;
  connectionTimeoutMs: number;
}

export interface SmtpConfig {
  /** Our name in the greeting and in Received headers. */
  hostname: string;
  listen: { host: string; port: number };
  /** A second listener speaking TLS from the first byte (465 style); needs `tls`. */
  implicitTlsPort: number | undefined;
  /** Certificate and key (PEM), reloaded when they change; enables STARTTLS. */
  tls: { certFile: string; keyFile: string } | undefined;
  localDomains: string[];
  /** Maildirs live at `maildirPathFor(mailRoot, mailLocation, user)`, as for the POP3 role. */
  mailRoot: string;
  mailLocation: string;
  /** Dovecot passwd-file of local users; unset: a local user exists when its Maildir does. */
  usersFile: string | undefined;
  trustedNetworks: NetworkList;
  trustedProxies: NetworkList;
  proxyHeaderTimeoutMs: number;
  /** Where relayed mail goes; exactly one of smarthost and outbox is set. */
  smarthost: SmarthostConfig | undefined;
  /** A Maildir collecting relayed mail instead of sending it on (the local all-in-one). */
  outbox: string | undefined;
  maxMessageSize: number;
  /** Bytes of message data all sessions together may hold in memory; past it DATA gets 452. */
  maxBufferedBytes: number;
  maxRecipients: number;
  maxLineLength: number;
  maxClients: number;
  maxClientsPerAddress: number;
  /** Idle time allowed while we wait for the client (RFC 5321 4.5.3.2: at least 5 minutes). */
  idleTimeoutMs: number;
  /** Pause before the greeting; a client that talks first is refused (a cheap spam trap). */
  greetingDelayMs: number;
  reverseDns: boolean;
  /** SMTP AUTH (PLAIN, LOGIN) against usersFile, only after TLS. Off by default. */
  auth: { enabled: boolean };
  /** The `login:` section: SMTP AUTH's failure delay and throttle, the same as POP3's. */
  login: LoginConfig;
  /**
   * cacheTtlMs: how long a miss is remembered (delays only a grant the watch has not shown yet);
   * positiveCacheTtlMs: how long a find is, at most 2 s (a revocation waits for it).
   */
  liveLookup: { enabled: boolean; ratePerSecond: number; cacheTtlMs: number; positiveCacheTtlMs: number };
}

const DOMAIN_RE = /^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\.?$/i;
const HOSTNAME = { re: DOMAIN_RE, describe: 'a host name such as mail.example.org' };
const HOSTNAME_OR_IP = {
  re: /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f:]+)$/,
  describe: 'a host name or IP address',
};


/** The longest a revoked grant may still relay, on any path. */
export const MAX_REVOCATION_LAG_MS = 2000;

function readPasswordFile(key: string, file: string): string {
  const password = readSecretFile(key, file);
  if (password === '') throw new ConfigError(key, `${file} is empty`);
  return password;
}

function parseSmarthost(s: ConfigReader): SmarthostConfig {
  const secure = s.bool('secure', false);
  const requireTLS = s.bool('requireTLS', false);
  const host = s.string('host', undefined, HOSTNAME_OR_IP);
  const port = s.int('port', secure ? 465 : 25, { min: 1, max: 65535 });
  if (secure && requireTLS) {
    throw new ConfigError(s.keyPath('requireTLS'), 'is for STARTTLS; with secure: true the connection is TLS from the start (set one of them)');
  }
  const verifyCertificate = s.bool('verifyCertificate', true);
  const connectionTimeoutMs = s.duration('connectionTimeout', '30s', { minMs: 100 });
  let auth: SmarthostConfig['auth'];
  if (s.has('auth')) {
    const a = s.section('auth');
    const user = a.string('user');
    const password = readPasswordFile(a.keyPath('passwordFile'), a.string('passwordFile'));
    a.finish();
    if (!secure && !requireTLS) {
      throw new ConfigError(s.keyPath('auth'), 'sends a password: set secure: true or requireTLS: true too');
    }
    auth = { user, password };
  }
  s.finish();
  return { host, port, secure, requireTLS, verifyCertificate, auth, connectionTimeoutMs };
}

/**
 * Read and check `smtp:` (and `login:`, the guards SMTP AUTH shares with POP3); throws
 * ConfigError naming the key on any mistake.
 */
export function parseSmtpConfig(section: ConfigReader, loginSection: ConfigReader = new ConfigReader({}, 'login')): SmtpConfig {
  const hostname = section.string('hostname', os.hostname(), HOSTNAME);

  const listen = parseListen(section, 2525, HOSTNAME_OR_IP);
  const tls = parseTlsFiles(section);
  const implicitTlsPort = section.has('implicitTlsPort') ? section.port('implicitTlsPort') : undefined;
  if (implicitTlsPort !== undefined && tls === undefined) {
    throw new ConfigError(section.keyPath('implicitTlsPort'), 'needs a certificate: set tls.certFile and tls.keyFile');
  }

  const localDomains = section.stringList('localDomains').map((d, i) => {
    if (!DOMAIN_RE.test(d)) {
      throw new ConfigError(`${section.keyPath('localDomains')}[${i}]`, `expected a domain such as example.org, got ${JSON.stringify(d)}`);
    }
    return d.toLowerCase().replace(/\.$/, '');
  });
  const mailRoot = section.string('mailRoot', '/var/mail/kube-drac');
  const mailLocation = section.string('mailLocation', '%u', {
    re: /^(?!\/)(?!.*(?:^|\/)\.\.(?:\/|$)).*%[und]/,
    describe: 'a relative path template with %u, %n or %d, such as %d/%n/Maildir',
  });
  const usersFile = section.optionalString('usersFile');

  const trustedNetworks = NetworkList.parse(section.cidrList('trustedNetworks'), section.keyPath('trustedNetworks'));
  const trustedProxies = NetworkList.parse(section.cidrList('trustedProxies'), section.keyPath('trustedProxies'));
  const proxyHeaderTimeoutMs = section.duration('proxyHeaderTimeout', '5s', { minMs: 100, maxMs: 60_000 });

  const smarthost = section.has('smarthost') ? parseSmarthost(section.section('smarthost')) : undefined;
  const outbox = section.optionalString('outbox');
  if (smarthost !== undefined && outbox !== undefined) {
    throw new ConfigError(section.keyPath('outbox'), 'relayed mail goes either to smarthost or to outbox: remove one of them');
  }
  if (smarthost === undefined && outbox === undefined) {
    throw new ConfigError(section.keyPath('smarthost'), 'is required (or outbox: a Maildir path collecting relayed mail)');
  }

  const maxMessageSize = section.int('maxMessageSize', 10_240_000, { min: 1024, max: 1024 * 1024 * 1024 });
  const maxBufferedBytes = section.int('maxBufferedBytes', 256 * 1024 * 1024, { min: 1024 * 1024, max: 64 * 1024 * 1024 * 1024 });
  if (maxBufferedBytes < maxMessageSize) {
    throw new ConfigError(section.keyPath('maxBufferedBytes'), `must be at least maxMessageSize (${maxMessageSize})`);
  }
  const maxRecipients = section.int('maxRecipients', 100, { min: 1, max: 100_000 });
  const maxLineLength = section.int('maxLineLength', 4096, { min: 512, max: 1024 * 1024 });
  const maxClients = section.int('maxClients', 1000, { min: 1, max: 1_000_000 });
  const maxClientsPerAddress = section.int('maxClientsPerAddress', 50, { min: 1, max: 1_000_000 });
  if (maxClientsPerAddress > maxClients) {
    throw new ConfigError(section.keyPath('maxClientsPerAddress'), `must not exceed maxClients (${maxClients})`);
  }
  const idleTimeoutMs = section.duration('idleTimeout', '5m', { minMs: 1000, maxMs: 3_600_000 });
  const greetingDelayMs = section.duration('greetingDelay', '0s', { maxMs: 30_000 });
  const reverseDns = section.bool('reverseDns', false);

  const a = section.section('auth');
  const auth = { enabled: a.bool('enabled', false) };
  a.finish();
  if (auth.enabled && tls === undefined) {
    throw new ConfigError(a.keyPath('enabled'), 'SMTP AUTH is only offered after TLS: set tls.certFile and tls.keyFile');
  }
  if (auth.enabled && usersFile === undefined) {
    throw new ConfigError(a.keyPath('enabled'), 'SMTP AUTH checks passwords in usersFile: set smtp.usersFile');
  }
  const login = parseLoginConfig(loginSection);

  const ll = section.section('liveLookup');
  const liveLookup = {
    enabled: ll.bool('enabled', true),
    ratePerSecond: ll.int('ratePerSecond', 20, { min: 1, max: 10_000 }),
    cacheTtlMs: ll.duration('negativeCacheTtl', '5s', { minMs: 100, maxMs: 600_000 }),
    // A remembered find keeps relaying after a revocation until it runs out: at most 2 s, the
    // bound every revocation path keeps.
    positiveCacheTtlMs: ll.duration('positiveCacheTtl', '1s', { minMs: 0, maxMs: MAX_REVOCATION_LAG_MS }),
  };
  ll.finish();

  section.finish();
  return {
    hostname,
    listen,
    implicitTlsPort,
    tls,
    localDomains,
    mailRoot,
    mailLocation,
    usersFile,
    trustedNetworks,
    trustedProxies,
    proxyHeaderTimeoutMs,
    smarthost,
    outbox,
    maxMessageSize,
    maxBufferedBytes,
    maxRecipients,
    maxLineLength,
    maxClients,
    maxClientsPerAddress,
    idleTimeoutMs,
    greetingDelayMs,
    reverseDns,
    auth,
    login,
    liveLookup,
  };
}
