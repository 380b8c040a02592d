// A real Debian Postfix on a loopback port, with its own config_directory and queue_directory
// under a temporary folder (`postfix -c DIR start`): the smarthost of the relay tests and the peer
// of the benchmark. Postfix's master needs root to start (it drops to `postfix` for its daemons);
// this instance touches nothing of the system's /etc/postfix and /var/spool/postfix.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export interface PostfixOptions {
  /** Domains delivered into `maildir` (virtual(8), one shared Maildir). */
  domains: string[];
  /** Extra main.cf lines (e.g. the benchmark's relay restrictions). */
  mainCf?: string[];
  /** Extra files to write into the config directory before start (e.g. a hash map source). */
  files?: Record<string, string>;
  /** Run postmap on these files (relative to the config directory). */
  postmap?: string[];
  /**
   * Run every postfix command through this prefix and in a network namespace of its own
   * (e.g. `ip netns exec NAME`), listening on `address` there.
   */
  prefix?: string[];
  /** The address smtpd listens on (127.0.0.1 unless given). */
  address?: string;
}

export interface PostfixInstance {
  port: number;
  dir: string;
  /** Where mail for `domains` lands (its new/). */
  maildir: string;
  start(): void;
  stop(): void;
  /** Messages delivered so far (text). */
  delivered(): string[];
  /** Wait until at least `n` messages were delivered (bounded), then return them. */
  waitForDelivered(n: number, timeoutMs?: number): Promise<string[]>;
  cleanup(): void;
}

const MASTER_CF = (address: string, port: number) => `
${address}:${port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`;

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

function postfixIds(): { uid: number; gid: number } {
  const uid = Number(execFileSync('id', ['-u', 'postfix']).toString().trim());
  const gid = Number(execFileSync('id', ['-g', 'postfix']).toString().trim());
  return { uid, gid };
}

export async function startPostfix(opts: PostfixOptions): Promise<PostfixInstance> {
  // A namespace of its own has every port free.
  const port = opts.prefix ? 2525 : await freePort();
  const address = opts.address ?? '127.0.0.1';
  const inNetns = (cmd: string, args: string[]): [string, string[]] => {
    const [first, ...rest] = [...(opts.prefix ?? []), cmd, ...args] as [string, ...string[]];
    return [first, rest];
  };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'postfix-'));
  // Postfix's daemons run as `postfix` and must reach their queue under this folder.
  fs.chmodSync(dir, 0o755);
  const conf = path.join(dir, 'etc');
  const queue = path.join(dir, 'queue');
  const data = path.join(dir, 'data');
  const vmail = path.join(dir, 'vmail');
  for (const d of [conf, queue, data, vmail]) fs.mkdirSync(d, { recursive: true, mode: 0o755 });
  const { uid, gid } = postfixIds();
  fs.chownSync(data, uid, gid);
  fs.chownSync(vmail, uid, gid);
  const maildir = path.join(vmail, 'inbox');
  const main = [
    'compatibility_level = 3.6',
    `queue_directory = ${queue}`,
    `data_directory = ${data}`,
    'command_directory = /usr/sbin',
    'daemon_directory = /usr/lib/postfix/sbin',
    'meta_directory = /etc/postfix',
    'shlib_directory = /usr/lib/postfix',
    'mail_owner = postfix',
    'setgid_group = postdrop',
    'myhostname = smarthost.test',
    'mydomain = smarthost.test',
    'myorigin = smarthost.test',
    'mydestination =',
    `inet_interfaces = ${address}`,
    'inet_protocols = ipv4',
    'mynetworks = 127.0.0.0/8',
    `virtual_mailbox_domains = ${opts.domains.join(' ')}`,
    `virtual_mailbox_base = ${vmail}`,
    'virtual_mailbox_maps = static:inbox/',
    `virtual_uid_maps = static:${uid}`,
    `virtual_gid_maps = static:${gid}`,
    'virtual_minimum_uid = 1',
    'alias_maps =',
    'alias_database =',
    'smtputf8_enable = no',
    'biff = no',
    'smtpd_peername_lookup = no',
    'disable_dns_lookups = yes',
    'smtp_dns_support_level = disabled',
    `maillog_file_prefixes = ${dir}`,
    `maillog_file = ${path.join(dir, 'maillog')}`,
    'smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination',
    ...(opts.mainCf ?? []),
  ];
  // A later setting of the same parameter replaces the earlier one (Postfix would warn about both).
  const settings = new Map<string, string>();
  for (const line of main) settings.set(line.split('=')[0]?.trim() as string, line);
  fs.writeFileSync(path.join(conf, 'main.cf'), `${[...settings.values()].join('\n')}\n`);
  fs.writeFileSync(path.join(conf, 'master.cf'), MASTER_CF(address, port));
  for (const [name, text] of Object.entries(opts.files ?? {})) fs.writeFileSync(path.join(conf, name), text);
  for (const name of opts.postmap ?? []) execFileSync('postmap', ['-c', conf, path.join(conf, name)]);

  const postfix = (cmd: string) => execFileSync(...inNetns('postfix', ['-c', conf, cmd]), { stdio: 'pipe' });
  const probe = () => execFileSync(...inNetns('bash', ['-c', `exec 3<>/dev/tcp/${address}/${port}`]), { stdio: 'ignore' });
  let running = false;
  const waitListening = () => {
    // master binds the smtpd port itself; poll briefly until it accepts.
    for (let i = 0; i < 100; i++) {
      try {
        probe();
        return;
      } catch {
        execFileSync('sleep', ['0.05']);
      }
    }
    throw new Error(`postfix did not listen on ${port}; log: ${fs.readFileSync(path.join(dir, 'maillog'), 'utf8').slice(-2000)}`);
  };
  const instance: PostfixInstance = {
    port,
    dir,
    maildir,
    start() {
      postfix('start');
      running = true;
      waitListening();
    },
    stop() {
      if (!running) return;
      postfix('stop');
      running = false;
      // master exits asynchronously; wait until the port is closed.
      for (let i = 0; i < 100; i++) {
        try {
          probe();
          execFileSync('sleep', ['0.05']);
        } catch {
          return;
        }
      }
    },
    delivered() {
      const d = path.join(maildir, 'new');
      if (!fs.existsSync(d)) return [];
      return fs.readdirSync(d).sort().map((f) => fs.readFileSync(path.join(d, f), 'utf8'));
    },
    async waitForDelivered(n, timeoutMs = 20_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const got = instance.delivered();
        if (got.length >= n || Date.now() > deadline) return got;
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    cleanup() {
      try {
        instance.stop();
      } catch {
        try {
          postfix('abort');
        } catch {
          // already gone
        }
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  instance.start();
  return instance;
}
