// Helpers for tests of the local processes (local-cluster, all-in-one).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { testBinaries } from './kube.ts';

/** A KUBEBUILDER_ASSETS folder with the test run's binaries, so tests also exercise that override. */
export function testAssetsDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kd-assets-'));
  const b = testBinaries();
  for (const [name, file] of [['kube-apiserver', b.kubeApiserver], ['etcd', b.etcd], ['kubectl', b.kubectl], ['helm', b.helm]] as const) {
    fs.symlinkSync(file, path.join(dir, name));
  }
  return dir;
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
