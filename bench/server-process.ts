// Our server under test runs in a child process of its own (so the load generator does not share
// its event loop): the child prints `PORT <n>` once it listens.
import { spawn, type ChildProcess } from 'node:child_process';

export async function spawnServerUnderTest(script: string, args: string[]): Promise<{ port: number; child: ChildProcess }> {
  const child = spawn(process.execPath, [script, ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, KUBE_DRAC_LOG_LEVEL: 'warn' },
  });
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /PORT (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', (code) => reject(new Error(`our server exited with ${code}`)));
  });
  return { port, child };
}
