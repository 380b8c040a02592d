// Every message between the POP3 primary and its worker processes (pop3.workers > 1), in one
// place: cluster.ts and worker.ts (start-up, readiness, metrics, shutdown) and shared.ts (grants,
// session slots, the throttle) share one channel per worker, so each message has a name of its own
// and says one thing. (A worker that could not start once said `failed`, as a failed login did:
// the primary relayed it to the other workers as a login failure without an address, and their
// throttles threw.)
import type { GrantSource } from '../grants/types.ts';

/** One process's metrics, as `registry.getMetricsAsJSON()` gives them. */
export type MetricsJson = object[];

/** A failed login, counted by every worker's throttle copy. */
export interface LoginFailure {
  address: string;
  user: string;
  now: number;
}

/** Worker -> primary. */
export type WorkerMessage =
  /** Started: the ports its listeners are bound to. */
  | { kd: 'listening'; port: number; tlsPort: number | undefined }
  /** Could not start (the process exits next). */
  | { kd: 'start-failed'; error: string }
  /** Why it would not serve a login correctly now (empty when ready), every STATUS_INTERVAL_MS. */
  | { kd: 'status'; reasons: string[] }
  /** The answer to `collect-metrics`. */
  | { kd: 'metrics'; id: number; json: MetricsJson }
  /** Renew the grant of a login through the primary's one grant store. */
  | { kd: 'renew'; id: number; ip: string; user: string; source: GrantSource; proxyPeer?: string }
  /** A login failed here: count it, and tell the other workers. */
  | ({ kd: 'login-failed' } & LoginFailure)
  /** A session slot for a new connection from `ip`. */
  | { kd: 'acquire'; id: number; ip: string }
  /** The session on slot `slot` is over. */
  | { kd: 'release'; slot: number };

/** Primary -> worker. */
export type PrimaryMessage =
  /** Stop: end every session (deleting nothing) and exit. */
  | { kd: 'close' }
  /** Send your metrics (answered with `metrics`). */
  | { kd: 'collect-metrics'; id: number }
  /** The answer to `renew` or `acquire`. */
  | { kd: 'reply'; id: number; value?: unknown; error?: string }
  /** A login failed on another worker. */
  | ({ kd: 'peer-login-failed' } & LoginFailure);

/** The renew/acquire requests, which are answered by a `reply` with their id. */
export type WorkerRequest = Extract<WorkerMessage, { id: number; kd: 'renew' | 'acquire' }>;
