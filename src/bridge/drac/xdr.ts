// XDR (RFC 4506): the big-endian, four-byte-aligned encoding under ONC RPC. Pure, no I/O.
// The reader never throws and never reads past its input: the first short or oversized read
// sets `error` (sticky), later reads return zero values, and the caller checks `error` once
// after decoding a whole structure.

export class XdrReader {
  private readonly buf: Uint8Array;
  private readonly view: DataView;
  private pos = 0;
  private failure: string | undefined;

  constructor(buf: Uint8Array) {
    this.buf = buf;
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  /**
   * Why decoding failed (the first failure), or undefined while all is well. A method, not a
   * field, so that a check before further reads is not taken as still true after them.
   */
  error(): string | undefined {
    return this.failure;
  }

  get offset(): number {
    return this.pos;
  }

  get remaining(): number {
    return this.buf.byteLength - this.pos;
  }

  private fail(why: string): void {
    this.failure ??= `${why} at offset ${this.pos} of ${this.buf.byteLength}`;
    this.pos = this.buf.byteLength;
  }

  private take(n: number, what: string): boolean {
    if (this.failure !== undefined) return false;
    if (n > this.remaining) {
      this.fail(`truncated ${what}: needs ${n} bytes, ${this.remaining} left`);
      return false;
    }
    return true;
  }

  uint32(): number {
    if (!this.take(4, 'unsigned int')) return 0;
    const v = this.view.getUint32(this.pos);
    this.pos += 4;
    return v;
  }

  int32(): number {
    if (!this.take(4, 'int')) return 0;
    const v = this.view.getInt32(this.pos);
    this.pos += 4;
    return v;
  }

  bool(): boolean {
    const v = this.uint32();
    if (v > 1) this.fail(`bool must be 0 or 1, got ${v}`);
    return v === 1;
  }

  /** Fixed-length opaque: `n` bytes plus padding to a multiple of four. A view, not a copy. */
  opaqueFixed(n: number): Uint8Array {
    const padded = (n + 3) & ~3;
    if (!this.take(padded, `opaque[${n}]`)) return new Uint8Array(0);
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += padded;
    return out;
  }

  /** Variable-length opaque with its length word; longer than `max` is an error. */
  opaque(max: number): Uint8Array {
    const n = this.uint32();
    if (this.failure !== undefined) return new Uint8Array(0);
    if (n > max) {
      this.fail(`opaque of ${n} bytes exceeds its limit of ${max}`);
      return new Uint8Array(0);
    }
    return this.opaqueFixed(n);
  }

  /** A string (bytes as Latin-1: XDR strings are ASCII in practice; no decoding error possible). */
  string(max: number): string {
    const bytes = this.opaque(max);
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1');
  }

  /** The bytes not read yet (a view). */
  rest(): Uint8Array {
    const out = this.buf.subarray(this.pos);
    this.pos = this.buf.byteLength;
    return out;
  }
}

/** Builds an XDR message in a growing buffer. */
export class XdrWriter {
  private buf: Buffer;
  private pos = 0;

  constructor(initialSize = 128) {
    this.buf = Buffer.allocUnsafe(initialSize);
  }

  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  uint32(v: number): this {
    this.room(4);
    this.buf.writeUInt32BE(v >>> 0, this.pos);
    this.pos += 4;
    return this;
  }

  int32(v: number): this {
    this.room(4);
    this.buf.writeInt32BE(v | 0, this.pos);
    this.pos += 4;
    return this;
  }

  bool(v: boolean): this {
    return this.uint32(v ? 1 : 0);
  }

  opaqueFixed(bytes: Uint8Array): this {
    const padded = (bytes.byteLength + 3) & ~3;
    this.room(padded);
    this.buf.set(bytes, this.pos);
    this.buf.fill(0, this.pos + bytes.byteLength, this.pos + padded);
    this.pos += padded;
    return this;
  }

  opaque(bytes: Uint8Array): this {
    return this.uint32(bytes.byteLength).opaqueFixed(bytes);
  }

  string(s: string): this {
    return this.opaque(Buffer.from(s, 'latin1'));
  }

  /** The bytes written so far (a copy, so the writer may be reused or dropped). */
  toBuffer(): Buffer {
    return Buffer.from(this.buf.subarray(0, this.pos));
  }
}
