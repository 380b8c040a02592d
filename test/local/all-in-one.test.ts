// The README walkthrough, automated against `npm start` (kube-drac all-in-one) with real clients:
// relay refused -> POP3 login -> kubectl shows the grant -> relay accepted -> Ctrl-C leaves nothing.
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { eventuallyValue } from '../support/eventually.ts';
import { testBinaries } from '../support/kube.ts';
import { isAlive, testAssetsDir } from '../support/local.ts';
import { socketmapLookup } from '../support/exchange.ts';

const run = promisify(execFile);
const CLI = new URL('../../src/cli.ts', import.meta.url).pathname;



async function swaks(...args: string[]): Promise<{ code: number; out: string }> {
  try {
    const { stdout } = await run('swaks', ['--server', '127.0.0.1:2525', '--from', 'demo@example.test', '--to', 'someone@elsewhere.test', ...args]);
    return { code: 0, out: stdout };
  } catch (err) {
    const e = err as { code: number; stdout: string };
    return { code: e.code, out: e.stdout };
  }
}

async function startAllInOne(t: { after: (fn: () => void) => void }): Promise<{ child: ChildProcess; stateDir: string; out: string }> {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kd-demo-'));
  const child = spawn(process.execPath, [CLI, 'all-in-one', '--state-dir', stateDir], {
    env: { ...process.env, KUBEBUILDER_ASSETS: testAssetsDir() },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let out = '';
  child.stderr.on('data', (c: Buffer) => (out += c.toString()));
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
      if (out.includes('Ctrl-C stops everything')) resolve();
    });
    child.on('exit', (code) => reject(new Error(`all-in-one exited ${code}:\n${out}`)));
  });
  return { child, stateDir, out };
}

async function rolePids(stateDir: string): Promise<number[]> {
  const { stdout } = await run('pgrep', ['-f', `cli.ts [a-z0-9]+ --config ${stateDir}/`]);
  return stdout.trim().split('\n').map(Number);
}

describe('npm start (the all-in-one) and the README walkthrough', () => {
  it('refuses relay, grants it after a POP3 login, shows the grant, and stops cleanly', async (t) => {
    const { child, stateDir, out } = await startAllInOne(t);
    const kubeconfig = /export KUBECONFIG=(\S+)/.exec(out)?.[1];
    assert.ok(kubeconfig, out);
    assert.match(out, /outbox\s+\S+outbox/);
    assert.match(out, /metrics\s+http:\/\/127\.0\.0\.1:\d+\/metrics\s+\(smtp\)/);

    // 1. telnet 127.0.0.1 2525: relay refused.
    const refused = await swaks();
    assert.equal(refused.code, 24, refused.out);
    assert.match(refused.out, /550 5\.7\.1 <someone@elsewhere\.test>: Relay access denied/);

    // 2. telnet 127.0.0.1 1110, user demo, pass demo.
    const { stdout: pop } = await run('python3', [
      '-c',
      'import poplib; p = poplib.POP3("127.0.0.1", 1110); print(p.user("demo")); print(p.pass_("demo")); print(p.quit())',
    ]);
    assert.match(pop, /\+OK/);

    // 3. kubectl get relaygrants shows 127.0.0.1 and its expiry.
    // The login waits up to loginWaitForGrant for the write; on a loaded machine (CI runs the
    // control-plane tests beside this one) the write can land just after it, so give it 5 s.
    const grantRow = /^v4-127\.0\.0\.1\s/m;
    const rg = await eventuallyValue('the grant in kubectl get', async () => {
      const { stdout } = await run(testBinaries().kubectl, ['--kubeconfig', kubeconfig, '-n', 'kube-drac', 'get', 'relaygrants']);
      return grantRow.test(stdout) ? stdout : undefined;
    }, 5000, 250);
    assert.match(rg, /^v4-127\.0\.0\.1\s+127\.0\.0\.1\s+demo\s+pop3\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\s+\d+s$/m);

    // The bridge's socket map (what a Postfix or sendmail of your own asks) sees the grant too.
    assert.match(out, /bridge\s+127\.0\.0\.1:9400 socketmap/);
    const ask = () => socketmapLookup(9400, 'drac', '127.0.0.1');
    let lookup = await ask();
    for (let i = 0; i < 50 && !lookup.includes(':OK '); i++) {
      await new Promise((r) => setTimeout(r, 100));
      lookup = await ask();
    }
    assert.match(lookup, /^\d+:OK \d{10},$/);

    // 4. The relay is now accepted, and the message lands in the outbox.
    const accepted = await swaks('--header', 'Subject: walkthrough');
    assert.equal(accepted.code, 0, accepted.out);
    const outbox = path.join(stateDir, 'outbox', 'new');
    const files = fs.readdirSync(outbox);
    assert.equal(files.length, 1);
    const message = fs.readFileSync(path.join(outbox, files[0] as string), 'utf8');
    assert.match(message, /^Received: .*\(authorized: pop-before-smtp grant v4-127\.0\.0\.1\)/ms);
    assert.match(message, /Subject: walkthrough/);

    // Relay limits are on: the limit is printed, and the SMTP replica publishes its counts.
    assert.match(out, /limits\s+demo may relay 100 messages \(1000 recipients\) per hour/);
    let usage = '';
    for (let i = 0; i < 100 && !/^smtp-0\s+smtp-0\s/m.test(usage); i++) {
      await new Promise((r) => setTimeout(r, 100));
      usage = (await run(testBinaries().kubectl, ['--kubeconfig', kubeconfig, '-n', 'kube-drac', 'get', 'relayusages'])).stdout;
    }
    assert.match(usage, /^NAME\s+REPLICA\s+PUBLISHED\s+AGE$/m);
    assert.match(usage, /^smtp-0\s+smtp-0\s+\d{4}-\d\d-\d\dT[\d:.]+Z\s+\d+s$/m);

    // Ctrl-C: every process ends, the control plane's folder is removed.
    const pgids = fs.readFileSync(path.join(path.dirname(kubeconfig), 'pgids'), 'utf8').trim().split(/\s+/).map(Number);
    const roles = await rolePids(stateDir);
    assert.equal(roles.length, 4, 'operator, pop3, smtp and the bridge run as processes');
    child.kill('SIGINT');
    assert.equal(await new Promise((r) => child.on('exit', r)), 0);
    assert.ok(![...pgids, ...roles].some(isAlive), 'no process left behind');
    assert.ok(!fs.existsSync(path.dirname(kubeconfig)));
    fs.rmSync(stateDir, { recursive: true, force: true });
  });

  it('leaves no process behind when it is killed outright', async (t) => {
    const { child, stateDir, out } = await startAllInOne(t);
    const kubeconfig = /export KUBECONFIG=(\S+)/.exec(out)?.[1] as string;
    const pgids = fs.readFileSync(path.join(path.dirname(kubeconfig), 'pgids'), 'utf8').trim().split(/\s+/).map(Number);
    const roles = await rolePids(stateDir);
    assert.equal(pgids.length, 6, 'etcd, kube-apiserver and the four roles are watched');
    child.kill('SIGKILL');
    const deadline = Date.now() + 15_000;
    while ([...pgids, ...roles].some(isAlive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    assert.ok(![...pgids, ...roles].some(isAlive), 'the watchdog ended every process');
    fs.rmSync(stateDir, { recursive: true, force: true });
  });
});
