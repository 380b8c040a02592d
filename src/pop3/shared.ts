// What every POP3 worker process must see the same (pop3.workers > 1): the grant writes, so that
// one address is written at most once per renew interval whichever worker its logins land on;
// the brute-force throttle, so that N workers do not give an attacker N times the allowance; and
// the session limits. The primary holds the grant store and the limits (like Dovecot's auth and
// anvil) and the workers ask it over the cluster IPC channel. The throttle is checked before
// every password, so each worker keeps a copy that every failure, wherever it happened, is
// applied to (relayed by the primary): a check costs no trip, and the copies differ only for the
// moment a relay takes. The maildrop lock needs none of this: it is a file.
import { LoginThrottle, type ThrottleOptions } from '../auth/throttle.ts';
import type { FailureThrottle } from '../auth/login.ts';
import { GrantWriteError, type GrantRenewer, type RenewOutcome } from '../grants/types.ts';
import { releaseOnce, type AcquireResult } from '../net/limits.ts';
import type { LoginFailure, PrimaryMessage, WorkerMessage, WorkerRequest } from './ipc.ts';

export interface SharedLimiter {
  acquire(ip: string): AcquireResult | Promise<AcquireResult>;
}

export interface SharedState {
  renewer: GrantRenewer;
  throttle: FailureThrottle;
  limiter: SharedLimiter;
}

interface Channel {
  send(message: WorkerMessage): void;
  on(event: 'message', listener: (message: unknown) => void): void;
}

/** The worker's side: the shared state as asked of the primary. */
export function sharedStateOverIpc(channel: Channel, throttleOptions: ThrottleOptions): SharedState {
  let nextId = 1;
  const waiting = new Map<number, { resolve: (value: unknown) => void; reject: (err: Error) => void }>();
  const throttle = new LoginThrottle(throttleOptions);
  channel.on('message', (message) => {
    const m = message as PrimaryMessage;
    if (m.kd === 'peer-login-failed') return throttle.failed(m.address, m.user, m.now);
    if (m.kd !== 'reply') return;
    const w = waiting.get(m.id);
    if (w === undefined) return;
    waiting.delete(m.id);
    if (m.error !== undefined) w.reject(new Error(m.error));
    else w.resolve(m.value);
  });
  const ask = <T>(request: WorkerRequest): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      waiting.set(request.id, { resolve: resolve as (value: unknown) => void, reject });
      channel.send(request);
    });
  return {
    renewer: {
      renew: (ip, user, source, opts) =>
        ask<RenewOutcome>({ kd: 'renew', id: nextId++, ip, user, source, proxyPeer: opts?.proxyPeer }).catch((err: unknown) => {
          throw new GrantWriteError(ip, (err as Error).message);
        }),
    },
    throttle: {
      check: (address, user, now) => throttle.check(address, user, now),
      failed: (address, user, now) => {
        throttle.failed(address, user, now);
        channel.send({ kd: 'login-failed', address, user, now });
      },
    },
    limiter: {
      acquire: async (ip) => {
        const answer = await ask<{ slot: number } | { reason: 'total' | 'per-address' }>({ kd: 'acquire', id: nextId++, ip });
        if ('reason' in answer) return { ok: false, reason: answer.reason };
        return { ok: true, release: releaseOnce(() => channel.send({ kd: 'release', slot: answer.slot })) };
      },
    },
  };
}

/**
 * The primary's side for one worker: answer its requests from the grant store and the limits the
 * primary holds, and hand its failed logins to `relayFailure` (for the other workers). Returns
 * `releaseAll`, for when the worker is gone: the sessions it held are over.
 */
export function serveSharedState(
  worker: { send(message: PrimaryMessage): void; on(event: 'message', listener: (message: unknown) => void): void },
  state: Omit<SharedState, 'throttle'>,
  relayFailure: (failure: LoginFailure) => void,
): { releaseAll(): void } {
  const slots = new Map<number, () => void>();
  let nextSlot = 1;
  const reply = (id: number, value: unknown) => worker.send({ kd: 'reply', id, value });
  worker.on('message', (message) => {
    // The start-up, status and metrics messages on this channel are cluster.ts's.
    const m = message as WorkerMessage;
    switch (m.kd) {
      case 'renew':
        state.renewer.renew(m.ip, m.user, m.source, { proxyPeer: m.proxyPeer }).then(
          (outcome) => reply(m.id, outcome),
          (err: unknown) => worker.send({ kd: 'reply', id: m.id, error: (err as Error).message }),
        );
        return;
      case 'login-failed':
        relayFailure({ address: m.address, user: m.user, now: m.now });
        return;
      case 'acquire':
        void Promise.resolve(state.limiter.acquire(m.ip)).then((result) => {
          if (!result.ok) return reply(m.id, { reason: result.reason });
          const slot = nextSlot++;
          slots.set(slot, result.release);
          reply(m.id, { slot });
        });
        return;
      case 'release':
        slots.get(m.slot)?.();
        slots.delete(m.slot);
        return;
      default:
        return;
    }
  });
  return {
    releaseAll: () => {
      for (const release of slots.values()) release();
      slots.clear();
    },
  };
}
