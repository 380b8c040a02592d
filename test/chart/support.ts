// Helpers for the chart tests: run the real helm (v4) on charts/kube-drac and parse what it renders.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as yaml from 'js-yaml';
import { testBinaries } from '../support/kube.ts';

export const REPO = fileURLToPath(new URL('../../', import.meta.url));
export const CHART = fileURLToPath(new URL('../../charts/kube-drac/', import.meta.url));
export const VALUES_ALL = fileURLToPath(new URL('./values-all.yaml', import.meta.url));

/** The two values the chart cannot do without (a TLS Secret and a smarthost). */
export const MINIMAL = ['--set', 'tls.existingSecret=mail-tls', '--set', 'smtp.smarthost.host=relay.example.org'];

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [key: string]: unknown;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function helm(args: string[]): Promise<RunResult> {
  const { helm: bin } = testBinaries();
  return new Promise((resolve) => {
    execFile(bin, args, { maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** `helm template` with these extra arguments; throws with helm's message when it refuses. */
export async function render(args: string[], release = 'r'): Promise<K8sObject[]> {
  const r = await helm(['template', release, CHART, '--namespace', 'mail', ...args]);
  if (r.code !== 0) throw new Error(`helm template failed (${r.code}):\n${r.stderr}`);
  return yaml.loadAll(r.stdout).filter((d): d is K8sObject => d !== null && typeof d === 'object');
}

export function find(objects: K8sObject[], kind: string, name: string): K8sObject {
  const found = objects.find((o) => o.kind === kind && o.metadata.name === name);
  if (!found) throw new Error(`no ${kind} ${name} among: ${objects.map((o) => `${o.kind}/${o.metadata.name}`).join(', ')}`);
  return found;
}

export function ofKind(objects: K8sObject[], kind: string): K8sObject[] {
  return objects.filter((o) => o.kind === kind);
}

/** Every metric name the code defines (`name: 'kubedrac_...'` in src/). */
export function definedMetricNames(): Set<string> {
  const names = new Set<string>();
  const walk = (dir: string): void => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = `${dir}/${entry.name}`;
      if (entry.isDirectory()) walk(p);
      else if (entry.name.endsWith('.ts')) {
        for (const m of fs.readFileSync(p, 'utf8').matchAll(/name: '(kubedrac_\w+)'/g)) names.add(m[1] as string);
      }
    }
  };
  walk(`${REPO}src`);
  return names;
}

/** Metric names a PromQL expression uses, with histogram suffixes folded onto the metric. */
export function metricsIn(expr: string): string[] {
  return [...expr.matchAll(/\b(kubedrac_\w+)/g)].map((m) => (m[1] as string).replace(/_(bucket|sum|count)$/, ''));
}

// Typed access to the parts of rendered objects the tests look at.
export interface Container {
  name: string;
  args?: string[];
  env?: Array<{ name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string } } }>;
  ports?: Array<{ name: string; containerPort: number }>;
  securityContext?: Record<string, unknown>;
  livenessProbe?: { httpGet?: { path: string; port: string | number } };
  readinessProbe?: { httpGet?: { path: string; port: string | number } };
  volumeMounts?: Array<{ name: string; mountPath: string; readOnly?: boolean }>;
  resources?: Record<string, unknown>;
}

export interface PodSpec {
  serviceAccountName: string;
  securityContext?: Record<string, unknown>;
  containers: Container[];
  volumes?: Array<{ name: string; emptyDir?: unknown; configMap?: { name: string; items?: Array<{ key: string; path: string }> }; secret?: { secretName: string }; persistentVolumeClaim?: { claimName: string } }>;
  [key: string]: unknown;
}

export function podSpec(deployment: K8sObject): PodSpec {
  return (deployment as unknown as { spec: { template: { spec: PodSpec } } }).spec.template.spec;
}

export function spec<T = Record<string, unknown>>(o: K8sObject): T {
  return (o as unknown as { spec: T }).spec;
}
