// Whom a relayed recipient counts against, as the SMTP server asks at RCPT.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigReader } from '../../src/config/reader.ts';
import { parseLimitsConfig } from '../../src/limits/config.ts';
import { RelayLimitGate } from '../../src/limits/gate.ts';
import { UsageLedger } from '../../src/limits/ledger.ts';
import { memoryLogger } from '../smtp/support.ts';

const config = parseLimitsConfig(new ConfigReader({ enabled: true, perUser: { messagesPerHour: 1 } }, 'smtp.limits'));
const gate = () => new RelayLimitGate({ config, ledger: new UsageLedger({ replica: 'a' }), log: memoryLogger() });

describe('RelayLimitGate', () => {
  it("counts a grant's relay against its user and address, SMTP AUTH against the user, trusted networks not at all", () => {
    const g = gate();
    const grant = { name: 'v4-192.0.2.1', address: '192.0.2.1', user: 'demo', expiresAtMs: Infinity };
    assert.deepEqual(g.subjectOf({ reason: 'grant', grant }, undefined), { user: 'demo', address: '192.0.2.1' });
    assert.deepEqual(g.subjectOf({ reason: 'grant', grant: { ...grant, user: '' } }, undefined), { user: undefined, address: '192.0.2.1' });
    assert.deepEqual(g.subjectOf({ reason: 'auth' }, 'ideal'), { user: 'ideal', address: undefined });
    assert.equal(g.subjectOf({ reason: 'trusted' }, 'ideal'), undefined);
  });

  it('refuses the second message of a user with a limit of one, once the first was counted', () => {
    const lines: string[] = [];
    const g = new RelayLimitGate({ config, ledger: new UsageLedger({ replica: 'a' }), log: memoryLogger(lines) });
    const subject = { user: 'demo', address: '192.0.2.1' };
    assert.equal(g.refusal(subject, 0, { session: 's1', client: '192.0.2.1' }), undefined);
    g.count(subject, 1);
    assert.equal(g.refusal(subject, 0, { session: 's2', client: '192.0.2.1' })?.code, 450);
    assert.match(lines.at(-1) ?? '', /"event":"relay_limited".*"user":"demo".*"kind":"user_messages"/);
  });
});
