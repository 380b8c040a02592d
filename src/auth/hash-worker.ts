// Worker thread body of PasswordVerifier: verifies one password at a time, off the event loop.
import { parentPort } from 'node:worker_threads';
import type { StoredPassword } from './schemes.ts';
import { verifyPassword } from './schemes.ts';

export interface HashJob {
  id: number;
  stored: StoredPassword;
  password: string;
}

export interface HashAnswer {
  id: number;
  ok: boolean;
  error?: string;
}

parentPort?.on('message', (job: HashJob) => {
  verifyPassword(job.stored, job.password).then(
    (ok) => parentPort?.postMessage({ id: job.id, ok } satisfies HashAnswer),
    (err: unknown) => parentPort?.postMessage({ id: job.id, ok: false, error: String(err) } satisfies HashAnswer),
  );
});
