// A small Kubernetes REST client: credentials from ./kubeconfig.ts (client-node's rules and, for
// exec plugins and auth providers, its KubeConfig), and our own keep-alive HTTP agent for the
// calls. We keep the request and watch loops in our hands so that timeouts, retries and reconnects
// are ours to decide (client-node 2.x aborts every watch after 30 s and may back off up to 30 s
// before reconnecting; a gate cannot wait that long).
import type http from 'node:http';
import type https from 'node:https';
import { loadKubeConfig, type KubeCredentials } from './kubeconfig.ts';

export { loadKubeConfig, type KubeCredentials } from './kubeconfig.ts';

// Not `import http from 'node:http'`: an ES import of a builtin reads every export, and
// node:http's WebSocket getter then loads Node's bundled undici (~10 MB of RSS) for nothing.
const { Agent: HttpAgent, request: httpRequest } = process.getBuiltinModule('node:http');
const { Agent: HttpsAgent, request: httpsRequest } = process.getBuiltinModule('node:https');

export class KubeApiError extends Error {
  override readonly name = 'KubeApiError';
  /** HTTP status, or 0 when the server could not be reached. */
  readonly status: number;
  /** The Status object's `reason` (e.g. `NotFound`, `Conflict`, `AlreadyExists`, `Expired`). */
  readonly reason: string | undefined;
  constructor(status: number, reason: string | undefined, message: string, options?: ErrorOptions) {
    super(message, options);
    this.status = status;
    this.reason = reason;
  }
}

export interface RequestOptions {
  body?: unknown;
  contentType?: string;
  query?: Record<string, string | number | boolean | undefined>;
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface WatchEvent<T> {
  type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';
  object: T;
}

export type WatchHandler<T> = (event: WatchEvent<T>) => void;

const AUTH_REFRESH_MS = 60_000;
const DEFAULT_TIMEOUT_MS = 10_000;
/** Until a watch's response headers (the server may first wait up to a few seconds for its cache). */
const WATCH_ANSWER_TIMEOUT_MS = 30_000;
/** Idle time before TCP keep-alive probes on a watch (libuv then probes every 1 s, 10 times). */
const WATCH_KEEPALIVE_DELAY_MS = 10_000;

function queryString(query: RequestOptions['query']): string {
  if (!query) return '';
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v !== undefined) params.set(k, String(v));
  const s = params.toString();
  return s ? `?${s}` : '';
}


export class KubeClient {
  readonly credentials: KubeCredentials;
  private readonly server: URL;
  private readonly agent: http.Agent;
  private tlsOptions: https.RequestOptions | undefined;
  private headers: Record<string, string> = {};
  private headersAt = 0;
  private pendingAuth: Promise<void> | undefined;

  constructor(credentials: KubeCredentials) {
    this.credentials = credentials;
    this.server = new URL(credentials.cluster.server);
    const isHttps = this.server.protocol === 'https:';
    // keepAlive: grant writes, live GETs and GC deletes reuse connections instead of a TLS handshake each.
    this.agent = isHttps
      ? new HttpsAgent({ keepAlive: true, maxSockets: 64, maxFreeSockets: 16 })
      : new HttpAgent({ keepAlive: true, maxSockets: 64, maxFreeSockets: 16 });
  }

  static fromPath(path?: string): KubeClient {
    return new KubeClient(loadKubeConfig(path));
  }

  /**
   * Credentials may rotate (exec plugins, projected service-account tokens): refresh them now and
   * then, and at once after a 401.
   */
  private async authenticate(): Promise<void> {
    if (this.tlsOptions && Date.now() - this.headersAt < AUTH_REFRESH_MS) return;
    this.pendingAuth ??= (async () => {
      const { headers, tls } = await this.credentials.resolve();
      this.headers = headers;
      this.tlsOptions = tls;
      this.headersAt = Date.now();
    })().finally(() => {
      this.pendingAuth = undefined;
    });
    await this.pendingAuth;
  }

  private async open(method: string, path: string, opts: RequestOptions): Promise<{ req: http.ClientRequest; res: http.IncomingMessage }> {
    await this.authenticate();
    const body = opts.body === undefined ? undefined : typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body);
    const headers: Record<string, string> = { ...this.headers, accept: 'application/json' };
    if (body !== undefined) {
      headers['content-type'] = opts.contentType ?? 'application/json';
      headers['content-length'] = String(Buffer.byteLength(body));
    }
    const basePath = this.server.pathname.replace(/\/$/, '');
    const requestOptions: https.RequestOptions = {
      ...this.tlsOptions,
      agent: this.agent,
      method,
      protocol: this.server.protocol,
      hostname: this.server.hostname.replace(/^\[|\]$/g, ''),
      port: this.server.port || (this.server.protocol === 'https:' ? 443 : 80),
      path: basePath + path + queryString(opts.query),
      headers,
      signal: opts.signal,
    };
    const requester = this.server.protocol === 'https:' ? httpsRequest : httpRequest;
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const send = (mayResend: boolean): Promise<{ req: http.ClientRequest; res: http.IncomingMessage }> =>
      new Promise((resolve, reject) => {
        let answered = false;
        const req = requester(requestOptions, (res) => {
          answered = true;
          if (res.statusCode === 401) this.headersAt = 0; // a rotated token: read the credentials again next time
          resolve({ req, res });
        });
        // A socket idle timeout (reset by every byte), not a deadline: it bounds the wait for the
        // answer, and request() clears it once the body is read.
        req.setTimeout(timeoutMs, () => {
          req.destroy(new KubeApiError(0, 'Timeout', `${method} ${path}: no answer within ${timeoutMs} ms`));
        });
        req.on('error', (err: NodeJS.ErrnoException) => {
          // The API server closes keep-alive connections idle for 90 s; a request written to one
          // just as it closes is reset before the server read it, and is safe to send once more.
          if (mayResend && !answered && req.reusedSocket && (err.code === 'ECONNRESET' || err.code === 'EPIPE')) resolve(send(false));
          else reject(err instanceof KubeApiError ? err : new KubeApiError(0, 'Unreachable', `${method} ${path}: ${err.message}`, { cause: err }));
        });
        req.end(body);
      });
    return send(true);
  }

  /** One request; resolves with the decoded body of a 2xx answer, rejects with KubeApiError otherwise. */
  async request<T>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const { req, res } = await this.open(method, path, opts);
    const chunks: Buffer[] = [];
    try {
      for await (const chunk of res) chunks.push(chunk as Buffer);
    } catch (err) {
      throw new KubeApiError(0, 'Unreachable', `${method} ${path}: ${(err as Error).message}`, { cause: err });
    } finally {
      req.setTimeout(0);
    }
    const text = Buffer.concat(chunks).toString('utf8');
    const status = res.statusCode ?? 0;
    if (status >= 200 && status < 300) return (text ? JSON.parse(text) : undefined) as T;
    throw errorFromBody(status, method, path, text);
  }

  /** GET; resolves undefined on 404. */
  async get<T>(path: string, opts: RequestOptions = {}): Promise<T | undefined> {
    try {
      return await this.request<T>('GET', path, opts);
    } catch (err) {
      if (err instanceof KubeApiError && err.status === 404) return undefined;
      throw err;
    }
  }

  create<T>(path: string, body: unknown, opts: RequestOptions = {}): Promise<T> {
    return this.request<T>('POST', path, { ...opts, body });
  }

  mergePatch<T>(path: string, body: unknown, opts: RequestOptions = {}): Promise<T> {
    return this.request<T>('PATCH', path, { ...opts, body, contentType: 'application/merge-patch+json' });
  }

  /** Server-side apply (create or update) of a whole object. */
  apply<T>(path: string, body: unknown, fieldManager: string, opts: RequestOptions = {}): Promise<T> {
    return this.request<T>('PATCH', path, {
      ...opts,
      body,
      contentType: 'application/apply-patch+yaml',
      query: { ...opts.query, fieldManager, force: true },
    });
  }

  /** DELETE, optionally only if the object still has this uid and resourceVersion (409 otherwise). */
  delete<T>(path: string, preconditions?: { uid?: string; resourceVersion?: string }, opts: RequestOptions = {}): Promise<T> {
    const body = preconditions ? { kind: 'DeleteOptions', apiVersion: 'v1', preconditions } : undefined;
    return this.request<T>('DELETE', path, { ...opts, body });
  }

  /**
   * One watch request: calls `onEvent` for each event until the server ends the stream (resolves)
   * or the connection fails (rejects). An `ERROR` event is passed to the handler like any other.
   * `idleTimeoutMs` ends a stream on which nothing at all arrived for that long: the API server
   * sends nothing on a quiet watch (its bookmarks only carry a resourceVersion that moved), so
   * this must run past the watch's own `timeoutSeconds`, when the server always ends it.
   * Meanwhile TCP keep-alive probes find a peer that is gone.
   */
  async watch<T>(
    path: string,
    query: RequestOptions['query'],
    onEvent: WatchHandler<T>,
    opts: { signal?: AbortSignal; idleTimeoutMs: number; onOpen?: () => void },
  ): Promise<void> {
    const { req, res } = await this.open('GET', path, { query: { ...query, watch: true }, signal: opts.signal, timeoutMs: WATCH_ANSWER_TIMEOUT_MS });
    const status = res.statusCode ?? 0;
    if (status !== 200) {
      const chunks: Buffer[] = [];
      for await (const chunk of res) chunks.push(chunk as Buffer);
      throw errorFromBody(status, 'WATCH', path, Buffer.concat(chunks).toString('utf8'));
    }
    // From here the stream's own idle timer, not the socket timeout of the answer.
    req.setTimeout(0);
    res.socket.setKeepAlive(true, WATCH_KEEPALIVE_DELAY_MS);
    opts.onOpen?.();
    await new Promise<void>((resolve, reject) => {
      const idle = setTimeout(() => {
        req.destroy(new KubeApiError(0, 'Timeout', `watch ${path}: nothing received within ${opts.idleTimeoutMs} ms`));
      }, opts.idleTimeoutMs);
      const settle = (fn: () => void) => {
        clearTimeout(idle);
        fn();
      };
      let buffered = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        idle.refresh();
        buffered += chunk;
        let nl: number;
        while ((nl = buffered.indexOf('\n')) !== -1) {
          const line = buffered.slice(0, nl);
          buffered = buffered.slice(nl + 1);
          if (line.trim() === '') continue;
          try {
            onEvent(JSON.parse(line) as WatchEvent<T>);
          } catch (err) {
            // The handler's error (e.g. a 410 in an ERROR event) is what ends this watch.
            settle(() => reject(err instanceof Error ? err : new Error(String(err))));
            req.destroy();
            return;
          }
        }
      });
      res.on('end', () => settle(resolve));
      res.on('error', (err) => settle(() => reject(err)));
      res.on('aborted', () => settle(() => reject(new KubeApiError(0, 'Unreachable', `watch ${path}: connection aborted`))));
      req.on('error', (err) => settle(() => reject(err)));
      req.on('close', () => settle(resolve));
    });
  }

  close(): void {
    this.agent.destroy();
  }
}

/** The error an `ERROR` watch event carries (its object is a Status), to end the watch with. */
export function watchEventError(object: unknown): KubeApiError {
  const status = object as { code?: number; reason?: string; message?: string };
  return new KubeApiError(status.code ?? 500, status.reason, `watch error: ${status.message ?? 'unknown'}`);
}

function errorFromBody(status: number, method: string, path: string, text: string): KubeApiError {
  let reason: string | undefined;
  let message = text.slice(0, 500);
  try {
    const status = JSON.parse(text) as { reason?: string; message?: string };
    reason = status.reason;
    message = status.message ?? message;
  } catch {
    // not a Status object; keep the raw text
  }
  return new KubeApiError(status, reason, `${method} ${path}: ${status} ${message}`);
}
