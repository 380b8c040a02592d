// The Helm chart rendered by the real helm: lint, the objects with the minimal and with every
// option on, least-privilege RBAC exactly, alerts on metrics the code defines, the CRD copy, and
// values the schema or the chart refuse with a message naming the value.
// Run: npm test -- test/chart/template.test.ts
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import { before, describe, test } from 'node:test';
import * as yaml from 'js-yaml';
import {
  CHART,
  MINIMAL,
  REPO,
  VALUES_ALL,
  definedMetricNames,
  find,
  helm,
  metricsIn,
  ofKind,
  podSpec,
  render,
  spec,
  type K8sObject,
} from './support.ts';

const ROLES = ['pop3', 'smtp', 'operator'] as const;

interface Rule {
  apiGroups: string[];
  resources: string[];
  verbs: string[];
  resourceNames?: string[];
}

/**
 * The rules each role must have, exactly: nothing more (ARCHITECTURE.md, issue 6). With relay
 * limits on, smtp writes its own RelayUsage and watches all of them; the operator deletes gone ones.
 */
function expectedRules(leaseName: string, limits = false): Record<(typeof ROLES)[number], Rule[]> {
  const usage = (verbs: string[]): Rule[] => (limits ? [{ apiGroups: ['kubedrac.io'], resources: ['relayusages'], verbs }] : []);
  return {
    pop3: [
      { apiGroups: ['kubedrac.io'], resources: ['relaygrants'], verbs: ['get', 'list', 'watch', 'create', 'patch', 'delete'] },
      { apiGroups: [''], resources: ['events'], verbs: ['create'] },
    ],
    smtp: [{ apiGroups: ['kubedrac.io'], resources: ['relaygrants'], verbs: ['get', 'list', 'watch'] }, ...usage(['get', 'list', 'watch', 'create', 'patch'])],
    operator: [
      { apiGroups: ['kubedrac.io'], resources: ['relaygrants'], verbs: ['get', 'list', 'watch', 'delete'] },
      { apiGroups: ['coordination.k8s.io'], resources: ['leases'], resourceNames: [leaseName], verbs: ['get', 'update', 'patch'] },
      { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['create'] },
      { apiGroups: [''], resources: ['events'], verbs: ['create'] },
      ...usage(['list', 'delete']),
    ],
  };
}

function checkHardenedPods(objects: K8sObject[], prefix: string, roles: readonly string[] = ROLES): void {
  for (const role of roles) {
    const pod = podSpec(find(objects, 'Deployment', `${prefix}-${role}`));
    assert.equal(pod.serviceAccountName, `${prefix}-${role}`);
    assert.equal(pod.securityContext?.runAsNonRoot, true, `${role}: pod runAsNonRoot`);
    assert.deepEqual(pod.securityContext?.seccompProfile, { type: 'RuntimeDefault' }, `${role}: pod seccomp`);
    assert.equal(pod.containers.length, 1);
    const c = pod.containers[0]!;
    assert.equal(c.securityContext?.runAsNonRoot, true, `${role}: runAsNonRoot`);
    assert.equal(c.securityContext?.readOnlyRootFilesystem, true, `${role}: readOnlyRootFilesystem`);
    assert.equal(c.securityContext?.allowPrivilegeEscalation, false, `${role}: allowPrivilegeEscalation`);
    assert.equal(c.securityContext?.privileged, false, `${role}: privileged`);
    assert.deepEqual(c.securityContext?.capabilities, { drop: ['ALL'] }, `${role}: capabilities`);
    assert.deepEqual(c.securityContext?.seccompProfile, { type: 'RuntimeDefault' }, `${role}: seccomp`);
    // Probes on the metrics port, which the container declares.
    assert.deepEqual(c.livenessProbe?.httpGet, { path: '/healthz', port: 'metrics' }, `${role}: liveness`);
    assert.deepEqual(c.readinessProbe?.httpGet, { path: '/readyz', port: 'metrics' }, `${role}: readiness`);
    assert.ok(c.ports?.some((p) => p.name === 'metrics'), `${role}: metrics port`);
    assert.ok(c.resources && Object.keys(c.resources).length > 0, `${role}: resources`);
    // A writable /tmp on an emptyDir (the root filesystem is read-only).
    const tmp = c.volumeMounts?.find((m) => m.mountPath === '/tmp');
    assert.ok(tmp, `${role}: /tmp mount`);
    assert.ok(pod.volumes?.find((v) => v.name === tmp.name)?.emptyDir !== undefined, `${role}: /tmp is an emptyDir`);
    // The role and its config file, the namespace from the downward API.
    assert.deepEqual(c.args, [role, '--config', `/etc/kube-drac/config/${role}.yaml`]);
    assert.equal(c.env?.find((e) => e.name === 'POD_NAMESPACE')?.valueFrom?.fieldRef?.fieldPath, 'metadata.namespace');
    const config = pod.volumes?.find((v) => v.configMap !== undefined)?.configMap;
    assert.equal(config?.name, `${prefix}-config`);
    assert.deepEqual(config?.items?.[0], { key: `${role}.yaml`, path: `${role}.yaml` });
    assert.ok(c.volumeMounts?.some((m) => m.mountPath === '/etc/kube-drac/config' && m.readOnly === true));
  }
}

function servicePorts(objects: K8sObject[], name: string): Record<string, { port: number; targetPort: string; nodePort?: number }> {
  const ports = spec<{ ports: Array<{ name: string; port: number; targetPort: string; nodePort?: number }> }>(find(objects, 'Service', name)).ports;
  return Object.fromEntries(ports.map((p) => [p.name, { port: p.port, targetPort: p.targetPort, ...(p.nodePort ? { nodePort: p.nodePort } : {}) }]));
}

describe('helm lint', () => {
  test('passes --strict with the minimal values and with every option on', async () => {
    for (const args of [MINIMAL, ['-f', VALUES_ALL]]) {
      const r = await helm(['lint', CHART, '--strict', ...args]);
      assert.equal(r.code, 0, `helm lint ${args.join(' ')}:\n${r.stdout}\n${r.stderr}`);
      assert.match(r.stdout, /1 chart\(s\) linted, 0 chart\(s\) failed/);
    }
  });
});

describe('values.yaml and values.schema.json', () => {
  interface SchemaNode {
    type?: string;
    properties?: Record<string, SchemaNode>;
    additionalProperties?: boolean | SchemaNode;
  }
  /** Key paths of nested mappings, down to leaves (lists and free-form maps are leaves). */
  function valuePaths(v: unknown, prefix: string, out: string[]): string[] {
    if (v !== null && typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length > 0) {
      for (const [k, child] of Object.entries(v)) valuePaths(child, prefix ? `${prefix}.${k}` : k, out);
    } else {
      out.push(prefix);
    }
    return out;
  }
  function schemaPaths(node: SchemaNode, prefix: string, out: string[]): string[] {
    if (node.properties && node.additionalProperties === false) {
      for (const [k, child] of Object.entries(node.properties)) schemaPaths(child, prefix ? `${prefix}.${k}` : k, out);
    } else {
      out.push(prefix);
    }
    return out;
  }
  const values = yaml.load(fs.readFileSync(`${CHART}values.yaml`, 'utf8'));
  const schema = JSON.parse(fs.readFileSync(`${CHART}values.schema.json`, 'utf8')) as SchemaNode;

  test('every value in values.yaml is described by the schema, and the schema knows no value values.yaml lacks', () => {
    const fromValues = valuePaths(values, '', []);
    const fromSchema = schemaPaths(schema, '', []);
    // A value is covered when the schema has its path or a free-form parent of it.
    const covered = (p: string) => fromSchema.some((s) => p === s || p.startsWith(`${s}.`) || s.startsWith(`${p}.`));
    assert.deepEqual(fromValues.filter((p) => !covered(p)), [], 'values without a schema entry');
    // `<role>.config` sections are optional keys of the roles' config: the schema lists them all, values.yaml shows a few.
    const optional = (p: string) => /^(pop3|smtp)\.config\./.test(p) || fromValues.some((v) => v === p || v.startsWith(`${p}.`) || p.startsWith(`${v}.`));
    assert.deepEqual(fromSchema.filter((p) => !optional(p)), [], 'schema entries values.yaml does not document');
  });

  test('every value in values.yaml comes with a comment (above it or above its section)', () => {
    const lines = fs.readFileSync(`${CHART}values.yaml`, 'utf8').split('\n');
    const undocumented: string[] = [];
    for (let i = 0; i < lines.length; i++) {
      // Section headers (`key:` alone on its line) are documented by their keys.
      const m = /^( *)([A-Za-z][\w]*):\s*\S/.exec(lines[i] ?? '');
      if (!m) continue;
      const indent = (m[1] as string).length;
      // A comment right above, or above the first key of the enclosing block.
      let j = i - 1;
      while (j >= 0 && /^\s*[A-Za-z][\w]*:/.test(lines[j] ?? '') && (/^( *)/.exec(lines[j] ?? '')?.[1]?.length ?? 0) === indent) j--;
      const above = lines[j] ?? '';
      const parentKey = /^( *)[A-Za-z][\w]*:\s*$/.exec(above);
      if (!/^\s*#/.test(above) && !(parentKey && (parentKey[1] as string).length < indent)) undocumented.push(`${i + 1}: ${lines[i]?.trim() ?? ''}`);
    }
    assert.deepEqual(undocumented, []);
  });
});

describe('helm package', () => {
  test('packages the chart with its CRD, schema, dashboard and helm test', async () => {
    const dir = fs.mkdtempSync(`${os.tmpdir()}/kube-drac-package-`);
    try {
      const r = await helm(['package', CHART, '--destination', dir]);
      assert.equal(r.code, 0, r.stderr);
      const tgz = `${dir}/kube-drac-0.1.0.tgz`;
      const list = execFileSync('tar', ['-tzf', tgz], { encoding: 'utf8' }).split('\n');
      for (const f of ['Chart.yaml', 'values.yaml', 'values.schema.json', 'crds/relaygrants.kubedrac.io.yaml', 'crds/relayusages.kubedrac.io.yaml', 'dashboards/kube-drac.json', 'templates/NOTES.txt', 'templates/tests/services-answer.yaml']) {
        assert.ok(list.includes(`kube-drac/${f}`), `${f} is not in the package`);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('helm template with the defaults', () => {
  test('refuses without a certificate and a smarthost, saying which values to set', async () => {
    const r = await helm(['template', 'r', CHART]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /tls\.existingSecret/);
    assert.match(r.stderr, /tls\.certManager\.enabled/);
    assert.match(r.stderr, /smtp\.smarthost\.host is required/);
  });

  let objects: K8sObject[];
  before(async () => {
    objects = await render(MINIMAL);
  });

  test('renders the three roles with hardened pods, probes, /tmp and their config; operator has 2 replicas', () => {
    assert.deepEqual(ofKind(objects, 'Deployment').map((d) => d.metadata.name).sort(), ['r-kube-drac-operator', 'r-kube-drac-pop3', 'r-kube-drac-smtp']);
    checkHardenedPods(objects, 'r-kube-drac');
    assert.equal(spec<{ replicas: number }>(find(objects, 'Deployment', 'r-kube-drac-operator')).replicas, 2);
    // Replicas prefer different nodes unless told otherwise.
    for (const role of ROLES) {
      const affinity = podSpec(find(objects, 'Deployment', `r-kube-drac-${role}`)).affinity as {
        podAntiAffinity: { preferredDuringSchedulingIgnoredDuringExecution: Array<{ podAffinityTerm: { topologyKey: string; labelSelector: { matchLabels: Record<string, string> } } }> };
      };
      const term = affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0]?.podAffinityTerm;
      assert.equal(term?.topologyKey, 'kubernetes.io/hostname');
      assert.equal(term?.labelSelector.matchLabels['app.kubernetes.io/component'], role);
    }
    // The operator reaches no mail, certificate or users file.
    const op = podSpec(find(objects, 'Deployment', 'r-kube-drac-operator'));
    assert.deepEqual(op.volumes?.map((v) => v.name).sort(), ['config', 'tmp']);
  });

  test('pop3 and smtp mount the TLS Secret, the users Secret and the mail claim (ReadWriteMany by default)', () => {
    for (const role of ['pop3', 'smtp']) {
      const pod = podSpec(find(objects, 'Deployment', `r-kube-drac-${role}`));
      const volumes = Object.fromEntries((pod.volumes ?? []).map((v) => [v.name, v]));
      assert.equal(volumes.tls?.secret?.secretName, 'mail-tls');
      assert.equal(volumes.users?.secret?.secretName, 'r-kube-drac-users');
      assert.equal(volumes.mail?.persistentVolumeClaim?.claimName, 'r-kube-drac-mail');
    }
    const pvc = find(objects, 'PersistentVolumeClaim', 'r-kube-drac-mail');
    assert.deepEqual(spec<{ accessModes: string[] }>(pvc).accessModes, ['ReadWriteMany']);
    assert.equal(pvc.metadata.annotations?.['helm.sh/resource-policy'], 'keep');
    find(objects, 'Secret', 'r-kube-drac-users');
  });

  test('Services: POP3 110/995 and SMTP 25 (no 465) onto the container ports, LoadBalancer with externalTrafficPolicy Local', () => {
    assert.deepEqual(servicePorts(objects, 'r-kube-drac-pop3'), { pop3: { port: 110, targetPort: 'pop3' }, pop3s: { port: 995, targetPort: 'pop3s' } });
    assert.deepEqual(servicePorts(objects, 'r-kube-drac-smtp'), { smtp: { port: 25, targetPort: 'smtp' } });
    for (const role of ['pop3', 'smtp']) {
      const s = spec<{ type: string; externalTrafficPolicy: string }>(find(objects, 'Service', `r-kube-drac-${role}`));
      assert.equal(s.type, 'LoadBalancer');
      assert.equal(s.externalTrafficPolicy, 'Local');
    }
    const pop3 = podSpec(find(objects, 'Deployment', 'r-kube-drac-pop3')).containers[0]!;
    assert.deepEqual(pop3.ports?.map((p) => [p.name, p.containerPort]), [['pop3', 1110], ['pop3s', 1995], ['metrics', 9090]]);
    const smtp = podSpec(find(objects, 'Deployment', 'r-kube-drac-smtp')).containers[0]!;
    assert.deepEqual(smtp.ports?.map((p) => [p.name, p.containerPort]), [['smtp', 2525], ['metrics', 9090]]);
    for (const role of ROLES) assert.deepEqual(servicePorts(objects, `r-kube-drac-${role}-metrics`), { metrics: { port: 9090, targetPort: 'metrics' } });
  });

  test('RBAC: one ServiceAccount, Role and RoleBinding per role with exactly the rules it needs; nothing cluster-wide', () => {
    const rules = expectedRules('r-kube-drac-operator');
    for (const role of ROLES) {
      const name = `r-kube-drac-${role}`;
      find(objects, 'ServiceAccount', name);
      assert.deepEqual((find(objects, 'Role', name) as unknown as { rules: Rule[] }).rules, rules[role], `${role} rules`);
      const binding = find(objects, 'RoleBinding', name) as unknown as { roleRef: unknown; subjects: unknown };
      assert.deepEqual(binding.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name });
      assert.deepEqual(binding.subjects, [{ kind: 'ServiceAccount', name, namespace: 'mail' }]);
    }
    assert.equal(ofKind(objects, 'Role').length, 3);
    assert.deepEqual([...ofKind(objects, 'ClusterRole'), ...ofKind(objects, 'ClusterRoleBinding')], []);
    // The Lease the operator may touch is the one its config names.
    const config = find(objects, 'ConfigMap', 'r-kube-drac-config') as unknown as { data: Record<string, string> };
    assert.match(config.data['operator.yaml'] ?? '', /leaseName: r-kube-drac-operator$/m);
  });

  test('no monitoring, NetworkPolicy, Certificate or dashboard unless asked; PDBs on; a helm test hook Pod', () => {
    for (const kind of ['ServiceMonitor', 'PodMonitor', 'PrometheusRule', 'NetworkPolicy', 'Certificate']) assert.deepEqual(ofKind(objects, kind), [], kind);
    assert.equal(ofKind(objects, 'ConfigMap').length, 1);
    assert.equal(ofKind(objects, 'PodDisruptionBudget').length, 3);
    const testPod = find(objects, 'Pod', 'r-kube-drac-test-services');
    assert.equal(testPod.metadata.annotations?.['helm.sh/hook'], 'test');
    const script = JSON.stringify(testPod);
    for (const probe of ['greeting r-kube-drac-pop3 110', 'greeting r-kube-drac-smtp 25', 'ready r-kube-drac-operator-metrics 9090']) assert.ok(script.includes(probe), probe);
  });
});

describe('helm template with every option on (test/chart/values-all.yaml)', () => {
  let objects: K8sObject[];
  before(async () => {
    objects = await render(['-f', VALUES_ALL]);
  });

  test('hardened pods everywhere; the image, replicas, scheduling and extra env are applied', () => {
    checkHardenedPods(objects, 'mail', [...ROLES, 'bridge']);
    for (const role of [...ROLES, 'bridge']) {
      const d = find(objects, 'Deployment', `mail-${role}`);
      assert.equal(spec<{ replicas: number }>(d).replicas, 3);
      assert.equal(podSpec(d).containers[0]?.['image' as keyof object], 'registry.example.org/kube-drac:1.2.3');
      assert.equal(d.metadata.labels?.team, 'mail');
    }
    const pop3 = podSpec(find(objects, 'Deployment', 'mail-pop3'));
    assert.equal(pop3.priorityClassName, 'mail-critical');
    assert.deepEqual(pop3.nodeSelector, { 'kubernetes.io/os': 'linux' });
    assert.ok(pop3.containers[0]?.env?.some((e) => e.name === 'UV_THREADPOOL_SIZE' && e.value === '8'));
    // A given affinity replaces the default one.
    const smtpAffinity = JSON.stringify(podSpec(find(objects, 'Deployment', 'mail-smtp')).affinity);
    assert.match(smtpAffinity, /"app.kubernetes.io\/component":"smtp"/);
    assert.doesNotMatch(smtpAffinity, /"app.kubernetes.io\/instance"/);
  });

  test('SMTPS 465 onto 2465, NodePorts, and externalTrafficPolicy Cluster allowed because PROXY protocol carries the address', () => {
    assert.deepEqual(servicePorts(objects, 'mail-smtp'), {
      smtp: { port: 25, targetPort: 'smtp', nodePort: 30025 },
      smtps: { port: 465, targetPort: 'smtps', nodePort: 30465 },
    });
    assert.deepEqual(servicePorts(objects, 'mail-pop3'), {
      pop3: { port: 110, targetPort: 'pop3', nodePort: 30110 },
      pop3s: { port: 995, targetPort: 'pop3s', nodePort: 30995 },
    });
    const smtp = podSpec(find(objects, 'Deployment', 'mail-smtp')).containers[0]!;
    assert.deepEqual(smtp.ports?.map((p) => [p.name, p.containerPort]), [['smtp', 2525], ['smtps', 2465], ['metrics', 9191]]);
    assert.equal(spec<{ externalTrafficPolicy: string }>(find(objects, 'Service', 'mail-smtp')).externalTrafficPolicy, 'Cluster');
    const config = (find(objects, 'ConfigMap', 'mail-config') as unknown as { data: Record<string, string> }).data;
    for (const role of ['pop3', 'smtp']) assert.match(config[`${role}.yaml`] ?? '', /trustedProxies:\n\s+- 10\.0\.0\.0\/8\n\s+- fd00::\/8/);
  });

  test('existing Secrets and claim are used; cert-manager issues the TLS Secret; the smarthost password is mounted', () => {
    const smtp = podSpec(find(objects, 'Deployment', 'mail-smtp'));
    const volumes = Object.fromEntries((smtp.volumes ?? []).map((v) => [v.name, v]));
    assert.equal(volumes.users?.secret?.secretName, 'mail-users');
    assert.equal(volumes.tls?.secret?.secretName, 'mail-tls');
    assert.equal(volumes.mail?.persistentVolumeClaim?.claimName, 'mail-maildirs');
    assert.equal(volumes['smarthost-auth']?.secret?.secretName, 'smarthost-auth');
    assert.deepEqual(ofKind(objects, 'PersistentVolumeClaim'), []);
    assert.deepEqual(ofKind(objects, 'Secret'), []);
    const cert = spec<{ secretName: string; dnsNames: string[]; issuerRef: { name: string } }>(find(objects, 'Certificate', 'mail'));
    assert.equal(cert.secretName, 'mail-tls');
    assert.deepEqual(cert.dnsNames, ['mail.example.org', 'pop.example.org']);
    assert.equal(cert.issuerRef.name, 'letsencrypt');
  });

  test('RBAC is the same least privilege, with the Lease named after the release', () => {
    const rules = expectedRules('mail-operator', true);
    for (const role of ROLES) assert.deepEqual((find(objects, 'Role', `mail-${role}`) as unknown as { rules: Rule[] }).rules, rules[role]);
    assert.deepEqual(find(objects, 'ServiceAccount', 'mail-pop3').metadata.annotations, { 'example.org/identity': 'mail' });
  });

  test('ServiceMonitor labels each target with its role; every alert and dashboard panel uses metrics the code defines', () => {
    const sm = spec<{ endpoints: Array<{ port: string; relabelings: unknown[] }> }>(find(objects, 'ServiceMonitor', 'mail'));
    assert.equal(sm.endpoints[0]?.port, 'metrics');
    assert.deepEqual(sm.endpoints[0]?.relabelings, [{ sourceLabels: ['__meta_kubernetes_pod_label_app_kubernetes_io_component'], targetLabel: 'role' }]);
    const known = definedMetricNames();
    assert.ok(known.size > 20, 'metric names found in src/');
    const rule = spec<{ groups: Array<{ rules: Array<{ alert: string; expr: string; labels: Record<string, string> }> }> }>(find(objects, 'PrometheusRule', 'mail'));
    const alerts = rule.groups[0]?.rules ?? [];
    assert.deepEqual(alerts.map((a) => a.alert).sort(), [
      'KubeDracBridgeGrantCacheNotSynced',
      'KubeDracExpiredGrantsPiling',
      'KubeDracGcLagHigh',
      'KubeDracGrantWritesFailing',
      'KubeDracGrantsRevokedOnCredentialChange',
      'KubeDracNoOperatorLeader',
      'KubeDracRelayDenialSpike',
      'KubeDracRelayLimitReached',
      'KubeDracRelayUsageBlind',
      'KubeDracRevocationFailing',
      'KubeDracSmtpGrantCacheNotSynced',
      'KubeDracTwoOperatorLeaders',
    ]);
    for (const a of alerts) {
      assert.ok(metricsIn(a.expr).length > 0, `${a.alert} uses a kube-drac metric`);
      for (const m of metricsIn(a.expr)) assert.ok(known.has(m), `${a.alert}: ${m} is not a metric the code defines`);
      assert.match(a.expr, /namespace="mail"/, `${a.alert} is scoped to the release namespace`);
      assert.equal(a.labels.team, 'mail');
    }
    // The label values the alerts select on are the ones the code uses.
    assert.match(alerts.find((a) => a.alert === 'KubeDracGrantWritesFailing')?.expr ?? '', /op="failed"/);
    assert.match(alerts.find((a) => a.alert === 'KubeDracRelayDenialSpike')?.expr ?? '', /decision="denied"/);
    assert.match(alerts.find((a) => a.alert === 'KubeDracGcLagHigh')?.expr ?? '', /> 120$/);
    const store = fs.readFileSync(`${REPO}src/grants/store.ts`, 'utf8');
    assert.match(store, /grantWrites\.inc\(\{ op: 'failed' \}\)/);
    const policy = fs.readFileSync(`${REPO}src/smtp/relay-policy.ts`, 'utf8');
    assert.match(policy, /decision: 'denied'/);

    const board = JSON.parse((find(objects, 'ConfigMap', 'mail-dashboard') as unknown as { data: Record<string, string> }).data['kube-drac.json'] ?? '') as {
      panels: Array<{ title: string; targets: Array<{ expr: string }> }>;
    };
    assert.ok(board.panels.length >= 8);
    for (const p of board.panels) for (const t of p.targets) for (const m of metricsIn(t.expr)) assert.ok(known.has(m), `dashboard "${p.title}": ${m} is not defined`);
    assert.equal(find(objects, 'ConfigMap', 'mail-dashboard').metadata.labels?.grafana_dashboard, '1');
  });

  test('NetworkPolicies: mail ports open, metrics from the monitoring namespace, egress to DNS, API server and smarthost', () => {
    const pols = ofKind(objects, 'NetworkPolicy');
    assert.equal(pols.length, 4);
    const smtp = spec<{ policyTypes: string[]; ingress: Array<{ ports: Array<{ port: number }>; from?: unknown[] }>; egress: Array<{ ports: Array<{ port: number }>; to?: unknown[] }> }>(
      find(objects, 'NetworkPolicy', 'mail-smtp'),
    );
    assert.deepEqual(smtp.policyTypes, ['Ingress', 'Egress']);
    assert.deepEqual(smtp.ingress[0]?.ports.map((p) => p.port), [2525, 2465]);
    assert.equal(smtp.ingress[0]?.from, undefined);
    assert.deepEqual(smtp.ingress[1]?.ports.map((p) => p.port), [9191]);
    assert.deepEqual(smtp.ingress[1]?.from, [
      { namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } } },
      { podSelector: { matchLabels: { 'app.kubernetes.io/instance': 'r', 'app.kubernetes.io/component': 'helm-test' } } },
    ]);
    assert.deepEqual(smtp.egress.map((e) => e.ports.map((p) => p.port)), [[53, 53], [443, 6443], [587]]);
    const op = spec<{ ingress: Array<{ ports: Array<{ port: number }> }>; egress: unknown[] }>(find(objects, 'NetworkPolicy', 'mail-operator'));
    assert.deepEqual(op.ingress.map((i) => i.ports.map((p) => p.port)), [[9191]]);
    assert.equal(op.egress.length, 2);
  });

  test('PodMonitor instead of ServiceMonitor', async () => {
    const objs = await render([...MINIMAL, '--set', 'metrics.podMonitor.enabled=true']);
    const pm = spec<{ podMetricsEndpoints: Array<{ port: string; relabelings: unknown[] }> }>(find(objs, 'PodMonitor', 'r-kube-drac'));
    assert.equal(pm.podMetricsEndpoints[0]?.port, 'metrics');
    assert.equal(pm.podMetricsEndpoints[0]?.relabelings.length, 1);
    assert.deepEqual(ofKind(objs, 'ServiceMonitor'), []);
  });

  test('roles can be turned off one by one', async () => {
    const objs = await render([...MINIMAL, '--set', 'pop3.enabled=false', '--set', 'operator.enabled=false']);
    assert.deepEqual(ofKind(objs, 'Deployment').map((d) => d.metadata.name), ['r-kube-drac-smtp']);
    assert.deepEqual(ofKind(objs, 'Role').map((d) => d.metadata.name), ['r-kube-drac-smtp']);
    assert.deepEqual(Object.keys((find(objs, 'ConfigMap', 'r-kube-drac-config') as unknown as { data: object }).data), ['smtp.yaml']);
  });
});

describe('values the chart refuses, with a message naming the value', () => {
  // [what, --set arguments, what stderr must say]
  const cases: Array<[string, string[], RegExp]> = [
    ['a duration that is not one', ['grants.ttl=30min'], /\/grants\/ttl.*'30min' does not match/],
    ['an IPv6 prefix too short', ['grants.ipv6PrefixLength=16'], /\/grants\/ipv6PrefixLength.*minimum/],
    ['an unknown top-level key (typo)', ['smpt.enabled=false'], /additional properties 'smpt' not allowed/],
    ['an unknown pop3 config key', ['pop3.config.maxSesions=5'], /\/pop3\/config.*additional properties 'maxSesions' not allowed/],
    ['a pop3 config key the chart sets itself', ['pop3.config.usersFile=/x'], /\/pop3\/config.*additional properties 'usersFile' not allowed/],
    ['an smtp config value out of range', ['smtp.config.maxRecipients=0'], /\/smtp\/config\/maxRecipients.*minimum/],
    ['a Service type kube-drac cannot serve', ['service.type=ExternalName'], /\/service\/type.*value must be one of/],
    ['an unknown traffic policy', ['service.externalTrafficPolicy=Sometimes'], /\/service\/externalTrafficPolicy/],
    ['a writable root filesystem', ['securityContext.readOnlyRootFilesystem=false'], /\/securityContext\/readOnlyRootFilesystem.*must be true/],
    ['running as root allowed', ['podSecurityContext.runAsNonRoot=false'], /\/podSecurityContext\/runAsNonRoot.*must be true/],
    ['negative replicas', ['pop3.replicas=-1'], /\/pop3\/replicas.*minimum/],
    ['a local domain that is not one', ['smtp.localDomains[0]=not_a_domain'], /\/smtp\/localDomains\/0.*does not match/],
    ['a trusted network that is not a CIDR', ['smtp.trustedNetworks[0]=office'], /\/smtp\/trustedNetworks\/0.*does not match/],
    ['the metrics port on a mail port', ['metrics.port=2525'], /\/metrics\/port/],
    ['a bad image digest', ['image.digest=latest'], /\/image\/digest.*does not match/],
    ['a bad password scheme', ['pop3.config.defaultPasswordScheme=MD5'], /\/pop3\/config\/defaultPasswordScheme.*value must be one of/],
    // Checks across values, made by the chart itself.
    ['externalTrafficPolicy Cluster without PROXY protocol', ['service.externalTrafficPolicy=Cluster'], /externalTrafficPolicy=Cluster hides client addresses.*open the relay to everybody/],
    ['PROXY protocol without trusted CIDRs', ['proxyProtocol.enabled=true'], /proxyProtocol\.enabled needs proxyProtocol\.trustedCIDRs/],
    ['a trusted network of the whole Internet', ['smtp.trustedNetworks[0]=0.0.0.0/0'], /smtp\.trustedNetworks contains 0\.0\.0\.0\/0.*open relay/],
    ['proxies trusted from anywhere', ['proxyProtocol.enabled=true', 'proxyProtocol.trustedCIDRs[0]=::/0'], /proxyProtocol\.trustedCIDRs contains ::\/0/],
    ['smarthost TLS both ways', ['smtp.smarthost.secure=true', 'smtp.smarthost.requireTLS=true'], /smarthost\.secure .* and smtp\.smarthost\.requireTLS .* are exclusive/],
    ['smarthost auth without its Secret', ['smtp.smarthost.auth.enabled=true'], /smtp\.smarthost\.auth\.enabled needs smtp\.smarthost\.auth\.user and smtp\.smarthost\.auth\.existingSecret/],
    ['cert-manager without an issuer', ['tls.existingSecret=', 'tls.certManager.enabled=true'], /tls\.certManager\.enabled needs tls\.certManager\.issuerRef\.name/],
    ['a Maildir template escaping the volume', ['mail.location=../%u'], /mail\.location "\.\.\/%u" must be a path relative to the mail volume/],
    ['ServiceMonitor and PodMonitor both', ['metrics.serviceMonitor.enabled=true', 'metrics.podMonitor.enabled=true'], /enable one of them/],
  ];
  test('a Kubernetes older than 1.31 (the CRD needs its CEL ip/cidr libraries)', async () => {
    const r = await helm(['template', 'r', CHART, ...MINIMAL, '--kube-version', '1.30.4']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /Kubernetes v1\.30\.4 is too old: the RelayGrant CRD's validation rules need 1\.31 or later/);
    assert.equal((await helm(['template', 'r', CHART, ...MINIMAL, '--kube-version', '1.31.0'])).code, 0);
  });
  for (const [what, sets, message] of cases) {
    test(what, async () => {
      const r = await helm(['template', 'r', CHART, ...MINIMAL, ...sets.flatMap((s) => ['--set', s])]);
      assert.notEqual(r.code, 0, `helm accepted ${sets.join(' ')}`);
      assert.match(r.stderr.replace(/\n\s*/g, ' '), message);
    });
  }
});

describe('the bridge role in the chart', () => {
  const BRIDGE = ['--set', 'bridge.enabled=true', '--set', 'bridge.allow[0]=10.244.0.0/16'];
  const rulesOf = (objs: K8sObject[], name: string) => (find(objs, 'Role', name) as unknown as { rules: Rule[] }).rules;

  test('off by default: no bridge objects, and the Dockerfile-less defaults are untouched', async () => {
    const objs = await render(MINIMAL);
    assert.equal(objs.filter((o) => o.metadata.name.includes('bridge')).length, 0);
  });

  test('every protocol on: ports (TCP and UDP, portmapper 111 onto 1111), config, mounts, RBAC, NetworkPolicy', async () => {
    const objects = await render(['-f', VALUES_ALL]);
    const pod = podSpec(find(objects, 'Deployment', 'mail-bridge'));
    const c = pod.containers[0]!;
    assert.deepEqual(c.args, ['bridge', '--config', '/etc/kube-drac/config/bridge.yaml']);
    assert.deepEqual(
      c.ports?.map((p) => `${p.name}:${p.containerPort}/${(p as { protocol?: string }).protocol}`),
      ['socketmap:9400/TCP', 'policy:9401/TCP', 'whoson:9876/TCP', 'whoson-udp:9876/UDP', 'drac:9402/TCP', 'drac-udp:9402/UDP', 'portmap:1111/TCP', 'portmap-udp:1111/UDP', 'auth-policy:9403/TCP', 'metrics:9191/TCP'],
    );
    const volumes = Object.fromEntries((pod.volumes ?? []).map((v) => [v.name, v]));
    assert.deepEqual(Object.keys(volumes).sort(), ['bridge-api-key', 'config', 'tmp'], 'no mail, certificate or users file');
    assert.equal(volumes['bridge-api-key']?.secret?.secretName, 'dovecot-policy');
    assert.deepEqual(volumes.config?.configMap?.items, [
      { key: 'bridge.yaml', path: 'bridge.yaml' },
      { key: 'dracd.allow', path: 'dracd.allow' },
    ]);
    assert.ok(c.volumeMounts?.some((m) => m.mountPath === '/etc/kube-drac/bridge' && m.readOnly === true));

    const svc = spec<{ type: string; ports: Array<{ name: string; port: number; targetPort: string; protocol: string }> }>(find(objects, 'Service', 'mail-bridge'));
    assert.equal(svc.type, 'ClusterIP');
    assert.deepEqual(
      svc.ports.map((p) => `${p.name}:${p.port}->${p.targetPort}/${p.protocol}`),
      ['socketmap:9400->socketmap/TCP', 'policy:9401->policy/TCP', 'whoson:9876->whoson/TCP', 'whoson-udp:9876->whoson-udp/UDP', 'drac:9402->drac/TCP', 'drac-udp:9402->drac-udp/UDP', 'portmap:111->portmap/TCP', 'portmap-udp:111->portmap-udp/UDP', 'auth-policy:9403->auth-policy/TCP'],
    );
    find(objects, 'Service', 'mail-bridge-metrics');
    find(objects, 'PodDisruptionBudget', 'mail-bridge');

    const config = (find(objects, 'ConfigMap', 'mail-config') as unknown as { data: Record<string, string> }).data;
    const bridge = (yaml.load(config['bridge.yaml'] ?? '') as { bridge: Record<string, unknown> }).bridge;
    assert.deepEqual(bridge.allow, ['127.0.0.0/8', '::1/128', '10.244.0.0/16', '192.0.2.25', 'fd00:10::/64']);
    assert.deepEqual(bridge.drac, { enabled: true, port: 9402, allowFile: '/etc/kube-drac/config/dracd.allow', portmapper: { enabled: true, port: 1111 } });
    assert.deepEqual(bridge.authPolicy, { enabled: true, port: 9403, apiHeaderName: 'X-Dovecot-Key', apiKeyFile: '/etc/kube-drac/bridge/api-key' });
    assert.match(config['dracd.allow'] ?? '', /^255\.255\.255\.0 198\.51\.100\.0$/m);

    // whoson reads, writes and revokes: every verb on grants a bridge can need, nothing else.
    assert.deepEqual(rulesOf(objects, 'mail-bridge'), [{ apiGroups: ['kubedrac.io'], resources: ['relaygrants'], verbs: ['get', 'list', 'watch', 'create', 'patch', 'delete'] }]);

    const np = spec<{ ingress: Array<{ ports: Array<{ port: number; protocol: string }>; from?: unknown[] }> }>(find(objects, 'NetworkPolicy', 'mail-bridge'));
    assert.deepEqual(np.ingress[0]?.ports.map((p) => `${p.port}/${p.protocol}`), ['9400/TCP', '9401/TCP', '9876/TCP', '9876/UDP', '9402/TCP', '9402/UDP', '1111/TCP', '1111/UDP', '9403/TCP']);
    assert.deepEqual(np.ingress[0]?.from, [{ ipBlock: { cidr: '10.244.0.0/16' } }, { ipBlock: { cidr: '192.0.2.25/32' } }, { ipBlock: { cidr: 'fd00:10::/64' } }]);
    assert.deepEqual(np.ingress[1]?.ports.map((p) => p.port), [9191], 'metrics as for every role');
  });

  test('RBAC follows the protocols: every bridge list/watches (readers and writers hold a cache), writers create/patch, only whoson deletes', async () => {
    const cases: Array<[string[], string[]]> = [
      [['bridge.socketmap.enabled=true', 'bridge.policy.enabled=true'], ['get', 'list', 'watch']],
      [['bridge.drac.enabled=true'], ['get', 'list', 'watch', 'create', 'patch']],
      [['bridge.socketmap.enabled=true', 'bridge.authPolicy.enabled=true', 'bridge.authPolicy.existingSecret=k'], ['get', 'list', 'watch', 'create', 'patch']],
      [['bridge.whoson.enabled=true'], ['get', 'list', 'watch', 'create', 'patch', 'delete']],
    ];
    for (const [sets, verbs] of cases) {
      const objs = await render([...MINIMAL, ...BRIDGE, ...sets.flatMap((x) => ['--set', x])]);
      assert.deepEqual(rulesOf(objs, 'r-kube-drac-bridge'), [{ apiGroups: ['kubedrac.io'], resources: ['relaygrants'], verbs }], sets.join(' '));
    }
  });

  test('only the enabled protocols are rendered; the NetworkPolicy comes without networkPolicy.enabled, and takes given peers', async () => {
    const from = [{ podSelector: { matchLabels: { app: 'postfix' } } }];
    const objs = await render([...MINIMAL, ...BRIDGE, '--set', 'bridge.policy.enabled=true', '--set-json', `bridge.networkPolicyFrom=${JSON.stringify(from)}`]);
    const c = podSpec(find(objs, 'Deployment', 'r-kube-drac-bridge')).containers[0]!;
    assert.deepEqual(c.ports?.map((p) => p.name), ['policy', 'metrics']);
    const config = (find(objs, 'ConfigMap', 'r-kube-drac-config') as unknown as { data: Record<string, string> }).data;
    assert.deepEqual(Object.keys((yaml.load(config['bridge.yaml'] ?? '') as { bridge: object }).bridge).sort(), ['allow', 'host', 'policy']);
    assert.equal(config['dracd.allow'], undefined);
    assert.deepEqual(ofKind(objs, 'NetworkPolicy').map((o) => o.metadata.name), ['r-kube-drac-bridge']);
    assert.deepEqual(spec<{ ingress: Array<{ from: unknown }> }>(find(objs, 'NetworkPolicy', 'r-kube-drac-bridge')).ingress[0]?.from, from);
    const none = await render([...MINIMAL, ...BRIDGE, '--set', 'bridge.policy.enabled=true', '--set', 'bridge.networkPolicy=false']);
    assert.deepEqual(ofKind(none, 'NetworkPolicy'), []);
    const testPod = JSON.stringify(find(objs, 'Pod', 'r-kube-drac-test-services'));
    assert.ok(testPod.includes('ready r-kube-drac-bridge-metrics 9090'));
  });

  // [what, --set arguments, what stderr must say]
  const refusals: Array<[string, string[], RegExp]> = [
    ['no protocol enabled', ['bridge.enabled=true', 'bridge.allow[0]=10.0.0.0/8'], /bridge\.enabled needs at least one protocol/],
    ['no allow-list', ['bridge.enabled=true', 'bridge.policy.enabled=true'], /bridge\.enabled needs bridge\.allow/],
    ['an allow-list of the whole Internet', ['bridge.enabled=true', 'bridge.policy.enabled=true', 'bridge.allow[0]=0.0.0.0/0'], /bridge\.allow contains 0\.0\.0\.0\/0.*grant themselves relaying/],
    ['auth-policy without its key', ['bridge.enabled=true', 'bridge.allow[0]=10.0.0.0/8', 'bridge.authPolicy.enabled=true'], /bridge\.authPolicy\.enabled needs bridge\.authPolicy\.existingSecret/],
    ['a dracd.allow line admitting everybody', ['bridge.enabled=true', 'bridge.allow[0]=10.0.0.0/8', 'bridge.drac.enabled=true', 'bridge.drac.allowLines[0]=0.0.0.0 0.0.0.0'], /netmask 0\.0\.0\.0 admits every address/],
    ['a dracd.allow line that is not one', ['bridge.drac.allowLines[0]=10.0.0.0/8'], /\/bridge\/drac\/allowLines\/0.*does not match/],
    ['two protocols on one port', ['bridge.enabled=true', 'bridge.allow[0]=10.0.0.0/8', 'bridge.socketmap.enabled=true', 'bridge.policy.enabled=true', 'bridge.policy.port=9400'], /bridge port 9400 \(policy, TCP\) is also used by socketmap/],
    ['a protocol on the metrics port', ['bridge.enabled=true', 'bridge.allow[0]=10.0.0.0/8', 'bridge.policy.enabled=true', 'bridge.policy.port=9090'], /bridge port 9090 \(policy, TCP\) is also used by metrics\.port/],
    ['a privileged container port', ['bridge.socketmap.port=625'], /\/bridge\/socketmap\/port.*minimum/],
    ['an unknown bridge key', ['bridge.sockmap.enabled=true'], /\/bridge.*additional properties 'sockmap' not allowed/],
    ['a NodePort bridge (the portmapper would hand out a port clients cannot reach)', ['bridge.serviceType=NodePort'], /\/bridge\/serviceType.*value must be one of/],
  ];
  for (const [what, sets, message] of refusals) {
    test(`refuses ${what}`, async () => {
      const r = await helm(['template', 'r', CHART, ...MINIMAL, ...sets.flatMap((x) => ['--set', x])]);
      assert.notEqual(r.code, 0, `helm accepted ${sets.join(' ')}`);
      assert.match(r.stderr.replace(/\n\s*/g, ' '), message);
    });
  }
});

describe('the CRD', () => {
  test("the chart's crds/ holds exactly the top-level crds/ (one source of truth)", () => {
    const top = fs.readdirSync(`${REPO}crds`).filter((f) => f.endsWith('.yaml')).sort();
    const chart = fs.readdirSync(`${CHART}crds`).sort();
    assert.deepEqual(chart, top, 'the same files');
    for (const f of top) {
      assert.equal(fs.readFileSync(`${CHART}crds/${f}`, 'utf8'), fs.readFileSync(`${REPO}crds/${f}`, 'utf8'), `charts/kube-drac/crds/${f} drifted from crds/${f}: copy it again`);
    }
  });
});
