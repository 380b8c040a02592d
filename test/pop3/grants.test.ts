// Logins against the real API server (run with `npm test -- test/pop3/grants.test.ts`): a
// successful login creates a RelayGrant that kubectl shows, a failed one creates none, and a
// write while the API server cannot be reached does not fail the login and lands afterwards.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as yaml from 'js-yaml';
import { GrantStore } from '../../src/grants/store.ts';
import type { RelayGrant } from '../../src/grants/types.ts';
import { KubeClient } from '../../src/kube/client.ts';
import { kubeForTest, type TestKube } from '../support/kube.ts';
import { RawClient, makeWorld, startServer, type World } from './support.ts';
import { eventually } from '../support/eventually.ts';

/** A TCP path to the API server that the test can cut and restore (a real outage, not a fake API). */
class CuttableLink {
  private readonly server: net.Server;
  private readonly open = new Set<net.Socket>();
  up = true;
  constructor(target: { host: string; port: number }) {
    this.server = net.createServer((inbound) => {
      if (!this.up) {
        inbound.destroy();
        return;
      }
      const outbound = net.connect(target.port, target.host);
      for (const s of [inbound, outbound]) {
        this.open.add(s);
        s.on('close', () => this.open.delete(s));
        s.on('error', () => undefined);
      }
      inbound.pipe(outbound).pipe(inbound);
    });
  }
  listen(): Promise<number> {
    return new Promise((resolve) => this.server.listen(0, '127.0.0.1', () => resolve((this.server.address() as net.AddressInfo).port)));
  }
  cut(): void {
    this.up = false;
    for (const s of this.open) s.destroy();
  }
  restore(): void {
    this.up = true;
  }
  close(): void {
    this.cut();
    this.server.close();
  }
}

/** A copy of the test kubeconfig whose server URL goes through `port` on loopback. */
function kubeconfigVia(original: string, port: number, dir: string): string {
  const doc = yaml.load(fs.readFileSync(original, 'utf8')) as { clusters: Array<{ cluster: { server: string } }> };
  for (const c of doc.clusters) {
    const url = new URL(c.cluster.server);
    url.hostname = '127.0.0.1';
    url.port = String(port);
    c.cluster.server = url.toString().replace(/\/$/, '');
  }
  const file = path.join(dir, 'kubeconfig-via-link');
  fs.writeFileSync(file, yaml.dump(doc), { mode: 0o600 });
  return file;
}

async function grantsIn(kube: TestKube): Promise<RelayGrant[]> {
  const out = JSON.parse(await kube.kubectl('get', 'relaygrants', '-o', 'json')) as { items: RelayGrant[] };
  return out.items;
}

describe('POP3 logins and RelayGrants on the real API server', () => {
  let kube: TestKube;
  let world: World;
  before(async () => {
    kube = await kubeForTest('pop3-grants');
    world = makeWorld('grants-kube');
  });
  after(async () => {
    await kube.cleanup();
    world.cleanup();
  });

  it('a successful login creates a grant for the client address; a failed login creates none', async () => {
    const store = new GrantStore({ client: kube.client, namespace: kube.namespace, ttlMs: 30 * 60_000, renewIntervalMs: 5 * 60_000, ipv6PrefixLength: 64 });
    // A fresh API server's first writes to a new resource are slow (storage and CEL set-up), longer
    // than the login waits: warm it up first, so that "+OK waited for the write" is what is tested.
    await eventually('a first grant write', async () => (await store.renew('192.0.2.250', 'warm-up', 'pop3').catch(() => 'failed')) !== 'failed', 60_000);
    const s = await startServer(world, { allowPlaintextAuth: true, trustedProxies: ['127.0.0.1'] }, store);
    try {
      const login = async (client: string, password: string) => {
        const c = await RawClient.connect(s.server.port, { greeting: false });
        c.send(`PROXY TCP4 ${client} 127.0.0.1 40000 110\r\n`);
        await c.line();
        const r = await c.login('carol', password);
        await c.cmd('QUIT');
        return r;
      };
      assert.match(await login('192.0.2.10', world.passwords.carol), /^\+OK/);
      assert.match(await login('192.0.2.11', 'wrong'), /^-ERR \[AUTH\]/);
      // The +OK waited for the write: the grant is there now, not eventually.
      const grants = (await grantsIn(kube)).filter((g) => g.spec.user !== 'warm-up');
      assert.deepEqual(grants.map((g) => g.metadata.name), ['v4-192.0.2.10']);
      const g = grants[0] as RelayGrant;
      assert.equal(g.spec.address, '192.0.2.10');
      assert.equal(g.spec.user, 'carol');
      assert.equal(g.spec.source, 'pop3');
      assert.ok(Date.parse(g.spec.expiresAt) > Date.now() + 25 * 60_000);
      const table = await kube.kubectl('get', 'rg');
      assert.match(table, /v4-192\.0\.2\.10\s+192\.0\.2\.10\s+carol\s+pop3/);
    } finally {
      await s.close();
      store.close();
    }
  });

  it('a login while the API server cannot be reached succeeds, and its grant lands once it can', async () => {
    const target = new URL((yaml.load(fs.readFileSync(kube.kubeconfigPath, 'utf8')) as { clusters: Array<{ cluster: { server: string } }> }).clusters[0]!.cluster.server);
    const link = new CuttableLink({ host: target.hostname.replace(/^\[|\]$/g, ''), port: Number(target.port || 443) });
    const port = await link.listen();
    const client = KubeClient.fromPath(kubeconfigVia(kube.kubeconfigPath, port, world.dir));
    const store = new GrantStore({ client, namespace: kube.namespace, ttlMs: 30 * 60_000, renewIntervalMs: 5 * 60_000, ipv6PrefixLength: 64 });
    const s = await startServer(world, { allowPlaintextAuth: true, trustedProxies: ['127.0.0.1'], loginWaitForGrant: '300ms' }, store);
    try {
      link.cut();
      const c = await RawClient.connect(s.server.port, { greeting: false });
      c.send('PROXY TCP4 198.51.100.20 127.0.0.1 40000 110\r\n');
      await c.line();
      assert.match(await c.login('carol', world.passwords.carol), /^\+OK/);
      await c.cmd('QUIT');
      assert.ok(!(await grantsIn(kube)).some((g) => g.metadata.name === 'v4-198.51.100.20'));
      link.restore();
      await eventually('the retried grant', async () => (await grantsIn(kube)).some((g) => g.metadata.name === 'v4-198.51.100.20'), 60_000);
    } finally {
      await s.close();
      store.close();
      client.close();
      link.close();
    }
  });
});
