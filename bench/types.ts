// What every benchmark returns: one row per figure, with the peer's figure and the ratio where a
// peer was measured in the same run.
export interface BenchResult {
  name: string;
  value: number;
  unit: string;
  /** The peer's (or the ceiling's) figure measured in the same run. */
  peer?: number;
  /** ours / peer, oriented so that higher is better for us. */
  ratio?: number;
  target?: string;
  note?: string;
}

export interface BenchOptions {
  quick: boolean;
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] as number;
}
