// One full list of the RelayGrants of a namespace (optionally by label selector), page by page,
// for those that read once rather than watch: revocation and `kubectl drac`.
import { grantsPath } from './paths.ts';
import type { RelayGrant } from './types.ts';
import type { KubeClient } from '../kube/client.ts';

interface GrantList {
  metadata: { continue?: string };
  items: RelayGrant[];
}

export async function listGrants(client: KubeClient, namespace: string, labelSelector?: string, pageSize = 500): Promise<RelayGrant[]> {
  const items: RelayGrant[] = [];
  let cont: string | undefined;
  do {
    const page = await client.request<GrantList>('GET', grantsPath(namespace), { query: { labelSelector, limit: pageSize, continue: cont } });
    items.push(...page.items);
    cont = page.metadata.continue || undefined;
  } while (cont !== undefined);
  return items;
}
