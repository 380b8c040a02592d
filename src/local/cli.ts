// `kube-drac local-cluster [--dir DIR]`: a real control plane in the foreground, CRDs installed.
import { installCrds } from '../kube/crds.ts';
import { ControlPlane } from './control-plane.ts';

export async function runLocalCluster(args: string[]): Promise<void> {
  let dir: string | undefined;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--dir' && args[i + 1]) dir = args[++i];
    else if (args[i]?.startsWith('--dir=')) dir = args[i]?.slice('--dir='.length);
    else throw new Error(`local-cluster: unknown argument ${JSON.stringify(args[i])} (usage: kube-drac local-cluster [--dir DIR])`);
  }
  const plane = new ControlPlane({ dir, progress: (line) => process.stderr.write(line + '\n') });
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`${signal}: stopping the control plane\n`);
    plane.stop().then(
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
    await plane.start();
    const client = plane.client();
    await installCrds(client);
    client.close();
  } catch (err) {
    await plane.stop();
    throw err;
  }
  process.stdout.write(`KUBECONFIG=${plane.kubeconfigPath}\n`);
  process.stderr.write(`control plane ready at ${plane.server}; kubectl: ${plane.kubectl}; Ctrl-C stops it\n`);
  // Stay in the foreground until a signal arrives.
  setInterval(() => undefined, 1 << 30);
}
