// The `kubectl drac` commands. Each uses the code the roles use for the same idea: GrantStore and
// grantKeyFor for a manual grant (so it is refused exactly where a login's would be),
// CredentialRevoker for a user's grants, GrantCache and the SMTP role's RelayPolicy for `why`.
import { isValidUserName } from '../auth/user-name.ts';
import { loadConfig, parseConfig, type ConfigDocument } from '../config/load.ts';
import { parseDuration } from '../config/reader.ts';
import { NeverGrantedError, grantKeyFor, parseGrantAddress } from '../grants/address.ts';
import { GrantCache } from '../grants/cache.ts';
import { listGrants } from '../grants/list.ts';
import { grantsPath } from '../grants/paths.ts';
import { GrantStore } from '../grants/store.ts';
import type { RelayGrant } from '../grants/types.ts';
import { KubeApiError, KubeClient, loadKubeConfig } from '../kube/client.ts';
import { parseLimitsConfig, type LimitsConfig } from '../limits/config.ts';
import { limitForUser, limitReply, type LimitExceeded } from '../limits/policy.ts';
import { usagePath, type RelayUsage } from '../limits/types.ts';
import { WINDOW_MS, publishedLimitExceeded, sumUsage, topUsers } from '../limits/usage.ts';
import { covers, parseIp } from '../net/ip.ts';
import { NetworkList } from '../net/networks.ts';
import type { Logger } from '../observability/log.ts';
import { CredentialRevoker } from '../revoke/revoker.ts';
import { RelayPolicy, type RelayDecision } from '../smtp/relay-policy.ts';
import { UsageError, type CliArgs } from './args.ts';
import { expiresIn, table } from './format.ts';

/**
 * A read, tried again on 429 and 503 as kubectl (client-go) does: the API server answers them while
 * it is busy or while a resource's storage is still initializing (a CRD just installed).
 */
async function read<T>(fn: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (!(err instanceof KubeApiError && (err.status === 429 || err.status === 503)) || attempt >= 5) throw err;
      await new Promise((r) => setTimeout(r, 250 * attempt));
    }
  }
}

/** The roles' loggers write JSON lines to stdout; a command's output is its own. */
const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {}, child: () => quiet };

export interface Cli {
  args: CliArgs;
  client: KubeClient;
  namespace: string;
  now: () => number;
  write: (text: string) => void;
}

/** The client and namespace as kubectl would pick them: --kubeconfig/--context, then -n, the context's namespace, `default`. */
export function connect(args: CliArgs): { client: KubeClient; namespace: string } {
  let credentials;
  try {
    credentials = loadKubeConfig(args.kubeconfig, process.env, undefined, args.context);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    // A file that is not there: say which, as kubectl does, rather than the bare system error.
    if (e.code === 'ENOENT' || e.code === 'EACCES') throw new Error(`cannot read the kubeconfig ${e.path ?? args.kubeconfig ?? ''}: ${e.code}`, { cause: err });
    throw err;
  }
  return { client: new KubeClient(credentials), namespace: args.namespace ?? credentials.namespace ?? 'default' };
}

function one(args: CliArgs, what: string): string {
  const [value, ...more] = args.positionals;
  if (value === undefined) throw new UsageError(`${args.command} needs ${what}`);
  if (more.length > 0) throw new UsageError(`${args.command} takes one ${what}, got also ${more.map((m) => JSON.stringify(m)).join(' ')}`);
  return value;
}

function none(args: CliArgs): void {
  if (args.positionals.length > 0) throw new UsageError(`${args.command} takes no arguments, got ${args.positionals.map((m) => JSON.stringify(m)).join(' ')}`);
}

function userOf(args: CliArgs): string {
  const user = args.user;
  if (user === undefined) throw new UsageError(`${args.command} needs --user U`);
  if (!isValidUserName(user)) throw new UsageError(`--user ${JSON.stringify(user)} is not a valid user name (letters, digits, . _ + = @ -)`);
  return user;
}

function ipOf(text: string): string {
  if (parseIp(text) === undefined) throw new UsageError(`${JSON.stringify(text)} is not an IP address (for a prefix, use kubectl apply of a RelayGrant)`);
  return text;
}

interface GrantView {
  name: string;
  address: string;
  user: string;
  source: string;
  expiresAt: string;
  expiresIn: string;
}

function view(g: RelayGrant, nowMs: number): GrantView {
  return { name: g.metadata.name, address: g.spec.address, user: g.spec.user ?? '', source: g.spec.source, expiresAt: g.spec.expiresAt, expiresIn: expiresIn(Date.parse(g.spec.expiresAt), nowMs) };
}

function print(cli: Cli, json: unknown, text: string): void {
  cli.write(cli.args.output === 'json' ? `${JSON.stringify(json, null, 2)}\n` : text);
}

// --- the config `why` decides with (and grant/revoke for an IPv6 address's prefix) ---

export interface RelayConfig {
  trustedNetworks: NetworkList;
  ipv6PrefixLength: number;
  /** smtp.limits when on; undefined when off or not known. */
  limits: LimitsConfig | undefined;
  /** Where it came from, for the answer (`configmap mail/mail-kube-drac-config`, a file, or none). */
  from: string;
}

const CHART_CONFIGMAPS = 'app.kubernetes.io/part-of=kube-drac';

/** The SMTP role's config: --config FILE, else the chart's ConfigMap (key smtp.yaml), else defaults with no trusted networks. */
export async function relayConfig(cli: Cli): Promise<RelayConfig> {
  const { args, client, namespace } = cli;
  let doc: ConfigDocument | undefined;
  let from: string;
  if (args.config !== undefined) {
    doc = loadConfig(args.config);
    from = `file ${args.config}`;
  } else {
    interface ConfigMap {
      metadata: { name: string };
      data?: Record<string, string>;
    }
    let maps: ConfigMap[];
    try {
      if (args.configMap !== undefined) {
        const map = await client.get<ConfigMap>(`/api/v1/namespaces/${encodeURIComponent(namespace)}/configmaps/${encodeURIComponent(args.configMap)}`);
        if (map === undefined) throw new UsageError(`no ConfigMap ${args.configMap} in namespace ${namespace}`);
        maps = [map];
      } else {
        const list = await client.request<{ items: ConfigMap[] }>('GET', `/api/v1/namespaces/${encodeURIComponent(namespace)}/configmaps`, { query: { labelSelector: CHART_CONFIGMAPS } });
        maps = list.items.filter((m) => m.data?.['smtp.yaml'] !== undefined);
      }
    } catch (err) {
      if (err instanceof KubeApiError && err.status === 403) throw new UsageError(`cannot read ConfigMaps in namespace ${namespace} (forbidden): give the SMTP role's config with --config FILE`);
      throw err;
    }
    if (maps.length > 1) throw new UsageError(`several kube-drac ConfigMaps in namespace ${namespace} (${maps.map((m) => m.metadata.name).join(', ')}): pick one with --configmap NAME`);
    const map = maps[0];
    const text = map?.data?.['smtp.yaml'];
    if (map === undefined || text === undefined) {
      if (map !== undefined) throw new UsageError(`ConfigMap ${map.metadata.name} has no smtp.yaml (is the smtp role enabled?)`);
      return { trustedNetworks: NetworkList.empty(), ipv6PrefixLength: 64, limits: undefined, from: `none (no kube-drac ConfigMap in namespace ${namespace}; give --config FILE)` };
    }
    from = `configmap ${namespace}/${map.metadata.name}`;
    doc = parseConfig(text, `${from} smtp.yaml`);
  }
  // Read as the SMTP role reads these keys (src/smtp/config.ts), without the rest of the section.
  const smtp = doc.section('smtp');
  const trustedNetworks = NetworkList.parse(smtp.cidrList('trustedNetworks'), smtp.keyPath('trustedNetworks'));
  const limits = parseLimitsConfig(smtp.section('limits'));
  return { trustedNetworks, ipv6PrefixLength: doc.common.grants.ipv6PrefixLength, limits: limits.enabled ? limits : undefined, from };
}

async function prefixLengthFor(cli: Cli, ip: string): Promise<number> {
  return ip.includes(':') && parseIp(ip)?.family === 6 ? (await relayConfig(cli)).ipv6PrefixLength : 64;
}

// --- commands ---

export async function grants(cli: Cli): Promise<void> {
  none(cli.args);
  const user = cli.args.user === undefined ? undefined : userOf(cli.args);
  const now = cli.now();
  const items = (await read(() => listGrants(cli.client, cli.namespace)))
    .filter((g) => user === undefined || g.spec.user === user)
    .map((g) => view(g, now))
    .sort((a, b) => a.expiresAt.localeCompare(b.expiresAt) || a.name.localeCompare(b.name));
  const text =
    items.length === 0
      ? `No grants in namespace ${cli.namespace}${user === undefined ? '' : ` for user ${user}`}.\n`
      : table(
          ['NAME', 'ADDRESS', 'USER', 'SOURCE', 'EXPIRES'],
          items.map((g) => [g.name, g.address, g.user, g.source, g.expiresIn]),
        );
  print(cli, { namespace: cli.namespace, items }, text);
}

export async function grant(cli: Cli): Promise<void> {
  const ip = ipOf(one(cli.args, 'ADDRESS'));
  const user = userOf(cli.args);
  if (cli.args.for === undefined) throw new UsageError('grant needs --for DURATION (e.g. --for 1h)');
  const ttlMs = parseDuration(cli.args.for);
  if (ttlMs === undefined || ttlMs < 1000) throw new UsageError(`--for ${JSON.stringify(cli.args.for)}: expected a duration of at least 1s, such as 30m, 1h or 2d`);
  // The one writer of grants: a manual grant is refused where a login's would be (grantKeyFor).
  const store = new GrantStore({ client: cli.client, namespace: cli.namespace, ttlMs, renewIntervalMs: ttlMs, ipv6PrefixLength: await prefixLengthFor(cli, ip), log: quiet, now: cli.now });
  try {
    const outcome = await store.renew(ip, user, 'manual');
    const key = grantKeyFor(ip, await prefixLengthFor(cli, ip));
    const written = await cli.client.get<RelayGrant>(grantsPath(cli.namespace, key.name));
    if (written === undefined) throw new Error(`${key.name} was written but is gone again`);
    const g = view(written, cli.now());
    print(cli, { ...g, outcome }, `relaygrant ${g.name} ${outcome}: ${g.address} may relay for ${g.user} until ${g.expiresAt} (${g.expiresIn})\n`);
  } finally {
    store.close();
  }
}

export async function revoke(cli: Cli): Promise<void> {
  if (cli.args.user !== undefined) {
    none(cli.args);
    const user = userOf(cli.args);
    const revoker = new CredentialRevoker({ client: cli.client, namespace: cli.namespace, log: quiet, component: 'kubectl-drac' });
    const names = await revoker.revoke({ user, reason: 'manual' });
    const text = names.length === 0 ? `No grants of user ${user} in namespace ${cli.namespace}.\n` : names.map((n) => `relaygrant ${n} revoked (user ${user})\n`).join('');
    print(cli, { user, revoked: names }, text);
    return;
  }
  const ip = ipOf(one(cli.args, 'ADDRESS (or --user U)'));
  const store = new GrantStore({ client: cli.client, namespace: cli.namespace, ttlMs: 60_000, renewIntervalMs: 60_000, ipv6PrefixLength: await prefixLengthFor(cli, ip), log: quiet });
  try {
    const key = grantKeyFor(ip, await prefixLengthFor(cli, ip));
    if (!(await store.revoke(ip))) throw new Error(`no grant covers ${ip} in namespace ${cli.namespace} (${key.name} not found)`);
    print(cli, { revoked: [key.name] }, `relaygrant ${key.name} revoked (${key.address})\n`);
  } finally {
    store.close();
  }
}

/** The relay counts every SMTP replica published (what the replicas sum and decide on). */
async function publishedUsage(cli: Cli): Promise<RelayUsage[]> {
  return (await read(() => cli.client.request<{ items: RelayUsage[] }>('GET', usagePath(cli.namespace)))).items;
}

function describeOver(over: LimitExceeded): string {
  const what = over.kind.endsWith('messages') ? 'messages' : 'recipients';
  const whose = over.kind.startsWith('user') ? `user ${over.subject}` : `address ${over.subject}`;
  return `${whose} relayed ${over.used} ${what} in the last hour, the limit is ${over.limit}`;
}

export type WhyReason = 'trusted' | 'grant' | 'over_limit' | 'expired' | 'no_grant' | 'never_granted' | 'unsynced';

export interface WhyAnswer {
  address: string;
  /** What RCPT of a non-local recipient is answered: 250, or the refusal's code. */
  reply: string;
  decision: RelayDecision['decision'];
  reason: WhyReason;
  explanation: string;
  grant?: GrantView;
  /** The limit this relay would pass (relay limits on). */
  overLimit?: LimitExceeded;
  trustedNetworks: readonly string[];
  configFrom: string;
}

/** A recipient in no local domain (RFC 2606 `.invalid`): the question is about relaying. */
const WHY_RECIPIENT = 'rcpt@elsewhere.invalid';

export async function why(cli: Cli): Promise<void> {
  const ip = ipOf(one(cli.args, 'ADDRESS'));
  const target = parseIp(ip)!;
  const config = await relayConfig(cli);
  const now = cli.now();
  // A plain list first: its errors (forbidden, unreachable) are clear, where a cache only retries.
  const all = await read(() => listGrants(cli.client, cli.namespace));
  const cache = new GrantCache({ client: cli.client, namespace: cli.namespace, log: quiet });
  let decision: RelayDecision;
  try {
    await cache.start();
    const policy = new RelayPolicy({ localDomains: [], localUsers: { userFor: () => undefined }, trustedNetworks: config.trustedNetworks, grants: cache, now: () => now });
    // No live lookup: a fresh list is what it would confirm. So the answer is never a Promise.
    decision = policy.decide({ clientIp: ip, recipient: WHY_RECIPIENT }) as RelayDecision;
  } finally {
    await cache.stop();
  }
  const covering = all
    .filter((g) => {
      try {
        return covers(parseGrantAddress(g.spec.address), target);
      } catch {
        return false;
      }
    })
    .sort((a, b) => Date.parse(b.spec.expiresAt) - Date.parse(a.spec.expiresAt));
  // The reply as the client would read it, without the recipient this question had to make up.
  const reply = decision.code === undefined ? '250' : `${decision.code} ${(decision.message ?? '').replace(` <${WHY_RECIPIENT}>:`, '')}`.trim();
  const base = { address: ip, reply, decision: decision.decision, trustedNetworks: config.trustedNetworks.entries, configFrom: config.from };
  let answer: WhyAnswer;
  if (decision.reason === 'trusted') {
    answer = { ...base, reason: 'trusted', explanation: `${ip} is in smtp.trustedNetworks (${config.trustedNetworks.entries.join(', ')}): it relays without a grant` };
  } else if (decision.reason === 'grant' && decision.grant) {
    const match = decision.grant;
    const g = covering.find((c) => c.metadata.name === match.name);
    const shown = g ? view(g, now) : undefined;
    const granted = `grant ${match.name} of user ${match.user || '(unknown)'} runs until ${new Date(match.expiresAtMs).toISOString().replace('.000Z', 'Z')} (${expiresIn(match.expiresAtMs, now)})`;
    // The SMTP role's next check for a granted relay (src/smtp/server.ts): the relay limits, on the published counts.
    const over = config.limits && publishedLimitExceeded(await publishedUsage(cli), config.limits, { user: match.user || undefined, address: match.address }, now);
    if (over) {
      const refused = limitReply(over);
      answer = { ...base, reply: `${refused.code} ${refused.message}`, decision: 'tempfail', reason: 'over_limit', ...(shown ? { grant: shown } : {}), overLimit: over, explanation: `${describeOver(over)}; the relay is allowed again as the hour moves on` };
    } else {
      answer = { ...base, reason: 'grant', ...(shown ? { grant: shown } : {}), explanation: granted };
    }
  } else if (decision.decision === 'tempfail') {
    answer = { ...base, reason: 'unsynced', explanation: 'the grants could not be read' };
  } else {
    const expired = covering.find((g) => Date.parse(g.spec.expiresAt) <= now);
    let never: string | undefined;
    try {
      grantKeyFor(ip, config.ipv6PrefixLength);
    } catch (err) {
      if (err instanceof NeverGrantedError) never = err.message;
    }
    if (expired) {
      const shown = view(expired, now);
      answer = { ...base, reason: 'expired', grant: shown, explanation: `grant ${shown.name} of user ${shown.user || '(unknown)'} expired at ${shown.expiresAt} (${shown.expiresIn.replace('expired ', '')}); the operator deletes it, a new login renews it` };
    } else if (never !== undefined) {
      answer = { ...base, reason: 'never_granted', explanation: `${never} (no client can have it)` };
    } else {
      answer = { ...base, reason: 'no_grant', explanation: `no grant covers ${ip}: a POP3 login from there (or kubectl drac grant) makes one` };
    }
  }
  // As kubectl describe: one field a line.
  const g = answer.grant;
  const fields: Array<[string, string]> = [
    ['Address', answer.address],
    ['Reply', answer.reply],
    ['Why', answer.explanation],
    ...(g ? [['Grant', `${g.name} (${g.address}), user ${g.user || '(unknown)'}, source ${g.source}, expires ${g.expiresAt} (${g.expiresIn})`] as [string, string]] : []),
    ['Config', `${answer.configFrom}: trusted networks ${answer.trustedNetworks.length ? answer.trustedNetworks.join(', ') : 'none'}, relay limits ${config.limits ? 'on' : 'off'}`],
  ];
  print(cli, answer, fields.map(([k, v]) => `${`${k}:`.padEnd(10)}${v}\n`).join(''));
}

const TOP = 20;

export async function top(cli: Cli): Promise<void> {
  none(cli.args);
  // The limits are extra here: without --config/--configmap, a ConfigMap that cannot be read only
  // leaves them out.
  const explicit = cli.args.config !== undefined || cli.args.configMap !== undefined;
  const config = await relayConfig(cli).catch((err: unknown) => {
    if (explicit || !(err instanceof UsageError)) throw err;
    return undefined;
  });
  const sums = sumUsage(await publishedUsage(cli), cli.now());
  const users = topUsers(sums, TOP).map((u) => {
    const limit = config?.limits && limitForUser(config.limits, u.user);
    return { ...u, ...(limit ? { limit } : {}) };
  });
  const perHour = (used: number, limit: number | undefined) => (limit ? `${used}/${limit}` : String(used));
  const text =
    users.length === 0
      ? `No relayed mail counted in the last hour in namespace ${cli.namespace}${config?.limits ? '' : ' (counts are published only with smtp.limits.enabled)'}.\n`
      : table(
          ['USER', 'MESSAGES', 'RECIPIENTS'],
          users.map((u) => [u.user, perHour(u.messages, u.limit?.messagesPerHour), perHour(u.recipients, u.limit?.recipientsPerHour)]),
        );
  print(cli, { namespace: cli.namespace, windowSeconds: WINDOW_MS / 1000, users }, text);
}
