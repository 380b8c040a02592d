// runPop3: config document in, listeners and the health endpoint up, metrics named as the issue
// says, and close() (what SIGTERM runs) ending sessions without deleting mail.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import { after, describe, it } from 'node:test';
import { runPop3 } from '../../src/pop3/main.ts';
import { RawClient, RecordingRenewer, deliverWithLda, makeWorld, pop3Document, testMessage } from './support.ts';

describe('runPop3', () => {
  const world = makeWorld('main');
  after(() => world.cleanup());

  it('serves POP3 and /metrics, /readyz; close ends sessions without deleting and stops the listeners', async () => {
    deliverWithLda(world, 'carol', testMessage('kept', ['body']));
    const doc = pop3Document(world);
    const renewer = new RecordingRenewer();
    const role = await runPop3(doc, undefined, { renewer });
    const c = await RawClient.connect(role.server.port);
    assert.match(await c.login('carol', world.passwords.carol), /^\+OK Logged in, 1 messages/);
    assert.match(await c.cmd('DELE 1'), /^\+OK/);
    assert.equal(renewer.calls.length, 1);

    const base = `http://127.0.0.1:${role.healthPort}`;
    assert.equal((await fetch(`${base}/readyz`)).status, 200);
    const metrics = await (await fetch(`${base}/metrics`)).text();
    for (const name of [
      'kubedrac_pop3_connections_total',
      'kubedrac_pop3_sessions_active',
      'kubedrac_pop3_logins_total',
      'kubedrac_pop3_retrieved_bytes_total',
      'kubedrac_pop3_deleted_messages_total',
      'kubedrac_pop3_tls_handshakes_total',
      'kubedrac_proxy_header_errors_total',
    ]) {
      assert.match(metrics, new RegExp(`# TYPE ${name} `), name);
    }
    assert.match(metrics, /kubedrac_pop3_logins_total\{result="success"\} [1-9]/);
    assert.match(metrics, /kubedrac_pop3_sessions_active 1/);

    // The session is ended without UPDATE, the listener closes.
    await role.close();
    assert.ok(await c.waitClosed());
    await assert.rejects(
      new Promise((resolve, reject) => {
        const s = net.connect(role.server.port, '127.0.0.1', () => resolve(s));
        s.on('error', reject);
      }),
    );
    const again = await runPop3(doc, undefined, { renewer });
    const d = await RawClient.connect(again.server.port);
    assert.match(await d.login('carol', world.passwords.carol), /^\+OK Logged in, 1 messages/, 'DELE without QUIT deleted nothing');
    await d.cmd('QUIT');
    await again.close();
  });

  it('/readyz says no while the mail root is unusable or the users file is empty, and once closing', async () => {
    const doc = pop3Document(world);
    const role = await runPop3(doc, undefined, { renewer: new RecordingRenewer() });
    const readyz = async () => {
      const res = await fetch(`http://127.0.0.1:${role.healthPort}/readyz`);
      return res.status;
    };
    /** Poll until /readyz answers `status` (the checks run in the background). */
    const waitFor = async (status: number, what: string) => {
      for (let i = 0; i < 100 && (await readyz()) !== status; i++) await new Promise((r) => setTimeout(r, 100));
      assert.equal(await readyz(), status, what);
    };
    try {
      assert.equal(await readyz(), 200, 'listening, users loaded, mail root usable');

      // The volume goes away (unmounted, stale): not ready; back: ready again.
      const aside = `${world.mailRoot}.aside`;
      fs.renameSync(world.mailRoot, aside);
      await waitFor(503, 'mail root missing');
      assert.match(role.server.notReadyReasons().join('; '), /mail root .*ENOENT/);
      fs.renameSync(aside, world.mailRoot);
      await waitFor(200, 'mail root back');
      fs.renameSync(world.mailRoot, aside);
      fs.writeFileSync(world.mailRoot, 'a file, not a directory');
      await waitFor(503, 'mail root not a directory');
      fs.rmSync(world.mailRoot);
      fs.renameSync(aside, world.mailRoot);
      await waitFor(200, 'mail root a directory again');

      // An empty users file parses, but nobody could log in.
      const users = fs.readFileSync(world.usersFile);
      fs.writeFileSync(world.usersFile, '');
      await waitFor(503, 'no users');
      fs.writeFileSync(world.usersFile, users);
      await waitFor(200, 'users back');
    } finally {
      const closing = role.close();
      assert.deepEqual(role.server.notReadyReasons(), ['listeners closed']);
      await closing;
    }
  });
});
