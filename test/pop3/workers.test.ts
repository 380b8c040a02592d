// pop3.workers > 1: sessions spread over worker processes, while the maildrop lock, the grant
// writes, the throttle, /readyz and /metrics still behave as one server.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { after, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { ConfigError, ConfigReader } from '../../src/config/reader.ts';
import { parsePop3Config } from '../../src/pop3/config.ts';
import { runPop3 } from '../../src/pop3/main.ts';
import type { Logger } from '../../src/observability/log.ts';
import { RawClient, RecordingRenewer, deliverWithLda, makeWorld, pop3Document, testMessage } from './support.ts';
import { eventually } from '../support/eventually.ts';

const run = promisify(execFile);

/** A logger that keeps the events it was given, so a test can wait for one. */
function recordingLogger(events: Array<{ event: string; fields?: Record<string, unknown> }>): Logger {
  const put = (event: string, fields?: Record<string, unknown>) => void events.push({ event, fields });
  const logger: Logger = { debug: put, info: put, warn: put, error: put, child: () => logger };
  return logger;
}

/** The worker's pid, from the APOP timestamp `<pid.session@name>` of the greeting. */
const pidOf = (c: RawClient) => Number(/<(\d+)\./.exec(c.greeting)?.[1]);

describe('POP3 with several worker processes', () => {
  const world = makeWorld('workers');
  after(() => world.cleanup());

  it('refuses a workers value that is not a whole number from 1 to 64', () => {
    for (const workers of [0, 65, 1.5, 'two']) {
      assert.throws(
        () => parsePop3Config(new ConfigReader({ allowPlaintextAuth: true, workers }, 'pop3')),
        (err: unknown) => err instanceof ConfigError && /pop3\.workers/.test(err.message),
        String(workers),
      );
    }
  });

  it('spreads sessions over the workers; lock, grants, throttle, readiness and metrics stay shared', async () => {
    deliverWithLda(world, 'carol', testMessage('kept', ['body']));
    const doc = pop3Document(world, { workers: 2, throttle: { failureDelay: '10ms', maxFailuresPerAddress: 4 }, limits: { maxSessionsPerAddress: 30 } });
    const renewer = new RecordingRenewer();
    const role = await runPop3(doc, undefined, { renewer });
    try {
      const base = `http://127.0.0.1:${role.healthPort}`;
      assert.equal((await fetch(`${base}/readyz`)).status, 200);

      // Each worker listens on the port itself (SO_REUSEPORT) and the kernel spreads connections
      // by their addresses and ports: of 24, fewer than three on either worker would be a fluke
      // (~4 in 100,000). Six go on, three on each worker; the others end here.
      const all = await Promise.all(Array.from({ length: 24 }, () => RawClient.connect(role.server.port)));
      const pids = new Set(all.map(pidOf));
      assert.equal(pids.size, 2, `sessions on two worker processes, got ${[...pids].join(', ')}`);
      assert.ok(!pids.has(process.pid));
      const clients = [...pids].flatMap((pid) => all.filter((c) => pidOf(c) === pid).slice(0, 3));
      assert.equal(clients.length, 6);
      for (const c of all) if (!clients.includes(c)) c.destroy();
      // Both listeners are shared, each its own port.
      assert.notEqual(role.server.tlsPort, role.server.port);
      const secure = await RawClient.connect(role.server.tlsPort as number, { tls: true });
      assert.match(secure.greeting, /^\+OK /);
      assert.match(await secure.cmd('CAPA'), /^\+OK/);
      secure.destroy();

      // The maildrop lock holds across processes: carol's second session, on the other worker, is refused.
      const first = clients[0] as RawClient;
      const other = clients.find((c) => pidOf(c) !== pidOf(first)) as RawClient;
      assert.match(await first.login('carol', world.passwords.carol), /^\+OK Logged in, 1 messages/);
      assert.match(await other.login('carol', world.passwords.carol), /^-ERR \[IN-USE\]/);
      assert.match(await first.cmd('QUIT'), /^\+OK/);
      assert.match(await other.login('carol', world.passwords.carol), /^\+OK Logged in, 1 messages/);
      assert.match(await other.cmd('QUIT'), /^\+OK/);
      // Every login's grant went through the primary's one renewer (where coalescing happens).
      assert.equal(renewer.calls.length, 3);
      assert.ok(renewer.calls.every((c) => c.ip === '127.0.0.1' && c.user === 'carol' && c.source === 'pop3'));

      // Metrics are summed over the workers.
      const metrics = await (await fetch(`${base}/metrics`)).text();
      assert.match(metrics, /kubedrac_pop3_logins_total\{result="success"\} 3\b/);
      assert.match(metrics, /kubedrac_pop3_connections_total 25\b/);

      // Failures on both workers count against one allowance: then the right password is refused unchecked.
      const rest = clients.filter((c) => c !== first && c !== other);
      for (const c of rest) assert.match(await c.login('carol', 'wrong'), /^-ERR \[AUTH\]/);
      const fifth = await RawClient.connect(role.server.port);
      assert.match(await fifth.login('carol', 'wrong'), /^-ERR/);
      const sixth = await RawClient.connect(role.server.port);
      assert.match(await sixth.login('carol', world.passwords.carol), /^-ERR \[SYS\/TEMP\]/);
      for (const c of [...rest, fifth, sixth]) c.destroy();
    } finally {
      const closing = role.close();
      assert.deepEqual(role.server.notReadyReasons(), ['listeners closed']);
      await closing;
    }
  });

  it('a worker that fails to start, and fails again on its restart, leaves the others serving', async () => {
    const failing = makeWorld('workers-failing');
    deliverWithLda(failing, 'carol', testMessage('still served', ['body']));
    const events: Array<{ event: string; fields?: Record<string, unknown> }> = [];
    const role = await runPop3(pop3Document(failing, { workers: 2 }), recordingLogger(events), { renewer: new RecordingRenewer() });
    try {
      const clients = await Promise.all(Array.from({ length: 16 }, () => RawClient.connect(role.server.port)));
      const pids = [...new Set(clients.map(pidOf))];
      for (const c of clients) c.destroy();
      assert.equal(pids.length, 2, `two workers, got ${pids.join(', ')}`);
      const [dying, surviving] = pids as [number, number];
      // A broken key from now on (a bad Secret rotation): the running workers keep the one they
      // loaded, a worker started now cannot start.
      fs.writeFileSync(failing.cert.keyFile, 'not a key\n');
      process.kill(dying, 'SIGKILL');
      await eventually('the restart to fail twice', () => events.filter((e) => e.event === 'pop3_worker_restart_failed').length >= 2, 30_000);
      // Each failed start doubles the wait before the next one.
      const delays = events.filter((e) => e.event === 'pop3_worker_exited').map((e) => e.fields?.restartInMs);
      assert.deepEqual(delays.slice(0, 3), [1000, 2000, 4000].slice(0, delays.length));

      process.kill(surviving, 0); // still there: nothing the failed starts said reached it as a login
      const base = ['-s', '--cacert', failing.cert.certFile, '-u', `carol:${failing.passwords.carol}`, '--max-time', '30'];
      for (let i = 0; i < 4; i++) {
        const list = await run('curl', [...base, '--ssl-reqd', `pop3://127.0.0.1:${role.server.port}/`]);
        assert.match(list.stdout, /^1 \d+\r\n$/);
      }
      const c = await RawClient.connect(role.server.port);
      assert.equal(pidOf(c), surviving);
      assert.match(await c.login('carol', 'wrong'), /^-ERR \[AUTH\]/);
      assert.match(await c.login('carol', failing.passwords.carol), /^\+OK Logged in, 1 messages/);
      assert.match(await c.cmd('QUIT'), /^\+OK/);
      assert.ok(role.server.notReadyReasons().some((r) => /worker \d: not running/.test(r)));
    } finally {
      await role.close();
      failing.cleanup();
    }
  });
});
