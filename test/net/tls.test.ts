import assert from 'node:assert/strict';
import fs from 'node:fs';
import type net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { after, describe, it } from 'node:test';
import { TlsFilesError, TlsReloader } from '../../src/net/tls.ts';
import { createLogger } from '../../src/observability/log.ts';
import { makeCert, tempDir } from './certs.ts';
import { eventually } from '../support/eventually.ts';

const log = createLogger('test');

/** Lay out a directory the way the kubelet does: ..<ts>/ with the files, ..data -> it, tls.crt -> ..data/tls.crt. */
function kubeSecretDir(root: string, version: string): void {
  const versionDir = path.join(root, `..${version}`);
  makeCert(versionDir, `v-${version}`);
  const tmpLink = path.join(root, '..data_tmp');
  fs.symlinkSync(`..${version}`, tmpLink);
  fs.renameSync(tmpLink, path.join(root, '..data')); // atomic swap, as the kubelet does
  for (const f of ['tls.crt', 'tls.key']) {
    const link = path.join(root, f);
    if (!fs.existsSync(link)) fs.symlinkSync(`..data/${f}`, link);
  }
}

function servedCn(port: number, servername?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false, ...(servername ? { servername } : {}) }, () => {
      const cn = s.getPeerCertificate().subject.CN;
      s.end();
      resolve(Array.isArray(cn) ? cn.join() : (cn ?? ''));
    });
    s.on('error', reject);
  });
}

describe('TlsReloader', () => {
  const cleanups: Array<() => void> = [];
  after(() => cleanups.forEach((c) => c()));

  it('serves the new certificate after a Kubernetes-style symlink swap, with and without SNI', async () => {
    const root = tempDir('tls');
    cleanups.push(() => fs.rmSync(root, { recursive: true, force: true }));
    kubeSecretDir(root, 'one');
    const reloader = new TlsReloader({ certFile: path.join(root, 'tls.crt'), keyFile: path.join(root, 'tls.key'), log, pollIntervalMs: 0, debounceMs: 20 });
    cleanups.push(() => reloader.close());
    const server = tls.createServer(reloader.serverOptions(), (s) => s.end());
    reloader.attach(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.push(() => server.close());
    const port = (server.address() as net.AddressInfo).port;

    assert.equal(await servedCn(port), 'v-one');
    assert.equal(await servedCn(port, 'pop.example.org'), 'v-one');
    const reloaded = new Promise<void>((r) => reloader.onReload(() => r()));
    kubeSecretDir(root, 'two');
    await reloaded;
    assert.equal(await servedCn(port), 'v-two');
    assert.equal(await servedCn(port, 'pop.example.org'), 'v-two');
  });

  it('picks up a change by polling when no watch event comes', async () => {
    const dir = tempDir('tls-poll');
    cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
    const first = makeCert(dir, 'first');
    const reloader = new TlsReloader({ ...first, log, pollIntervalMs: 100, debounceMs: 10_000 });
    cleanups.push(() => reloader.close());
    const before = reloader.context;
    makeCert(dir, 'second');
    await eventually('the polled reload', () => reloader.context !== before);
    assert.notEqual(reloader.context, before);
  });

  it('keeps the last good pair when the new files do not match, and refuses bad files at start', () => {
    const dir = tempDir('tls-bad');
    cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
    const good = makeCert(dir, 'good');
    const reloader = new TlsReloader({ ...good, log, pollIntervalMs: 0 });
    cleanups.push(() => reloader.close());
    const before = reloader.context;
    const other = makeCert(dir, 'other', 'other');
    fs.copyFileSync(other.certFile, good.certFile); // certificate rotated, key not yet
    assert.equal(reloader.reload(), false);
    assert.equal(reloader.context, before);
    fs.copyFileSync(other.keyFile, good.keyFile);
    assert.equal(reloader.reload(), true);
    assert.notEqual(reloader.context, before);
    assert.equal(reloader.reload(), false, 'unchanged files are not reloaded');

    assert.throws(() => new TlsReloader({ certFile: path.join(dir, 'missing.crt'), keyFile: good.keyFile, log }), TlsFilesError);
    fs.writeFileSync(path.join(dir, 'junk.crt'), 'not a certificate');
    assert.throws(() => new TlsReloader({ certFile: path.join(dir, 'junk.crt'), keyFile: good.keyFile, log }), TlsFilesError);
  });

  it('its context upgrades a plain socket in place (STLS)', async () => {
    const dir = tempDir('tls-stls');
    cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
    const cert = makeCert(dir, 'upgrade');
    const reloader = new TlsReloader({ ...cert, log, pollIntervalMs: 0 });
    cleanups.push(() => reloader.close());
    const { createServer } = await import('node:net');
    const server = createServer((sock) => {
      const secure = new tls.TLSSocket(sock, { isServer: true, secureContext: reloader.context });
      secure.on('secure', () => secure.end('hello\n'));
      secure.on('error', () => {});
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.push(() => server.close());
    const port = (server.address() as net.AddressInfo).port;
    const text = await new Promise<string>((resolve, reject) => {
      const s = tls.connect({ port, host: '127.0.0.1', ca: cert.certPem, servername: 'upgrade' }, () => {
        let buf = '';
        s.on('data', (d: Buffer) => (buf += d.toString()));
        s.on('end', () => resolve(buf));
      });
      s.on('error', reject);
    });
    assert.equal(text, 'hello\n');
  });
});
