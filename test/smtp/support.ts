// Test helpers for the SMTP role: a GrantLookup over a plain list (until a test needs the real
// GrantCache on the real API server), and an address set from CIDRs.
import { canonicalIp, covers, grantNameOf, parseGrantAddress, parseIp } from '../../src/grants/address.ts';
import type { GrantLookup, GrantMatch } from '../../src/grants/types.ts';

export interface TestGrant {
  address: string;
  user?: string;
  expiresAtMs: number;
}

export function grantName(address: string): string {
  return grantNameOf(parseGrantAddress(address));
}

/** Grants as the cache would hold them; `lookup` honours expiry like the real cache. */
export class ListGrantLookup implements GrantLookup {
  synced = true;
  readonly grants: TestGrant[] = [];
  lookups = 0;

  constructor(grants: TestGrant[] = []) {
    this.grants.push(...grants);
  }

  lookup(ip: string, nowMs = Date.now()): GrantMatch | undefined {
    this.lookups++;
    const target = parseIp(ip);
    if (!target) return undefined;
    for (const g of this.grants) {
      if (g.expiresAtMs <= nowMs) continue;
      if (covers(parseGrantAddress(g.address), target)) {
        return { name: grantName(g.address), address: g.address, user: g.user ?? 'someone', expiresAtMs: g.expiresAtMs };
      }
    }
    return undefined;
  }
}

/** A GrantLookup that (wrongly) returns expired grants, to prove the gate checks expiry itself. */
export class StaleGrantLookup extends ListGrantLookup {
  override lookup(ip: string): GrantMatch | undefined {
    return super.lookup(ip, 0);
  }
}

export function cidrSet(cidrs: string[]): { contains(ip: string): boolean } {
  const nets = cidrs.map((c) => {
    const [ip, len] = c.split('/') as [string, string | undefined];
    const p = parseIp(canonicalIp(ip));
    if (!p) throw new Error(`bad cidr ${c}`);
    return { ...p, prefixLength: len === undefined ? p.prefixLength : Number(len) };
  });
  return {
    contains(ip: string): boolean {
      const p = parseIp(ip);
      return p !== undefined && nets.some((n) => covers(n, p));
    },
  };
}
