// Worker thread body of PasswordVerifier: verifies one password at a time, off the event loop.
import { parentPort } from 'node:worker_threads';
import type { StoredPassword } from './schemes.ts';
import { verifyPassword } from './schemes.ts';
import { shaCrypt, parseShaCryptSetting } from './sha-crypt.ts';

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

// A thread's first SHA512-CRYPT runs before V8 has optimised the kernel (~30 ms instead of ~1.5):
// pay for it here, before a login waits on it.
shaCrypt('warm-up', parseShaCryptSetting('$6$warm-up') as NonNullable<ReturnType<typeof parseShaCryptSetting>>);

parentPort?.on('message', (job: HashJob) => {
  verifyPassword(job.stored, job.password).then(
    (ok) => parentPort?.postMessage({ id: job.id, ok } satisfies HashAnswer),
    (err: unknown) => parentPort?.postMessage({ id: job.id, ok: false, error: String(err) } satisfies HashAnswer),
  );
});
