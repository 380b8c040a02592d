// The chart on a real one-node cluster: kubelet, containerd and runc start the project's image;
// `helm install --wait` and `helm test` pass; then classic DRAC's walkthrough from a client
// outside every pod, through the Services, as a user would run it.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { NODE_NETWORK } from '../../src/local/node/config.ts';
import { nodeUnsupportedReason } from '../../src/local/node/cluster.ts';
import { NAMESPACE, RELEASE, REMOTE_DOMAIN, LOCAL_DOMAIN, STRANGER_ADDRESS, USER, CHART, run, startChartOnNode, type ChartOnNode } from '../../harness/node-chart.ts';

const skip = nodeUnsupportedReason();
const CLI = new URL('../../src/cli.ts', import.meta.url).pathname;

/** What a node leaves on the machine while it runs: none of it may outlive the node. */
function traces(id: string, dir: string, netns: string[]): string[] {
  const found: string[] = [];
  const names = fs.existsSync('/run/netns') ? fs.readdirSync('/run/netns') : [];
  for (const n of netns) if (names.includes(n)) found.push(`network namespace ${n}`);
  for (const h of fs.readdirSync('/sys/fs/cgroup')) {
    if (fs.existsSync(`/sys/fs/cgroup/${h}/kube-drac-${id}`)) found.push(`cgroup ${h}/kube-drac-${id}`);
  }
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
      if (cmdline.includes(dir)) found.push(`process ${pid}: ${cmdline.slice(0, 120)}`);
    } catch {
      // gone meanwhile
    }
  }
  if (fs.existsSync(dir)) found.push(`folder ${dir}`);
  for (const n of netns) if (fs.existsSync(`/etc/netns/${n}`)) found.push(`/etc/netns/${n}`);
  return found;
}

describe('kube-drac local-cluster --node', { skip: skip ? `this machine cannot run a node: ${skip}` : false }, () => {
  test('prints KUBECONFIG, NETNS and IMAGE once Ready; ClusterIPs and Service names work from NETNS; a SIGKILL of it leaves nothing behind', { timeout: 20 * 60_000 }, async () => {
    const child = spawn(process.execPath, [CLI, 'local-cluster', '--node'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const printed = await new Promise<Record<string, string>>((resolve, reject) => {
      child.stdout.on('data', (c: Buffer) => {
        stdout += c.toString();
        const lines: Record<string, string> = Object.fromEntries([...stdout.matchAll(/^(\w+)=(.*)$/gm)].map((m) => [m[1] ?? '', m[2] ?? '']));
        if (lines.KUBECONFIG && lines.NETNS && lines.IMAGE) resolve(lines);
      });
      child.on('exit', (code) => reject(new Error(`local-cluster --node exited (${code}) before it was ready:\n${stderr.slice(-3000)}`)));
    });
    const kubeconfig = printed.KUBECONFIG as string;
    const netns = printed.NETNS as string;
    const id = /^kube-drac-([0-9a-f]+)-client$/.exec(netns)?.[1] ?? '';
    const dir = kubeconfig.replace(/\/control-plane\/kubeconfig$/, '');
    try {
      assert.match(printed.IMAGE as string, /^localhost\/kube-drac:\w+$/);
      const version = await run('ip', ['netns', 'exec', netns, 'curl', '-sS', '-k', '--max-time', '10', 'https://kubernetes.default.svc.cluster.local/version']);
      assert.equal(version.code, 0, `the kubernetes Service by name from ${netns}: ${version.stderr}`);
      assert.equal((JSON.parse(version.stdout) as { gitVersion: string }).gitVersion, 'v1.37.2');
      const byIp = await run('ip', ['netns', 'exec', netns, 'curl', '-sS', '-k', '--max-time', '10', 'https://10.96.0.1/readyz']);
      assert.equal(byIp.stdout, 'ok', `the kubernetes ClusterIP from ${netns}: ${byIp.stderr}`);
      assert.ok(traces(id, dir, [netns, `kube-drac-${id}`]).length > 0, 'the running node shows none of the traces this test looks for');
    } finally {
      child.kill('SIGKILL');
    }
    // The watchdog polls every second, then kills the cgroup and removes the namespaces.
    const deadline = Date.now() + 30_000;
    let left = traces(id, dir, [netns, `kube-drac-${id}`]);
    while (left.length > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 500));
      left = traces(id, dir, [netns, `kube-drac-${id}`]);
    }
    assert.deepEqual(left, []);
  });
});

interface GrantList {
  items: { metadata: { name: string }; spec: { address: string; user: string } }[];
}

describe('the chart on a real node', { skip: skip ? `this machine cannot run a node: ${skip}` : false }, () => {
  let c: ChartOnNode;
  let smtpPort = 0;
  let pop3sPort = 0;
  let bridgePort = 0;

  before(async () => {
    c = await startChartOnNode();
    smtpPort = await c.nodePort(`${RELEASE}-kube-drac-smtp`, 'smtp');
    pop3sPort = await c.nodePort(`${RELEASE}-kube-drac-pop3`, 'pop3s');
    bridgePort = await c.nodePort(`${RELEASE}-kube-drac-bridge`, 'socketmap');
  }, { timeout: 25 * 60_000 });

  after(async () => {
    await c?.stop();
  });

  /** An SMTP session from the client namespace to the smtp Service's node port, up to RCPT. */
  const relayAttempt = (to = `someone@${REMOTE_DOMAIN}`) =>
    c.client('swaks', ['--server', `${NODE_NETWORK.nodeAddress}:${smtpPort}`, '--from', `${USER.name}@${LOCAL_DOMAIN}`, '--to', to, '--quit-after', 'RCPT', '--timeout', '10']);

  test('every pod is Ready, on the node, from the project image', async () => {
    const pods = JSON.parse(await c.kubectl('get', 'pods', '-o', 'json')) as {
      items: { metadata: { name: string }; spec: { nodeName: string; containers: { image: string }[] }; status: { conditions?: { type: string; status: string }[] } }[];
    };
    const roles = pods.items.filter((p) => !p.metadata.name.includes('test'));
    assert.ok(roles.length >= 7, `pods: ${roles.map((p) => p.metadata.name).join(', ')}`);
    for (const p of roles) {
      assert.equal(p.spec.nodeName, NODE_NETWORK.nodeName);
      assert.equal(p.spec.containers[0]?.image, c.imageRef);
      assert.equal(p.status.conditions?.find((x) => x.type === 'Ready')?.status, 'True', `${p.metadata.name} not Ready`);
    }
  });

  test('helm test passes in its own pods', async () => {
    const r = await c.helm(['test', RELEASE, '-n', NAMESPACE, '--logs', '--timeout', '3m']);
    assert.equal(r.code, 0, `helm test failed:\n${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /ok {3}r-kube-drac-smtp:25 answers: 220/);
  });

  test('the walkthrough: refused, POP3S login, the grant names the client, relayed to the smarthost, revoked within 2 s', async () => {
    const refused = await relayAttempt();
    assert.match(refused.stdout, /^<\*\* +550 5\.7\.1 /m, `expected a 5.7.1 refusal:\n${refused.stdout}${refused.stderr}`);

    // POP3S through the pop3 Service: curl lists the (empty) maildrop after the login.
    const login = await c.client('curl', ['-sS', '-k', '--max-time', '15', `pop3s://${NODE_NETWORK.nodeAddress}:${pop3sPort}/`, '-u', `${USER.name}:${USER.password}`]);
    assert.equal(login.code, 0, `POP3S login failed: ${login.stderr}`);

    // The grant carries the address the client's own socket has, not the node's or a proxy's.
    const grants = JSON.parse(await c.kubectl('get', 'rg', '-o', 'json')) as GrantList;
    assert.deepEqual(grants.items.map((g) => g.spec.address), [NODE_NETWORK.clientAddress]);
    assert.equal(grants.items[0]?.spec.user, USER.name);
    const table = await c.kubectl('get', 'rg');
    assert.match(table, new RegExp(`\\s${NODE_NETWORK.clientAddress.replace(/\./g, '\\.')}\\s`));

    const subject = `through the node ${Date.now()}`;
    const sent = await c.client('swaks', ['--server', `${NODE_NETWORK.nodeAddress}:${smtpPort}`, '--from', `${USER.name}@${LOCAL_DOMAIN}`, '--to', `someone@${REMOTE_DOMAIN}`, '--header', `Subject: ${subject}`, '--timeout', '20']);
    // swaks exits 0 only when every step, the end of DATA included, got its 2xx/3xx.
    assert.equal(sent.code, 0, `relay not accepted:\n${sent.stdout}${sent.stderr}`);
    assert.match(sent.stdout, /^ -> \.\n<- +250 /m);
    const delivered = await c.smarthost.waitForDelivered(1, 30_000);
    assert.ok(delivered.some((m) => m.includes(subject)), `the smarthost got ${delivered.length} messages, none with "${subject}"`);

    const grantName = grants.items[0]?.metadata.name ?? '';
    await c.kubectl('delete', 'rg', grantName);
    const deadline = Date.now() + 2000;
    for (;;) {
      const last = (await relayAttempt()).stdout;
      if (/^<\*\* +550 5\.7\.1 /m.test(last)) break;
      assert.ok(Date.now() < deadline, `still relaying 2 s after kubectl delete rg:\n${last}`);
    }
  });

  test('the bridge answers its allow-listed client and refuses a stranger', async () => {
    const query = `drac ${NODE_NETWORK.clientAddress}`;
    const netstring = `${query.length}:${query},`;
    const ask = (source: string) =>
      c.client('socat', ['-t', '3', '-', `TCP:${NODE_NETWORK.nodeAddress}:${bridgePort},bind=${source}`], { input: netstring });
    const allowed = await ask(NODE_NETWORK.clientAddress);
    assert.match(allowed.stdout, /^\d+:(OK|NOTFOUND)/, `the allow-listed client got: ${JSON.stringify(allowed.stdout)} ${allowed.stderr}`);
    const stranger = await ask(STRANGER_ADDRESS);
    assert.equal(stranger.stdout, '', 'a client outside bridge.allow got an answer');
  });

  test('the chart refuses a Service with externalTrafficPolicy: Cluster and no PROXY protocol', async () => {
    const r = await c.helm(['install', 'cluster-policy', CHART, '-n', 'other', '--create-namespace', ...c.installArgs, '--set', 'service.externalTrafficPolicy=Cluster']);
    assert.notEqual(r.code, 0, 'helm installed a release whose Services hide client addresses');
    assert.match(r.stderr, /externalTrafficPolicy/);
    const releases = await c.helm(['list', '-A', '-q']);
    assert.deepEqual(releases.stdout.trim().split('\n'), [RELEASE]);
  });

  test('stopping the node leaves no process, cgroup, namespace or folder behind', async () => {
    const { node } = c;
    await c.stop();
    assert.deepEqual(traces(node.layout.id, node.layout.dir, [node.netns, node.nodeNetns]), []);
  });
});
