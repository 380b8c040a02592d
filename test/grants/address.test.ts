import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { ClientGrantNames, NeverGrantedError, grantAddressOfName, grantKeyFor, grantNameOf, parseGrantAddress } from '../../src/grants/address.ts';
import { AddressError, canonicalIp, covers, formatIp, nonClientReason, parseIp, prefixOf } from '../../src/net/ip.ts';

const ipv4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((b) => b.join('.'));
const ipv6Bytes = fc.uint8Array({ minLength: 16, maxLength: 16 });
const ipv6 = ipv6Bytes
  .filter((b) => !(b.slice(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff))
  .map((b) => formatIp({ family: 6, bytes: b, prefixLength: 128 }));
/** Whether a client could be at `ip` (a grant may be written for it). */
const grantable = (ip: string) => nonClientReason(parseIp(ip)!) === undefined;

describe('canonicalIp', () => {
  it('keeps canonical IPv4 and refuses leading zeros and junk', () => {
    assert.equal(canonicalIp('202.99.11.120'), '202.99.11.120');
    assert.equal(canonicalIp('0.0.0.0'), '0.0.0.0');
    for (const bad of ['010.0.0.1', '1.2.3', '1.2.3.4.5', '256.1.1.1', '1.2.3.-1', ' 1.2.3.4', '1.2.3.4 ', '', 'a.b.c.d', '1..2.3']) {
      assert.throws(() => canonicalIp(bad), AddressError, bad);
    }
  });

  it('writes IPv6 per RFC 5952', () => {
    const cases: [string, string][] = [
      ['2001:DB8::1', '2001:db8::1'],
      ['2001:0db8:0000:0000:0000:0000:0000:0001', '2001:db8::1'],
      ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'], // first of two equal runs
      ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'], // a single zero group is not compressed
      ['::', '::'],
      ['::1', '::1'],
      ['fe80::', 'fe80::'],
      ['2001:db8::0.0.0.1', '2001:db8::1'],
    ];
    for (const [input, want] of cases) assert.equal(canonicalIp(input), want, input);
  });

  it('treats IPv4-mapped IPv6 as IPv4', () => {
    assert.equal(canonicalIp('::ffff:1.2.3.4'), '1.2.3.4');
    assert.equal(canonicalIp('::FFFF:0102:0304'), '1.2.3.4');
    assert.equal(parseIp('::ffff:10.0.0.1')?.family, 4);
  });

  it('refuses zone ids and malformed IPv6', () => {
    for (const bad of ['fe80::1%eth0', '1::2::3', '12345::', ':::', '1:2:3:4:5:6:7:8:9', 'g::1', '::ffff:1.2.3.04']) {
      assert.throws(() => canonicalIp(bad), AddressError, bad);
    }
  });

  it('reads the full, uncompressed and mixed spellings of any IPv6 address alike', () => {
    fc.assert(
      fc.property(ipv6Bytes, (b) => {
        const canonical = formatIp(parseIp(formatIp({ family: 6, bytes: b, prefixLength: 128 }))!);
        const words = Array.from({ length: 8 }, (_, i) => ((b[2 * i]! << 8) | b[2 * i + 1]!).toString(16));
        assert.equal(canonicalIp(words.map((w) => w.padStart(4, '0')).join(':')), canonical);
        assert.equal(canonicalIp(words.join(':').toUpperCase()), canonical);
        const mixed = `${words.slice(0, 6).join(':')}:${b.slice(12).join('.')}`;
        assert.equal(canonicalIp(mixed), canonical);
      }),
    );
  });

  it('agrees with node:net on what is an IP (without zones)', () => {
    fc.assert(
      fc.property(fc.oneof(ipv4, ipv6), (ip) => {
        assert.ok(net.isIP(ip) !== 0);
        assert.equal(canonicalIp(ip), ip);
      }),
    );
  });
});

describe('grant names', () => {
  it('names addresses and prefixes as the contract says', () => {
    assert.equal(grantKeyFor('202.99.11.120', 64).name, 'v4-202.99.11.120');
    assert.equal(grantKeyFor('::ffff:202.99.11.120', 64).name, 'v4-202.99.11.120');
    assert.deepEqual(grantKeyFor('2001:db8:1:2:aaaa::1', 64), {
      address: '2001:db8:1:2::/64',
      name: 'v6-20010db8000100020000000000000000-64',
    });
    assert.deepEqual(grantKeyFor('2001:db8::1', 128), { address: '2001:db8::1', name: 'v6-20010db8000000000000000000000001' });
    assert.equal(grantNameOf(parseGrantAddress('10.0.0.0/8')), 'v4-10.0.0.0-8');
  });

  it('round-trips every address and prefix through its name', () => {
    const prefix = fc.oneof(
      fc.tuple(ipv4, fc.integer({ min: 0, max: 32 })).map(([ip, len]) => prefixOf(parseIp(ip)!, len)),
      fc.tuple(ipv6, fc.integer({ min: 0, max: 128 })).map(([ip, len]) => prefixOf(parseIp(ip)!, len)),
    );
    fc.assert(
      fc.property(prefix, (p) => {
        const address = formatIp(p);
        const name = grantNameOf(p);
        assert.match(name, /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/); // a valid object name
        assert.ok(name.length <= 253);
        assert.equal(grantAddressOfName(name), address);
        assert.deepEqual(parseGrantAddress(address), p);
      }),
    );
  });

  it('gives two different addresses two different names', () => {
    fc.assert(
      fc.property(fc.oneof(ipv4, ipv6), fc.oneof(ipv4, ipv6), (a, b) => {
        fc.pre(a !== b && grantable(a) && grantable(b));
        assert.notEqual(grantKeyFor(a, 128).name, grantKeyFor(b, 128).name);
      }),
    );
  });

  it('refuses non-canonical grant addresses and names', () => {
    for (const bad of ['010.0.0.1', '2001:DB8::1', '::ffff:1.2.3.4', '10.0.0.1/8', '1.2.3.4/32', '2001:db8::/128', '10.0.0.0/08', '10.0.0.0/33']) {
      assert.throws(() => parseGrantAddress(bad), AddressError, bad);
    }
    for (const bad of ['v4-010.0.0.1', 'v4-10.0.0.1-8', 'v6-20010DB8000000000000000000000001', 'v6-2001', 'v4-1.2.3.4-32', 'x-1.2.3.4']) {
      assert.throws(() => grantAddressOfName(bad), AddressError, bad);
    }
  });

  it('computes the same names on the lookup hot path as the general naming', () => {
    const client = fc.oneof(ipv4, ipv6, ipv4.map((ip) => `::ffff:${ip}`), ipv6.map((ip) => ip.toUpperCase()));
    fc.assert(
      fc.property(client, fc.integer({ min: 0, max: 128 }), (ip, len) => {
        const parsed = parseIp(ip)!;
        if (!grantable(ip)) return assert.equal(ClientGrantNames.of(ip), undefined, `${ip}: never granted, so never covered`);
        const names = ClientGrantNames.of(ip)!;
        assert.equal(names.exact, grantKeyFor(ip, 128).name);
        const l = Math.min(len, parsed.family === 4 ? 32 : 128);
        assert.equal(names.prefixName(l), grantNameOf(prefixOf(parsed, l)));
      }),
    );
    for (const bad of ['010.0.0.1', '1.2.3', '::ffff:1.2.3.04', 'fe80::1%eth0', '', 'x']) assert.equal(ClientGrantNames.of(bad), undefined, bad);
  });

  it('covers addresses inside a prefix and nothing outside it', () => {
    const net64 = parseGrantAddress('2001:db8:1:2::/64');
    assert.ok(covers(net64, parseIp('2001:db8:1:2:ffff:ffff:ffff:ffff')!));
    assert.ok(!covers(net64, parseIp('2001:db8:1:3::')!));
    assert.ok(!covers(net64, parseIp('10.0.0.1')!));
  });
});

describe('addresses that are never granted', () => {
  it('names the reason for each range, IPv4-mapped forms included', () => {
    const cases: Array<[string, string | undefined]> = [
      ['0.0.0.0', 'unspecified'],
      ['::ffff:0.0.0.0', 'unspecified'],
      ['::ffff:0:0', 'unspecified'],
      ['::', 'unspecified'],
      ['0.1.2.3', 'reserved'],
      ['255.255.255.255', 'broadcast'],
      ['::ffff:255.255.255.255', 'broadcast'],
      ['::FFFF:FFFF:FFFF', 'broadcast'],
      ['224.0.0.1', 'multicast'],
      ['239.255.255.250', 'multicast'],
      ['ff02::1', 'multicast'],
      ['ff0e::1:3', 'multicast'],
      ['240.0.0.1', 'reserved'],
      ['255.255.255.254', 'reserved'],
      ['::1.2.3.4', 'reserved'],
      ['::2', 'reserved'],
      // Clients can be at these.
      ['1.0.0.0', undefined],
      ['127.0.0.1', undefined],
      ['::1', undefined],
      ['10.0.0.255', undefined],
      ['223.255.255.255', undefined],
      ['192.0.2.10', undefined],
      ['fe80::1', undefined],
      ['2001:db8::1', undefined],
      ['fe00::1', undefined],
      ['::1:0:0:0', undefined],
    ];
    for (const [ip, reason] of cases) assert.equal(nonClientReason(parseIp(ip)!), reason, ip);
  });

  it('grantKeyFor refuses each of them, the proxy the header came through, and prefixes wider than /32', () => {
    for (const ip of ['0.0.0.0', '::ffff:0.0.0.0', '255.255.255.255', '::ffff:255.255.255.255', '224.0.0.251', 'ff02::fb', '::', '240.1.2.3']) {
      assert.throws(() => grantKeyFor(ip, 64), (err: unknown) => err instanceof NeverGrantedError && /^never granted: /.test(err.message), ip);
    }
    // The proxy's own address, in any spelling, and an IPv6 prefix that would cover it.
    for (const [client, proxy] of [
      ['127.0.0.2', '127.0.0.2'],
      ['127.0.0.2', '::ffff:127.0.0.2'],
      ['2001:db8:1:2::5', '2001:db8:1:2::1'],
    ] as const) {
      assert.throws(
        () => grantKeyFor(client, 64, { proxyPeer: proxy }),
        (err: unknown) => err instanceof NeverGrantedError && err.reason === 'proxy' && /address of the proxy/.test(err.message),
        `${client} via ${proxy}`,
      );
    }
    assert.equal(grantKeyFor('192.0.2.10', 64, { proxyPeer: '127.0.0.2' }).name, 'v4-192.0.2.10');
    assert.equal(grantKeyFor('2001:db8:1:3::5', 64, { proxyPeer: '2001:db8:1:2::1' }).address, '2001:db8:1:3::/64');
    for (const len of [31, 0, -1, 129, 64.5]) assert.throws(() => grantKeyFor('2001:db8::1', len), AddressError, String(len));
    assert.equal(grantKeyFor('2001:db8::1', 32).address, '2001:db8::/32');
    // The loopback is granted exactly: its /64 would cover :: and the IPv4-compatible range.
    assert.deepEqual(grantKeyFor('::1', 64), { address: '::1', name: 'v6-00000000000000000000000000000001' });
  });

  it('no key for any address of a never-granted range, and the lookup names of none', () => {
    const never = fc.oneof(
      fc.tuple(fc.oneof(fc.constant(0), fc.integer({ min: 224, max: 255 })), fc.nat(255), fc.nat(255), fc.nat(255)).map((b) => b.join('.')),
      ipv6Bytes.map((b) => formatIp({ family: 6, bytes: Uint8Array.from([0xff, ...b.slice(1)]), prefixLength: 128 })),
    );
    fc.assert(
      fc.property(never, fc.boolean(), (ip, mapped) => {
        const text = mapped && !ip.includes(':') ? `::ffff:${ip}` : ip;
        assert.throws(() => grantKeyFor(text, 64), NeverGrantedError, text);
        assert.equal(ClientGrantNames.of(text), undefined, text);
      }),
    );
  });
});
