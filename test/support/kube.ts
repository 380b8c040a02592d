// For tests that need Kubernetes: the real API server that `npm test` started (test/run.ts), a
// namespace of the test's own, and the binaries (kubectl, helm, etcd, kube-apiserver).
import crypto from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { KubeClient } from '../../src/kube/client.ts';
import { ensureNamespace, installCrds } from '../../src/kube/crds.ts';
import type { Binaries } from '../../src/local/binaries.ts';
import { ControlPlane } from '../../src/local/control-plane.ts';

const run = promisify(execFile);

export interface TestKube {
  client: KubeClient;
  kubeconfigPath: string;
  namespace: string;
  /** `kubectl <args>` against this cluster, in this namespace; resolves with stdout. */
  kubectl(...args: string[]): Promise<string>;
  cleanup(): Promise<void>;
}

export function testKubeconfig(): string {
  const path = process.env.KUBE_DRAC_TEST_KUBECONFIG;
  if (!path) {
    throw new Error('this test needs the real API server: run it with `npm test -- <file>` (test/run.ts starts one)');
  }
  return path;
}

export function testBinaries(): Binaries {
  const json = process.env.KUBE_DRAC_TEST_BINARIES;
  if (!json) throw new Error('KUBE_DRAC_TEST_BINARIES is not set: run tests with `npm test -- <file>`');
  return JSON.parse(json) as Binaries;
}

/** A fresh namespace named after the test, on the shared control plane. */
export async function kubeForTest(name: string): Promise<TestKube> {
  const kubeconfigPath = testKubeconfig();
  const client = KubeClient.fromPath(kubeconfigPath);
  const namespace = `t-${name.toLowerCase().replace(/[^a-z0-9-]/g, '-').slice(0, 40)}-${crypto.randomBytes(3).toString('hex')}`;
  await ensureNamespace(client, namespace);
  const { kubectl } = testBinaries();
  return {
    client,
    kubeconfigPath,
    namespace,
    kubectl: async (...args: string[]) =>
      (await run(kubectl, ['--kubeconfig', kubeconfigPath, '-n', namespace, ...args], { maxBuffer: 64 << 20 })).stdout,
    // No namespace controller runs on a bare API server, so namespaces are left behind with the run.
    cleanup: () => {
      client.close();
      return Promise.resolve();
    },
  };
}

/**
 * A control plane of the test's own (etcd and kube-apiserver from the test binaries), started,
 * with `namespace` and, if asked, the CRDs: for tests that stop, kill or reconfigure the API
 * server, which the shared one must never see.
 */
export async function ownControlPlane(namespace: string, opts: { crds?: boolean; apiServerFlags?: string[] } = {}): Promise<ControlPlane> {
  const plane = new ControlPlane({ binaries: testBinaries(), apiServerFlags: opts.apiServerFlags });
  await plane.start();
  const client = plane.client();
  try {
    if (opts.crds) await installCrds(client);
    await ensureNamespace(client, namespace);
  } finally {
    client.close();
  }
  return plane;
}
