// SHA-512 compression in WebAssembly, generated here as bytecode (no toolchain, no binary blob).
// SHA512-CRYPT's 5000 rounds each hash ~100 bytes: through node:crypto every round pays a call into
// OpenSSL (~1 µs); this kernel runs a whole round in ~300 ns, as fast as glibc's crypt(3) here. The
// 80 rounds are unrolled with the message schedule computed as they go, the eight working variables
// are renamed instead of moved, Σ0/Σ1/σ0/σ1 are nested rotations (one copy of the input fewer) and
// Maj reuses the previous round's a ^ b. `cryptRounds` runs all of SHA-crypt's rounds in one call.
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
  block: 0x02, loop: 0x03, br: 0x0c, brIf: 0x0d, end: 0x0b, select: 0x1b,
  localGet: 0x20, localSet: 0x21, localTee: 0x22,
  i32Load: 0x28, i64Load: 0x29, i64Store: 0x37,
  i32Const: 0x41, i64Const: 0x42, i32Eqz: 0x45, i32Eq: 0x46, i32Ne: 0x47, i32Add: 0x6a, i32Sub: 0x6b, i32Or: 0x72, i32Xor: 0x73, i32Shl: 0x74,
  i64Add: 0x7c, i64Sub: 0x7d, i64And: 0x83, i64Or: 0x84, i64Xor: 0x85, i64Shl: 0x86, i64ShrU: 0x88, i64Rotl: 0x89, i64Rotr: 0x8a,
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

/** Bytecode emitter for one function: i64 locals H0..H7, v0..v7, W0..W79, t1, t2, ab0, ab1 from `firstI64` on. */
function emitter(firstI64: number) {
  const code: number[] = [];
  const emit = (...bytes: number[]) => code.push(...bytes);
  const H = (i: number) => firstI64 + i;
  const V = (i: number) => firstI64 + 8 + i;
  const W = (i: number) => firstI64 + 16 + i;
  const T1 = firstI64 + 96;
  const T2 = firstI64 + 97;
  const AB = (i: number) => firstI64 + 98 + i;
  const get = (l: number) => emit(OP.localGet, ...uleb(l));
  const set = (l: number) => emit(OP.localSet, ...uleb(l));
  const c64 = (v: bigint) => emit(OP.i64Const, ...sleb(v));
  const c32 = (v: number) => emit(OP.i32Const, ...sleb(BigInt(v)));
  const shr = (l: number, n: number) => {
    get(l);
    c64(BigInt(n));
    emit(OP.i64ShrU);
  };
  /** Reverse the bytes of the i64 on the stack (T2 is scratch). */
  const bswapTop = () => {
    // x = ((x >> 8) & m8) | ((x & m8) << 8); same with 16; then rotate by 32.
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
  /** One 128-byte block at local `ptr` into H0..H7, each 8-byte word stored little-endian (a plain load is the word). */
  const compress = (ptr: number) => {
    for (let t = 0; t < 16; t++) {
      get(ptr);
      emit(OP.i64Load, 3, ...uleb(t * 8));
      set(W(t));
    }
    /** rotr(x, r0) ^ rotr(x, r1) ^ rotr(x, r2) as rotr(x ^ rotr(x ^ rotr(x, r2 - r1), r1 - r0), r0). */
    const sigma = (x: number, [r0, r1, r2]: [number, number, number]) => {
      get(x);
      get(x);
      c64(BigInt(r2 - r1));
      emit(OP.i64Rotr, OP.i64Xor);
      c64(BigInt(r1 - r0));
      emit(OP.i64Rotr);
      get(x);
      emit(OP.i64Xor);
      c64(BigInt(r0));
      emit(OP.i64Rotr);
    };
    /** rotr(x, r0) ^ rotr(x, r1) ^ x >> s as rotr(x ^ rotr(x, r1 - r0), r0) ^ x >> s. */
    const smallSigma = (x: number, r0: number, r1: number, s: number) => {
      get(x);
      get(x);
      c64(BigInt(r1 - r0));
      emit(OP.i64Rotr, OP.i64Xor);
      c64(BigInt(r0));
      emit(OP.i64Rotr);
      shr(x, s);
      emit(OP.i64Xor);
    };
    /** W[t] = σ1(W[t-2]) + W[t-7] + σ0(W[t-15]) + W[t-16], computed just before round t needs it. */
    const schedule = (t: number) => {
      smallSigma(W(t - 2), 19, 61, 6);
      get(W(t - 7));
      emit(OP.i64Add);
      smallSigma(W(t - 15), 1, 8, 7);
      emit(OP.i64Add);
      get(W(t - 16));
      emit(OP.i64Add);
      set(W(t));
    };
    for (let i = 0; i < 8; i++) {
      get(H(i));
      set(V(i));
    }
    // names[k] = the local holding working variable k (a..h) this round.
    let names = [0, 1, 2, 3, 4, 5, 6, 7].map(V);
    for (let t = 0; t < 80; t++) {
      const [a, b, c, d, e, f, g, h] = names as [number, number, number, number, number, number, number, number];
      if (t >= 16) schedule(t);
      // T1 = h + Σ1(e) + Ch(e,f,g) + K[t] + W[t]
      get(h);
      sigma(e, [14, 18, 41]);
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
      // T2 = Σ0(a) + Maj(a,b,c), Maj = ((a ^ b) & (b ^ c)) ^ b: this round's a ^ b is the next
      // round's b ^ c, kept in AB0/AB1 by turns.
      sigma(a, [28, 34, 39]);
      const ab = AB(t & 1);
      const bc = AB((t + 1) & 1);
      if (t === 0) {
        get(b);
        get(c);
        emit(OP.i64Xor);
        set(bc);
      }
      get(a);
      get(b);
      emit(OP.i64Xor, OP.localTee, ...uleb(ab));
      get(bc);
      emit(OP.i64And);
      get(b);
      emit(OP.i64Xor);
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
  };
  const initH = () => {
    for (let i = 0; i < 8; i++) {
      c64(IV[i] as bigint);
      set(H(i));
    }
  };
  /** Hash `nb` (local) blocks from `ptr` (local) into H, both locals advanced to the end. */
  const blocks = (ptr: number, nb: number) => {
    emit(OP.block, 0x40, OP.loop, 0x40);
    get(nb);
    emit(OP.i32Eqz, OP.brIf, 1);
    compress(ptr);
    get(ptr);
    c32(128);
    emit(OP.i32Add);
    set(ptr);
    get(nb);
    c32(1);
    emit(OP.i32Sub);
    set(nb);
    emit(OP.br, 0, OP.end, OP.end);
  };
  return { code, emit, H, get, set, c32, c64, bswapTop, initH, blocks };
}

/** Bytes per entry of the layout table of `cryptRounds`. */
export const LAYOUT_ENTRY = 64;

/**
 * Bytecode of `cryptRounds(table, rounds, digest)`: the rounds loop of SHA-crypt (SHA-512), all of
 * it in here. Round i hashes one of eight layouts of C (the previous digest), P and S, chosen by
 * (i odd, i % 3 != 0, i % 7 != 0); `table` has an entry of LAYOUT_ENTRY bytes per layout:
 *   +0 i32 start of its padded blocks, each 8-byte word stored little-endian (a load is the word)
 *   +4 i32 address of the word C begins in; +8 i32 blocks; +16 i64 8 x (C's offset mod 8)
 *   +24 i64 that first word without C; +32 i64 the word after C's last full word, without C.
 * C is written into the layout as words shifted into place (no byte swapping per round); the
 * digest at `digest` (64 bytes, big-endian) is A on entry and the result on return.
 */
function cryptRoundsFunctionBody(): number[] {
  // Parameters 0..2: table, rounds, digest (i32). i64 locals 3..102 (H, v, W, t1, t2, ab0, ab1),
  // then R (103) and 56 - R (104); i32 locals: ptr, nb, entry, odd, m3, m7, q.
  const e = emitter(3);
  const R = 103;
  const L = 104;
  const [ptr, nb, entry, odd, m3, m7, q] = [105, 106, 107, 108, 109, 110, 111];
  const { emit, get, set, c32, c64, H } = e;
  const load32 = (offset: number) => emit(OP.i32Load, 2, ...uleb(offset));
  const load64 = (offset: number) => emit(OP.i64Load, 3, ...uleb(offset));
  const store64 = (offset: number) => emit(OP.i64Store, 3, ...uleb(offset));
  for (let i = 0; i < 8; i++) {
    get(2);
    load64(i * 8);
    e.bswapTop();
    set(H(i));
  }
  emit(OP.block, 0x40, OP.loop, 0x40);
  get(1);
  emit(OP.i32Eqz, OP.brIf, 1);
  // entry = table + (odd << 2 | (m3 != 0) << 1 | (m7 != 0)) * LAYOUT_ENTRY
  get(odd);
  c32(2);
  emit(OP.i32Shl);
  get(m3);
  c32(0);
  emit(OP.i32Ne);
  c32(1);
  emit(OP.i32Shl, OP.i32Or);
  get(m7);
  c32(0);
  emit(OP.i32Ne, OP.i32Or);
  c32(Math.log2(LAYOUT_ENTRY));
  emit(OP.i32Shl);
  get(0);
  emit(OP.i32Add);
  set(entry);
  get(entry);
  load32(0);
  set(ptr);
  get(entry);
  load32(4);
  set(q);
  get(entry);
  load32(8);
  set(nb);
  get(entry);
  load64(16);
  emit(OP.localTee, ...uleb(R));
  c64(56n);
  get(R);
  emit(OP.i64Sub);
  set(L);
  // C into its words: first = const | H0 >> R; then H[j-1] << (64 - R) | H[j] >> R; last =
  // const | H7 << (64 - R). (x << (56 - R)) << 8 is 0 for R = 0, where x << 64 would be x.
  const carried = (j: number) => {
    get(H(j));
    get(L);
    emit(OP.i64Shl);
    c64(8n);
    emit(OP.i64Shl);
  };
  get(q);
  get(entry);
  load64(24);
  get(H(0));
  get(R);
  emit(OP.i64ShrU, OP.i64Or);
  store64(0);
  for (let j = 1; j < 8; j++) {
    get(q);
    carried(j - 1);
    get(H(j));
    get(R);
    emit(OP.i64ShrU, OP.i64Or);
    store64(j * 8);
  }
  get(q);
  get(entry);
  load64(32);
  carried(7);
  emit(OP.i64Or);
  store64(64);
  e.initH();
  e.blocks(ptr, nb);
  // odd ^= 1; m3 = (m3 + 1) % 3; m7 = (m7 + 1) % 7; rounds -= 1
  get(odd);
  c32(1);
  emit(OP.i32Xor);
  set(odd);
  for (const [m, n] of [[m3, 3], [m7, 7]] as const) {
    c32(0);
    get(m);
    c32(1);
    emit(OP.i32Add, OP.localTee, ...uleb(m));
    get(m);
    c32(n);
    emit(OP.i32Eq, OP.select);
    set(m);
  }
  get(1);
  c32(1);
  emit(OP.i32Sub);
  set(1);
  emit(OP.br, 0, OP.end, OP.end);
  for (let i = 0; i < 8; i++) {
    get(2);
    get(H(i));
    e.bswapTop();
    store64(i * 8);
  }
  emit(OP.end);
  // Locals: 102 i64 (H, v, W, t1, t2, ab0, ab1, R, L), 7 i32.
  return [2, ...uleb(102), I64, 7, I32, ...e.code];
}

function cryptModuleBytes(): Uint8Array {
  // cryptRounds(table, rounds, digest: i32) -> ()
  return oneFunctionModule({ params: [I32, I32, I32], results: [], exportName: 'cryptRounds', body: cryptRoundsFunctionBody() });
}

export interface Sha512Kernel {
  memory: WasmMemory;
  /** SHA-crypt's rounds over the layouts described at `table` (see cryptRoundsFunctionBody). */
  cryptRounds(table: number, rounds: number, digest: number): void;
}

let compiled: object | undefined;

/** A kernel with its own memory of at least `bytes` bytes. */
export function createSha512Kernel(bytes: number): Sha512Kernel {
  compiled ??= new wasm.Module(cryptModuleBytes());
  const memory = new wasm.Memory({ initial: Math.max(1, Math.ceil(bytes / 65536)) });
  const crypt = new wasm.Instance(compiled, { env: { mem: memory } });
  return { memory, cryptRounds: crypt.exports.cryptRounds as (table: number, rounds: number, digest: number) => void };
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
