// Where to reach the API server and how to authenticate, read the way client-node's KubeConfig
// reads it (its own parser for the file, its rules for $KUBECONFIG, ~/.kube/config and the pod's
// service account), without loading KubeConfig itself: that module pulls in client-node's whole
// generated API and costs ~85 MB of RSS in every process. The common credentials (tokens, token
// files, client certificates, CA files or data, basic auth, impersonation, the service-account
// token, re-read so it can rotate) are applied here; exec plugins and auth providers (oidc, azure,
// gcp) are handed to the real KubeConfig, imported only by the processes that use them.
import fs from 'node:fs';
import type https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import * as yaml from 'js-yaml';
import type { Cluster, Context, KubeConfig, User } from '@kubernetes/client-node';
// Only the kubeconfig entry parser: a small module of its own (no `exports` map restricts it).
import { newClusters, newContexts, newUsers } from '@kubernetes/client-node/dist/config_types.js';

export const SERVICE_ACCOUNT_ROOT = '/var/run/secrets/kubernetes.io/serviceaccount';

/** Headers and TLS options for the next requests. */
export interface ResolvedCredentials {
  headers: Record<string, string>;
  tls: Pick<https.RequestOptions, 'ca' | 'cert' | 'key' | 'rejectUnauthorized' | 'servername'>;
}

interface Entries {
  clusters: Cluster[];
  contexts: Context[];
  users: User[];
  currentContext: string | undefined;
}

/** The kubeconfig entries that say which API server to use and as whom. */
export class KubeCredentials {
  readonly cluster: Cluster;
  readonly user: User | undefined;
  /** The context's namespace, if it names one (kubectl's default for `-n`). */
  readonly namespace: string | undefined;
  private readonly entries: Entries;
  private kubeConfig: Promise<KubeConfig> | undefined;

  /** `contextName`: use that context instead of the current one (kubectl's `--context`). */
  constructor(entries: Entries, contextName?: string) {
    if (contextName !== undefined) {
      if (!findNamed(entries.contexts, contextName)) throw new Error(`kubeconfig: no context named ${JSON.stringify(contextName)}`);
      entries = { ...entries, currentContext: contextName };
    }
    this.entries = entries;
    const context = findNamed(entries.contexts, entries.currentContext);
    const cluster = context ? findNamed(entries.clusters, context.cluster) : undefined;
    if (!cluster) {
      throw new Error(`kubeconfig: no cluster for the current context ${JSON.stringify(entries.currentContext ?? '')}: set current-context to a context whose cluster is defined`);
    }
    this.namespace = context?.namespace || undefined;
    if (cluster.server.startsWith('http:') && !cluster.skipTLSVerify) {
      // client-node's rule: plain HTTP only when the kubeconfig says TLS is not verified anyway.
      throw new Error(`kubeconfig: cluster ${cluster.name} uses plain HTTP (${cluster.server}); that needs insecure-skip-tls-verify: true`);
    }
    this.cluster = cluster;
    this.user = context?.user === undefined ? undefined : findNamed(entries.users, context.user);
  }

  /** True when client-node's KubeConfig applies these credentials (exec plugins, auth providers). */
  get usesClientNode(): boolean {
    const user = this.user;
    if (!user) return false;
    if (user.exec) return true;
    return user.authProvider != null && tokenFileOf(user) === undefined;
  }

  /** Read the credentials now: files are read again on every call, so rotated ones are picked up. */
  async resolve(): Promise<ResolvedCredentials> {
    if (this.usesClientNode) return this.resolveWithClientNode();
    const { cluster, user } = this;
    const tls: ResolvedCredentials['tls'] = {};
    const headers: Record<string, string> = {};
    if (cluster.skipTLSVerify) tls.rejectUnauthorized = false;
    if (cluster.tlsServerName) tls.servername = cluster.tlsServerName;
    const ca = fileOrData(cluster.caFile, cluster.caData);
    if (ca) tls.ca = ca;
    if (!user) return { headers, tls };
    const cert = fileOrData(user.certFile, user.certData);
    if (cert) tls.cert = cert;
    const key = fileOrData(user.keyFile, user.keyData);
    if (key) tls.key = key;
    if (user.impersonateUser != null) headers['Impersonate-User'] = user.impersonateUser;
    const tokenFile = tokenFileOf(user);
    if (tokenFile !== undefined) {
      const token = fs.readFileSync(tokenFile, 'utf8');
      if (token) headers.Authorization = `Bearer ${token}`;
    }
    if (user.token) headers.Authorization = `Bearer ${user.token}`;
    if (user.username) headers.Authorization = `Basic ${Buffer.from(`${user.username}:${user.password}`).toString('base64')}`;
    return { headers, tls };
  }

  private async resolveWithClientNode(): Promise<ResolvedCredentials> {
    this.kubeConfig ??= import('@kubernetes/client-node').then(({ KubeConfig }) => {
      const kc = new KubeConfig();
      kc.loadFromOptions(this.entries);
      return kc;
    });
    const opts: https.RequestOptions = {};
    await (await this.kubeConfig).applyToHTTPSOptions(opts);
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(opts.headers ?? {})) if (typeof v === 'string') headers[k] = v;
    if (opts.auth) headers.Authorization = `Basic ${Buffer.from(opts.auth).toString('base64')}`;
    return { headers, tls: { ca: opts.ca, cert: opts.cert, key: opts.key, rejectUnauthorized: opts.rejectUnauthorized, servername: opts.servername } };
  }
}

/** The token file of a `tokenFile` auth provider (what the in-cluster config uses). */
function tokenFileOf(user: User): string | undefined {
  const provider = user.authProvider as { name?: string; config?: { tokenFile?: unknown } } | null | undefined;
  const file = provider?.name === 'tokenFile' ? provider.config?.tokenFile : undefined;
  return typeof file === 'string' && file !== '' ? file : undefined;
}

function findNamed<T extends { name: string }>(list: T[], name: string | undefined): T | undefined {
  return name === undefined ? undefined : list.find((x) => x.name === name);
}

function fileOrData(file: string | undefined, data: string | undefined): Buffer | undefined {
  if (file) return fs.readFileSync(file);
  if (data) return Buffer.from(data, 'base64');
  return undefined;
}

function readFile(file: string): Entries {
  const doc = (yaml.load(fs.readFileSync(file, 'utf8')) ?? {}) as { clusters?: unknown; contexts?: unknown; users?: unknown; 'current-context'?: string };
  const dir = path.dirname(file);
  const absolute = (p: string | undefined) => (p && !path.isAbsolute(p) ? path.join(dir, p) : p);
  const clusters = newClusters(doc.clusters).map((c) => ({ ...c, caFile: absolute(c.caFile) }));
  const users = newUsers(doc.users).map((u) => ({ ...u, certFile: absolute(u.certFile), keyFile: absolute(u.keyFile) }));
  return { clusters, contexts: newContexts(doc.contexts), users, currentContext: doc['current-context'] };
}

/** As KubeConfig.mergeConfig: a later file's current-context wins, a name defined twice is an error. */
function merge(into: Entries, from: Entries): void {
  if (from.currentContext) into.currentContext = from.currentContext;
  for (const [kind, list, more] of [
    ['cluster', into.clusters, from.clusters],
    ['user', into.users, from.users],
    ['context', into.contexts, from.contexts],
  ] as const) {
    for (const entry of more) {
      if (list.some((x) => x.name === entry.name)) throw new Error(`Duplicate ${kind}: ${entry.name}`);
      (list as { name: string }[]).push(entry);
    }
  }
}

/** The pod's service account, as KubeConfig.loadFromCluster builds it (token re-read on every resolve). */
export function inClusterEntries(env: NodeJS.ProcessEnv = process.env, root: string = SERVICE_ACCOUNT_ROOT): Entries {
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT;
  if (!host || !port) throw new Error(`in-cluster credentials: ${root}/token exists but KUBERNETES_SERVICE_HOST or KUBERNETES_SERVICE_PORT is not set`);
  const scheme = port === '80' || port === '8080' || port === '8001' ? 'http' : 'https';
  const server = `${scheme}://${net.isIPv6(host) ? `[${host}]` : host}:${port}`;
  return {
    clusters: [{ name: 'inCluster', server, caFile: path.join(root, 'ca.crt'), skipTLSVerify: false }],
    users: [{ name: 'inClusterUser', authProvider: { name: 'tokenFile', config: { tokenFile: path.join(root, 'token') } } }],
    contexts: [{ name: 'inClusterContext', cluster: 'inCluster', user: 'inClusterUser' }],
    currentContext: 'inClusterContext',
  };
}

/**
 * `path`, else as KubeConfig.loadFromDefault: every file in $KUBECONFIG (merged), else
 * ~/.kube/config, else the pod's service account. Nothing found is an error (client-node would
 * fall back to http://localhost:8080, which it then refuses to use).
 */
export function loadKubeConfig(file?: string, env: NodeJS.ProcessEnv = process.env, serviceAccountRoot: string = SERVICE_ACCOUNT_ROOT, context?: string): KubeCredentials {
  if (file) return new KubeCredentials(readFile(file), context);
  const files = (env.KUBECONFIG ?? '').split(path.delimiter).filter(Boolean);
  if (files.length > 0) {
    const entries = readFile(files[0] as string);
    for (const more of files.slice(1)) merge(entries, readFile(more));
    return new KubeCredentials(entries, context);
  }
  const home = env.HOME ? path.join(env.HOME, '.kube', 'config') : undefined;
  if (home && fs.existsSync(home)) return new KubeCredentials(readFile(home), context);
  if (fs.existsSync(path.join(serviceAccountRoot, 'token'))) return new KubeCredentials(inClusterEntries(env, serviceAccountRoot), context);
  throw new Error('no Kubernetes cluster configured: set kubernetes.kubeconfig, $KUBECONFIG, or run in a pod');
}
