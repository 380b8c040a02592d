// The per-process HTTP endpoint: /metrics for Prometheus, /healthz (alive) and /readyz (ready to serve).
import type { AddressInfo } from 'node:net';
import { registry } from './metrics.ts';

// Not `import http from 'node:http'`: an ES import of node:http reads its WebSocket getter, which
// loads Node's bundled undici (~10 MB of RSS in every process).
const http = process.getBuiltinModule('node:http');

export interface HealthServerOptions {
  host: string;
  port: number;
  /** Ready means: this role would do its job correctly now (e.g. the grant cache is synced). */
  ready: () => boolean;
  /** Alive means: the process is not wedged. Defaults to always true. */
  alive?: () => boolean;
  /** The /metrics text; defaults to this process's registry (a role with worker processes sums theirs). */
  metrics?: () => Promise<string>;
}

export interface HealthServer {
  readonly port: number;
  close(): Promise<void>;
}

export async function startHealthServer(opts: HealthServerOptions): Promise<HealthServer> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (path === '/metrics') {
      (opts.metrics ?? (() => registry.metrics()))().then(
        (body) => res.writeHead(200, { 'content-type': registry.contentType }).end(body),
        (err: unknown) => res.writeHead(500).end(String(err)),
      );
    } else if (path === '/healthz' || path === '/livez') {
      const ok = opts.alive ? opts.alive() : true;
      res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' }).end(ok ? 'ok\n' : 'not alive\n');
    } else if (path === '/readyz') {
      const ok = opts.ready();
      res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' }).end(ok ? 'ok\n' : 'not ready\n');
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
