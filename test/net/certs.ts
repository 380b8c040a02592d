// Test certificates made by openssl into a temp dir (never checked in).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export interface TestCert {
  certFile: string;
  keyFile: string;
  /** The PEM certificate, for clients that pin it as their CA. */
  certPem: string;
}

/** A self-signed certificate for `cn` (also as a SAN, plus 127.0.0.1) written into `dir`. */
export function makeCert(dir: string, cn = 'localhost', name = 'tls'): TestCert {
  fs.mkdirSync(dir, { recursive: true });
  const certFile = path.join(dir, `${name}.crt`);
  const keyFile = path.join(dir, `${name}.key`);
  execFileSync(
    'openssl',
    [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', `/CN=${cn}`,
      '-addext', `subjectAltName=DNS:${cn},IP:127.0.0.1`,
    ],
    { stdio: 'ignore' },
  );
  return { certFile, keyFile, certPem: fs.readFileSync(certFile, 'utf8') };
}

export function tempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `kubedrac-${prefix}-`));
}
