// The RelayGrant CRD on the real API server: what it accepts, what it refuses and why, and
// what `kubectl get relaygrants` prints.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { KubeApiError } from '../../src/kube/client.ts';
import { grantsPath } from '../../src/grants/paths.ts';
import { kubeForTest, type TestKube } from '../support/kube.ts';

let k: TestKube;
before(async () => {
  k = await kubeForTest('crd');
});
after(() => k.cleanup());

function grant(name: string, address: string, extra: Record<string, unknown> = {}) {
  return {
    apiVersion: 'kubedrac.io/v1alpha1',
    kind: 'RelayGrant',
    metadata: { name },
    spec: { address, user: 'ideal', source: 'pop3', expiresAt: '2030-07-09T11:11:55Z', ...extra },
  };
}

async function refused(body: unknown): Promise<string> {
  try {
    await k.client.create(grantsPath(k.namespace), body);
  } catch (err) {
    assert.ok(err instanceof KubeApiError, String(err));
    assert.equal(err.status, 422, err.message);
    return err.message;
  }
  assert.fail(`accepted: ${JSON.stringify(body)}`);
}

describe('RelayGrant CRD', () => {
  it('accepts canonical addresses and prefixes under their derived names', async () => {
    const valid = [
      grant('v4-202.99.11.120', '202.99.11.120'),
      grant('v4-10.1.0.0-16', '10.1.0.0/16'),
      grant('v6-20010db8000000000000000000000001', '2001:db8::1'),
      grant('v6-20010db8000100020000000000000000-64', '2001:db8:1:2::/64'),
      grant('v4-192.0.2.7', '192.0.2.7', { source: 'manual', expiresAt: '2030-01-01T00:00:00.123+02:00' }),
    ];
    for (const g of valid) await k.client.create(grantsPath(k.namespace), g);
    const list = await k.client.request<{ items: unknown[] }>('GET', grantsPath(k.namespace));
    assert.equal(list.items.length, valid.length);
  });

  it('refuses non-canonical addresses with a message that says what is expected', async () => {
    for (const [name, address] of [
      ['v4-010.0.0.1', '010.0.0.1'],
      ['v6-20010db8000000000000000000000001', '2001:DB8::1'],
      ['v4-1.2.3.4', '::ffff:1.2.3.4'],
      ['v4-10.0.0.1-8', '10.0.0.1/8'],
      ['v4-1.2.3.5-32', '1.2.3.5/32'],
      ['v4-not-an-ip', 'not-an-ip'],
      ['v6-fe800000000000000000000000000001', 'fe80::1%eth0'],
    ]) {
      const message = await refused(grant(name as string, address as string));
      assert.match(message, /must be a canonical IP address/, `${address}: ${message}`);
    }
  });

  it('refuses a name that is not derived from the address', async () => {
    for (const [name, address] of [
      ['v4-1.2.3.4', '5.6.7.8'],
      ['v4-1.2.3.4', '1.2.3.4/32'],
      ['mygrant', '1.2.3.4'],
      ['v6-20010db8000000000000000000000002', '2001:db8::1'],
      ['v6-20010db8000100020000000000000000-48', '2001:db8:1:2::/64'],
      ['v6-20010db8000100020000000000000000', '2001:db8:1:2::/64'],
    ]) {
      const message = await refused(grant(name as string, address as string));
      assert.match(message, /metadata.name must be derived from spec.address|must be a canonical/, `${name} ${address}: ${message}`);
    }
  });

  it('refuses unknown sources and bad expiry times', async () => {
    assert.match(await refused(grant('v4-1.2.3.9', '1.2.3.9', { source: 'telnet' })), /spec.source.*Unsupported value.*"pop3"/s);
    assert.match(await refused(grant('v4-1.2.3.9', '1.2.3.9', { expiresAt: 'tomorrow' })), /spec.expiresAt/);
    assert.match(await refused(grant('v4-1.2.3.9', '1.2.3.9', { expiresAt: undefined })), /spec.expiresAt: Required value/);
  });

  it('prints the contract columns in kubectl get relaygrants and its short name', async () => {
    const out = await k.kubectl('get', 'relaygrants');
    const [header, ...rows] = out.trim().split('\n');
    assert.match(header ?? '', /^NAME\s+ADDRESS\s+USER\s+SOURCE\s+EXPIRES\s+AGE$/);
    const row = rows.find((r) => r.startsWith('v4-202.99.11.120 '));
    assert.ok(row, out);
    assert.match(row, /^v4-202\.99\.11\.120\s+202\.99\.11\.120\s+ideal\s+pop3\s+2030-07-09T11:11:55Z\s+\d+s$/);
    assert.equal(await k.kubectl('get', 'rg', '-o', 'name'), await k.kubectl('get', 'relaygrants', '-o', 'name'));
    const byCategory = await k.kubectl('get', 'drac', '-o', 'name');
    assert.match(byCategory, /relaygrant.kubedrac.io\/v4-202.99.11.120/);
  });
});
