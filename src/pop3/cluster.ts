// pop3.workers > 1: the POP3 role as a primary and N worker processes (node:cluster), the way
// Dovecot spreads sessions over processes so that one replica uses all its cores. Each worker
// listens on the role's ports itself (SO_REUSEPORT): the kernel spreads the connections over the
// workers' sockets, and a connection reaches its worker without a trip through the primary (node's
// round robin hands each socket over with an IPC message and its acknowledgement, ~0.1-0.2 ms
// before the greeting here). The primary holds what must be one per
// replica (the grant store, the session limits) and relays failed logins to every worker's
// throttle (shared.ts), answers /readyz for all (ready when every worker is), sums their metrics,
// and replaces a worker that dies. The messages on the channel are in ipc.ts.
import cluster, { type Worker } from 'node:cluster';
import net from 'node:net';
import { AggregatorRegistry } from 'prom-client';
import type { GrantRenewer } from '../grants/types.ts';
import { ConnectionLimiter } from '../net/limits.ts';
import type { Logger } from '../observability/log.ts';
import { registry } from '../observability/metrics.ts';
import { pop3ConfigToWire, type Pop3Config, type Pop3ConfigWire } from './config.ts';
import type { Pop3Server } from './server.ts';
import type { MetricsJson, PrimaryMessage, WorkerMessage } from './ipc.ts';
import { serveSharedState } from './shared.ts';

export const WORKER_ENV = 'KUBE_DRAC_POP3_WORKER';
export const STATUS_INTERVAL_MS = 1000;
const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 10_000;
const RESTART_DELAY_MS = 1000;
/** A worker that keeps failing to start is retried less and less often, down to once a minute. */
const MAX_RESTART_DELAY_MS = 60_000;

export interface WorkerSetup {
  config: Pop3ConfigWire;
  logLevel: 'error' | 'warn' | 'info' | 'debug';
}

export interface Pop3Cluster extends Pop3Server {
  /** Every process's metrics, summed (Prometheus text). */
  metrics(): Promise<string>;
}

interface Slot {
  worker: Worker;
  listening: boolean;
  reasons: string[];
  reportedAt: number;
}

export interface Pop3ClusterDeps {
  renewer: GrantRenewer;
  log: Logger;
  logLevel: WorkerSetup['logLevel'];
}

export async function startPop3Cluster(config: Pop3Config, deps: Pop3ClusterDeps): Promise<Pop3Cluster> {
  const { log } = deps;
  const shared = {
    renewer: deps.renewer,
    limiter: new ConnectionLimiter({ maxTotal: config.limits.maxSessions, maxPerAddress: config.limits.maxSessionsPerAddress }),
  };
  // Port 0 (tests, benchmarks): the primary finds a free port by binding one of the group itself,
  // and closes it once the workers have theirs (nobody knows the port before then).
  const placeholders: net.Server[] = [];
  const portFor = async (port: number): Promise<number> => {
    if (port !== 0) return port;
    const server = net.createServer({ pauseOnConnect: true }, (socket) => socket.destroy());
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ port: 0, host: config.listen.host, exclusive: true, reusePort: true }, () => resolve());
    });
    placeholders.push(server);
    return (server.address() as net.AddressInfo).port;
  };
  const closePlaceholders = () => Promise.all(placeholders.splice(0).map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  const bound = {
    ...config,
    listen: { ...config.listen, port: await portFor(config.listen.port) },
    implicitTlsPort: config.implicitTlsPort === undefined ? undefined : await portFor(config.implicitTlsPort),
  };
  const setup: WorkerSetup = { config: pop3ConfigToWire(bound), logLevel: deps.logLevel };
  // The sources run as .ts (tests, npm start) and as compiled .js (the image): name the sibling.
  const exec = new URL(import.meta.url.endsWith('.ts') ? './worker.ts' : './worker.js', import.meta.url).pathname;
  cluster.setupPrimary({ exec, args: [], execArgv: process.execArgv.filter((a) => !a.startsWith('--test')) });

  const slots: Slot[] = [];
  /** Per slot: how long to wait before its next restart (doubled by each exit before listening). */
  const restartDelays: number[] = [];
  let closing = false;
  const metricWaits = new Map<number, (json: MetricsJson) => void>();
  let nextMetricsId = 1;
  let ports: { port: number; tlsPort: number | undefined } | undefined;

  /** Fork the worker for slot `index`; resolves once it listens, rejects if it cannot start. */
  const fork = (index: number): Promise<void> =>
    new Promise((resolve, reject) => {
      const worker = cluster.fork({ [WORKER_ENV]: JSON.stringify(setup) });
      const slot: Slot = { worker, listening: false, reasons: ['starting'], reportedAt: Date.now() };
      slots[index] = slot;
      const sharing = serveSharedState(worker, shared, (failure) => {
        for (const other of slots) if (other !== slot && other.worker.isConnected()) other.worker.send({ kd: 'peer-login-failed', ...failure } satisfies PrimaryMessage);
      });
      const timer = setTimeout(() => {
        reject(new Error(`pop3 worker ${index + 1} did not start within ${START_TIMEOUT_MS} ms`));
        worker.kill();
      }, START_TIMEOUT_MS);
      worker.on('message', (message: WorkerMessage) => {
        switch (message.kd) {
          case 'listening':
            clearTimeout(timer);
            slot.listening = true;
            restartDelays[index] = RESTART_DELAY_MS;
            ports ??= { port: message.port, tlsPort: message.tlsPort };
            resolve();
            return;
          case 'start-failed':
            clearTimeout(timer);
            reject(new Error(message.error));
            return;
          case 'status':
            slot.reasons = message.reasons;
            slot.reportedAt = Date.now();
            return;
          case 'metrics':
            metricWaits.get(message.id)?.(message.json);
            return;
          default:
            return; // the shared-state requests: serveSharedState's
        }
      });
      worker.on('exit', (code, signal) => {
        clearTimeout(timer);
        sharing.releaseAll();
        slot.listening = false;
        if (closing) return;
        reject(new Error(`pop3 worker ${index + 1} exited (${signal ?? code}) while starting`));
        const delayMs = restartDelays[index] ?? RESTART_DELAY_MS;
        restartDelays[index] = Math.min(2 * delayMs, MAX_RESTART_DELAY_MS);
        log.error('pop3_worker_exited', { worker: index + 1, code, signal, restartInMs: delayMs });
        setTimeout(() => {
          if (!closing) fork(index).catch((err: unknown) => log.error('pop3_worker_restart_failed', { worker: index + 1, error: err as Error }));
        }, delayMs).unref();
      });
    });

  const stop = async () => {
    closing = true;
    await closePlaceholders();
    await Promise.all(
      slots.map(
        (slot) =>
          new Promise<void>((resolve) => {
            if (slot.worker.isDead()) return resolve();
            const timer = setTimeout(() => slot.worker.process.kill('SIGKILL'), STOP_TIMEOUT_MS);
            slot.worker.once('exit', () => {
              clearTimeout(timer);
              resolve();
            });
            if (slot.worker.isConnected()) slot.worker.send({ kd: 'close' } satisfies PrimaryMessage);
            else slot.worker.process.kill('SIGTERM');
          }),
      ),
    );
  };

  try {
    await Promise.all(Array.from({ length: config.workers }, (_, i) => fork(i)));
    await closePlaceholders();
  } catch (err) {
    await stop();
    throw err;
  }
  const { port, tlsPort } = ports as NonNullable<typeof ports>;
  log.info('pop3_listening', { host: config.listen.host, port, tlsPort, workers: config.workers });

  return {
    port,
    tlsPort,
    notReadyReasons: () => {
      if (closing) return ['listeners closed'];
      const reasons: string[] = [];
      slots.forEach((slot, i) => {
        const worker = `worker ${i + 1}`;
        if (!slot.listening) reasons.push(`${worker}: not running`);
        else if (Date.now() - slot.reportedAt > 5 * STATUS_INTERVAL_MS) reasons.push(`${worker}: no status for ${Date.now() - slot.reportedAt} ms`);
        else for (const r of slot.reasons) reasons.push(`${worker}: ${r}`);
      });
      return reasons;
    },
    metrics: async () => {
      const live = slots.filter((s) => s.listening && s.worker.isConnected());
      const answers = await Promise.all(
        live.map(
          (slot) =>
            new Promise<MetricsJson>((resolve) => {
              const id = nextMetricsId++;
              // A worker that does not answer in time is left out of this scrape.
              const timer = setTimeout(() => {
                metricWaits.delete(id);
                resolve([]);
              }, 2000);
              metricWaits.set(id, (json) => {
                clearTimeout(timer);
                metricWaits.delete(id);
                resolve(json);
              });
              slot.worker.send({ kd: 'collect-metrics', id } satisfies PrimaryMessage);
            }),
        ),
      );
      return AggregatorRegistry.aggregate([await registry.getMetricsAsJSON(), ...answers]).metrics();
    },
    close: stop,
  };
}
