// Metrics of revocation on credential change (counted by the pop3 role, which does it).
import { Counter } from 'prom-client';
import { registry } from '../observability/metrics.ts';

export const grantsRevoked = new Counter({
  name: 'kubedrac_pop3_grants_revoked_total',
  help: 'RelayGrants this replica deleted because their user\'s credential changed in the users file, by reason: password_changed, removed, nologin.',
  labelNames: ['reason'] as const,
  registers: [registry],
});

export const revocationFailures = new Counter({
  name: 'kubedrac_pop3_revocation_failures_total',
  help: 'Revocation passes that failed (the API server refused or could not be reached); each is retried until it succeeds.',
  registers: [registry],
});
