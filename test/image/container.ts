// Running the built image without a container engine: its docker-archive unpacked by skopeo and
// umoci into an OCI runtime bundle, and each command started by runc with the image's own user,
// environment, working directory and entry point, on a read-only root (as the chart runs it). The
// network namespace is left out so the roles reach the test API server and the tests their ports.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** The parts of an OCI image config the tests read. */
export interface ImageConfig {
  User?: string;
  Env?: string[];
  Entrypoint?: string[];
  Cmd?: string[];
  WorkingDir?: string;
}

interface RuntimeSpec {
  root: { path: string; readonly?: boolean };
  process: { terminal?: boolean; args: string[]; env: string[]; cwd: string; user: { uid: number; gid: number } };
  mounts: { destination: string; type: string; source: string; options: string[] }[];
  linux: { namespaces: { type: string }[] };
}

export interface ContainerCommand {
  command: string;
  args: string[];
}

function readBlob(layout: string, digest: string): unknown {
  return JSON.parse(fs.readFileSync(path.join(layout, 'blobs', ...digest.split(':')), 'utf8'));
}

export class UnpackedImage {
  readonly rootfs: string;
  readonly config: ImageConfig;
  private readonly dir: string;
  private readonly spec: RuntimeSpec;
  private readonly runcRoot: string;
  private started = 0;

  private constructor(dir: string, config: ImageConfig) {
    this.dir = dir;
    this.config = config;
    this.rootfs = path.join(dir, 'bundle', 'rootfs');
    this.spec = JSON.parse(fs.readFileSync(path.join(dir, 'bundle', 'config.json'), 'utf8')) as RuntimeSpec;
    this.runcRoot = path.join(dir, 'runc');
  }

  /** `archive` (docker-archive) → an OCI layout → a runtime bundle under `dir`. */
  static async unpack(archive: string, dir: string): Promise<UnpackedImage> {
    const layout = path.join(dir, 'oci');
    await run('skopeo', ['copy', '--quiet', `docker-archive:${archive}`, `oci:${layout}:image`]);
    await run('umoci', ['unpack', '--image', `${layout}:image`, path.join(dir, 'bundle')], { maxBuffer: 16 << 20 });
    const manifestDigest = (JSON.parse(fs.readFileSync(path.join(layout, 'index.json'), 'utf8')) as { manifests: { digest: string }[] }).manifests[0]?.digest;
    if (!manifestDigest) throw new Error(`no manifest in ${layout}/index.json`);
    const manifest = readBlob(layout, manifestDigest) as { config: { digest: string } };
    const config = (readBlob(layout, manifest.config.digest) as { config: ImageConfig }).config;
    fs.rmSync(layout, { recursive: true, force: true });
    return new UnpackedImage(dir, config);
  }

  /** The image's user as numbers (the Dockerfile's USER is numeric). */
  user(): { uid: number; gid: number } {
    return this.spec.process.user;
  }

  /**
   * runc running `args` after the image's entry point (or `entrypoint` instead of it), with each
   * of `binds` mounted read-write at its own path.
   */
  command(args: string[], opts: { binds?: string[]; entrypoint?: string[] } = {}): ContainerCommand {
    const id = `kube-drac-image-test-${process.pid}-${++this.started}`;
    const bundle = path.join(this.dir, id);
    fs.mkdirSync(bundle);
    const spec: RuntimeSpec = structuredClone(this.spec);
    spec.root = { path: this.rootfs, readonly: true };
    spec.process.terminal = false;
    spec.process.args = [...(opts.entrypoint ?? this.config.Entrypoint ?? []), ...args];
    spec.linux.namespaces = spec.linux.namespaces.filter((ns) => ns.type !== 'network');
    for (const source of opts.binds ?? []) spec.mounts.push({ destination: source, type: 'bind', source, options: ['rbind', 'rw'] });
    fs.writeFileSync(path.join(bundle, 'config.json'), JSON.stringify(spec));
    return { command: 'runc', args: ['--root', this.runcRoot, 'run', '--bundle', bundle, id] };
  }

  /** Force-delete every container still there (a SIGKILLed runc leaves its container running). */
  async removeContainers(): Promise<void> {
    if (!fs.existsSync(this.runcRoot)) return;
    const { stdout } = await run('runc', ['--root', this.runcRoot, 'list', '--quiet']);
    for (const id of stdout.split('\n').filter((l) => l !== '')) await run('runc', ['--root', this.runcRoot, 'delete', '--force', id]).catch(() => undefined);
  }
}
