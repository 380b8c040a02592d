// `npm run bench -- bridge`: the bridge's readers (socketmap lookups/s, policy decisions/s with
// 100k grants) and its DRAC writer (ADD/s through the portmapper), one after the other so they
// never share the two cores.
import { run as runReaders } from './bridge-readers.ts';
import { run as runDrac } from './bridge-drac.ts';
import type { BenchOptions, BenchResult } from './types.ts';

export async function run(opts: BenchOptions): Promise<BenchResult[]> {
  return [...(await runReaders(opts)), ...(await runDrac(opts))];
}
