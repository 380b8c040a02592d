// SHA-256-crypt and SHA-512-crypt (`$5$`, `$6$`), per Ulrich Drepper's "Unix crypt using
// SHA-256 and SHA-512" (the algorithm of glibc crypt(3), Dovecot's SHA256-CRYPT/SHA512-CRYPT,
// `openssl passwd -5/-6` and `mkpasswd`). SHA-512-crypt's rounds run in the WebAssembly kernel
// (sha512-wasm.ts), SHA-256-crypt's through node:crypto's one-shot hash.
import crypto from 'node:crypto';
import { createSha512Kernel, LAYOUT_ENTRY, paddedLength, writePadding, type Sha512Kernel } from './sha512-wasm.ts';

const ALPHABET = './0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
export const ROUNDS_DEFAULT = 5000;
const ROUNDS_MIN = 1000;
const ROUNDS_MAX = 999_999_999;
const SALT_MAX = 16;

type Variant = { id: '5' | '6'; algorithm: 'sha256' | 'sha512'; size: 32 | 64; order: ReadonlyArray<readonly [number, number, number]>; tail: readonly number[] };

// Byte order of the final base-64 encoding, from the spec: groups of three bytes, then the rest.
const SHA512_ORDER: ReadonlyArray<readonly [number, number, number]> = [
  [0, 21, 42], [22, 43, 1], [44, 2, 23], [3, 24, 45], [25, 46, 4], [47, 5, 26], [6, 27, 48],
  [28, 49, 7], [50, 8, 29], [9, 30, 51], [31, 52, 10], [53, 11, 32], [12, 33, 54], [34, 55, 13],
  [56, 14, 35], [15, 36, 57], [37, 58, 16], [59, 17, 38], [18, 39, 60], [40, 61, 19], [62, 20, 41],
];
const SHA256_ORDER: ReadonlyArray<readonly [number, number, number]> = [
  [0, 10, 20], [21, 1, 11], [12, 22, 2], [3, 13, 23], [24, 4, 14], [15, 25, 5], [6, 16, 26],
  [27, 7, 17], [18, 28, 8], [9, 19, 29],
];

const VARIANTS: Record<'5' | '6', Variant> = {
  '6': { id: '6', algorithm: 'sha512', size: 64, order: SHA512_ORDER, tail: [63] },
  '5': { id: '5', algorithm: 'sha256', size: 32, order: SHA256_ORDER, tail: [31, 30] },
};

export interface ShaCryptSetting {
  variant: '5' | '6';
  rounds: number;
  /** Whether `rounds=N$` was written (it then appears in the output too). */
  roundsCustom: boolean;
  salt: Buffer;
}

/** Parse `$6$[rounds=N$]salt[$hash]`; undefined when it is not a SHA-crypt string. */
export function parseShaCryptSetting(text: string): ShaCryptSetting | undefined {
  const m = /^\$([56])\$(?:rounds=(\d{1,10})\$)?([^$\n:]*)(?:\$[./0-9A-Za-z]*)?$/.exec(text);
  if (!m) return undefined;
  const variant = m[1] as '5' | '6';
  const roundsCustom = m[2] !== undefined;
  const rounds = roundsCustom ? Math.min(ROUNDS_MAX, Math.max(ROUNDS_MIN, Number(m[2]))) : ROUNDS_DEFAULT;
  const salt = Buffer.from(m[3] as string, 'utf8').subarray(0, SALT_MAX);
  return { variant, rounds, roundsCustom, salt };
}

function h(algorithm: string, data: Buffer): Buffer {
  return crypto.hash(algorithm, data, 'buffer');
}

/** `len` bytes made of `digest` repeated (the spec's P and S sequences). */
function repeatTo(digest: Buffer, len: number): Buffer {
  const out = Buffer.allocUnsafe(len);
  for (let at = 0; at < len; at += digest.length) digest.copy(out, at, 0, Math.min(digest.length, len - at));
  return out;
}

function encode(v: Variant, final: Buffer): string {
  let out = '';
  const put = (w: number, n: number) => {
    for (let i = 0; i < n; i++) {
      out += ALPHABET[w & 0x3f];
      w >>>= 6;
    }
  };
  for (const [a, b, c] of v.order) put(((final[a] as number) << 16) | ((final[b] as number) << 8) | (final[c] as number), 4);
  if (v.tail.length === 1) put(final[v.tail[0] as number] as number, 2);
  else put(((final[v.tail[0] as number] as number) << 8) | (final[v.tail[1] as number] as number), 3);
  return out;
}

let kernel: Sha512Kernel | undefined;
/** This thread's kernel, its memory grown to at least `bytes`. */
function kernelWith(bytes: number): Sha512Kernel {
  kernel ??= createSha512Kernel(bytes);
  const missing = bytes - kernel.memory.buffer.byteLength;
  if (missing > 0) kernel.memory.grow(Math.ceil(missing / 65536));
  return kernel;
}

/**
 * The rounds hash one of eight layouts of C, P and S (by i odd, i % 3, i % 7). P and S never
 * change, so each layout is built once, padded, with a slot for C, into the kernel's memory with
 * each 8-byte word stored as the number SHA-512 reads there; the kernel then runs every round
 * (writing the previous digest into the slot as words shifted into place, and hashing) in one call.
 */
export function roundsWasm(a: Buffer, pSeq: Buffer, sSeq: Buffer, rounds: number): Buffer {
  const TABLE = 0;
  const DIGEST = TABLE + 8 * LAYOUT_ENTRY;
  const layouts: Array<{ message: Buffer; slot: number; start: number }> = [];
  let at = DIGEST + 64;
  for (let odd = 0; odd < 2; odd++) {
    for (let by3 = 0; by3 < 2; by3++) {
      for (let by7 = 0; by7 < 2; by7++) {
        const parts: Buffer[] = [odd ? pSeq : Buffer.alloc(64)];
        if (by3) parts.push(sSeq);
        if (by7) parts.push(pSeq);
        const slot = odd ? parts.reduce((n, x) => n + x.length, 0) : 0;
        parts.push(odd ? Buffer.alloc(64) : pSeq);
        const length = parts.reduce((n, x) => n + x.length, 0);
        const message = Buffer.alloc(paddedLength(length));
        Buffer.concat(parts).copy(message);
        writePadding(message, 0, length);
        layouts.push({ message, slot, start: at });
        at += message.length;
      }
    }
  }
  const kernel = kernelWith(at);
  const mem = new Uint8Array(kernel.memory.buffer);
  const view = new DataView(kernel.memory.buffer);
  layouts.forEach((l, index) => {
    const word = Math.floor(l.slot / 8);
    const entry = TABLE + index * LAYOUT_ENTRY;
    view.setUint32(entry, l.start, true);
    view.setUint32(entry + 4, l.start + word * 8, true);
    view.setUint32(entry + 8, l.message.length / 128, true);
    view.setBigUint64(entry + 16, BigInt((l.slot % 8) * 8), true);
    view.setBigUint64(entry + 24, l.message.readBigUInt64BE(word * 8), true);
    view.setBigUint64(entry + 32, l.message.readBigUInt64BE(word * 8 + 64), true);
    mem.set(l.message.swap64(), l.start);
  });
  mem.set(a, DIGEST);
  kernel.cryptRounds(TABLE, rounds, DIGEST);
  return Buffer.from(mem.slice(DIGEST, DIGEST + 64));
}

/**
 * The same rounds through node:crypto: SHA-256-crypt's, and for SHA-512 the reference the kernel
 * is tested against (test/auth/sha512-wasm.test.ts).
 */
export function roundsNode(variant: '5' | '6', a: Buffer, pSeq: Buffer, sSeq: Buffer, rounds: number): Buffer {
  const v = VARIANTS[variant];
  const size = v.size;
  const templates: Array<{ buf: Buffer; slot: number }> = [];
  for (let odd = 0; odd < 2; odd++) {
    for (let by3 = 0; by3 < 2; by3++) {
      for (let by7 = 0; by7 < 2; by7++) {
        const parts: Buffer[] = [odd ? pSeq : Buffer.alloc(size)];
        if (by3) parts.push(sSeq);
        if (by7) parts.push(pSeq);
        const slot = odd ? parts.reduce((n, x) => n + x.length, 0) : 0;
        parts.push(odd ? Buffer.alloc(size) : pSeq);
        templates.push({ buf: Buffer.concat(parts), slot });
      }
    }
  }
  // node:crypto returns strings much faster than Buffers: C travels as latin1 text.
  let digest = a.toString('latin1');
  for (let i = 0; i < rounds; i++) {
    const t = templates[((i & 1) << 2) | ((i % 3 !== 0 ? 1 : 0) << 1) | (i % 7 !== 0 ? 1 : 0)] as { buf: Buffer; slot: number };
    t.buf.write(digest, t.slot, size, 'latin1');
    digest = crypto.hash(v.algorithm, t.buf, 'binary');
  }
  return Buffer.from(digest, 'latin1');
}

/** The full crypt string for `password` under `setting` (the salt part of a stored hash). */
export function shaCrypt(password: string | Buffer, setting: ShaCryptSetting): string {
  const v = VARIANTS[setting.variant];
  const p = typeof password === 'string' ? Buffer.from(password, 'utf8') : password;
  const s = setting.salt;

  // Digest B = H(P S P).
  const b = h(v.algorithm, Buffer.concat([p, s, p]));
  // Digest A = H(P S, B repeated to |P|, then per bit of |P|: B if 1, P if 0).
  const aParts: Buffer[] = [p, s, repeatTo(b, p.length)];
  for (let n = p.length; n > 0; n >>= 1) aParts.push(n & 1 ? b : p);
  let c = h(v.algorithm, Buffer.concat(aParts));
  // P sequence: H(P repeated |P| times), repeated to |P| bytes.
  const pSeq = repeatTo(h(v.algorithm, Buffer.concat(new Array<Buffer>(p.length).fill(p))), p.length);
  // S sequence: H(S repeated 16 + A[0] times), first |S| bytes.
  const sSeq = h(v.algorithm, Buffer.concat(new Array<Buffer>(16 + (c[0] as number)).fill(s))).subarray(0, s.length);

  c = v.id === '6' ? roundsWasm(c, pSeq, sSeq, setting.rounds) : roundsNode(v.id, c, pSeq, sSeq, setting.rounds);

  const rounds = setting.roundsCustom ? `rounds=${setting.rounds}$` : '';
  return `$${v.id}$${rounds}${s.toString('utf8')}$${encode(v, c)}`;
}

/** A new SHA-crypt hash with a random 16-character salt. */
export function shaCryptHash(password: string, variant: '5' | '6' = '6', rounds = ROUNDS_DEFAULT): string {
  const bytes = crypto.randomBytes(SALT_MAX);
  let salt = '';
  for (const byte of bytes) salt += ALPHABET[byte & 0x3f];
  return shaCrypt(password, { variant, rounds, roundsCustom: rounds !== ROUNDS_DEFAULT, salt: Buffer.from(salt) });
}

/** Whether `password` matches the stored `$5$`/`$6$` string (compared in constant time). */
export function shaCryptVerify(password: string, stored: string): boolean {
  const setting = parseShaCryptSetting(stored);
  if (!setting) return false;
  const computed = Buffer.from(shaCrypt(password, setting));
  const expected = Buffer.from(stored);
  return computed.length === expected.length && crypto.timingSafeEqual(computed, expected);
}
