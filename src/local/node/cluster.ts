// A real one-node Kubernetes cluster on this machine (`kube-drac local-cluster --node`): etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy (iptables) and
// CoreDNS built from the modules under tools/, containerd, runc and the CNI plugins from Debian.
//
// Layout: the node has a network namespace of its own with no route out. Its daemons share one
// private mount namespace (kubelet's volume mounts must be where runc looks), with a tmpfs on
// /run, /var/log and /var/lib/cni so nothing they leave there outlives them, and one cgroup in
// every hierarchy that holds them and all pods. A second namespace, joined to the node by a veth
// pair, stands for the network outside the cluster: clients (and a smarthost) live there, and
// their packets reach the Services as a real network's would, with their own source addresses.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { KubeClient } from '../../kube/client.ts';
import { ensureControlPlaneBinaries, ensureNodeBinaries, type Binaries, type NodeBinaries, type ProgressFn } from '../binaries.ts';
import { ControlPlane, freePort } from '../control-plane.ts';
import { runCleanup, startCleanupWatchdog, stopCleanupWatchdog, writeCleanupScript, type CleanupTargets } from './cleanup.ts';
import {
  cgroupName,
  clientNetns,
  clientResolvConf,
  clusterAddons,
  cniConfig,
  containerdConfig,
  corefile,
  kubeconfig,
  kubeletConfig,
  kubeProxyConfig,
  NODE_NETWORK,
  nodeNetns,
  nodePaths,
  type NodeLayout,
} from './config.ts';
import { ensurePauseArchive, PAUSE_IMAGE } from './images.ts';

const run = promisify(execFile);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Kernel settings kubelet sets on start (protectKernelDefaults: false); put back on stop. */
const KUBELET_SYSCTLS = ['vm.overcommit_memory', 'vm.panic_on_oom', 'kernel.panic', 'kernel.panic_on_oops', 'kernel.keys.root_maxkeys', 'kernel.keys.root_maxbytes'];

export interface NodeClusterOptions {
  /** The node's folder (kept on stop); a temp folder, removed on stop, when unset. */
  dir?: string;
  progress?: ProgressFn;
  /** Image archives (docker-archive or OCI) to import into the node's containerd. */
  images?: string[];
}

/** Why this machine cannot run a node, or undefined when it can. */
export function nodeUnsupportedReason(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (network namespaces, cgroups, mounts)';
  if (!fs.existsSync('/sys/fs/cgroup/pids')) return 'needs the cgroup v1 pids hierarchy at /sys/fs/cgroup/pids';
  for (const tool of ['/usr/bin/containerd', '/usr/sbin/runc', '/usr/lib/cni/bridge', '/usr/bin/nsenter', '/usr/bin/unshare', '/usr/sbin/ip', '/usr/bin/socat', '/usr/bin/ctr']) {
    if (!fs.existsSync(tool) && !fs.existsSync(tool.replace('/usr/sbin/', '/usr/bin/'))) return `needs ${tool} (apt-get install the packages in .ci/packages/node.txt)`;
  }
  return undefined;
}

export class NodeCluster {
  readonly layout: NodeLayout;
  readonly paths: ReturnType<typeof nodePaths>;
  /** The host-side kubeconfig (through a loopback port forwarded into the node's namespace). */
  readonly kubeconfigPath: string;
  private readonly opts: NodeClusterOptions;
  private readonly ownsDir: boolean;
  private plane: ControlPlane | undefined;
  private holder: ChildProcess | undefined;
  private watchdog: ChildProcess | undefined;
  private binaries: (Binaries & NodeBinaries) | undefined;
  private readonly tokens = {
    kubelet: crypto.randomBytes(24).toString('hex'),
    scheduler: crypto.randomBytes(24).toString('hex'),
    controllerManager: crypto.randomBytes(24).toString('hex'),
    proxy: crypto.randomBytes(24).toString('hex'),
    coredns: crypto.randomBytes(24).toString('hex'),
  };

  constructor(opts: NodeClusterOptions = {}) {
    this.opts = opts;
    this.ownsDir = !opts.dir;
    const dir = opts.dir ? path.resolve(opts.dir) : fs.mkdtempSync(path.join(os.tmpdir(), 'kube-drac-node-'));
    fs.mkdirSync(dir, { recursive: true });
    this.layout = { dir, id: crypto.randomBytes(4).toString('hex') };
    this.paths = nodePaths(this.layout);
    this.kubeconfigPath = path.join(this.paths.controlPlane, 'kubeconfig');
  }

  /** The namespace outside the cluster: where clients run (`ip netns exec NAME ...`). */
  get netns(): string {
    return clientNetns(this.layout);
  }

  get nodeNetns(): string {
    return nodeNetns(this.layout);
  }

  get controlPlane(): ControlPlane {
    if (!this.plane) throw new Error('node not started');
    return this.plane;
  }

  get kubectl(): string {
    return this.controlPlane.kubectl;
  }

  get helm(): string {
    if (!this.binaries) throw new Error('node not started');
    return this.binaries.helm;
  }

  client(): KubeClient {
    return KubeClient.fromPath(this.kubeconfigPath);
  }

  private get cgroupDirs(): string[] {
    return fs
      .readdirSync('/sys/fs/cgroup')
      .map((h) => path.join('/sys/fs/cgroup', h))
      .filter((h) => fs.existsSync(path.join(h, 'cgroup.procs')))
      .map((h) => path.join(h, cgroupName(this.layout)));
  }

  private get cleanupTargets(): CleanupTargets {
    return {
      cgroup: cgroupName(this.layout),
      netns: [this.nodeNetns, this.netns],
      extraPaths: [path.join('/etc/netns', this.netns)],
      emptyDirs: ['/etc/netns'],
      sysctlFile: path.join(this.layout.dir, 'sysctls'),
      removeDir: this.ownsDir ? this.layout.dir : '',
    };
  }

  private progress(line: string): void {
    (this.opts.progress ?? ((l: string) => process.stderr.write(l + '\n')))(line);
  }

  async start(): Promise<void> {
    const reason = nodeUnsupportedReason();
    if (reason) throw new Error(`local-cluster --node ${reason}`);
    const started = Date.now();
    const progress = (l: string) => this.progress(l);
    this.binaries = { ...(await ensureControlPlaneBinaries(progress)), ...(await ensureNodeBinaries(progress)) };
    const pauseArchive = ensurePauseArchive();

    // The watchdog first: from here on, anything created is undone if this process dies.
    writeCleanupScript(this.paths.cleanupScript);
    this.saveSysctls();
    this.watchdog = startCleanupWatchdog(this.paths.cleanupScript, this.cleanupTargets);
    try {
      this.writeFiles();
      this.makeCgroups();
      await this.makeNetwork();
      await this.startHolder();
      await this.startControlPlane();
      await this.startNodeDaemons();
      await this.importImage(pauseArchive);
      await this.waitNodeReady();
      for (const archive of this.opts.images ?? []) await this.importImage(archive);
    } catch (err) {
      await this.stop();
      throw err;
    }
    this.progress(`node ${NODE_NETWORK.nodeName} Ready in ${Math.round((Date.now() - started) / 1000)} s`);
  }

  private saveSysctls(): void {
    const lines = KUBELET_SYSCTLS.map((key) => {
      try {
        return `${key}=${fs.readFileSync(path.join('/proc/sys', ...key.split('.')), 'utf8').trim()}`;
      } catch {
        return '';
      }
    });
    fs.writeFileSync(this.cleanupTargets.sysctlFile, lines.filter(Boolean).join('\n') + '\n');
  }

  private writeFiles(): void {
    const p = this.paths;
    for (const d of [p.cniConfDir, p.cniIpamDir, p.kubeletDir, p.podLogsDir, p.kubeconfigs, p.containerdRoot, p.containerdState]) fs.mkdirSync(d, { recursive: true });
    fs.writeFileSync(p.containerdConfig, containerdConfig(this.layout, PAUSE_IMAGE));
    fs.writeFileSync(path.join(p.cniConfDir, '10-kube-drac.conflist'), cniConfig(this.layout));
    fs.writeFileSync(p.kubeletConfig, kubeletConfig(this.layout));
    fs.writeFileSync(p.resolvConf, `nameserver ${NODE_NETWORK.dnsServiceAddress}\n`);
    fs.writeFileSync(p.kubeProxyConfig, kubeProxyConfig(this.layout, this.componentKubeconfig('kube-proxy')));
    fs.writeFileSync(p.corefile, corefile(this.componentKubeconfig('coredns')));
  }

  private componentKubeconfig(name: string): string {
    return path.join(this.paths.kubeconfigs, `${name}.kubeconfig`);
  }

  /** The components' identities: kubelet as its node, the others as the users RBAC's defaults name. */
  private get componentUsers() {
    return [
      { name: 'kubelet', token: this.tokens.kubelet, user: `system:node:${NODE_NETWORK.nodeName}`, groups: ['system:nodes', 'system:authenticated'] },
      { name: 'kube-scheduler', token: this.tokens.scheduler, user: 'system:kube-scheduler', groups: ['system:authenticated'] },
      { name: 'kube-controller-manager', token: this.tokens.controllerManager, user: 'system:kube-controller-manager', groups: ['system:authenticated'] },
      { name: 'kube-proxy', token: this.tokens.proxy, user: 'system:kube-proxy', groups: ['system:authenticated'] },
      { name: 'coredns', token: this.tokens.coredns, user: 'kube-drac:coredns', groups: ['system:authenticated'] },
    ];
  }

  private makeCgroups(): void {
    for (const dir of this.cgroupDirs) {
      fs.mkdirSync(dir, { recursive: true });
      // cpuset children start empty: copy the parent's CPUs and memory nodes, or nothing runs.
      for (const f of ['cpuset.cpus', 'cpuset.mems']) {
        const parentFile = path.join(path.dirname(dir), f);
        if (fs.existsSync(parentFile)) fs.writeFileSync(path.join(dir, f), fs.readFileSync(parentFile, 'utf8').trim());
      }
    }
  }

  private async makeNetwork(): Promise<void> {
    const node = this.nodeNetns;
    const client = this.netns;
    const uplinkNode = `kd${this.layout.id}n`;
    const uplinkClient = `kd${this.layout.id}c`;
    const ip = (...args: string[]) => run('ip', args);
    await ip('netns', 'add', node);
    await ip('netns', 'add', client);
    await ip('link', 'add', uplinkNode, 'netns', node, 'type', 'veth', 'peer', 'name', uplinkClient, 'netns', client);
    const prefix = NODE_NETWORK.uplinkPrefix;
    await ip('-n', node, 'addr', 'add', `${NODE_NETWORK.nodeAddress}/${prefix}`, 'dev', uplinkNode);
    await ip('-n', client, 'addr', 'add', `${NODE_NETWORK.clientAddress}/${prefix}`, 'dev', uplinkClient);
    for (const [ns, link] of [[node, uplinkNode], [client, uplinkClient]] as const) {
      await ip('-n', ns, 'link', 'set', 'lo', 'up');
      await ip('-n', ns, 'link', 'set', link, 'up');
    }
    // The client side reaches pods and Services through the node; neither side has a default route.
    for (const cidr of [NODE_NETWORK.clusterCidr, NODE_NETWORK.serviceCidr]) {
      await ip('-n', client, 'route', 'add', cidr, 'via', NODE_NETWORK.nodeAddress);
    }
    // On the node itself, ClusterIPs need a route to be sent at all (kube-proxy rewrites them on the way).
    await ip('-n', node, 'route', 'add', NODE_NETWORK.serviceCidr, 'dev', uplinkNode);
    await run('nsenter', [`--net=/run/netns/${node}`, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1', 'net.bridge.bridge-nf-call-iptables=1']);
    const resolv = path.join('/etc/netns', client);
    fs.mkdirSync(resolv, { recursive: true });
    fs.writeFileSync(path.join(resolv, 'resolv.conf'), clientResolvConf());
  }

  /** A process that holds the node's mount namespace; every daemon joins it and its network namespace. */
  private async startHolder(): Promise<void> {
    const pidsCgroup = path.join('/sys/fs/cgroup/pids', cgroupName(this.layout));
    // A fresh machine has no /var/lib/cni (nothing installed there yet): make the mount point, or
    // the mount fails (exit 32) and the node never starts. An empty folder is all it leaves.
    const setup = ['mkdir -p /var/lib/cni', 'mount -t tmpfs tmpfs /run', 'mount -t tmpfs tmpfs /var/log', 'mount -t tmpfs tmpfs /var/lib/cni', 'exec sleep infinity'].join(' && ');
    this.holder = spawn(
      'sh',
      ['-c', 'echo $$ > "$1/cgroup.procs" && exec nsenter --net="/run/netns/$2" unshare --mount --propagation private sh -c "$3"', 'holder', pidsCgroup, this.nodeNetns, setup],
      { detached: true, stdio: 'ignore' },
    );
    this.holder.unref();
    const pid = this.holder.pid;
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      if (this.holder.exitCode !== null) throw new Error(`the node's namespace holder exited with code ${this.holder.exitCode}`);
      try {
        if (fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'sleep') return;
      } catch {
        // not yet
      }
      await sleep(50);
    }
    throw new Error('the node namespace holder did not start within 10 s');
  }

  /** Run a child in the node's cgroup, network and mount namespaces. */
  private get inNode(): string[] {
    const pidsCgroup = path.join('/sys/fs/cgroup/pids', cgroupName(this.layout));
    return ['sh', '-c', 'cg="$1"; holder="$2"; shift 2; echo $$ > "$cg/cgroup.procs" && exec nsenter -t "$holder" -n -m -- "$@"', 'in-node', pidsCgroup, String(this.holder?.pid)];
  }

  /** Run a child in the node's cgroup only (on this machine's network). */
  private get inNodeCgroup(): string[] {
    const pidsCgroup = path.join('/sys/fs/cgroup/pids', cgroupName(this.layout));
    return ['sh', '-c', 'cg="$1"; shift; echo $$ > "$cg/cgroup.procs" && exec "$@"', 'in-node-cgroup', pidsCgroup];
  }

  private async startControlPlane(): Promise<void> {
    const b = this.binaries!;
    const hostPort = await freePort();
    this.plane = new ControlPlane({
      dir: this.paths.controlPlane,
      keepDir: true,
      binaries: { kubeApiserver: b.kubeApiserver, etcd: b.etcd, kubectl: b.kubectl },
      logFile: this.paths.log,
      node: {
        spawnPrefix: this.inNode,
        advertiseAddress: NODE_NETWORK.nodeAddress,
        port: NODE_NETWORK.apiServerPort,
        reachedAt: hostPort,
        serviceClusterIpRange: NODE_NETWORK.serviceCidr,
        tokens: this.componentUsers.map(({ token, user, groups }) => ({ token, user, groups })),
      },
    });
    // The API server is reachable from this machine only through a socket file: the node's
    // namespace has no link to it. One socat inside forwards the socket to the API server, one
    // outside forwards a loopback port to the socket.
    const apiAddress = `${NODE_NETWORK.nodeAddress}:${NODE_NETWORK.apiServerPort}`;
    this.plane.spawnChild('api-forward-in', '/usr/bin/socat', [`UNIX-LISTEN:${this.paths.apiSocket},fork,mode=600,unlink-early`, `TCP:${apiAddress}`]);
    this.plane.spawnChild('api-forward-out', '/usr/bin/socat', [`TCP-LISTEN:${hostPort},bind=127.0.0.1,reuseaddr,fork`, `UNIX-CONNECT:${this.paths.apiSocket}`], this.inNodeCgroup);
    await this.plane.start();
    for (const u of this.componentUsers) {
      fs.writeFileSync(this.componentKubeconfig(u.name), kubeconfig(`https://${apiAddress}`, this.plane.caFile, u.user, u.token), { mode: 0o600 });
    }
    await this.kubectlApply(clusterAddons('kube-drac:coredns'));
  }

  private async kubectlApply(objects: object[]): Promise<void> {
    await this.kubectlRun(['apply', '--server-side', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items: objects }));
  }

  /** kubectl against the node, from this machine; rejects with its stderr. */
  kubectlRun(args: string[], input?: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const child = spawn(this.kubectl, args, { env: { ...process.env, KUBECONFIG: this.kubeconfigPath }, stdio: ['pipe', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      child.stdout.on('data', (c: Buffer) => (out += c.toString()));
      child.stderr.on('data', (c: Buffer) => (err += c.toString()));
      child.on('error', reject);
      child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`kubectl ${args.join(' ')} failed (exit ${code}): ${err.trim()}`))));
      child.stdin.end(input ?? '');
    });
  }

  private async startNodeDaemons(): Promise<void> {
    const b = this.binaries!;
    const plane = this.controlPlane;
    const p = this.paths;
    const kc = (n: string) => this.componentKubeconfig(n);
    plane.spawnChild('containerd', '/usr/bin/containerd', ['--config', p.containerdConfig]);
    plane.spawnChild('kube-controller-manager', b.kubeControllerManager, [
      `--kubeconfig=${kc('kube-controller-manager')}`,
      '--bind-address=127.0.0.1',
      '--leader-elect=false',
      `--service-account-private-key-file=${plane.serviceAccountKeyFile}`,
      `--root-ca-file=${plane.caFile}`,
      '--use-service-account-credentials=true',
      `--cluster-cidr=${NODE_NETWORK.clusterCidr}`,
      `--service-cluster-ip-range=${NODE_NETWORK.serviceCidr}`,
      '--v=1',
    ]);
    plane.spawnChild('kube-scheduler', b.kubeScheduler, [`--kubeconfig=${kc('kube-scheduler')}`, '--bind-address=127.0.0.1', '--leader-elect=false', '--v=1']);
    await this.waitContainerd();
    plane.spawnChild('kubelet', b.kubelet, [
      `--config=${p.kubeletConfig}`,
      `--kubeconfig=${kc('kubelet')}`,
      `--hostname-override=${NODE_NETWORK.nodeName}`,
      `--node-ip=${NODE_NETWORK.nodeAddress}`,
      `--root-dir=${p.kubeletDir}`,
      `--cert-dir=${path.join(p.kubeletDir, 'pki')}`,
      '--v=1',
    ]);
    plane.spawnChild('kube-proxy', b.kubeProxy, [`--config=${p.kubeProxyConfig}`, '--v=1']);
    plane.spawnChild('coredns', b.coredns, ['-conf', p.corefile]);
  }

  private async waitContainerd(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      this.controlPlane.checkChildren();
      try {
        await run('ctr', ['--address', this.paths.containerdSocket, 'version'], { timeout: 5000 });
        return;
      } catch {
        await sleep(200);
      }
    }
    throw new Error(`containerd did not answer within ${timeoutMs} ms:\n${this.controlPlane.tailOf('containerd')}`);
  }

  /** Load an image archive into the node's containerd, where the kubelet finds it. */
  async importImage(archive: string): Promise<void> {
    await run('ctr', ['--address', this.paths.containerdSocket, '-n', 'k8s.io', 'images', 'import', '--all-platforms', archive], { maxBuffer: 16 << 20 });
  }

  private async waitNodeReady(timeoutMs = 120_000): Promise<void> {
    const client = this.client();
    const deadline = Date.now() + timeoutMs;
    let last = 'not registered';
    try {
      while (Date.now() < deadline) {
        this.controlPlane.checkChildren();
        const node = await client.get<{ status?: { conditions?: { type: string; status: string; message?: string }[] } }>(`/api/v1/nodes/${NODE_NETWORK.nodeName}`);
        const ready = node?.status?.conditions?.find((c) => c.type === 'Ready');
        // Pods also need the default ServiceAccount, which the controller-manager creates.
        const sa = await client.get('/api/v1/namespaces/default/serviceaccounts/default');
        if (ready?.status === 'True' && sa) return;
        last = ready ? `Ready=${ready.status} (${ready.message ?? ''})` : 'not registered';
        if (ready?.status === 'True') last = 'no default ServiceAccount yet';
        await sleep(500);
      }
    } finally {
      client.close();
    }
    throw new Error(`node ${NODE_NETWORK.nodeName} not Ready after ${timeoutMs} ms (${last}):\n${this.controlPlane.tailOf('kubelet')}`);
  }

  /**
   * A command prefix for daemons in the client namespace (outside the cluster, beside the node),
   * e.g. a smarthost: they join the node's cgroup, so they end with the node even if this process dies.
   */
  get clientDaemonPrefix(): string[] {
    return [...this.inNodeCgroup, 'ip', 'netns', 'exec', this.netns];
  }

  /** End everything: processes, cgroups, namespaces, mounts (with their namespace), and the folder if ours. */
  async stop(): Promise<void> {
    await runCleanup(this.paths.cleanupScript, this.cleanupTargets);
    await this.plane?.stop();
    if (this.watchdog) await stopCleanupWatchdog(this.watchdog);
    this.watchdog = undefined;
  }
}
