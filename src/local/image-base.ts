// The Dockerfile's two base images, assembled here without a registry of images: a Debian bookworm
// root extracted from the Debian archive by mmdebstrap, plus the Node 24 binary that the npm
// registry's `node` package installed into node_modules (the project's own devDependency).
//   NODE_IMAGE     the build stages: + dash (shell-form RUN), coreutils (`#!/usr/bin/env node`), npm
//   RUNTIME_IMAGE  the runtime: glibc, libstdc++, CA certificates, netbase and node; no shell, no npm
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ProgressFn } from './binaries.ts';
import { type Buildah, runLogged } from './image-buildah.ts';

const REPO = fileURLToPath(new URL('../../', import.meta.url));

const SUITE = 'bookworm';
const RUNTIME_PACKAGES = ['libc6', 'libstdc++6', 'ca-certificates', 'netbase'];
const BUILD_PACKAGES = [...RUNTIME_PACKAGES, 'dash', 'coreutils'];
/** npm for the build stages, from the npm registry (the `node` package ships no npm). */
const NPM = { version: '11.19.1', integrity: 'sha512-ztsxKxt/kkIaAs+2i0GU6I+DRmUdrNasxTZKJe9TCdSjKxlhah/4r/hl5ygMD6XAg1qZ9c2TNomR4qgOydp10g==' };
const PATH_ENV = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** Bumped when the assembly below changes in a way its inputs do not show. */
const RECIPE_VERSION = 1;

// The official node images' users: `node` is uid/gid 1000, the chart's runAsUser.
const PASSWD = 'root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000:node:/home/node:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n';
const GROUP = 'root:x:0:\nnode:x:1000:\nnogroup:x:65534:\n';

export interface BaseImages {
  /** Build arg NODE_IMAGE. */
  node: string;
  /** Build arg RUNTIME_IMAGE. */
  runtime: string;
}

type Kind = keyof BaseImages;

/** The Debian sources the machine's apt uses (no mirror named here); a bookworm one is required. */
function debianSources(): string {
  const file = process.env.KUBE_DRAC_DEBIAN_SOURCES ?? '/etc/apt/sources.list.d/debian.sources';
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    throw new Error(`no Debian apt sources at ${file}: set KUBE_DRAC_DEBIAN_SOURCES to a sources.list or deb822 .sources file for ${SUITE}`);
  }
  if (!text.includes(SUITE)) throw new Error(`${file} has no ${SUITE} suite: set KUBE_DRAC_DEBIAN_SOURCES to a sources file for ${SUITE}`);
  return file;
}

/** The Node binary node_modules/node installed, and its version (from package-lock.json's pin). */
export function nodeBinary(): { file: string; version: string } {
  const file = path.join(REPO, 'node_modules/node/bin/node');
  let version: string;
  try {
    version = (JSON.parse(fs.readFileSync(path.join(REPO, 'node_modules/node/package.json'), 'utf8')) as { version: string }).version;
    fs.accessSync(file, fs.constants.X_OK);
  } catch {
    throw new Error(`no Node binary at ${file}: run \`npm ci\` (the image takes Node from the \`node\` devDependency)`);
  }
  if (!version.startsWith('24.')) throw new Error(`node_modules/node is ${version}; the image needs Node 24`);
  return { file, version };
}

/** The machine's CA bundle: npm in the build stages must trust what the machine's own clients trust. */
function hostCaBundle(): string {
  for (const file of [process.env.NODE_EXTRA_CA_CERTS, '/etc/ssl/certs/ca-certificates.crt']) {
    if (file && fs.existsSync(file)) return file;
  }
  throw new Error('no CA bundle on this machine (/etc/ssl/certs/ca-certificates.crt): install ca-certificates, or set NODE_EXTRA_CA_CERTS');
}

function packagesOf(kind: Kind): string[] {
  return kind === 'node' ? BUILD_PACKAGES : RUNTIME_PACKAGES;
}

/** The tag of a base: every input of its assembly, hashed. */
function baseRef(kind: Kind): string {
  const hash = createHash('sha256');
  hash.update(JSON.stringify({ RECIPE_VERSION, SUITE, packages: packagesOf(kind), node: nodeBinary().version, npm: kind === 'node' ? NPM : null }));
  hash.update(fs.readFileSync(debianSources()));
  if (kind === 'node') hash.update(fs.readFileSync(hostCaBundle()));
  return `localhost/kube-drac-${kind}-base:${hash.digest('hex').slice(0, 12)}`;
}

/** What `update-ca-certificates` would have made (the extract variant runs no maintainer script). */
function writeDebianCaBundle(rootfs: string): void {
  const dir = path.join(rootfs, 'usr/share/ca-certificates/mozilla');
  const certs = fs.readdirSync(dir).filter((f) => f.endsWith('.crt')).sort();
  fs.mkdirSync(path.join(rootfs, 'etc/ssl/certs'), { recursive: true });
  fs.writeFileSync(path.join(rootfs, 'etc/ssl/certs/ca-certificates.crt'), certs.map((f) => fs.readFileSync(path.join(dir, f), 'utf8').trimEnd() + '\n').join(''));
}

/** npm's package, checked against its pinned integrity, unpacked into `into` (`scratch` holds the tarball). */
async function fetchNpm(into: string, scratch: string, progress: ProgressFn): Promise<void> {
  const packed = JSON.parse(await runLogged('npm', ['pack', `npm@${NPM.version}`, '--json', '--pack-destination', scratch, '--loglevel=error'])) as {
    filename: string;
    integrity: string;
  }[];
  const tarball = packed[0];
  if (!tarball || tarball.integrity !== NPM.integrity) throw new Error(`npm@${NPM.version} from the registry has integrity ${tarball?.integrity}, expected ${NPM.integrity}`);
  fs.mkdirSync(into, { recursive: true });
  await runLogged('tar', ['-xzf', path.join(scratch, tarball.filename), '-C', into, '--strip-components=1', '--no-same-owner']);
  progress(`  npm ${NPM.version} from the npm registry`);
}

/** The root filesystem of one base, as a directory (`scratch` for downloads). */
async function assembleRootfs(kind: Kind, rootfs: string, scratch: string, progress: ProgressFn): Promise<void> {
  progress(`  mmdebstrap ${SUITE}: ${packagesOf(kind).join(' ')}`);
  await runLogged(
    'mmdebstrap',
    ['--variant=extract', '--format=directory', '--skip=output/dev', `--include=${packagesOf(kind).join(',')}`, SUITE, rootfs, debianSources()],
    { onLine: (l) => /^E:/.test(l) && progress(`  ${l}`) },
  );
  fs.writeFileSync(path.join(rootfs, 'etc/passwd'), PASSWD);
  fs.writeFileSync(path.join(rootfs, 'etc/group'), GROUP);
  fs.mkdirSync(path.join(rootfs, 'root'), { recursive: true, mode: 0o700 });
  fs.mkdirSync(path.join(rootfs, 'home/node'), { recursive: true });
  fs.chownSync(path.join(rootfs, 'home/node'), 1000, 1000);
  if (kind === 'node') fs.copyFileSync(hostCaBundle(), path.join(rootfs, 'etc/ssl/certs/ca-certificates.crt'));
  else writeDebianCaBundle(rootfs);
  const bin = path.join(rootfs, 'usr/local/bin');
  fs.mkdirSync(bin, { recursive: true });
  fs.copyFileSync(nodeBinary().file, path.join(bin, 'node'));
  fs.chmodSync(path.join(bin, 'node'), 0o755);
  if (kind === 'node') {
    await fetchNpm(path.join(rootfs, 'usr/local/lib/node_modules/npm'), scratch, progress);
    fs.symlinkSync('../lib/node_modules/npm/bin/npm-cli.js', path.join(bin, 'npm'));
    fs.symlinkSync('../lib/node_modules/npm/bin/npx-cli.js', path.join(bin, 'npx'));
  }
}

async function buildBase(buildah: Buildah, kind: Kind, ref: string, workDir: string, progress: ProgressFn): Promise<void> {
  const started = Date.now();
  progress(`assembling the ${kind} base image ${ref}`);
  const tmp = fs.mkdtempSync(path.join(workDir, `.base-${kind}-`));
  try {
    const rootfs = path.join(tmp, 'rootfs');
    await assembleRootfs(kind, rootfs, tmp, progress);
    // A tarball keeps owners and modes (/tmp 1777, /home/node 1000) that a directory copy would reset.
    const tarball = path.join(tmp, 'rootfs.tar');
    await runLogged('tar', ['--numeric-owner', '-C', rootfs, '-cf', tarball, '.']);
    const container = (await buildah.run(['from', '--pull=never', 'scratch'])).trim();
    try {
      await buildah.run(['add', container, tarball, '/']);
      const env = kind === 'node' ? ['--env', 'NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt'] : [];
      await buildah.run(['config', '--env', `PATH=${PATH_ENV}`, ...env, '--label', `org.opencontainers.image.title=kube-drac-${kind}-base`, container]);
      await buildah.run(['commit', '--quiet', container, ref]);
    } finally {
      await buildah.run(['rm', container]).catch(() => undefined);
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  progress(`  ${kind} base built in ${Math.round((Date.now() - started) / 1000)} s`);
}

/** The references the two bases have for their current inputs (built or not). */
export function baseRefs(): BaseImages {
  return { node: baseRef('node'), runtime: baseRef('runtime') };
}

/** The two base images in buildah's storage, assembled if their inputs changed. */
export async function ensureBaseImages(buildah: Buildah, workDir: string, progress: ProgressFn): Promise<BaseImages> {
  const refs = baseRefs();
  for (const kind of ['node', 'runtime'] as const) {
    if (!(await buildah.hasImage(refs[kind]))) await buildBase(buildah, kind, refs[kind], workDir, progress);
  }
  return refs;
}
