// Config pieces that mean the same in every role: where a listener binds, which certificate a
// TLS listener serves, and a secret read from a mounted file (never written in the YAML itself).
import fs from 'node:fs';
import { ConfigError, type ConfigReader } from './reader.ts';

export interface ListenAddress {
  host: string;
  port: number;
}

export interface TlsFiles {
  certFile: string;
  keyFile: string;
}

/** The role's `listen:` section (host, port), with the role's own host rule and default port. */
export function parseListen(section: ConfigReader, defaultPort: number, hostRule: { re: RegExp; describe: string }): ListenAddress {
  const l = section.section('listen');
  const listen = { host: l.string('host', '0.0.0.0', hostRule), port: l.port('port', defaultPort) };
  l.finish();
  return listen;
}

/** The role's optional `tls:` section: the certificate and key files, or undefined without one. */
export function parseTlsFiles(section: ConfigReader): TlsFiles | undefined {
  if (!section.has('tls')) return undefined;
  const t = section.section('tls');
  const tls = { certFile: t.string('certFile'), keyFile: t.string('keyFile') };
  t.finish();
  return tls;
}

/** A mounted secret file's text without its one trailing newline; a read error names the key. */
export function readSecretFile(key: string, file: string): string {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(key, `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  return text.replace(/\r?\n$/, '');
}
