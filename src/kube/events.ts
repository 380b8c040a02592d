// Posting core/v1 Events about our own objects (e.g. a Lease changing hands). Best effort: an
// Event that cannot be written is logged by the caller, it never stops the work it describes.
import crypto from 'node:crypto';
import type { KubeClient } from './client.ts';

export interface InvolvedObject {
  apiVersion: string;
  kind: string;
  namespace: string;
  name: string;
  uid?: string;
}

export interface EventSpec {
  involvedObject: InvolvedObject;
  type: 'Normal' | 'Warning';
  /** UpperCamelCase, machine-readable: `LeaderElection`. */
  reason: string;
  message: string;
  /** Who reports it, e.g. `kube-drac-operator`. */
  component: string;
  /** Which process reports it (the leader identity). */
  instance?: string;
}

/** Event names are `<object>.<unique suffix>`, as client-go's recorder makes them. */
export function eventName(objectName: string, nowMs: number = Date.now()): string {
  return `${objectName}.${nowMs.toString(16)}${crypto.randomBytes(3).toString('hex')}`;
}

export function eventBody(spec: EventSpec, nowMs: number = Date.now()): Record<string, unknown> {
  const now = new Date(nowMs).toISOString();
  return {
    apiVersion: 'v1',
    kind: 'Event',
    metadata: { name: eventName(spec.involvedObject.name, nowMs), namespace: spec.involvedObject.namespace },
    involvedObject: spec.involvedObject,
    type: spec.type,
    reason: spec.reason,
    message: spec.message,
    source: { component: spec.component, ...(spec.instance ? { host: spec.instance } : {}) },
    reportingComponent: spec.component,
    reportingInstance: spec.instance ?? '',
    firstTimestamp: now,
    lastTimestamp: now,
    count: 1,
  };
}

export async function postEvent(client: KubeClient, spec: EventSpec): Promise<void> {
  const ns = encodeURIComponent(spec.involvedObject.namespace);
  await client.create(`/api/v1/namespaces/${ns}/events`, eventBody(spec), { timeoutMs: 5000 });
}
