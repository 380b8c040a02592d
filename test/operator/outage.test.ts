// On an API server of the test's own: a missing CRD is a clear startup error; with the CRD, an
// operator survives the API server going away while grants come due, and catches up after it returns.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { grantsPath } from '../../src/grants/paths.ts';
import type { RelayGrant } from '../../src/grants/types.ts';
import { installCrds } from '../../src/kube/crds.ts';
import type { ControlPlane } from '../../src/local/control-plane.ts';
import { ownControlPlane } from '../support/kube.ts';
import { createGrant, kill, scrape, sleep, spawnOperator, writeOperatorConfig, type OperatorProcess } from './support.ts';
import { eventually } from '../support/eventually.ts';

describe('operator and its API server', () => {
  let plane: ControlPlane;
  let dir: string;
  let config: string;
  const procs: OperatorProcess[] = [];

  before(async () => {
    plane = await ownControlPlane('mail');
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kube-drac-op-outage-'));
    config = writeOperatorConfig(dir, 'op', { namespace: 'mail', kubeconfig: plane.kubeconfigPath, identity: 'op-outage' });
  });
  after(async () => {
    await Promise.all(procs.map((p) => kill(p)));
    await plane.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('says how to install a missing CRD, and exits 1', async () => {
    const p = spawnOperator(config);
    procs.push(p);
    assert.deepEqual(await p.exited, { code: 1, signal: null });
    const message = p.lines.find((l) => l.startsWith('kube-drac: '));
    assert.equal(
      message,
      'kube-drac: the RelayGrant CRD (relaygrants.kubedrac.io) is not installed in this cluster: install it with `kubectl apply -f crds/` (from the kube-drac sources or release) and start the operator again',
    );
  });

  it('does not crash while the API server is down, and collects what came due once it is back', async () => {
    const client = plane.client();
    await installCrds(client);
    const p = spawnOperator(config);
    procs.push(p);
    const port = await p.healthPort;
    await eventually('it leads', async () => (await scrape(port, 'kubedrac_operator_leader')) === 1);
    const expiresAt = Date.now() + 1500;
    const names = await Promise.all([1, 2, 3, 4, 5].map((i) => createGrant(client, 'mail', i, expiresAt)));
    const future = await createGrant(client, 'mail', 6, Date.now() + 3_600_000);
    client.close();

    await plane.stop({ keepData: true });
    // The grants come due and the renew deadline (2 s) passes while the server is away.
    await sleep(6000);
    assert.equal(p.child.exitCode, null, 'still running');
    assert.equal(await scrape(port, 'kubedrac_operator_leader'), 0, 'stopped acting once it could not renew');

    await plane.start();
    const back = plane.client();
    try {
      await eventually(
        'the due grants are deleted after the server returns',
        async () => {
          const list = await back.request<{ items: RelayGrant[] }>('GET', grantsPath('mail'));
          const left = list.items.map((g) => g.metadata.name);
          return names.every((n) => !left.includes(n)) && left.includes(future);
        },
        30_000,
      );
      assert.equal(p.child.exitCode, null, 'still running');
      assert.equal(await scrape(port, 'kubedrac_operator_leader'), 1);
    } finally {
      back.close();
    }
  });
});
