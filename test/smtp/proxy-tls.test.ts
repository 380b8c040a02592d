// The implicit-TLS port behind a trusted proxy, when the PROXY header and the client's TLS
// ClientHello arrive in one segment (a proxy may well forward them so): the server reads past the
// header in its first read, and must hand those bytes to TLS. It used to throw a TypeError out of
// smtp-server's upgrade, which ended the SMTP process.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { once } from 'node:events';
import os from 'node:os';
import path from 'node:path';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { startTestSmtp, type TestSmtp } from './support.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'smtp-proxy-tls-'));

/** TLS through a socket whose first write carries `header` and the ClientHello together. */
async function tlsAfterHeader(port: number, header: string): Promise<tls.TLSSocket> {
  const raw = net.connect(port, '127.0.0.1');
  await once(raw, 'connect');
  let first = true;
  const front = new Duplex({
    write(chunk: Buffer, _encoding, callback) {
      raw.write(first ? Buffer.concat([Buffer.from(header), chunk]) : chunk, callback);
      first = false;
    },
    read() {},
    final(callback) {
      raw.end(callback);
    },
  });
  raw.on('data', (chunk: Buffer) => front.push(chunk));
  raw.on('end', () => front.push(null));
  raw.on('error', (err) => front.destroy(err));
  const secure = tls.connect({ socket: front, rejectUnauthorized: false, servername: 'mx.example.org' });
  await once(secure, 'secureConnect');
  return secure;
}

/** Send lines one at a time, each after the previous reply; return the replies. */
async function converse(socket: tls.TLSSocket, lines: string[]): Promise<string[]> {
  const replies: string[] = [];
  let buffer = '';
  const nextReply = () =>
    new Promise<string>((resolve, reject) => {
      const onData = (chunk: Buffer) => {
        buffer += chunk.toString('utf8');
        // A complete reply ends with a line `ddd text` (no dash after the code).
        const m = /(?:^|\r\n)(\d{3} [^\r\n]*)\r\n/.exec(buffer);
        if (m) {
          socket.off('data', onData);
          buffer = '';
          resolve(m[1] as string);
        }
      };
      socket.on('data', onData);
      socket.once('error', reject);
    });
  replies.push(await nextReply());
  for (const line of lines) {
    socket.write(`${line}\r\n`);
    replies.push(await nextReply());
  }
  return replies;
}

let t: TestSmtp;
before(async () => {
  const certFile = path.join(dir, 'tls.crt');
  const keyFile = path.join(dir, 'tls.key');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=mx.example.org'], { stdio: 'ignore' });
  t = await startTestSmtp({ tls: { certFile, keyFile }, implicitTlsPort: 0, trustedProxies: ['127.0.0.1'] });
  t.grants.grants.push({ address: '203.0.113.9', expiresAtMs: Date.now() + 3_600_000 });
});
after(async () => {
  await t.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

void describe('implicit TLS behind a trusted proxy', () => {
  for (const [client, header] of [
    ['a granted client', 'PROXY TCP4 203.0.113.9 192.0.2.25 40000 465\r\n'],
    ['a client without a grant', 'PROXY TCP4 203.0.113.10 192.0.2.25 40000 465\r\n'],
  ] as const) {
    void it(`serves ${client} whose PROXY header and ClientHello came in one segment, and judges that client`, async () => {
      const secure = await tlsAfterHeader(t.server.implicitTlsPort as number, header);
      const replies = await converse(secure, ['EHLO client.test', 'MAIL FROM:<a@client.test>', 'RCPT TO:<x@remote.test>', 'QUIT']);
      secure.destroy();
      assert.match(replies[0] ?? '', /^220 /);
      // 203.0.113.9 holds a grant, 203.0.113.10 does not: the header was read, not skipped.
      assert.match(replies[3] ?? '', header.includes('203.0.113.9 ') ? /^250 / : /^550 5\.7\.1/);
    });
  }
});
