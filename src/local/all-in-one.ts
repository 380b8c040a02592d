// `npm start` (`kube-drac all-in-one`): the whole of kube-drac on one machine, for trying it out.
// A real control plane with the CRDs, then the operator, POP3, SMTP and the bridge (its socket
// map and policy readers, for a Postfix or sendmail of your own) as separate processes (one role
// per process, as in a cluster), a demo user, a self-signed certificate, and an outbox
// folder that receives the relayed mail. Ctrl-C stops everything.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import * as yaml from 'js-yaml';
import { shaCryptHash } from '../auth/sha-crypt.ts';
import { ensureNamespace, installCrds } from '../kube/crds.ts';
import { ControlPlane } from './control-plane.ts';

const CLI = fileURLToPath(new URL('../cli.ts', import.meta.url));
const NAMESPACE = 'kube-drac';
const DOMAIN = 'example.test';
const ROLES = [
  { role: 'operator', metricsPort: 9091 },
  { role: 'pop3', metricsPort: 9092 },
  { role: 'smtp', metricsPort: 9093 },
  { role: 'bridge', metricsPort: 9094 },
] as const;
/** The bridge's readers on loopback: what an MTA of your own asks (see the README's bridge guide). */
const SOCKETMAP_PORT = 9400;
const POLICY_PORT = 9401;
/** Relay limits are on here (off by default in the chart), low enough to see one hit. */
const DEMO_LIMITS = {
  enabled: true,
  replicaName: 'smtp-0',
  perUser: { messagesPerHour: 500, recipientsPerHour: 2000 },
  overrides: [{ user: 'demo', messagesPerHour: 100, recipientsPerHour: 1000 }],
};

export interface AllInOneOptions {
  /** Where mail, the outbox, certificates and configs live (kept after exit). */
  stateDir: string;
}

function parseArgs(args: string[]): AllInOneOptions {
  let stateDir = path.join(os.tmpdir(), 'kube-drac-demo');
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--state-dir' && args[i + 1]) stateDir = path.resolve(args[++i] as string);
    else throw new Error(`all-in-one: unknown argument ${JSON.stringify(args[i])} (usage: kube-drac all-in-one [--state-dir DIR])`);
  }
  return { stateDir };
}

function selfSignedCertificate(dir: string): { certFile: string; keyFile: string } {
  const certFile = path.join(dir, 'tls.crt');
  const keyFile = path.join(dir, 'tls.key');
  if (!fs.existsSync(certFile) || !fs.existsSync(keyFile)) {
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '3650', '-subj', '/CN=localhost',
      '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1', '-keyout', keyFile, '-out', certFile,
    ], { stdio: 'ignore' });
  }
  return { certFile, keyFile };
}

/** The config each role process reads; only `metrics.port` differs between them. */
function writeConfigs(stateDir: string, kubeconfig: string): Record<string, string> {
  const tls = selfSignedCertificate(stateDir);
  const mailRoot = path.join(stateDir, 'mail');
  const usersFile = path.join(stateDir, 'users');
  fs.mkdirSync(mailRoot, { recursive: true });
  fs.writeFileSync(usersFile, `demo:{SHA512-CRYPT}${shaCryptHash('demo')}\n`, { mode: 0o600 });
  const files: Record<string, string> = {};
  for (const { role, metricsPort } of ROLES) {
    const config = {
      kubernetes: { namespace: NAMESPACE, kubeconfig },
      metrics: { host: '127.0.0.1', port: metricsPort },
      pop3: {
        listen: { host: '127.0.0.1', port: 1110 },
        tls,
        implicitTlsPort: 1995,
        // Loopback only: the demo user types a password in the clear to telnet.
        allowPlaintextAuth: true,
        mailRoot,
        mailLocation: '%n',
        usersFile,
        limits: { maxSessionsPerAddress: 50 },
      },
      smtp: {
        hostname: 'localhost',
        listen: { host: '127.0.0.1', port: 2525 },
        tls,
        localDomains: [DOMAIN],
        mailRoot,
        mailLocation: '%n',
        usersFile,
        outbox: path.join(stateDir, 'outbox'),
        limits: DEMO_LIMITS,
      },
      operator: {},
      bridge: {
        host: '127.0.0.1',
        socketmap: { enabled: true, port: SOCKETMAP_PORT },
        policy: { enabled: true, port: POLICY_PORT },
      },
    };
    const file = path.join(stateDir, `${role}.yaml`);
    fs.writeFileSync(file, yaml.dump(config));
    files[role] = file;
  }
  return files;
}

/** Role logs are JSON lines (for machines); in a terminal, show them as short readable lines. */
function humanLine(line: string): string {
  try {
    const { time, level, role, event, message, ...rest } = JSON.parse(line) as Record<string, unknown>;
    const t = typeof time === 'string' ? time.slice(11, 19) : '';
    const fields = Object.entries(rest)
      .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
      .join(' ');
    const lvl = level === 'info' ? '' : ` ${String(level).toUpperCase()}`;
    return `${t} ${String(role).padEnd(8)}${lvl} ${String(event ?? message)} ${fields}`.trimEnd();
  } catch {
    return line;
  }
}

export async function runAllInOne(args: string[]): Promise<void> {
  const { stateDir } = parseArgs(args);
  fs.mkdirSync(stateDir, { recursive: true });
  const say = (line: string) => process.stdout.write(`${line}\n`);
  const plane = new ControlPlane({ progress: (line) => say(line) });
  const children: ChildProcess[] = [];
  let stopping: Promise<void> | undefined;
  const stop = (reason: string): Promise<void> =>
    (stopping ??= (async () => {
      say(`\n${reason}: stopping kube-drac`);
      await Promise.all(
        children.map(
          (child) =>
            new Promise<void>((resolve) => {
              if (child.exitCode !== null || child.signalCode !== null) return resolve();
              const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
              child.once('exit', () => {
                clearTimeout(timer);
                resolve();
              });
              child.kill('SIGTERM');
            }),
        ),
      );
      await plane.stop();
      say('stopped');
    })());
  process.on('SIGINT', () => void stop('SIGINT').then(() => process.exit(0)));
  process.on('SIGTERM', () => void stop('SIGTERM').then(() => process.exit(0)));

  try {
    say('starting a local control plane (etcd + kube-apiserver)...');
    await plane.start();
    const client = plane.client();
    await installCrds(client);
    await ensureNamespace(client, NAMESPACE);
    client.close();
    const configs = writeConfigs(stateDir, plane.kubeconfigPath);
    for (const { role } of ROLES) {
      // Its own process group, handed to the control plane's watchdog: if this process is killed
      // outright, the roles go with the control plane instead of holding the ports.
      const child = spawn(process.execPath, [CLI, role, '--config', configs[role] as string], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
      children.push(child);
      if (child.pid !== undefined) plane.adoptProcessGroup(child.pid);
      for (const stream of [child.stdout, child.stderr]) {
        readline.createInterface({ input: stream }).on('line', (line) => say(humanLine(line)));
      }
      child.on('exit', (code, signal) => {
        if (!stopping) void stop(`${role} exited (${signal ?? code})`).then(() => process.exit(1));
      });
    }
    await waitForPorts([1110, 2525, SOCKETMAP_PORT, POLICY_PORT, ...ROLES.map((r) => r.metricsPort)]);
  } catch (err) {
    await stop(`start-up failed: ${(err as Error).message}`);
    throw err;
  }

  say(`
kube-drac is running (grants in namespace ${NAMESPACE}; state in ${stateDir})

  export KUBECONFIG=${plane.kubeconfigPath}
  kubectl: ${plane.kubectl}
  POP3     127.0.0.1:1110 (STLS), 127.0.0.1:1995 (POP3S)   user demo, password demo
  SMTP     127.0.0.1:2525 (STARTTLS)   local domain ${DOMAIN}
  outbox   ${path.join(stateDir, 'outbox')}   (relayed mail lands here)
  limits   demo may relay ${DEMO_LIMITS.overrides[0]?.messagesPerHour} messages (${DEMO_LIMITS.overrides[0]?.recipientsPerHour} recipients) per hour, other users ${DEMO_LIMITS.perUser.messagesPerHour} (${DEMO_LIMITS.perUser.recipientsPerHour}); then 450 4.7.1   (kubectl get relayusages)
  bridge   127.0.0.1:${SOCKETMAP_PORT} socketmap (map drac), 127.0.0.1:${POLICY_PORT} Postfix policy   (for an MTA of your own)
${ROLES.map((r) => `  metrics  http://127.0.0.1:${r.metricsPort}/metrics   (${r.role})`).join('\n')}

How to:
  1. swaks --server 127.0.0.1:2525 --to someone@elsewhere.test   -> 550 5.7.1 Relay access denied
  2. curl -s pop3://127.0.0.1:1110/ -u demo:demo                   -> a POP3 login grants 127.0.0.1
  3. kubectl get relaygrants; then step 1 again                      -> accepted, and in the outbox
Ctrl-C stops everything.
`);
}

async function waitForPorts(ports: number[], timeoutMs = 60_000): Promise<void> {
  const { connect } = await import('node:net');
  const deadline = Date.now() + timeoutMs;
  for (const port of ports) {
    for (;;) {
      const open = await new Promise<boolean>((resolve) => {
        const s = connect(port, '127.0.0.1');
        s.once('connect', () => {
          s.destroy();
          resolve(true);
        });
        s.once('error', () => resolve(false));
      });
      if (open) break;
      if (Date.now() > deadline) throw new Error(`nothing listens on 127.0.0.1:${port} after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}
