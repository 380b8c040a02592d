// `npm test`: the real peers first (.ci/install-peers installs them as root, or names them and
// stops), then one real control plane for the whole run (or the cluster named by
// KUBE_DRAC_TEST_KUBECONFIG), then Node's test runner over the test files.
//   npm test                              every test/**/*.test.ts
//   npm test -- test/grants/x.test.ts     just those files
//   npm run test:unit                     only the tests that need no control plane (no Go build,
//                                         no etcd or kube-apiserver started)
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { ControlPlane } from '../src/local/control-plane.ts';
import { installCrds } from '../src/kube/crds.ts';
import { KubeClient } from '../src/kube/client.ts';
import { ensureControlPlaneBinaries } from '../src/local/binaries.ts';
import { controlPlaneTests } from './select.ts';

const REPO = fileURLToPath(new URL('../', import.meta.url));
const args = process.argv.slice(2).filter((a) => a !== '--');
const unitOnly = args.includes('--unit');
const named = args.filter((a) => a !== '--unit');
// Globs are expanded here, so that what needs the control plane is decided file by file.
let files = [...new Set((named.length > 0 ? named : ['test/**/*.test.ts']).flatMap((p) => fs.globSync(p, { cwd: REPO })))].sort();
const needingControlPlane = controlPlaneTests(REPO, files);
if (unitOnly) files = files.filter((f) => !needingControlPlane.has(f));

console.log(`kube-drac tests on Node ${process.version}: ${files.length} files${unitOnly ? ' (unit: no control plane)' : ''}`);
if (files.length === 0) {
  console.log('no test files selected');
  process.exit(1);
}

const peers = spawnSync('bash', [fileURLToPath(new URL('../.ci/install-peers', import.meta.url))], { stdio: 'inherit' });
if (peers.status !== 0) process.exit(peers.status ?? 1);

let plane: ControlPlane | undefined;
const env: NodeJS.ProcessEnv = { ...process.env };
if (files.some((f) => needingControlPlane.has(f))) {
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
  env.KUBE_DRAC_TEST_KUBECONFIG = kubeconfig;
  env.KUBE_DRAC_TEST_BINARIES = JSON.stringify(binaries);
}

const child = spawn(process.execPath, ['--test', '--test-concurrency=3', '--test-timeout=300000', ...files], {
  cwd: REPO,
  stdio: 'inherit',
  env,
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
