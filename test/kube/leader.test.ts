// Lease leader election against the real API server: one leader at a time, handover on
// release, an Event on the Lease, and a leader that loses the API server stops acting before
// anyone else can start.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { KubeClient } from '../../src/kube/client.ts';
import { LeaderElector, leasePath, type Lease, type LeaderElectionSettings } from '../../src/kube/leader.ts';
import { kubeForTest, type TestKube } from '../support/kube.ts';
import { startCuttableRelay } from '../operator/support.ts';
import { eventually } from '../support/eventually.ts';

const FAST = { leaseDurationMs: 2000, renewDeadlineMs: 1500, retryPeriodMs: 200 };

interface Candidate {
  elector: LeaderElector;
  /** What happened to it, in order, with a shared sequence number. */
  log: string[];
}

let seq = 0;
const history: string[] = [];

function candidate(client: KubeClient, namespace: string, leaseName: string, identity: string, settings: Partial<LeaderElectionSettings> = {}): Candidate {
  const log: string[] = [];
  const note = (what: string) => {
    const line = `${++seq} ${identity} ${what}`;
    log.push(what);
    history.push(line);
  };
  const elector = new LeaderElector({
    client,
    namespace,
    leaseName,
    identity,
    ...FAST,
    ...settings,
    eventComponent: 'kube-drac-test',
    onStartedLeading: () => note('started'),
    onStoppedLeading: () => note('stopped'),
  });
  return { elector, log };
}

function order(line: string): number {
  const i = history.findIndex((h) => h.endsWith(line));
  assert.ok(i >= 0, `${line} happened (history: ${history.join('; ')})`);
  return Number(history[i]?.split(' ')[0]);
}

describe('LeaderElector on the real API server', () => {
  let k: TestKube;
  before(async () => {
    k = await kubeForTest('leader');
  });
  after(async () => {
    await k.cleanup();
  });

  it('elects exactly one of three, hands over on release, and posts Events on the Lease', async () => {
    const lease = 'one-of-three';
    const cs = ['a', 'b', 'c'].map((id) => candidate(k.client, k.namespace, lease, id));
    for (const c of cs) c.elector.start();
    try {
      await eventually('someone leads', () => cs.some((c) => c.elector.isLeader()));
      // Several rounds of retries: never two leaders.
      for (let i = 0; i < 10; i++) {
        assert.equal(cs.filter((c) => c.elector.isLeader()).length, 1);
        await new Promise((r) => setTimeout(r, 100));
      }
      const leader = cs.find((c) => c.elector.isLeader()) as Candidate;
      const held = await k.client.get<Lease>(leasePath(k.namespace, lease));
      assert.equal(held?.spec?.holderIdentity, leader.elector.identity);
      assert.equal(held?.spec?.leaseDurationSeconds, 2);
      assert.match(held?.spec?.renewTime ?? '', /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);

      await leader.elector.stop();
      assert.equal(leader.elector.isLeader(), false);
      const rest = cs.filter((c) => c !== leader);
      // Released: a candidate takes it on its next try, well within the lease duration.
      await eventually('another leads after the release', () => rest.some((c) => c.elector.isLeader()), FAST.leaseDurationMs);
      const next = rest.find((c) => c.elector.isLeader()) as Candidate;
      assert.ok(order(`${leader.elector.identity} stopped`) < order(`${next.elector.identity} started`));
      const after = await k.client.get<Lease>(leasePath(k.namespace, lease));
      assert.equal(after?.spec?.holderIdentity, next.elector.identity);
      assert.equal(after?.spec?.leaseTransitions, (held?.spec?.leaseTransitions ?? 0) + 1);

      await eventually('Events on the Lease say who became leader and who stopped', async () => {
        const events = await k.client.request<{ items: { reason: string; message: string; involvedObject: { kind: string; name: string; uid?: string } }[] }>(
          'GET',
          `/api/v1/namespaces/${k.namespace}/events`,
          { query: { fieldSelector: `involvedObject.name=${lease}` } },
        );
        const messages = events.items.filter((e) => e.reason === 'LeaderElection' && e.involvedObject.kind === 'Lease').map((e) => e.message);
        return (
          messages.includes(`${leader.elector.identity} became leader`) &&
          messages.some((m) => m.startsWith(`${leader.elector.identity} stopped leading`)) &&
          messages.includes(`${next.elector.identity} became leader`)
        );
      });
    } finally {
      await Promise.all(cs.map((c) => c.elector.stop()));
    }
  });

  it('a leader that cannot renew stops acting before another can take over', async () => {
    const lease = 'cut-off';
    const relay = await startCuttableRelay(k.kubeconfigPath);
    const viaRelay = KubeClient.fromPath(relay.kubeconfigPath);
    const a = candidate(viaRelay, k.namespace, lease, 'cut-a');
    const b = candidate(k.client, k.namespace, lease, 'cut-b');
    try {
      a.elector.start();
      await eventually('a leads', () => a.elector.isLeader());
      b.elector.start();
      await new Promise((r) => setTimeout(r, 3 * FAST.retryPeriodMs));
      assert.equal(b.elector.isLeader(), false, 'b waits while a renews');
      relay.cut();
      await eventually('b leads once a\'s lease ran out', () => b.elector.isLeader(), 3 * FAST.leaseDurationMs);
      assert.equal(a.elector.isLeader(), false);
      assert.ok(order('cut-a stopped') < order('cut-b started'), history.join('; '));
      // a comes back and finds b holding the lease: it stays a candidate.
      relay.restore();
      await new Promise((r) => setTimeout(r, 4 * FAST.retryPeriodMs));
      assert.equal(a.elector.isLeader(), false);
      assert.equal(b.elector.isLeader(), true);
    } finally {
      await a.elector.stop();
      await b.elector.stop();
      viaRelay.close();
      await relay.close();
    }
  });

  it('a candidate takes a lease over only after it saw no renewal for the lease duration', async () => {
    // A stale record written by a holder that is gone: the clocks are not compared, so a
    // renewTime far in the past still counts as fresh until we have watched it for 2 s.
    const lease = 'stale-holder';
    await k.client.create(leasePath(k.namespace), {
      apiVersion: 'coordination.k8s.io/v1',
      kind: 'Lease',
      metadata: { name: lease },
      spec: { holderIdentity: 'gone', leaseDurationSeconds: 2, renewTime: '2001-07-09T10:41:55.000000Z', acquireTime: '2001-07-09T10:41:55.000000Z', leaseTransitions: 3 },
    });
    const c = candidate(k.client, k.namespace, lease, 'patient');
    const started = performance.now();
    c.elector.start();
    try {
      await eventually('the candidate takes the abandoned lease', () => c.elector.isLeader(), 3 * FAST.leaseDurationMs);
      assert.ok(performance.now() - started >= FAST.leaseDurationMs, 'not before a full lease duration of observation');
      const held = await k.client.get<Lease>(leasePath(k.namespace, lease));
      assert.equal(held?.spec?.holderIdentity, 'patient');
      assert.equal(held?.spec?.leaseTransitions, 4);
    } finally {
      await c.elector.stop();
    }
  });
});
