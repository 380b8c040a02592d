// A real local control plane, the way envtest runs one: etcd and kube-apiserver on loopback with
// free ports, RBAC authorization, token authentication, generated service-account keys and
// self-signed serving certificates. Used by the test suite, the benchmarks and `npm start`.
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { KubeClient } from '../kube/client.ts';
import type { ControlPlaneBinaries, ProgressFn } from './binaries.ts';
import { ensureLocalClusterBinaries } from './binaries.ts';

export interface ControlPlaneOptions {
  /** Working folder for data, certificates and the kubeconfig; a temp folder when unset. */
  dir?: string;
  /** Keep the folder when stopping (a folder given by the caller is always kept). */
  keepDir?: boolean;
  binaries?: ControlPlaneBinaries;
  progress?: ProgressFn;
  /** Where the children's output goes; discarded by default except for the last lines on failure. */
  logFile?: string;
  /**
   * For a control plane that serves pods (`local-cluster --node`): where kube-apiserver listens
   * and how this process reaches it, a command prefix that runs etcd and kube-apiserver inside
   * the node's namespaces, and further token users (the node's components).
   */
  node?: NodeServing;
  /** Further kube-apiserver flags (tests: a server with a feature gate off, as older releases ship). */
  apiServerFlags?: string[];
}

export interface NodeServing {
  /** Prefixed to every child's command line (the namespaces and cgroup they run in). */
  spawnPrefix: string[];
  /** The address pods reach the API server on; the `kubernetes` Service's endpoint. */
  advertiseAddress: string;
  /** kube-apiserver's port on advertiseAddress. */
  port: number;
  /** A loopback port of this machine that forwards to advertiseAddress:port. */
  reachedAt: number;
  serviceClusterIpRange: string;
  /** Static token users: the node's components, each with its own identity. */
  tokens: { token: string; user: string; groups: string[] }[];
}

/** A TCP port free on 127.0.0.1 at the time of asking. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Proc {
  name: string;
  child: ChildProcess;
  tail: string[];
  exited: Promise<number | null>;
}

export class ControlPlane {
  readonly dir: string;
  readonly kubeconfigPath: string;
  private readonly ownsDir: boolean;
  private readonly keepDir: boolean;
  private readonly opts: ControlPlaneOptions;
  private binaries: ControlPlaneBinaries | undefined;
  private procs: Proc[] = [];
  private readonly adopted: number[] = [];
  private watchdog: ChildProcess | undefined;
  private etcdPort = 0;
  private etcdPeerPort = 0;
  private apiPort = 0;
  private readonly token = crypto.randomBytes(24).toString('hex');

  constructor(opts: ControlPlaneOptions = {}) {
    this.opts = opts;
    this.ownsDir = !opts.dir;
    this.keepDir = opts.keepDir ?? !!opts.dir;
    this.dir = opts.dir ? path.resolve(opts.dir) : fs.mkdtempSync(path.join(os.tmpdir(), 'kube-drac-cp-'));
    fs.mkdirSync(this.dir, { recursive: true });
    this.kubeconfigPath = path.join(this.dir, 'kubeconfig');
  }

  get server(): string {
    return `https://127.0.0.1:${this.apiPort}`;
  }

  /** The CA of kube-apiserver's self-signed serving certificate (written when it first starts). */
  get caFile(): string {
    return path.join(this.dir, 'pki', 'apiserver.crt');
  }

  get etcdDataDir(): string {
    return path.join(this.dir, 'etcd');
  }

  get serviceAccountKeyFile(): string {
    return path.join(this.dir, 'pki', 'sa.key');
  }

  get kubectl(): string {
    if (!this.binaries) throw new Error('control plane not started');
    return this.binaries.kubectl;
  }

  /** Start etcd and kube-apiserver, wait for /readyz, write the admin kubeconfig. */
  async start(): Promise<void> {
    this.binaries ??= this.opts.binaries ?? (await ensureLocalClusterBinaries(this.opts.progress));
    const node = this.opts.node;
    if (this.apiPort === 0) {
      // A node's etcd has a network namespace to itself: its usual ports are free there.
      this.etcdPort = node ? 2379 : await freePort();
      this.etcdPeerPort = node ? 2380 : await freePort();
      this.apiPort = node ? node.reachedAt : await freePort();
      this.writeCredentials();
    }
    this.startWatchdog();
    const etcdDir = this.etcdDataDir;
    const etcdUrl = `http://127.0.0.1:${this.etcdPort}`;
    const peerUrl = `http://127.0.0.1:${this.etcdPeerPort}`;
    const running = (name: string) => this.isRunning(name);
    if (!running('etcd')) this.spawn('etcd', this.binaries.etcd, [
      '--name=default',
      `--data-dir=${etcdDir}`,
      `--listen-client-urls=${etcdUrl}`,
      `--advertise-client-urls=${etcdUrl}`,
      `--listen-peer-urls=${peerUrl}`,
      `--initial-advertise-peer-urls=${peerUrl}`,
      `--initial-cluster=default=${peerUrl}`,
      '--unsafe-no-fsync=true', // test and demo data only: trade durability for speed
      '--log-level=warn',
      '--quota-backend-bytes=8589934592',
    ]);
    const credentials = path.join(this.dir, 'pki');
    if (!running('kube-apiserver')) this.spawn('kube-apiserver', this.binaries.kubeApiserver, [
      `--etcd-servers=${etcdUrl}`,
      `--cert-dir=${credentials}`,
      `--secure-port=${node ? node.port : this.apiPort}`,
      `--token-auth-file=${path.join(credentials, 'tokens.csv')}`,
      `--service-account-key-file=${path.join(credentials, 'sa.pub')}`,
      `--service-account-signing-key-file=${path.join(credentials, 'sa.key')}`,
      '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
      '--allow-privileged=true',
      ...(node
        ? [
            // Pods reach it on the node's address, through the `kubernetes` Service it keeps
            // pointed there; kubelets are authorized as nodes, everyone else by RBAC.
            `--advertise-address=${node.advertiseAddress}`,
            `--service-cluster-ip-range=${node.serviceClusterIpRange}`,
            '--authorization-mode=Node,RBAC',
            '--enable-admission-plugins=NodeRestriction',
            // The node's name resolves nowhere: reach kubelets (logs, exec) by their address.
            '--kubelet-preferred-address-types=InternalIP',
          ]
        : [
            '--bind-address=127.0.0.1',
            '--advertise-address=127.0.0.1',
            '--service-cluster-ip-range=10.0.0.0/24',
            '--authorization-mode=RBAC',
            // No controller-manager runs: pods would never get their token secrets anyway.
            '--disable-admission-plugins=ServiceAccount',
            '--endpoint-reconciler-type=none',
          ]),
      ...(this.opts.apiServerFlags ?? []),
      '--v=0',
    ]);
    await this.waitReady();
    this.writeKubeconfig();
  }

  private writeCredentials(): void {
    const pki = path.join(this.dir, 'pki');
    fs.mkdirSync(pki, { recursive: true, mode: 0o700 });
    const { publicKey, privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    fs.writeFileSync(path.join(pki, 'sa.pub'), publicKey.export({ type: 'spki', format: 'pem' }));
    fs.writeFileSync(path.join(pki, 'sa.key'), privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
    const users = [{ token: this.token, user: 'admin', groups: ['system:masters'] }, ...(this.opts.node?.tokens ?? [])];
    const lines = users.map((u) => `${u.token},${u.user},${u.user},"${u.groups.join(',')}"\n`);
    fs.writeFileSync(path.join(pki, 'tokens.csv'), lines.join(''), { mode: 0o600 });
  }

  private writeKubeconfig(): void {
    // kube-apiserver wrote its self-signed serving certificate (and the CA that signed it) here.
    const ca = fs.readFileSync(path.join(this.dir, 'pki', 'apiserver.crt'));
    const kubeconfig = {
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [
        {
          name: 'kube-drac-local',
          cluster: {
            server: this.server,
            'certificate-authority-data': ca.toString('base64'),
            // Serving on every address of its namespace, its certificate names the Service, not loopback.
            ...(this.opts.node ? { 'tls-server-name': 'kubernetes' } : {}),
          },
        },
      ],
      users: [{ name: 'admin', user: { token: this.token } }],
      contexts: [{ name: 'kube-drac-local', context: { cluster: 'kube-drac-local', user: 'admin', namespace: 'default' } }],
      'current-context': 'kube-drac-local',
    };
    fs.writeFileSync(this.kubeconfigPath, JSON.stringify(kubeconfig, null, 2), { mode: 0o600 });
  }

  /**
   * Start a child the way etcd and kube-apiserver are started (own process group, output kept
   * for errors, ended by stop() and the watchdog, its exit a start failure): a node's daemons.
   */
  spawnChild(name: string, bin: string, args: string[], prefix: string[] = this.opts.node?.spawnPrefix ?? []): void {
    this.spawn(name, bin, args, prefix);
  }

  /** The process id of a running child (`etcd`, `kube-apiserver`): for RSS and CPU figures. */
  pidOf(name: string): number | undefined {
    return this.procs.find((p) => p.name === name && p.child.exitCode === null)?.child.pid;
  }

  isRunning(name: string): boolean {
    return this.procs.some((p) => p.name === name && p.child.exitCode === null);
  }

  /** The last lines a child wrote (for an error that names what failed). */
  tailOf(name: string): string {
    return this.procs.filter((p) => p.name === name).flatMap((p) => p.tail).join('\n');
  }

  /** Fail with the child's last lines if any child has exited. */
  checkChildren(): void {
    for (const p of this.procs) {
      if (p.child.exitCode !== null) throw new Error(`${p.name} exited with code ${p.child.exitCode}:\n${p.tail.join('\n')}`);
    }
  }

  private spawn(name: string, bin: string, args: string[], prefix: string[] = this.opts.node?.spawnPrefix ?? []): void {
    // Own process group, so stop() (and the watchdog) can end each child with everything it started.
    const [command, ...rest] = [...prefix, bin, ...args] as [string, ...string[]];
    const child = spawn(command, rest, { cwd: this.dir, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    const tail: string[] = [];
    const log = this.opts.logFile ? fs.createWriteStream(this.opts.logFile, { flags: 'a' }) : undefined;
    const keep = (chunk: Buffer) => {
      log?.write(chunk);
      for (const line of chunk.toString('utf8').split('\n')) {
        if (line) tail.push(`${name}: ${line}`);
      }
      if (tail.length > 40) tail.splice(0, tail.length - 40);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    child.unref();
    (child.stdout as unknown as { unref?: () => void } | null)?.unref?.();
    (child.stderr as unknown as { unref?: () => void } | null)?.unref?.();
    this.procs.push({ name, child, tail, exited });
  }

  /**
   * A watchdog outside our process: if this process dies without stopping the control plane
   * (SIGKILL, crash), it ends both process groups within a second and removes the temp folder.
   */
  private startWatchdog(): void {
    if (this.watchdog && this.watchdog.exitCode === null) return;
    const pgFile = path.join(this.dir, 'pgids');
    this.watchdog = spawn(
      'sh',
      [
        '-c',
        [
          'parent="$1"; rm_dir="$2"; pgfile="$3"',
          'while kill -0 "$parent" 2>/dev/null; do sleep 1; done',
          'for pg in $(cat "$pgfile" 2>/dev/null); do kill -TERM -"$pg" 2>/dev/null; done',
          'sleep 2',
          'for pg in $(cat "$pgfile" 2>/dev/null); do kill -KILL -"$pg" 2>/dev/null; done',
          '[ -n "$rm_dir" ] && rm -rf "$rm_dir"',
        ].join('\n'),
        'watchdog',
        String(process.pid),
        this.ownsDir && !this.keepDir ? this.dir : '',
        pgFile,
      ],
      { detached: true, stdio: 'ignore' },
    );
    this.watchdog.unref();
  }

  private recordProcessGroups(): void {
    const pgids = [...this.procs.map((p) => p.child.pid), ...this.adopted].filter((pid): pid is number => pid !== undefined);
    fs.writeFileSync(path.join(this.dir, 'pgids'), pgids.join(' ') + '\n');
  }

  /**
   * Let the watchdog end another process group too if this process dies without cleaning up
   * (the all-in-one's role processes). The caller still stops them itself on a normal exit.
   */
  adoptProcessGroup(pgid: number): void {
    this.adopted.push(pgid);
    this.recordProcessGroups();
  }

  private async waitReady(timeoutMs = 90_000): Promise<void> {
    this.recordProcessGroups();
    const deadline = Date.now() + timeoutMs;
    let lastError = '';
    while (Date.now() < deadline) {
      for (const p of this.procs) {
        if (p.child.exitCode !== null) {
          throw new Error(`${p.name} exited with code ${p.child.exitCode} while starting:\n${p.tail.join('\n')}`);
        }
      }
      try {
        const status = await this.probe('/readyz');
        if (status === 200) return;
        lastError = `readyz answered ${status}`;
      } catch (err) {
        lastError = (err as Error).message;
      }
      await sleep(250);
    }
    throw new Error(`kube-apiserver not ready after ${timeoutMs} ms (${lastError}):\n${this.procs.flatMap((p) => p.tail).join('\n')}`);
  }

  private probe(urlPath: string): Promise<number> {
    return new Promise((resolve, reject) => {
      const req = https.request(
        { host: '127.0.0.1', port: this.apiPort, path: urlPath, rejectUnauthorized: false, headers: { authorization: `Bearer ${this.token}` }, timeout: 2000 },
        (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        },
      );
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', reject);
      req.end();
    });
  }

  client(): KubeClient {
    return KubeClient.fromPath(this.kubeconfigPath);
  }

  /** Stop both processes; with `keepData`, they can be started again on the same data and ports. */
  async stop(opts: { keepData?: boolean } = {}): Promise<void> {
    // The API server first, so that it does not spin on a vanished etcd.
    for (const p of [...this.procs].reverse()) {
      if (p.child.exitCode === null && p.child.pid !== undefined) {
        try {
          process.kill(-p.child.pid, 'SIGTERM');
        } catch {
          // already gone
        }
        const killed = await Promise.race([p.exited.then(() => true), sleep(10_000).then(() => false)]);
        if (!killed) {
          try {
            process.kill(-p.child.pid, 'SIGKILL');
          } catch {
            // already gone
          }
          await p.exited;
        }
      }
    }
    this.procs = [];
    if (!opts.keepData) {
      if (this.watchdog?.pid !== undefined && this.watchdog.exitCode === null) {
        try {
          process.kill(-this.watchdog.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      if (this.ownsDir && !this.keepDir) fs.rmSync(this.dir, { recursive: true, force: true });
    }
  }

  /**
   * Kill (SIGKILL) the processes at once, as a crash would; data stays for `start()` again.
   * `only: 'kube-apiserver'` leaves etcd running (an API server outage with the store intact).
   */
  async kill(opts: { only?: 'kube-apiserver' | 'etcd' } = {}): Promise<void> {
    const victims = this.procs.filter((p) => !opts.only || p.name === opts.only);
    for (const p of victims) {
      if (p.child.exitCode === null && p.child.pid !== undefined) {
        try {
          process.kill(-p.child.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
    await Promise.all(victims.map((p) => p.exited));
    this.procs = this.procs.filter((p) => !victims.includes(p));
  }

  /** etcd's client URL; its v3 JSON gateway lets tests change data behind the API server's back. */
  get etcdUrl(): string {
    return `http://127.0.0.1:${this.etcdPort}`;
  }

}
