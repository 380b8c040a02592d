import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { describe, it } from 'node:test';
import { createSha512Kernel, paddedLength, writePadding } from '../../src/auth/sha512-wasm.ts';

describe('SHA-512 WebAssembly kernel', () => {
  it('matches node:crypto for every length around the block edges, and random messages', () => {
    const k = createSha512Kernel(1 << 16);
    const mem = new Uint8Array(k.memory.buffer);
    const lengths = [...Array.from({ length: 300 }, (_, i) => i), 1000, 4096, 10_000];
    for (const len of lengths) {
      const msg = crypto.randomBytes(len);
      mem.set(msg, 128);
      writePadding(mem, 128, len);
      k.hash(128, paddedLength(len) / 128, 0);
      assert.equal(Buffer.from(mem.subarray(0, 64)).toString('hex'), crypto.hash('sha512', msg, 'hex'), `length ${len}`);
    }
  });
});
