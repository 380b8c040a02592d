// Netstrings (`<len>:<bytes>,`), the framing of sendmail's and Postfix's socketmap. Pure code: an
// incremental decoder fed whatever chunks a socket delivers, and an encoder. The decoder is strict
// (a length is decimal digits without leading zeros, bounded, and the payload is followed by a
// comma) because a lenient one lets a peer desynchronise the stream.

/** Digits of the longest length we accept (keeps the number exact and the scan short). */
const MAX_LENGTH_DIGITS = 9;

export class NetstringError extends Error {
  override readonly name = 'NetstringError';
}

/**
 * Splits a byte stream into netstring payloads. `push` returns the payloads completed by a chunk
 * (latin1 strings: socketmap requests are ASCII, and latin1 maps bytes 1:1) or throws a
 * NetstringError; after an error the stream cannot be trusted and the decoder refuses more input.
 */
export class NetstringDecoder {
  readonly maxLength: number;
  /** Bytes of an incomplete netstring kept from earlier chunks. */
  private pending: Buffer | undefined;
  private failed = false;

  constructor(maxLength: number) {
    this.maxLength = maxLength;
  }

  /** Bytes held for an incomplete netstring. */
  get buffered(): number {
    return this.pending?.length ?? 0;
  }

  /** Calls `onPayload` for each complete netstring in order; throws NetstringError on bad framing. */
  push(chunk: Buffer, onPayload: (payload: string) => void): void {
    if (this.failed) throw new NetstringError('stream already failed');
    const buf = this.pending ? Buffer.concat([this.pending, chunk]) : chunk;
    this.pending = undefined;
    let pos = 0;
    const n = buf.length;
    while (pos < n) {
      // The length: digits up to ':'.
      let len = 0;
      let i = pos;
      for (; i < n; i++) {
        const c = buf[i] as number;
        if (c === 58 /* : */) break;
        if (c < 48 || c > 57) return this.fail(`length must be decimal digits (got byte ${c})`);
        if (i > pos && len === 0) return this.fail('length has a leading zero');
        if (i - pos >= MAX_LENGTH_DIGITS) return this.fail('length too long');
        len = len * 10 + (c - 48);
        if (len > this.maxLength) return this.fail(`netstring longer than ${this.maxLength} bytes`);
      }
      if (i === n) break; // the length is incomplete
      if (i === pos) return this.fail('empty length');
      const start = i + 1;
      const end = start + len;
      if (end >= n) break; // payload or comma still to come
      if (buf[end] !== 44 /* , */) return this.fail('netstring not followed by a comma');
      onPayload(buf.toString('latin1', start, end));
      pos = end + 1;
    }
    if (pos < n) this.pending = pos === 0 && buf !== chunk ? buf : Buffer.from(buf.subarray(pos));
  }

  private fail(reason: string): never {
    this.failed = true;
    this.pending = undefined;
    throw new NetstringError(reason);
  }
}

/** `<len>:<payload>,` for an ASCII/latin1 payload. */
export function encodeNetstring(payload: string): string {
  return `${payload.length}:${payload},`;
}
