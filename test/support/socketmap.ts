// A socketmap client for tests: one netstring request on a fresh connection, the netstring answer.
import net from 'node:net';
import { encodeNetstring } from '../../src/bridge/netstring.ts';

/** Ask `map key` at 127.0.0.1:`port`; resolves with the raw answer, e.g. `9:NOTFOUND ,`. */
export function socketmapLookup(port: number, map: string, key: string, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => s.write(encodeNetstring(`${map} ${key}`)));
    let text = '';
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`no socketmap answer for ${map} ${key}; got ${JSON.stringify(text)}`));
    }, timeoutMs);
    s.on('data', (d: Buffer) => {
      text += d.toString('latin1');
      if (text.endsWith(',')) {
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
