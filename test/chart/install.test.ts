// `helm install` into the real local control plane (no kubelet: the objects are created, pods
// never run), then `kubectl auth can-i --as=<each role's ServiceAccount>` for every verb a role
// must and must not have. Run: npm test -- test/chart/install.test.ts
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { kubeForTest, testBinaries, type TestKube } from '../support/kube.ts';
import { CHART, MINIMAL, VALUES_ALL, helm } from './support.ts';

const GRANTS = 'relaygrants.kubedrac.io';
const LEASES = 'leases.coordination.k8s.io';
const USAGES = 'relayusages.kubedrac.io';

/** Stand-ins for the Prometheus Operator and cert-manager CRDs, so their objects can be stored. */
function stubCrd(group: string, kind: string, plural: string): string {
  return JSON.stringify({
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: `${plural}.${group}` },
    spec: {
      group,
      scope: 'Namespaced',
      names: { kind, plural, singular: kind.toLowerCase(), listKind: `${kind}List` },
      versions: [{ name: 'v1', served: true, storage: true, schema: { openAPIV3Schema: { type: 'object', 'x-kubernetes-preserve-unknown-fields': true } } }],
    },
  });
}

function canI(kube: TestKube, sa: string, verb: string, resource: string, namespace = kube.namespace): Promise<boolean> {
  const { kubectl } = testBinaries();
  const args = ['--kubeconfig', kube.kubeconfigPath, 'auth', 'can-i', verb, resource, '-n', namespace, `--as=system:serviceaccount:${kube.namespace}:${sa}`];
  return new Promise((resolve, reject) => {
    execFile(kubectl, args, (err, stdout, stderr) => {
      const answer = stdout.trim();
      if (answer === 'yes') resolve(true);
      else if (answer === 'no') resolve(false);
      else reject(new Error(`kubectl ${args.join(' ')}: ${err?.message ?? ''} ${stderr}`));
    });
  });
}

/** kubectl with `input` on stdin; resolves with the exit code and output instead of throwing. */
function kubectlWithInput(kube: TestKube, args: string[], input: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(testBinaries().kubectl, ['--kubeconfig', kube.kubeconfigPath, '-n', kube.namespace, ...args], (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
    child.stdin?.end(input);
  });
}

async function install(kube: TestKube, release: string, args: string[]): Promise<void> {
  const r = await helm(['install', release, CHART, '--kubeconfig', kube.kubeconfigPath, '--namespace', kube.namespace, '--timeout', '2m', ...args]);
  assert.equal(r.code, 0, `helm install failed:\n${r.stdout}\n${r.stderr}`);
  assert.match(r.stdout, /STATUS: deployed/);
  // NOTES.txt is shown, warning about client addresses.
  assert.match(r.stdout, /OPEN RELAY/);
}

async function names(kube: TestKube, kinds: string): Promise<string[]> {
  const out = await kube.kubectl('get', kinds, '-o', 'jsonpath={range .items[*]}{.kind}/{.metadata.name}{"\\n"}{end}');
  return out.split('\n').filter((l) => l !== '').sort();
}

describe('helm install with the minimal values', () => {
  let kube: TestKube;
  before(async () => {
    kube = await kubeForTest('chart-install');
    await install(kube, 'r', [...MINIMAL, '--set', 'users.entries[0]=demo:{PLAIN}demo']);
  });
  after(async () => {
    await kube?.cleanup();
  });

  test('creates the Deployments, Services, RBAC, config, users Secret, mail claim and PDBs', async () => {
    const found = await names(kube, 'deployments,services,serviceaccounts,roles,rolebindings,configmaps,secrets,persistentvolumeclaims,poddisruptionbudgets');
    const expected = [
      'ConfigMap/r-kube-drac-config',
      'PersistentVolumeClaim/r-kube-drac-mail',
      'Secret/r-kube-drac-users',
      ...['pop3', 'smtp', 'operator'].flatMap((role) => [
        `Deployment/r-kube-drac-${role}`,
        `PodDisruptionBudget/r-kube-drac-${role}`,
        `Role/r-kube-drac-${role}`,
        `RoleBinding/r-kube-drac-${role}`,
        `ServiceAccount/r-kube-drac-${role}`,
        `Service/r-kube-drac-${role}-metrics`,
      ]),
      'Service/r-kube-drac-pop3',
      'Service/r-kube-drac-smtp',
    ];
    for (const name of expected) assert.ok(found.includes(name), `${name} missing; found ${found.join(', ')}`);
    // The API server accepted the Services as rendered: LoadBalancer, Local, a health-check node port.
    const svc = JSON.parse(await kube.kubectl('get', 'service', 'r-kube-drac-smtp', '-o', 'json')) as { spec: { type: string; externalTrafficPolicy: string; healthCheckNodePort?: number } };
    assert.equal(svc.spec.type, 'LoadBalancer');
    assert.equal(svc.spec.externalTrafficPolicy, 'Local');
    assert.ok((svc.spec.healthCheckNodePort ?? 0) > 0);
    const users = await kube.kubectl('get', 'secret', 'r-kube-drac-users', '-o', 'jsonpath={.data.passwd}');
    assert.equal(Buffer.from(users, 'base64').toString(), 'demo:{PLAIN}demo\n');
    // No kubelet, so no pod runs; the release is deployed all the same.
    const status = await helm(['status', 'r', '--kubeconfig', kube.kubeconfigPath, '--namespace', kube.namespace]);
    assert.match(status.stdout, /STATUS: deployed/);
  });

  // [ServiceAccount role, verb, resource, allowed]
  const matrix = (lease: string): Array<[string, string, string, boolean]> => [
    // pop3: creates and renews grants, and watches them (a write is skipped only on what it saw);
    // deletes them and posts Events when a user's credential changes; nothing else.
    ['pop3', 'get', GRANTS, true],
    ['pop3', 'create', GRANTS, true],
    ['pop3', 'patch', GRANTS, true],
    ['pop3', 'list', GRANTS, true],
    ['pop3', 'watch', GRANTS, true],
    ['pop3', 'update', GRANTS, false],
    ['pop3', 'delete', GRANTS, true],
    ['pop3', 'deletecollection', GRANTS, false],
    ['pop3', 'get', `${LEASES}/${lease}`, false],
    ['pop3', 'create', 'events', true],
    ['pop3', 'patch', 'events', false],
    ['pop3', 'list', 'events', false],
    // smtp: reads grants, nothing else.
    ['smtp', 'get', GRANTS, true],
    ['smtp', 'list', GRANTS, true],
    ['smtp', 'watch', GRANTS, true],
    ['smtp', 'create', GRANTS, false],
    ['smtp', 'patch', GRANTS, false],
    ['smtp', 'update', GRANTS, false],
    ['smtp', 'delete', GRANTS, false],
    ['smtp', 'create', 'events', false],
    // operator: reads and deletes grants, its one Lease, Events.
    ['operator', 'get', GRANTS, true],
    ['operator', 'list', GRANTS, true],
    ['operator', 'watch', GRANTS, true],
    ['operator', 'delete', GRANTS, true],
    ['operator', 'create', GRANTS, false],
    ['operator', 'patch', GRANTS, false],
    ['operator', 'update', GRANTS, false],
    ['operator', 'deletecollection', GRANTS, false],
    ['operator', 'get', `${LEASES}/${lease}`, true],
    ['operator', 'update', `${LEASES}/${lease}`, true],
    ['operator', 'patch', `${LEASES}/${lease}`, true],
    ['operator', 'create', LEASES, true],
    ['operator', 'delete', `${LEASES}/${lease}`, false],
    ['operator', 'list', LEASES, false],
    ['operator', 'watch', LEASES, false],
    ['operator', 'get', `${LEASES}/some-other-lease`, false],
    ['operator', 'update', `${LEASES}/some-other-lease`, false],
    ['operator', 'create', 'events', true],
    ['operator', 'patch', 'events', false],
    ['operator', 'list', 'events', false],
    // Relay limits are off: nobody touches RelayUsage objects.
    ['smtp', 'create', USAGES, false],
    ['smtp', 'list', USAGES, false],
    ['operator', 'delete', USAGES, false],
    ['pop3', 'list', USAGES, false],
    // Nobody reads Secrets, Pods or ConfigMaps, or touches RBAC.
    ...['pop3', 'smtp', 'operator'].flatMap((role): Array<[string, string, string, boolean]> => [
      [role, 'get', 'secrets', false],
      [role, 'list', 'secrets', false],
      [role, 'get', 'pods', false],
      [role, 'list', 'pods', false],
      [role, 'create', 'pods', false],
      [role, 'get', 'configmaps', false],
      [role, 'create', 'roles.rbac.authorization.k8s.io', false],
      [role, 'create', 'rolebindings.rbac.authorization.k8s.io', false],
      [role, 'create', 'serviceaccounts/token', false],
    ]),
  ];

  test('kubectl auth can-i: every role has exactly its verbs (least privilege)', async () => {
    const checks = matrix('r-kube-drac-operator');
    const wrong: string[] = [];
    for (let i = 0; i < checks.length; i += 8) {
      await Promise.all(
        checks.slice(i, i + 8).map(async ([role, verb, resource, allowed]) => {
          const got = await canI(kube, `r-kube-drac-${role}`, verb, resource);
          if (got !== allowed) wrong.push(`${role} ${verb} ${resource}: ${got ? 'yes' : 'no'}, want ${allowed ? 'yes' : 'no'}`);
        }),
      );
    }
    assert.deepEqual(wrong, []);
  });

  test('the roles have nothing in other namespaces or cluster-wide', async () => {
    const wrong: string[] = [];
    await Promise.all(
      (
        [
          ['pop3', 'create', GRANTS, 'default'],
          ['smtp', 'list', GRANTS, 'default'],
          ['operator', 'delete', GRANTS, 'default'],
          ['operator', 'create', LEASES, 'kube-system'],
          ['operator', 'list', 'namespaces', kube.namespace],
          ['smtp', 'list', 'nodes', kube.namespace],
        ] as const
      ).map(async ([role, verb, resource, ns]) => {
        if (await canI(kube, `r-kube-drac-${role}`, verb, resource, ns)) wrong.push(`${role} ${verb} ${resource} in ${ns}`);
      }),
    );
    assert.deepEqual(wrong, []);
  });

  test('every pod the chart makes passes Pod Security "restricted" admission (server-side dry run)', async () => {
    await kube.kubectl('label', 'namespace', kube.namespace, 'pod-security.kubernetes.io/enforce=restricted', '--overwrite');
    // The admission is on: a pod that may escalate is refused.
    const bad = { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'psa-control' }, spec: { containers: [{ name: 'c', image: 'busybox' }] } };
    const refused = await kubectlWithInput(kube, ['create', '--dry-run=server', '-f', '-'], JSON.stringify(bad));
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /violates PodSecurity "restricted/);
    const pods: unknown[] = [];
    for (const role of ['pop3', 'smtp', 'operator']) {
      const d = JSON.parse(await kube.kubectl('get', 'deployment', `r-kube-drac-${role}`, '-o', 'json')) as { spec: { template: { metadata: unknown; spec: unknown } } };
      pods.push({ apiVersion: 'v1', kind: 'Pod', metadata: { ...(d.spec.template.metadata as object), name: `psa-${role}` }, spec: d.spec.template.spec });
    }
    const hook = await helm(['template', 'r', CHART, ...MINIMAL, '--show-only', 'templates/tests/services-answer.yaml']);
    pods.push(hook.stdout);
    for (const pod of pods) {
      const r = await kubectlWithInput(kube, ['create', '--dry-run=server', '-f', '-'], typeof pod === 'string' ? pod : JSON.stringify(pod));
      assert.equal(r.code, 0, `${r.stderr}`);
      assert.match(r.stdout, /created \(server dry run\)/);
    }
  });

  test('helm uninstall removes the release but keeps the mail claim', async () => {
    const r = await helm(['uninstall', 'r', '--kubeconfig', kube.kubeconfigPath, '--namespace', kube.namespace]);
    assert.equal(r.code, 0, r.stderr);
    const left = await names(kube, 'deployments,roles,persistentvolumeclaims');
    assert.deepEqual(left, ['PersistentVolumeClaim/r-kube-drac-mail']);
  });
});

describe('helm install with every option on', () => {
  let kube: TestKube;
  before(async () => {
    kube = await kubeForTest('chart-install-all');
    const crds = [
      stubCrd('monitoring.coreos.com', 'ServiceMonitor', 'servicemonitors'),
      stubCrd('monitoring.coreos.com', 'PodMonitor', 'podmonitors'),
      stubCrd('monitoring.coreos.com', 'PrometheusRule', 'prometheusrules'),
      stubCrd('cert-manager.io', 'Certificate', 'certificates'),
    ];
    for (const crd of crds) {
      await new Promise<void>((resolve, reject) => {
        const child = execFile(testBinaries().kubectl, ['--kubeconfig', kube.kubeconfigPath, 'apply', '-f', '-'], (err, _stdout, stderr) => (err ? reject(new Error(`kubectl apply: ${stderr}`)) : resolve()));
        child.stdin?.end(crd);
      });
    }
    await kube.kubectl('wait', '--for=condition=Established', '--timeout=60s', 'crd/servicemonitors.monitoring.coreos.com', 'crd/prometheusrules.monitoring.coreos.com', 'crd/certificates.cert-manager.io');
    await install(kube, 'everything', ['-f', VALUES_ALL]);
  });
  after(async () => {
    // Frees the fixed nodePorts for the next run on a reused cluster.
    if (kube) await helm(['uninstall', 'everything', '--kubeconfig', kube.kubeconfigPath, '--namespace', kube.namespace]);
    await kube?.cleanup();
  });

  test('creates every optional object too', async () => {
    const found = await names(kube, 'deployments,services,networkpolicies,poddisruptionbudgets,configmaps,servicemonitors.monitoring.coreos.com,prometheusrules.monitoring.coreos.com,certificates.cert-manager.io');
    for (const name of [
      'Certificate/mail',
      'ServiceMonitor/mail',
      'PrometheusRule/mail',
      'ConfigMap/mail-dashboard',
      'ConfigMap/mail-config',
      'NetworkPolicy/mail-pop3',
      'NetworkPolicy/mail-smtp',
      'NetworkPolicy/mail-operator',
      'Service/mail-smtp',
      'Deployment/mail-operator',
      'Deployment/mail-bridge',
      'Service/mail-bridge',
      'Service/mail-bridge-metrics',
      'NetworkPolicy/mail-bridge',
      'PodDisruptionBudget/mail-bridge',
    ]) {
      assert.ok(found.includes(name), `${name} missing; found ${found.join(', ')}`);
    }
    const smtp = JSON.parse(await kube.kubectl('get', 'service', 'mail-smtp', '-o', 'json')) as { spec: { type: string; ports: Array<{ name: string; nodePort: number }> } };
    assert.equal(smtp.spec.type, 'NodePort');
    assert.deepEqual(smtp.spec.ports.map((p) => [p.name, p.nodePort]), [['smtp', 30025], ['smtps', 30465]]);
  });

  test('relay limits on: smtp writes and watches RelayUsage objects, the operator lists and deletes them, nobody else', async () => {
    const want: Array<[string, string, boolean]> = [
      ['smtp', 'get', true],
      ['smtp', 'list', true],
      ['smtp', 'watch', true],
      ['smtp', 'create', true],
      ['smtp', 'patch', true],
      ['smtp', 'update', false],
      ['smtp', 'delete', false],
      ['smtp', 'deletecollection', false],
      ['operator', 'list', true],
      ['operator', 'delete', true],
      ['operator', 'get', false],
      ['operator', 'create', false],
      ['operator', 'patch', false],
      ['operator', 'deletecollection', false],
      ['pop3', 'list', false],
      ['pop3', 'create', false],
      ['bridge', 'list', false],
    ];
    const wrong: string[] = [];
    await Promise.all(
      want.map(async ([role, verb, allowed]) => {
        if ((await canI(kube, `mail-${role}`, verb, USAGES)) !== allowed) wrong.push(`${role} ${verb} ${USAGES}: want ${allowed ? 'yes' : 'no'}`);
      }),
    );
    assert.deepEqual(wrong.sort(), []);
  });

  test('the bridge: its Service carries TCP and UDP ports, its pod passes "restricted", its ServiceAccount has only grant verbs', async () => {
    const svc = JSON.parse(await kube.kubectl('get', 'service', 'mail-bridge', '-o', 'json')) as { spec: { ports: Array<{ name: string; port: number; protocol: string }> } };
    assert.deepEqual(
      svc.spec.ports.filter((p) => p.name.startsWith('portmap') || p.name.startsWith('drac')).map((p) => `${p.name}:${p.port}/${p.protocol}`),
      ['drac:9402/TCP', 'drac-udp:9402/UDP', 'portmap:111/TCP', 'portmap-udp:111/UDP'],
    );
    await kube.kubectl('label', 'namespace', kube.namespace, 'pod-security.kubernetes.io/enforce=restricted', '--overwrite');
    const d = JSON.parse(await kube.kubectl('get', 'deployment', 'mail-bridge', '-o', 'json')) as { spec: { template: { metadata: object; spec: unknown } } };
    const pod = { apiVersion: 'v1', kind: 'Pod', metadata: { ...d.spec.template.metadata, name: 'psa-bridge' }, spec: d.spec.template.spec };
    const r = await kubectlWithInput(kube, ['create', '--dry-run=server', '-f', '-'], JSON.stringify(pod));
    assert.equal(r.code, 0, r.stderr);
    const want: Array<[string, string, boolean]> = [
      ['get', GRANTS, true],
      ['list', GRANTS, true],
      ['watch', GRANTS, true],
      ['create', GRANTS, true],
      ['patch', GRANTS, true],
      ['delete', GRANTS, true],
      ['update', GRANTS, false],
      ['deletecollection', GRANTS, false],
      ['get', 'secrets', false],
      ['get', 'configmaps', false],
      ['create', LEASES, false],
      ['create', 'events', false],
    ];
    const wrong: string[] = [];
    for (const [verb, resource, allowed] of want) {
      if ((await canI(kube, 'mail-bridge', verb, resource)) !== allowed) wrong.push(`${verb} ${resource}: want ${allowed ? 'yes' : 'no'}`);
    }
    assert.deepEqual(wrong, []);
  });
});
