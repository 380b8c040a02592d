// `kubectl drac` argument parsing and output formatting (pure: no API server).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { UsageError, parseCliArgs } from '../../src/cli/args.ts';
import { expiresIn, shortDuration, table } from '../../src/cli/format.ts';

void describe('parseCliArgs', () => {
  it('takes kubectl\'s flags anywhere, in short and long form', () => {
    const a = parseCliArgs(['-n', 'mail', 'grant', '192.0.2.7', '--user=alice', '--for', '1h', '--context', 'prod', '-o', 'json']);
    assert.equal(a.command, 'grant');
    assert.deepEqual(a.positionals, ['192.0.2.7']);
    assert.equal(a.namespace, 'mail');
    assert.equal(a.context, 'prod');
    assert.equal(a.output, 'json');
    assert.equal(a.user, 'alice');
    assert.equal(a.for, '1h');
    assert.equal(parseCliArgs(['grants']).output, 'table');
    assert.equal(parseCliArgs(['--help']).help, true);
  });
  it('refuses unknown commands and flags, flags of other commands and other outputs', () => {
    assert.throws(() => parseCliArgs(['list']), UsageError);
    assert.throws(() => parseCliArgs(['grants', '--bogus']), /Unknown option '--bogus'/);
    assert.throws(() => parseCliArgs(['why', '192.0.2.7', '--for', '1h']), /--for does not apply to why/);
    assert.throws(() => parseCliArgs(['grants', '-o', 'wide']), /-o wide: expected -o json/);
  });
});

void describe('format', () => {
  it('shortDuration as kubectl shows ages', () => {
    assert.equal(shortDuration(0), '0s');
    assert.equal(shortDuration(45_000), '45s');
    assert.equal(shortDuration(150_000), '2m30s');
    assert.equal(shortDuration(29 * 60_000 + 5000), '29m');
    assert.equal(shortDuration(90 * 60_000), '1h30m');
    assert.equal(shortDuration(3_600_000), '1h');
    assert.equal(shortDuration(51 * 3_600_000), '2d3h');
  });
  it('expiresIn ahead and past', () => {
    assert.equal(expiresIn(1_000 + 60_000, 1_000), 'in 1m');
    assert.equal(expiresIn(1_000, 1_000 + 180_000), 'expired 3m ago');
  });
  it('table: columns three spaces apart, no trailing blanks', () => {
    assert.equal(table(['A', 'BB'], [['xxx', 'y'], ['z', '']]), 'A     BB\nxxx   y\nz\n');
  });
});
