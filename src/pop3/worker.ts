// One POP3 worker process (pop3.workers > 1), forked by cluster.ts: the sessions on its share of
// the connections (its own listening sockets, SO_REUSEPORT on the role's ports), with grants and session limits asked of the primary and a throttle that every
// worker's failures reach (shared.ts).
// It tells the primary its ports once, then its readiness every second, and stops when told to
// or when the primary is gone.
import cluster from 'node:cluster';
import { createLogger, setLogLevel } from '../observability/log.ts';
import { collectProcessMetrics, registry } from '../observability/metrics.ts';
import { pop3ConfigFromWire } from './config.ts';
import { startPop3Server, type Pop3Server } from './server.ts';
import { STATUS_INTERVAL_MS, WORKER_ENV, type WorkerSetup } from './cluster.ts';
import type { PrimaryMessage, WorkerMessage } from './ipc.ts';
import { sharedStateOverIpc } from './shared.ts';

const setup = JSON.parse(process.env[WORKER_ENV] ?? '{}') as WorkerSetup;
setLogLevel(setup.logLevel);
collectProcessMetrics();
const log = createLogger('pop3').child({ worker: cluster.worker?.id ?? 0 });
const send = (message: WorkerMessage) => process.send?.(message);

let server: Pop3Server | undefined;
let stopping: Promise<void> | undefined;
const stop = () =>
  (stopping ??= (async () => {
    await server?.close();
    process.exit(0);
  })());

process.on('message', (message: PrimaryMessage) => {
  if (message.kd === 'close') void stop();
  else if (message.kd === 'collect-metrics') void registry.getMetricsAsJSON().then((json) => send({ kd: 'metrics', id: message.id, json }));
});
// The primary coordinates shutdown; a Ctrl-C reaches the whole process group, so leave it to it.
process.on('SIGINT', () => undefined);
process.on('SIGTERM', () => void stop());
process.on('disconnect', () => void stop());

try {
  const config = pop3ConfigFromWire(setup.config);
  const shared = sharedStateOverIpc({ send, on: (event, listener) => process.on(event, listener) }, config.login);
  server = await startPop3Server(config, { ...shared, log, reusePort: true });
} catch (err) {
  send({ kd: 'start-failed', error: (err as Error).message });
  process.exit(1);
}
const running = server;
send({ kd: 'listening', port: running.port, tlsPort: running.tlsPort });
const report = () => send({ kd: 'status', reasons: running.notReadyReasons() });
report();
setInterval(report, STATUS_INTERVAL_MS).unref();
