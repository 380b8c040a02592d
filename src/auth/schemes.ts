// Password schemes of a Dovecot passwd-file: `{SCHEME}value`, verified in constant time.
import crypto from 'node:crypto';
import bcrypt from 'bcryptjs';
import { parseShaCryptSetting, shaCryptVerify } from './sha-crypt.ts';

/** The schemes we verify, by Dovecot's names. `CRYPT` means crypt(3): the `$id$` prefix decides. */
export const SCHEMES = ['SHA512-CRYPT', 'SHA256-CRYPT', 'BLF-CRYPT', 'ARGON2ID', 'ARGON2I', 'CRYPT', 'PLAIN', 'CLEAR', 'CLEARTEXT'] as const;
export type Scheme = (typeof SCHEMES)[number];

export interface StoredPassword {
  scheme: Scheme;
  value: string;
}

export class PasswordSchemeError extends Error {
  override readonly name = 'PasswordSchemeError';
}

/**
 * `{SHA512-CRYPT}$6$...` -> scheme and value. Without braces the value is in `defaultScheme`
 * (Dovecot's default for passwd-file is CRYPT). Throws PasswordSchemeError for a scheme we do
 * not know or a value that does not fit its scheme, so a bad file is refused when loaded rather
 * than failing logins one by one.
 */
export function parseStoredPassword(field: string, defaultScheme: Scheme = 'CRYPT'): StoredPassword {
  let scheme: string = defaultScheme;
  let value = field;
  const m = /^\{([A-Za-z0-9.-]+)\}(.*)$/s.exec(field);
  if (m) {
    scheme = (m[1] as string).toUpperCase();
    value = m[2] as string;
  }
  if (!(SCHEMES as readonly string[]).includes(scheme)) {
    throw new PasswordSchemeError(`unsupported password scheme {${scheme}} (supported: ${SCHEMES.join(', ')})`);
  }
  const stored = { scheme: scheme as Scheme, value };
  const problem = checkValue(stored);
  if (problem) throw new PasswordSchemeError(`{${scheme}}: ${problem}`);
  return stored;
}

export function cryptKind(value: string): 'sha' | 'bcrypt' | 'argon2' | undefined {
  if (parseShaCryptSetting(value)) return 'sha';
  if (/^\$2[abxy]?\$\d{2}\$[./A-Za-z0-9]{53}$/.test(value)) return 'bcrypt';
  if (parseArgon2(value)) return 'argon2';
  return undefined;
}

/**
 * What a check against `p` costs, as a name: hashes with the same name take the same time to check
 * (the crypt(3) setting without its salt, e.g. `$6$rounds=10000$` or `$2y$12$`; else the scheme).
 */
export function costClass(p: StoredPassword): string {
  if (!p.value.startsWith('$')) return p.scheme;
  const parts = p.value.split('$');
  // bcrypt keeps salt and hash in one field; the others have a salt field and a hash field.
  return parts.slice(0, cryptKind(p.value) === 'bcrypt' ? -1 : -2).join('$') + '$';
}

function checkValue(p: StoredPassword): string | undefined {
  switch (p.scheme) {
    case 'SHA512-CRYPT':
      return p.value.startsWith('$6$') && parseShaCryptSetting(p.value) ? undefined : 'expected $6$[rounds=N$]salt$hash';
    case 'SHA256-CRYPT':
      return p.value.startsWith('$5$') && parseShaCryptSetting(p.value) ? undefined : 'expected $5$[rounds=N$]salt$hash';
    case 'BLF-CRYPT':
      return cryptKind(p.value) === 'bcrypt' ? undefined : 'expected $2y$NN$ and 53 characters of salt and hash';
    case 'ARGON2ID':
    case 'ARGON2I': {
      const a = parseArgon2(p.value);
      const want = p.scheme === 'ARGON2ID' ? 'argon2id' : 'argon2i';
      return a && a.algorithm === want ? undefined : `expected $${want}$v=19$m=..,t=..,p=..$salt$hash`;
    }
    case 'CRYPT':
      return cryptKind(p.value) ? undefined : 'only $6$, $5$, $2y$ and $argon2id$ crypt strings are supported (DES and MD5 crypt are not)';
    default:
      return undefined;
  }
}

interface Argon2Hash {
  algorithm: 'argon2id' | 'argon2i' | 'argon2d';
  memory: number;
  passes: number;
  parallelism: number;
  salt: Buffer;
  hash: Buffer;
}

/** PHC string `$argon2id$v=19$m=65536,t=3,p=1$<salt>$<hash>` (base64 without padding). */
export function parseArgon2(value: string): Argon2Hash | undefined {
  const m = /^\$(argon2id|argon2i|argon2d)\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)$/.exec(value);
  if (!m) return undefined;
  const memory = Number(m[2]);
  const passes = Number(m[3]);
  const parallelism = Number(m[4]);
  if (parallelism < 1 || parallelism > 255 || passes < 1 || memory < 8 * parallelism || memory > 4 * 1024 * 1024) return undefined;
  const salt = Buffer.from(m[5] as string, 'base64');
  const hash = Buffer.from(m[6] as string, 'base64');
  if (salt.length < 8 || hash.length < 4) return undefined;
  return { algorithm: m[1] as Argon2Hash['algorithm'], memory, passes, parallelism, salt, hash };
}

function argon2Verify(password: string, value: string): Promise<boolean> {
  const a = parseArgon2(value);
  if (!a) return Promise.resolve(false);
  return new Promise((resolve, reject) => {
    crypto.argon2(
      a.algorithm,
      { message: Buffer.from(password, 'utf8'), nonce: a.salt, parallelism: a.parallelism, tagLength: a.hash.length, memory: a.memory, passes: a.passes },
      (err, derived) => {
        if (err) reject(err);
        else resolve(crypto.timingSafeEqual(Buffer.from(derived), a.hash));
      },
    );
  });
}

function plainEqual(password: string, value: string): boolean {
  // Compare digests so that the time does not depend on where the strings differ or their lengths.
  const a = crypto.hash('sha256', password, 'buffer') as unknown as Buffer;
  const b = crypto.hash('sha256', value, 'buffer') as unknown as Buffer;
  return crypto.timingSafeEqual(a, b);
}

/** Whether the secret is stored in the clear (PLAIN): needed for challenge-response such as APOP. */
export function isPlainSecret(p: StoredPassword): boolean {
  return p.scheme === 'PLAIN' || p.scheme === 'CLEAR' || p.scheme === 'CLEARTEXT';
}

/** RFC 1939 APOP: `digest` must be MD5(banner + secret) in lowercase hex; only for PLAIN secrets. */
export function verifyApop(stored: StoredPassword, banner: string, digest: string): boolean {
  if (!isPlainSecret(stored) || !/^[0-9a-f]{32}$/.test(digest)) return false;
  const expected = crypto.createHash('md5').update(banner + stored.value, 'utf8').digest();
  return crypto.timingSafeEqual(expected, Buffer.from(digest, 'hex'));
}

/** Whether the scheme costs real CPU (worth moving off the event loop). */
export function isExpensive(p: StoredPassword): boolean {
  return p.scheme !== 'PLAIN' && p.scheme !== 'CLEAR' && p.scheme !== 'CLEARTEXT';
}

/** Verify `password` against `stored`. Runs the hash on the calling thread (see PasswordVerifier for a pool). */
export async function verifyPassword(stored: StoredPassword, password: string): Promise<boolean> {
  switch (stored.scheme) {
    case 'PLAIN':
    case 'CLEAR':
    case 'CLEARTEXT':
      return plainEqual(password, stored.value);
    case 'SHA512-CRYPT':
    case 'SHA256-CRYPT':
      return shaCryptVerify(password, stored.value);
    case 'BLF-CRYPT':
      return bcrypt.compareSync(password, stored.value);
    case 'ARGON2ID':
    case 'ARGON2I':
      return argon2Verify(password, stored.value);
    case 'CRYPT':
      switch (cryptKind(stored.value)) {
        case 'sha':
          return shaCryptVerify(password, stored.value);
        case 'bcrypt':
          return bcrypt.compareSync(password, stored.value);
        case 'argon2':
          return argon2Verify(password, stored.value);
        default:
          return false;
      }
  }
}
