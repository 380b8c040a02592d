// Installs the CRDs from crds/ (server-side apply) and waits until the API server serves them.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as yaml from 'js-yaml';
import type { KubeClient } from './client.ts';

export const CRDS_DIR = fileURLToPath(new URL('../../crds/', import.meta.url));

interface Crd {
  metadata: { name: string };
  status?: { conditions?: { type: string; status: string }[] };
}

export function readCrds(dir = CRDS_DIR): Crd[] {
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.yaml'))
    .sort()
    .flatMap((f) => yaml.loadAll(fs.readFileSync(path.join(dir, f), 'utf8')) as Crd[])
    .filter(Boolean);
}

const CRD_PATH = '/apis/apiextensions.k8s.io/v1/customresourcedefinitions';

export async function installCrds(client: KubeClient, dir = CRDS_DIR, timeoutMs = 30_000): Promise<string[]> {
  const crds = readCrds(dir);
  for (const crd of crds) await client.apply(`${CRD_PATH}/${crd.metadata.name}`, crd, 'kube-drac');
  const deadline = Date.now() + timeoutMs;
  for (const crd of crds) {
    for (;;) {
      const current = await client.get<Crd>(`${CRD_PATH}/${crd.metadata.name}`);
      if (current?.status?.conditions?.some((c) => c.type === 'Established' && c.status === 'True')) break;
      if (Date.now() > deadline) throw new Error(`CRD ${crd.metadata.name} not Established after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return crds.map((c) => c.metadata.name);
}

export async function ensureNamespace(client: KubeClient, name: string): Promise<void> {
  await client.apply(`/api/v1/namespaces/${name}`, { apiVersion: 'v1', kind: 'Namespace', metadata: { name } }, 'kube-drac');
}
