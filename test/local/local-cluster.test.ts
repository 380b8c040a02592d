// `kube-drac local-cluster`: a real control plane in the foreground that prints its KUBECONFIG,
// stops cleanly on Ctrl-C, and leaves nothing behind even when it is killed outright.
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { testBinaries } from '../support/kube.ts';
import { isAlive, testAssetsDir } from '../support/local.ts';
import { eventually } from '../support/eventually.ts';

const run = promisify(execFile);
const CLI = new URL('../../src/cli.ts', import.meta.url).pathname;


function startCli(args: string[]): { child: ChildProcess; kubeconfig: Promise<string> } {
  const child = spawn(process.execPath, [CLI, 'local-cluster', ...args], {
    env: { ...process.env, KUBEBUILDER_ASSETS: testAssetsDir() },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const kubeconfig = new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
      const m = /^KUBECONFIG=(.+)$/m.exec(out);
      if (m) resolve(m[1] as string);
    });
    child.on('exit', (code) => reject(new Error(`local-cluster exited ${code} before ready:\n${err}`)));
  });
  return { child, kubeconfig };
}


describe('kube-drac local-cluster', () => {
  it('prints KUBECONFIG once ready, serves the CRD, and stops everything on SIGINT', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kd-local-'));
    const { child, kubeconfig } = startCli(['--dir', dir]);
    const kc = await kubeconfig;
    assert.equal(kc, path.join(dir, 'kubeconfig'));
    const { stdout } = await run(testBinaries().kubectl, ['--kubeconfig', kc, 'get', 'crd', 'relaygrants.kubedrac.io', '-o', 'name']);
    assert.equal(stdout.trim(), 'customresourcedefinition.apiextensions.k8s.io/relaygrants.kubedrac.io');
    const pids = fs.readFileSync(path.join(dir, 'pgids'), 'utf8').trim().split(/\s+/).map(Number);
    assert.equal(pids.length, 2);
    assert.ok(pids.every(isAlive));

    child.kill('SIGINT');
    const code = await new Promise((r) => child.on('exit', r));
    assert.equal(code, 0);
    assert.ok(!pids.some(isAlive), 'etcd and kube-apiserver are gone');
    assert.ok(fs.existsSync(path.join(dir, 'etcd')), 'a folder given with --dir is kept');
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('leaves no processes and no temp folder behind when it is SIGKILLed', async () => {
    const { child, kubeconfig } = startCli([]);
    const dir = path.dirname(await kubeconfig);
    const pids = fs.readFileSync(path.join(dir, 'pgids'), 'utf8').trim().split(/\s+/).map(Number);
    child.kill('SIGKILL');
    await eventually('children ended by the watchdog', () => !pids.some(isAlive), 15_000, 100);
    await eventually('temp folder removed', () => !fs.existsSync(dir), 15_000, 100);
  });

  it('refuses a KUBEBUILDER_ASSETS folder without the binaries, saying so', async () => {
    const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'kd-empty-'));
    const res = await run(process.execPath, [CLI, 'local-cluster'], { env: { ...process.env, KUBEBUILDER_ASSETS: empty } }).catch((e: { code: number; stderr: string }) => e);
    assert.equal((res as { code: number }).code, 1);
    assert.match((res as { stderr: string }).stderr, /KUBEBUILDER_ASSETS=.* has no executable kube-apiserver/);
  });
});
