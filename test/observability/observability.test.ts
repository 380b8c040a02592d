// The per-process endpoint (/metrics, /healthz, /readyz) and the JSON log line format.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { startHealthServer } from '../../src/observability/health.ts';
import { collectProcessMetrics } from '../../src/observability/metrics.ts';
import '../../src/grants/metrics.ts';

const run = promisify(execFile);

describe('health server', () => {
  it('serves Prometheus metrics with process metrics, liveness and readiness', async () => {
    collectProcessMetrics();
    let ready = false;
    const server = await startHealthServer({ host: '127.0.0.1', port: 0, ready: () => ready });
    try {
      const base = `http://127.0.0.1:${server.port}`;
      const metrics = await fetch(`${base}/metrics`);
      assert.equal(metrics.status, 200);
      assert.match(metrics.headers.get('content-type') ?? '', /^text\/plain; version=0.0.4/);
      const text = await metrics.text();
      assert.match(text, /^# TYPE kubedrac_grant_writes_total counter$/m);
      assert.match(text, /^kubedrac_process_resident_memory_bytes \d+/m);
      assert.doesNotMatch(text, /^[a-z_]+\{[^}]*(ip|user|address)=/m, 'no addresses or users as label values');
      assert.equal((await fetch(`${base}/healthz`)).status, 200);
      assert.equal((await fetch(`${base}/readyz`)).status, 503);
      ready = true;
      assert.equal((await fetch(`${base}/readyz`)).status, 200);
      assert.equal((await fetch(`${base}/nope`)).status, 404);
      assert.equal((await fetch(`${base}/metrics`, { method: 'POST' })).status, 405);
    } finally {
      await server.close();
    }
  });
});

describe('logging', () => {
  it('writes one JSON object per line with role, event, level, time and the fields', async () => {
    const script = `
      import { createLogger } from ${JSON.stringify(new URL('../../src/observability/log.ts', import.meta.url).pathname)};
      const log = createLogger('pop3');
      log.info('login', { user: 'ideal', durationMs: 3 });
      log.child({ session: 's1' }).warn('tls_failed', { error: new Error('bad cert') });
      log.debug('hidden');
    `;
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script]);
    const lines = stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.equal(lines.length, 2, stdout);
    assert.deepEqual({ ...lines[0], time: undefined }, { role: 'pop3', event: 'login', level: 'info', user: 'ideal', durationMs: 3, time: undefined });
    assert.match(String(lines[0]!.time), /^\d{4}-\d\d-\d\dT/);
    assert.equal(lines[1]!.event, 'tls_failed');
    assert.equal(lines[1]!.session, 's1');
    assert.equal(lines[1]!.error, 'bad cert');
    assert.equal(lines[1]!.message, undefined, 'the event name is not repeated as message');
  });
});
