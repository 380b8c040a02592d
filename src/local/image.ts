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

/**
 * buildah prints every step and every package manager line: keep the steps and the cache hits, and
 * note each image the build used or made (`--> [Using cache ]ID`), which is the layer cache to keep.
 */
function buildLine(progress: ProgressFn, used: Set<string>): ProgressFn {
  const started = Date.now();
  return (line) => {
    if (/^\[\d+\/\d+\] STEP |^STEP |^--> Using cache/.test(line)) progress(`  ${String(Math.round((Date.now() - started) / 1000)).padStart(4)} s ${line.slice(0, 160)}`);
    const id = /^--> (?:Using cache )?([0-9a-f]{11,64})$/.exec(line)?.[1];
    if (id) used.add(id);
  };
}

/** Trees whose image and layer cache stay (several worktrees on one machine each have theirs). */
const KEEP_BUILDS = 3;

/** What one build used and made, recorded so a later prune keeps it while that tree is recent. */
interface BuildRecord {
  ref: string;
  archive: string;
  /** Image IDs (or their prefixes) the build used from the layer cache or committed. */
  images: string[];
}

function recordsDir(dir: string): string {
  return path.join(dir, 'builds');
}

function recordFile(dir: string, image: BuiltImage): string {
  return path.join(recordsDir(dir), `${path.basename(image.archive, '.tar')}.json`);
}

/**
 * Everything the last KEEP_BUILDS builds (by use, newest first) do not need: their archives and
 * their images and cached layers stay, the rest goes (vfs keeps a full copy of the root per
 * layer: a few GB per edit otherwise). Runs under the build lock, so no build is half-way.
 */
async function pruneOld(buildah: Buildah, dir: string, bases: BaseImages): Promise<void> {
  const records = fs
    .readdirSync(recordsDir(dir))
    .map((f) => path.join(recordsDir(dir), f))
    .sort((x, y) => fs.statSync(y).mtimeMs - fs.statSync(x).mtimeMs);
  const kept = records.slice(0, KEEP_BUILDS).map((f) => JSON.parse(fs.readFileSync(f, 'utf8')) as BuildRecord);
  for (const f of records.slice(KEEP_BUILDS)) fs.rmSync(f, { force: true });
  // An archive with no record (made by an older version of this file, for another worktree) stays a day.
  const archives = new Set(kept.map((r) => r.archive));
  const recorded = new Set(records.map((f) => path.join(dir, `${path.basename(f, '.json')}.tar`)));
  for (const f of fs.readdirSync(dir).filter((name) => /^kube-drac-\w+\.tar$/.test(name))) {
    const archive = path.join(dir, f);
    const stale = recorded.has(archive) ? !archives.has(archive) : Date.now() - fs.statSync(archive).mtimeMs > 86_400_000;
    if (stale) fs.rmSync(archive, { force: true });
  }
  const names = [bases.node, bases.runtime, ...kept.map((r) => r.ref)];
  const ids = kept.flatMap((r) => r.images);
  const needed = (id: string, name: string): boolean => ids.some((u) => id.startsWith(u)) || names.includes(name);
  // Children go before their parents (an image with children or containers refuses to go).
  for (let pass = 0; pass < 20; pass++) {
    const images = (await buildah.run(['images', '--all', '--noheading', '--no-trunc', '--format', '{{.ID}} {{.Name}}:{{.Tag}}']))
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .map(([id = '', name = '']) => ({ id: id.replace(/^sha256:/, ''), name }))
      .filter((i) => i.id !== '' && !needed(i.id, i.name));
    let removed = 0;
    for (const image of images) {
      await buildah.run(['rmi', image.id]).then(
        () => removed++,
        () => undefined,
      );
    }
    if (removed === 0) return;
  }
}

async function build(buildah: Buildah, dir: string, image: BuiltImage, progress: ProgressFn): Promise<void> {
  // Every build runs under the lock: a working container found now is one a killed build left.
  await buildah.run(['rm', '--all']);
  const bases = await ensureBaseImages(buildah, dir, progress);
  const started = Date.now();
  const used = new Set<string>();
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
    buildLine(progress, used),
  );
  progress(`  ${Math.round((Date.now() - started) / 1000)} s: built; saving the archive`);
  const partial = `${image.archive}.partial`;
  fs.rmSync(partial, { force: true });
  await buildah.run(['push', '--quiet', image.ref, `docker-archive:${partial}:${image.ref}`]);
  fs.renameSync(partial, image.archive);
  progress(`  built in ${Math.round((Date.now() - started) / 1000)} s: ${image.archive} (${Math.round(fs.statSync(image.archive).size / 1e6)} MB)`);
  fs.mkdirSync(recordsDir(dir), { recursive: true });
  const record: BuildRecord = { ...image, images: [...used] };
  fs.writeFileSync(recordFile(dir, image), JSON.stringify(record, null, 2) + '\n');
  await pruneOld(buildah, dir, bases);
}

/** A tree used again is recent again: its build is among the last ones a prune keeps. */
function markUsed(dir: string, image: BuiltImage): void {
  const now = new Date();
  try {
    fs.utimesSync(recordFile(dir, image), now, now);
  } catch {
    // built by a version that kept no record: nothing to refresh
  }
}

/** The image for the current tree: found in the cache, or built (one build at a time per machine). */
export async function ensureImage(progress: ProgressFn = (l) => process.stderr.write(l + '\n')): Promise<BuiltImage> {
  const dir = imageCacheDir();
  const tag = imageTag(baseRefs());
  const image: BuiltImage = { ref: `${IMAGE_NAME}:${tag}`, archive: path.join(dir, `kube-drac-${tag}.tar`) };
  if (fs.existsSync(image.archive)) {
    markUsed(dir, image);
    return image;
  }
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
