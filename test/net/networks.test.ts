import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError } from '../../src/config/reader.ts';
import { NetworkList } from '../../src/net/networks.ts';

describe('NetworkList', () => {
  it('matches IPv4 and IPv6 networks and single addresses', () => {
    const list = NetworkList.parse(['10.0.0.0/8', '192.0.2.7', '2001:db8::/32', '::1'], 'pop3.trustedProxies');
    assert.equal(list.size, 4);
    assert.ok(list.contains('10.200.1.1'));
    assert.ok(list.contains('192.0.2.7'));
    assert.ok(!list.contains('192.0.2.8'));
    assert.ok(list.contains('2001:db8:ffff::1'));
    assert.ok(list.contains('::1'));
    assert.ok(!list.contains('2001:db9::1'));
    assert.ok(!list.contains('not an ip'));
  });

  it('treats IPv4-mapped IPv6 as IPv4, in queries and in entries', () => {
    const list = NetworkList.parse(['10.0.0.0/8'], 'k');
    assert.ok(list.contains('::ffff:10.1.2.3'));
    assert.ok(list.contains('::FFFF:a01:203'));
    assert.ok(list.contains('0:0:0:0:0:ffff:10.1.2.3'));
    assert.ok(!list.contains('::ffff:11.1.2.3'));
    const mappedEntry = NetworkList.parse(['::ffff:192.0.2.0/120'], 'k');
    assert.ok(mappedEntry.contains('192.0.2.99'));
    assert.ok(!mappedEntry.contains('192.0.3.1'));
  });

  it('an empty list contains nothing', () => {
    assert.ok(!NetworkList.parse([], 'k').contains('127.0.0.1'));
    assert.equal(NetworkList.empty().size, 0);
  });

  it('names the key and the entry on a bad entry', () => {
    for (const bad of ['10.0.0.0/33', '10.0.0/8', 'example.com', '2001:db8::/129', '10.0.0.0/', ' 10.0.0.1', '10.0.0.0/-1']) {
      assert.throws(
        () => NetworkList.parse(['127.0.0.1', bad], 'pop3.denyGrantNetworks'),
        (err: unknown) => err instanceof ConfigError && err.key === 'pop3.denyGrantNetworks[1]' && err.message.includes(JSON.stringify(bad)),
        bad,
      );
    }
  });
});
