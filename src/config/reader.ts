// Typed reading of one YAML mapping, with errors that name the key, the bad value and the expected form.
import { parseCidr } from '../net/ip.ts';

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  /** Dotted path of the offending key, e.g. `pop3.maxSessions`. */
  readonly key: string;
  constructor(key: string, message: string) {
    super(`${key}: ${message}`);
    this.key = key;
  }
}

function show(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a mapping';
  return JSON.stringify(value) ?? typeof value;
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const DURATION_RE = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)/;

/** `30m`, `90s`, `1h30m`, `250ms` -> milliseconds; undefined when not a duration. */
export function parseDuration(text: string): number | undefined {
  let rest = text.trim();
  if (rest === '') return undefined;
  let total = 0;
  while (rest !== '') {
    const m = DURATION_RE.exec(rest);
    if (!m) return undefined;
    total += Number(m[1]) * (DURATION_UNITS[m[2] as string] as number);
    rest = rest.slice(m[0].length);
  }
  return Math.round(total);
}

interface IntRange {
  min?: number;
  max?: number;
}

/**
 * Reads the keys of one mapping. Every getter takes a default (or none for required keys) and
 * records the key as known, so `finish()` can refuse typos instead of silently ignoring them.
 */
export class ConfigReader {
  readonly path: string;
  private readonly data: Record<string, unknown>;
  private readonly known = new Set<string>();

  constructor(data: unknown, path = '') {
    this.path = path;
    if (data === undefined || data === null) {
      this.data = {};
    } else if (typeof data === 'object' && !Array.isArray(data)) {
      this.data = data as Record<string, unknown>;
    } else {
      throw new ConfigError(path || '(top level)', `expected a mapping of keys, got ${show(data)}`);
    }
  }

  keyPath(key: string): string {
    return this.path ? `${this.path}.${key}` : key;
  }

  has(key: string): boolean {
    return this.data[key] !== undefined && this.data[key] !== null;
  }

  private raw(key: string): unknown {
    this.known.add(key);
    const v = this.data[key];
    return v === null ? undefined : v;
  }

  private fail(key: string, expected: string, value: unknown): never {
    throw new ConfigError(this.keyPath(key), `expected ${expected}, got ${show(value)}`);
  }

  private required(key: string, expected: string): never {
    throw new ConfigError(this.keyPath(key), `is required (${expected})`);
  }

  string(key: string, def?: string, pattern?: { re: RegExp; describe: string }): string {
    const v = this.raw(key);
    const expected = pattern?.describe ?? 'a string';
    if (v === undefined) return def ?? this.required(key, expected);
    if (typeof v !== 'string' || v === '') this.fail(key, expected, v);
    if (pattern && !pattern.re.test(v)) this.fail(key, expected, v);
    return v;
  }

  optionalString(key: string): string | undefined {
    const v = this.raw(key);
    if (v === undefined) return undefined;
    if (typeof v !== 'string' || v === '') this.fail(key, 'a non-empty string', v);
    return v;
  }

  int(key: string, def: number | undefined, range: IntRange = {}): number {
    const v = this.raw(key);
    const { min = Number.MIN_SAFE_INTEGER, max = Number.MAX_SAFE_INTEGER } = range;
    const expected =
      range.min !== undefined && range.max !== undefined
        ? `an integer from ${min} to ${max}`
        : range.min !== undefined
          ? `an integer >= ${min}`
          : 'an integer';
    if (v === undefined) return def ?? this.required(key, expected);
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) this.fail(key, expected, v);
    return v;
  }

  port(key: string, def?: number): number {
    return this.int(key, def, { min: 0, max: 65535 });
  }

  bool(key: string, def: boolean): boolean {
    const v = this.raw(key);
    if (v === undefined) return def;
    if (typeof v !== 'boolean') this.fail(key, 'true or false', v);
    return v;
  }

  /** A duration such as `30m`, `10s`, `1h30m`, `500ms`; returns milliseconds. */
  duration(key: string, def: string | undefined, range: { minMs?: number; maxMs?: number } = {}): number {
    const v = this.raw(key);
    const expected = 'a duration such as 30m, 10s or 500ms';
    if (v === undefined) {
      if (def === undefined) this.required(key, expected);
      return parseDuration(def) as number;
    }
    const ms = typeof v === 'string' ? parseDuration(v) : undefined;
    if (ms === undefined) this.fail(key, expected, v);
    if (range.minMs !== undefined && ms < range.minMs) {
      throw new ConfigError(this.keyPath(key), `must be at least ${range.minMs} ms, got ${show(v)}`);
    }
    if (range.maxMs !== undefined && ms > range.maxMs) {
      throw new ConfigError(this.keyPath(key), `must be at most ${range.maxMs} ms, got ${show(v)}`);
    }
    return ms;
  }

  oneOf<T extends string>(key: string, choices: readonly T[], def?: T): T {
    const v = this.raw(key);
    const expected = `one of ${choices.join(', ')}`;
    if (v === undefined) return def ?? this.required(key, expected);
    if (typeof v !== 'string' || !(choices as readonly string[]).includes(v)) this.fail(key, expected, v);
    return v as T;
  }

  stringList(key: string, def: string[] = []): string[] {
    const v = this.raw(key);
    if (v === undefined) return def;
    if (!Array.isArray(v)) this.fail(key, 'a list of strings', v);
    return v.map((item: unknown, i) => {
      if (typeof item !== 'string' || item === '') {
        throw new ConfigError(`${this.keyPath(key)}[${i}]`, `expected a non-empty string, got ${show(item)}`);
      }
      return item;
    });
  }

  /** A list of CIDRs or bare addresses (`10.0.0.0/8`, `2001:db8::/32`, `127.0.0.1`). */
  cidrList(key: string, def: string[] = []): string[] {
    const list = this.stringList(key, def);
    list.forEach((item, i) => {
      if (parseCidr(item) === undefined) {
        throw new ConfigError(
          `${this.keyPath(key)}[${i}]`,
          `expected an IP address or CIDR such as 10.0.0.0/8 or 2001:db8::/32, got ${show(item)}`,
        );
      }
    });
    return list;
  }

  section(key: string): ConfigReader {
    const v = this.raw(key);
    return new ConfigReader(v, this.keyPath(key));
  }

  /** Refuse keys no getter asked for: a typo must not silently fall back to a default. */
  finish(): void {
    for (const key of Object.keys(this.data)) {
      if (!this.known.has(key)) {
        const known = [...this.known].sort().join(', ');
        throw new ConfigError(this.keyPath(key), `unknown key (known keys here: ${known || 'none'})`);
      }
    }
  }
}

