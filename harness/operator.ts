// The operator as tests and the benchmark run it: a process started as users start it, its config,
// its metrics, and RelayGrant bodies to feed it.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export function grantBody(name: string, address: string, expiresAtMs: number, user = 'ideal') {
  return {
    apiVersion: 'kubedrac.io/v1alpha1',
    kind: 'RelayGrant',
    metadata: { name },
    spec: { address, user, source: 'manual', expiresAt: new Date(expiresAtMs).toISOString() },
  };
}

/** The i-th test address of 10.0.0.0/8 and its grant name. */
export function testAddress(i: number): { name: string; address: string } {
  const address = `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
  return { name: `v4-${address}`, address };
}

/**
 * An operator process started as users start it: `node src/cli.ts operator --config FILE`, or
 * another entry point such as the image's compiled `dist/cli.js`.
 */
export interface OperatorProcess {
  child: ChildProcess;
  /** stdout and stderr lines so far. */
  lines: string[];
  /** Resolves with the /metrics port once the operator says it started. */
  healthPort: Promise<number>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const CLI = new URL('../src/cli.ts', import.meta.url).pathname;

export function spawnOperator(configPath: string, opts: { cli?: string; env?: NodeJS.ProcessEnv } = {}): OperatorProcess {
  const child = spawn(process.execPath, [opts.cli ?? CLI, 'operator', '--config', configPath], { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env });
  const lines: string[] = [];
  let resolvePort!: (port: number) => void;
  let rejectPort!: (err: Error) => void;
  const healthPort = new Promise<number>((resolve, reject) => {
    resolvePort = resolve;
    rejectPort = reject;
  });
  healthPort.catch(() => undefined);
  for (const stream of [child.stdout, child.stderr]) {
    let buffered = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      buffered += chunk;
      let nl: number;
      while ((nl = buffered.indexOf('\n')) !== -1) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        lines.push(line);
        if (line.includes('"operator_started"')) resolvePort((JSON.parse(line) as { healthPort: number }).healthPort);
      }
    });
  }
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => {
      rejectPort(new Error(`operator exited (${code ?? signal}) before it started:\n${lines.join('\n')}`));
      resolve({ code, signal });
    }),
  );
  return { child, lines, healthPort, exited };
}

/** The value of one unlabelled metric on a process's /metrics. */
export async function scrape(port: number, name: string): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  const text = await res.text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? NaN : Number(line.slice(name.length + 1));
}

/** Stop a process we started, if it still runs, and wait for it. */
export async function kill(p: OperatorProcess | undefined, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  if (!p) return;
  if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill(signal);
  await p.exited;
}

export function writeOperatorConfig(dir: string, name: string, opts: { namespace: string; kubeconfig: string; identity: string; extra?: string }): string {
  const file = path.join(dir, `${name}.yaml`);
  fs.writeFileSync(
    file,
    `kubernetes: {namespace: ${opts.namespace}, kubeconfig: ${JSON.stringify(opts.kubeconfig)}}
metrics: {host: 127.0.0.1, port: 0}
operator:
  grace: 1s
  sweepInterval: 2s
  leaderElection: {identity: ${opts.identity}, leaseDuration: 3s, renewDeadline: 2s, retryPeriod: 250ms}
${opts.extra ?? ''}`,
  );
  return file;
}
