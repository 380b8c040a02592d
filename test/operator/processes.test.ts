// Two operator processes on the real API server: exactly one leads (Lease holder and metric);
// SIGKILL the leader and the other leads within the lease duration (plus a retry) and carries
// on collecting; SIGTERM the leader and the standby takes over within 2 s. Config mistakes end
// the process with a clear message.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { leasePath, type Lease } from '../../src/kube/leader.ts';
import { kubeForTest, type TestKube } from '../support/kube.ts';
import { createGrant, grantExists, kill, scrape, spawnOperator, writeOperatorConfig, type OperatorProcess } from './support.ts';
import { eventually } from '../support/eventually.ts';

const LEASE_MS = 3000;
const RETRY_MS = 250;

describe('two operator processes', () => {
  let k: TestKube;
  let dir: string;
  const procs: OperatorProcess[] = [];
  let index = 1;

  before(async () => {
    k = await kubeForTest('operator-procs');
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kube-drac-op-'));
  });
  after(async () => {
    await Promise.all(procs.map((p) => kill(p)));
    fs.rmSync(dir, { recursive: true, force: true });
    await k.cleanup();
  });

  async function start(identity: string): Promise<{ proc: OperatorProcess; port: number }> {
    const proc = spawnOperator(writeOperatorConfig(dir, identity, { namespace: k.namespace, kubeconfig: k.kubeconfigPath, identity }));
    procs.push(proc);
    return { proc, port: await proc.healthPort };
  }

  async function holder(): Promise<string | undefined> {
    return (await k.client.get<Lease>(leasePath(k.namespace, 'kube-drac-operator')))?.spec?.holderIdentity;
  }

  async function collects(): Promise<void> {
    const name = await createGrant(k.client, k.namespace, index++, Date.now() - 60_000);
    await eventually(`the leader deletes ${name}`, async () => !(await grantExists(k.client, k.namespace, name)), 5000);
  }

  it('one leads, SIGKILL hands over within the lease, SIGTERM within 2 s, GC continues throughout', async () => {
    const a = await start('op-a');
    const b = await start('op-b');
    const ports: Record<string, number> = { 'op-a': a.port, 'op-b': b.port };
    await eventually('someone holds the Lease', async () => ['op-a', 'op-b'].includes((await holder()) ?? ''));
    const first = (await holder()) as string;
    const second = first === 'op-a' ? 'op-b' : 'op-a';
    await eventually('the metrics agree on one leader', async () =>
      (await scrape(ports[first] as number, 'kubedrac_operator_leader')) === 1 && (await scrape(ports[second] as number, 'kubedrac_operator_leader')) === 0,
    );
    await collects();

    // SIGKILL: no release; the standby waits out the lease as it observed it.
    const killed = first === 'op-a' ? a.proc : b.proc;
    killed.child.kill('SIGKILL');
    await killed.exited;
    await eventually(
      `${second} leads within the lease duration (plus one retry)`,
      async () => (await holder()) === second && (await scrape(ports[second] as number, 'kubedrac_operator_leader')) === 1,
      LEASE_MS + 2 * RETRY_MS,
    );
    await collects();

    // A new standby, then SIGTERM the leader: it releases the Lease on the way out.
    const c = await start('op-c');
    await new Promise((r) => setTimeout(r, 2 * RETRY_MS));
    assert.equal(await scrape(c.port, 'kubedrac_operator_leader'), 0);
    const leader = second === 'op-a' ? a.proc : b.proc;
    leader.child.kill('SIGTERM');
    await eventually('op-c leads within 2 s of the SIGTERM', async () => (await holder()) === 'op-c' && (await scrape(c.port, 'kubedrac_operator_leader')) === 1, 2000);
    assert.deepEqual(await leader.exited, { code: 0, signal: null });
    assert.ok(leader.lines.some((l) => l.includes('"lease_released"')), 'the leader released the Lease');
    await collects();
  });

  it('refuses a config mistake with the key and the expected form', async () => {
    const file = path.join(dir, 'bad.yaml');
    fs.writeFileSync(file, 'operator:\n  grace: 30\n');
    const p = spawnOperator(file);
    procs.push(p);
    assert.deepEqual(await p.exited, { code: 1, signal: null });
    assert.ok(
      p.lines.includes('kube-drac: config error: operator.grace: expected a duration such as 30m, 10s or 500ms, got 30'),
      p.lines.join('\n'),
    );
    fs.writeFileSync(file, 'operator:\n  leaderElection: {leaseDuration: 5s, renewDeadline: 6s}\n');
    const q = spawnOperator(file);
    procs.push(q);
    assert.deepEqual(await q.exited, { code: 1, signal: null });
    assert.ok(q.lines.some((l) => l.startsWith('kube-drac: config error: operator.leaderElection.renewDeadline: renewDeadline must be shorter than leaseDuration')), q.lines.join('\n'));
  });
});
