// Issue 14 §2 on the real API server: the pop3 role as it runs (runPop3: its own GrantStore,
// GrantCache and revoker) with a real POP3 client (curl). Changing a password, removing a user or
// setting nologin in the users file deletes that user's grants within 5 s, with an Event that says
// why, whoever wrote them (the bridge's Dovecot auth-policy and DRAC RPC write through the same
// GrantStore); other users' grants stay; a login with the new password grants again.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { grantsPath } from '../../src/grants/paths.ts';
import { GrantStore } from '../../src/grants/store.ts';
import type { RelayGrant } from '../../src/grants/types.ts';
import { userHash } from '../../src/grants/user-label.ts';
import { runPop3, type RunningPop3Role } from '../../src/pop3/main.ts';
import { makeWorld, pop3Document, type World } from '../pop3/support.ts';
import { memoryLogger, run } from '../smtp/support.ts';
import { eventually } from '../support/eventually.ts';
import { kubeForTest, type TestKube } from '../support/kube.ts';

let k: TestKube;
let world: World;
let pop3: RunningPop3Role;
const logLines: string[] = [];

async function popLogin(user: string, password: string, source: string): Promise<void> {
  const r = await run('curl', ['-sS', '--max-time', '15', '--interface', source, '-u', `${user}:${password}`, `pop3://127.0.0.1:${pop3.server.port}/`]);
  assert.equal(r.code, 0, `curl POP3 login of ${user} from ${source}: ${r.stdout}${r.stderr}`);
}

const grant = (name: string) => k.client.get<RelayGrant>(grantsPath(k.namespace, name));

/** Replace the users file as the kubelet updates a Secret volume: a new file renamed into place. */
function editUsers(edit: (lines: string[]) => string[]): void {
  const lines = fs.readFileSync(world.usersFile, 'utf8').split('\n').filter((l) => l !== '');
  fs.writeFileSync(`${world.usersFile}.new`, `${edit(lines).join('\n')}\n`);
  fs.renameSync(`${world.usersFile}.new`, world.usersFile);
}

async function eventsOn(name: string): Promise<Array<{ reason: string; message: string; type: string; source?: { component?: string } }>> {
  const out = await k.kubectl('get', 'events', '--field-selector', `involvedObject.name=${name},involvedObject.kind=RelayGrant`, '-o', 'json');
  return (JSON.parse(out) as { items: Array<{ reason: string; message: string; type: string }> }).items;
}

/** Wait until the grants are all gone; resolves with the time that took from `since`. */
async function goneWithin(names: string[], since: number): Promise<number> {
  await eventually(`${names.join(', ')} deleted`, async () => (await Promise.all(names.map(grant))).every((g) => g === undefined), 10_000);
  return Date.now() - since;
}

before(async () => {
  k = await kubeForTest('revoke-credential');
  world = makeWorld('revoke-credential');
  const doc = pop3Document(world);
  doc.common.kubernetes = { ...doc.common.kubernetes, kubeconfig: k.kubeconfigPath, namespace: k.namespace };
  pop3 = await runPop3(doc, memoryLogger(logLines));
});
after(async () => {
  await pop3?.close();
  await k?.cleanup();
  world?.cleanup();
});

void describe('revocation when a credential changes in the users file (real API server, real client)', () => {
  void it('every grant a login writes carries the user-hash label', async () => {
    await popLogin('carol', world.passwords.carol, '127.0.0.61');
    // On a fresh API server the first RelayGrant write can take longer than a login waits for it
    // (the CRD's handler and CEL rules are built first); the store writes it in the background.
    await eventually('the first grant', async () => (await grant('v4-127.0.0.61')) !== undefined);
    const g = await grant('v4-127.0.0.61');
    assert.equal(g?.metadata.labels?.['kubedrac.io/user-hash'], userHash('carol'));
    assert.match(userHash('carol'), /^[0-9a-f]{32}$/);
  });

  void it('a password change deletes the user\'s grants (labelled, and one written before the label) within 5 s; others stay; the new password grants again', async (t) => {
    await popLogin('carol', world.passwords.carol, '127.0.0.62');
    await popLogin('bob', world.passwords.bob, '127.0.0.63');
    // A grant of carol's from before the label existed (or a hand-made one): no user-hash label.
    const legacy = 'v4-127.0.0.64';
    await k.client.create(grantsPath(k.namespace), {
      apiVersion: 'kubedrac.io/v1alpha1',
      kind: 'RelayGrant',
      metadata: { name: legacy },
      spec: { address: '127.0.0.64', user: 'carol', source: 'manual', expiresAt: new Date(Date.now() + 600_000).toISOString().replace(/\.\d+Z$/, 'Z') },
    });
    // The bridge's writers go through the same GrantStore: a Dovecot auth-policy report for carol
    // (source imap), and a DRAC ADD renewing the grant of carol's POP3 login (DRAC names no user).
    const bridge = new GrantStore({ client: k.client, namespace: k.namespace, ttlMs: 1_800_000, renewIntervalMs: 300_000, ipv6PrefixLength: 64 });
    assert.equal(await bridge.renew('127.0.0.67', 'carol', 'imap'), 'created');
    await popLogin('carol', world.passwords.carol, '127.0.0.68');
    assert.equal(await bridge.renew('127.0.0.68', '', 'drac'), 'patched');
    bridge.close();
    const changedAt = Date.now();
    editUsers((lines) => lines.map((l) => (l.startsWith('carol:') ? 'carol:{PLAIN}carol-new' : l)));
    const took = await goneWithin(['v4-127.0.0.61', 'v4-127.0.0.62', legacy, 'v4-127.0.0.67', 'v4-127.0.0.68'], changedAt);
    assert.ok(took <= 5000, `revoked ${took} ms after the change`);
    t.diagnostic(`grants gone ${took} ms after the file change`);
    assert.ok(await grant('v4-127.0.0.63'), "bob's grant stays");
    await eventually('the Events', async () => (await eventsOn('v4-127.0.0.62')).length > 0);
    const [event] = await eventsOn('v4-127.0.0.62');
    assert.equal(event?.reason, 'PasswordChanged');
    assert.equal(event?.type, 'Normal');
    assert.match(event?.message ?? '', /password of user carol changed/);
    assert.equal((await eventsOn(legacy))[0]?.reason, 'PasswordChanged');

    // The old password no longer logs in; the new one grants again.
    const old = await run('curl', ['-sS', '--max-time', '15', '--interface', '127.0.0.62', '-u', `carol:${world.passwords.carol}`, `pop3://127.0.0.1:${pop3.server.port}/`]);
    assert.notEqual(old.code, 0);
    assert.equal(await grant('v4-127.0.0.62'), undefined);
    await popLogin('carol', 'carol-new', '127.0.0.62');
    const again = await grant('v4-127.0.0.62');
    assert.equal(again?.spec.user, 'carol');
    assert.equal(again?.metadata.labels?.['kubedrac.io/user-hash'], userHash('carol'));
  });

  void it('removing a user deletes their grants (Event UserRemoved)', async (t) => {
    await popLogin('bob', world.passwords.bob, '127.0.0.65');
    const changedAt = Date.now();
    editUsers((lines) => lines.filter((l) => !l.startsWith('bob:')));
    const took = await goneWithin(['v4-127.0.0.63', 'v4-127.0.0.65'], changedAt);
    assert.ok(took <= 5000, `revoked ${took} ms after the change`);
    t.diagnostic(`grants gone ${took} ms after the file change`);
    assert.ok(await grant('v4-127.0.0.62'), "carol's new grant stays");
    await eventually('the Event', async () => (await eventsOn('v4-127.0.0.65'))[0]?.reason === 'UserRemoved');
  });

  void it('setting nologin deletes the user\'s grants (Event UserDisabled); a change that is no credential revokes nothing', async (t) => {
    await popLogin('alice', world.passwords.alice, '127.0.0.66');
    // uid/gid and home changed, password kept: nothing is revoked.
    editUsers((lines) => lines.map((l) => (l.startsWith('alice:') ? `${l.split(':').slice(0, 2).join(':')}:1000:1000::/home/alice::` : l)));
    const reloads = logLines.filter((l) => l.includes('"users_reloaded"')).length;
    await eventually('the reload', () => logLines.filter((l) => l.includes('"users_reloaded"')).length > reloads);
    // Past the revoker's settle time: a pass would have run by now.
    await new Promise((r) => setTimeout(r, 2500));
    assert.ok(await grant('v4-127.0.0.66'), 'a uid/home edit revokes nothing');

    const changedAt = Date.now();
    editUsers((lines) => lines.map((l) => (l.startsWith('alice:') ? `${l.replace(/:+$/, '')}::nologin` : l)));
    const took = await goneWithin(['v4-127.0.0.66'], changedAt);
    assert.ok(took <= 5000, `revoked ${took} ms after the change`);
    t.diagnostic(`grants gone ${took} ms after the file change`);
    await eventually('the Event', async () => (await eventsOn('v4-127.0.0.66'))[0]?.reason === 'UserDisabled');
    assert.ok(await grant('v4-127.0.0.62'), "carol's grant stays");
    const metrics = await (await fetch(`http://127.0.0.1:${pop3.healthPort}/metrics`)).text();
    assert.match(metrics, /kubedrac_pop3_grants_revoked_total\{reason="password_changed"\} 5/);
    assert.match(metrics, /kubedrac_pop3_grants_revoked_total\{reason="removed"\} 2/);
    assert.match(metrics, /kubedrac_pop3_grants_revoked_total\{reason="nologin"\} 1/);
  });
});
