// SHA-512 compression in WebAssembly, generated here as bytecode (no toolchain, no binary blob).
// SHA512-CRYPT's 5000 rounds each hash ~100 bytes: through node:crypto every round pays a call into
// OpenSSL (~1 µs); this kernel runs a whole round in a few hundred nanoseconds. The 80 rounds and
// the message schedule are unrolled, and the eight working variables are renamed instead of moved.
import { I32, I64, oneFunctionModule, uleb, wasm, type WasmMemory } from '../wasm.ts';

const K = [
  '428a2f98d728ae22', '7137449123ef65cd', 'b5c0fbcfec4d3b2f', 'e9b5dba58189dbbc', '3956c25bf348b538', '59f111f1b605d019', '923f82a4af194f9b', 'ab1c5ed5da6d8118',
  'd807aa98a3030242', '12835b0145706fbe', '243185be4ee4b28c', '550c7dc3d5ffb4e2', '72be5d74f27b896f', '80deb1fe3b1696b1', '9bdc06a725c71235', 'c19bf174cf692694',
  'e49b69c19ef14ad2', 'efbe4786384f25e3', '0fc19dc68b8cd5b5', '240ca1cc77ac9c65', '2de92c6f592b0275', '4a7484aa6ea6e483', '5cb0a9dcbd41fbd4', '76f988da831153b5',
  '983e5152ee66dfab', 'a831c66d2db43210', 'b00327c898fb213f', 'bf597fc7beef0ee4', 'c6e00bf33da88fc2', 'd5a79147930aa725', '06ca6351e003826f', '142929670a0e6e70',
  '27b70a8546d22ffc', '2e1b21385c26c926', '4d2c6dfc5ac42aed', '53380d139d95b3df', '650a73548baf63de', '766a0abb3c77b2a8', '81c2c92e47edaee6', '92722c851482353b',
  'a2bfe8a14cf10364', 'a81a664bbc423001', 'c24b8b70d0f89791', 'c76c51a30654be30', 'd192e819d6ef5218', 'd69906245565a910', 'f40e35855771202a', '106aa07032bbd1b8',
  '19a4c116b8d2d0c8', '1e376c085141ab53', '2748774cdf8eeb99', '34b0bcb5e19b48a8', '391c0cb3c5c95a63', '4ed8aa4ae3418acb', '5b9cca4f7763e373', '682e6ff3d6b2b8a3',
  '748f82ee5defb2fc', '78a5636f43172f60', '84c87814a1f0ab72', '8cc702081a6439ec', '90befffa23631e28', 'a4506cebde82bde9', 'bef9a3f7b2c67915', 'c67178f2e372532b',
  'ca273eceea26619c', 'd186b8c721c0c207', 'eada7dd6cde0eb1e', 'f57d4f7fee6ed178', '06f067aa72176fba', '0a637dc5a2c898a6', '113f9804bef90dae', '1b710b35131c471b',
  '28db77f523047d84', '32caab7b40c72493', '3c9ebe0a15c9bebc', '431d67c49c100d4c', '4cc5d4becb3e42b6', '597f299cfc657e2a', '5fcb6fab3ad6faec', '6c44198c4a475817',
].map((h) => BigInt(`0x${h}`));

const IV = ['6a09e667f3bcc908', 'bb67ae8584caa73b', '3c6ef372fe94f82b', 'a54ff53a5f1d36f1', '510e527fade682d1', '9b05688c2b3e6c1f', '1f83d9abfb41bd6b', '5be0cd19137e2179'].map((h) => BigInt(`0x${h}`));

// Opcodes used.
const OP = {
  block: 0x02, loop: 0x03, br: 0x0c, brIf: 0x0d, end: 0x0b,
  localGet: 0x20, localSet: 0x21, localTee: 0x22,
  i64Load: 0x29, i64Store: 0x37,
  i32Const: 0x41, i64Const: 0x42, i32Eqz: 0x45, i32Add: 0x6a, i32Sub: 0x6b,
  i64Add: 0x7c, i64And: 0x83, i64Or: 0x84, i64Xor: 0x85, i64Shl: 0x86, i64ShrU: 0x88, i64Rotl: 0x89, i64Rotr: 0x8a,
} as const;

function sleb(value: bigint): number[] {
  let v = BigInt.asIntN(64, value);
  const out: number[] = [];
  for (;;) {
    const byte = Number(v & 0x7fn);
    v >>= 7n;
    const done = (v === 0n && (byte & 0x40) === 0) || (v === -1n && (byte & 0x40) !== 0);
    out.push(done ? byte : byte | 0x80);
    if (done) return out;
  }
}

/** Bytecode of `hash(ptr, nblocks, out)`: SHA-512 of the padded blocks at ptr, digest (big-endian) to out. */
function hashFunctionBody(): number[] {
  const code: number[] = [];
  const emit = (...bytes: number[]) => code.push(...bytes);
  // Parameters 0..2: ptr, nblocks, out (i32). i64 locals: H0..H7 (3..10), v0..v7 (11..18), W0..W79 (19..98), t1 (99), t2 (100).
  const H = (i: number) => 3 + i;
  const V = (i: number) => 11 + i;
  const W = (i: number) => 19 + i;
  const T1 = 99;
  const T2 = 100;
  const get = (l: number) => emit(OP.localGet, ...uleb(l));
  const set = (l: number) => emit(OP.localSet, ...uleb(l));
  const c64 = (v: bigint) => emit(OP.i64Const, ...sleb(v));
  const rotr = (l: number, n: number) => {
    get(l);
    c64(BigInt(n));
    emit(OP.i64Rotr);
  };
  const shr = (l: number, n: number) => {
    get(l);
    c64(BigInt(n));
    emit(OP.i64ShrU);
  };
  /** Big-endian load: little-endian load, then swap the bytes. */
  const loadBe = (offset: number) => {
    get(0);
    emit(OP.i64Load, 3, ...uleb(offset));
    bswapTop();
  };
  const bswapTop = () => {
    // x = ((x >> 8) & m8) | ((x & m8) << 8); same with 16; then rotate by 32. Uses T2 as scratch.
    for (const [shift, mask] of [[8n, 0x00ff00ff00ff00ffn], [16n, 0x0000ffff0000ffffn]] as const) {
      emit(OP.localTee, ...uleb(T2));
      c64(shift);
      emit(OP.i64ShrU);
      c64(mask);
      emit(OP.i64And);
      get(T2);
      c64(mask);
      emit(OP.i64And);
      c64(shift);
      emit(OP.i64Shl);
      emit(OP.i64Or);
    }
    c64(32n);
    emit(OP.i64Rotl);
  };

  // locals declaration is added by the caller; body:
  for (let i = 0; i < 8; i++) {
    c64(IV[i] as bigint);
    set(H(i));
  }
  emit(OP.block, 0x40, OP.loop, 0x40);
  // if nblocks == 0 break
  get(1);
  emit(OP.i32Eqz, OP.brIf, 1);

  for (let t = 0; t < 16; t++) {
    loadBe(t * 8);
    set(W(t));
  }
  for (let t = 16; t < 80; t++) {
    // σ1(W[t-2]) + W[t-7] + σ0(W[t-15]) + W[t-16]
    rotr(W(t - 2), 19);
    rotr(W(t - 2), 61);
    emit(OP.i64Xor);
    shr(W(t - 2), 6);
    emit(OP.i64Xor);
    get(W(t - 7));
    emit(OP.i64Add);
    rotr(W(t - 15), 1);
    rotr(W(t - 15), 8);
    emit(OP.i64Xor);
    shr(W(t - 15), 7);
    emit(OP.i64Xor);
    emit(OP.i64Add);
    get(W(t - 16));
    emit(OP.i64Add);
    set(W(t));
  }
  for (let i = 0; i < 8; i++) {
    get(H(i));
    set(V(i));
  }
  // names[k] = the local holding working variable k (a..h) this round.
  let names = [0, 1, 2, 3, 4, 5, 6, 7].map(V);
  for (let t = 0; t < 80; t++) {
    const [a, b, c, d, e, f, g, h] = names as [number, number, number, number, number, number, number, number];
    // T1 = h + Σ1(e) + Ch(e,f,g) + K[t] + W[t]
    get(h);
    rotr(e, 14);
    rotr(e, 18);
    emit(OP.i64Xor);
    rotr(e, 41);
    emit(OP.i64Xor);
    emit(OP.i64Add);
    get(g); // Ch = g ^ (e & (f ^ g))
    get(e);
    get(f);
    get(g);
    emit(OP.i64Xor, OP.i64And, OP.i64Xor);
    emit(OP.i64Add);
    c64(K[t] as bigint);
    emit(OP.i64Add);
    get(W(t));
    emit(OP.i64Add);
    set(T1);
    // T2 = Σ0(a) + Maj(a,b,c), Maj = (a & b) | (c & (a | b))
    rotr(a, 28);
    rotr(a, 34);
    emit(OP.i64Xor);
    rotr(a, 39);
    emit(OP.i64Xor);
    get(a);
    get(b);
    emit(OP.i64And);
    get(c);
    get(a);
    get(b);
    emit(OP.i64Or, OP.i64And, OP.i64Or);
    emit(OP.i64Add);
    set(T2);
    // d's local becomes the new e; h's local becomes the new a.
    get(d);
    get(T1);
    emit(OP.i64Add);
    set(d);
    get(T1);
    get(T2);
    emit(OP.i64Add);
    set(h);
    names = [h, a, b, c, d, e, f, g];
  }
  for (let i = 0; i < 8; i++) {
    get(H(i));
    get(names[i] as number);
    emit(OP.i64Add);
    set(H(i));
  }
  // ptr += 128; nblocks -= 1; continue
  get(0);
  emit(OP.i32Const, ...sleb(128n), OP.i32Add);
  set(0);
  get(1);
  emit(OP.i32Const, 1, OP.i32Sub);
  set(1);
  emit(OP.br, 0, OP.end, OP.end);
  for (let i = 0; i < 8; i++) {
    get(2);
    get(H(i));
    bswapTop();
    emit(OP.i64Store, 3, ...uleb(i * 8));
  }
  emit(OP.end);
  // Locals: one group of 98 i64 (H, V, W, t1, t2).
  return [1, ...uleb(98), I64, ...code];
}

function moduleBytes(): Uint8Array {
  // hash(ptr, nblocks, out: i32) -> ()
  return oneFunctionModule({ params: [I32, I32, I32], results: [], exportName: 'hash', body: hashFunctionBody() });
}

export interface Sha512Kernel {
  memory: WasmMemory;
  /** Hash `nblocks` already-padded 128-byte blocks at `ptr`; the 64-byte digest goes to `out`. */
  hash(ptr: number, nblocks: number, out: number): void;
}

let compiled: object | undefined;

/** A kernel with its own memory of at least `bytes` bytes. */
export function createSha512Kernel(bytes: number): Sha512Kernel {
  compiled ??= new wasm.Module(moduleBytes());
  const memory = new wasm.Memory({ initial: Math.max(1, Math.ceil(bytes / 65536)) });
  const instance = new wasm.Instance(compiled, { env: { mem: memory } });
  return { memory, hash: instance.exports.hash as (ptr: number, nblocks: number, out: number) => void };
}
/** Append SHA-512 padding to a message of `length` bytes: the padded size (a multiple of 128). */
export function paddedLength(length: number): number {
  return Math.ceil((length + 17) / 128) * 128;
}

/** Write the padding for a `length`-byte message that starts at `at` in `mem`. */
export function writePadding(mem: Uint8Array, at: number, length: number): void {
  const end = at + paddedLength(length);
  mem.fill(0, at + length, end);
  mem[at + length] = 0x80;
  const bits = BigInt(length) * 8n;
  for (let i = 0; i < 16; i++) mem[end - 1 - i] = Number((bits >> BigInt(8 * i)) & 0xffn);
}
