import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { decodeAddArgs } from '../../src/bridge/drac/drac-rpc.ts';
import { XdrWriter } from '../../src/bridge/drac/xdr.ts';
import { ClientGrantNames, grantKeyFor, grantNameOf } from '../../src/grants/address.ts';
import type { GrantLookup, GrantMatch } from '../../src/grants/types.ts';
import {
  AddressError,
  canonicalIp,
  covers,
  formatIp,
  ipOfBytes,
  isClientAddress,
  isIpv4Text,
  parseCidr,
  parseIp,
  prefixOf,
  unmapIpv4,
  type IpPrefix,
} from '../../src/net/ip.ts';
import { NetworkList } from '../../src/net/networks.ts';
import { ProxyProtocolError, parseProxyHeader } from '../../src/net/proxy.ts';
import { RelayPolicy } from '../../src/smtp/relay-policy.ts';

const v6 = (bytes: Uint8Array): IpPrefix => ({ family: 6, bytes, prefixLength: 128 });
const mappedBytes = (v4: Uint8Array) => Uint8Array.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ...v4]);
const words = (b: Uint8Array) => Array.from({ length: 8 }, (_, i) => ((b[2 * i] as number) << 8) | (b[2 * i + 1] as number));

describe('ip: parse and format', () => {
  it('parses strict dotted quads: no leading zeros, four parts, each at most 255', () => {
    assert.deepEqual(parseIp('192.0.2.1'), { family: 4, bytes: Uint8Array.from([192, 0, 2, 1]), prefixLength: 32 });
    for (const bad of ['010.0.0.1', '1.2.3.04', '00.1.2.3', '1.2.3', '1.2.3.4.5', '256.1.1.1', '1..2.3', '1.2.3.', ' 1.2.3.4', '1.2.3.4 ', '0x1.2.3.4', '']) {
      assert.equal(parseIp(bad), undefined, bad);
      assert.equal(isIpv4Text(bad), false, bad);
    }
    assert.ok(isIpv4Text('0.0.0.0') && isIpv4Text('255.255.255.255'));
  });

  it('refuses zone ids, in every spelling', () => {
    for (const bad of ['fe80::1%eth0', 'fe80::1%1', '::ffff:192.0.2.1%eth0', 'fe80::1%']) assert.equal(parseIp(bad), undefined, bad);
    assert.throws(() => canonicalIp('fe80::1%eth0'), AddressError);
  });

  it('reads IPv4-mapped IPv6 as IPv4 in every spelling, and nothing else as IPv4', () => {
    for (const text of ['::ffff:192.0.2.1', '::FFFF:c000:201', '0:0:0:0:0:ffff:192.0.2.1', '0000:0000:0000:0000:0000:ffff:c000:0201']) {
      assert.equal(canonicalIp(text), '192.0.2.1', text);
      assert.equal(unmapIpv4(text), '192.0.2.1', text);
    }
    // IPv4-compatible (::a.b.c.d), IPv4-translated (::ffff:0:a.b.c.d) and NAT64 are IPv6 addresses.
    for (const text of ['::192.0.2.1', '::ffff:0:192.0.2.1', '64:ff9b::192.0.2.1']) {
      assert.equal(parseIp(text)?.family, 6, text);
      assert.equal(unmapIpv4(text), undefined, text);
    }
    assert.equal(unmapIpv4('::ffff:1.2.3.04'), undefined);
    assert.equal(unmapIpv4('1.2.3.4'), undefined);
    assert.equal(unmapIpv4('::1'), undefined);
  });

  it('expands every IPv6 text form to the same 16 bytes', () => {
    // The facts networks.ts's expandIpv6 was tested for, on the one parser.
    assert.deepEqual(words(parseIp('::1')!.bytes), [0, 0, 0, 0, 0, 0, 0, 1]);
    assert.deepEqual(words(parseIp('2001:db8::')!.bytes), [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0]);
    assert.deepEqual([...parseIp('::ffff:1.2.3.4')!.bytes], [1, 2, 3, 4]);
    assert.deepEqual(parseIp('::ffff:102:304'), parseIp('1.2.3.4'));
    assert.equal(canonicalIp('2001:0DB8:0000:0000:0000:0000:0000:0001'), '2001:db8::1');
    for (const bad of ['1:2:3:4:5:6:7:8:9', '1::2::3', ':1::', '1:', '12345::', '::g', '1:2:3:4:5:6:7:1.2.3.4', '::1.2.3']) {
      assert.equal(parseIp(bad), undefined, bad);
    }
  });

  it('formats IPv6 per RFC 5952 and agrees with the WHATWG URL serializer', () => {
    assert.equal(formatIp(v6(Uint8Array.from([0x20, 1, 0xd, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]))), '2001:db8:0:1::1');
    assert.equal(formatIp(v6(Uint8Array.from([0x20, 1, 0xd, 0xb8, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1]))), '2001:db8:0:1:1::1');
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), (bytes) => {
        const p = ipOfBytes(bytes);
        const text = formatIp(p);
        assert.deepEqual(parseIp(text), p);
        assert.equal(canonicalIp(text), text);
        if (p.family === 6) assert.equal(text, new URL(`http://[${text}]/`).hostname.slice(1, -1));
        else assert.deepEqual([...p.bytes], [...bytes.slice(12)], 'only a mapped address comes back as IPv4');
      }),
    );
  });
});

describe('ip: prefixes', () => {
  it('parses CIDRs: host bits cleared, lengths up to the family, mapped prefixes of /96 and longer as IPv4', () => {
    assert.equal(formatIp(parseCidr('10.1.2.3/8')!), '10.0.0.0/8');
    assert.equal(formatIp(parseCidr('10.0.0.0/32')!), '10.0.0.0');
    assert.equal(formatIp(parseCidr('0.0.0.0/0')!), '0.0.0.0/0');
    assert.equal(formatIp(parseCidr('::ffff:10.0.0.0/104')!), '10.0.0.0/8');
    assert.equal(formatIp(parseCidr('::ffff:0:0/96')!), '0.0.0.0/0');
    assert.equal(formatIp(parseCidr('::ffff:0:0/95')!), '::fffe:0:0/95', 'shorter than /96: an IPv6 prefix');
    assert.equal(formatIp(parseCidr('2001:db8::1/128')!), '2001:db8::1');
    for (const bad of ['10.0.0.0/33', '2001:db8::/129', '10.0.0.0/', '10.0.0.0/-1', '10.0.0.0/1234', '10.0.0/8', 'fe80::%eth0/64', '/8']) {
      assert.equal(parseCidr(bad), undefined, bad);
    }
  });

  it('covers by the prefix bits only, and never across families', () => {
    const a = parseIp('192.0.2.129')!;
    assert.ok(covers(parseCidr('192.0.2.128/25')!, a));
    assert.ok(!covers(parseCidr('192.0.2.0/25')!, a));
    assert.ok(covers(parseCidr('0.0.0.0/0')!, a));
    assert.ok(!covers(parseCidr('::/0')!, a), 'an IPv6 prefix never covers an IPv4 address');
    assert.ok(!covers(parseCidr('0.0.0.0/0')!, parseIp('::1')!));
    assert.ok(!covers(a, parseCidr('192.0.2.128/25')!), 'an address does not cover a wider prefix');
  });

  it('agrees with prefixOf for every length', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), fc.uint8Array({ minLength: 16, maxLength: 16 }), fc.nat(128), (x, y, len) => {
        const outer = prefixOf(v6(x), len);
        const inner = v6(y);
        const same = formatIp(prefixOf(inner, len)) === formatIp(outer);
        assert.equal(covers(outer, inner), same);
      }),
    );
  });

  it('knows the addresses no client has', () => {
    for (const no of ['0.0.0.0', '0.1.2.3', '224.0.0.1', '239.255.255.255', '240.0.0.1', '255.255.255.255', '::', '::2', '::192.0.2.1', 'ff02::1', '::ffff:0.0.0.0', '::ffff:224.0.0.1']) {
      assert.equal(isClientAddress(parseIp(no)!), false, no);
    }
    for (const yes of ['1.0.0.0', '223.255.255.255', '::1', '::1:0:0:0', '2001:db8::1', '::ffff:192.0.2.1', 'fe80::1']) {
      assert.equal(isClientAddress(parseIp(yes)!), true, yes);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Every consumer of client address text agrees: grant naming, trusted networks, the PROXY parser,
// the relay decision and DRAC RPC read the same text as the same address, or all refuse it.

/** Spellings of one address, canonical or not, and text that is no address at all. */
const v4Bytes = fc.uint8Array({ minLength: 4, maxLength: 4 });
const v6Bytes = fc.uint8Array({ minLength: 16, maxLength: 16 });
const hex4 = (w: number, pad: boolean, upper: boolean) => {
  const h = pad ? w.toString(16).padStart(4, '0') : w.toString(16);
  return upper ? h.toUpperCase() : h;
};
const spelling = fc.oneof(
  // IPv4, plain or with leading zeros (refused).
  fc.tuple(v4Bytes, fc.boolean()).map(([b, zero]) => (zero ? [...b].map((x, i) => (i === 1 ? `0${x}` : String(x))).join('.') : [...b].join('.'))),
  // IPv4-mapped IPv6: dotted, hex, fully written, upper case.
  fc.tuple(v4Bytes, fc.nat(3), fc.boolean()).map(([b, form, upper]) => {
    const w = words(mappedBytes(b));
    const text = [`::ffff:${[...b].join('.')}`, `::ffff:${hex4(w[6]!, false, false)}:${hex4(w[7]!, false, false)}`, `0:0:0:0:0:ffff:${[...b].join('.')}`, `0000:0000:0000:0000:0000:FFFF:${hex4(w[6]!, true, true)}:${hex4(w[7]!, true, true)}`][form]!;
    return upper ? text.toUpperCase() : text;
  }),
  // IPv6: canonical, fully written with leading zeros, upper case.
  fc.tuple(v6Bytes, fc.boolean(), fc.boolean()).map(([b, full, upper]) => (full ? words(b).map((w) => hex4(w, true, upper)).join(':') : formatIp(v6(b)))),
  // Zone ids and leading zeros inside a mapped address: never an address.
  fc.tuple(v6Bytes, fc.constantFrom('%eth0', '%1', '%')).map(([b, zone]) => `${formatIp(v6(b))}${zone}`),
  fc.tuple(v4Bytes).map(([b]) => `::ffff:${b[0]}.${b[1]}.${b[2]}.0${b[3]}`),
  fc.constantFrom('::ffff:127.0.0.1', '::1', '0.0.0.0', '::', '::ffff:0.0.0.0', 'fe80::1', '255.255.255.255', 'ff02::1', '::192.0.2.1'),
);

class RecordingLookup implements GrantLookup {
  readonly synced = true;
  asked: string[] = [];
  lookup(ip: string): GrantMatch | undefined {
    this.asked.push(ip);
    return undefined;
  }
}

function proxyV1(text: string): string | Error {
  try {
    const r = parseProxyHeader(Buffer.from(`PROXY ${text.includes(':') ? 'TCP6' : 'TCP4'} ${text} ${text.includes(':') ? '::1' : '127.0.0.1'} 1000 25\r\n`));
    return r.kind === 'done' && r.client ? r.client.address : new Error(`no client: ${JSON.stringify(r)}`);
  } catch (err) {
    assert.ok(err instanceof ProxyProtocolError, String(err));
    return err;
  }
}

function proxyV2(p: IpPrefix): string {
  const head = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, p.family === 4 ? 0x11 : 0x21, 0, 0]);
  const block = Buffer.alloc(p.family === 4 ? 12 : 36);
  block.set(p.bytes, 0);
  head.writeUInt16BE(block.length, 14);
  const r = parseProxyHeader(Buffer.concat([head, block]));
  assert.ok(r.kind === 'done' && r.client);
  return r.client.address;
}

function dracArgs(p: IpPrefix): IpPrefix | undefined {
  const w = new XdrWriter();
  if (p.family === 4) return decodeAddArgs(1, w.uint32(((p.bytes[0]! << 24) | (p.bytes[1]! << 16) | (p.bytes[2]! << 8) | p.bytes[3]!) >>> 0).toBuffer());
  for (const b of p.bytes) w.int32(b);
  return decodeAddArgs(2, w.toBuffer());
}

describe('ip: every consumer reads an address the same way', () => {
  it('grant naming, networks, PROXY v1 and v2, the relay decision and DRAC RPC agree', () => {
    fc.assert(
      fc.property(spelling, (text) => {
        const p = parseIp(text);
        const canonical = p && formatIp(p);

        // Grant naming: the key, the names a lookup tries.
        if (p === undefined) {
          assert.throws(() => grantKeyFor(text, 128), AddressError);
          assert.equal(ClientGrantNames.of(text), undefined);
        } else if (isClientAddress(p)) {
          assert.equal(grantKeyFor(text, 128).address, canonical);
          assert.equal(ClientGrantNames.of(text)?.exact, grantNameOf(p));
        } else {
          assert.throws(() => grantKeyFor(text, 128), AddressError);
          assert.equal(ClientGrantNames.of(text), undefined);
        }

        // Trusted networks: the text is in a list of its canonical address, and the reverse.
        assert.equal(NetworkList.parse([canonical ?? '192.0.2.1'], 'k').contains(text), canonical !== undefined);
        if (canonical !== undefined) assert.ok(NetworkList.parse([text], 'k').contains(canonical));
        else assert.throws(() => NetworkList.parse([text], 'k'));

        // PROXY v1 names the canonical address, or the header is refused.
        const v1 = proxyV1(text);
        assert.equal(typeof v1 === 'string' ? v1 : undefined, canonical, `v1 ${text}`);

        // The relay decision asks the grants for the canonical address, or denies at once.
        const lookup = new RecordingLookup();
        const policy = new RelayPolicy({ localDomains: ['example.test'], localUsers: { userFor: () => undefined }, trustedNetworks: NetworkList.empty(), grants: lookup });
        const decision = policy.decide({ clientIp: text, recipient: 'someone@elsewhere.test' });
        assert.ok(!(decision instanceof Promise));
        assert.equal(decision.decision, 'denied');
        assert.deepEqual(lookup.asked, canonical === undefined ? [] : [canonical]);

        if (p === undefined) return;
        // From bytes: PROXY v2 and DRAC RPC give the same address as the text did.
        const asWritten = p.family === 4 && text.includes(':') ? mappedBytes(p.bytes) : p.bytes;
        const fromBytes = ipOfBytes(asWritten);
        assert.equal(proxyV2(fromBytes.family === 4 && asWritten.length === 16 ? v6(asWritten) : fromBytes), canonical);
        const drac = dracArgs(asWritten.length === 16 ? v6(asWritten) : p);
        assert.equal(drac && formatIp(drac), canonical);
      }),
      { numRuns: 2000 },
    );
  });

  it('NetworkList, covers and grant prefixes agree at CIDR edges, and NetworkList matches node:net BlockList', () => {
    const cidr = fc.oneof(
      fc.tuple(v4Bytes, fc.nat(32)).map(([b, len]) => prefixOf({ family: 4, bytes: b, prefixLength: 32 }, len)),
      fc.tuple(v6Bytes, fc.nat(128)).map(([b, len]) => prefixOf(v6(b), len)),
    );
    // An address near the prefix: inside it, or one bit flipped just past its edge.
    const case_ = cidr.chain((net_) =>
      fc.tuple(fc.constant(net_), fc.uint8Array({ minLength: net_.bytes.length, maxLength: net_.bytes.length }), fc.integer({ min: -1, max: 1 })).map(([n, rest, flip]) => {
        const bytes = n.bytes.slice();
        const full = n.family === 4 ? 32 : 128;
        for (let bit = n.prefixLength; bit < full; bit++) if (((rest[bit >> 3] as number) >> (7 - (bit & 7))) & 1) bytes[bit >> 3]! |= 1 << (7 - (bit & 7));
        const edge = n.prefixLength + flip; // flip a bit around the edge: inside, at, or after it
        if (edge >= 0 && edge < full) bytes[edge >> 3]! ^= 1 << (7 - (edge & 7));
        return { network: n, address: { family: n.family, bytes, prefixLength: full } };
      }),
    );
    fc.assert(
      fc.property(case_, fc.boolean(), ({ network, address }, mappedEntry) => {
        const inside = covers(network, address);
        const entry = network.family === 4 && mappedEntry ? `::ffff:${network.bytes.join('.')}/${network.prefixLength + 96}` : formatIp(network);
        const list = NetworkList.parse([entry], 'k');
        const text = formatIp(address);
        assert.equal(list.contains(text), inside, `${entry} ∋ ${text}`);
        if (address.family === 4) assert.equal(list.contains(`::ffff:${text}`), inside, `${entry} ∋ ::ffff:${text}`);

        // The implementation this list replaced: node's BlockList, which reads an IPv4 query
        // against IPv6 rules as its mapped address too.
        const block = new net.BlockList();
        const asNode = parseCidr(entry)!;
        block.addSubnet(formatIp({ ...asNode, prefixLength: asNode.family === 4 ? 32 : 128 }), asNode.prefixLength, asNode.family === 4 ? 'ipv4' : 'ipv6');
        assert.equal(list.contains(text), block.check(text, address.family === 4 ? 'ipv4' : 'ipv6'), `BlockList ${entry} ∋ ${text}`);

        // The grant cache's names: an address's prefix name is the network's exactly when covered.
        if (isClientAddress(address) && network.prefixLength < (network.family === 4 ? 32 : 128)) {
          const names = ClientGrantNames.of(text)!;
          assert.equal(names.prefixName(network.prefixLength) === grantNameOf(network), inside);
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('an IPv6 network spanning all IPv4-mapped addresses holds every IPv4 client, as BlockList did', () => {
    const list = NetworkList.parse(['::/64'], 'k');
    assert.ok(list.contains('192.0.2.1') && list.contains('::ffff:192.0.2.1'));
    assert.ok(!NetworkList.parse(['::/81'], 'k').contains('192.0.2.1'));
    assert.ok(!NetworkList.parse(['::/96'], 'k').contains('192.0.2.1'), 'IPv4-compatible addresses are not IPv4');
    assert.ok(!NetworkList.parse(['0.0.0.0/0'], 'k').contains('::1'));
  });
});
