// REST paths of RelayGrants.
import { GROUP, PLURAL, VERSION } from './types.ts';

export function grantsPath(namespace: string, name?: string): string {
  const base = `/apis/${GROUP}/${VERSION}/namespaces/${encodeURIComponent(namespace)}/${PLURAL}`;
  return name === undefined ? base : `${base}/${encodeURIComponent(name)}`;
}
