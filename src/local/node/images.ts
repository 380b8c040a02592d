// The small images a node needs besides the project's, built here without a registry, each a
// docker-archive that containerd imports, cached next to the binaries and keyed by its inputs:
// - the pod sandbox ("pause"): Kubernetes' own pause.c from the pinned module, compiled static;
// - a busybox for `helm test` pods: Debian's busybox with the libraries it links against.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cacheRoot, pinnedVersion, TOOLS_DIR } from '../binaries.ts';

/** The tag upstream's build/pause/Makefile gives it (TAG ?= ...). */
const PAUSE_TAG = '3.10.2';
export const PAUSE_IMAGE = `localhost/kube-drac-pause:${PAUSE_TAG}`;

const sha256 = (data: Buffer | string) => createHash('sha256').update(data).digest('hex');

function pauseSource(): string {
  const version = pinnedVersion('kube', 'k8s.io/kubernetes');
  const modCache = execFileSync('go', ['env', 'GOMODCACHE'], { encoding: 'utf8' }).trim();
  const source = path.join(modCache, `k8s.io/kubernetes@${version}`, 'build', 'pause', 'linux', 'pause.c');
  if (!fs.existsSync(source)) {
    // The module is in the cache once kubelet is built from it; download it otherwise.
    execFileSync('go', ['mod', 'download', `k8s.io/kubernetes@${version}`], { cwd: path.join(TOOLS_DIR, 'kube'), stdio: 'ignore' });
  }
  return source;
}

/**
 * Pack a root folder as a one-layer docker-archive tagged `ref`, atomically at `archive`.
 * Fixed owner and times: the same files give the same layer digest.
 */
function writeDockerArchive(rootfs: string, ref: string, config: object, createdBy: string, archive: string): void {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'kube-drac-image-'));
  // The layer's root is the image's `/`: a temp folder's 0700 would lock non-root users out.
  fs.chmodSync(rootfs, 0o755);
  try {
    execFileSync('tar', ['--owner=0', '--group=0', '--numeric-owner', '--mtime=@0', '--sort=name', '-cf', path.join(out, 'layer.tar'), '-C', rootfs, '.']);
    const diffId = `sha256:${sha256(fs.readFileSync(path.join(out, 'layer.tar')))}`;
    const imageConfig = JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config,
      rootfs: { type: 'layers', diff_ids: [diffId] },
      history: [{ created_by: createdBy }],
    });
    const configName = `${sha256(imageConfig)}.json`;
    fs.writeFileSync(path.join(out, configName), imageConfig);
    fs.writeFileSync(path.join(out, 'manifest.json'), JSON.stringify([{ Config: configName, RepoTags: [ref], Layers: ['layer.tar'] }]));
    fs.mkdirSync(path.dirname(archive), { recursive: true });
    const partial = `${archive}.${process.pid}`;
    execFileSync('tar', ['-cf', partial, '-C', out, 'manifest.json', configName, 'layer.tar']);
    fs.renameSync(partial, archive);
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
}

function cachedArchive(name: string, key: string): string {
  return path.join(cacheRoot(), 'images', `${name}-${key}.tar`);
}

/** The pause image's docker-archive; built once per machine. */
export function ensurePauseArchive(): string {
  const source = pauseSource();
  const cflags = ['-Os', '-Wall', '-Werror', '-static', `-DVERSION=v${PAUSE_TAG}-kube-drac`];
  const archive = cachedArchive('pause', sha256(Buffer.concat([fs.readFileSync(source), Buffer.from(cflags.join(' '))])).slice(0, 12));
  if (fs.existsSync(archive)) return archive;
  const rootfs = fs.mkdtempSync(path.join(os.tmpdir(), 'kube-drac-pause-'));
  try {
    execFileSync('gcc', [...cflags, '-o', path.join(rootfs, 'pause'), source], { stdio: 'pipe' });
    execFileSync('strip', [path.join(rootfs, 'pause')]);
    writeDockerArchive(rootfs, PAUSE_IMAGE, { Entrypoint: ['/pause'], User: '65535:65535' }, `gcc ${cflags.join(' ')} pause.c`, archive);
    return archive;
  } finally {
    fs.rmSync(rootfs, { recursive: true, force: true });
  }
}

const BUSYBOX = '/bin/busybox';

/** The busybox image's ref: tagged with the Debian package's version. */
export function busyboxImage(): string {
  const version = execFileSync('dpkg-query', ['-W', '-f=${Version}', 'busybox'], { encoding: 'utf8' }).replace(/^\d+:/, '').replace(/[^\w.-]/g, '_');
  return `localhost/kube-drac-busybox:${version}`;
}

/** A busybox image (a shell, nc, wget) for pods that check the Services, e.g. `helm test`'s. */
export function ensureBusyboxArchive(): { ref: string; archive: string } {
  const ref = busyboxImage();
  // Debian's busybox is dynamic: take the libraries and loader it names.
  const libraries = [...execFileSync('ldd', [BUSYBOX], { encoding: 'utf8' }).matchAll(/(\/\S+\.so[.\d]*)/g)].map((m) => m[1] as string);
  const archive = cachedArchive('busybox', sha256([ref, ...libraries.map((l) => fs.realpathSync(l))].join('\n')).slice(0, 12));
  if (fs.existsSync(archive)) return { ref, archive };
  const rootfs = fs.mkdtempSync(path.join(os.tmpdir(), 'kube-drac-busybox-'));
  try {
    for (const file of [BUSYBOX, ...libraries]) {
      fs.mkdirSync(path.join(rootfs, path.dirname(file)), { recursive: true });
      fs.copyFileSync(fs.realpathSync(file), path.join(rootfs, file));
    }
    fs.chmodSync(path.join(rootfs, BUSYBOX), 0o755);
    for (const applet of execFileSync(BUSYBOX, ['--list'], { encoding: 'utf8' }).split('\n').filter(Boolean)) {
      if (applet !== 'busybox') fs.symlinkSync('busybox', path.join(rootfs, 'bin', applet));
    }
    fs.mkdirSync(path.join(rootfs, 'tmp'), { mode: 0o1777 });
    writeDockerArchive(rootfs, ref, { Cmd: ['sh'], Env: ['PATH=/bin'] }, `Debian busybox ${ref}`, archive);
    return { ref, archive };
  } finally {
    fs.rmSync(rootfs, { recursive: true, force: true });
  }
}
