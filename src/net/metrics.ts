// Metrics of the shared network layer; the role label says which server counted it.
import { Counter } from 'prom-client';
import { registry } from '../observability/metrics.ts';
import type { ProxyErrorReason } from './proxy.ts';

export const proxyHeaderErrors = new Counter({
  name: 'kubedrac_proxy_header_errors_total',
  help: 'Connections closed because of a missing, malformed, oversized, untrusted or late PROXY header.',
  labelNames: ['role', 'reason'] as const,
  registers: [registry],
});

export function countProxyHeaderError(role: string, reason: ProxyErrorReason): void {
  proxyHeaderErrors.inc({ role, reason });
}

export const tlsReloads = new Counter({
  name: 'kubedrac_tls_reloads_total',
  help: 'Certificate reloads from the mounted files, by result (a failed reload keeps the previous certificate).',
  labelNames: ['result'] as const,
  registers: [registry],
});
