// The chart's rendered configs run by the real roles (pop3 in detail) with its Secrets laid out the way the
// kubelet mounts them (files are symlinks into `..data`, which an update swaps atomically):
// POP3S serves the mounted certificate and the mounted users log in, and an updated Secret (new
// certificate, new user) takes effect without a restart. Run: npm test -- test/chart/secret-mounts.test.ts
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import net from 'node:net';
import tls from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { makeCert, tempDir } from '../net/certs.ts';
import { kubeForTest, type TestKube } from '../support/kube.ts';
import { freePort, killRoles, startRoleProcess, type StartedRole } from '../image/roles.ts';
import { MINIMAL, REPO, find, render } from './support.ts';

let tmp = '';
let kube: TestKube;
let pop3: StartedRole;
let tlsPort = 0;
let generation = 0;
let rendered: Record<string, string> | undefined;

/** Write a Secret volume the way the kubelet's AtomicWriter does: a fresh dir, then swap `..data`. */
function writeSecretVolume(dir: string, files: Record<string, string>): void {
  fs.mkdirSync(dir, { recursive: true });
  const version = `..${new Date().toISOString().replace(/[-:.]/g, '_')}_${generation++}`;
  fs.mkdirSync(path.join(dir, version));
  for (const [name, content] of Object.entries(files)) fs.writeFileSync(path.join(dir, version, name), content, { mode: 0o644 });
  fs.symlinkSync(version, path.join(dir, '..data_tmp'));
  fs.renameSync(path.join(dir, '..data_tmp'), path.join(dir, '..data'));
  for (const name of Object.keys(files)) {
    const link = path.join(dir, name);
    if (!fs.existsSync(link)) fs.symlinkSync(path.join('..data', name), link);
  }
}

/** Start `role` from the sources with the chart's rendered config, changed only where a pod differs. */
async function startRendered(role: string, metrics: number, ports: Array<[string, string]>): Promise<StartedRole> {
  if (rendered === undefined) {
    const objects = await render(MINIMAL);
    rendered = (find(objects, 'ConfigMap', 'r-kube-drac-config') as unknown as { data: Record<string, string> }).data;
  }
  // Only what the pod gives differently: paths of the mounts, loopback ports, the cluster.
  let config =
    `kubernetes: {namespace: ${kube.namespace}, kubeconfig: ${kube.kubeconfigPath}}\n` +
    (rendered[`${role}.yaml`] ?? '')
      .replaceAll('/etc/kube-drac/', `${tmp}/etc/`)
      .replace('/var/mail/kube-drac', `${tmp}/mail`)
      .replaceAll('0.0.0.0', '127.0.0.1')
      .replace('port: 9090', `port: ${metrics}`)
      .replace('level: info', 'level: warn');
  for (const [from, to] of ports) {
    assert.ok(config.includes(from), `${role}.yaml has ${from}`);
    config = config.replace(from, to);
  }
  const file = path.join(tmp, `${role}.yaml`);
  fs.writeFileSync(file, config);
  return startRoleProcess(process.execPath, [path.join(REPO, 'src/cli.ts'), role, '--config', file], { cwd: tmp, env: process.env, metricsPort: metrics });
}

/** Log in over POP3S; resolves with the certificate's CN and the reply to PASS. */
function loginOverTls(user: string, password: string): Promise<{ cn: string; pass: string }> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port: tlsPort, rejectUnauthorized: false }, () => {
      const cert = socket.getPeerCertificate();
      const cn = String(cert.subject?.CN ?? '');
      const replies: string[] = [];
      let buffer = '';
      const steps = [`USER ${user}`, `PASS ${password}`, 'QUIT'];
      socket.setEncoding('utf8');
      socket.on('data', (chunk: string) => {
        buffer += chunk;
        let i;
        while ((i = buffer.indexOf('\r\n')) !== -1) {
          replies.push(buffer.slice(0, i));
          buffer = buffer.slice(i + 2);
          const next = steps.shift();
          if (next !== undefined) socket.write(`${next}\r\n`);
        }
      });
      socket.on('close', () => resolve({ cn, pass: replies[2] ?? '' }));
    });
    socket.setTimeout(15_000, () => socket.destroy(new Error('POP3S timed out')));
    socket.on('error', reject);
  });
}

describe('the rendered pop3 config with kubelet-style Secret mounts', () => {
  before(async () => {
    tmp = tempDir('chart-mounts');
    kube = await kubeForTest('chart-secret-mounts');
    const certs = path.join(tmp, 'certs');
    const first = makeCert(certs, 'first.example.test', 'first');
    writeSecretVolume(path.join(tmp, 'etc/tls'), { 'tls.crt': first.certPem, 'tls.key': fs.readFileSync(first.keyFile, 'utf8') });
    writeSecretVolume(path.join(tmp, 'etc/users'), { passwd: 'alice:{PLAIN}alice-pw\n' });
    for (const user of ['alice', 'bob']) for (const d of ['cur', 'new', 'tmp']) fs.mkdirSync(path.join(tmp, 'mail', user, d), { recursive: true });

    const [popPort, metrics] = [await freePort(), await freePort()];
    tlsPort = await freePort();
    pop3 = await startRendered('pop3', metrics, [
      ['port: 1110', `port: ${popPort}`],
      ['implicitTlsPort: 1995', `implicitTlsPort: ${tlsPort}`],
    ]);
  });
  after(async () => {
    killRoles();
    await kube?.cleanup();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  test('serves the mounted certificate and checks the mounted users', async () => {
    const alice = await loginOverTls('alice', 'alice-pw');
    assert.equal(alice.cn, 'first.example.test');
    assert.match(alice.pass, /^\+OK/, pop3.output());
    assert.match((await loginOverTls('bob', 'bob-pw')).pass, /^-ERR/);
  });

  test('an updated Secret (..data swapped) is used without a restart', async () => {
    const second = makeCert(path.join(tmp, 'certs'), 'second.example.test', 'second');
    writeSecretVolume(path.join(tmp, 'etc/tls'), { 'tls.crt': second.certPem, 'tls.key': fs.readFileSync(second.keyFile, 'utf8') });
    writeSecretVolume(path.join(tmp, 'etc/users'), { passwd: 'alice:{PLAIN}alice-pw\nbob:{PLAIN}bob-pw\n' });
    const deadline = Date.now() + 60_000;
    for (;;) {
      const bob = await loginOverTls('bob', 'bob-pw');
      if (bob.cn === 'second.example.test' && bob.pass.startsWith('+OK')) break;
      if (Date.now() > deadline) assert.fail(`not picked up: ${JSON.stringify(bob)}\n${pop3.output()}`);
      await new Promise((r) => setTimeout(r, 500));
    }
    assert.equal(pop3.child.exitCode, null, 'still the same process');
  });

  test('the rendered smtp and operator configs start and become ready as they are', async () => {
    const [smtpPort, smtpMetrics, opMetrics] = [await freePort(), await freePort(), await freePort()];
    const smtp = await startRendered('smtp', smtpMetrics, [['port: 2525', `port: ${smtpPort}`]]);
    const op = await startRendered('operator', opMetrics, []);
    // SMTP offers STARTTLS with the mounted certificate.
    const ehlo = await new Promise<string>((resolve, reject) => {
      const socket = net.connect(smtpPort, '127.0.0.1');
      let text = '';
      socket.setEncoding('utf8');
      socket.on('data', (c: string) => {
        text += c;
        if (/^220 /m.test(text) && !text.includes('EHLO sent')) {
          text += 'EHLO sent\n';
          socket.write('EHLO client.example\r\n');
        } else if (/^250 /m.test(text)) {
          socket.end('QUIT\r\n');
          resolve(text);
        }
      });
      socket.on('error', reject);
      socket.setTimeout(15_000, () => socket.destroy(new Error(`no EHLO reply: ${text}`)));
    });
    assert.match(ehlo, /^250[- ]STARTTLS/m);
    for (const r of [smtp, op]) assert.equal(await r.stop(), 0, r.output());
  });
});
