// Finds or builds the real control-plane binaries (kube-apiserver, etcd, kubectl, helm) and, for
// `local-cluster --node`, the node's (kubelet, kube-proxy, kube-scheduler, kube-controller-manager,
// CoreDNS). Built once per machine from the Go modules pinned under tools/, through the Go module proxy,
// into a cache outside the repo. KUBEBUILDER_ASSETS (envtest's convention) overrides the build.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const TOOLS_DIR = fileURLToPath(new URL('../../tools/', import.meta.url));

export interface Binaries {
  kubeApiserver: string;
  etcd: string;
  kubectl: string;
  helm: string;
}

export interface NodeBinaries {
  kubelet: string;
  kubeProxy: string;
  kubeScheduler: string;
  kubeControllerManager: string;
  coredns: string;
}

type ToolName = keyof Binaries | keyof NodeBinaries;

/** Which Go module under tools/ builds which binary. */
const BUILDS: Record<ToolName, { module: string; pkg: string; file: string }> = {
  kubeApiserver: { module: 'kube', pkg: 'k8s.io/kubernetes/cmd/kube-apiserver', file: 'kube-apiserver' },
  kubectl: { module: 'kube', pkg: 'k8s.io/kubernetes/cmd/kubectl', file: 'kubectl' },
  kubelet: { module: 'kube', pkg: 'k8s.io/kubernetes/cmd/kubelet', file: 'kubelet' },
  kubeProxy: { module: 'kube', pkg: 'k8s.io/kubernetes/cmd/kube-proxy', file: 'kube-proxy' },
  kubeScheduler: { module: 'kube', pkg: 'k8s.io/kubernetes/cmd/kube-scheduler', file: 'kube-scheduler' },
  kubeControllerManager: { module: 'kube', pkg: 'k8s.io/kubernetes/cmd/kube-controller-manager', file: 'kube-controller-manager' },
  etcd: { module: 'etcd', pkg: 'go.etcd.io/etcd/server/v3', file: 'etcd' },
  helm: { module: 'helm', pkg: 'helm.sh/helm/v4/cmd/helm', file: 'helm' },
  coredns: { module: 'coredns', pkg: 'kube-drac/tools/coredns', file: 'coredns' },
};

/** Cold build time of each module on two cores (measured: 554 s, 96 s, ~150 s), for the progress line. */
const EXPECTED_MINUTES: Record<string, number> = { kube: 9, etcd: 2, helm: 3 };

/** The version a tools module pins for a dependency, read from its go.mod (the one place it is written). */
export function pinnedVersion(module: string, dependency: string): string {
  const goMod = fs.readFileSync(path.join(TOOLS_DIR, module, 'go.mod'), 'utf8');
  const escaped = dependency.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const match = new RegExp(`^\\s*(?:require\\s+)?${escaped}\\s+(v\\S+)`, 'm').exec(goMod);
  if (!match?.[1]) throw new Error(`tools/${module}/go.mod does not require ${dependency}`);
  return match[1];
}

/**
 * The -ldflags -X stamps each module's release build sets, so that `kubectl version` and
 * `helm version` report the pinned release rather than v0.0.0-master. Kubernetes stamps both
 * its own and client-go's version package (hack/lib/version.sh).
 */
function versionStamps(module: string): string[] {
  if (module === 'kube') {
    const version = pinnedVersion('kube', 'k8s.io/kubernetes');
    const [major, minor] = version.replace(/^v/, '').split('.');
    const values = { gitVersion: version, gitMajor: major, gitMinor: minor, gitTreeState: 'clean', buildDate: '1970-01-01T00:00:00Z' };
    return ['k8s.io/component-base/version', 'k8s.io/client-go/pkg/version'].flatMap((pkg) =>
      Object.entries(values).map(([key, value]) => `-X ${pkg}.${key}=${value}`),
    );
  }
  if (module === 'helm') return [`-X helm.sh/helm/v4/internal/version.version=${pinnedVersion('helm', 'helm.sh/helm/v4')}`];
  return [];
}

function ldflags(module: string): string {
  return versionStamps(module).join(' ');
}

export function cacheRoot(): string {
  if (process.env.KUBE_DRAC_CACHE) return process.env.KUBE_DRAC_CACHE;
  const xdg = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(xdg, 'kube-drac');
}

/**
 * The cache folder for one tools module: keyed by its files (go.mod, go.sum, any main.go) and
 * its link flags, so a version bump or a new stamp rebuilds.
 */
function moduleCacheDir(module: string): string {
  const hash = createHash('sha256');
  const moduleDir = path.join(TOOLS_DIR, module);
  for (const f of ['go.mod', 'go.sum']) hash.update(fs.readFileSync(path.join(moduleDir, f)));
  for (const f of fs.readdirSync(moduleDir).filter((f) => f.endsWith('.go')).sort()) hash.update(f).update(fs.readFileSync(path.join(moduleDir, f)));
  if (ldflags(module)) hash.update(ldflags(module));
  return path.join(cacheRoot(), 'bin', `${module}-${hash.digest('hex').slice(0, 12)}`);
}

function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

export type ProgressFn = (line: string) => void;

/** `go build -v` prints each package as it is compiled: turn that into a progress line now and then. */
async function goBuild(module: string, targets: { pkg: string; file: string }[], outDir: string, progress: ProgressFn): Promise<void> {
  const pkgs = targets.map((t) => t.pkg);
  const tmpDir = fs.mkdtempSync(path.join(path.dirname(outDir), `.build-${module}-`));
  const expected = EXPECTED_MINUTES[module];
  progress(`building ${pkgs.join(', ')} with Go (first use on this machine${expected ? `; about ${expected} min on two cores` : ''})`);
  const started = Date.now();
  let compiled = 0;
  let lastReport = Date.now();
  // One `go build` per binary, each with its own output name: a package path ending in a major
  // version (go.etcd.io/etcd/server/v3) would otherwise be named after its parent (`server`).
  for (const target of targets) {
    await runGoBuild(module, target.pkg, path.join(tmpDir, target.file), () => {
      compiled++;
      if (Date.now() - lastReport > 10_000) {
        lastReport = Date.now();
        progress(`  ${module}: ${compiled} packages compiled, ${Math.round((Date.now() - started) / 1000)} s`);
      }
    });
  }
  fs.mkdirSync(outDir, { recursive: true });
  for (const f of fs.readdirSync(tmpDir)) fs.renameSync(path.join(tmpDir, f), path.join(outDir, f));
  fs.rmSync(tmpDir, { recursive: true, force: true });
  progress(`  ${module}: built in ${Math.round((Date.now() - started) / 1000)} s into ${outDir}`);
}

function runGoBuild(module: string, pkg: string, output: string, onPackage: () => void): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const child = spawn('go', ['build', '-v', `-ldflags=${ldflags(module)}`, '-o', output, pkg], {
      cwd: path.join(TOOLS_DIR, module),
      env: { ...process.env, CGO_ENABLED: process.env.CGO_ENABLED ?? '0', GOFLAGS: process.env.GOFLAGS ?? '-buildvcs=false' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let errors = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => {
      for (const line of chunk.split('\n')) {
        if (line === '') continue;
        if (/^[\w.-]+(\/[\w.~+-]+)*$/.test(line)) onPackage();
        else errors += line + '\n';
      }
    });
    child.on('error', (err) =>
      reject(new Error(`cannot run go (${err.message}); install Go >= 1.26, or set KUBEBUILDER_ASSETS to a folder with kube-apiserver and etcd`)),
    );
    child.on('exit', (code) => {
      if (code === 0) resolve();
      else reject(new Error(`go build ${pkg} in tools/${module} failed (exit ${code}):\n${errors.slice(-4000)}`));
    });
  });
}

/** One builder at a time per machine and lock (tests and `npm start` may start together). */
export async function withBuildLock<T>(fn: () => Promise<T>, lock = path.join(cacheRoot(), 'bin', '.lock')): Promise<T> {
  fs.mkdirSync(path.dirname(lock), { recursive: true });
  for (;;) {
    try {
      fs.mkdirSync(lock);
      break;
    } catch {
      // A lock older than an hour belongs to a build that died.
      try {
        if (Date.now() - fs.statSync(lock).mtimeMs > 3_600_000) fs.rmSync(lock, { recursive: true, force: true });
      } catch {
        // gone already
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  try {
    return await fn();
  } finally {
    fs.rmSync(lock, { recursive: true, force: true });
  }
}

function fromAssets(tool: ToolName): string | undefined {
  const assets = process.env.KUBEBUILDER_ASSETS;
  if (!assets) return undefined;
  const file = path.join(assets, BUILDS[tool].file);
  return isExecutable(file) ? file : undefined;
}

/**
 * Resolve the binaries a caller needs, building the missing ones. With KUBEBUILDER_ASSETS set,
 * kube-apiserver and etcd must be there (a wrong folder is an error, not a silent build).
 */
export async function ensureBinaries(tools: ToolName[], progress: ProgressFn = (l) => process.stderr.write(l + '\n')): Promise<Partial<Binaries & NodeBinaries>> {
  const found: Partial<Binaries & NodeBinaries> = {};
  const missing = new Map<string, ToolName[]>();
  for (const tool of tools) {
    const asset = fromAssets(tool);
    if (asset) {
      found[tool] = asset;
      continue;
    }
    if (process.env.KUBEBUILDER_ASSETS && (tool === 'kubeApiserver' || tool === 'etcd')) {
      throw new Error(`KUBEBUILDER_ASSETS=${process.env.KUBEBUILDER_ASSETS} has no executable ${BUILDS[tool].file}`);
    }
    const { module, file } = BUILDS[tool];
    const cached = path.join(moduleCacheDir(module), file);
    if (isExecutable(cached)) found[tool] = cached;
    else missing.set(module, [...(missing.get(module) ?? []), tool]);
  }
  if (missing.size > 0) {
    await withBuildLock(async () => {
      for (const [module, moduleTools] of missing) {
        const dir = moduleCacheDir(module);
        const todo = moduleTools.filter((t) => !isExecutable(path.join(dir, BUILDS[t].file)));
        if (todo.length > 0) await goBuild(module, todo.map((t) => BUILDS[t]), dir, progress);
        for (const t of moduleTools) {
          const file = path.join(dir, BUILDS[t].file);
          if (!isExecutable(file)) throw new Error(`go build of ${BUILDS[t].pkg} finished but left no executable ${file}`);
          found[t] = file;
        }
      }
    });
  }
  return found;
}

/** What a control plane of its own needs (`npm start`, `local-cluster`): no helm, so none is built. */
export type ControlPlaneBinaries = Pick<Binaries, 'kubeApiserver' | 'etcd' | 'kubectl'>;

export async function ensureLocalClusterBinaries(progress?: ProgressFn): Promise<ControlPlaneBinaries> {
  return (await ensureBinaries(['kubeApiserver', 'etcd', 'kubectl'], progress)) as ControlPlaneBinaries;
}

/** Everything the tests use: the control plane's binaries and helm for the chart tests. */
export async function ensureControlPlaneBinaries(progress?: ProgressFn): Promise<Binaries> {
  return (await ensureBinaries(['kubeApiserver', 'etcd', 'kubectl', 'helm'], progress)) as Binaries;
}

export async function ensureNodeBinaries(progress?: ProgressFn): Promise<NodeBinaries> {
  return (await ensureBinaries(['kubelet', 'kubeProxy', 'kubeScheduler', 'kubeControllerManager', 'coredns'], progress)) as NodeBinaries;
}
