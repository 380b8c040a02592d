// The relay decision, table-driven: every way a client may or may not relay.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { GrantLookup, GrantMatch } from '../../src/grants/types.ts';
import {
  LiveGrantLookup,
  RelayPolicy,
  type LiveLookup,
  type LiveLookupResult,
  type RelayDecision,
  type RelayRequest,
} from '../../src/smtp/relay-policy.ts';
import { ConfigError, ConfigReader } from '../../src/config/reader.ts';
import { parseSmtpConfig } from '../../src/smtp/config.ts';
import { ListGrantLookup, StaleGrantLookup, cidrSet } from './support.ts';

const NOW = Date.parse('2026-11-28T10:00:00Z');
const LATER = NOW + 30 * 60_000;

const grants = new ListGrantLookup([
  { address: '202.99.11.120', user: 'ideal', expiresAtMs: LATER },
  { address: '198.51.100.7', user: 'old', expiresAtMs: NOW - 1 },
  { address: '198.51.100.8', user: 'edge', expiresAtMs: NOW },
  { address: '2001:db8:1:2::/64', user: 'v6user', expiresAtMs: LATER },
  { address: '2001:db8:9::5', user: 'v6single', expiresAtMs: LATER },
]);

const users = new Set(['ideal', 'bob', 'postmaster', 'carol@example.org']);
const localUsers = {
  userFor(localPart: string, domain: string): string | undefined {
    if (users.has(`${localPart}@${domain}`)) return `${localPart}@${domain}`;
    return users.has(localPart) ? localPart : undefined;
  },
};

function policy(opts: { lookup?: GrantLookup; live?: LiveLookup } = {}): RelayPolicy {
  return new RelayPolicy({
    localDomains: ['example.org', 'Mail.Example.NET.', 'bücher.example'],
    localUsers,
    trustedNetworks: cidrSet(['10.0.0.0/8', '2001:db8:ffff::/48']),
    grants: opts.lookup ?? grants,
    liveLookup: opts.live,
    now: () => NOW,
  });
}

interface Case {
  name: string;
  req: RelayRequest;
  decision: RelayDecision['decision'];
  reason: RelayDecision['reason'];
  code?: number;
  text?: RegExp;
}

const cases: Case[] = [
  // Local domains: accepted from anyone, unknown users refused.
  { name: 'local user from a stranger', req: { clientIp: '203.0.113.9', recipient: 'ideal@example.org' }, decision: 'allowed', reason: 'local' },
  { name: 'local domain is case-insensitive', req: { clientIp: '203.0.113.9', recipient: 'bob@EXAMPLE.org' }, decision: 'allowed', reason: 'local' },
  { name: 'second local domain, trailing dot configured', req: { clientIp: '203.0.113.9', recipient: 'bob@mail.example.net' }, decision: 'allowed', reason: 'local' },
  { name: 'IDN local domain in Unicode form', req: { clientIp: '203.0.113.9', recipient: 'bob@bücher.example' }, decision: 'allowed', reason: 'local' },
  { name: 'full-address user', req: { clientIp: '203.0.113.9', recipient: 'carol@example.org' }, decision: 'allowed', reason: 'local' },
  { name: 'domainless postmaster', req: { clientIp: '203.0.113.9', recipient: 'postmaster' }, decision: 'allowed', reason: 'local' },
  {
    name: 'unknown local user',
    req: { clientIp: '202.99.11.120', recipient: 'nobody@example.org' },
    decision: 'denied',
    reason: 'local',
    code: 550,
    text: /^5\.1\.1 <nobody@example\.org>: Recipient address rejected/,
  },
  { name: 'subdomain of a local domain is not local', req: { clientIp: '203.0.113.9', recipient: 'bob@sub.example.org' }, decision: 'denied', reason: 'no_grant', code: 550 },
  { name: 'lookalike domain is not local', req: { clientIp: '203.0.113.9', recipient: 'bob@example.org.evil.test' }, decision: 'denied', reason: 'no_grant', code: 550 },

  // Trusted networks.
  { name: 'trusted IPv4 network', req: { clientIp: '10.1.2.3', recipient: 'x@remote.test' }, decision: 'allowed', reason: 'trusted' },
  { name: 'trusted network, IPv4-mapped peer', req: { clientIp: '::ffff:10.1.2.3', recipient: 'x@remote.test' }, decision: 'allowed', reason: 'trusted' },
  { name: 'trusted IPv6 network', req: { clientIp: '2001:db8:ffff:1::1', recipient: 'x@remote.test' }, decision: 'allowed', reason: 'trusted' },
  { name: 'just outside the trusted network', req: { clientIp: '11.0.0.1', recipient: 'x@remote.test' }, decision: 'denied', reason: 'no_grant', code: 550 },

  // Grants.
  { name: 'IPv4 grant', req: { clientIp: '202.99.11.120', recipient: 'x@remote.test' }, decision: 'allowed', reason: 'grant' },
  { name: 'IPv4-mapped IPv6 peer matches the IPv4 grant', req: { clientIp: '::ffff:202.99.11.120', recipient: 'x@remote.test' }, decision: 'allowed', reason: 'grant' },
  { name: 'IPv4-mapped, uppercase hex form', req: { clientIp: '::FFFF:CA63:0B78', recipient: 'x@remote.test' }, decision: 'allowed', reason: 'grant' },
  { name: 'neighbour of a granted IPv4 address', req: { clientIp: '202.99.11.121', recipient: 'x@remote.test' }, decision: 'denied', reason: 'no_grant', code: 550, text: /^5\.7\.1 <x@remote\.test>: Relay access denied$/ },
  { name: 'expired grant still stored', req: { clientIp: '198.51.100.7', recipient: 'x@remote.test' }, decision: 'denied', reason: 'no_grant', code: 550 },
  { name: 'grant expiring exactly now', req: { clientIp: '198.51.100.8', recipient: 'x@remote.test' }, decision: 'denied', reason: 'no_grant', code: 550 },
  { name: 'IPv6 /64 grant, another address in the /64', req: { clientIp: '2001:db8:1:2:dead:beef:0:1', recipient: 'x@remote.test' }, decision: 'allowed', reason: 'grant' },
  { name: 'IPv6 /64 grant, non-canonical spelling', req: { clientIp: '2001:0DB8:0001:0002:0000:0000:0000:0009', recipient: 'x@remote.test' }, decision: 'allowed', reason: 'grant' },
  { name: 'IPv6 just outside the /64', req: { clientIp: '2001:db8:1:3::1', recipient: 'x@remote.test' }, decision: 'denied', reason: 'no_grant', code: 550 },
  { name: 'IPv6 single-address grant', req: { clientIp: '2001:db8:9::5', recipient: 'x@remote.test' }, decision: 'allowed', reason: 'grant' },
  { name: 'IPv6 neighbour of a single-address grant', req: { clientIp: '2001:db8:9::6', recipient: 'x@remote.test' }, decision: 'denied', reason: 'no_grant', code: 550 },
  { name: 'IPv4 grant does not cover IPv6 with the same bits', req: { clientIp: '::ca63:b78', recipient: 'x@remote.test' }, decision: 'denied', reason: 'no_grant', code: 550 },
  { name: 'stranger', req: { clientIp: '203.0.113.9', recipient: 'x@remote.test' }, decision: 'denied', reason: 'no_grant', code: 550 },
  { name: 'loopback is not trusted unless configured', req: { clientIp: '127.0.0.1', recipient: 'x@remote.test' }, decision: 'denied', reason: 'no_grant', code: 550 },
  { name: 'garbage peer address never relays', req: { clientIp: 'not-an-ip', recipient: 'x@remote.test' }, decision: 'denied', reason: 'no_grant', code: 550 },
  { name: 'zone id is not an address', req: { clientIp: 'fe80::1%eth0', recipient: 'x@remote.test' }, decision: 'denied', reason: 'no_grant', code: 550 },
  { name: 'recipient with control characters is not echoed raw', req: { clientIp: '203.0.113.9', recipient: 'x<y>@remote.test' }, decision: 'denied', reason: 'no_grant', code: 550, text: /^5\.7\.1 <xy@remote\.test>: Relay access denied$/ },

  // SMTP AUTH (the server sets authUser only when enabled and over TLS).
  { name: 'authenticated session relays', req: { clientIp: '203.0.113.9', recipient: 'x@remote.test', authUser: 'ideal' }, decision: 'allowed', reason: 'auth' },
];

void describe('RelayPolicy.decide', () => {
  for (const c of cases) {
    void it(c.name, async () => {
      const d = await policy().decide(c.req);
      assert.equal(d.decision, c.decision);
      assert.equal(d.reason, c.reason);
      assert.equal(d.code, c.code);
      if (c.text) assert.match(d.message ?? '', c.text);
      if (d.decision === 'allowed' && d.reason !== 'local') assert.ok(d.authorization);
    });
  }

  void it('names the grant in the authorization', () => {
    const d = policy().decide({ clientIp: '202.99.11.120', recipient: 'x@remote.test' }) as RelayDecision;
    assert.equal(d.authorization, 'pop-before-smtp grant v4-202.99.11.120');
    const v6 = policy().decide({ clientIp: '2001:db8:1:2::77', recipient: 'x@remote.test' }) as RelayDecision;
    assert.equal(v6.authorization, 'pop-before-smtp grant v6-20010db8000100020000000000000000-64');
  });

  void it('answers synchronously when no live lookup is needed', () => {
    const d = policy().decide({ clientIp: '202.99.11.120', recipient: 'x@remote.test' });
    assert.ok(!(d instanceof Promise));
  });

  void it('checks expiry itself even when the cache returns an expired grant', () => {
    const stale = new StaleGrantLookup([{ address: '198.51.100.7', expiresAtMs: NOW - 1000 }]);
    const d = policy({ lookup: stale }).decide({ clientIp: '198.51.100.7', recipient: 'x@remote.test' }) as RelayDecision;
    assert.equal(stale.lookups, 1);
    assert.equal(d.decision, 'denied');
  });

  void it('tempfails relaying while the cache is not synced, but still accepts local mail', () => {
    const unsynced = new ListGrantLookup([{ address: '202.99.11.120', expiresAtMs: LATER }]);
    unsynced.synced = false;
    const p = policy({ lookup: unsynced });
    const d = p.decide({ clientIp: '202.99.11.120', recipient: 'x@remote.test' }) as RelayDecision;
    assert.deepEqual([d.decision, d.reason, d.code], ['tempfail', 'unsynced', 451]);
    assert.match(d.message ?? '', /^4\.7\.1 <x@remote\.test>: /);
    const local = p.decide({ clientIp: '202.99.11.120', recipient: 'bob@example.org' }) as RelayDecision;
    assert.equal(local.decision, 'allowed');
    const trusted = p.decide({ clientIp: '10.0.0.1', recipient: 'x@remote.test' }) as RelayDecision;
    assert.equal(trusted.decision, 'allowed');
  });
});

void describe('RelayPolicy with a live lookup', () => {
  const fresh: GrantMatch = { name: 'v4-203.0.113.50', address: '203.0.113.50', user: 'new', expiresAtMs: LATER };
  const stub = (result: LiveLookupResult, match?: GrantMatch): LiveLookup & { calls: number } => {
    const s = {
      calls: 0,
      lookup() {
        s.calls++;
        return Promise.resolve(match ? { result, match } : { result });
      },
    };
    return s;
  };
  const table: { name: string; live: LiveLookup; decision: RelayDecision['decision']; reason: RelayDecision['reason']; code?: number }[] = [
    { name: 'found', live: stub('found', fresh), decision: 'allowed', reason: 'live_lookup' },
    { name: 'found but expired', live: stub('found', { ...fresh, expiresAtMs: NOW - 1 }), decision: 'denied', reason: 'no_grant', code: 550 },
    { name: 'not found', live: stub('not_found'), decision: 'denied', reason: 'no_grant', code: 550 },
    { name: 'negatively cached', live: stub('cached_negative'), decision: 'denied', reason: 'no_grant', code: 550 },
    { name: 'rate limited', live: stub('rate_limited'), decision: 'denied', reason: 'no_grant', code: 550 },
    { name: 'API unreachable', live: stub('error'), decision: 'tempfail', reason: 'unsynced', code: 451 },
    { name: 'lookup throws', live: { lookup: () => Promise.reject(new Error('boom')) }, decision: 'tempfail', reason: 'unsynced', code: 451 },
  ];
  for (const c of table) {
    void it(c.name, async () => {
      const d = await policy({ live: c.live }).decide({ clientIp: '203.0.113.50', recipient: 'x@remote.test' });
      assert.deepEqual([d.decision, d.reason, d.code], [c.decision, c.reason, c.code]);
    });
  }

  void it('is not consulted on a cache hit, for trusted networks or local recipients', async () => {
    const live = stub('not_found');
    const p = policy({ live });
    await p.decide({ clientIp: '202.99.11.120', recipient: 'x@remote.test' });
    await p.decide({ clientIp: '10.0.0.1', recipient: 'x@remote.test' });
    await p.decide({ clientIp: '203.0.113.9', recipient: 'bob@example.org' });
    assert.equal(live.calls, 0);
  });
});

void describe('LiveGrantLookup', () => {
  const match: GrantMatch = { name: 'v4-203.0.113.50', address: '203.0.113.50', user: 'u', expiresAtMs: LATER };

  void it('remembers misses per address for the TTL, then asks again', async () => {
    let fetches = 0;
    const live = new LiveGrantLookup({ fetch: () => (fetches++, Promise.resolve(undefined)), tryAcquire: () => true, cacheTtlMs: 5000, foundTtlMs: 1000 });
    assert.equal((await live.lookup('203.0.113.1', NOW)).result, 'not_found');
    assert.equal((await live.lookup('203.0.113.1', NOW + 4999)).result, 'cached_negative');
    assert.equal((await live.lookup('203.0.113.2', NOW + 1)).result, 'not_found');
    assert.equal(fetches, 2);
    assert.equal((await live.lookup('203.0.113.1', NOW + 5000)).result, 'not_found');
    assert.equal(fetches, 3);
  });

  void it('remembers a find only for foundTtlMs, so a revocation is seen after it and not after the miss TTL', async () => {
    let grant: GrantMatch | undefined = match;
    let fetches = 0;
    const live = new LiveGrantLookup({ fetch: () => (fetches++, Promise.resolve(grant)), tryAcquire: () => true, cacheTtlMs: 5000, foundTtlMs: 1000 });
    assert.equal((await live.lookup('203.0.113.50', NOW)).result, 'found');
    grant = undefined; // revoked
    assert.equal((await live.lookup('203.0.113.50', NOW + 999)).result, 'found', 'within foundTtlMs: remembered');
    assert.equal(fetches, 1);
    assert.equal((await live.lookup('203.0.113.50', NOW + 1000)).result, 'not_found', 'asked again once foundTtlMs ran out');
    assert.equal(fetches, 2);
  });

  void it('refuses to look up once the global rate limit is spent', async () => {
    let tokens = 2;
    let fetches = 0;
    const live = new LiveGrantLookup({
      fetch: () => (fetches++, Promise.resolve(undefined)),
      tryAcquire: () => tokens-- > 0,
      cacheTtlMs: 5000,
      foundTtlMs: 1000,
    });
    const results = [];
    for (let i = 0; i < 5; i++) results.push((await live.lookup(`203.0.113.${i}`, NOW)).result);
    assert.deepEqual(results, ['not_found', 'not_found', 'rate_limited', 'rate_limited', 'rate_limited']);
    assert.equal(fetches, 2);
  });

  void it('shares one GET between concurrent lookups of the same address', async () => {
    let fetches = 0;
    let release!: (m: GrantMatch) => void;
    const live = new LiveGrantLookup({
      fetch: () => {
        fetches++;
        return new Promise<GrantMatch>((r) => (release = r));
      },
      tryAcquire: () => true,
      cacheTtlMs: 5000,
      foundTtlMs: 1000,
    });
    const a = live.lookup('203.0.113.50', NOW);
    const b = live.lookup('203.0.113.50', NOW);
    release(match);
    assert.deepEqual(await a, { result: 'found', match });
    assert.deepEqual(await b, { result: 'found', match });
    assert.equal(fetches, 1);
  });

  void it('reports errors and does not remember them', async () => {
    let fail = true;
    const live = new LiveGrantLookup({
      fetch: () => (fail ? Promise.reject(new Error('ECONNREFUSED')) : Promise.resolve(match)),
      tryAcquire: () => true,
      cacheTtlMs: 5000,
      foundTtlMs: 1000,
    });
    assert.equal((await live.lookup('203.0.113.50', NOW)).result, 'error');
    fail = false;
    assert.equal((await live.lookup('203.0.113.50', NOW)).result, 'found');
  });

  void it('keeps at most maxEntries addresses', async () => {
    let fetches = 0;
    const live = new LiveGrantLookup({ fetch: () => (fetches++, Promise.resolve(undefined)), tryAcquire: () => true, cacheTtlMs: 60_000, foundTtlMs: 1000, maxEntries: 3 });
    for (const ip of ['192.0.2.1', '192.0.2.2', '192.0.2.3', '192.0.2.4']) await live.lookup(ip, NOW);
    assert.equal(fetches, 4);
    assert.equal((await live.lookup('192.0.2.4', NOW)).result, 'cached_negative');
    assert.equal((await live.lookup('192.0.2.1', NOW)).result, 'not_found');
    assert.equal(fetches, 5);
  });
});

void describe('smtp.liveLookup.positiveCacheTtl', () => {
  const parse = (liveLookup: Record<string, unknown>) => parseSmtpConfig(new ConfigReader({ outbox: '/tmp/outbox', liveLookup }, 'smtp'));

  void it('defaults to 1 s, apart from the miss TTL', () => {
    const c = parse({});
    assert.equal(c.liveLookup.positiveCacheTtlMs, 1000);
    assert.equal(c.liveLookup.cacheTtlMs, 5000);
  });

  void it('refuses more than the 2 s revocation bound, naming the key', () => {
    assert.throws(
      () => parse({ positiveCacheTtl: '5s' }),
      (err: unknown) => err instanceof ConfigError && err.key === 'smtp.liveLookup.positiveCacheTtl' && /at most 2000 ms/.test(err.message),
    );
  });
});
