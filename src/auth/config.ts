// The `login:` config section: the guards of every password login (POP3 and SMTP AUTH alike).
import type { ConfigReader } from '../config/reader.ts';
import { keyInUse, type RenamedKey } from '../config/renamed.ts';

export interface LoginConfig {
  /** Every failed or throttled login is answered this long after it started. */
  failureDelayMs: number;
  /** Failures an address may make in `window` before its logins are refused unchecked. */
  maxFailuresPerAddress: number;
  /** Failures against one user, from anywhere, in `window` before that user's logins are refused. */
  maxFailuresPerUser: number;
  /** The allowance refills completely over this time. */
  windowMs: number;
}

/**
 * Read `login:`. `legacy` is a section that held the same keys under an older name (pop3.throttle):
 * a key set only there is read from there and noted in `renamed`.
 */
export function parseLoginConfig(section: ConfigReader, legacy?: { section: ConfigReader; renamed: RenamedKey[] }): LoginConfig {
  const at = (key: string) => (legacy ? keyInUse({ reader: section, key }, { reader: legacy.section, key }, legacy.renamed) : { reader: section, key });
  const failureDelay = at('failureDelay');
  const perAddress = at('maxFailuresPerAddress');
  const perUser = at('maxFailuresPerUser');
  const window = at('window');
  const config = {
    failureDelayMs: failureDelay.reader.duration(failureDelay.key, '2s', { maxMs: 60_000 }),
    maxFailuresPerAddress: perAddress.reader.int(perAddress.key, 10, { min: 1, max: 1_000_000 }),
    maxFailuresPerUser: perUser.reader.int(perUser.key, 30, { min: 1, max: 1_000_000 }),
    windowMs: window.reader.duration(window.key, '15m', { minMs: 1000, maxMs: 86_400_000 }),
  };
  section.finish();
  legacy?.section.finish();
  return config;
}
