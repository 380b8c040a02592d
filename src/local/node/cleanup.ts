// Ending a node: one shell script, run by stop() and by the watchdog when the parent dies
// without stopping (SIGKILL, crash). Everything the node started lives under one cgroup, so
// killing that cgroup's processes ends the daemons, the containerd shims and every container;
// the node's mounts, pod namespaces and iptables rules live in namespaces that vanish with them.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';

export interface CleanupTargets {
  /** The cgroup name, created in every hierarchy under /sys/fs/cgroup. */
  cgroup: string;
  netns: string[];
  /** Files and folders outside `dir` the node created (/etc/netns/NAME). */
  extraPaths: string[];
  /** Folders the node may have created, removed only when empty (/etc/netns). */
  emptyDirs: string[];
  /** Kernel settings kubelet may change, with the values to put back: `key=value` lines. */
  sysctlFile: string;
  /** The node's folder, removed when the node created it. */
  removeDir: string;
}

const SCRIPT = `#!/bin/sh
# Ends one kube-drac node; safe to run twice.
cg="$1"; sysctls="$2"; rm_dir="$3"; shift 3
procs() { cat $(find /sys/fs/cgroup/pids/"$cg" -name cgroup.procs 2>/dev/null) 2>/dev/null; }
i=0
while [ -n "$(procs)" ] && [ $i -lt 100 ]; do
  kill -KILL $(procs) 2>/dev/null
  sleep 0.1
  i=$((i + 1))
done
# Killed processes leave their cgroups only once reaped: retry the removal a little.
i=0
while [ $i -lt 50 ]; do
  left=0
  for h in /sys/fs/cgroup/*; do
    [ -d "$h/$cg" ] || continue
    find "$h/$cg" -depth -type d -exec rmdir {} \\; 2>/dev/null
    [ -d "$h/$cg" ] && left=1
  done
  [ $left = 0 ] && break
  sleep 0.1
  i=$((i + 1))
done
if [ -f "$sysctls" ]; then
  while IFS='=' read -r key value; do
    [ -n "$key" ] && echo "$value" > "/proc/sys/$(echo "$key" | tr . /)" 2>/dev/null
  done < "$sysctls"
fi
for target in "$@"; do
  case "$target" in
    netns:*) ip netns delete "\${target#netns:}" 2>/dev/null ;;
    path:*) rm -rf "\${target#path:}" ;;
    emptydir:*) rmdir "\${target#emptydir:}" 2>/dev/null ;;
  esac
done
[ -n "$rm_dir" ] && rm -rf "$rm_dir"
exit 0
`;

function scriptArgs(file: string, t: CleanupTargets): string[] {
  return [file, t.cgroup, t.sysctlFile, t.removeDir, ...t.netns.map((n) => `netns:${n}`), ...t.extraPaths.map((p) => `path:${p}`), ...t.emptyDirs.map((d) => `emptydir:${d}`)];
}

/** Write the script where both stop() and the watchdog find it (outside the node's folder, which it may remove). */
export function writeCleanupScript(file: string): void {
  fs.writeFileSync(file, SCRIPT, { mode: 0o700 });
}

/** Run the cleanup now and wait for it. */
export function runCleanup(file: string, targets: CleanupTargets): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('sh', scriptArgs(file, targets), { stdio: 'ignore' });
    child.on('error', reject);
    child.on('exit', () => resolve());
  });
}

/**
 * A watchdog outside the node's cgroup: when `parentPid` is gone it runs the cleanup. Returns
 * the process, for stop() to end it once it has cleaned up itself.
 */
export function startCleanupWatchdog(file: string, targets: CleanupTargets, parentPid = process.pid): ChildProcess {
  const child = spawn(
    'sh',
    ['-c', 'parent="$1"; shift; while kill -0 "$parent" 2>/dev/null; do sleep 1; done; exec sh "$@"', 'watchdog', String(parentPid), ...scriptArgs(file, targets)],
    { detached: true, stdio: 'ignore' },
  );
  child.unref();
  return child;
}

/**
 * End the watchdog and wait until it is reaped: a killed child stays in /proc as a zombie until
 * Node collects its exit status, and "nothing left behind" means nothing in /proc either.
 */
export async function stopCleanupWatchdog(watchdog: ChildProcess): Promise<void> {
  if (watchdog.pid === undefined || watchdog.exitCode !== null || watchdog.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => watchdog.once('exit', () => resolve()));
  try {
    process.kill(-watchdog.pid, 'SIGKILL');
  } catch {
    return; // already gone
  }
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([exited, new Promise<void>((resolve) => (timer = setTimeout(resolve, 5000)))]);
  clearTimeout(timer);
}
