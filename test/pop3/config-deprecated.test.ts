// The pop3 role started (`kube-drac pop3`) with the old key names still serves under them, and
// says so: one JSON warning line per deprecated key, naming it and its new name.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { after, describe, it } from 'node:test';
import * as yaml from 'js-yaml';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pop3-deprecated-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

/** Start the role with `pop3` as its section; resolve with its log lines up to pop3_listening. */
function startRole(pop3: Record<string, unknown>): Promise<Record<string, unknown>[]> {
  const file = path.join(dir, 'config.yaml');
  // A kubeconfig that is never used: no login happens, so no grant is written.
  const kubeconfig = path.join(dir, 'kubeconfig');
  fs.writeFileSync(
    kubeconfig,
    yaml.dump({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'c', cluster: { server: 'https://127.0.0.1:1' } }],
      users: [{ name: 'u', user: { token: 'unused' } }],
      contexts: [{ name: 'c', context: { cluster: 'c', user: 'u' } }],
      'current-context': 'c',
    }),
  );
  fs.writeFileSync(file, yaml.dump({ kubernetes: { namespace: 'x', kubeconfig }, metrics: { host: '127.0.0.1', port: 0 }, pop3 }));
  const child = spawn(process.execPath, ['src/cli.ts', 'pop3', '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const lines: Record<string, unknown>[] = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`pop3 did not start: ${stderr}`));
    }, 30_000);
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      const entry = JSON.parse(line) as Record<string, unknown>;
      lines.push(entry);
      if (entry.event === 'pop3_listening') {
        clearTimeout(timer);
        child.once('exit', () => resolve(lines));
        child.kill('SIGTERM');
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      if (!lines.some((l) => l.event === 'pop3_listening')) reject(new Error(`pop3 exited (${code}): ${stderr}`));
    });
  });
}

describe('deprecated pop3 keys', () => {
  it('are obeyed, and each is named in a JSON warning at start', async () => {
    const certFile = path.join(dir, 'tls.crt');
    const keyFile = path.join(dir, 'tls.key');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=localhost'], { stdio: 'ignore' });
    const usersFile = path.join(dir, 'users');
    fs.writeFileSync(usersFile, 'demo:{PLAIN}demo\n');
    fs.mkdirSync(path.join(dir, 'mail'));
    const lines = await startRole({
      listen: { host: '127.0.0.1', port: 0 },
      tls: { certFile, keyFile },
      tlsPort: 0,
      mailRoot: path.join(dir, 'mail'),
      usersFile,
      passwordThreads: 0,
      throttle: { failureDelay: '0s' },
    });
    const warnings = lines.filter((l) => l.event === 'config_key_deprecated');
    assert.deepEqual(
      warnings.map((w) => [w.level, w.role, w.key, w.use]),
      [
        ['warn', 'pop3', 'pop3.tlsPort', 'pop3.implicitTlsPort'],
        ['warn', 'pop3', 'pop3.throttle.failureDelay', 'login.failureDelay'],
      ],
    );
    const listening = lines.find((l) => l.event === 'pop3_listening') as { tlsPort?: unknown };
    assert.equal(typeof listening.tlsPort, 'number', 'the POP3S listener was opened from the old key');
  });
});
