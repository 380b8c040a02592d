// The pure rules of Lease leader election: who may take a lease, and what is written.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { acquiredSpec, checkLeaderElectionSettings, leaseIsFree, microTime, releasedSpec } from '../../src/kube/leader.ts';

describe('lease records', () => {
  it('a lease is free when unheld, ours, or unchanged for its duration as observed locally', () => {
    const held = { holderIdentity: 'other', leaseDurationSeconds: 15, renewTime: '2001-07-09T10:41:55.000000Z' };
    assert.equal(leaseIsFree(undefined, 'me', 0, 0), true);
    assert.equal(leaseIsFree({ holderIdentity: '' }, 'me', 1000, 1000), true);
    assert.equal(leaseIsFree({ ...held, holderIdentity: 'me' }, 'me', 1000, 1000), true);
    // The renewTime is 25 years old, but we only just saw it: still held.
    assert.equal(leaseIsFree(held, 'me', 1000, 1000), false);
    assert.equal(leaseIsFree(held, 'me', 1000, 15_999), false);
    assert.equal(leaseIsFree(held, 'me', 1000, 16_000), true);
  });

  it('taking a lease counts a transition and sets acquireTime; renewing keeps both', () => {
    const t = Date.parse('2026-01-01T00:00:00Z');
    const taken = acquiredSpec({ holderIdentity: 'other', leaseTransitions: 4, acquireTime: 'x' }, 'me', 15_000, t);
    assert.deepEqual(taken, {
      holderIdentity: 'me',
      leaseDurationSeconds: 15,
      acquireTime: '2026-01-01T00:00:00.000000Z',
      renewTime: '2026-01-01T00:00:00.000000Z',
      leaseTransitions: 5,
    });
    const renewed = acquiredSpec(taken, 'me', 15_000, t + 2000);
    assert.equal(renewed.acquireTime, taken.acquireTime);
    assert.equal(renewed.renewTime, '2026-01-01T00:00:02.000000Z');
    assert.equal(renewed.leaseTransitions, 5);
    assert.equal(acquiredSpec(undefined, 'me', 15_000, t).leaseTransitions, 0);
    assert.equal(acquiredSpec({ holderIdentity: '', leaseTransitions: 5 }, 'me', 15_000, t).leaseTransitions, 6);
  });

  it('releasing empties the holder and keeps the transition count', () => {
    const released = releasedSpec({ holderIdentity: 'me', leaseTransitions: 5 }, Date.parse('2026-01-01T00:00:00.123Z'));
    assert.deepEqual(released, { holderIdentity: '', leaseDurationSeconds: 1, acquireTime: '2026-01-01T00:00:00.123000Z', renewTime: '2026-01-01T00:00:00.123000Z', leaseTransitions: 5 });
    assert.equal(microTime(0), '1970-01-01T00:00:00.000000Z');
  });

  it('checks settings as client-go does', () => {
    assert.equal(checkLeaderElectionSettings({ leaseDurationMs: 15_000, renewDeadlineMs: 10_000, retryPeriodMs: 2000 }), undefined);
    assert.match(checkLeaderElectionSettings({ leaseDurationMs: 1500, renewDeadlineMs: 1000, retryPeriodMs: 200 }) ?? '', /whole number of seconds/);
    assert.match(checkLeaderElectionSettings({ leaseDurationMs: 10_000, renewDeadlineMs: 10_000, retryPeriodMs: 2000 }) ?? '', /shorter than leaseDuration/);
    assert.match(checkLeaderElectionSettings({ leaseDurationMs: 15_000, renewDeadlineMs: 2400, retryPeriodMs: 2000 }) ?? '', /1.2 x retryPeriod/);
  });
});
