// POP3 multi-line encoding (bare LF -> CRLF, a dot after a line end doubled) in WebAssembly,
// generated here as bytecode like the SHA-512 kernel (no toolchain, no binary blob). A 100 KB
// message has ~1400 lines: finding them with Buffer.indexOf costs a call into C++ per line, which
// made the encoding a quarter of a RETR's CPU. Here each 16-byte block costs one SIMD compare, and
// only line ends and line starts go byte by byte.

import { I32, V128, oneFunctionModule, uleb, wasm } from '../wasm.ts';

const OP = {
  block: 0x02, loop: 0x03, if: 0x04, else: 0x05, end: 0x0b, br: 0x0c, brIf: 0x0d, void: 0x40,
  localGet: 0x20, localSet: 0x21, localTee: 0x22,
  i32Load8u: 0x2d, i32Store8: 0x3a, i32Const: 0x41,
  i32Eqz: 0x45, i32Eq: 0x46, i32Ne: 0x47, i32LeU: 0x4d, i32GeU: 0x4f,
  i32Ctz: 0x68, i32Add: 0x6a, i32Sub: 0x6b, i32And: 0x71,
  simd: 0xfd,
} as const;
const SIMD = { v128Load: 0x00, v128Store: 0x0b, i8x16Splat: 0x0f, i8x16Eq: 0x23, i8x16Bitmask: 0x64 } as const;
const LF = 0x0a;
const CR = 0x0d;
const DOT = 0x2e;

/**
 * `encode(src, n, dst, prev) -> written`: encode n bytes at src into dst; `prev` is the byte
 * before src (LF at the start of a message). The caller knows the new `prev`: src[n - 1].
 * Each 16-byte block is copied whole and, when it holds an LF, the output is cut back to just
 * before the first one; the LF itself and the byte after it (a possible dot) go one at a time.
 */
function encodeFunctionBody(): number[] {
  // Parameters: src 0, n 1, dst 2, prev 3. Locals: end 4, w 5, c 6, m 7 (i32), v 8 (v128).
  const [src, n, dst, prev, end, w, c, m, v] = [0, 1, 2, 3, 4, 5, 6, 7, 8];
  const get = (i: number) => [OP.localGet, i];
  const set = (i: number) => [OP.localSet, i];
  const cnst = (x: number) => [OP.i32Const, x]; // every constant used is below 64: one sleb byte
  const mem0 = [0, 0]; // memarg: align 1, offset 0
  const add = (i: number, by: number[]) => [...get(i), ...by, OP.i32Add, ...set(i)];
  const putByte = (x: number[]) => [...get(w), ...x, OP.i32Store8, ...mem0, ...add(w, cnst(1))];
  const prevFromSrc = [...get(src), ...cnst(1), OP.i32Sub, OP.i32Load8u, ...mem0, ...set(prev)];
  return [
    ...[2, 4, I32, 1, V128], // locals: 4 x i32, 1 x v128
    ...get(src), ...get(n), OP.i32Add, ...set(end),
    ...get(dst), ...set(w),
    OP.block, OP.void, // exit
    OP.loop, OP.void, // top
    OP.block, OP.void, // one byte: leaving this block handles the byte at src
    ...get(src), ...cnst(16), OP.i32Add, ...get(end), OP.i32LeU, OP.i32Eqz,
    OP.if, OP.void, // less than a block left
    ...get(src), ...get(end), OP.i32GeU, OP.brIf, 3,
    OP.br, 1,
    OP.end,
    // At a line start a dot may need stuffing: one byte at a time.
    ...get(prev), ...cnst(LF), OP.i32Eq, OP.brIf, 0,
    ...get(src), OP.simd, SIMD.v128Load, ...mem0, ...set(v),
    ...get(w), ...get(v), OP.simd, SIMD.v128Store, ...mem0,
    ...get(v), ...cnst(LF), OP.simd, SIMD.i8x16Splat, OP.simd, SIMD.i8x16Eq, OP.simd, ...uleb(SIMD.i8x16Bitmask), OP.localTee, m,
    OP.i32Eqz,
    OP.if, OP.void, // no LF: the block is done
    ...add(w, cnst(16)), ...add(src, cnst(16)), ...prevFromSrc,
    OP.br, 2,
    OP.end,
    // Keep what came before the first LF; the LF is the byte at src.
    ...get(m), OP.i32Ctz, ...set(m),
    ...add(w, get(m)), ...add(src, get(m)),
    ...get(m), OP.if, OP.void, ...prevFromSrc, OP.end,
    OP.end,
    ...get(src), OP.i32Load8u, ...mem0, ...set(c),
    ...get(c), ...cnst(LF), OP.i32Eq,
    OP.if, OP.void,
    ...get(prev), ...cnst(CR), OP.i32Ne,
    OP.if, OP.void, ...putByte(cnst(CR)), OP.end,
    OP.else,
    ...get(c), ...cnst(DOT), OP.i32Eq, ...get(prev), ...cnst(LF), OP.i32Eq, OP.i32And,
    OP.if, OP.void, ...putByte(cnst(DOT)), OP.end,
    OP.end,
    ...putByte(get(c)),
    ...get(c), ...set(prev),
    ...add(src, cnst(1)),
    OP.br, 0, // top
    OP.end,
    OP.end,
    ...get(w), ...get(dst), OP.i32Sub,
    OP.end,
  ];
}

/** Input bytes encoded per call; the output may be twice as long. */
export const ENCODE_BLOCK = 64 * 1024;
const OUTPUT_AT = ENCODE_BLOCK;

let kernel: { mem: Uint8Array; encode: (src: number, n: number, dst: number, prev: number) => number } | undefined;

function load(): NonNullable<typeof kernel> {
  const pages = Math.ceil((OUTPUT_AT + 2 * ENCODE_BLOCK + 16) / 65536);
  const memory = new wasm.Memory({ initial: pages });
  const bytes = oneFunctionModule({ params: [I32, I32, I32, I32], results: [I32], exportName: 'encode', body: encodeFunctionBody() });
  const instance = new wasm.Instance(new wasm.Module(bytes), { env: { mem: memory } });
  return { mem: new Uint8Array(memory.buffer), encode: instance.exports.encode as (src: number, n: number, dst: number, prev: number) => number };
}

/**
 * Encode `chunk` as POP3 data into `out` at `at` (which must have room for 2 x chunk.length);
 * `prev` is the byte before the chunk (LF at the start of a message). Returns the bytes written.
 */
export function encodeCrlfDotStuffed(chunk: Uint8Array, prev: number, out: Uint8Array, at: number): number {
  const k = (kernel ??= load());
  let w = at;
  for (let from = 0; from < chunk.length; from += ENCODE_BLOCK) {
    const piece = chunk.subarray(from, Math.min(chunk.length, from + ENCODE_BLOCK));
    k.mem.set(piece, 0);
    const written = k.encode(0, piece.length, OUTPUT_AT, from === 0 ? prev : (chunk[from - 1] as number));
    out.set(k.mem.subarray(OUTPUT_AT, OUTPUT_AT + written), w);
    w += written;
  }
  return w - at;
}
