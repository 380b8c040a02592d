// `kube-drac bridge` as a process, every listener enabled, grants on the real API server: a
// Dovecot auth-policy report, a DRAC ADD and a whoson LOGIN each land as a RelayGrant; socketmap,
// policy and whoson then answer for those addresses; whoson LOGOUT takes one away; SIGTERM ends
// it cleanly. (rpcinfo and the rpcgen client through the portmapper: test/bridge/drac/drac-rpc.test.ts.)
// A bridge whose API server cannot be reached is never ready and answers only "try
// later". Config mistakes and a taken port are named.
// Run with `npm test -- test/bridge/main.test.ts`.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DRAC_PROGRAM } from '../../src/bridge/drac/drac-rpc.ts';
import { decodeReply, encodeCall } from '../../src/bridge/drac/oncrpc.ts';
import { XdrReader, XdrWriter } from '../../src/bridge/drac/xdr.ts';
import { grantsPath } from '../../src/grants/paths.ts';
import type { RelayGrant } from '../../src/grants/types.ts';
import { kubeForTest, type TestKube } from '../support/kube.ts';
import { exchange, socketmapLookup } from '../support/exchange.ts';
import { eventually, eventuallyValue } from '../support/eventually.ts';

const CLI = new URL('../../src/cli.ts', import.meta.url).pathname;
const API_KEY = 'bridge-role-test-key-0123456789';

interface BoundListener {
  protocol: string;
  port: number;
  udpPort?: number;
  portmapperPort?: number;
}

interface BridgeProcess {
  child: ChildProcess;
  output(): string;
  ports: Record<string, BoundListener>;
  metricsPort: number;
  exited: Promise<number | null>;
}

const children = new Set<ChildProcess>();

function writeConfig(dir: string, name: string, config: unknown): string {
  const file = path.join(dir, `${name}.yaml`);
  fs.writeFileSync(file, JSON.stringify(config, null, 2)); // JSON is YAML
  return file;
}

function spawnBridge(configFile: string): { child: ChildProcess; output: () => string; exited: Promise<number | null> } {
  const child = spawn(process.execPath, [CLI, 'bridge', '--config', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let out = '';
  child.stdout?.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr?.on('data', (c: Buffer) => (out += c.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  void exited.then(() => children.delete(child));
  return { child, output: () => out, exited };
}

/** Start the bridge and wait for its `bridge_started` line (ports bound, health endpoint up). */
async function startBridge(configFile: string): Promise<BridgeProcess> {
  const p = spawnBridge(configFile);
  const deadline = Date.now() + 30_000;
  for (;;) {
    const line = p
      .output()
      .split('\n')
      .find((l) => l.includes('"bridge_started"'));
    if (line) {
      const started = JSON.parse(line) as { listeners: BoundListener[]; metricsPort: number };
      return { ...p, ports: Object.fromEntries(started.listeners.map((l) => [l.protocol, l])), metricsPort: started.metricsPort };
    }
    if (p.child.exitCode !== null) throw new Error(`the bridge exited with ${p.child.exitCode}:\n${p.output()}`);
    if (Date.now() > deadline) throw new Error(`the bridge never started:\n${p.output()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const socketmap = (port: number, ip: string) => socketmapLookup(port, 'drac', ip);
const policy = (port: number, ip: string) =>
  exchange(port, `request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=${ip}\nrecipient=x@example.org\n\n`, (t) => t.endsWith('\n\n'));
const whoson = (port: number, line: string) => exchange(port, `${line}\r\n\r\n`, (t) => t.endsWith('\r\n\r\n'));

/** One DRAC v1 call over UDP; resolves with the ADD status word. */
function dracAdd(port: number, ip: string): Promise<number> {
  const [a, b, c, d] = ip.split('.').map(Number) as [number, number, number, number];
  const call = encodeCall(41, DRAC_PROGRAM, 1, 1, new XdrWriter().uint32(((a << 24) | (b << 16) | (c << 8) | d) >>> 0).toBuffer());
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket('udp4');
    const timer = setTimeout(() => {
      sock.close();
      reject(new Error('no DRAC reply'));
    }, 10_000);
    sock.on('message', (msg) => {
      clearTimeout(timer);
      sock.close();
      const r = decodeReply(msg);
      if (r.kind !== 'accepted') return reject(new Error(`reply ${JSON.stringify(r)}`));
      resolve(new XdrReader(r.results).uint32());
    });
    sock.send(call, port, '127.0.0.1');
  });
}

describe('kube-drac bridge (process)', () => {
  let kube: TestKube;
  let dir: string;
  let bridge: BridgeProcess;

  before(async () => {
    kube = await kubeForTest('bridge-main');
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kube-drac-bridge-'));
    const keyFile = path.join(dir, 'api-key');
    fs.writeFileSync(keyFile, `${API_KEY}\n`);
    const config = writeConfig(dir, 'all', {
      kubernetes: { namespace: kube.namespace, kubeconfig: kube.kubeconfigPath },
      metrics: { host: '127.0.0.1', port: 0 },
      bridge: {
        host: '127.0.0.1',
        socketmap: { enabled: true, port: 0 },
        policy: { enabled: true, port: 0 },
        whoson: { enabled: true, port: 0 },
        drac: { enabled: true, port: 0, portmapper: { port: 0 } },
        authPolicy: { enabled: true, port: 0, apiKeyFile: keyFile },
      },
    });
    bridge = await startBridge(config);
    // Until the bridge listens, its ports refuse: a probe that fails is not ready yet.
    await eventually('/readyz 200', () => fetch(`http://127.0.0.1:${bridge.metricsPort}/readyz`).then((r) => r.status === 200, () => false), 30_000, 100);
  });

  after(async () => {
    for (const c of children) c.kill('SIGKILL');
    await kube?.cleanup();
  });

  const port = (protocol: string) => (bridge.ports[protocol] as BoundListener).port;
  const grant = (name: string) => kube.client.get<RelayGrant>(grantsPath(kube.namespace, name));

  it('binds every enabled listener, the DRAC portmapper included, and reports them', () => {
    assert.deepEqual(Object.keys(bridge.ports).sort(), ['auth-policy', 'drac', 'policy', 'socketmap', 'whoson']);
    assert.ok(bridge.ports.drac?.portmapperPort, 'the portmapper port is reported');
    assert.ok(bridge.ports.whoson?.udpPort, 'whoson speaks UDP too');
  });

  it('nothing is granted before a login: socketmap NOTFOUND, policy DUNNO, whoson -', async () => {
    assert.equal(await socketmap(port('socketmap'), '192.0.2.10'), '9:NOTFOUND ,');
    assert.equal(await policy(port('policy'), '192.0.2.10'), 'action=DUNNO\n\n');
    assert.match(await whoson(port('whoson'), 'QUERY 192.0.2.10'), /^-/);
  });

  it('a Dovecot report, a DRAC ADD and a whoson LOGIN each become a grant every reader then sees', async () => {
    const report = await fetch(`http://127.0.0.1:${port('auth-policy')}/?command=report`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': API_KEY },
      body: JSON.stringify({ login: 'ideal', remote: '192.0.2.11', protocol: 'imap', success: true, policy_reject: false }),
    });
    // 202 when the write outlasts Dovecot's patience (a loaded API server): it lands all the same.
    assert.ok([200, 202].includes(report.status), `status ${report.status}`);
    assert.equal(await dracAdd(port('drac'), '192.0.2.12'), 0, 'ADD_SUCCESS');
    assert.match(await whoson(port('whoson'), 'LOGIN 192.0.2.13 wanda'), /^\+/);

    const sources: Record<string, [string, string]> = { 'v4-192.0.2.11': ['imap', 'ideal'], 'v4-192.0.2.12': ['drac', ''], 'v4-192.0.2.13': ['whoson', 'wanda'] };
    for (const [name, [source, user]] of Object.entries(sources)) {
      const g = await eventuallyValue(name, () => grant(name).catch(() => undefined), 10_000, 100);
      assert.equal(g.spec.source, source, name);
      if (user) assert.equal(g.spec.user, user, name);
    }
    for (const ip of ['192.0.2.11', '192.0.2.12', '192.0.2.13']) {
      await eventually(`socketmap OK for ${ip}`, () => socketmap(port('socketmap'), ip).then((r) => r.includes(':OK '), () => false), 10_000, 100);
      assert.match(await socketmap(port('socketmap'), ip), /^\d+:OK \d{10},$/);
      assert.equal(await policy(port('policy'), ip), 'action=OK\n\n');
      assert.match(await whoson(port('whoson'), `QUERY ${ip}`), /^\+/);
    }
    assert.equal(await socketmap(port('socketmap'), '192.0.2.14'), '9:NOTFOUND ,', 'a neighbour is not granted');
  });

  it('whoson LOGOUT revokes: the grant is gone and the readers refuse again', async () => {
    assert.match(await whoson(port('whoson'), 'LOGOUT 192.0.2.13'), /^\+/);
    await eventually('grant deleted', () => grant('v4-192.0.2.13').then((g) => g === undefined, () => false), 10_000, 100);
    await eventually('socketmap NOTFOUND', () => socketmap(port('socketmap'), '192.0.2.13').then((r) => r === '9:NOTFOUND ,', () => false), 10_000, 100);
    assert.equal(await policy(port('policy'), '192.0.2.13'), 'action=DUNNO\n\n');
  });

  it('/metrics counts every protocol', async () => {
    const metrics = await (await fetch(`http://127.0.0.1:${bridge.metricsPort}/metrics`)).text();
    for (const protocol of ['socketmap', 'policy', 'whoson', 'drac', 'auth-policy']) {
      assert.match(metrics, new RegExp(`kubedrac_bridge_connections_total\\{protocol="${protocol}",result="accepted"\\} [1-9]`), protocol);
    }
  });

  it('SIGTERM closes every listener and exits 0', async () => {
    bridge.child.kill('SIGTERM');
    assert.equal(await bridge.exited, 0, bridge.output());
    await assert.rejects(socketmap(port('socketmap'), '192.0.2.11'));
    assert.match(bridge.output(), /"bridge_stopped"/);
  });

  it('an unreachable API server: never ready, and every reader answers only "try later"', async () => {
    // A kubeconfig whose server nothing listens on.
    const dead = await new Promise<number>((resolve) => {
      const s = net.createServer();
      s.listen(0, '127.0.0.1', () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
    const kubeconfig = path.join(dir, 'dead.kubeconfig');
    fs.writeFileSync(
      kubeconfig,
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Config',
        clusters: [{ name: 'dead', cluster: { server: `https://127.0.0.1:${dead}`, 'insecure-skip-tls-verify': true } }],
        users: [{ name: 'u', user: { token: 'x' } }],
        contexts: [{ name: 'c', context: { cluster: 'dead', user: 'u' } }],
        'current-context': 'c',
      }),
    );
    const config = writeConfig(dir, 'dead', {
      kubernetes: { namespace: kube.namespace, kubeconfig },
      metrics: { host: '127.0.0.1', port: 0 },
      bridge: { host: '127.0.0.1', socketmap: { enabled: true, port: 0 }, policy: { enabled: true, port: 0 }, whoson: { enabled: true, port: 0, udp: false } },
    });
    const b = await startBridge(config);
    try {
      assert.equal((await fetch(`http://127.0.0.1:${b.metricsPort}/readyz`)).status, 503);
      const sm = (b.ports.socketmap as BoundListener).port;
      assert.match(await socketmap(sm, '192.0.2.11'), /^\d+:TEMP /);
      assert.match(await policy((b.ports.policy as BoundListener).port, '192.0.2.11'), /^action=DEFER_IF_REJECT 4\.7\.1 /);
      assert.doesNotMatch(await whoson((b.ports.whoson as BoundListener).port, 'QUERY 192.0.2.11'), /^\+/);
      assert.equal((await fetch(`http://127.0.0.1:${b.metricsPort}/readyz`)).status, 503, 'still not ready');
    } finally {
      b.child.kill('SIGTERM');
      assert.equal(await b.exited, 0);
    }
  });

  it('config mistakes and a taken port are named, and the process exits 1', async () => {
    const none = spawnBridge(writeConfig(dir, 'none', { kubernetes: { kubeconfig: kube.kubeconfigPath }, bridge: {} }));
    assert.equal(await none.exited, 1);
    assert.match(none.output(), /config error: bridge: no listener is enabled: set enabled: true under at least one of bridge\.socketmap/);

    const typo = spawnBridge(writeConfig(dir, 'typo', { kubernetes: { kubeconfig: kube.kubeconfigPath }, bridge: { socketmap: { enabled: true, prot: 9 } } }));
    assert.equal(await typo.exited, 1);
    assert.match(typo.output(), /bridge\.socketmap\.prot/);

    const taken = net.createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
    try {
      const takenPort = (taken.address() as net.AddressInfo).port;
      const clash = spawnBridge(
        writeConfig(dir, 'clash', {
          kubernetes: { namespace: kube.namespace, kubeconfig: kube.kubeconfigPath },
          metrics: { host: '127.0.0.1', port: 0 },
          bridge: { host: '127.0.0.1', policy: { enabled: true, port: 0 }, socketmap: { enabled: true, port: takenPort } },
        }),
      );
      assert.equal(await clash.exited, 1);
      assert.match(clash.output(), /bridge\.socketmap: cannot listen: EADDRINUSE/);
    } finally {
      taken.close();
    }
  });
});
