// The `helm test` Pod's script, run by busybox (as in its busybox image) against real roles
// started from the sources on the test API server, with the Service names pointed at them.
// Pods never run here (no kubelet), so this is how the script itself is tested.
// Needs Debian's busybox. Run: npm test -- test/chart/helm-test-pod.test.ts
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as yaml from 'js-yaml';
import { kubeForTest, type TestKube } from '../support/kube.ts';
import { freePort, killRoles, startRoleProcess, type StartedRole } from '../image/roles.ts';
import { CHART, MINIMAL, REPO, helm } from './support.ts';

const BUSYBOX = ['/usr/bin/busybox', '/bin/busybox'].find((p) => fs.existsSync(p));

let tmp = '';
let kube: TestKube;
const roles: Record<string, { started: StartedRole; port: number; metrics: number }> = {};

async function start(role: string, section: string): Promise<void> {
  const [port, metrics] = [await freePort(), await freePort()];
  const file = path.join(tmp, `${role}.yaml`);
  fs.writeFileSync(
    file,
    `kubernetes: {namespace: ${kube.namespace}, kubeconfig: ${kube.kubeconfigPath}}\nmetrics: {host: 127.0.0.1, port: ${metrics}}\nlog: {level: error}\n` +
      `${role}:\n${section.replaceAll('PORT', String(port))}`,
  );
  const started = await startRoleProcess(process.execPath, [path.join(REPO, 'src/cli.ts'), role, '--config', file], { cwd: tmp, env: process.env, metricsPort: metrics });
  roles[role] = { started, port, metrics };
}

/** The rendered script with each Service name and port replaced by where the role listens here. */
async function script(): Promise<string> {
  const r = await helm(['template', 'r', CHART, ...MINIMAL, '--show-only', 'templates/tests/services-answer.yaml']);
  assert.equal(r.code, 0, r.stderr);
  const pod = yaml.load(r.stdout) as { spec: { containers: Array<{ command: string[]; args: string[] }> } };
  const container = pod.spec.containers[0]!;
  assert.deepEqual(container.command, ['sh', '-ec']);
  let text = container.args[0]!;
  const swaps: Array<[string, number]> = [
    ['r-kube-drac-pop3 110', roles.pop3!.port],
    ['r-kube-drac-smtp 25', roles.smtp!.port],
    ['r-kube-drac-pop3-metrics 9090', roles.pop3!.metrics],
    ['r-kube-drac-smtp-metrics 9090', roles.smtp!.metrics],
    ['r-kube-drac-operator-metrics 9090', roles.operator!.metrics],
  ];
  for (const [from, port] of swaps) {
    assert.ok(text.includes(from), `the script checks ${from}`);
    text = text.replace(from, `127.0.0.1 ${port}`);
  }
  return text;
}

/** Run the script under busybox sh with only busybox applets on PATH. */
function runScript(text: string): Promise<{ code: number; stdout: string }> {
  const applets = path.join(tmp, 'applets');
  if (!fs.existsSync(applets)) {
    fs.mkdirSync(applets);
    for (const a of ['sh', 'nc', 'wget', 'head', 'tr', 'sleep', 'printf', 'echo', 'timeout']) fs.symlinkSync(BUSYBOX as string, path.join(applets, a));
  }
  return new Promise((resolve) => {
    execFile(BUSYBOX as string, ['sh', '-ec', text], { env: { PATH: applets }, timeout: 120_000 }, (err, stdout) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout });
    });
  });
}

describe('the helm test Pod script', { skip: BUSYBOX === undefined && 'busybox is not installed (apt-get install busybox)' }, () => {
  before(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kube-drac-helm-test-'));
    kube = await kubeForTest('helm-test-pod');
    // pop3 is ready only with a usable mail root and a loaded users file.
    fs.writeFileSync(path.join(tmp, 'passwd'), 'demo:{PLAIN}demo\n');
    fs.mkdirSync(path.join(tmp, 'mail'), { recursive: true });
    await Promise.all([
      start('pop3', `  listen: {host: 127.0.0.1, port: PORT}\n  allowPlaintextAuth: true\n  passwordThreads: 0\n  mailRoot: ${tmp}/mail\n  usersFile: ${tmp}/passwd\n`),
      start('smtp', `  hostname: mail.example.test\n  listen: {host: 127.0.0.1, port: PORT}\n  localDomains: [example.test]\n  mailRoot: ${tmp}/mail\n  outbox: ${tmp}/outbox\n`),
      start('operator', `  leaderElection: {leaseName: helm-test-pod}\n`),
    ]);
  });
  after(async () => {
    killRoles();
    await kube?.cleanup();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  test('passes while every role answers', async () => {
    const r = await runScript(await script());
    assert.equal(r.code, 0, r.stdout);
    const ok = r.stdout.split('\n').filter((l) => l.startsWith('ok '));
    assert.equal(ok.length, 5, r.stdout);
    assert.match(r.stdout, /answers: \+OK/);
    assert.match(r.stdout, /answers: 220 mail\.example\.test/);
  });

  test('fails, naming it, when SMTP is down', async () => {
    const text = await script();
    assert.equal(await roles.smtp!.started.stop(), 0);
    const r = await runScript(text);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stdout, new RegExp(`FAIL 127\\.0\\.0\\.1:${roles.smtp!.port} answered: ''`));
    assert.match(r.stdout, new RegExp(`FAIL 127\\.0\\.0\\.1:${roles.smtp!.metrics}/readyz is not ready`));
    assert.match(r.stdout, /ok {3}127\.0\.0\.1:\d+ answers: \+OK/);
  });
});
