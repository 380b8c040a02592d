// The container image as `npm run image` builds it (src/local/image.ts: buildah on the project's
// Dockerfile, no Docker engine), unpacked and run by runc with the image's own user, environment,
// entry point and Node: what it holds, who owns it, and every role started from it against the
// test API server. Run: npm test -- test/image/image.test.ts (the first build takes minutes).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ensureImage, type BuiltImage } from '../../src/local/image.ts';
import { kubeForTest, type TestKube } from '../support/kube.ts';
import { socketmapLookup } from '../support/exchange.ts';
import { UnpackedImage } from './container.ts';
import { freePort, killRoles, startRoleProcess, type StartedRole } from './roles.ts';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const pkg = JSON.parse(fs.readFileSync(path.join(REPO, 'package.json'), 'utf8')) as {
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
};

// Roles whose command is not in src/cli.ts yet are skipped, saying so (they are being added).
const CLI_SOURCE = fs.readFileSync(path.join(REPO, 'src/cli.ts'), 'utf8');
function missingRole(role: string): string | false {
  return new RegExp(`^\\s*'?${role}'?: async`, 'm').test(CLI_SOURCE) ? false : `\`${role}\` is not in src/cli.ts COMMANDS yet`;
}

// `demo` / `demo` as SHA512-CRYPT: the login goes through the password worker thread.
const DEMO_HASH = '{SHA512-CRYPT}$6$abcdefgh$YyrQeFbGiXKdFWP1HCOzoP98lGOJT3o5vkaIf4qMuSiGF1QU7Z/4JRNxv5cCm90HIZgemX3wm8UCkgoQqsyRQ.';

let tmp = '';
/** Mounted read-write into every container at the same path, owned by the image's user. */
let share = '';
let kubeconfig = '';
let built: BuiltImage;
let image: UnpackedImage;
let app = '';
let kube: TestKube;

/** Hand `p` (and what is under it) to the image's user, as a pod's fsGroup volume would be. */
function ownByImageUser(p: string): void {
  const { uid, gid } = image.user();
  fs.chownSync(p, uid, gid);
  if (fs.statSync(p).isDirectory()) for (const f of fs.readdirSync(p, { recursive: true })) fs.chownSync(path.join(p, String(f)), uid, gid);
}

function inImage(args: string[], entrypoint?: string[], timeoutMs = 30_000): Promise<{ code: number; stdout: string; stderr: string }> {
  const cmd = image.command(args, { binds: [share], entrypoint });
  return new Promise((resolve, reject) => {
    const child = spawn(cmd.command, cmd.args, { cwd: tmp, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill('SIGTERM'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : -1), stdout, stderr });
    });
  });
}

/** `kube-drac ARGS` as `docker run IMAGE ARGS` would run it: the image's entry point. */
function kubeDrac(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return inImage(args);
}

async function startRole(role: string, config: string, metricsPort: number): Promise<StartedRole> {
  const file = path.join(share, `${role}.yaml`);
  fs.writeFileSync(file, config);
  const cmd = image.command([role, '--config', file], { binds: [share] });
  return startRoleProcess(cmd.command, cmd.args, { cwd: tmp, env: process.env, metricsPort });
}

/** Read one reply line (or lines until `done` says so) from a socket. */
function dialog(port: number): { send(line: string): void; read(): Promise<string>; close(): void } {
  const socket = net.connect(port, '127.0.0.1');
  let buffer = '';
  let waiter: (() => void) | undefined;
  socket.setEncoding('utf8');
  socket.on('data', (chunk: string) => {
    buffer += chunk;
    waiter?.();
  });
  socket.on('error', () => waiter?.());
  return {
    send: (line) => socket.write(`${line}\r\n`),
    read: async () => {
      const deadline = Date.now() + 15_000;
      while (!buffer.includes('\r\n')) {
        if (Date.now() > deadline || socket.destroyed) throw new Error(`no reply (got ${JSON.stringify(buffer)})`);
        await new Promise<void>((r) => {
          waiter = r;
          setTimeout(r, 500);
        });
      }
      const i = buffer.indexOf('\r\n');
      const line = buffer.slice(0, i);
      buffer = buffer.slice(i + 2);
      return line;
    },
    close: () => socket.destroy(),
  };
}

function kubeSection(): string {
  return `kubernetes:\n  namespace: ${kube.namespace}\n  kubeconfig: ${kubeconfig}\n`;
}

describe('the image from the Dockerfile, built with buildah and run by runc', () => {
  before(
    async () => {
      built = await ensureImage((line) => console.log(`# ${line}`));
      tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kube-drac-image-'));
      image = await UnpackedImage.unpack(built.archive, tmp);
      app = path.join(image.rootfs, 'app');
      share = path.join(tmp, 'share');
      fs.mkdirSync(share);
      kubeconfig = path.join(share, 'kubeconfig');
      fs.copyFileSync(process.env.KUBE_DRAC_TEST_KUBECONFIG ?? '', kubeconfig);
      ownByImageUser(share);
      kube = await kubeForTest('image');
    },
    { timeout: 30 * 60_000 },
  );

  after(async () => {
    killRoles();
    await image?.removeContainers();
    await kube?.cleanup();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  test('the Dockerfile: node:24 stages, npm ci --omit=dev, non-root USER, node as the entry point, .dockerignore allows what it copies', () => {
    const dockerfile = fs.readFileSync(path.join(REPO, 'Dockerfile'), 'utf8');
    assert.match(dockerfile, /^ARG NODE_IMAGE=node:24[-\w.]*$/m);
    assert.match(dockerfile, /^ARG RUNTIME_IMAGE=node:24[-\w.]*slim$/m);
    assert.match(dockerfile, /npm ci --omit=dev/);
    assert.match(dockerfile, /^RUN npm run build$/m);
    const user = /^USER (\S+)$/m.exec(dockerfile)?.[1];
    assert.ok(user !== undefined && !/^(0|root)(:|$)/.test(user), `USER must be non-root, got ${user}`);
    assert.match(dockerfile, /^ENTRYPOINT \["node", "\/app\/dist\/cli\.js"\]$/m);
    // node_modules reach the image from the deps stage (--omit=dev), never the build stage's dev tree.
    assert.doesNotMatch(dockerfile, /COPY --from=build \S*node_modules/);
    assert.match(dockerfile, /^COPY --from=deps \/app\/node_modules\/ /m);
    const allowed = fs
      .readFileSync(path.join(REPO, '.dockerignore'), 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('!'))
      .map((l) => l.slice(1).replace(/\/$/, ''));
    for (const m of dockerfile.matchAll(/^COPY (?!--from)(.+) \S+$/gm)) {
      for (const src of (m[1] as string).split(/\s+/)) {
        assert.ok(allowed.includes(src.replace(/\/$/, '')), `.dockerignore must allow ${src}`);
        assert.ok(fs.existsSync(path.join(REPO, src)), `${src} is copied but does not exist`);
      }
    }
  });

  test('the image holds every runtime dependency, no dev-only package and no TypeScript source', () => {
    const modules = path.join(app, 'node_modules');
    for (const dep of Object.keys(pkg.dependencies)) assert.ok(fs.existsSync(path.join(modules, dep, 'package.json')), `${dep} missing`);
    // The lockfile marks packages that only dev dependencies need (typescript, eslint, node, ...).
    const lock = JSON.parse(fs.readFileSync(path.join(REPO, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean }> };
    const devOnly = Object.entries(lock.packages).filter(([p, info]) => p !== '' && info.dev === true).map(([p]) => p);
    assert.ok(devOnly.includes('node_modules/typescript'), 'the lockfile marks typescript as dev-only');
    const leaked = devOnly.filter((p) => fs.existsSync(path.join(app, p)));
    assert.deepEqual(leaked, [], 'dev-only packages in the image');
    const ts = fs.readdirSync(path.join(app, 'dist'), { recursive: true }).map(String).filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'));
    assert.deepEqual(ts, []);
  });

  test('it runs as uid/gid 1000, owns none of its files, and has no shell, no npm, no setuid file', async () => {
    assert.equal(image.config.User, '1000:1000');
    assert.deepEqual(image.config.Entrypoint, ['node', '/app/dist/cli.js']);
    const who = await inImage(['-e', 'process.stdout.write(JSON.stringify([process.getuid(), process.getgid(), process.version, process.cwd()]))'], ['node']);
    assert.equal(who.code, 0, who.stderr);
    const [uid, gid, version, cwd] = JSON.parse(who.stdout) as [number, number, string, string];
    assert.deepEqual([uid, gid, cwd], [1000, 1000, '/app']);
    assert.match(version, /^v24\./);
    // Only its home and /tmp belong to or are writable by the user; the app and Node belong to root.
    const writable: string[] = [];
    const walk = (dir: string): void => {
      for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        const abs = path.join(dir, e.name);
        const rel = '/' + path.relative(image.rootfs, abs);
        if (rel === '/dev' || rel === '/proc' || rel === '/sys') continue;
        const st = fs.lstatSync(abs);
        if (!e.isSymbolicLink() && (st.uid === uid || (st.mode & 0o002) !== 0)) writable.push(rel);
        assert.equal(st.mode & 0o6000, 0, `${rel} is setuid/setgid`);
        if (e.isDirectory()) walk(abs);
      }
    };
    walk(image.rootfs);
    assert.deepEqual(writable.sort(), ['/home/node', '/tmp']);
    for (const f of ['app/dist/cli.js', 'app/node_modules', 'usr/local/bin/node']) assert.equal(fs.statSync(path.join(image.rootfs, f)).uid, 0, f);
    for (const absent of ['bin/sh', 'bin/dash', 'bin/bash', 'usr/bin/env', 'usr/local/bin/npm', 'usr/local/bin/npx', 'usr/local/lib/node_modules']) {
      assert.ok(!fs.existsSync(path.join(image.rootfs, absent)), `/${absent} is in the runtime image`);
    }
    assert.deepEqual(fs.readdirSync(path.join(image.rootfs, 'usr/local/bin')), ['node']);
  });

  test('`kube-drac help` answers with the usage; an unknown command exits 2', async () => {
    const help = await kubeDrac(['help']);
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, /^usage: kube-drac <command>/);
    assert.match(help.stdout, /operator \[--config FILE\]/);
    const bad = await kubeDrac(['no-such-role']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /unknown command "no-such-role"/);
  });

  // The compiled code must find its worker file: dist/ holds hash-worker.js, not hash-worker.ts.
  test('the compiled password worker pool verifies a SHA512-CRYPT hash', async () => {
    const script = [
      `import { PasswordVerifier } from '/app/dist/auth/verifier.js';`,
      `import { parseStoredPassword } from '/app/dist/auth/schemes.js';`,
      'const v = new PasswordVerifier({ threads: 1 });',
      `const ok = await v.verify(parseStoredPassword(${JSON.stringify(DEMO_HASH)}), 'demo');`,
      'process.stdout.write(String(ok)); process.exit(0);',
    ].join('\n');
    // A file, not `-e`: worker threads inherit execArgv, and `--input-type` would break theirs.
    const file = path.join(share, 'verify-worker.mjs');
    fs.writeFileSync(file, script);
    const r = await inImage([file], ['node']);
    assert.equal(r.stdout, 'true', `stderr: ${r.stderr}`);
  });

  // Enough of each section that the mistyped key is the only mistake.
  const VALID_SECTION: Record<string, string> = { pop3: '  allowPlaintextAuth: true\n', smtp: '  outbox: /tmp/outbox\n', bridge: '  policy: {enabled: true}\n' };
  for (const role of ['pop3', 'smtp', 'operator', 'bridge']) {
    test(`\`kube-drac ${role}\` with a mistyped key exits 1 naming it`, { skip: missingRole(role) }, async () => {
      const file = path.join(share, `typo-${role}.yaml`);
      fs.writeFileSync(file, `${role}:\n${VALID_SECTION[role] ?? ''}  noSuchKey: 1\n`);
      const r = await kubeDrac([role, '--config', file]);
      assert.equal(r.code, 1, `exit code; stderr: ${r.stderr}`);
      assert.match(r.stderr, /config error: .*noSuchKey/);
    });
  }

  test('the operator starts from the image, becomes ready on the API server, and stops on SIGTERM', { skip: missingRole('operator') }, async () => {
    const metrics = await freePort();
    const op = await startRole(
      'operator',
      `${kubeSection()}metrics: {host: 127.0.0.1, port: ${metrics}}\noperator:\n  leaderElection: {leaseName: image-test}\n`,
      metrics,
    );
    const body = await (await fetch(`http://127.0.0.1:${metrics}/metrics`)).text();
    assert.match(body, /^kubedrac_operator_leader /m);
    assert.equal(await op.stop(), 0, op.output());
  });

  test('the bridge starts from the image, answers socketmap lookups once its cache is synced, and stops on SIGTERM', { skip: missingRole('bridge') }, async () => {
    const [metrics, mapPort] = [await freePort(), await freePort()];
    const bridge = await startRole(
      'bridge',
      `${kubeSection()}metrics: {host: 127.0.0.1, port: ${metrics}}\nbridge:\n  host: 127.0.0.1\n  socketmap: {enabled: true, port: ${mapPort}}\n`,
      metrics,
    );
    const answer = await socketmapLookup(mapPort, 'drac', '192.0.2.99');
    assert.equal(answer, '9:NOTFOUND ,');
    assert.equal(await bridge.stop(), 0, bridge.output());
  });

  test('smtp starts from the image, greets with 220 once its grant cache is synced, and stops on SIGTERM', { skip: missingRole('smtp') }, async () => {
    const [metrics, smtpPort] = [await freePort(), await freePort()];
    const outbox = path.join(share, 'outbox');
    const smtp = await startRole(
      'smtp',
      `${kubeSection()}metrics: {host: 127.0.0.1, port: ${metrics}}\n` +
        `smtp:\n  hostname: mail.example.test\n  listen: {host: 127.0.0.1, port: ${smtpPort}}\n  localDomains: [example.test]\n` +
        `  mailRoot: ${path.join(share, 'mail')}\n  outbox: ${outbox}\n`,
      metrics,
    );
    const c = dialog(smtpPort);
    try {
      assert.match(await c.read(), /^220 mail\.example\.test /);
      c.send('QUIT');
      assert.match(await c.read(), /^221 /);
    } finally {
      c.close();
    }
    assert.equal(await smtp.stop(), 0, smtp.output());
  });

  test('pop3 starts from the image; a SHA512-CRYPT login (password worker thread) creates the RelayGrant', { skip: missingRole('pop3') }, async () => {
    const [metrics, popPort] = [await freePort(), await freePort()];
    const mailRoot = path.join(share, 'mail');
    for (const d of ['cur', 'new', 'tmp']) fs.mkdirSync(path.join(mailRoot, 'demo', d), { recursive: true });
    fs.writeFileSync(path.join(share, 'passwd'), `demo:${DEMO_HASH}\n`);
    ownByImageUser(mailRoot);
    const pop3 = await startRole(
      'pop3',
      `${kubeSection()}metrics: {host: 127.0.0.1, port: ${metrics}}\n` +
        `pop3:\n  listen: {host: 127.0.0.1, port: ${popPort}}\n  allowPlaintextAuth: true\n  passwordThreads: 1\n` +
        `  mailRoot: ${mailRoot}\n  usersFile: ${path.join(share, 'passwd')}\n  throttle: {failureDelay: 0s}\n`,
      metrics,
    );
    const c = dialog(popPort);
    try {
      assert.match(await c.read(), /^\+OK/);
      c.send('USER demo');
      assert.match(await c.read(), /^\+OK/);
      c.send('PASS demo');
      assert.match(await c.read(), /^\+OK/, pop3.output());
      c.send('QUIT');
      assert.match(await c.read(), /^\+OK/);
    } finally {
      c.close();
    }
    const grants = await kube.kubectl('get', 'relaygrants', '-o', 'jsonpath={range .items[*]}{.spec.address} {.spec.user}{"\\n"}{end}');
    assert.match(grants, /^127\.0\.0\.1 demo$/m);
    assert.equal(await pop3.stop(), 0, pop3.output());
  });
});
