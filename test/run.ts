// `npm test`: one real control plane for the whole run (or the cluster named by
// KUBE_DRAC_TEST_KUBECONFIG), then Node's test runner over the test files.
//   npm test                       every test/**/*.test.ts
//   npm test -- test/grants/x.test.ts   just those files
import { spawn } from 'node:child_process';
import { ControlPlane } from '../src/local/control-plane.ts';
import { installCrds } from '../src/kube/crds.ts';
import { KubeClient } from '../src/kube/client.ts';
import { ensureControlPlaneBinaries } from '../src/local/binaries.ts';

const files = process.argv.slice(2).filter((a) => a !== '--');
const patterns = files.length > 0 ? files : ['test/**/*.test.ts'];

console.log(`kube-drac tests on Node ${process.version}`);

let plane: ControlPlane | undefined;
let kubeconfig = process.env.KUBE_DRAC_TEST_KUBECONFIG;
const binaries = await ensureControlPlaneBinaries((line) => console.log(line));
if (kubeconfig) {
  console.log(`using the existing cluster in ${kubeconfig}`);
} else {
  plane = new ControlPlane({ binaries });
  const started = Date.now();
  await plane.start();
  kubeconfig = plane.kubeconfigPath;
  console.log(`control plane ready at ${plane.server} in ${Date.now() - started} ms`);
}
const client = KubeClient.fromPath(kubeconfig);
await installCrds(client);
client.close();

const child = spawn(process.execPath, ['--test', '--test-concurrency=3', '--test-timeout=300000', ...patterns], {
  stdio: 'inherit',
  env: {
    ...process.env,
    KUBE_DRAC_TEST_KUBECONFIG: kubeconfig,
    KUBE_DRAC_TEST_BINARIES: JSON.stringify(binaries),
  },
});

let interrupted = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    interrupted = true;
    child.kill(signal);
  });
}

const code = await new Promise<number>((resolve) => child.on('exit', (c, s) => resolve(c ?? (s ? 1 : 0))));
await plane?.stop();
process.exit(interrupted && code === 0 ? 1 : code);
