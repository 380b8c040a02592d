// `kube-drac local-cluster [--node] [--dir DIR]`: a real control plane (or, with --node, a real
// one-node cluster running the project's image) in the foreground, CRDs installed.
import { installCrds } from '../kube/crds.ts';
import { ControlPlane } from './control-plane.ts';
import { ensureImage } from './image.ts';
import { NodeCluster } from './node/cluster.ts';

const USAGE = 'usage: kube-drac local-cluster [--node] [--dir DIR]';

interface Running {
  kubeconfigPath: string;
  client(): ReturnType<ControlPlane['client']>;
  stop(): Promise<void>;
}

export async function runLocalCluster(args: string[]): Promise<void> {
  let dir: string | undefined;
  let node = false;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--dir' && args[i + 1]) dir = args[++i];
    else if (args[i]?.startsWith('--dir=')) dir = args[i]?.slice('--dir='.length);
    else if (args[i] === '--node') node = true;
    else throw new Error(`local-cluster: unknown argument ${JSON.stringify(args[i])} (${USAGE})`);
  }
  const progress = (line: string) => process.stderr.write(line + '\n');
  const image = node ? await ensureImage(progress) : undefined;
  const cluster: Running = node ? new NodeCluster({ dir, progress, images: image ? [image.archive] : [] }) : new ControlPlane({ dir, progress });
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`${signal}: stopping the ${node ? 'node' : 'control plane'}\n`);
    cluster.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        process.stderr.write(`${String(err)}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  try {
    await (cluster instanceof NodeCluster ? cluster.start() : (cluster as ControlPlane).start());
    const client = cluster.client();
    await installCrds(client);
    client.close();
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  process.stdout.write(`KUBECONFIG=${cluster.kubeconfigPath}\n`);
  if (cluster instanceof NodeCluster) {
    process.stdout.write(`NETNS=${cluster.netns}\n`);
    if (image) process.stdout.write(`IMAGE=${image.ref}\n`);
    progress(
      `node ready; clients run in the namespace outside the cluster: ip netns exec ${cluster.netns} ...; ` +
        `the node's own namespace is ${cluster.nodeNetns}; kubectl: ${cluster.kubectl}; Ctrl-C stops it all`,
    );
  } else {
    progress(`control plane ready at ${(cluster as ControlPlane).server}; kubectl: ${(cluster as ControlPlane).kubectl}; Ctrl-C stops it`);
  }
  // Stay in the foreground until a signal arrives.
  setInterval(() => undefined, 1 << 30);
}
