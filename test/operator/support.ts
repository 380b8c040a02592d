// Helpers for the operator and leader-election tests on the real API server. The operator process
// and grant fixtures the benchmark shares live in harness/operator.ts.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { grantBody, testAddress } from '../../harness/operator.ts';
import { grantsPath } from '../../src/grants/paths.ts';
import type { KubeClient } from '../../src/kube/client.ts';

export async function createGrant(client: KubeClient, namespace: string, i: number, expiresAtMs: number): Promise<string> {
  const { name, address } = testAddress(i);
  await client.create(grantsPath(namespace), grantBody(name, address, expiresAtMs));
  return name;
}

export async function grantExists(client: KubeClient, namespace: string, name: string): Promise<boolean> {
  return (await client.get(grantsPath(namespace, name))) !== undefined;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * A TCP relay to the real API server that the test can cut (every connection dropped, new ones
 * refused) and restore: one process losing the API server while the others keep it.
 */
export interface CuttableRelay {
  port: number;
  /** A copy of `kubeconfigPath` that goes through the relay. */
  kubeconfigPath: string;
  cut(): void;
  restore(): void;
  close(): Promise<void>;
}

export async function startCuttableRelay(kubeconfigPath: string): Promise<CuttableRelay> {
  const kubeconfig = JSON.parse(fs.readFileSync(kubeconfigPath, 'utf8')) as { clusters: { cluster: { server: string } }[] };
  const cluster = kubeconfig.clusters[0]?.cluster;
  assert.ok(cluster, 'kubeconfig has a cluster');
  const target = new URL(cluster.server);
  let open = true;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    if (!open) {
      client.destroy();
      return;
    }
    const upstream = net.connect(Number(target.port), target.hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kube-drac-relay-'));
  cluster.server = `https://127.0.0.1:${port}`;
  const relayKubeconfig = path.join(dir, 'kubeconfig');
  fs.writeFileSync(relayKubeconfig, JSON.stringify(kubeconfig), { mode: 0o600 });
  return {
    port,
    kubeconfigPath: relayKubeconfig,
    cut() {
      open = false;
      for (const s of sockets) s.destroy();
    },
    restore() {
      open = true;
    },
    async close() {
      open = false;
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

export { grantBody, kill, scrape, spawnOperator, testAddress, writeOperatorConfig, type OperatorProcess } from '../../harness/operator.ts';
