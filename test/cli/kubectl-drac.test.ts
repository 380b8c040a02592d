// `kubectl drac` as users run it: the real kubectl finds the plugin `kubectl-drac` on the PATH and
// runs it against the real API server, with kubectl's conventions (the kubeconfig's context and
// its namespace, --context, -n, -o json). The trusted networks `why` reports come from the chart's
// own ConfigMap, installed with helm. Run: npm test -- test/cli/kubectl-drac.test.ts
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as yaml from 'js-yaml';
import { userHash } from '../../src/grants/user-label.ts';
import { CHART, MINIMAL, REPO, helm } from '../chart/support.ts';
import { kubeForTest, testBinaries, type TestKube } from '../support/kube.ts';
import { ensureNamespace } from '../../src/kube/crds.ts';

let k: TestKube;
let other: string;
let tmp: string;
let env: NodeJS.ProcessEnv;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** `kubectl drac ARGS` through the real kubectl, which finds the plugin on the PATH. */
function drac(...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(testBinaries().kubectl, ['drac', ...args], { env, timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

async function ok(...args: string[]): Promise<string> {
  const r = await drac(...args);
  assert.equal(r.code, 0, `kubectl drac ${args.join(' ')}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** A failure is one line saying what is wrong (plus the usage hint for usage errors), no stack trace. */
async function fails(pattern: RegExp, ...args: string[]): Promise<string> {
  const r = await drac(...args);
  assert.equal(r.code, 1, `kubectl drac ${args.join(' ')} should fail: ${r.stdout}${r.stderr}`);
  assert.match(r.stderr, /^kubectl drac: /);
  assert.match(r.stderr, pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  assert.ok(r.stderr.trimEnd().split('\n').length <= 2, r.stderr);
  return r.stderr;
}

const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d+Z$/, 'Z');

before(async () => {
  k = await kubeForTest('kubectl-drac');
  other = `${k.namespace}-b`;
  await ensureNamespace(k.client, other);
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kube-drac-kubectl-drac-'));
  // The plugin as installed: an executable `kubectl-drac` on the PATH (here running the sources
  // with the project's Node; the npm package's bin is the same file built to dist/).
  const bin = path.join(tmp, 'bin');
  fs.mkdirSync(bin);
  fs.writeFileSync(path.join(bin, 'kubectl-drac'), `#!/bin/sh\nexec '${process.execPath}' '${path.join(REPO, 'src/kubectl-drac.ts')}' "$@"\n`, { mode: 0o755 });
  // The user's kubeconfig: the current context's namespace is the test's; a second context has another.
  const admin = yaml.load(fs.readFileSync(k.kubeconfigPath, 'utf8')) as { contexts: Array<{ name: string; context: Record<string, unknown> }>; 'current-context': string };
  const current = admin.contexts.find((c) => c.name === admin['current-context'])!;
  admin.contexts = [
    { name: 'here', context: { ...current.context, namespace: k.namespace } },
    { name: 'there', context: { ...current.context, namespace: other } },
  ];
  admin['current-context'] = 'here';
  const kubeconfig = path.join(tmp, 'kubeconfig');
  fs.writeFileSync(kubeconfig, yaml.dump(admin));
  env = { ...process.env, PATH: `${bin}:${process.env.PATH ?? '/usr/bin:/bin'}`, KUBECONFIG: kubeconfig, HOME: tmp };
  // The chart in the test's namespace: its ConfigMap holds the SMTP role's trusted networks.
  const r = await helm(['install', 'mail', CHART, '--kubeconfig', k.kubeconfigPath, '--namespace', k.namespace, ...MINIMAL, '--set', 'smtp.trustedNetworks={198.51.100.0/24}', '--set', 'limits.enabled=true', '--set', 'limits.perUser.messagesPerHour=100']);
  assert.equal(r.code, 0, r.stderr);
});
after(async () => {
  await k?.cleanup();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

void describe('kubectl drac through the real kubectl on the real API server', () => {
  it('is found on the PATH by kubectl, and --help says what it does', async () => {
    const list = await new Promise<string>((resolve) => execFile(testBinaries().kubectl, ['plugin', 'list'], { env }, (_e, stdout) => resolve(stdout)));
    assert.match(list, /kubectl-drac/);
    const help = await ok('--help');
    for (const command of ['grants', 'grant ADDRESS --user U --for 1h', 'revoke ADDRESS', 'revoke --user U', 'why ADDRESS', 'top']) assert.ok(help.includes(command), command);
  });

  it('grant writes a manual grant through the grant store (with the user label); grants lists it, -o json too', async () => {
    const out = await ok('grant', '192.0.2.7', '--user', 'alice', '--for', '1h');
    assert.match(out, /^relaygrant v4-192\.0\.2\.7 created: 192\.0\.2\.7 may relay for alice until \S+Z \(in (59m|1h)\)\n$/);
    const g = JSON.parse(await k.kubectl('get', 'rg', 'v4-192.0.2.7', '-o', 'json')) as { spec: Record<string, string>; metadata: { labels: Record<string, string> } };
    assert.equal(g.spec.source, 'manual');
    assert.equal(g.spec.user, 'alice');
    assert.equal(g.metadata.labels['kubedrac.io/user-hash'], userHash('alice'));
    const left = Date.parse(g.spec.expiresAt as string) - Date.now();
    assert.ok(left > 59 * 60_000 && left <= 3_601_000, `expires in ${left} ms`);
    // IPv6: the chart's prefix length (64), as a login from there would be granted.
    assert.match(await ok('grant', '2001:db8:1:2::5', '--user', 'bob', '--for', '30m'), /v6-20010db8000100020000000000000000-64 created: 2001:db8:1:2::\/64/);

    const table = await ok('grants');
    const lines = table.trimEnd().split('\n');
    assert.match(lines[0] ?? '', /^NAME\s+ADDRESS\s+USER\s+SOURCE\s+EXPIRES$/);
    assert.ok(lines.some((l) => /^v4-192\.0\.2\.7\s+192\.0\.2\.7\s+alice\s+manual\s+in (59m|1h)$/.test(l)), table);
    assert.ok(lines.some((l) => /^v6-\S+-64\s+2001:db8:1:2::\/64\s+bob\s+manual\s+in (29m|30m)$/.test(l)), table);
    const json = JSON.parse(await ok('grants', '--user', 'alice', '-o', 'json')) as { namespace: string; items: Array<{ name: string; user: string; expiresAt: string }> };
    assert.equal(json.namespace, k.namespace);
    assert.deepEqual(json.items.map((i) => i.name), ['v4-192.0.2.7']);
    assert.equal(json.items[0]?.expiresAt, g.spec.expiresAt);
  });

  it('grant refuses what the store and the CRD refuse, in one line', async () => {
    await fails(/never granted: 224\.0\.0\.1 is a multicast address/, 'grant', '224.0.0.1', '--user', 'alice', '--for', '1h');
    await fails(/not an IP address/, 'grant', '010.0.0.1', '--user', 'alice', '--for', '1h');
    await fails(/--for "soon": expected a duration/, 'grant', '192.0.2.9', '--user', 'alice', '--for', 'soon');
    await fails(/grant needs --user U/, 'grant', '192.0.2.9', '--for', '1h');
    await fails(/not a valid user name/, 'grant', '192.0.2.9', '--user', 'a b', '--for', '1h');
    assert.equal(await k.kubectl('get', 'rg', 'v4-192.0.2.9', '--ignore-not-found'), '');
  });

  it('why: the SMTP role\'s own decision: grant until T, trusted network (from the chart\'s ConfigMap), expired, none, never granted', async () => {
    const granted = JSON.parse(await ok('why', '192.0.2.7', '-o', 'json')) as Record<string, unknown>;
    assert.equal(granted.reply, '250');
    assert.equal(granted.reason, 'grant');
    assert.match(String(granted.explanation), /^grant v4-192\.0\.2\.7 of user alice runs until \S+Z \(in (59m|1h)\)$/);
    assert.equal((granted.grant as { source: string }).source, 'manual');
    assert.equal(granted.configFrom, `configmap ${k.namespace}/mail-kube-drac-config`);
    // A client address inside the granted /64.
    assert.equal((JSON.parse(await ok('why', '2001:db8:1:2:aaaa::1', '-o', 'json')) as { reason: string }).reason, 'grant');

    const trusted = await ok('why', '198.51.100.20');
    assert.equal(
      trusted,
      'Address:  198.51.100.20\nReply:    250\nWhy:      198.51.100.20 is in smtp.trustedNetworks (198.51.100.0/24): it relays without a grant\n' +
        `Config:   configmap ${k.namespace}/mail-kube-drac-config: trusted networks 198.51.100.0/24, relay limits on\n`,
    );

    await k.client.create(`/apis/kubedrac.io/v1alpha1/namespaces/${k.namespace}/relaygrants`, {
      apiVersion: 'kubedrac.io/v1alpha1',
      kind: 'RelayGrant',
      metadata: { name: 'v4-192.0.2.30' },
      spec: { address: '192.0.2.30', user: 'carol', source: 'pop3', expiresAt: iso(Date.now() - 180_000) },
    });
    const expired = JSON.parse(await ok('why', '192.0.2.30', '-o', 'json')) as Record<string, string>;
    assert.equal(expired.reply, '550 5.7.1 Relay access denied');
    assert.equal(expired.reason, 'expired');
    assert.match(expired.explanation ?? '', /^grant v4-192\.0\.2\.30 of user carol expired at \S+Z \(3m(\d+s)? ago\)/);

    const none = await ok('why', '192.0.2.31');
    assert.match(none, /^Address: {2}192\.0\.2\.31\nReply: {4}550 5\.7\.1 Relay access denied\nWhy: {6}no grant covers 192\.0\.2\.31/);
    assert.doesNotMatch(none, /Grant:/);
    assert.equal((JSON.parse(await ok('why', '255.255.255.255', '-o', 'json')) as { reason: string }).reason, 'never_granted');

    // --config FILE instead of the ConfigMap: its trusted networks count.
    const file = path.join(tmp, 'smtp.yaml');
    fs.writeFileSync(file, 'smtp:\n  trustedNetworks: [192.0.2.0/28]\n');
    assert.equal((JSON.parse(await ok('why', '192.0.2.3', '--config', file, '-o', 'json')) as { reason: string }).reason, 'trusted');
  });

  it('top: the users relaying most in the last hour, from the published RelayUsages; why: a granted user over the limit gets 450', async () => {
    assert.match(await ok('top'), /^No relayed mail counted in the last hour/);
    // What two SMTP replicas published (the RelayUsage format of src/limits/), in the current 5-minute bucket.
    const start = iso(Math.floor(Date.now() / 300_000) * 300_000);
    const publish = (replica: string, users: Record<string, { messages: number; recipients: number }>) =>
      k.client.create(`/apis/kubedrac.io/v1alpha1/namespaces/${k.namespace}/relayusages`, {
        apiVersion: 'kubedrac.io/v1alpha1',
        kind: 'RelayUsage',
        metadata: { name: replica },
        spec: { replica, bucketSeconds: 300, publishedAt: iso(Date.now()), buckets: [{ start, users }] },
      });
    await publish('smtp-a', { gina: { messages: 60, recipients: 70 }, hank: { messages: 12, recipients: 40 } });
    await publish('smtp-b', { gina: { messages: 40, recipients: 45 } });
    const table = await ok('top');
    assert.match(table, /^USER\s+MESSAGES\s+RECIPIENTS\ngina\s+100\/100\s+115\/2000\nhank\s+12\/100\s+40\/2000\n$/);
    const json = JSON.parse(await ok('top', '-o', 'json')) as { users: Array<{ user: string; messages: number; recipients: number }> };
    assert.deepEqual(json.users.map((u) => [u.user, u.messages, u.recipients]), [['gina', 100, 115], ['hank', 12, 40]]);

    await ok('grant', '192.0.2.60', '--user', 'gina', '--for', '10m');
    await ok('grant', '192.0.2.61', '--user', 'hank', '--for', '10m');
    const over = JSON.parse(await ok('why', '192.0.2.60', '-o', 'json')) as Record<string, string>;
    assert.equal(over.reason, 'over_limit');
    assert.equal(over.reply, '450 4.7.1 Relay limit reached: your 100 messages per hour are used up, try again later');
    assert.match(over.explanation ?? '', /^user gina relayed 100 messages in the last hour, the limit is 100;/);
    assert.match(await ok('why', '192.0.2.60'), /\nGrant: {4}v4-192\.0\.2\.60 \(192\.0\.2\.60\), user gina, source manual, expires \S+Z \(in (9m(\d+s)?|10m)\)\n/);
    assert.equal((JSON.parse(await ok('why', '192.0.2.61', '-o', 'json')) as Record<string, string>).reason, 'grant');
  });

  it('revoke ADDRESS deletes its grant; revoke --user deletes every grant of the user, with an Event each', async () => {
    assert.match(await ok('revoke', '192.0.2.7'), /^relaygrant v4-192\.0\.2\.7 revoked \(192\.0\.2\.7\)\n$/);
    assert.equal(await k.kubectl('get', 'rg', 'v4-192.0.2.7', '--ignore-not-found'), '');
    await fails(/no grant covers 192\.0\.2\.7/, 'revoke', '192.0.2.7');

    await ok('grant', '192.0.2.40', '--user', 'dora', '--for', '10m');
    await ok('grant', '192.0.2.41', '--user', 'dora', '--for', '10m');
    await ok('grant', '192.0.2.42', '--user', 'erin', '--for', '10m');
    const out = JSON.parse(await ok('revoke', '--user', 'dora', '-o', 'json')) as { revoked: string[] };
    assert.deepEqual(out.revoked.sort(), ['v4-192.0.2.40', 'v4-192.0.2.41']);
    assert.match(await ok('grants', '--user', 'dora'), /^No grants in namespace \S+ for user dora\.\n$/);
    assert.ok(await k.kubectl('get', 'rg', 'v4-192.0.2.42'), "erin's grant stays");
    const events = JSON.parse(await k.kubectl('get', 'events', '--field-selector', 'involvedObject.name=v4-192.0.2.40', '-o', 'json')) as { items: Array<{ reason: string; message: string }> };
    assert.equal(events.items[0]?.reason, 'Revoked');
    assert.match(events.items[0]?.message ?? '', /user dora/);
  });

  it('follows kubectl\'s conventions: the context\'s namespace, --context, -n', async () => {
    await ok('--context', 'there', 'grant', '192.0.2.50', '--user', 'fred', '--for', '5m');
    assert.ok(JSON.parse(await k.kubectl('get', 'rg', 'v4-192.0.2.50', '-n', other, '-o', 'json')));
    assert.doesNotMatch(await ok('grants'), /192\.0\.2\.50/);
    assert.match(await ok('grants', '-n', other), /v4-192\.0\.2\.50\s+192\.0\.2\.50\s+fred/);
    assert.match(await ok('grants', '--namespace', other, '--context', 'here'), /fred/);
    await fails(/no context named "nowhere"/, '--context', 'nowhere', 'grants');
  });

  it('answers mistakes in one line: unknown command, unknown flag, a flag of another command, -o yaml', async () => {
    await fails(/unknown command "list"/, 'list');
    await fails(/Unknown option '--bogus'/, 'grants', '--bogus');
    await fails(/--for does not apply to grants/, 'grants', '--for', '1h');
    await fails(/-o yaml: expected -o json/, 'grants', '-o', 'yaml');
    await fails(/cannot read the kubeconfig \/nonexistent\/kubeconfig: ENOENT/, '--kubeconfig', '/nonexistent/kubeconfig', 'grants');
  });

  it('says in one line when the API server forbids it', async () => {
    await k.kubectl('create', 'serviceaccount', 'nobody');
    const token = (await k.kubectl('create', 'token', 'nobody')).trim();
    const admin = yaml.load(fs.readFileSync(env.KUBECONFIG as string, 'utf8')) as { users: Array<{ name: string; user: Record<string, unknown> }> };
    admin.users = admin.users.map((u) => ({ name: u.name, user: { token } }));
    const file = path.join(tmp, 'nobody.kubeconfig');
    fs.writeFileSync(file, yaml.dump(admin));
    await fails(/403 relaygrants\.kubedrac\.io is forbidden: User "system:serviceaccount:\S+:nobody" cannot list/, '--kubeconfig', file, 'grants');
  });
});
