// Keys that were renamed: the old name keeps working, the role logs a warning naming it, and
// setting both is refused (which one would win is not obvious to whoever reads the file).
import type { Logger } from '../observability/log.ts';
import { ConfigError, type ConfigReader } from './reader.ts';

/** A deprecated key found in the file (dotted paths), for the role to log at start. */
export interface RenamedKey {
  key: string;
  use: string;
}

export interface KeyAt {
  reader: ConfigReader;
  key: string;
}

/** Where to read a setting: its current key, or its old key when only that one is set (noted in `renamed`). */
export function keyInUse(current: KeyAt, old: KeyAt, renamed: RenamedKey[]): KeyAt {
  if (!old.reader.has(old.key)) return current;
  const oldPath = old.reader.keyPath(old.key);
  const currentPath = current.reader.keyPath(current.key);
  if (current.reader.has(current.key)) throw new ConfigError(oldPath, `is the old name of ${currentPath}: set only ${currentPath}`);
  renamed.push({ key: oldPath, use: currentPath });
  return old;
}

export function logRenamedKeys(log: Logger, renamed: readonly RenamedKey[]): void {
  for (const r of renamed) log.warn('config_key_deprecated', { key: r.key, use: r.use });
}
