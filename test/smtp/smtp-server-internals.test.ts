// src/smtp/smtp-server-internals.ts against the installed smtp-server: every private member it
// uses is still there, and a session started through it, plain or over TLS on a stream we wrapped,
// behaves as smtp-server's own connect() would. After an smtp-server upgrade, a failure here names
// what changed; fix the adapter, nothing else.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import { once } from 'node:events';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import { afterEach, describe, it } from 'node:test';
import { SMTPServer, type SMTPServerOptions, type SMTPServerSession } from 'smtp-server';
import {
  endSessions,
  newSessionId,
  smtpServerInternalsProblems,
  SMTP_SERVER_VERSION_CHECKED,
  startSession,
  upgradeToTls,
} from '../../src/smtp/smtp-server-internals.ts';
import { makeCert, tempDir } from '../net/certs.ts';

const installed = (JSON.parse(fs.readFileSync(new URL('../../node_modules/smtp-server/package.json', import.meta.url), 'utf8')) as { version: string }).version;

/** Lines the client has read so far, and a wait for the next one matching `re`. */
function lineReader(socket: net.Socket | tls.TLSSocket) {
  let text = '';
  socket.setEncoding('utf8');
  socket.on('data', (chunk: string) => (text += chunk));
  return async (re: RegExp): Promise<string> => {
    for (let i = 0; i < 200; i++) {
      const line = text.split('\r\n').find((l) => re.test(l));
      if (line !== undefined) return line;
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error(`no line matching ${re} in ${JSON.stringify(text)}`);
  };
}

/** A listener that hands each socket to `onSocket`, and the sockets it accepted (closed after). */
async function rawListener(onSocket: (raw: net.Socket) => void): Promise<{ port: number; close: () => void }> {
  const sockets = new Set<net.Socket>();
  const l = net.createServer((raw) => {
    sockets.add(raw);
    raw.on('error', () => undefined);
    onSocket(raw);
  });
  l.listen(0, '127.0.0.1');
  await once(l, 'listening');
  return {
    port: (l.address() as net.AddressInfo).port,
    close: () => {
      for (const s of sockets) s.destroy();
      l.close();
    },
  };
}

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

function smtpServer(opts: SMTPServerOptions, seen: SMTPServerSession[]): SMTPServer {
  return new SMTPServer({
    logger: false,
    disabledCommands: ['AUTH'],
    disableReverseLookup: true,
    ...opts,
    onConnect(session, callback) {
      seen.push(session);
      callback();
    },
  });
}

void describe('smtp-server private API (smtp-server-internals.ts)', () => {
  void it('has every member the adapter uses', () => {
    const problems = smtpServerInternalsProblems();
    assert.deepEqual(
      problems,
      [],
      `smtp-server ${installed} changed what src/smtp/smtp-server-internals.ts relies on (written against ${SMTP_SERVER_VERSION_CHECKED}):\n  ${problems.join('\n  ')}`,
    );
  });

  void it('makes session ids of smtp-server\'s form', () => {
    const ids = new Set(Array.from({ length: 100 }, () => newSessionId()));
    assert.equal(ids.size, 100);
    for (const id of ids) assert.match(id, /^[0-9a-v]{16}$/);
  });

  void it('starts a session with our id and client address, greets after our delay, and ends it with our reply', async () => {
    const seen: SMTPServerSession[] = [];
    const server = smtpServer({ hideSTARTTLS: true }, seen);
    let handedAt = 0;
    const l = await rawListener((raw) => {
      handedAt = performance.now();
      startSession(server, raw, { id: 'session0000000001', remoteAddress: '192.0.2.7', remotePort: 4321, localAddress: raw.localAddress, localPort: raw.localPort }, 300, () => undefined);
    });
    cleanups.push(l.close);
    const client = net.connect(l.port, '127.0.0.1');
    const next = lineReader(client);
    const greeting = await next(/^220 /);
    const waited = performance.now() - handedAt;
    assert.ok(waited >= 290, `greeted ${waited.toFixed(0)} ms after the hand-over, before the 300 ms delay (smtp-server's fixed 100 ms?)`);
    assert.match(greeting, /ESMTP/);
    assert.equal(seen.length, 1, 'onConnect was not called once');
    assert.equal(seen[0]?.id, 'session0000000001', 'the session id given to SMTPConnection is not the session id');
    assert.equal(seen[0]?.remoteAddress, '192.0.2.7', 'the remoteAddress given to SMTPConnection is not the session address');
    assert.equal(seen[0]?.remotePort, 4321, 'the remotePort given to SMTPConnection is not the session port');
    assert.equal(server.connections.size, 1, 'the session is not in server.connections');
    endSessions(server, 421, '4.3.2 Server shutting down');
    assert.equal(await next(/^421 /), '421 4.3.2 Server shutting down');
    // close() ends the session: the client's socket closes (it may have already).
    if (!client.destroyed) await once(client, 'close');
  });

  void it('upgrades a wrapped stream to TLS (the PROXY-header path) and starts a secure session on it', async () => {
    const dir = tempDir('smtp-internals');
    cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
    const cert = makeCert(dir, 'mx.example.org');
    const seen: SMTPServerSession[] = [];
    const server = smtpServer({ secure: true, key: fs.readFileSync(cert.keyFile), cert: fs.readFileSync(cert.certFile) }, seen);
    const failures: Error[] = [];
    const l = await rawListener((raw) => {
      // A Duplex over the socket, as server.ts makes one when bytes were read past a PROXY header.
      const wrapped = Duplex.from({ readable: raw, writable: raw });
      upgradeToTls(server, wrapped, raw, (err, tlsSocket) => {
        if (err || !tlsSocket) return failures.push(err ?? new Error('no TLS socket'));
        startSession(server, tlsSocket, { id: newSessionId(), remoteAddress: '198.51.100.9', remotePort: 1, localAddress: raw.localAddress, localPort: raw.localPort }, 0, () => undefined);
      });
    });
    cleanups.push(l.close);
    const client = tls.connect({ port: l.port, host: '127.0.0.1', rejectUnauthorized: false, servername: 'mx.example.org' });
    await once(client, 'secureConnect');
    const next = lineReader(client);
    await next(/^220 /);
    client.write('EHLO client.example\r\n');
    await next(/^250 /);
    assert.deepEqual(failures, []);
    assert.equal(seen[0]?.secure, true, 'a session on the upgraded socket is not secure');
    assert.equal(seen[0]?.remoteAddress, '198.51.100.9');
    client.destroy();
  });
});
