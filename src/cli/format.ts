// Output of `kubectl drac`: tables as kubectl prints them (upper-case headers, columns three
// spaces apart), and durations as kubectl shows ages (29m, 1h30m, 45s).

export function table(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] as number)))
      .join('   ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

/** A duration in kubectl's short style: `45s`, `29m`, `1h30m`, `2d3h` (two units at most). */
export function shortDuration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return s % 60 === 0 || m >= 10 ? `${m}m` : `${m}m${s % 60}s`;
  const h = Math.floor(m / 60);
  if (h < 24) return m % 60 === 0 ? `${h}h` : `${h}h${m % 60}m`;
  const d = Math.floor(h / 24);
  return h % 24 === 0 ? `${d}d` : `${d}d${h % 24}h`;
}

/** `in 29m` for a time ahead, `expired 3m ago` for one past. */
export function expiresIn(expiresAtMs: number, nowMs: number): string {
  return expiresAtMs > nowMs ? `in ${shortDuration(expiresAtMs - nowMs)}` : `expired ${shortDuration(nowMs - expiresAtMs)} ago`;
}
