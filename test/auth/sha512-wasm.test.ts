import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { roundsNode, roundsWasm } from '../../src/auth/sha-crypt.ts';

// The kernel's SHA-512 is checked through what it is for: SHA-crypt's rounds, against the same
// rounds through node:crypto. The layouts it hashes are 64 + |S| + 2|P| bytes at most, so
// passwords of 0 to 300 bytes put them on both sides of every block edge up to 6 blocks.
describe('SHA-512 WebAssembly kernel', () => {
  it('runs the rounds as node:crypto does, for every password length around the block edges', () => {
    const salt = crypto.randomBytes(16);
    for (let len = 0; len <= 300; len++) {
      const a = crypto.randomBytes(64);
      const p = crypto.randomBytes(len);
      for (const s of [salt, salt.subarray(0, len % 17)]) {
        assert.equal(roundsWasm(a, p, s, 8).toString('hex'), roundsNode('6', a, p, s, 8).toString('hex'), `|P| ${len}, |S| ${s.length}`);
      }
    }
  });

  it('runs the rounds as node:crypto does, for any digest, password, salt and number of rounds', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 64, maxLength: 64 }),
        fc.uint8Array({ maxLength: 400 }),
        fc.uint8Array({ maxLength: 16 }),
        fc.integer({ min: 1, max: 50 }),
        (a, p, s, rounds) => {
          const [ab, pb, sb] = [Buffer.from(a), Buffer.from(p), Buffer.from(s)];
          assert.equal(roundsWasm(ab, pb, sb, rounds).toString('hex'), roundsNode('6', ab, pb, sb, rounds).toString('hex'));
        },
      ),
      { numRuns: 300 },
    );
    // The default count, once: every layout many times over.
    const [a, p, s] = [crypto.randomBytes(64), crypto.randomBytes(20), crypto.randomBytes(16)];
    assert.equal(roundsWasm(a, p, s, 5000).toString('hex'), roundsNode('6', a, p, s, 5000).toString('hex'));
  });
});
