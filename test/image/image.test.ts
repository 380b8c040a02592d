// The container image without Docker: the Dockerfile's steps done by hand in a clean temp dir
// (tsc into dist/, `npm ci --omit=dev`, the runtime layout with `kube-drac` on PATH), then every
// role started from that copy against the test API server. Run: npm test -- test/image/image.test.ts
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { kubeForTest, type TestKube } from '../support/kube.ts';
import { socketmapLookup } from '../support/exchange.ts';
import { freePort, killRoles, startRoleProcess, type StartedRole } from './roles.ts';

const run = promisify(execFile);
const REPO = fileURLToPath(new URL('../../', import.meta.url));
const NODE_DIR = path.dirname(process.execPath);
const pkg = JSON.parse(fs.readFileSync(path.join(REPO, 'package.json'), 'utf8')) as {
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
};

// Roles whose command is not in src/cli.ts yet are skipped, saying so (they are being added).
const CLI_SOURCE = fs.readFileSync(path.join(REPO, 'src/cli.ts'), 'utf8');
function missingRole(role: string): string | false {
  return new RegExp(`^\\s*'?${role}'?: async`, 'm').test(CLI_SOURCE) ? false : `\`${role}\` is not in src/cli.ts COMMANDS yet`;
}

// src/auth/verifier.ts starts `new Worker(new URL('./hash-worker.ts', import.meta.url))`: compiled to
// dist/ that file does not exist, so hashed passwords cannot be checked from the image (reported).
// `demo` / `demo` as SHA512-CRYPT: the login goes through the password worker thread.
const DEMO_HASH = '{SHA512-CRYPT}$6$abcdefgh$YyrQeFbGiXKdFWP1HCOzoP98lGOJT3o5vkaIf4qMuSiGF1QU7Z/4JRNxv5cCm90HIZgemX3wm8UCkgoQqsyRQ.';

let tmp = '';
let app = '';
let binDir = '';
let kube: TestKube;

/** The environment of the image: `kube-drac` and Node 24 on PATH, nothing from the repo. */
function imageEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { PATH: `${binDir}${path.delimiter}${NODE_DIR}${path.delimiter}/usr/bin:/bin`, HOME: tmp, NODE_ENV: 'production' };
  return env;
}

function kubeDrac(args: string[], timeoutMs = 30_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('kube-drac', args, { cwd: tmp, env: imageEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : -1), stdout, stderr });
    });
  });
}

function copy(rel: string, to: string): void {
  fs.cpSync(path.join(REPO, rel), path.join(to, rel), { recursive: true });
}

async function startRole(role: string, config: string, metricsPort: number): Promise<StartedRole> {
  const file = path.join(tmp, `${role}.yaml`);
  fs.writeFileSync(file, config);
  return startRoleProcess('kube-drac', [role, '--config', file], { cwd: tmp, env: imageEnv(), metricsPort });
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
  return `kubernetes:\n  namespace: ${kube.namespace}\n  kubeconfig: ${kube.kubeconfigPath}\n`;
}

describe('the image, built by hand from the Dockerfile steps', () => {
  before(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kube-drac-image-'));
    const build = path.join(tmp, 'build');
    app = path.join(tmp, 'app');
    binDir = path.join(tmp, 'bin');
    fs.mkdirSync(build);
    fs.mkdirSync(app);
    fs.mkdirSync(binDir);
    // Stage `build`: the sources and tsc (the repo's node_modules stand in for its `npm ci`, same lockfile).
    for (const f of ['package.json', 'package-lock.json', 'tsconfig.json', 'tsconfig.build.json', 'src']) copy(f, build);
    fs.symlinkSync(path.join(REPO, 'node_modules'), path.join(build, 'node_modules'), 'dir');
    await run(process.execPath, [path.join(REPO, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json'], { cwd: build });
    // Stage `deps`: production dependencies only.
    for (const f of ['package.json', 'package-lock.json']) copy(f, app);
    await run('npm', ['ci', '--omit=dev', '--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error'], {
      cwd: app,
      env: { ...process.env, PATH: `${NODE_DIR}${path.delimiter}${process.env.PATH ?? ''}` },
      maxBuffer: 16 << 20,
    });
    // The runtime stage.
    fs.cpSync(path.join(build, 'dist'), path.join(app, 'dist'), { recursive: true });
    copy('crds', app);
    fs.chmodSync(path.join(app, 'dist/cli.js'), 0o755);
    fs.symlinkSync(path.join(app, 'dist/cli.js'), path.join(binDir, 'kube-drac'));
    kube = await kubeForTest('image');
  });

  after(async () => {
    killRoles();
    await kube?.cleanup();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  test('the Dockerfile: node:24 stages, npm ci --omit=dev, non-root USER, kube-drac entrypoint, .dockerignore allows what it copies', () => {
    const dockerfile = fs.readFileSync(path.join(REPO, 'Dockerfile'), 'utf8');
    assert.match(dockerfile, /^ARG NODE_IMAGE=node:24[-\w.]*$/m);
    assert.match(dockerfile, /^ARG RUNTIME_IMAGE=node:24[-\w.]*slim$/m);
    assert.match(dockerfile, /npm ci --omit=dev/);
    assert.match(dockerfile, /^RUN npm run build$/m);
    const user = /^USER (\S+)$/m.exec(dockerfile)?.[1];
    assert.ok(user !== undefined && !/^(0|root)(:|$)/.test(user), `USER must be non-root, got ${user}`);
    assert.match(dockerfile, /^ENTRYPOINT \["node", "\/app\/dist\/cli\.js"\]$/m);
    // The last stage copies from the deps and build stages, never the dev node_modules.
    const final = dockerfile.slice(dockerfile.lastIndexOf('\nFROM '));
    assert.doesNotMatch(final, /COPY --from=build \S*node_modules/);
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

  test('the copy holds every runtime dependency, no dev-only package and no TypeScript source', () => {
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
      `import { PasswordVerifier } from ${JSON.stringify(path.join(app, 'dist/auth/verifier.js'))};`,
      `import { parseStoredPassword } from ${JSON.stringify(path.join(app, 'dist/auth/schemes.js'))};`,
      'const v = new PasswordVerifier({ threads: 1 });',
      `const ok = await v.verify(parseStoredPassword(${JSON.stringify(DEMO_HASH)}), 'demo');`,
      'process.stdout.write(String(ok)); process.exit(0);',
    ].join('\n');
    // A file, not `-e`: worker threads inherit execArgv, and `--input-type` would break theirs.
    const file = path.join(tmp, 'verify-worker.mjs');
    fs.writeFileSync(file, script);
    const r = await run(process.execPath, [file], { cwd: app, env: imageEnv(), timeout: 20_000 }).catch((err: unknown) => err as { stdout?: string; stderr?: string });
    assert.equal(r.stdout, 'true', `stderr: ${r.stderr ?? ''}`);
  });

  // Enough of each section that the mistyped key is the only mistake.
  const VALID_SECTION: Record<string, string> = { pop3: '  allowPlaintextAuth: true\n', smtp: '  outbox: /tmp/outbox\n', bridge: '  policy: {enabled: true}\n' };
  for (const role of ['pop3', 'smtp', 'operator', 'bridge']) {
    test(`\`kube-drac ${role}\` with a mistyped key exits 1 naming it`, { skip: missingRole(role) }, async () => {
      const file = path.join(tmp, `typo-${role}.yaml`);
      fs.writeFileSync(file, `${role}:\n${VALID_SECTION[role] ?? ''}  noSuchKey: 1\n`);
      const r = await kubeDrac([role, '--config', file]);
      assert.equal(r.code, 1, `exit code; stderr: ${r.stderr}`);
      assert.match(r.stderr, /config error: .*noSuchKey/);
    });
  }

  test('the operator starts from the copy, becomes ready on the API server, and stops on SIGTERM', { skip: missingRole('operator') }, async () => {
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

  test('the bridge starts from the copy, answers socketmap lookups once its cache is synced, and stops on SIGTERM', { skip: missingRole('bridge') }, async () => {
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

  test('smtp starts from the copy, greets with 220 once its grant cache is synced, and stops on SIGTERM', { skip: missingRole('smtp') }, async () => {
    const [metrics, smtpPort] = [await freePort(), await freePort()];
    const outbox = path.join(tmp, 'outbox');
    const smtp = await startRole(
      'smtp',
      `${kubeSection()}metrics: {host: 127.0.0.1, port: ${metrics}}\n` +
        `smtp:\n  hostname: mail.example.test\n  listen: {host: 127.0.0.1, port: ${smtpPort}}\n  localDomains: [example.test]\n` +
        `  mailRoot: ${path.join(tmp, 'mail')}\n  outbox: ${outbox}\n`,
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

  test('pop3 starts from the copy; a SHA512-CRYPT login (password worker thread) creates the RelayGrant', { skip: missingRole('pop3') }, async () => {
    const [metrics, popPort] = [await freePort(), await freePort()];
    const mailRoot = path.join(tmp, 'mail');
    for (const d of ['cur', 'new', 'tmp']) fs.mkdirSync(path.join(mailRoot, 'demo', d), { recursive: true });
    fs.writeFileSync(path.join(tmp, 'passwd'), `demo:${DEMO_HASH}\n`);
    const pop3 = await startRole(
      'pop3',
      `${kubeSection()}metrics: {host: 127.0.0.1, port: ${metrics}}\n` +
        `pop3:\n  listen: {host: 127.0.0.1, port: ${popPort}}\n  allowPlaintextAuth: true\n  passwordThreads: 1\n` +
        `  mailRoot: ${mailRoot}\n  usersFile: ${path.join(tmp, 'passwd')}\n  throttle: {failureDelay: 0s}\n`,
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
