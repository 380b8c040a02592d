// `npm run bench -- [--quick] [name ...]`: runs the named benchmarks (default: all), prints a
// table and writes the rows as JSON under bench/results/.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { BenchOptions, BenchResult } from './types.ts';

const ALL = ['grants', 'pop3', 'smtp', 'operator', 'bridge', 'writes', 'limits', 'credential-revocation'];
// Known, but run only when named: `revocation` takes 30 minutes, `node` brings up a real
// one-node cluster (root, minutes), `scale` fills control planes with up to a million grants (an hour and more).
const ON_REQUEST = ['revocation', 'node', 'scale'];
const args = process.argv.slice(2).filter((a) => a !== '--');
const quick = args.includes('--quick');
const wanted = args.filter((a) => !a.startsWith('--'));
const names = wanted.length > 0 ? wanted : ALL.filter((n) => fs.existsSync(new URL(`./${n}.ts`, import.meta.url)));

const resultsDir = new URL('./results/', import.meta.url).pathname;
fs.mkdirSync(resultsDir, { recursive: true });

function fmt(n: number | undefined): string {
  if (n === undefined || Number.isNaN(n)) return '';
  if (Math.abs(n) >= 100) return n.toFixed(0);
  if (Math.abs(n) >= 1) return n.toFixed(2);
  return n.toPrecision(3);
}

function table(rows: BenchResult[]): string {
  const cols = ['benchmark', 'ours', 'unit', 'peer', 'ratio', 'target', 'note'];
  const cells = rows.map((r) => [r.name, fmt(r.value), r.unit, fmt(r.peer), r.ratio === undefined ? '' : `${r.ratio.toFixed(2)}x`, r.target ?? '', r.note ?? '']);
  const widths = cols.map((c, i) => Math.max(c.length, ...cells.map((row) => (row[i] as string).length)));
  const line = (row: string[]) => `| ${row.map((c, i) => c.padEnd(widths[i] as number)).join(' | ')} |`;
  return [line(cols), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...cells.map(line)].join('\n');
}

let failed = false;
for (const name of names) {
  if (!ALL.includes(name) && !ON_REQUEST.includes(name)) {
    console.error(`unknown benchmark ${JSON.stringify(name)}; known: ${[...ALL, ...ON_REQUEST].join(', ')}`);
    process.exit(2);
  }
  const mod = (await import(`./${name}.ts`)) as { run: (opts: BenchOptions) => Promise<BenchResult[]> };
  console.log(`\n== ${name}${quick ? ' (quick)' : ''}`);
  const started = Date.now();
  try {
    const rows = await mod.run({ quick });
    console.log(table(rows));
    const file = path.join(resultsDir, `${name}-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
    const machine = { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model, memoryBytes: os.totalmem(), node: process.version };
    fs.writeFileSync(file, JSON.stringify({ benchmark: name, quick, startedAt: new Date(started).toISOString(), seconds: (Date.now() - started) / 1000, machine, rows }, null, 2));
    console.log(`written ${path.relative(process.cwd(), file)}`);
  } catch (err) {
    failed = true;
    console.error(`${name} failed: ${(err as Error).stack ?? String(err)}`);
  }
}
process.exit(failed ? 1 : 0);
