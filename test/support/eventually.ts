// Waiting, bounded, for something another process or a watch makes true, the way a client retries.
// The one pair of wait helpers of the tests, with one argument order: what is awaited, the check,
// then the bound and the polling interval. A check that throws fails the wait at once: a probe
// that may fail while its target starts catches that itself.
import assert from 'node:assert/strict';

/** How often a check runs: cheap checks (a cache lookup, a metric) are not worth waiting longer. */
const EVERY_MS = 25;

/** Resolves once `check()` holds; fails naming `what` after `timeoutMs`. */
export async function eventually(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10_000, everyMs = EVERY_MS): Promise<void> {
  await eventuallyValue(what, async () => ((await check()) ? true : undefined), timeoutMs, everyMs);
}

/** The first value `get()` yields that is not undefined; fails naming `what` after `timeoutMs`. */
export async function eventuallyValue<T>(what: string, get: () => T | undefined | Promise<T | undefined>, timeoutMs = 10_000, everyMs = EVERY_MS): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await get();
    if (value !== undefined) return value;
    if (Date.now() > deadline) assert.fail(`not within ${timeoutMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
