// The project's image, built from its own Dockerfile with buildah (no Docker engine, no image
// registry) on the bases of image-base.ts, and saved as a docker-archive tarball that
// `ctr -n k8s.io images import` loads into a node's containerd. Keyed by a hash of everything the
// build reads, so an unchanged tree costs one hash; cached under the project's cache root.
//   npm run image    builds (or finds) it and prints IMAGE=<ref> and ARCHIVE=<path>
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { cacheRoot, type ProgressFn, withBuildLock } from './binaries.ts';
import { type BaseImages, baseRefs, ensureBaseImages } from './image-base.ts';
import { Buildah } from './image-buildah.ts';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const IMAGE_NAME = 'localhost/kube-drac';

/** What the Dockerfile reads: itself, its ignore file and what .dockerignore lets through. */
const INPUTS = ['Dockerfile', '.dockerignore', 'package.json', 'package-lock.json', 'tsconfig.json', 'tsconfig.build.json', 'src', 'crds'];

export interface BuiltImage {
  /** The image's name in the archive (and so in containerd once imported). */
  ref: string;
  /** A docker-archive tarball for `ctr -n k8s.io images import`. */
  archive: string;
}

export function imageCacheDir(): string {
  return path.join(cacheRoot(), 'image');
}

function filesUnder(rel: string): string[] {
  const abs = path.join(REPO, rel);
  if (!fs.statSync(abs).isDirectory()) return [rel];
  return fs
    .readdirSync(abs, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => path.relative(REPO, path.join(e.parentPath, e.name)));
}

/** The image's tag: the build's inputs (names and contents) and the bases it is built on. */
export function imageTag(bases: BaseImages): string {
  const hash = createHash('sha256');
  hash.update(JSON.stringify(bases));
  for (const file of INPUTS.flatMap(filesUnder).sort()) {
    hash.update(`\0${file}\0`);
    hash.update(fs.readFileSync(path.join(REPO, file)));
  }
  return hash.digest('hex').slice(0, 12);
}

/** buildah prints every step and every package manager line: keep the steps and the cache hits. */
function buildLine(progress: ProgressFn): ProgressFn {
  return (line) => {
    if (/^\[\d+\/\d+\] STEP |^STEP |^--> Using cache|^COMMIT /.test(line)) progress(`  ${line}`);
  };
}

/** Archives and final images of earlier trees (the layer cache stays: it makes the next build fast). */
async function pruneOld(buildah: Buildah, dir: string, keep: BuiltImage): Promise<void> {
  for (const f of fs.readdirSync(dir)) {
    if (/^kube-drac-\w+\.tar$/.test(f) && path.join(dir, f) !== keep.archive) fs.rmSync(path.join(dir, f), { force: true });
  }
  const listed = await buildah.run(['images', '--format', '{{.Name}}:{{.Tag}}', '--filter', `reference=${IMAGE_NAME}`]);
  for (const ref of listed.split('\n').filter((r) => r !== '' && r !== keep.ref)) await buildah.run(['rmi', ref]).catch(() => undefined);
}

async function build(buildah: Buildah, dir: string, image: BuiltImage, progress: ProgressFn): Promise<void> {
  const bases = await ensureBaseImages(buildah, dir, progress);
  const started = Date.now();
  progress(`building ${image.ref} from the Dockerfile with buildah (NODE_IMAGE=${bases.node}, RUNTIME_IMAGE=${bases.runtime})`);
  await buildah.run(
    [
      'build',
      '--isolation', 'chroot',
      '--layers',
      '--pull=never',
      '--build-arg', `NODE_IMAGE=${bases.node}`,
      '--build-arg', `RUNTIME_IMAGE=${bases.runtime}`,
      '--tag', image.ref,
      REPO,
    ],
    buildLine(progress),
  );
  const partial = `${image.archive}.partial`;
  fs.rmSync(partial, { force: true });
  await buildah.run(['push', '--quiet', image.ref, `docker-archive:${partial}:${image.ref}`]);
  fs.renameSync(partial, image.archive);
  progress(`  built in ${Math.round((Date.now() - started) / 1000)} s: ${image.archive} (${Math.round(fs.statSync(image.archive).size / 1e6)} MB)`);
  await pruneOld(buildah, dir, image);
}

/** The image for the current tree: found in the cache, or built (one build at a time per machine). */
export async function ensureImage(progress: ProgressFn = (l) => process.stderr.write(l + '\n')): Promise<BuiltImage> {
  const dir = imageCacheDir();
  const tag = imageTag(baseRefs());
  const image: BuiltImage = { ref: `${IMAGE_NAME}:${tag}`, archive: path.join(dir, `kube-drac-${tag}.tar`) };
  if (fs.existsSync(image.archive)) return image;
  fs.mkdirSync(dir, { recursive: true });
  await withBuildLock(async () => {
    if (!fs.existsSync(image.archive)) await build(new Buildah(dir), dir, image, progress);
  }, path.join(dir, '.lock'));
  return image;
}

if (import.meta.main) {
  try {
    const image = await ensureImage();
    process.stdout.write(`IMAGE=${image.ref}\nARCHIVE=${image.archive}\n`);
  } catch (err) {
    process.stderr.write(`kube-drac image: ${(err as Error).message}\n`);
    process.exit(1);
  }
}
