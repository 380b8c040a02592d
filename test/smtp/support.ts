// Test helpers for the SMTP role: a GrantLookup over a plain list (until a test needs the real
// GrantCache on the real API server), and an address set from CIDRs.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ConfigReader } from '../../src/config/reader.ts';
import type { Logger } from '../../src/observability/log.ts';
import { parseSmtpConfig } from '../../src/smtp/config.ts';
import { startSmtpServer, type RunningSmtpServer, type SmtpDeps } from '../../src/smtp/server.ts';
import { grantNameOf, parseGrantAddress } from '../../src/grants/address.ts';
import { canonicalIp, covers, parseIp } from '../../src/net/ip.ts';
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

/** A logger that keeps lines in memory (tests read them when something fails). */
export function memoryLogger(lines: string[] = []): Logger {
  const make = (base: Record<string, unknown>): Logger => {
    const put = (level: string) => (event: string, fields?: Record<string, unknown>) => {
      lines.push(JSON.stringify({ level, event, ...base, ...fields }));
    };
    return { debug: put('debug'), info: put('info'), warn: put('warn'), error: put('error'), child: (f) => make({ ...base, ...f }) };
  };
  return make({});
}

export interface TestSmtp {
  server: RunningSmtpServer;
  port: number;
  dir: string;
  mailRoot: string;
  outbox: string;
  grants: ListGrantLookup;
  log: string[];
  /** Messages in a Maildir's new/, read as text. */
  messages(maildir: string): string[];
  close(): Promise<void>;
}

/**
 * An SMTP server on 127.0.0.1 port 0 with Maildirs for `ideal` and `bob`, relaying into an outbox;
 * `login` is the config file's login section (SMTP AUTH's guards).
 */
export async function startTestSmtp(
  section: Record<string, unknown> = {},
  deps: Partial<SmtpDeps> = {},
  login: Record<string, unknown> = {},
): Promise<TestSmtp> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'smtp-test-'));
  const mailRoot = path.join(dir, 'mail');
  for (const u of ['ideal', 'bob']) for (const sub of ['new', 'cur', 'tmp']) fs.mkdirSync(path.join(mailRoot, u, sub), { recursive: true });
  const outbox = path.join(dir, 'outbox');
  const config = parseSmtpConfig(
    new ConfigReader(
      {
        hostname: 'mx.example.org',
        listen: { host: '127.0.0.1', port: 0 },
        localDomains: ['example.org'],
        mailRoot,
        ...(section.smarthost ? {} : { outbox }),
        ...section,
      },
      'smtp',
    ),
    new ConfigReader(login, 'login'),
  );
  const grants = deps.grants instanceof ListGrantLookup ? deps.grants : new ListGrantLookup();
  const log: string[] = [];
  const server = await startSmtpServer(config, { grants, log: memoryLogger(log), ...deps });
  const messages = (maildir: string) => {
    const d = path.join(maildir, 'new');
    if (!fs.existsSync(d)) return [];
    return fs.readdirSync(d).sort().map((f) => fs.readFileSync(path.join(d, f), 'utf8'));
  };
  return {
    server,
    port: server.port,
    dir,
    mailRoot,
    outbox,
    grants,
    log,
    messages,
    async close() {
      await server.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run a real client program to completion (bounded by a timeout), collecting its output. */
export function run(cmd: string, args: string[], input?: string, timeoutMs = 20_000): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.end(input ?? '');
  });
}
