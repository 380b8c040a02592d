// Prometheus' own linter on what kube-drac exposes: `promtool check metrics` on the /metrics of
// every role running as a process (relay limits on, after a relay and a refusal, so every metric
// has samples), and `promtool check rules` on the PrometheusRule the chart renders.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as yaml from 'js-yaml';
import { freePort, killRoles, startRoleProcess, type StartedRole } from '../image/roles.ts';
import { CHART, REPO, VALUES_ALL, helm } from '../chart/support.ts';
import { kubeForTest, type TestKube } from '../support/kube.ts';
import { swaks } from '../smtp/peers.ts';

function promtool(args: string[], input?: string): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const child = execFile('promtool', args, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, out: stdout + stderr });
    });
    child.stdin?.end(input ?? '');
  });
}

let k: TestKube;
let tmp = '';
const roles = new Map<string, { role: StartedRole; metrics: number }>();

async function start(role: string, section: string): Promise<void> {
  const metrics = await freePort();
  const file = path.join(tmp, `${role}.yaml`);
  fs.writeFileSync(
    file,
    `kubernetes: {namespace: ${k.namespace}, kubeconfig: ${k.kubeconfigPath}}\nmetrics: {host: 127.0.0.1, port: ${metrics}}\nlog: {level: warn}\n${role}:\n${section}`,
  );
  const started = await startRoleProcess(process.execPath, [path.join(REPO, 'src/cli.ts'), role, '--config', file], { cwd: tmp, env: { ...process.env, KUBECONFIG: '' }, metricsPort: metrics });
  roles.set(role, { role: started, metrics });
}

before(async () => {
  k = await kubeForTest('promtool');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kube-drac-promtool-'));
  const mailRoot = path.join(tmp, 'mail');
  for (const d of ['cur', 'new', 'tmp']) fs.mkdirSync(path.join(mailRoot, 'demo', d), { recursive: true });
  fs.writeFileSync(path.join(tmp, 'passwd'), 'demo:{PLAIN}demo\n');
  const [smtpPort, popPort, mapPort] = [await freePort(), await freePort(), await freePort()];
  await Promise.all([
    start('operator', '  leaderElection: {leaseName: promtool, identity: promtool}\n'),
    start('pop3', `  listen: {host: 127.0.0.1, port: ${popPort}}\n  allowPlaintextAuth: true\n  passwordThreads: 0\n  mailRoot: ${mailRoot}\n  usersFile: ${tmp}/passwd\n`),
    start(
      'smtp',
      `  listen: {host: 127.0.0.1, port: ${smtpPort}}\n  localDomains: [example.test]\n  mailRoot: ${mailRoot}\n  outbox: ${tmp}/outbox\n` +
        '  trustedNetworks: [127.0.0.40]\n  limits: {enabled: true, replicaName: promtool, flushInterval: 200ms, perUser: {messagesPerHour: 1}}\n',
    ),
    start('bridge', `  host: 127.0.0.1\n  socketmap: {enabled: true, port: ${mapPort}}\n`),
  ]);
  // Some traffic: a refused relay, a POP3 login (a grant), one relayed message, one over the limit.
  await swaks({ port: smtpPort, to: 'x@elsewhere.test', local: '127.0.0.41' });
  await swaks({ port: smtpPort, to: 'demo@example.test', local: '127.0.0.40' });
  await new Promise<void>((resolve) => {
    execFile('python3', ['-c', `import poplib; p = poplib.POP3("127.0.0.1", ${popPort}); p.user("demo"); p.pass_("demo"); p.quit()`], () => resolve());
  });
  for (let i = 0; i < 20; i++) {
    const r = await swaks({ port: smtpPort, to: 'x@elsewhere.test', local: '127.0.0.1' });
    if (r.code === 0) break;
    await new Promise((res) => setTimeout(res, 100));
  }
  await swaks({ port: smtpPort, to: 'x@elsewhere.test', local: '127.0.0.1' });
});
after(async () => {
  for (const { role } of roles.values()) await role.stop();
  killRoles();
  await k?.cleanup();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

describe('promtool', () => {
  it("check metrics: every role's /metrics passes Prometheus' lint", async () => {
    const smtp = await (await fetch(`http://127.0.0.1:${roles.get('smtp')?.metrics}/metrics`)).text();
    assert.match(smtp, /^kubedrac_smtp_relay_limited_total\{kind="user_messages"\} 1$/m, 'the limit was hit once');
    assert.match(smtp, /^kubedrac_smtp_usage_publishes_total [1-9]/m);
    const problems: string[] = [];
    for (const [name, { metrics }] of roles) {
      const text = await (await fetch(`http://127.0.0.1:${metrics}/metrics`)).text();
      const r = await promtool(['check', 'metrics'], text);
      if (r.code !== 0 || r.out.trim() !== '') problems.push(`${name}:\n${r.out}`);
    }
    assert.deepEqual(problems, []);
  });

  it('check rules: the PrometheusRule the chart renders (every option on) is valid', async () => {
    const r = await helm(['template', 'mail', CHART, '--namespace', 'mail', '-f', VALUES_ALL, '--show-only', 'templates/monitoring.yaml']);
    assert.equal(r.code, 0, r.stderr);
    const rule = (yaml.loadAll(r.stdout) as { kind?: string; spec?: unknown }[]).find((o) => o?.kind === 'PrometheusRule');
    assert.ok(rule?.spec, 'a PrometheusRule is rendered');
    const file = path.join(tmp, 'rules.yaml');
    fs.writeFileSync(file, yaml.dump(rule.spec));
    const checked = await promtool(['check', 'rules', file]);
    assert.equal(checked.code, 0, checked.out);
    assert.match(checked.out, /SUCCESS: \d+ rules found/);
  });
});
