// Postfix policy delegation (`check_policy_service inet:HOST:PORT`, SMTPD_POLICY_README): a
// request is `name=value` lines ended by an empty line; the answer `action=...` and an empty line.
// A client address with a live grant answers `action=OK`; anything else `action=DUNNO` (never a
// grant, so a missing or odd address is safe there); an unsynced cache `action=DEFER_IF_REJECT`
// (relay attempts are deferred, mail that other rules accept goes on). A malformed request gets no
// answer: the connection is closed and Postfix applies its default action. The decision is pure
// (`policyAnswer`); the reader scans bytes without building strings it does not need.
import { formatIp, parseIp } from '../net/ip.ts';
import type { GrantLookup } from '../grants/types.ts';
import type { BridgeContext, RunningListener } from './listener.ts';
import { startStreamListener, type StreamListenerOptions } from './stream-listener.ts';

/** Longest attribute line (Postfix's own lines are short; certificate subjects are the longest). */
export const MAX_POLICY_LINE = 4096;
/** Longest request, all lines together. */
export const MAX_POLICY_REQUEST = 32 * 1024;
/** Attributes per request (Postfix 3.7 sends about 40). */
export const MAX_POLICY_ATTRIBUTES = 200;

export const ACTION_OK = 'action=OK\n\n';
export const ACTION_DUNNO = 'action=DUNNO\n\n';
export const ACTION_DEFER = 'action=DEFER_IF_REJECT 4.7.1 relay grants not loaded yet, try again later\n\n';

/** The answer (with its terminating empty line) for a well-formed request's `client_address`. */
export function policyAnswer(clientAddress: string | undefined, grants: GrantLookup, nowMs: number): string {
  if (clientAddress === undefined || clientAddress === '') return ACTION_DUNNO;
  const p = parseIp(clientAddress);
  if (!p) return ACTION_DUNNO;
  if (!grants.synced) return ACTION_DEFER;
  return grants.lookup(formatIp(p), nowMs) ? ACTION_OK : ACTION_DUNNO;
}

const CLIENT_ADDRESS = Buffer.from('client_address=', 'latin1');
const REQUEST = Buffer.from('request=', 'latin1');
const REQUEST_VALUE = 'smtpd_access_policy';

export interface PolicyRequest {
  clientAddress: string | undefined;
}

export class PolicyRequestError extends Error {
  override readonly name = 'PolicyRequestError';
}

function startsWith(buf: Buffer, at: number, end: number, prefix: Buffer): boolean {
  if (end - at < prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) if (buf[at + i] !== prefix[i]) return false;
  return true;
}

/**
 * Splits a policy byte stream into requests. `push` calls `onRequest` for each complete request
 * and throws PolicyRequestError on a malformed one (a line without `=` or with an empty name, a
 * control byte, a line, request or attribute count over its limit, a `request=` other than
 * `smtpd_access_policy`, or none at all).
 */
export class PolicyReader {
  private pending: Buffer | undefined;
  private attributes = 0;
  private size = 0;
  private clientAddress: string | undefined;
  private sawRequest = false;
  private failed = false;

  push(chunk: Buffer, onRequest: (req: PolicyRequest) => void): void {
    if (this.failed) throw new PolicyRequestError('stream already failed');
    const buf = this.pending ? Buffer.concat([this.pending, chunk]) : chunk;
    this.pending = undefined;
    const n = buf.length;
    let pos = 0;
    while (pos < n) {
      const nl = buf.indexOf(10, pos);
      if (nl === -1) break;
      const lineLength = nl - pos;
      if (lineLength > MAX_POLICY_LINE) return this.fail('attribute line too long');
      this.size += lineLength + 1;
      if (this.size > MAX_POLICY_REQUEST) return this.fail('request too long');
      if (lineLength === 0) {
        if (!this.sawRequest) return this.fail(this.attributes === 0 ? 'empty request' : 'no request=smtpd_access_policy');
        onRequest({ clientAddress: this.clientAddress });
        this.attributes = 0;
        this.size = 0;
        this.clientAddress = undefined;
        this.sawRequest = false;
      } else {
        if (++this.attributes > MAX_POLICY_ATTRIBUTES) return this.fail('too many attributes');
        let eq = -1;
        for (let i = pos; i < nl; i++) {
          const c = buf[i] as number;
          // Values may be UTF-8 (SMTPUTF8); control bytes, NUL included, are never part of a request.
          if (c < 32 ? c !== 9 : c === 127) return this.fail('control byte in a request');
          if (c === 61 && eq === -1) eq = i;
        }
        if (eq <= pos) return this.fail(eq === -1 ? 'attribute line without "="' : 'attribute with an empty name');
        if (startsWith(buf, pos, nl, CLIENT_ADDRESS) && eq === pos + CLIENT_ADDRESS.length - 1) {
          this.clientAddress = buf.toString('latin1', eq + 1, nl);
        } else if (startsWith(buf, pos, nl, REQUEST) && eq === pos + REQUEST.length - 1) {
          if (buf.toString('latin1', eq + 1, nl) !== REQUEST_VALUE) return this.fail('request is not smtpd_access_policy');
          this.sawRequest = true;
        }
      }
      pos = nl + 1;
    }
    if (pos < n) {
      if (n - pos > MAX_POLICY_LINE) return this.fail('attribute line too long');
      this.pending = Buffer.from(buf.subarray(pos));
    }
  }

  private fail(reason: string): never {
    this.failed = true;
    this.pending = undefined;
    throw new PolicyRequestError(reason);
  }
}

export async function startPolicyListener(opts: StreamListenerOptions, ctx: BridgeContext): Promise<RunningListener> {
  const { grants } = ctx;
  return startStreamListener('policy', opts, ctx, (peer) => {
    const reader = new PolicyReader();
    return {
      answer: (chunk, nowMs, send) =>
        reader.push(chunk, (req) => {
          const answer = policyAnswer(req.clientAddress, grants, nowMs);
          send(answer, answer === ACTION_OK ? 'granted' : answer === ACTION_DUNNO ? 'notGranted' : 'unavailable');
        }),
      // No answer to a malformed request: Postfix then applies its default action.
      lastWords: (err) => {
        if (err instanceof PolicyRequestError) ctx.log.debug('policy_malformed_request', { peer, reason: err.message });
        else ctx.log.warn('policy_internal_error', { peer, error: err as Error });
        return '';
      },
    };
  });
}
