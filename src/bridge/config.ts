// The `bridge:` section of the config file, checked whole before anything listens. Every
// listener is off until enabled; each has a port and an allow-list (default: the section's).
import fs from 'node:fs';
import { ConfigError, type ConfigReader } from '../config/reader.ts';
import { readSecretFile } from '../config/sections.ts';
import { NetworkList } from '../net/networks.ts';

export interface BridgeListenerConfig {
  host: string;
  port: number;
  allow: NetworkList;
}

export interface BridgeConfig {
  socketmap: (BridgeListenerConfig & { mapName: string }) | undefined;
  policy: BridgeListenerConfig | undefined;
  whoson: (BridgeListenerConfig & { udp: boolean }) | undefined;
  drac: (BridgeListenerConfig & { allowFile: string | undefined; portmapper: { host: string; port: number } | undefined }) | undefined;
  authPolicy: (BridgeListenerConfig & { apiHeader: { name: string; value: string } }) | undefined;
}

/** Where each protocol listens unless told otherwise (whoson's is its registered port). */
export const DEFAULT_PORTS = { socketmap: 9400, policy: 9401, whoson: 9876, drac: 9402, authPolicy: 9403, portmapper: 111 } as const;

/** Loopback only: the chart adds the pod network, a site adds its MTAs and login servers. */
const DEFAULT_ALLOW = ['127.0.0.0/8', '::1/128'];

const HOST = { re: /^(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f:]+|[A-Za-z0-9.-]+)$/, describe: 'an IP address or host name to listen on' };
const HEADER_NAME = { re: /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, describe: 'an HTTP header name such as X-API-Key' };
const MAP_NAME = { re: /^[A-Za-z0-9_.-]{1,64}$/, describe: 'a map name such as drac (letters, digits, _ . -)' };

/** The secret Dovecot sends in `auth_policy_server_api_header`, read from a mounted file. */
function readApiKey(key: string, file: string): string {
  const value = readSecretFile(key, file);
  if (value.length < 16 || /[\r\n]/.test(value)) {
    throw new ConfigError(key, `${file} must hold one line of at least 16 characters (the API key Dovecot sends)`);
  }
  return value;
}

export function parseBridgeConfig(r: ConfigReader): BridgeConfig {
  const host = r.string('host', '0.0.0.0', HOST);
  const allowDefault = r.cidrList('allow', DEFAULT_ALLOW);

  const listener = (s: ConfigReader, defaultPort: number): BridgeListenerConfig => ({
    host: s.string('host', host, HOST),
    port: s.port('port', defaultPort),
    allow: NetworkList.parse(s.cidrList('allow', allowDefault), s.keyPath('allow')),
  });
  const enabled = (s: ConfigReader): boolean => s.bool('enabled', false);

  // A disabled listener's keys are still read and checked, so that turning one off with
  // `enabled: false` keeps its settings valid, and a typo there is still reported.
  const sm = r.section('socketmap');
  const socketmapOn = enabled(sm);
  const socketmapListener = { ...listener(sm, DEFAULT_PORTS.socketmap), mapName: sm.string('mapName', 'drac', MAP_NAME) };
  sm.finish();
  const socketmap = socketmapOn ? socketmapListener : undefined;

  const p = r.section('policy');
  const policyOn = enabled(p);
  const policyListener = listener(p, DEFAULT_PORTS.policy);
  p.finish();
  const policy = policyOn ? policyListener : undefined;

  const w = r.section('whoson');
  const whosonOn = enabled(w);
  const whosonListener = { ...listener(w, DEFAULT_PORTS.whoson), udp: w.bool('udp', true) };
  w.finish();
  const whoson = whosonOn ? whosonListener : undefined;

  const d = r.section('drac');
  const dracOn = enabled(d);
  const dracBase = listener(d, DEFAULT_PORTS.drac);
  const allowFile = d.optionalString('allowFile');
  const pm = d.section('portmapper');
  const portmapperOn = pm.bool('enabled', true);
  const portmapperAt = { host: pm.string('host', dracBase.host, HOST), port: pm.port('port', DEFAULT_PORTS.portmapper) };
  pm.finish();
  d.finish();
  let drac: BridgeConfig['drac'];
  if (dracOn) {
    if (allowFile !== undefined && !fs.existsSync(allowFile)) {
      throw new ConfigError(d.keyPath('allowFile'), `${allowFile} does not exist (expected a dracd.allow file of "netmask netaddr" lines)`);
    }
    drac = { ...dracBase, allowFile, portmapper: portmapperOn ? portmapperAt : undefined };
  }

  const a = r.section('authPolicy');
  const authPolicyOn = enabled(a);
  const authPolicyBase = listener(a, DEFAULT_PORTS.authPolicy);
  const headerName = a.string('apiHeaderName', 'X-API-Key', HEADER_NAME);
  const apiKeyFile = a.optionalString('apiKeyFile');
  a.finish();
  let authPolicy: BridgeConfig['authPolicy'];
  if (authPolicyOn) {
    if (apiKeyFile === undefined) throw new ConfigError(a.keyPath('apiKeyFile'), 'is required: a file holding the API key Dovecot sends');
    authPolicy = { ...authPolicyBase, apiHeader: { name: headerName, value: readApiKey(a.keyPath('apiKeyFile'), apiKeyFile) } };
  }

  r.finish();
  const config = { socketmap, policy, whoson, drac, authPolicy };
  if (Object.values(config).every((v) => v === undefined)) {
    throw new ConfigError(
      r.path || 'bridge',
      'no listener is enabled: set enabled: true under at least one of bridge.socketmap, bridge.policy, bridge.whoson, bridge.drac, bridge.authPolicy',
    );
  }
  const ports = new Map<string, string>();
  const claim = (key: string, hostName: string, port: number, proto: string) => {
    if (port === 0) return;
    const id = `${proto}/${hostName}:${port}`;
    const other = ports.get(id);
    if (other) throw new ConfigError(key, `port ${port} is already used by ${other}`);
    ports.set(id, key);
  };
  for (const [name, l] of Object.entries(config)) if (l) claim(r.keyPath(`${name}.port`), l.host, l.port, 'tcp');
  if (whoson?.udp) claim(r.keyPath('whoson.port'), whoson.host, whoson.port, 'udp');
  if (drac) claim(r.keyPath('drac.port'), drac.host, drac.port, 'udp');
  if (drac?.portmapper) claim(r.keyPath('drac.portmapper.port'), drac.portmapper.host, drac.portmapper.port, 'tcp');
  return config;
}

/** Whether any enabled listener reads grants (and so needs the cache). */
export function bridgeReads(c: BridgeConfig): boolean {
  return c.socketmap !== undefined || c.policy !== undefined || c.whoson !== undefined;
}

/** Whether any enabled listener writes grants (and so needs create/patch rights). */
export function bridgeWrites(c: BridgeConfig): boolean {
  return c.drac !== undefined || c.authPolicy !== undefined || c.whoson !== undefined;
}
