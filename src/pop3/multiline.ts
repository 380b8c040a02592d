// POP3 multi-line data (RFC 1939 section 3): the encoding of a message for RETR and TOP. Pure: it
// turns bytes into bytes; message-data.ts reads the files it encodes.
import { encodeCrlfDotStuffed } from './crlf-wasm.ts';

/**
 * Turns message bytes into POP3 multi-line data: bare LF becomes CRLF, a line starting with `.`
 * gets another `.`, and `end()` closes with `.\r\n` (after a CRLF if the message lacked one).
 * With `bodyLines` set (TOP), it passes the header, the blank line and that many body lines.
 */
export class DotStuffer {
  private atLineStart = true;
  private prevCr = false;
  // TOP only:
  private readonly limited: boolean;
  private inBody = false;
  private remainingBodyLines: number;
  /** Bytes of the current line so far, LF excluded. */
  private lineBytes = 0;
  /** Set once TOP has sent all it should: the caller may stop reading. */
  done = false;

  constructor(bodyLines?: number) {
    this.limited = bodyLines !== undefined;
    this.remainingBodyLines = bodyLines ?? 0;
  }

  /**
   * Encode one chunk; the result may share memory with `chunk`. RETR writes into `out` when it
   * holds twice the chunk (the worst case: every byte a bare LF).
   */
  push(chunk: Buffer, out?: Buffer): Buffer {
    if (this.done || chunk.length === 0) return EMPTY;
    return this.limited ? this.encodeLimited(chunk) : this.encodeAll(chunk, out);
  }

  /** RETR: every byte goes through (see crlf-wasm.ts), into `out` when it has room for the worst case. */
  private encodeAll(chunk: Buffer, out?: Buffer): Buffer {
    const target = out !== undefined && out.length >= 2 * chunk.length ? out : Buffer.allocUnsafe(2 * chunk.length);
    const written = encodeCrlfDotStuffed(chunk, this.prevCr ? 0x0d : this.atLineStart ? 0x0a : 0x00, target, 0);
    const last = chunk[chunk.length - 1];
    this.atLineStart = last === 0x0a;
    this.prevCr = last === 0x0d;
    return target.subarray(0, written);
  }

  /** TOP: the header, the empty line that ends it, then at most `bodyLines` body lines. */
  private encodeLimited(chunk: Buffer): Buffer {
    const parts: Buffer[] = [];
    let start = 0;
    while (start < chunk.length) {
      if (this.atLineStart && this.inBody && this.remainingBodyLines <= 0) {
        this.done = true;
        break;
      }
      const lf = chunk.indexOf(0x0a, start);
      if (this.atLineStart && chunk[start] === 0x2e) parts.push(DOT);
      if (lf === -1) {
        const piece = chunk.subarray(start);
        parts.push(piece);
        this.lineBytes += piece.length;
        this.prevCr = piece[piece.length - 1] === 0x0d;
        this.atLineStart = false;
        break;
      }
      const hadCr = lf > start ? chunk[lf - 1] === 0x0d : this.prevCr;
      this.lineBytes += lf - start;
      if (hadCr) parts.push(chunk.subarray(start, lf + 1));
      else parts.push(chunk.subarray(start, lf), CRLF);
      const empty = this.lineBytes === 0 || (hadCr && this.lineBytes === 1);
      if (this.inBody) this.remainingBodyLines--;
      else if (empty) this.inBody = true;
      this.lineBytes = 0;
      this.prevCr = false;
      this.atLineStart = true;
      start = lf + 1;
    }
    if (this.atLineStart && this.inBody && this.remainingBodyLines <= 0) this.done = true;
    return Buffer.concat(parts);
  }

  /** The terminator: `.\r\n`, preceded by a line end when the data did not end its last line. */
  end(): Buffer {
    if (this.atLineStart) return TERMINATOR;
    return this.prevCr ? LF_TERMINATOR : CRLF_TERMINATOR;
  }
}

const EMPTY = Buffer.alloc(0);
const LF_TERMINATOR = Buffer.from('\n.\r\n');
const CRLF_TERMINATOR = Buffer.from('\r\n.\r\n');
const DOT = Buffer.from('.');
const CRLF = Buffer.from('\r\n');
const TERMINATOR = Buffer.from('.\r\n');
