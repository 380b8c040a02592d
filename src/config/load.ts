// The one YAML config file: common sections parsed here, each role parses its own section.
import fs from 'node:fs';
import * as yaml from 'js-yaml';
import { ConfigError, ConfigReader } from './reader.ts';

export const CONFIG_ENV = 'KUBE_DRAC_CONFIG';

/**
 * Top-level sections the roles parse themselves with `doc.section(name)` (`login` is read by both
 * roles with a password login, pop3 and smtp); anything else is a typo.
 */
const ROLE_SECTIONS = ['pop3', 'smtp', 'operator', 'bridge', 'login'] as const;
export type RoleSection = (typeof ROLE_SECTIONS)[number];

export interface KubernetesConfig {
  /** Every role works in this one namespace. */
  namespace: string;
  /** Path to a kubeconfig; when unset: $KUBECONFIG, then the in-cluster service account. */
  kubeconfig: string | undefined;
}

export interface GrantsConfig {
  /** How long a login lets the address relay. DRAC's `-e 30`. */
  ttlMs: number;
  /** A replica writes at most once per address per interval (coalescing). */
  renewIntervalMs: number;
  /** IPv6 clients are granted their whole prefix of this length (128 = the single address). */
  ipv6PrefixLength: number;
}

export interface MetricsConfig {
  host: string;
  port: number;
}

export interface CommonConfig {
  kubernetes: KubernetesConfig;
  grants: GrantsConfig;
  metrics: MetricsConfig;
  log: { level: 'error' | 'warn' | 'info' | 'debug' };
}

export interface ConfigDocument {
  /** Where it came from (a path, or `(defaults)`), for messages. */
  source: string;
  common: CommonConfig;
  /** The reader of one role's section; the role calls `finish()` after reading it. */
  section(name: RoleSection): ConfigReader;
}

export function parseCommon(root: ConfigReader): CommonConfig {
  const k = root.section('kubernetes');
  const kubernetes: KubernetesConfig = {
    namespace: k.string('namespace', process.env.POD_NAMESPACE ?? 'default', {
      re: /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/,
      describe: 'a Kubernetes namespace name (lowercase letters, digits and -)',
    }),
    kubeconfig: k.optionalString('kubeconfig'),
  };
  k.finish();

  const g = root.section('grants');
  const ttlMs = g.duration('ttl', '30m', { minMs: 60_000 });
  const renewIntervalMs = g.duration('renewInterval', '5m', { minMs: 1000 });
  if (renewIntervalMs >= ttlMs) {
    throw new ConfigError(g.keyPath('renewInterval'), 'must be shorter than grants.ttl');
  }
  const grants: GrantsConfig = {
    ttlMs,
    renewIntervalMs,
    ipv6PrefixLength: g.int('ipv6PrefixLength', 64, { min: 32, max: 128 }),
  };
  g.finish();

  const m = root.section('metrics');
  const metrics: MetricsConfig = { host: m.string('host', '0.0.0.0'), port: m.port('port', 9090) };
  m.finish();

  const l = root.section('log');
  const log = { level: l.oneOf('level', ['error', 'warn', 'info', 'debug'] as const, 'info') };
  l.finish();

  return { kubernetes, grants, metrics, log };
}

/** Parse YAML text into a config document; throws ConfigError naming the key on any mistake. */
export function parseConfig(text: string, source: string): ConfigDocument {
  let data: unknown;
  // An empty file (or one with only comments) means "all defaults"; js-yaml 5 calls it an error.
  const hasContent = text.split('\n').some((line) => line.trim() !== '' && !line.trim().startsWith('#'));
  try {
    data = hasContent ? yaml.load(text, { filename: source }) : undefined;
  } catch (err) {
    throw new ConfigError('(file)', `${source} is not valid YAML: ${(err as Error).message}`);
  }
  const root = new ConfigReader(data);
  const common = parseCommon(root);
  const sections = new Map<RoleSection, ConfigReader>();
  for (const name of ROLE_SECTIONS) sections.set(name, root.section(name));
  root.finish();
  return { source, common, section: (name) => sections.get(name) as ConfigReader };
}

/** Load `path`, else $KUBE_DRAC_CONFIG, else pure defaults. */
export function loadConfig(path: string | undefined = process.env[CONFIG_ENV]): ConfigDocument {
  if (!path) return parseConfig('{}', '(defaults)');
  let text: string;
  try {
    text = fs.readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError('(file)', `cannot read config file ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  return parseConfig(text, path);
}
