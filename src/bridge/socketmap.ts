// The socketmap reader (sendmail `K<name> socket inet:PORT@HOST`, Postfix
// `socketmap:inet:HOST:PORT:<name>`): requests `<len>:<mapname> <key>,`, one answer netstring
// each, in order, on persistent connections. A client address with a live grant answers
// `OK <expiry epoch seconds>` (all-numeric: access(5) reads it as OK; sendmail gets a value to
// rewrite to); anything else `NOTFOUND `, an unsynced cache `TEMP`, an unknown map `PERM`.
// The decision is pure (`socketmapAnswer`); the listener only frames bytes.
import { formatIp, parseIp } from '../net/ip.ts';
import type { GrantLookup } from '../grants/types.ts';
import type { BridgeContext, RunningListener } from './listener.ts';
import { encodeNetstring, NetstringDecoder, NetstringError } from './netstring.ts';
import { startStreamListener, type AnswerResult, type StreamListenerOptions } from './stream-listener.ts';

/** Longest request netstring we read: `drac ` plus an address in any form fits many times over. */
export const MAX_SOCKETMAP_REQUEST = 1000;

export const NOTFOUND = 'NOTFOUND ';
const TEMP_UNSYNCED = 'TEMP grants not loaded yet, try later';

/**
 * The key as an IP address, or undefined. Understands sendmail's forms: `IPv6:` tags (which
 * sendmail lower-cases to `ipv6:` before a map lookup) and a bracketed `[addr]`.
 */
export function socketmapKeyAddress(key: string): string | undefined {
  let k = key;
  if (k.length > 2 && k.charCodeAt(0) === 91 /* [ */ && k.charCodeAt(k.length - 1) === 93 /* ] */) k = k.slice(1, -1);
  if (k.length > 5 && k.charCodeAt(4) === 58 /* : */ && k.slice(0, 5).toLowerCase() === 'ipv6:') k = k.slice(5);
  const p = parseIp(k);
  return p ? formatIp(p) : undefined;
}

/**
 * The answer payload (not yet a netstring) to one socketmap request `<mapname> <key>`. Non-IP keys
 * (Postfix asks with the client host name first, then the address, then parent networks) are
 * NOTFOUND even before the cache is synced: no grant could ever match them.
 */
export function socketmapAnswer(mapName: string, request: string, grants: GrantLookup, nowMs: number): string {
  const space = request.indexOf(' ');
  if (space === -1) return 'PERM request must be "<map> <key>"';
  if (space !== mapName.length || !request.startsWith(mapName)) {
    return `PERM unknown map ${JSON.stringify(request.slice(0, Math.min(space, 64)))}`;
  }
  const address = socketmapKeyAddress(request.slice(space + 1));
  if (address === undefined) return NOTFOUND;
  if (!grants.synced) return TEMP_UNSYNCED;
  const match = grants.lookup(address, nowMs);
  return match ? `OK ${Math.floor(match.expiresAtMs / 1000)}` : NOTFOUND;
}

/** How a socketmap answer counts, from its status word. */
function resultOf(answer: string): AnswerResult {
  switch (answer.charCodeAt(0)) {
    case 79 /* OK */:
      return 'granted';
    case 78 /* NOTFOUND */:
      return 'notGranted';
    case 84 /* TEMP */:
      return 'unavailable';
    default:
      return 'malformed';
  }
}

export async function startSocketmapListener(opts: StreamListenerOptions & { mapName: string }, ctx: BridgeContext): Promise<RunningListener> {
  const { mapName } = opts;
  const { grants } = ctx;
  return startStreamListener('socketmap', opts, ctx, (peer) => {
    const decoder = new NetstringDecoder(MAX_SOCKETMAP_REQUEST);
    return {
      answer: (chunk, nowMs, send) =>
        decoder.push(chunk, (request) => {
          const answer = socketmapAnswer(mapName, request, grants, nowMs);
          send(encodeNetstring(answer), resultOf(answer));
        }),
      // The stream cannot be resynchronised: what could be answered was, then it closes.
      lastWords: (err) => {
        if (err instanceof NetstringError) {
          ctx.log.debug('socketmap_bad_netstring', { peer, reason: err.message });
          return encodeNetstring(`PERM bad netstring: ${err.message}`);
        }
        ctx.log.warn('socketmap_internal_error', { peer, error: err as Error });
        return encodeNetstring('TEMP internal error');
      },
    };
  });
}
