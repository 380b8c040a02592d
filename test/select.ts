// Which test files need the control plane: those whose relative imports, followed file by file,
// reach the test API server's support code (or read its environment directly). Derived from the
// code instead of a list, so a new test lands on the right side by what it imports.
import fs from 'node:fs';
import path from 'node:path';

/** Files that mean "this test talks to Kubernetes". */
const CONTROL_PLANE_MODULES = ['test/support/kube.ts', 'test/support/local.ts', 'src/local/control-plane.ts'];
const CONTROL_PLANE_ENV = /KUBE_DRAC_TEST_(KUBECONFIG|BINARIES)/;
const RELATIVE_IMPORT = /(?:from\s+|import\s*\(\s*)['"](\.{1,2}\/[^'"]+)['"]/g;

export function controlPlaneTests(repo: string, files: string[]): Set<string> {
  const markers = new Set(CONTROL_PLANE_MODULES.map((f) => path.resolve(repo, f)));
  // Only "yes" is remembered across files: a "no" reached through an import cycle may be partial.
  const reachesControlPlane = new Set<string>();
  const needs = (file: string, visiting: Set<string>): boolean => {
    if (reachesControlPlane.has(file)) return true;
    if (visiting.has(file)) return false;
    visiting.add(file);
    let verdict = markers.has(file);
    if (!verdict) {
      let source = '';
      try {
        source = fs.readFileSync(file, 'utf8');
      } catch {
        // a package or a generated file: not ours to follow
      }
      verdict = CONTROL_PLANE_ENV.test(source);
      for (const m of source.matchAll(RELATIVE_IMPORT)) {
        if (verdict) break;
        verdict = needs(path.resolve(path.dirname(file), m[1] as string), visiting);
      }
    }
    if (verdict) reachesControlPlane.add(file);
    return verdict;
  };
  return new Set(files.filter((f) => needs(path.resolve(repo, f), new Set())));
}
