// buildah on a storage of its own under the project's cache: vfs (no overlay mounts needed) and
// chroot isolation (no runtime, no user namespaces), which is what a root shell without a container
// engine can use. Every command's output goes to a progress callback a line at a time.
import { spawn } from 'node:child_process';
import path from 'node:path';
import type { ProgressFn } from './binaries.ts';

/** Run `command args`, passing each output line to `onLine`; reject with the last lines on failure. */
export function runLogged(command: string, args: string[], opts: { onLine?: ProgressFn; cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let tail: string[] = [];
    const onData = (isStdout: boolean) => {
      let partial = '';
      return (chunk: Buffer) => {
        const text = chunk.toString('utf8');
        if (isStdout) stdout += text;
        const lines = (partial + text).split('\n');
        partial = lines.pop() ?? '';
        for (const line of lines) {
          tail = [...tail.slice(-40), line];
          opts.onLine?.(line);
        }
      };
    };
    child.stdout.on('data', onData(true));
    child.stderr.on('data', onData(false));
    child.on('error', (err) => reject(new Error(`cannot run ${command} (${err.message}); is it installed? (.ci/packages/packaging.txt lists the Debian packages)`)));
    child.on('close', (code, signal) => {
      if (code === 0) resolve(stdout);
      else reject(new Error(`${command} ${args.join(' ')} failed (${signal ?? `exit ${code}`}):\n${tail.join('\n')}`));
    });
  });
}

export class Buildah {
  private readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
  }

  private global(): string[] {
    return ['--root', path.join(this.dir, 'storage'), '--runroot', path.join(this.dir, 'run'), '--storage-driver', 'vfs'];
  }

  run(args: string[], onLine?: ProgressFn, cwd?: string): Promise<string> {
    return runLogged('buildah', [...this.global(), ...args], { onLine, cwd });
  }

  async hasImage(ref: string): Promise<boolean> {
    try {
      await this.run(['inspect', '--type', 'image', '--format', '{{.FromImageID}}', ref]);
      return true;
    } catch {
      return false;
    }
  }
}
