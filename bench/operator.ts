// `npm run bench -- operator`: the operator as users run it (its own process, the image's form:
// src/ compiled by tsc, `node dist/cli.js operator`) on a local control plane.
//  (a) deletions/s when N grants expire at once, against the raw DELETE rate of the same client
//      class and concurrency on the same API server in the same run (the ceiling);
//  (b) GC lag (deletion seen on a watch minus expiresAt) at a steady 100 expiries/s;
//  (c) the operator's RSS holding G grants and after a restart that lists them; alongside, as a
//      standby on the same Lease, the same from `node src/cli.ts` (Node's type stripping adds
//      ~25 MB of its own).
// Sizes: full N=10k, 30 s at 100/s, G=100k; --quick N=2k, 10 s, G=20k. KUBE_DRAC_BENCH_OPERATOR=a,b,c
// picks parts, KUBE_DRAC_BENCH_OPERATOR_GRANTS=G sets G (the full G=100k alone takes 2-5 min of
// creates on a shared 2-core machine).
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { GrantCache } from '../src/grants/cache.ts';
import { grantsPath } from '../src/grants/paths.ts';
import type { KubeClient } from '../src/kube/client.ts';
import { ensureNamespace, installCrds } from '../src/kube/crds.ts';
import { ControlPlane } from '../src/local/control-plane.ts';
import { grantBody, kill, scrape, spawnOperator, testAddress, writeOperatorConfig, type OperatorProcess } from '../harness/operator.ts';
import { percentile, type BenchOptions, type BenchResult } from './types.ts';

const GRACE_MS = 1000;
const CONCURRENCY = 16; // the operator's default deleteConcurrency, used for the ceiling too
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function createMany(client: KubeClient, namespace: string, count: number, expiresAtOf: (i: number) => number): Promise<number> {
  const started = Date.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: 48 }, async () => {
      for (let i = next++; i < count; i = next++) {
        const { name, address } = testAddress(i);
        await client.create(grantsPath(namespace), grantBody(name, address, expiresAtOf(i), `user${i}`));
      }
    }),
  );
  return (count / (Date.now() - started)) * 1000;
}

async function rawDeleteRate(client: KubeClient, namespace: string, count: number): Promise<number> {
  const started = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      for (let i = next++; i < count; i = next++) await client.delete(grantsPath(namespace, testAddress(i).name));
    }),
  );
  return (count / (performance.now() - started)) * 1000;
}

async function startOperator(
  dir: string,
  kubeconfig: string,
  namespace: string,
  opts: { identity?: string; cli?: string; env?: NodeJS.ProcessEnv; standby?: boolean } = {},
): Promise<{ proc: OperatorProcess; port: number }> {
  const identity = opts.identity ?? `bench-${namespace}`;
  const proc = spawnOperator(writeOperatorConfig(dir, identity, { namespace, kubeconfig, identity }), opts);
  const port = await proc.healthPort;
  while (!opts.standby && (await scrape(port, 'kubedrac_operator_leader')) !== 1) await sleep(50);
  return { proc, port };
}

const REPO = new URL('..', import.meta.url).pathname;

/** What the image runs: src/ compiled by tsc into dist/, next to the repo's node_modules. */
async function buildImageCli(dir: string): Promise<string> {
  const app = path.join(dir, 'app');
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ type: 'module' }));
  fs.symlinkSync(path.join(REPO, 'node_modules'), path.join(app, 'node_modules'), 'dir');
  const tsc = path.join(REPO, 'node_modules/typescript/bin/tsc');
  try {
    await promisify(execFile)(process.execPath, [tsc, '-p', 'tsconfig.build.json', '--outDir', path.join(app, 'dist')], { cwd: REPO });
  } catch (err) {
    // A type error elsewhere in src/ still emits JavaScript; only a missing entry point is fatal.
    console.warn(`tsc: ${(err as { stdout?: string }).stdout?.trim() ?? String(err)}`);
  }
  const cli = path.join(app, 'dist', 'cli.js');
  if (!fs.existsSync(cli)) throw new Error(`tsc wrote no ${cli}`);
  return cli;
}

/** A watch of our own: when each grant's deletion is seen, and its expiresAt. */
async function deletionWatch(client: KubeClient, namespace: string) {
  const cache = new GrantCache({ client, namespace });
  const expiresAt = new Map<string, number>();
  const deletedAt = new Map<string, number>();
  cache.on('upsert', (name: string, entry: { expiresAtMs: number }) => expiresAt.set(name, entry.expiresAtMs));
  cache.on('delete', (name: string) => deletedAt.set(name, Date.now()));
  await cache.start();
  return { cache, expiresAt, deletedAt };
}

function rssMb(pid: number): { rss: number; hwm: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { rss: kb('VmRSS') / 1024, hwm: kb('VmHWM') / 1024 };
}

/** RSS of a Node process that only imports the Kubernetes client (`client`: a module URL). */
async function importFloorMb(client: string): Promise<number> {
  const code = `await import(${JSON.stringify(client)}); await new Promise((r) => setTimeout(r, 1000)); console.log(process.memoryUsage().rss)`;
  const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', code]);
  return Number(stdout.trim()) / 2 ** 20;
}

export async function run({ quick }: BenchOptions): Promise<BenchResult[]> {
  const burst = quick ? 2000 : 10_000;
  const steadySeconds = quick ? 10 : 30;
  const big = Number(process.env.KUBE_DRAC_BENCH_OPERATOR_GRANTS) || (quick ? 20_000 : 100_000);
  const parts = new Set((process.env.KUBE_DRAC_BENCH_OPERATOR ?? 'a,b,c').split(','));
  const rows: BenchResult[] = [];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kube-drac-bench-op-'));
  const plane = new ControlPlane();
  await plane.start();
  const client = plane.client();
  const procs: OperatorProcess[] = [];
  try {
    await installCrds(client);
    // Warm-up: the API server's first writes to a new resource are slow.
    await ensureNamespace(client, 'bench-warm');
    await createMany(client, 'bench-warm', 200, () => Date.now() + 3_600_000);
    const image = { cli: await buildImageCli(dir), env: { ...process.env, NODE_ENV: 'production' } };

    if (parts.has('a')) {
      // The ceiling: plain DELETEs, 16 at a time, by the same client class. The machine is shared
      // and its speed drifts, so raw and ours alternate (raw, ours, raw, ...) and medians count.
      // Our watch on the namespace runs in both, so that only the operator's own work differs.
      let createRate = 0;
      let run = 0;
      const opCpu: number[] = [];
      const opPeakMb: number[] = [];
      const rawRun = async (): Promise<number> => {
        const namespace = `bench-raw-${++run}`;
        await ensureNamespace(client, namespace);
        const started = Date.now();
        await createMany(client, namespace, burst, () => Date.now() + 3_600_000);
        createRate = (burst / (Date.now() - started)) * 1000;
        const watch = await deletionWatch(client, namespace);
        const rate = await rawDeleteRate(client, namespace, burst);
        await watch.cache.stop();
        return rate;
      };
      const oursRun = async (): Promise<{ rate: number; firstMs: number }> => {
        const namespace = `bench-burst-${++run}`;
        await ensureNamespace(client, namespace);
        const op = await startOperator(dir, plane.kubeconfigPath, namespace, image);
        procs.push(op.proc);
        const watch = await deletionWatch(client, namespace);
        // All expire at the same instant, after the creates are done.
        const expiresAt = Date.now() + Math.ceil((burst / createRate) * 1500) + 3000;
        await createMany(client, namespace, burst, () => expiresAt);
        const dueAt = expiresAt + GRACE_MS;
        const cpuBefore = await scrape(op.port, 'kubedrac_process_cpu_seconds_total');
        while (watch.deletedAt.size < burst) await sleep(20);
        opCpu.push((await scrape(op.port, 'kubedrac_process_cpu_seconds_total')) - cpuBefore);
        opPeakMb.push(rssMb(op.proc.child.pid as number).hwm);
        const times = [...watch.deletedAt.values()];
        await watch.cache.stop();
        await kill(op.proc, 'SIGTERM');
        return { rate: (burst / Math.max(1, Math.max(...times) - dueAt)) * 1000, firstMs: Math.min(...times) - dueAt };
      };
      const rounds = 2;
      const raws = [await rawRun()];
      const ours: { rate: number; firstMs: number }[] = [];
      for (let r = 0; r < rounds; r++) {
        ours.push(await oursRun());
        raws.push(await rawRun());
      }
      const median = (xs: number[]) => {
        const s = [...xs].sort((x, y) => x - y);
        const mid = s.length >> 1;
        return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
      };
      const ceiling = median(raws);
      const value = median(ours.map((o) => o.rate));
      rows.push({
        name: `(a) deletions/s, ${burst} expiring at once`,
        value,
        unit: 'deletes/s',
        peer: ceiling,
        ratio: value / ceiling,
        target: '>= 0.8x',
        note: `medians; raw DELETE x${CONCURRENCY}: ${raws.map((x) => x.toFixed(0)).join(', ')}; ours: ${ours.map((o) => o.rate.toFixed(0)).join(', ')}; first deletion ${ours.map((o) => o.firstMs).join(', ')} ms after due; operator CPU ${opCpu.map((c) => c.toFixed(2)).join(', ')} s, peak RSS ${opPeakMb.map((m) => m.toFixed(0)).join(', ')} MB`,
      });
    }

    if (parts.has('b')) {
      await ensureNamespace(client, 'bench-steady');
      const op = await startOperator(dir, plane.kubeconfigPath, 'bench-steady', image);
      procs.push(op.proc);
      const watch = await deletionWatch(client, 'bench-steady');
      const count = steadySeconds * 100;
      const start = Date.now() + Math.ceil((count / 500) * 1000) + 3000;
      await createMany(client, 'bench-steady', count, (i) => start + i * 10);
      while (watch.deletedAt.size < count) await sleep(50);
      const lags = [...watch.deletedAt].map(([name, at]) => (at - (watch.expiresAt.get(name) as number)) / 1000).sort((x, y) => x - y);
      const note = `grace ${GRACE_MS / 1000} s included; ${count} grants over ${steadySeconds} s`;
      rows.push({ name: '(b) GC lag p50 at 100 expiries/s', value: percentile(lags, 50), unit: 's', note });
      rows.push({ name: '(b) GC lag p99 at 100 expiries/s', value: percentile(lags, 99), unit: 's', target: `<= ${(GRACE_MS + 2000) / 1000} s (grace + 2 s)`, note });
      rows.push({ name: '(b) GC lag max', value: lags[lags.length - 1] as number, unit: 's' });
      await watch.cache.stop();
      await kill(op.proc, 'SIGTERM');
    }

    if (parts.has('c')) {
      await ensureNamespace(client, 'bench-rss');
      const { cli } = image;
      const compiled = await startOperator(dir, plane.kubeconfigPath, 'bench-rss', { identity: 'bench-rss-image', ...image });
      procs.push(compiled.proc);
      const source = await startOperator(dir, plane.kubeconfigPath, 'bench-rss', { identity: 'bench-rss-source', standby: true });
      procs.push(source.proc);
      const forms = [
        { name: 'as the image runs it (dist/cli.js)', op: compiled, target: true },
        { name: 'as `node src/cli.ts` (type stripping), standby', op: source, target: false },
      ];
      const idle = forms.map((f) => rssMb(f.op.proc.child.pid as number));
      const floors = [await importFloorMb(pathToFileURL(path.join(path.dirname(cli), 'kube/client.js')).href), await importFloorMb(new URL('../src/kube/client.ts', import.meta.url).href)];
      // Future expiries spread over a day: one timer per grant, as in production.
      const now = Date.now();
      await createMany(client, 'bench-rss', big, (i) => now + 3_600_000 + (i % 86_400) * 1000);
      for (const f of forms) while ((await scrape(f.op.port, 'kubedrac_grant_cache_entries')) < big) await sleep(200);
      await sleep(2000);
      for (const [i, f] of forms.entries()) {
        const held = rssMb(f.op.proc.child.pid as number);
        const heap = (await scrape(f.op.port, 'kubedrac_nodejs_heap_size_used_bytes')) / 2 ** 20;
        const heapTotal = (await scrape(f.op.port, 'kubedrac_nodejs_heap_size_total_bytes')) / 2 ** 20;
        const idleRss = (idle[i] as { rss: number }).rss;
        rows.push({
          name: `(c) operator RSS with ${big} grants, ${f.name}`,
          value: held.rss,
          unit: 'MB',
          target: f.target && big === 100_000 ? '<= 100 MB' : undefined,
          note: `peak ${held.hwm.toFixed(0)} MB; ${idleRss.toFixed(0)} MB with none; JS heap used ${heap.toFixed(0)} of ${heapTotal.toFixed(0)} MB`,
        });
        if (big !== 100_000) {
          const per100k = idleRss + ((held.rss - idleRss) / big) * 100_000;
          rows.push({ name: `(c) the same, extrapolated to 100k`, value: per100k, unit: 'MB', target: f.target ? '<= 100 MB' : undefined, note: `linear from ${big}` });
        }
      }
      // A restart finds the grants there: its first list (not a trickle of watch events) fills it.
      const restarted = await startOperator(dir, plane.kubeconfigPath, 'bench-rss', { identity: 'bench-rss-restarted', ...image, standby: true });
      procs.push(restarted.proc);
      while ((await scrape(restarted.port, 'kubedrac_grant_cache_entries')) < big) await sleep(200);
      await sleep(2000);
      const relisted = rssMb(restarted.proc.child.pid as number);
      rows.push({ name: `(c) operator RSS after a restart that lists ${big} grants (dist/cli.js)`, value: relisted.rss, unit: 'MB', note: `peak ${relisted.hwm.toFixed(0)} MB` });
      rows.push({ name: '(c) floor: RSS of node importing kube/client only (dist/, src/)', value: floors[0] as number, unit: 'MB', note: `${(floors[1] as number).toFixed(0)} MB from src/ with type stripping` });
      await kill(restarted.proc, 'SIGTERM');
      await kill(source.proc, 'SIGTERM');
      await kill(compiled.proc, 'SIGTERM');
    }
  } finally {
    await Promise.all(procs.map((p) => kill(p)));
    client.close();
    await plane.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}
