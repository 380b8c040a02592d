// Revocation on credential change (`npm run bench -- credential-revocation`, issue 14 §2): how long
// one revocation pass takes (list the user's grants by label, list the unlabelled ones, delete
// each with preconditions, post an Event each) with many other users' grants in the namespace,
// and with two replicas revoking the same user at once (as two pop3 replicas do: one Event per
// grant). The ceiling: the same client's plain DELETEs of as many grants, back to back, against
// the same local API server in the same run. The settle time (1 s) and the file watch (200 ms) come
// on top; test/revoke/credential-change.test.ts measures the whole way from the file change.
import { GrantStore } from '../src/grants/store.ts';
import { listGrants } from '../src/grants/list.ts';
import { grantsPath } from '../src/grants/paths.ts';
import type { KubeClient } from '../src/kube/client.ts';
import { ensureNamespace, installCrds } from '../src/kube/crds.ts';
import { ControlPlane } from '../src/local/control-plane.ts';
import type { Logger } from '../src/observability/log.ts';
import { CredentialRevoker } from '../src/revoke/revoker.ts';
import { percentile, type BenchOptions, type BenchResult } from './types.ts';

const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {}, child: () => quiet };

/** `count` grants of `user` on distinct 10.a.b.c addresses from number `first`, written as logins write them. */
async function grantMany(store: GrantStore, user: string, first: number, count: number): Promise<void> {
  const next = { i: 0 };
  await Promise.all(
    Array.from({ length: 32 }, async () => {
      for (let i = next.i++; i < count; i = next.i++) {
        const n = first + i;
        await store.renew(`10.${Math.floor(n / 62_500) + 1}.${Math.floor(n / 250) % 250}.${(n % 250) + 1}`, user, 'pop3');
      }
    }),
  );
}

async function eventsOf(client: KubeClient, namespace: string): Promise<number> {
  const list = await client.request<{ items: Array<{ involvedObject: { kind: string } }> }>('GET', `/api/v1/namespaces/${namespace}/events`);
  return list.items.filter((e) => e.involvedObject.kind === 'RelayGrant').length;
}

export async function run({ quick }: BenchOptions): Promise<BenchResult[]> {
  const others = quick ? 1000 : 10_000;
  const sizes = quick ? [1, 20] : [1, 20, 200];
  const rounds = quick ? 3 : 5;
  const plane = new ControlPlane();
  await plane.start();
  const rows: BenchResult[] = [];
  const client = plane.client();
  try {
    await installCrds(client);
    const namespace = 'bench-credential-revocation';
    await ensureNamespace(client, namespace);
    const store = new GrantStore({ client, namespace, ttlMs: 3_600_000, renewIntervalMs: 60_000, ipv6PrefixLength: 64, log: quiet });
    // Everyone else's grants: 200 users, `others` addresses.
    const filling = performance.now();
    for (let u = 0; u < 200; u++) await grantMany(store, `user${u}`, u * (others / 200), others / 200);
    const fillSeconds = (performance.now() - filling) / 1000;
    const revoker = new CredentialRevoker({ client, namespace, log: quiet, settleMs: 0 });
    let base = others;
    for (const size of sizes) {
      const passes: number[] = [];
      const ceilings: number[] = [];
      for (let r = 0; r < rounds; r++) {
        await grantMany(store, 'victim', base, size);
        const t0 = performance.now();
        const deleted = await revoker.revoke({ user: 'victim', reason: 'password_changed' });
        passes.push(performance.now() - t0);
        if (deleted.length !== size) throw new Error(`revoked ${deleted.length} of ${size}`);
        // The ceiling: the same number of plain DELETEs by name, no list, no Event.
        await grantMany(store, 'victim', base + size, size);
        const names = (await listGrants(client, namespace, undefined)).filter((g) => g.spec.user === 'victim').map((g) => g.metadata.name);
        const t1 = performance.now();
        for (const name of names) await client.delete(grantsPath(namespace, name));
        ceilings.push(performance.now() - t1);
        base += 2 * size;
      }
      passes.sort((a, b) => a - b);
      ceilings.sort((a, b) => a - b);
      const p50 = percentile(passes, 50);
      const c50 = percentile(ceilings, 50);
      rows.push({
        name: `revocation pass, ${size} grant(s) of the user among ${others} others`,
        value: p50,
        unit: 'ms p50',
        peer: c50,
        ratio: c50 / p50,
        note: `max ${passes.at(-1)?.toFixed(0)} ms; peer: ${size} plain DELETEs by name (no list, no Event), p50 of ${rounds}`,
      });
    }
    // Two replicas revoking the same user at once: every grant goes, one Event each.
    const size = sizes.at(-1) as number;
    await grantMany(store, 'shared', base, size);
    const eventsBefore = await eventsOf(client, namespace);
    const second = new CredentialRevoker({ client, namespace, log: quiet, settleMs: 0 });
    const t2 = performance.now();
    const [a, b] = await Promise.all([revoker.revoke({ user: 'shared', reason: 'removed' }), second.revoke({ user: 'shared', reason: 'removed' })]);
    const both = performance.now() - t2;
    const events = (await eventsOf(client, namespace)) - eventsBefore;
    const left = (await listGrants(client, namespace)).filter((g) => g.spec.user === 'shared').length;
    rows.push({
      name: `two replicas revoking ${size} grants of one user at once`,
      value: both,
      unit: 'ms',
      note: `deleted ${a.length} + ${b.length}, ${left} left, ${events} Events (one per grant expected)`,
    });
    rows.push({ name: `filling: ${others} grants of 200 users through GrantStore`, value: others / fillSeconds, unit: 'writes/s' });
    store.close();
  } finally {
    client.close();
    await plane.stop();
  }
  return rows;
}
