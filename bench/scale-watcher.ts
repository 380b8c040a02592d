// One watching replica for `npm run bench -- scale` (a child process of bench/scale.ts): a watch of
// the grants of one namespace from "now" (no initial list: with 16 of them and a million grants the
// lists would be the whole benchmark), parsed by the same KubeClient.watch as every GrantCache.
// Per ADDED/MODIFIED event it records the propagation (receipt minus the writer's renewed-at
// annotation, as kubedrac_grant_propagation_seconds does); per DELETED event, the receipt time of
// the grant's name. The parent asks over IPC: `{ op: 'take' }` -> the latencies since the last take.
// argv: kubeconfig namespace
import { grantsPath } from '../src/grants/paths.ts';
import { ANNOTATION_RENEWED_AT, type RelayGrant } from '../src/grants/types.ts';
import { KubeClient, type WatchEvent } from '../src/kube/client.ts';

const [kubeconfig, namespace] = process.argv.slice(2) as [string, string];
const client = KubeClient.fromPath(kubeconfig);
let latencies: number[] = [];
let deletedAt: Record<string, number> = {};
let resourceVersion: string | undefined;
let opened = false;

process.on('message', (msg: { op: string }) => {
  if (msg.op === 'take') {
    process.send?.({ op: 'taken', latencies, deletedAt });
    latencies = [];
    deletedAt = {};
  } else if (msg.op === 'exit') {
    client.close();
    process.exit(0);
  }
});

function onEvent(event: WatchEvent<RelayGrant>): void {
  const now = Date.now();
  const obj = event.object;
  if (event.type === 'ADDED' || event.type === 'MODIFIED') {
    const renewedAt = Date.parse(obj.metadata.annotations?.[ANNOTATION_RENEWED_AT] ?? '');
    if (!Number.isNaN(renewedAt)) latencies.push(now - renewedAt);
  } else if (event.type === 'DELETED') {
    deletedAt[obj.metadata.name] = now;
  } else if (event.type === 'ERROR') {
    throw new Error(`watch error: ${JSON.stringify(obj)}`);
  }
  if (obj.metadata?.resourceVersion) resourceVersion = obj.metadata.resourceVersion;
}

// The newest resourceVersion, from a one-item list (cheap whatever the number of grants).
const head = await client.request<{ metadata: { resourceVersion: string } }>('GET', grantsPath(namespace), { query: { limit: 1 } });
resourceVersion = head.metadata.resourceVersion;
for (;;) {
  await client.watch<RelayGrant>(grantsPath(namespace), { resourceVersion, allowWatchBookmarks: true, timeoutSeconds: 600 }, onEvent, {
    idleTimeoutMs: 630_000,
    onOpen: () => {
      if (!opened) process.send?.({ op: 'watching' });
      opened = true;
    },
  });
}
