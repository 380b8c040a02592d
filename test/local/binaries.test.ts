// A control plane of its own (`npm start`, `local-cluster`) builds only what it runs: etcd,
// kube-apiserver and kubectl, never helm (2.5 of the ~12 minutes of a cold first start).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { testBinaries } from '../support/kube.ts';

const CLI = new URL('../../src/cli.ts', import.meta.url).pathname;

describe('binaries a command needs', () => {
  it('local-cluster starts with no helm anywhere and no Go to build one', async () => {
    const b = testBinaries();
    const assets = fs.mkdtempSync(path.join(os.tmpdir(), 'kd-cp-assets-'));
    for (const [name, file] of [['kube-apiserver', b.kubeApiserver], ['etcd', b.etcd], ['kubectl', b.kubectl]] as const) {
      fs.symlinkSync(file, path.join(assets, name));
    }
    const emptyCache = fs.mkdtempSync(path.join(os.tmpdir(), 'kd-nocache-'));
    // Only Node and a shell (the watchdog's) on the PATH: a build would fail at once with "cannot run go".
    const tools = fs.mkdtempSync(path.join(os.tmpdir(), 'kd-path-'));
    fs.symlinkSync('/bin/sh', path.join(tools, 'sh'));
    const child = spawn(process.execPath, [CLI, 'local-cluster'], {
      env: { ...process.env, KUBEBUILDER_ASSETS: assets, KUBE_DRAC_CACHE: emptyCache, PATH: `${path.dirname(process.execPath)}:${tools}` },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const exited = new Promise((r) => child.once('exit', r));
    const ready = await new Promise<boolean>((resolve) => {
      let out = '';
      child.stdout.on('data', (c: Buffer) => {
        out += c.toString();
        if (/^KUBECONFIG=/m.test(out)) resolve(true);
      });
      void exited.then(() => resolve(false));
    });
    child.kill('SIGINT');
    await exited;
    for (const dir of [assets, tools]) fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(emptyCache, { recursive: true, force: true });
    assert.ok(ready, `local-cluster did not get ready without helm:\n${stderr}`);
    assert.doesNotMatch(stderr, /\bhelm\b|building/);
  });
});
