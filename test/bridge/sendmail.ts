// A private Debian sendmail for the bridge tests. sendmail-bin conflicts with postfix (which the
// other tests need installed), so it is not installed: .ci/sendmail-unpacked unpacks the
// sendmail-bin, sendmail-base and sendmail-cf .debs into ~/.cache/kube-drac/sendmail/root, and
// each test builds its own .cf with m4 from that sendmail-cf and a ruleset, and runs the daemon
// in the foreground (-bD) with -C, its own queue, pid file and port on 127.0.0.1.
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

const REPO = path.resolve(import.meta.dirname, '../..');
export const SENDMAIL_CACHE = process.env.KUBE_DRAC_SENDMAIL_DIR ?? path.join(os.homedir(), '.cache/kube-drac/sendmail');
const ROOT = path.join(SENDMAIL_CACHE, 'root');
const BINARY = path.join(ROOT, 'usr/libexec/sendmail/sendmail');
const CF_DIR = path.join(ROOT, 'usr/share/sendmail/cf');

/** The ruleset shipped in contrib/sendmail (fail closed). */
export const FAIL_CLOSED_HACK = path.join(REPO, 'contrib/sendmail/kube-drac.m4');

/**
 * Classic DRAC's ruleset (its README's sendmail.mc lines) pointed at a socket map with -T<TMPF>:
 * kept here only to show that it fails open.
 */
export const CLASSIC_DRAC_HACK = `divert(-1)
LOCAL_CONFIG
Kdrac socket -T<TMPF> _ARG_
LOCAL_RULESETS
SLocal_check_rcpt
R$*	$: $&{client_addr}
R$+	$: $(drac $1 $: ? $)
R?	$@ ?
R$+	$@ $#OK
`;

/** Unpack sendmail if needed (the same script CI runs); resolves with why it cannot run, or undefined. */
export function sendmailUnavailable(): string | undefined {
  if (!fs.existsSync(BINARY)) {
    try {
      execFileSync(path.join(REPO, '.ci/sendmail-unpacked'), { stdio: 'pipe', timeout: 120_000 });
    } catch (err) {
      return `cannot unpack sendmail into ${SENDMAIL_CACHE}: ${(err as Error).message.split('\n')[0]}`;
    }
  }
  for (const tool of ['m4', 'swaks']) {
    try {
      execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'pipe' });
    } catch {
      return `needs ${tool} (apt-get install ${tool})`;
    }
  }
  return undefined;
}

async function freePort(host = '127.0.0.1'): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, host, r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/**
 * sendmail at start-up sleeps 60 s when the machine's host name has no dot and does not resolve
 * to one (before it reads its .cf, so no option helps). Run it in a UTS namespace of its own
 * with a qualified name instead of touching /etc/hosts. unshare execs: the pid is sendmail's.
 */
function sendmailCommand(args: string[]): [string, string[]] {
  return ['unshare', ['--uts', 'sh', '-c', `hostname ${HOSTNAME} && exec "$0" "$@"`, BINARY, ...args]];
}

const HOSTNAME = 'mx.sendmail.test';

export interface SendmailOptions {
  /** A directory of the test's own (config, queue, logs live under it). */
  dir: string;
  /** The socket map's address, e.g. `inet:9400@127.0.0.1`. */
  map: string;
  /** The hack file's text (m4), installed as hack/kube-drac.m4 of a private cf tree. */
  hack: string;
}

export interface Sendmail {
  port: number;
  cf: string;
  /** Run `sendmail -C cf -bt` with `input` (address test mode); resolves with its output. */
  addressTest(input: string): Promise<string>;
  stop(): Promise<void>;
}

/** Build a .cf from sendmail-cf with `hack` and start the daemon on a free 127.0.0.1 port. */
export async function startSendmail(o: SendmailOptions): Promise<Sendmail> {
  fs.mkdirSync(o.dir, { recursive: true });
  // A private cf tree: Debian's, with our hack file where a site would install it.
  const cfDir = path.join(o.dir, 'cf');
  fs.mkdirSync(path.join(cfDir, 'hack'), { recursive: true });
  for (const sub of ['m4', 'feature', 'mailer', 'ostype', 'domain', 'sh', 'siteconfig']) {
    if (!fs.existsSync(path.join(cfDir, sub))) fs.symlinkSync(path.join(CF_DIR, sub), path.join(cfDir, sub));
  }
  fs.writeFileSync(path.join(cfDir, 'hack/kube-drac.m4'), o.hack);

  const port = await freePort();
  const queue = path.join(o.dir, 'queue');
  fs.mkdirSync(queue, { recursive: true, mode: 0o700 });
  fs.writeFileSync(path.join(o.dir, 'aliases'), 'postmaster: root\n');
  // No DNS: host names come from a hosts file of our own.
  fs.writeFileSync(path.join(o.dir, 'service.switch'), 'hosts files\naliases files\n');
  fs.writeFileSync(path.join(o.dir, 'hosts'), `127.0.0.1 localhost ${HOSTNAME}\n`);
  fs.writeFileSync(path.join(o.dir, 'helpfile'), '');
  const mc = `divert(-1)
include(\`${cfDir}/m4/cf.m4')
divert(0)dnl
OSTYPE(\`linux')dnl
define(\`confDOMAIN_NAME', \`${HOSTNAME}')dnl
define(\`QUEUE_DIR', \`${queue}')dnl
define(\`confPID_FILE', \`${o.dir}/sendmail.pid')dnl
define(\`STATUS_FILE', \`${o.dir}/statistics')dnl
define(\`ALIAS_FILE', \`${o.dir}/aliases')dnl
define(\`HELP_FILE', \`${o.dir}/helpfile')dnl
define(\`confSERVICE_SWITCH_FILE', \`${o.dir}/service.switch')dnl
define(\`confHOSTS_FILE', \`${o.dir}/hosts')dnl
define(\`confDONT_PROBE_INTERFACES', \`True')dnl
define(\`confTO_IDENT', \`0s')dnl
define(\`confDELIVERY_MODE', \`q')dnl
define(\`confLOG_LEVEL', \`14')dnl
FEATURE(\`no_default_msa')dnl
FEATURE(\`nocanonify')dnl
FEATURE(\`accept_unresolvable_domains')dnl
DAEMON_OPTIONS(\`Port=${port}, Addr=127.0.0.1, Name=MTA')dnl
HACK(\`kube-drac', \`${o.map}')dnl
MAILER(\`local')dnl
MAILER(\`smtp')dnl
`;
  const mcPath = path.join(o.dir, 'sendmail.mc');
  fs.writeFileSync(mcPath, mc);
  const { stdout: cfText } = await run('m4', [`-D_CF_DIR_=${cfDir}/`, mcPath], { cwd: o.dir });
  const cf = path.join(o.dir, 'sendmail.cf');
  fs.writeFileSync(cf, cfText);

  const child: ChildProcess = spawn(...sendmailCommand(['-C', cf, '-bD', '-X', path.join(o.dir, 'transcript')]), { stdio: ['ignore', 'pipe', 'pipe'], cwd: o.dir });
  let output = '';
  child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
  };
  for (let i = 0; i < 100; i++) {
    const up = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (up) {
      const addressTest = async (input: string) =>
        new Promise<string>((resolve, reject) => {
          const t = spawn(...sendmailCommand(['-C', cf, '-bt']), { stdio: ['pipe', 'pipe', 'pipe'], cwd: o.dir });
          let text = '';
          t.stdout.on('data', (d: Buffer) => (text += d.toString()));
          t.stderr.on('data', (d: Buffer) => (text += d.toString()));
          t.on('error', reject);
          t.on('close', () => resolve(text));
          t.stdin.end(input);
        });
      return { port, cf, addressTest, stop };
    }
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  await stop();
  throw new Error(`sendmail did not start on port ${port}:\n${output}`);
}

/** The hack file of the fail-closed ruleset as shipped. */
export function shippedHack(): string {
  return fs.readFileSync(FAIL_CLOSED_HACK, 'utf8');
}
