// The one-node cluster's addresses and the configuration files of its parts, as pure functions of
// the folder they live in: nothing here touches the machine.
import path from 'node:path';

/**
 * The node's network, inside namespaces of its own (so the same addresses serve every node on
 * the machine). The uplink is a veth pair between the node's namespace and a "client" namespace
 * that stands for the network outside the cluster: clients and the smarthost live there, and
 * their packets reach the node's Services the way a real network's would.
 */
export const NODE_NETWORK = {
  nodeName: 'kube-drac-node',
  /** The node's address on its uplink: its InternalIP, and where the API server serves. */
  nodeAddress: '192.168.50.1',
  /** The client namespace's own address on the uplink. */
  clientAddress: '192.168.50.2',
  uplinkPrefix: 24,
  podCidr: '10.244.0.0/24',
  podGateway: '10.244.0.1',
  clusterCidr: '10.244.0.0/16',
  serviceCidr: '10.96.0.0/16',
  dnsServiceAddress: '10.96.0.10',
  apiServerPort: 6443,
  clusterDomain: 'cluster.local',
} as const;

export interface NodeLayout {
  dir: string;
  /** A name unique on this machine: the namespaces' and the cgroups' names derive from it. */
  id: string;
}

export const nodeNetns = (layout: NodeLayout) => `kube-drac-${layout.id}`;
export const clientNetns = (layout: NodeLayout) => `kube-drac-${layout.id}-client`;
/** Every process of the node and every pod lives under this cgroup, in each hierarchy. */
export const cgroupName = (layout: NodeLayout) => `kube-drac-${layout.id}`;

export function nodePaths(layout: NodeLayout) {
  const d = (...p: string[]) => path.join(layout.dir, ...p);
  return {
    controlPlane: d('control-plane'),
    containerdConfig: d('containerd', 'config.toml'),
    containerdRoot: d('containerd', 'root'),
    containerdState: d('containerd', 'state'),
    containerdSocket: d('containerd', 'containerd.sock'),
    containerdOpt: d('containerd', 'opt'),
    cniConfDir: d('cni', 'net.d'),
    cniIpamDir: d('cni', 'ipam'),
    kubeletDir: d('kubelet'),
    kubeletConfig: d('kubelet-config.yaml'),
    podLogsDir: d('pod-logs'),
    kubeProxyConfig: d('kube-proxy-config.yaml'),
    corefile: d('Corefile'),
    resolvConf: d('resolv.conf'),
    apiSocket: d('kube-apiserver.sock'),
    kubeconfigs: d('kubeconfigs'),
    images: d('images'),
    cleanupScript: d('cleanup.sh'),
    log: d('node.log'),
  };
}

export function containerdConfig(layout: NodeLayout, sandboxImage: string): string {
  const p = nodePaths(layout);
  return `version = 2
root = ${JSON.stringify(p.containerdRoot)}
state = ${JSON.stringify(p.containerdState)}

[grpc]
  address = ${JSON.stringify(p.containerdSocket)}

[ttrpc]
  address = ${JSON.stringify(p.containerdSocket + '.ttrpc')}

# Its default (/opt/containerd) would be a folder outside the node's own.
[plugins."io.containerd.internal.v1.opt"]
  path = ${JSON.stringify(p.containerdOpt)}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = ${JSON.stringify(sandboxImage)}
  # Root here may not raise oom_score_adj (no CAP_SYS_RESOURCE): runc fails every sandbox otherwise.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = ${JSON.stringify(p.cniConfDir)}
`;
}

/** The pods' network: one bridge, host-local addresses, no masquerading (nothing is out there). */
export function cniConfig(layout: NodeLayout): string {
  const p = nodePaths(layout);
  return JSON.stringify(
    {
      cniVersion: '1.0.0',
      name: 'kube-drac',
      plugins: [
        {
          type: 'bridge',
          bridge: 'cni0',
          isGateway: true,
          ipMasq: false,
          hairpinMode: true,
          ipam: {
            type: 'host-local',
            dataDir: p.cniIpamDir,
            ranges: [[{ subnet: NODE_NETWORK.podCidr, gateway: NODE_NETWORK.podGateway }]],
            routes: [{ dst: '0.0.0.0/0' }],
          },
        },
        { type: 'portmap', capabilities: { portMappings: true } },
      ],
    },
    null,
    2,
  );
}

export function kubeletConfig(layout: NodeLayout): string {
  const p = nodePaths(layout);
  return JSON.stringify(
    {
      apiVersion: 'kubelet.config.k8s.io/v1beta1',
      kind: 'KubeletConfiguration',
      // This machine has cgroup v1 hierarchies; kubelet 1.37 refuses them unless told.
      failCgroupV1: false,
      cgroupDriver: 'cgroupfs',
      cgroupRoot: `/${cgroupName(layout)}`,
      containerRuntimeEndpoint: `unix://${p.containerdSocket}`,
      podLogsDir: p.podLogsDir,
      clusterDNS: [NODE_NETWORK.dnsServiceAddress],
      clusterDomain: NODE_NETWORK.clusterDomain,
      resolvConf: p.resolvConf,
      address: NODE_NETWORK.nodeAddress,
      readOnlyPort: 0,
      healthzBindAddress: '127.0.0.1',
      // Only the API server, inside the node's namespace, can reach it.
      authentication: { anonymous: { enabled: true }, webhook: { enabled: false } },
      authorization: { mode: 'AlwaysAllow' },
      failSwapOn: false,
      serializeImagePulls: false,
      // The images were imported by hand and cannot be pulled again: never collect them, and
      // do not evict pods for a nearly full test disk.
      imageGCHighThresholdPercent: 100,
      imageGCLowThresholdPercent: 99,
      evictionHard: { 'memory.available': '1Mi', 'nodefs.available': '1%', 'nodefs.inodesFree': '1%', 'imagefs.available': '1%' },
      nodeStatusReportFrequency: '10s',
      syncFrequency: '10s',
      fileCheckFrequency: '5s',
      shutdownGracePeriod: '0s',
    },
    null,
    2,
  );
}

export function kubeProxyConfig(layout: NodeLayout, kubeconfig: string): string {
  return JSON.stringify(
    {
      apiVersion: 'kubeproxy.config.k8s.io/v1alpha1',
      kind: 'KubeProxyConfiguration',
      clientConnection: { kubeconfig },
      mode: 'iptables',
      hostnameOverride: NODE_NETWORK.nodeName,
      clusterCIDR: NODE_NETWORK.clusterCidr,
      healthzBindAddress: '127.0.0.1:10256',
      metricsBindAddress: '127.0.0.1:10249',
      // May not set conntrack sysctls here, nor route_localnet for loopback node ports.
      conntrack: { maxPerCore: 0 },
      iptables: { localhostNodePorts: false, masqueradeAll: false, syncPeriod: '10s', minSyncPeriod: '0s' },
      nodePortAddresses: [`${NODE_NETWORK.nodeAddress}/32`],
    },
    null,
    2,
  );
}

/** Cluster DNS: the real CoreDNS with the kubernetes plugin, serving only the cluster's zones. */
export function corefile(kubeconfig: string): string {
  return `.:53 {
    errors
    health 127.0.0.1:8080
    ready 127.0.0.1:8181
    kubernetes ${NODE_NETWORK.clusterDomain} in-addr.arpa ip6.arpa {
        kubeconfig ${kubeconfig}
        pods insecure
        ttl 5
    }
    cache 5
    loadbalance
}
`;
}

/** The search path clients outside the pods get (via /etc/netns/NAME/resolv.conf for `ip netns exec`). */
export function clientResolvConf(): string {
  return `nameserver ${NODE_NETWORK.dnsServiceAddress}\nsearch default.svc.${NODE_NETWORK.clusterDomain} svc.${NODE_NETWORK.clusterDomain} ${NODE_NETWORK.clusterDomain}\noptions ndots:5\n`;
}

export function kubeconfig(server: string, caFile: string, user: string, token: string): string {
  return JSON.stringify(
    {
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'node', cluster: { server, 'certificate-authority': caFile } }],
      users: [{ name: user, user: { token } }],
      contexts: [{ name: 'node', context: { cluster: 'node', user } }],
      'current-context': 'node',
    },
    null,
    2,
  );
}

/** The cluster objects the node's own parts need: CoreDNS's read access and the kube-dns Service. */
export function clusterAddons(corednsUser: string): object[] {
  return [
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRole',
      metadata: { name: 'kube-drac:coredns' },
      rules: [
        { apiGroups: [''], resources: ['endpoints', 'services', 'pods', 'namespaces'], verbs: ['list', 'watch'] },
        { apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: ['list', 'watch'] },
      ],
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRoleBinding',
      metadata: { name: 'kube-drac:coredns' },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'kube-drac:coredns' },
      subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: corednsUser }],
    },
    // CoreDNS runs on the node itself (there is no registry to pull its image from), so kube-dns
    // is a Service without a selector whose one endpoint is the node's address.
    {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: 'kube-dns', namespace: 'kube-system', labels: { 'k8s-app': 'kube-dns' } },
      spec: {
        clusterIP: NODE_NETWORK.dnsServiceAddress,
        ports: [
          { name: 'dns', port: 53, protocol: 'UDP', targetPort: 53 },
          { name: 'dns-tcp', port: 53, protocol: 'TCP', targetPort: 53 },
        ],
      },
    },
    {
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSlice',
      metadata: {
        name: 'kube-dns-node',
        namespace: 'kube-system',
        labels: { 'kubernetes.io/service-name': 'kube-dns', 'endpointslice.kubernetes.io/managed-by': 'kube-drac-node' },
      },
      addressType: 'IPv4',
      endpoints: [{ addresses: [NODE_NETWORK.nodeAddress], conditions: { ready: true } }],
      ports: [
        { name: 'dns', port: 53, protocol: 'UDP' },
        { name: 'dns-tcp', port: 53, protocol: 'TCP' },
      ],
    },
  ];
}
