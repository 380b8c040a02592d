// Small WebAssembly modules written here as bytecode (no toolchain, no binary blob): the encoding
// helpers they share, and the little of the WebAssembly API used, typed here (the project's
// TypeScript libs have no WebAssembly types).

/** Unsigned LEB128, as sizes, indexes and memory offsets are written. */
export function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n !== 0) byte |= 0x80;
    out.push(byte);
  } while (n !== 0);
  return out;
}

function section(id: number, payload: number[]): number[] {
  return [id, ...uleb(payload.length), ...payload];
}

export const I32 = 0x7f;
export const I64 = 0x7e;
export const V128 = 0x7b;

/**
 * A module of one function, exported as `exportName`, working on a memory it imports as
 * `env.mem`. `body` is the function body: its local declarations, its code and the final `end`.
 */
export function oneFunctionModule(opts: { params: number[]; results: number[]; exportName: string; body: number[] }): Uint8Array {
  const name = (s: string) => [...uleb(s.length), ...Buffer.from(s)];
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, [1, 0x60, opts.params.length, ...opts.params, opts.results.length, ...opts.results]), // type 0
    ...section(2, [1, ...name('env'), ...name('mem'), 0x02, 0x00, 1]), // import memory env.mem (min 1 page)
    ...section(3, [1, 0]), // one function, of type 0
    ...section(7, [1, ...name(opts.exportName), 0x00, 0]), // exported
    ...section(10, [1, ...uleb(opts.body.length), ...opts.body]),
  ]);
}

export interface WasmMemory {
  readonly buffer: ArrayBuffer;
  grow(pages: number): number;
}

interface WasmApi {
  Module: new (bytes: Uint8Array) => object;
  Memory: new (descriptor: { initial: number }) => WasmMemory;
  Instance: new (module: object, imports: object) => { exports: Record<string, unknown> };
}

export const wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;
