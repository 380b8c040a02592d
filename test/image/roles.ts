// Starting kube-drac roles as processes for the packaging tests: free ports, wait for /readyz,
// stop with SIGTERM, and kill whatever is left when a test ends.
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';

const children = new Set<ChildProcess>();

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

async function waitReady(port: number, child: ChildProcess, output: () => string): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`the role exited with ${child.exitCode} before it was ready:\n${output()}`);
    try {
      const res = await fetch(`http://127.0.0.1:${port}/readyz`);
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`/readyz never answered 200:\n${output()}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

export interface StartedRole {
  child: ChildProcess;
  output: () => string;
  /** SIGTERM, then the exit code. */
  stop(): Promise<number | null>;
}

/** Spawn `command args` and resolve once /readyz on `metricsPort` answers 200. */
export async function startRoleProcess(command: string, args: string[], opts: { cwd: string; env: NodeJS.ProcessEnv; metricsPort: number }): Promise<StartedRole> {
  const child = spawn(command, args, { cwd: opts.cwd, env: opts.env, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let out = '';
  child.stdout?.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr?.on('data', (c: Buffer) => (out += c.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  exited.then(() => children.delete(child), () => undefined);
  const started: StartedRole = {
    child,
    output: () => out,
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
  try {
    await waitReady(opts.metricsPort, child, started.output);
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  return started;
}

/** SIGKILL every role process still running (for `after` hooks). */
export function killRoles(): void {
  for (const child of children) child.kill('SIGKILL');
}
