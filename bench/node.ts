// `npm run bench -- node`: faults on the chart's real pods on a one-node cluster, under a steady
// load of POP3S logins and SMTP relays from a granted client and relay attempts from a stranger
// (bench/node-load.ts, run in the client namespace). For each case: wrongful relays, messages
// acknowledged (250 after DATA) and lost (never at the smarthost), 4xx and 5xx replies to the
// granted client, and the seconds until its relays succeed again.
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { NODE_NETWORK } from '../src/local/node/config.ts';
import { nodeUnsupportedReason } from '../src/local/node/cluster.ts';
import { LOCAL_DOMAIN, RELEASE, REMOTE_DOMAIN, STRANGER_ADDRESS, USER, run as runCommand, startChartOnNode, type ChartOnNode } from '../harness/node-chart.ts';
import type { LoadConfig, SessionEvent } from './node-load.ts';
import type { BenchOptions, BenchResult } from './types.ts';

const LOAD = fileURLToPath(new URL('./node-load.ts', import.meta.url));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const full = (role: string) => `${RELEASE}-kube-drac-${role}`;

interface Load {
  events: SessionEvent[];
  stop(): Promise<void>;
}

function startLoad(c: ChartOnNode, config: LoadConfig): Load {
  const child: ChildProcess = spawn('ip', ['netns', 'exec', c.node.netns, process.execPath, LOAD, JSON.stringify(config)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const events: SessionEvent[] = [];
  let rest = '';
  child.stdout?.setEncoding('utf8');
  child.stdout?.on('data', (chunk: string) => {
    rest += chunk;
    const lines = rest.split('\n');
    rest = lines.pop() ?? '';
    for (const l of lines) if (l) events.push(JSON.parse(l) as SessionEvent);
  });
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  return {
    events,
    stop: async () => {
      child.kill('SIGTERM');
      await Promise.race([exited, sleep(30_000)]);
    },
  };
}

interface Window {
  name: string;
  from: number;
  to: number;
  note: string;
}

/** The figures of one fault, from the sessions that ended in its window. */
function summarize(w: Window, events: SessionEvent[], delivered: Set<string>): BenchResult[] {
  const inWindow = events.filter((e) => e.t >= w.from && e.t <= w.to);
  const legit = inWindow.filter((e) => e.kind === 'relay' || e.kind === 'login');
  const relays = inWindow.filter((e) => e.kind === 'relay');
  const acked = relays.filter((e) => e.acked);
  const lost = acked.filter((e) => e.token && !delivered.has(e.token));
  const failed = relays.filter((e) => !e.acked);
  const lastFailure = failed.length > 0 ? Math.max(...failed.map((e) => e.t)) : w.from;
  const row = (what: string, value: number, unit: string, target?: string): BenchResult => ({ name: `${w.name}: ${what}`, value, unit, target, note: w.note });
  return [
    row('wrongful relays', inWindow.filter((e) => e.kind === 'stranger' && e.wrongful).length, 'count', '0'),
    row('acknowledged', acked.length, 'messages'),
    row('acknowledged and lost', lost.length, 'messages', '0'),
    row('4xx to the granted client', legit.filter((e) => e.code >= 400 && e.code < 500).length, 'replies'),
    row('5xx to the granted client', legit.filter((e) => e.code >= 500).length, 'replies', '0'),
    row('no reply (refused/reset)', legit.filter((e) => e.code === 0).length, 'sessions'),
    row('logins ok', inWindow.filter((e) => e.kind === 'login' && e.code === 200).length, 'logins'),
    row('recovery', Math.max(0, (lastFailure - w.from) / 1000), 's'),
  ];
}

async function rolloutRestart(c: ChartOnNode, role: string): Promise<void> {
  await c.kubectl('rollout', 'restart', `deployment/${full(role)}`);
  await c.kubectl('rollout', 'status', `deployment/${full(role)}`, '--timeout=5m');
}

/** (a) Delete the leading operator: seconds until the standby leads, and until an expired grant is gone. */
async function operatorFailover(c: ChartOnNode): Promise<BenchResult[]> {
  const lease = async () => {
    const leases = JSON.parse(await c.kubectl('get', 'lease', '-o', 'json')) as { items: { metadata: { name: string }; spec: { holderIdentity?: string } }[] };
    return leases.items.find((l) => l.metadata.name.includes('operator'))?.spec.holderIdentity ?? '';
  };
  // The identity is the pod's name with a suffix of its own (src/operator/config.ts).
  const podOf = (identity: string) => identity.split('_')[0] ?? '';
  const leader = await lease();
  const started = Date.now();
  await c.kubectl('delete', 'pod', podOf(leader), '--wait=false');
  // A grant that expires 2 s after the leader is gone: only the new leader can delete it.
  const address = '192.168.50.9';
  const grant = {
    apiVersion: 'kubedrac.io/v1alpha1',
    kind: 'RelayGrant',
    metadata: { name: `v4-${address}`, namespace: 'mail' },
    spec: { address, user: 'bench', source: 'manual', expiresAt: new Date(started + 2000).toISOString().replace(/\.\d+Z$/, 'Z') },
  };
  await runCommand(c.node.kubectl, ['apply', '-f', '-'], { env: { ...process.env, KUBECONFIG: c.node.kubeconfigPath }, input: JSON.stringify(grant) });
  let newLeaderAt = 0;
  let deletedAt = 0;
  while (Date.now() - started < 180_000 && (!newLeaderAt || !deletedAt)) {
    const holder = await lease().catch(() => '');
    if (!newLeaderAt && holder && podOf(holder) !== podOf(leader)) newLeaderAt = Date.now();
    if (!deletedAt) {
      const r = await runCommand(c.node.kubectl, ['get', 'rg', grant.metadata.name, '-n', 'mail'], { env: { ...process.env, KUBECONFIG: c.node.kubeconfigPath } });
      if (r.code !== 0 && /NotFound/.test(r.stderr)) deletedAt = Date.now();
    }
    await sleep(250);
  }
  const note = 'lease 15 s, retry 2 s, grace 5 s';
  return [
    { name: '(a) operator leader deleted: standby leads after', value: newLeaderAt ? (newLeaderAt - started) / 1000 : NaN, unit: 's', target: '<= 17', note },
    { name: '(a) expired grant deleted after its expiry', value: deletedAt ? (deletedAt - started - 2000) / 1000 : NaN, unit: 's', target: '<= 22', note },
  ];
}

/** (c) SIGKILL the smtp container that is in the middle of a DATA: no 250 for it, nothing partial delivered. */
async function killDuringData(c: ChartOnNode, smtpPort: number, tag: string): Promise<BenchResult[]> {
  const token = `${tag}-partial`;
  // A client that stops halfway through the message body and waits for the verdict.
  const script = `
    const net = require('node:net');
    const s = net.connect({ host: '${NODE_NETWORK.nodeAddress}', port: ${smtpPort}, localAddress: '${NODE_NETWORK.clientAddress}' });
    let buf = ''; const steps = ['EHLO kill.test', 'MAIL FROM:<${USER.name}@${LOCAL_DOMAIN}>', 'RCPT TO:<someone@${REMOTE_DOMAIN}>', 'DATA'];
    s.setEncoding('utf8');
    s.on('data', (d) => {
      buf += d;
      if (!/(^|\\n)\\d{3} [^\\n]*\\n$/.test(buf)) return;
      const code = buf.match(/(\\d{3}) [^\\n]*\\n$/)[1]; buf = '';
      if (steps.length) { s.write(steps.shift() + '\\r\\n'); return; }
      if (code === '354') { s.write('Subject: ${token}\\r\\n\\r\\nfirst half of ${token}\\r\\n'); console.log(JSON.stringify({ inData: s.localPort })); return; }
      console.log(JSON.stringify({ verdict: Number(code) })); s.destroy();
    });
    s.on('close', () => { console.log(JSON.stringify({ closed: true })); process.exit(0); });
    setTimeout(() => process.exit(0), 60000);
  `;
  const child = spawn('ip', ['netns', 'exec', c.node.netns, process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines: Record<string, unknown>[] = [];
  const inData = new Promise<number>((resolve) => {
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      for (const l of d.split('\n').filter(Boolean)) {
        const o = JSON.parse(l) as Record<string, unknown>;
        lines.push(o);
        if (typeof o.inData === 'number') resolve(o.inData);
      }
    });
  });
  const localPort = await Promise.race([inData, sleep(30_000).then(() => 0)]);
  if (!localPort) throw new Error(`the DATA client never reached DATA: ${JSON.stringify(lines)}`);
  // Which pod got this connection: kube-proxy's conntrack entry names the pod as the reply's source.
  const ct = await runCommand('nsenter', [`--net=/run/netns/${c.node.nodeNetns}`, 'conntrack', '-L', '-p', 'tcp', '--orig-src', NODE_NETWORK.clientAddress, '--sport', String(localPort)]);
  const podIp = /src=(10\.244\.\d+\.\d+)/.exec(ct.stdout)?.[1];
  if (!podIp) throw new Error(`no conntrack entry for port ${localPort}: ${ct.stdout}${ct.stderr}`);
  const pods = JSON.parse(await c.kubectl('get', 'pods', '-o', 'json')) as { items: { metadata: { name: string }; status: { podIP?: string; containerStatuses?: { containerID?: string }[] } }[] };
  const pod = pods.items.find((p) => p.status.podIP === podIp);
  const containerId = pod?.status.containerStatuses?.[0]?.containerID?.replace(/^containerd:\/\//, '');
  if (!pod || !containerId) throw new Error(`no pod with IP ${podIp}`);
  const killed = await runCommand('ctr', ['--address', c.node.paths.containerdSocket, '-n', 'k8s.io', 'task', 'kill', '-s', 'SIGKILL', containerId]);
  if (killed.code !== 0) throw new Error(`ctr task kill: ${killed.stderr}`);
  await new Promise<void>((resolve) => child.on('exit', () => resolve()));
  const verdict = lines.find((l) => typeof l.verdict === 'number')?.verdict as number | undefined;
  await sleep(10_000);
  const partial = c.smarthost.delivered().filter((m) => m.includes(token)).length;
  const note = `killed ${pod.metadata.name} with the body half sent`;
  return [
    { name: '(c) SIGKILL smtp during DATA: 250 sent for it', value: verdict === 250 ? 1 : 0, unit: 'count', target: '0', note },
    { name: '(c) partial messages at the smarthost', value: partial, unit: 'messages', target: '0', note },
  ];
}

/** (d) Stop the API server for a while under load; a login during the outage must land afterwards. */
async function apiServerOutage(c: ChartOnNode, pop3sPort: number, seconds: number): Promise<{ window: Window; extra: BenchResult[] }> {
  const third = '192.168.50.4';
  await runCommand('ip', ['-n', c.node.netns, 'addr', 'add', `${third}/32`, 'dev', 'lo']).catch(() => undefined);
  const from = Date.now();
  await c.node.controlPlane.kill({ only: 'kube-apiserver' });
  await sleep(2000);
  const login = await c.client('curl', ['-sS', '-k', '--max-time', '20', '--interface', third, `pop3s://${NODE_NETWORK.nodeAddress}:${pop3sPort}/`, '-u', `${USER.name}:${USER.password}`]);
  await sleep(seconds * 1000 - 2000);
  await c.node.controlPlane.start();
  const back = Date.now();
  let landedAfter = NaN;
  while (Date.now() - back < 120_000) {
    const r = await runCommand(c.node.kubectl, ['get', 'rg', `v4-${third}`, '-n', 'mail'], { env: { ...process.env, KUBECONFIG: c.node.kubeconfigPath } });
    if (r.code === 0) {
      landedAfter = (Date.now() - back) / 1000;
      break;
    }
    await sleep(250);
  }
  const note = `API server stopped ${seconds} s`;
  return {
    window: { name: '(d) API server stopped', from, to: back + 10_000, note },
    extra: [
      { name: '(d) login during the outage', value: login.code === 0 ? 1 : 0, unit: 'ok', target: '1', note: login.stderr.trim() || note },
      { name: '(d) its grant written after the API server is back', value: landedAfter, unit: 's', note },
    ],
  };
}

export async function run(opts: BenchOptions): Promise<BenchResult[]> {
  const reason = nodeUnsupportedReason();
  if (reason) throw new Error(`this machine cannot run a node: ${reason}`);
  const c = await startChartOnNode(['--set', 'operator.grace=5s']);
  try {
    const smtpPort = await c.nodePort(full('smtp'), 'smtp');
    const pop3sPort = await c.nodePort(full('pop3'), 'pop3s');
    const tag = `bench${Date.now()}`;
    const login = await c.client('curl', ['-sS', '-k', '--max-time', '15', `pop3s://${NODE_NETWORK.nodeAddress}:${pop3sPort}/`, '-u', `${USER.name}:${USER.password}`]);
    if (login.code !== 0) throw new Error(`first login failed: ${login.stderr}`);
    const load = startLoad(c, {
      node: NODE_NETWORK.nodeAddress,
      smtpPort,
      pop3sPort,
      granted: NODE_NETWORK.clientAddress,
      stranger: STRANGER_ADDRESS,
      user: USER.name,
      password: USER.password,
      localDomain: LOCAL_DOMAIN,
      remoteDomain: REMOTE_DOMAIN,
      tag,
    });
    const windows: Window[] = [];
    const extra: BenchResult[] = [];
    const mark = async (name: string, note: string, fault: () => Promise<void>) => {
      const from = Date.now();
      await fault();
      await sleep(10_000);
      windows.push({ name, from, to: Date.now(), note });
    };
    try {
      await sleep(10_000);
      windows.push({ name: 'steady (no fault)', from: Date.now() - 10_000, to: Date.now(), note: '10 s' });
      await mark('(b) rollout restart smtp', '2 replicas, PDB', () => rolloutRestart(c, 'smtp'));
      await mark('(b) rollout restart pop3', '2 replicas, PDB', () => rolloutRestart(c, 'pop3'));
      // One case failing must not lose the others' figures.
      const attempt = async (name: string, fn: () => Promise<BenchResult[]>) => {
        try {
          extra.push(...(await fn()));
        } catch (err) {
          extra.push({ name: `${name}: failed`, value: NaN, unit: '', note: (err as Error).message.slice(0, 200) });
        }
      };
      await attempt('(a)', () => operatorFailover(c));
      await attempt('(c)', () => killDuringData(c, smtpPort, tag));
      await attempt('(d)', async () => {
        const outage = await apiServerOutage(c, pop3sPort, opts.quick ? 20 : 60);
        windows.push(outage.window);
        await sleep(Math.max(0, outage.window.to - Date.now()));
        return outage.extra;
      });
    } finally {
      await load.stop();
    }
    // Let the smarthost receive what was acknowledged last.
    await sleep(15_000);
    const delivered = new Set<string>();
    for (const m of c.smarthost.delivered()) {
      const subject = /^Subject: (\S+)/m.exec(m)?.[1];
      if (subject) delivered.add(subject);
    }
    return [...windows.flatMap((w) => summarize(w, load.events, delivered)), ...extra];
  } finally {
    await c.stop();
  }
}
