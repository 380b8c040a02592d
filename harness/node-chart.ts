// For tests and benchmarks on a real one-node cluster: the node with the project's image and the
// helm-test busybox loaded, a Debian Postfix smarthost beside it, and the chart installed with
// real Secrets (TLS, users) and a PersistentVolume for the maildrops.
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { NODE_NETWORK } from '../src/local/node/config.ts';
import { NodeCluster } from '../src/local/node/cluster.ts';
import { ensureBusyboxArchive } from '../src/local/node/images.ts';
import { ensureImage } from '../src/local/image.ts';
import { startPostfix, type PostfixInstance } from './postfix.ts';

export const CHART = fileURLToPath(new URL('../charts/kube-drac/', import.meta.url));
export const NAMESPACE = 'mail';
export const RELEASE = 'r';
export const USER = { name: 'demo', password: 'demo-secret' };
/** A second address of the client namespace: a stranger to every allow-list. */
export const STRANGER_ADDRESS = '192.168.50.3';
export const LOCAL_DOMAIN = 'example.test';
export const REMOTE_DOMAIN = 'elsewhere.test';

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function run(cmd: string, args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, { env: opts.env ?? process.env, timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
    // A command that exits without reading its input must not crash us with EPIPE.
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(opts.input ?? '');
  });
}

export interface ChartOnNode {
  node: NodeCluster;
  smarthost: PostfixInstance;
  /** kubectl in the release's namespace; rejects when it fails. */
  kubectl(...args: string[]): Promise<string>;
  helm(args: string[]): Promise<RunResult>;
  /** Run a command in the namespace outside the cluster, where clients live. */
  client(command: string, args: string[], opts?: { input?: string; timeoutMs?: number }): Promise<RunResult>;
  /** The node port a Service's named port got (the chart's Services are LoadBalancers). */
  nodePort(service: string, port: string): Promise<number>;
  imageRef: string;
  installArgs: string[];
  stop(): Promise<void>;
}

function log(line: string): void {
  process.stderr.write(`# ${line}\n`);
}

function tlsSecretFiles(dir: string): { cert: string; key: string } {
  const cert = path.join(dir, 'tls.crt');
  const key = path.join(dir, 'tls.key');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=mail.example.test', '-addext', 'subjectAltName=DNS:mail.example.test', '-keyout', key, '-out', cert], { stdio: 'ignore' });
  return { cert, key };
}

/** Start the node, the smarthost and install the chart (helm install --wait). */
export async function startChartOnNode(extraValues: string[] = []): Promise<ChartOnNode> {
  const image = await ensureImage(log);
  const busybox = ensureBusyboxArchive();
  const node = new NodeCluster({ images: [image.archive, busybox.archive], progress: log });
  let smarthost: PostfixInstance | undefined;
  // Inside the node's folder: the node's watchdog removes it even if this process dies.
  const work = path.join(node.layout.dir, 'test');
  fs.mkdirSync(work, { recursive: true });
  const stop = async () => {
    smarthost?.cleanup();
    await node.stop();
  };
  try {
    await node.start();
    const env = { ...process.env, KUBECONFIG: node.kubeconfigPath };
    const kubectl = async (...args: string[]) => {
      const r = await run(node.kubectl, ['-n', NAMESPACE, ...args], { env });
      if (r.code !== 0) throw new Error(`kubectl ${args.join(' ')} failed (exit ${r.code}): ${r.stderr}`);
      return r.stdout;
    };
    const helm = (args: string[]) => run(node.helm, args, { env, timeoutMs: 10 * 60_000 });
    const client = (command: string, args: string[], opts: { input?: string; timeoutMs?: number } = {}) => run('ip', ['netns', 'exec', node.netns, command, ...args], opts);

    await run('ip', ['-n', node.netns, 'addr', 'add', `${STRANGER_ADDRESS}/32`, 'dev', 'lo']);
    smarthost = await startPostfix({ domains: [REMOTE_DOMAIN], prefix: node.clientDaemonPrefix, address: NODE_NETWORK.clientAddress, mainCf: [`mynetworks = ${NODE_NETWORK.clusterCidr}`] });

    await kubectl('create', 'namespace', NAMESPACE).catch(() => undefined);
    const tls = tlsSecretFiles(work);
    await kubectl('create', 'secret', 'tls', 'mail-tls', `--cert=${tls.cert}`, `--key=${tls.key}`);
    const hash = execFileSync('openssl', ['passwd', '-6', USER.password], { encoding: 'utf8' }).trim();
    fs.writeFileSync(path.join(work, 'passwd'), `${USER.name}:{SHA512-CRYPT}${hash}\n`);
    await kubectl('create', 'secret', 'generic', 'mail-users', `--from-file=passwd=${path.join(work, 'passwd')}`);
    // The maildrops: a hostPath PersistentVolume on the node, owned by the image's user.
    const maildrops = path.join(node.layout.dir, 'maildrops');
    fs.mkdirSync(maildrops, { recursive: true });
    fs.chownSync(maildrops, 1000, 1000);
    const pv = {
      apiVersion: 'v1',
      kind: 'PersistentVolume',
      metadata: { name: 'kube-drac-maildrops' },
      spec: { capacity: { storage: '10Gi' }, accessModes: ['ReadWriteMany'], persistentVolumeReclaimPolicy: 'Retain', storageClassName: '', hostPath: { path: maildrops, type: 'Directory' } },
    };
    await run(node.kubectl, ['apply', '-f', '-'], { env, input: JSON.stringify(pv) });

    const colon = image.ref.lastIndexOf(':');
    const installArgs = [
      '--set', `image.repository=${image.ref.slice(0, colon)}`,
      '--set', `image.tag=${image.ref.slice(colon + 1)}`,
      '--set', 'image.pullPolicy=Never',
      '--set', `helmTest.image=${busybox.ref}`,
      '--set', 'tls.existingSecret=mail-tls',
      '--set', 'users.existingSecret=mail-users',
      '--set', 'smtp.hostname=mail.example.test',
      '--set', `smtp.localDomains={${LOCAL_DOMAIN}}`,
      '--set', `smtp.smarthost.host=${NODE_NETWORK.clientAddress}`,
      '--set', `smtp.smarthost.port=${smarthost.port}`,
      '--set', 'smtp.smarthost.requireTLS=false',
      '--set', 'bridge.enabled=true',
      '--set', 'bridge.serviceType=LoadBalancer',
      '--set', 'bridge.socketmap.enabled=true',
      '--set', `bridge.allow={${NODE_NETWORK.clientAddress}/32}`,
      ...extraValues,
    ];
    const started = Date.now();
    const install = await helm(['install', RELEASE, CHART, '-n', NAMESPACE, '--wait', '--timeout', '6m', ...installArgs]);
    if (install.code !== 0) {
      const pods = await run(node.kubectl, ['get', 'pods,pvc,events', '-n', NAMESPACE, '-o', 'wide'], { env });
      throw new Error(`helm install failed (exit ${install.code}): ${install.stderr}\n${pods.stdout}`);
    }
    log(`helm install --wait: ${Math.round((Date.now() - started) / 1000)} s`);
    const nodePort = async (service: string, port: string) => {
      const out = await kubectl('get', 'service', service, '-o', `jsonpath={.spec.ports[?(@.name=="${port}")].nodePort}`);
      return Number(out);
    };
    return { node, smarthost, kubectl, helm, client, nodePort, imageRef: image.ref, installArgs, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
