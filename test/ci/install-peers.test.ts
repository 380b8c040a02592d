// .ci/install-peers, which `npm test` runs first: with a peer missing and no way to install it,
// it stops at once with one line that names the package and the command that installs it.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';

const SCRIPT = new URL('../../.ci/install-peers', import.meta.url).pathname;

/** A copy of the script in a tree of its own, with a package list we choose. */
function treeWith(packages: string): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'kd-peers-'));
  fs.mkdirSync(path.join(root, '.ci', 'packages'), { recursive: true });
  fs.copyFileSync(SCRIPT, path.join(root, '.ci', 'install-peers'));
  fs.writeFileSync(path.join(root, '.ci', 'packages', 'x.txt'), packages);
  fs.chmodSync(root, 0o755);
  fs.chmodSync(path.join(root, '.ci'), 0o755);
  fs.chmodSync(path.join(root, '.ci', 'packages'), 0o755);
  return root;
}

/** Run it as a user who cannot install (nobody, when we are root). */
function runUnprivileged(root: string) {
  const script = path.join(root, '.ci', 'install-peers');
  const asRoot = process.getuid?.() === 0;
  const [cmd, args] = asRoot ? ['setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'bash', script]] : ['bash', [script]];
  return spawnSync(cmd, args, { encoding: 'utf8', timeout: 30_000 });
}

describe('.ci/install-peers', { skip: !fs.existsSync('/usr/bin/dpkg-query') && 'not a Debian machine' }, () => {
  it('names a missing package and the command to install it, in one line, and fails', () => {
    const root = treeWith('# a comment\ncoreutils kube-drac-no-such-package\n');
    const res = runUnprivileged(root);
    fs.rmSync(root, { recursive: true, force: true });
    assert.equal(res.status, 1, res.stderr);
    const lines = res.stderr.trim().split('\n');
    assert.equal(lines.length, 1, res.stderr);
    assert.match(lines[0] as string, /missing the Debian packages .*: kube-drac-no-such-package; install them with: .*apt-get install -y --no-install-recommends kube-drac-no-such-package/);
    assert.doesNotMatch(lines[0] as string, /coreutils/, 'an installed package is not named');
  });

  it('is silent and succeeds when everything is installed', () => {
    const root = treeWith('coreutils bash\n');
    const res = runUnprivileged(root);
    fs.rmSync(root, { recursive: true, force: true });
    assert.equal(res.status, 0, res.stderr);
    assert.equal(res.stdout + res.stderr, '');
  });
});
