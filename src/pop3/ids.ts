// Ids that only have to differ from every other id (session ids in the logs, maildrop lock tokens):
// a random prefix drawn once per process, then a counter. One draw from the kernel per id cost a
// login ~20-30 µs. Not for anything an attacker must not predict (the APOP timestamp draws its own).
import crypto from 'node:crypto';

const prefix = crypto.randomBytes(6).toString('hex');
let counter = 0;

/** Unique among this process's ids, and (random prefix) among other processes' and hosts'. */
export function uniqueId(): string {
  counter = (counter + 1) % Number.MAX_SAFE_INTEGER;
  return `${prefix}${counter.toString(36)}`;
}
