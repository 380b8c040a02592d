// The chart's Roles are not only narrow but enough: each role runs (from the sources) with the
// token of its own ServiceAccount from `helm install` and does its whole job on the real API
// server: the operator leads on its Lease and deletes an expired grant, a POP3 login writes the
// grant, SMTP watches grants and relays for it, the bridge (whoson: reads, writes and revokes)
// does all three. Run: npm test -- test/chart/rbac-run.test.ts
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as yaml from 'js-yaml';
import { kubeForTest, type TestKube } from '../support/kube.ts';
import { freePort, killRoles, startRoleProcess, type StartedRole } from '../image/roles.ts';
import { CHART, MINIMAL, REPO, helm } from './support.ts';
import { eventually } from '../support/eventually.ts';

interface Kubeconfig {
  clusters: Array<{ name: string; cluster: Record<string, unknown> }>;
}

let tmp = '';
let kube: TestKube;

/** A kubeconfig that authenticates as the ServiceAccount `sa` with a fresh token. */
async function kubeconfigFor(sa: string): Promise<string> {
  const token = (await kube.kubectl('create', 'token', sa, '--duration=1h')).trim();
  const admin = yaml.load(fs.readFileSync(kube.kubeconfigPath, 'utf8')) as Kubeconfig;
  const cluster = admin.clusters[0]!;
  const file = path.join(tmp, `${sa}.kubeconfig`);
  fs.writeFileSync(
    file,
    yaml.dump({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [cluster],
      users: [{ name: sa, user: { token } }],
      contexts: [{ name: sa, context: { cluster: cluster.name, user: sa, namespace: kube.namespace } }],
      'current-context': sa,
    }),
  );
  return file;
}

async function startAs(role: string, section: string, port = 0): Promise<{ role: StartedRole; metrics: number }> {
  const metrics = await freePort();
  const kubeconfig = await kubeconfigFor(`r-kube-drac-${role}`);
  const file = path.join(tmp, `${role}.yaml`);
  fs.writeFileSync(
    file,
    `kubernetes: {namespace: ${kube.namespace}, kubeconfig: ${kubeconfig}}\nmetrics: {host: 127.0.0.1, port: ${metrics}}\nlog: {level: warn}\n` +
      `${role}:\n${section.replaceAll('PORT', String(port))}`,
  );
  const started = await startRoleProcess(process.execPath, [path.join(REPO, 'src/cli.ts'), role, '--config', file], { cwd: tmp, env: { ...process.env, KUBECONFIG: '' }, metricsPort: metrics });
  return { role: started, metrics };
}

/** Talk line by line: send a command, read the reply (multi-line SMTP replies folded into one string). */
async function converse(port: number, steps: Array<string | null>): Promise<string[]> {
  const socket = net.connect(port, '127.0.0.1');
  socket.setEncoding('utf8');
  let buffer = '';
  const replies: string[] = [];
  const readReply = async (): Promise<string> => {
    const deadline = Date.now() + 15_000;
    for (;;) {
      // A complete reply ends with a line that is not an SMTP continuation ("250-").
      const m = /^((?:.*\r\n)*?(?!\d{3}-).*\r\n)/.exec(buffer);
      if (m) {
        buffer = buffer.slice((m[1] as string).length);
        return (m[1] as string).trimEnd();
      }
      if (Date.now() > deadline) throw new Error(`no reply; got ${JSON.stringify(buffer)}`);
      await new Promise<void>((r) => socket.once('data', () => r()).setTimeout(500, () => r()));
    }
  };
  socket.on('data', (c: string) => (buffer += c));
  try {
    for (const step of steps) {
      if (step !== null) socket.write(`${step}\r\n`);
      replies.push(await readReply());
    }
  } finally {
    socket.destroy();
  }
  return replies;
}

describe("each role does its job with only its chart ServiceAccount's permissions", () => {
  before(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kube-drac-rbac-run-'));
    kube = await kubeForTest('chart-rbac-run');
    const bridge = ['--set', 'bridge.enabled=true', '--set', 'bridge.allow[0]=10.244.0.0/16', '--set', 'bridge.whoson.enabled=true'];
    const r = await helm(['install', 'r', CHART, '--kubeconfig', kube.kubeconfigPath, '--namespace', kube.namespace, ...MINIMAL, ...bridge]);
    assert.equal(r.code, 0, r.stderr);
  });
  after(async () => {
    killRoles();
    await kube?.cleanup();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  test('operator: takes the chart-named Lease, deletes an expired grant, records an Event', async () => {
    const expired = { apiVersion: 'kubedrac.io/v1alpha1', kind: 'RelayGrant', metadata: { name: 'v4-192.0.2.7' }, spec: { address: '192.0.2.7', user: 'old', source: 'manual', expiresAt: new Date(Date.now() - 60_000).toISOString() } };
    fs.writeFileSync(path.join(tmp, 'expired.json'), JSON.stringify(expired));
    await kube.kubectl('apply', '-f', path.join(tmp, 'expired.json'));
    const { role, metrics } = await startAs('operator', '  grace: 0s\n  sweepInterval: 1s\n  leaderElection: {leaseName: r-kube-drac-operator}\n');
    await eventually('the operator to lead', async () => /^kubedrac_operator_leader 1$/m.test(await (await fetch(`http://127.0.0.1:${metrics}/metrics`)).text()), 30_000, 250);
    const holder = await kube.kubectl('get', 'lease', 'r-kube-drac-operator', '-o', 'jsonpath={.spec.holderIdentity}');
    assert.notEqual(holder, '');
    await eventually('the expired grant to be deleted', async () => !(await kube.kubectl('get', 'relaygrants', '-o', 'name')).includes('v4-192.0.2.7'), 30_000, 250);
    await eventually('an Event on the Lease', async () => (await kube.kubectl('get', 'events', '-o', 'jsonpath={.items[*].involvedObject.kind}')).includes('Lease'), 30_000, 250);
    assert.equal(await role.stop(), 0, role.output());
    assert.doesNotMatch(role.output(), /forbidden/i);
  });

  test('pop3 writes the grant at login; smtp watches it and relays for that address', async () => {
    const mailRoot = path.join(tmp, 'mail');
    for (const d of ['cur', 'new', 'tmp']) fs.mkdirSync(path.join(mailRoot, 'demo', d), { recursive: true });
    fs.writeFileSync(path.join(tmp, 'passwd'), 'demo:{PLAIN}demo\n');
    const [popPort, smtpPort] = [await freePort(), await freePort()];
    const smtp = await startAs(
      'smtp',
      `  hostname: mail.example.test\n  listen: {host: 127.0.0.1, port: PORT}\n  localDomains: [example.test]\n  mailRoot: ${mailRoot}\n  outbox: ${tmp}/outbox\n`,
      smtpPort,
    );
    const relay = ['EHLO client.example', 'MAIL FROM:<demo@example.test>', 'RCPT TO:<someone@elsewhere.example>', 'QUIT'];
    const before = await converse(smtpPort, [null, ...relay]);
    assert.match(before[3] ?? '', /^550 5\.7\.1/, 'no grant yet: relaying refused');

    const pop3 = await startAs(
      'pop3',
      `  listen: {host: 127.0.0.1, port: PORT}\n  allowPlaintextAuth: true\n  passwordThreads: 0\n  mailRoot: ${mailRoot}\n  usersFile: ${tmp}/passwd\n`,
      popPort,
    );
    const login = await converse(popPort, [null, 'USER demo', 'PASS demo', 'QUIT']);
    assert.match(login[2] ?? '', /^\+OK/, pop3.role.output());
    const grant = await kube.kubectl('get', 'relaygrant', 'v4-127.0.0.1', '-o', 'jsonpath={.spec.user} {.spec.source}');
    assert.equal(grant, 'demo pop3');

    const afterLogin = await converse(smtpPort, [null, ...relay]);
    assert.match(afterLogin[3] ?? '', /^250/, `granted: relaying accepted\n${smtp.role.output()}`);
    for (const r of [pop3, smtp]) {
      assert.equal(await r.role.stop(), 0, r.role.output());
      assert.doesNotMatch(r.role.output(), /forbidden/i);
    }
  });

  test('bridge (whoson): LOGIN writes the grant, QUERY reads it from its cache, LOGOUT deletes it', async () => {
    const port = await freePort();
    const { role } = await startAs('bridge', '  host: 127.0.0.1\n  whoson: {enabled: true, port: PORT, udp: false}\n', port);
    const ask = async (line: string) => (await converse(port, [`${line}\r\n`]))[0] ?? '';
    assert.match(await ask('LOGIN 192.0.2.77 wanda'), /^\+/, role.output());
    assert.equal(await kube.kubectl('get', 'relaygrant', 'v4-192.0.2.77', '-o', 'jsonpath={.spec.user} {.spec.source}'), 'wanda whoson');
    await eventually('QUERY to see the grant', async () => (await ask('QUERY 192.0.2.77')).startsWith('+'), 30_000, 250);
    assert.match(await ask('LOGOUT 192.0.2.77'), /^\+/);
    await eventually('the grant to be deleted', async () => !(await kube.kubectl('get', 'relaygrants', '-o', 'name')).includes('v4-192.0.2.77'), 30_000, 250);
    assert.equal(await role.stop(), 0, role.output());
    assert.doesNotMatch(role.output(), /forbidden/i);
  });
});
