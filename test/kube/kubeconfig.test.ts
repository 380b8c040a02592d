// Our kubeconfig reader against client-node's KubeConfig: for every kind of credential both
// resolve to the same headers and TLS options; the service-account token and token files are
// read again so rotation is picked up; exec plugins go through client-node; importing the client
// does not load client-node's main module (that alone costs ~85 MB of RSS); and in-cluster and
// exec credentials work against the real API server.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import type https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { KubeConfig } from '@kubernetes/client-node';
import { KubeApiError, KubeClient } from '../../src/kube/client.ts';
import { loadKubeConfig, SERVICE_ACCOUNT_ROOT } from '../../src/kube/kubeconfig.ts';
import { kubeForTest, type TestKube } from '../support/kube.ts';

let dir = '';
const b64 = (s: string) => Buffer.from(s).toString('base64');

function write(name: string, doc: unknown): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, JSON.stringify(doc));
  return file;
}

function kubeconfig(cluster: Record<string, unknown>, user: Record<string, unknown>): unknown {
  return {
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'c', cluster: { server: 'https://127.0.0.1:6443', ...cluster } }],
    users: [{ name: 'u', user }],
    contexts: [{ name: 'ctx', context: { cluster: 'c', user: 'u', namespace: 'ns' } }],
    'current-context': 'ctx',
  };
}

/** What client-node's KubeConfig makes of the same file, in our shape. */
async function clientNodeView(file: string) {
  const kc = new KubeConfig();
  kc.loadFromFile(file);
  return viewOf(kc);
}

async function viewOf(kc: KubeConfig) {
  const opts: https.RequestOptions = {};
  await kc.applyToHTTPSOptions(opts);
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(opts.headers ?? {})) if (typeof v === 'string') headers[k] = v;
  if (opts.auth) headers.Authorization = `Basic ${Buffer.from(opts.auth).toString('base64')}`;
  const tls: Record<string, unknown> = { ca: opts.ca, cert: opts.cert, key: opts.key, rejectUnauthorized: opts.rejectUnauthorized, servername: opts.servername };
  return { server: kc.getCurrentCluster()?.server, headers, tls: defined(tls) };
}

async function ourView(file: string) {
  const creds = loadKubeConfig(file);
  const { headers, tls } = await creds.resolve();
  return { server: creds.cluster.server, headers, tls: defined(tls) };
}

function defined(o: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined && v !== null));
}

before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kube-drac-kubeconfig-'));
  fs.writeFileSync(path.join(dir, 'ca.crt'), 'CA PEM');
  fs.writeFileSync(path.join(dir, 'client.crt'), 'CERT PEM');
  fs.writeFileSync(path.join(dir, 'client.key'), 'KEY PEM');
  fs.writeFileSync(path.join(dir, 'token'), 'file-token');
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('kubeconfig credentials, as client-node resolves them', () => {
  const cases: Record<string, [Record<string, unknown>, Record<string, unknown>]> = {
    'token, CA data': [{ 'certificate-authority-data': b64('CA PEM') }, { token: 'abc' }],
    'token-file, CA file (relative to the kubeconfig)': [{ 'certificate-authority': 'ca.crt' }, { 'token-file': '' }],
    'client certificate files': [{ 'certificate-authority': 'ca.crt' }, { 'client-certificate': 'client.crt', 'client-key': 'client.key' }],
    'client certificate data': [{ 'certificate-authority-data': b64('CA PEM') }, { 'client-certificate-data': b64('CERT PEM'), 'client-key-data': b64('KEY PEM') }],
    'basic auth': [{}, { username: 'alice', password: 's3cret' }],
    impersonation: [{}, { token: 'abc', as: 'system:serviceaccount:mail:op' }],
    'insecure-skip-tls-verify and tls-server-name': [{ 'insecure-skip-tls-verify': true, 'tls-server-name': 'kubernetes.default' }, { token: 'abc' }],
    'a token file auth provider': [{ 'certificate-authority': 'ca.crt' }, { 'auth-provider': { name: 'tokenFile', config: { tokenFile: '' } } }],
    'plain http with verification off': [{ server: 'http://127.0.0.1:8080', 'insecure-skip-tls-verify': true }, { token: 'abc' }],
  };
  for (const [name, [cluster, user]] of Object.entries(cases)) {
    it(name, async () => {
      // Paths that client-node reads relative to the working directory are given absolute.
      if (user['token-file'] === '') user['token-file'] = path.join(dir, 'token');
      const provider = user['auth-provider'] as { config: { tokenFile: string } } | undefined;
      if (provider?.config.tokenFile === '') provider.config.tokenFile = path.join(dir, 'token');
      const file = write(`${name.replace(/\W+/g, '-')}.kubeconfig`, kubeconfig(cluster, user));
      const ours = await ourView(file);
      assert.deepEqual(ours, await clientNodeView(file));
      assert.ok(!loadKubeConfig(file).usesClientNode);
    });
  }

  it('an exec plugin is run by client-node', async () => {
    const plugin = path.join(dir, 'plugin.mjs');
    fs.writeFileSync(plugin, `process.stdout.write(JSON.stringify({ apiVersion: 'client.authentication.k8s.io/v1', kind: 'ExecCredential', status: { token: 'exec-' + process.env.WHO } }))`);
    const file = write('exec.kubeconfig', kubeconfig({}, { exec: { apiVersion: 'client.authentication.k8s.io/v1', command: process.execPath, args: [plugin], env: [{ name: 'WHO', value: 'me' }] } }));
    const creds = loadKubeConfig(file);
    assert.ok(creds.usesClientNode);
    assert.equal((await creds.resolve()).headers.Authorization, 'Bearer exec-me');
    assert.deepEqual(await ourView(file), await clientNodeView(file));
  });

  it('plain http with TLS verification on is refused, as client-node refuses it', () => {
    const file = write('http.kubeconfig', kubeconfig({ server: 'http://127.0.0.1:8080' }, { token: 'abc' }));
    assert.throws(() => loadKubeConfig(file), /uses plain HTTP \(http:\/\/127\.0\.0\.1:8080\); that needs insecure-skip-tls-verify: true/);
  });

  it('a current context without a cluster says so', () => {
    const doc = kubeconfig({}, { token: 'abc' }) as Record<string, unknown>;
    doc['current-context'] = 'nope';
    assert.throws(() => loadKubeConfig(write('nocontext.kubeconfig', doc)), /no cluster for the current context "nope"/);
  });
});

describe('where the kubeconfig comes from', () => {
  it('$KUBECONFIG lists files that are merged; a later current-context wins', async () => {
    const a = write('a.kubeconfig', kubeconfig({}, { token: 'token-a' }));
    const b = write('b.kubeconfig', {
      clusters: [{ name: 'c2', cluster: { server: 'https://10.0.0.2:6443' } }],
      users: [{ name: 'u2', user: { token: 'token-b' } }],
      contexts: [{ name: 'ctx2', context: { cluster: 'c2', user: 'u2' } }],
      'current-context': 'ctx2',
    });
    const creds = loadKubeConfig(undefined, { KUBECONFIG: `${a}${path.delimiter}${b}` });
    assert.equal(creds.cluster.server, 'https://10.0.0.2:6443');
    assert.equal((await creds.resolve()).headers.Authorization, 'Bearer token-b');
    assert.throws(() => loadKubeConfig(undefined, { KUBECONFIG: `${a}${path.delimiter}${a}` }), /Duplicate cluster: c/);
  });

  it('~/.kube/config when $KUBECONFIG is unset', () => {
    const home = path.join(dir, 'home');
    fs.mkdirSync(path.join(home, '.kube'), { recursive: true });
    fs.writeFileSync(path.join(home, '.kube', 'config'), JSON.stringify(kubeconfig({ server: 'https://10.0.0.3' }, { token: 'abc' })));
    assert.equal(loadKubeConfig(undefined, { HOME: home }, path.join(dir, 'no-sa')).cluster.server, 'https://10.0.0.3');
  });

  it("in a pod: the service account's token (read again, so it can rotate) and CA, as client-node reads them", async () => {
    const pod = path.join(dir, 'pod');
    const sa = path.join(pod, SERVICE_ACCOUNT_ROOT);
    fs.mkdirSync(sa, { recursive: true });
    fs.writeFileSync(path.join(sa, 'token'), 'sa-token-1');
    fs.writeFileSync(path.join(sa, 'ca.crt'), 'SA CA');
    const env = { KUBERNETES_SERVICE_HOST: 'fd00::1', KUBERNETES_SERVICE_PORT: '443' };
    const creds = loadKubeConfig(undefined, env, sa);
    assert.equal(creds.cluster.server, 'https://[fd00::1]:443');
    assert.ok(!creds.usesClientNode);
    const first = await creds.resolve();
    assert.equal(first.headers.Authorization, 'Bearer sa-token-1');
    assert.equal(first.tls.ca?.toString(), 'SA CA');
    const kc = new KubeConfig();
    Object.assign(process.env, env);
    try {
      kc.loadFromCluster(pod);
    } finally {
      for (const k of Object.keys(env)) delete process.env[k];
    }
    assert.deepEqual({ server: creds.cluster.server, headers: first.headers, tls: defined(first.tls as Record<string, unknown>) }, await viewOf(kc));
    fs.writeFileSync(path.join(sa, 'token'), 'sa-token-2');
    assert.equal((await creds.resolve()).headers.Authorization, 'Bearer sa-token-2');
  });

  it('in a pod without the service environment variables, and with nothing at all, says what to set', () => {
    const sa = path.join(dir, 'sa-noenv');
    fs.mkdirSync(sa);
    fs.writeFileSync(path.join(sa, 'token'), 't');
    assert.throws(() => loadKubeConfig(undefined, {}, sa), /KUBERNETES_SERVICE_HOST or KUBERNETES_SERVICE_PORT is not set/);
    assert.throws(() => loadKubeConfig(undefined, {}, path.join(dir, 'none')), /no Kubernetes cluster configured: set kubernetes.kubeconfig, \$KUBECONFIG, or run in a pod/);
  });
});

describe('memory', () => {
  it("importing the client does not load client-node's main module", async () => {
    const client = new URL('../../src/kube/client.ts', import.meta.url).href;
    const code = [
      "import { registerHooks } from 'node:module';",
      'const seen = [];',
      'registerHooks({ load(url, ctx, next) { seen.push(url); return next(url, ctx); } });',
      `const { KubeClient } = await import(${JSON.stringify(client)});`,
      `KubeClient.fromPath(${JSON.stringify(write('mem.kubeconfig', kubeconfig({}, { token: 'abc' })))}).close();`,
      "console.log(JSON.stringify(seen.filter((u) => u.includes('@kubernetes/client-node'))));",
    ].join('\n');
    const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', code]);
    assert.deepEqual(JSON.parse(stdout), [new URL('../../node_modules/@kubernetes/client-node/dist/config_types.js', import.meta.url).href]);
  });
});

describe('on the real API server', () => {
  let kube: TestKube;
  let admin: { server: string; ca: Buffer; token: string };
  before(async () => {
    kube = await kubeForTest('kubeconfig');
    const doc = JSON.parse(fs.readFileSync(kube.kubeconfigPath, 'utf8')) as {
      clusters: { cluster: { server: string; 'certificate-authority-data': string } }[];
      users: { user: { token: string } }[];
    };
    const cluster = doc.clusters[0]!.cluster;
    admin = { server: cluster.server, ca: Buffer.from(cluster['certificate-authority-data'], 'base64'), token: doc.users[0]!.user.token };
  });
  after(() => kube.cleanup());

  it('in-cluster credentials work, and a rotated token is read again after a 401', async () => {
    const sa = path.join(dir, 'real-sa');
    fs.mkdirSync(sa);
    fs.writeFileSync(path.join(sa, 'ca.crt'), admin.ca);
    fs.writeFileSync(path.join(sa, 'token'), 'not-a-valid-token');
    const url = new URL(admin.server);
    const client = new KubeClient(loadKubeConfig(undefined, { KUBERNETES_SERVICE_HOST: url.hostname, KUBERNETES_SERVICE_PORT: url.port }, sa));
    try {
      await assert.rejects(client.get(`/api/v1/namespaces/${kube.namespace}`), (err: unknown) => err instanceof KubeApiError && err.status === 401);
      fs.writeFileSync(path.join(sa, 'token'), admin.token);
      const ns = await client.get<{ metadata: { name: string } }>(`/api/v1/namespaces/${kube.namespace}`);
      assert.equal(ns?.metadata.name, kube.namespace);
    } finally {
      client.close();
    }
  });

  it('an exec plugin authenticates through client-node', async () => {
    const plugin = path.join(dir, 'real-plugin.mjs');
    fs.writeFileSync(plugin, `process.stdout.write(JSON.stringify({ apiVersion: 'client.authentication.k8s.io/v1', kind: 'ExecCredential', status: { token: ${JSON.stringify(admin.token)} } }))`);
    const file = write('real-exec.kubeconfig', {
      clusters: [{ name: 'c', cluster: { server: admin.server, 'certificate-authority-data': admin.ca.toString('base64') } }],
      users: [{ name: 'u', user: { exec: { apiVersion: 'client.authentication.k8s.io/v1', command: process.execPath, args: [plugin] } } }],
      contexts: [{ name: 'ctx', context: { cluster: 'c', user: 'u' } }],
      'current-context': 'ctx',
    });
    const client = KubeClient.fromPath(file);
    try {
      const ns = await client.get<{ metadata: { name: string } }>(`/api/v1/namespaces/${kube.namespace}`);
      assert.equal(ns?.metadata.name, kube.namespace);
    } finally {
      client.close();
    }
  });
});
