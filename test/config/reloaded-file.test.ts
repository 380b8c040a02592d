import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { ReloadedFile } from '../../src/config/reloaded-file.ts';
import type { LogFields, Logger } from '../../src/observability/log.ts';
import { eventually } from '../support/eventually.ts';

/** Records `level event fields` for each log line. */
function recordingLogger(lines: string[]): Logger {
  const put = (level: string) => (event: string, fields?: LogFields) => void lines.push(`${level} ${event} ${JSON.stringify(fields ?? {})}`);
  const log: Logger = { debug: put('debug'), info: put('info'), warn: put('warn'), error: put('error'), child: () => log };
  return log;
}

/** A file of comma-separated numbers; anything else on disk is refused. */
function numbersFile(
  dir: string,
  text: string,
  lines: string[],
  onChanged?: (before: number[], after: number[]) => void,
): { file: string; numbers: ReloadedFile<number[]> } {
  const file = path.join(dir, 'numbers');
  fs.writeFileSync(file, text);
  const numbers = new ReloadedFile({
    file,
    parse: (t) =>
      t.split(',').map((n, i) => {
        if (!/^\d+$/.test(n.trim())) throw new Error(`${file}: item ${i + 1} is not a number`);
        return Number(n);
      }),
    readError: (code) => new Error(`cannot read ${file}: ${code}`),
    eventPrefix: 'numbers',
    summary: (list) => ['count', list.length],
    log: recordingLogger(lines),
    pollIntervalMs: 0,
    debounceMs: 10,
    onChanged,
  });
  after(() => numbers.close());
  return { file, numbers };
}

describe('ReloadedFile (the last good version of a mounted file)', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kubedrac-reloaded-'));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('takes a changed file, refuses a broken one whole, and clears the error when the good one is back', () => {
    const lines: string[] = [];
    const { file, numbers } = numbersFile(fs.mkdtempSync(path.join(dir, 'a-')), '1,2', lines);
    assert.deepEqual(numbers.current, [1, 2]);
    assert.deepEqual(lines, [`info numbers_loaded {"file":${JSON.stringify(file)},"count":2}`]);
    assert.equal(numbers.reload(), false, 'the same text is no new version');

    fs.writeFileSync(file, '1,2,3');
    assert.equal(numbers.reload(), true);
    assert.deepEqual(numbers.current, [1, 2, 3]);

    fs.writeFileSync(file, '4,five');
    assert.equal(numbers.reload(), false);
    assert.deepEqual(numbers.current, [1, 2, 3], 'half a file is never taken');
    assert.match(numbers.lastError ?? '', /item 2 is not a number/);
    assert.equal(numbers.reload(), false);
    assert.equal(lines.filter((l) => l.startsWith('error numbers_reload_refused')).length, 1, 'the same refusal is logged once');
    assert.match(lines.at(-1) ?? '', /"keeping":3/);

    fs.rmSync(file);
    assert.equal(numbers.reload(), false);
    assert.match(numbers.lastError ?? '', /cannot read .*: ENOENT/);
    assert.deepEqual(numbers.current, [1, 2, 3], 'a vanished file keeps the last good version');

    fs.writeFileSync(file, '1,2,3');
    assert.equal(numbers.reload(), true, 'the good version back on disk ends the refusal');
    assert.equal(numbers.lastError, undefined);
    assert.deepEqual(numbers.current, [1, 2, 3]);
  });

  it('throws the read or parse error when the first load fails', () => {
    const sub = fs.mkdtempSync(path.join(dir, 'b-'));
    assert.throws(() => numbersFile(sub, 'x', []), /item 1 is not a number/);
  });

  it('follows a change on disk by itself (the directory watch), and says what it replaced', async () => {
    const lines: string[] = [];
    const changes: [number[], number[]][] = [];
    const { file, numbers } = numbersFile(fs.mkdtempSync(path.join(dir, 'c-')), '7', lines, (before, after) => changes.push([before, after]));
    fs.writeFileSync(file, '7,8');
    await eventually('the change picked up', () => numbers.current.length === 2);
    assert.ok(lines.some((l) => l.startsWith('info numbers_reloaded')));
    assert.deepEqual(changes, [[[7], [7, 8]]]);
    fs.writeFileSync(file, '7,x');
    assert.equal(numbers.reload(), false);
    assert.equal(changes.length, 1, 'a refused version changes nothing');
  });
});
