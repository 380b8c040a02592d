// Request/answer clients for the bridge's line and netstring protocols in tests: one request on a
// fresh connection, everything read until the answer is complete.
import net from 'node:net';
import { encodeNetstring } from '../../src/bridge/netstring.ts';

/** Send `request` to 127.0.0.1:`port`; resolves with what was read once `done(text)` holds. */
export function exchange(port: number, request: string, done: (text: string) => boolean, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => s.write(request));
    let text = '';
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`no complete answer to ${JSON.stringify(request)}; got ${JSON.stringify(text)}`));
    }, timeoutMs);
    s.on('data', (d: Buffer) => {
      text += d.toString('latin1');
      if (done(text)) {
        clearTimeout(timer);
        s.destroy();
        resolve(text);
      }
    });
    s.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/** Ask the socket map `map` for `key`; resolves with the raw netstring answer, e.g. `9:NOTFOUND ,`. */
export function socketmapLookup(port: number, map: string, key: string): Promise<string> {
  return exchange(port, encodeNetstring(`${map} ${key}`), (t) => t.endsWith(','));
}
