import assert from 'node:assert/strict';
import net from 'node:net';
import { after, describe, it } from 'node:test';
import { NetworkList } from '../../src/net/networks.ts';
import { ProxyProtocolError, crc32c, parseProxyHeader, readProxyHeader } from '../../src/net/proxy.ts';

const SIG = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);

function v2(opts: { cmd?: number; fam?: number; addr?: Buffer; tlvs?: Buffer; version?: number; lengthOverride?: number }): Buffer {
  const addr = opts.addr ?? Buffer.alloc(0);
  const tlvs = opts.tlvs ?? Buffer.alloc(0);
  const head = Buffer.alloc(4);
  head[0] = ((opts.version ?? 2) << 4) | (opts.cmd ?? 1);
  head[1] = opts.fam ?? 0x11;
  head.writeUInt16BE(opts.lengthOverride ?? addr.length + tlvs.length, 2);
  return Buffer.concat([SIG, head, addr, tlvs]);
}

function ipv4Block(src: number[], dst: number[], sport: number, dport: number): Buffer {
  const b = Buffer.alloc(12);
  b.set(src, 0);
  b.set(dst, 4);
  b.writeUInt16BE(sport, 8);
  b.writeUInt16BE(dport, 10);
  return b;
}

function ipv6Block(src: Buffer, dst: Buffer, sport: number, dport: number): Buffer {
  const b = Buffer.alloc(36);
  src.copy(b, 0);
  dst.copy(b, 16);
  b.writeUInt16BE(sport, 32);
  b.writeUInt16BE(dport, 34);
  return b;
}

function tlv(type: number, value: Buffer): Buffer {
  const h = Buffer.alloc(3);
  h[0] = type;
  h.writeUInt16BE(value.length, 1);
  return Buffer.concat([h, value]);
}

function done(buf: Buffer) {
  const r = parseProxyHeader(buf);
  assert.equal(r.kind, 'done');
  return r;
}

function throwsProxy(buf: Buffer, reason?: string) {
  assert.throws(
    () => parseProxyHeader(buf),
    (err: unknown) => err instanceof ProxyProtocolError && (reason === undefined || err.reason === reason),
  );
}

describe('PROXY v1', () => {
  it('parses TCP4 and reports the header length', () => {
    const text = 'PROXY TCP4 192.0.2.10 198.51.100.1 56324 110\r\nUSER x\r\n';
    const r = done(Buffer.from(text));
    assert.deepEqual(r.client, { address: '192.0.2.10', port: 56324 });
    assert.equal(r.length, text.indexOf('USER'));
  });

  it('parses TCP6 and canonicalizes the address', () => {
    const r = done(Buffer.from('PROXY TCP6 2001:DB8:0:0:0:0:0:1 2001:db8::2 4000 995\r\n'));
    assert.deepEqual(r.client, { address: '2001:db8::1', port: 4000 });
  });

  it('treats an IPv4-mapped TCP6 source as its IPv4 address', () => {
    const r = done(Buffer.from('PROXY TCP6 ::ffff:192.0.2.7 ::ffff:192.0.2.1 1 2\r\n'));
    assert.deepEqual(r.client, { address: '192.0.2.7', port: 1 });
  });

  it('gives no client for UNKNOWN, with or without trailing fields', () => {
    assert.equal(done(Buffer.from('PROXY UNKNOWN\r\n')).client, null);
    const r = done(Buffer.from('PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nrest'));
    assert.equal(r.client, null);
    assert.equal(r.length, 'PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n'.length);
  });

  it('is incomplete until the CRLF arrives, byte by byte', () => {
    const text = Buffer.from('PROXY TCP4 192.0.2.10 198.51.100.1 56324 110\r\n');
    for (let i = 0; i < text.length; i++) {
      assert.equal(parseProxyHeader(text.subarray(0, i)).kind, 'incomplete', `at ${i}`);
    }
    assert.equal(parseProxyHeader(text).kind, 'done');
  });

  it('refuses lines longer than 107 bytes', () => {
    const long = Buffer.from('PROXY UNKNOWN ' + 'x'.repeat(120));
    throwsProxy(long, 'oversized');
    // 107 bytes including CRLF is the maximum that passes.
    const max = Buffer.from('PROXY UNKNOWN ' + 'x'.repeat(107 - 16) + '\r\n');
    assert.equal(max.length, 107);
    assert.equal(done(max).length, 107);
    throwsProxy(Buffer.from('PROXY UNKNOWN ' + 'x'.repeat(108 - 16) + '\r\n'), 'oversized');
  });

  it('refuses malformed lines', () => {
    for (const text of [
      'PROXY TCP4 192.0.2.10 198.51.100.1 56324\r\n',
      'PROXY TCP4 192.0.2.10 198.51.100.1 56324 110 extra\r\n',
      'PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n',
      'PROXY TCP6 192.0.2.1 2001:db8::1 1 2\r\n',
      'PROXY TCP4 192.0.2.10 198.51.100.1 65536 110\r\n',
      'PROXY TCP4 192.0.2.10 198.51.100.1 0123 110\r\n',
      'PROXY TCP4 192.0.2.10  198.51.100.1 1 110\r\n',
      'PROXY TCP4 192.0.2.256 198.51.100.1 1 110\r\n',
      'PROXY UDP4 192.0.2.1 198.51.100.1 1 110\r\n',
      'PROXY TCP4 192.0.2.1\x00 198.51.100.1 1 110\r\n',
      'PROXY TCP4 192.0.2.1 198.51.100.1 1 110\n',
      'PROXY  \r\n',
    ]) {
      throwsProxy(Buffer.from(text));
    }
  });

  it('says a missing header is missing', () => {
    throwsProxy(Buffer.from('USER alice\r\n'), 'missing');
    throwsProxy(Buffer.from('PROXX TCP4'), 'missing');
    throwsProxy(Buffer.from([0x16, 0x03, 0x01]), 'missing');
  });
});

describe('PROXY v2', () => {
  it('parses PROXY TCP over IPv4', () => {
    const buf = v2({ addr: ipv4Block([203, 0, 113, 9], [10, 0, 0, 1], 40000, 110) });
    const r = done(Buffer.concat([buf, Buffer.from('+OK')]));
    assert.deepEqual(r.client, { address: '203.0.113.9', port: 40000 });
    assert.equal(r.length, 28);
  });

  it('parses PROXY TCP over IPv6, mapped IPv6 as IPv4', () => {
    const src = Buffer.alloc(16);
    src.writeUInt16BE(0x2001, 0);
    src.writeUInt16BE(0x0db8, 2);
    src[15] = 5;
    const r = done(v2({ fam: 0x21, addr: ipv6Block(src, Buffer.alloc(16), 1234, 995) }));
    assert.deepEqual(r.client, { address: '2001:db8::5', port: 1234 });

    const mapped = Buffer.alloc(16);
    mapped[10] = 0xff;
    mapped[11] = 0xff;
    mapped.set([198, 51, 100, 20], 12);
    assert.deepEqual(done(v2({ fam: 0x21, addr: ipv6Block(mapped, Buffer.alloc(16), 7, 8) })).client, {
      address: '198.51.100.20',
      port: 7,
    });
  });

  it('gives no client for LOCAL, UNSPEC, UDP and UNIX', () => {
    assert.equal(done(v2({ cmd: 0, fam: 0x00 })).client, null);
    assert.equal(done(v2({ cmd: 0, fam: 0x11, addr: ipv4Block([1, 2, 3, 4], [5, 6, 7, 8], 1, 2) })).client, null);
    assert.equal(done(v2({ cmd: 1, fam: 0x00 })).client, null);
    assert.equal(done(v2({ fam: 0x12, addr: ipv4Block([1, 2, 3, 4], [5, 6, 7, 8], 1, 2) })).client, null);
    assert.equal(done(v2({ fam: 0x31, addr: Buffer.alloc(216) })).client, null);
  });

  it('skips TLVs and checks them', () => {
    const addr = ipv4Block([203, 0, 113, 9], [10, 0, 0, 1], 40000, 110);
    const tlvs = Buffer.concat([tlv(0x01, Buffer.from('pop3')), tlv(0x04, Buffer.alloc(0)), tlv(0xea, Buffer.from('vpce-1'))]);
    const r = done(v2({ addr, tlvs }));
    assert.equal(r.client?.address, '203.0.113.9');
    assert.equal(r.length, 16 + addr.length + tlvs.length);
    // A TLV whose length runs past the header, or a stray byte, is refused.
    throwsProxy(v2({ addr, tlvs: Buffer.from([0x01, 0x00, 0x09, 0x41]) }));
    throwsProxy(v2({ addr, tlvs: Buffer.from([0x01]) }));
  });

  it('verifies a CRC32C TLV', () => {
    assert.equal(crc32c(Buffer.from('123456789')), 0xe3069283);
    const addr = ipv4Block([203, 0, 113, 9], [10, 0, 0, 1], 40000, 110);
    const withZero = v2({ addr, tlvs: tlv(0x03, Buffer.alloc(4)) });
    const good = Buffer.from(withZero);
    good.writeUInt32BE(crc32c(withZero), good.length - 4);
    assert.equal(done(good).client?.address, '203.0.113.9');
    const bad = Buffer.from(good);
    bad[17] = 1;
    throwsProxy(bad, 'checksum');
  });

  it('is incomplete while truncated, at every cut', () => {
    const full = v2({ addr: ipv4Block([203, 0, 113, 9], [10, 0, 0, 1], 40000, 110), tlvs: tlv(1, Buffer.from('h2')) });
    for (let i = 0; i < full.length; i++) assert.equal(parseProxyHeader(full.subarray(0, i)).kind, 'incomplete', `at ${i}`);
  });

  it('refuses bad versions, commands, families, short address blocks and oversize', () => {
    throwsProxy(v2({ version: 1, addr: ipv4Block([1, 2, 3, 4], [5, 6, 7, 8], 1, 2) }));
    throwsProxy(v2({ cmd: 2, addr: ipv4Block([1, 2, 3, 4], [5, 6, 7, 8], 1, 2) }));
    throwsProxy(v2({ fam: 0x41, addr: Buffer.alloc(12) }));
    throwsProxy(v2({ fam: 0x13, addr: Buffer.alloc(12) }));
    throwsProxy(v2({ fam: 0x11, addr: Buffer.alloc(8) }));
    throwsProxy(v2({ fam: 0x21, addr: Buffer.alloc(12) }));
    throwsProxy(v2({ fam: 0x11, addr: Buffer.alloc(0), lengthOverride: 60000 }), 'oversized');
    throwsProxy(Buffer.concat([SIG.subarray(0, 5), Buffer.from('x')]), 'missing');
  });

  it('never crashes on random bytes after a signature', () => {
    for (let i = 0; i < 2000; i++) {
      const len = Math.floor(Math.random() * 80);
      const tail = Buffer.from(Array.from({ length: len }, () => Math.floor(Math.random() * 256)));
      const prefix = i % 2 === 0 ? SIG : Buffer.from('PROXY ');
      try {
        const r = parseProxyHeader(Buffer.concat([prefix, tail]));
        if (r.kind === 'done') assert.ok(r.length <= prefix.length + len);
      } catch (err) {
        assert.ok(err instanceof ProxyProtocolError, String(err));
      }
    }
  });
});

describe('readProxyHeader on a socket', () => {
  const servers: net.Server[] = [];
  after(() => servers.forEach((s) => s.close()));

  async function withServer(
    opts: { trusted: string[]; timeoutMs?: number },
    send: (c: net.Socket) => void,
  ): Promise<{ client: unknown; rest: string } | ProxyProtocolError> {
    const server = net.createServer();
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const result = new Promise<{ client: unknown; rest: string } | ProxyProtocolError>((resolve) => {
      server.once('connection', (sock) => {
        readProxyHeader(sock, { trustedProxies: NetworkList.parse(opts.trusted, 'test'), timeoutMs: opts.timeoutMs ?? 2000 }).then(
          (r) => {
            resolve({ client: r.client, rest: r.rest.toString() });
            sock.destroy();
          },
          (err: ProxyProtocolError) => {
            resolve(err);
            sock.destroy();
          },
        );
      });
    });
    const c = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1', () => send(c));
    c.on('error', () => {});
    const r = await result;
    c.destroy();
    return r;
  }

  it('returns the client and the bytes after the header, across split writes', async () => {
    const r = await withServer({ trusted: ['127.0.0.0/8'] }, (c) => {
      c.write('PROXY TCP4 192.0.2.1 19');
      setTimeout(() => c.write('8.51.100.1 5 110\r\nCAPA\r\n'), 20);
    });
    assert.deepEqual(r, { client: { address: '192.0.2.1', port: 5 }, rest: 'CAPA\r\n' });
  });

  it('refuses a peer that is not a trusted proxy', async () => {
    const r = await withServer({ trusted: ['10.0.0.0/8'] }, (c) => c.write('PROXY TCP4 192.0.2.1 198.51.100.1 5 110\r\n'));
    assert.ok(r instanceof ProxyProtocolError && r.reason === 'untrusted');
  });

  it('times out when the header never completes', async () => {
    const r = await withServer({ trusted: ['127.0.0.1'], timeoutMs: 50 }, (c) => c.write('PROXY TCP4'));
    assert.ok(r instanceof ProxyProtocolError && r.reason === 'timeout');
  });

  it('fails when the connection closes first', async () => {
    const r = await withServer({ trusted: ['127.0.0.1'] }, (c) => c.end('PROXY '));
    assert.ok(r instanceof ProxyProtocolError && r.reason === 'closed');
  });
});
