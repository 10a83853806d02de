import { describe, expect, it } from 'vitest';
import { environmentsToWake, LeaseBook, leaseRole, leaseView, parseLeaseRecord, planLeases, type LeaseEntry, type LeaseHolder, type LeaseRecord, type LeasesObserved } from '../src/pipeline/lease.js';

const NOW = 1_000_000;
const TTL = 30_000;
const me: LeaseHolder = { id: 'aaaa1111', host: 'host-a', user: 'alice', pid: 10 };
const other: LeaseHolder = { id: 'bbbb2222', host: 'host-b', user: 'bob', pid: 20 };
const O1 = '1'.repeat(40);

function record(holder: LeaseHolder, over: Partial<LeaseRecord> = {}): LeaseRecord {
  return { version: 1, environment: 'staging', holder, acquiredAt: 'x', renewedAt: 'x', expiresAt: 'x', ttlMs: TTL, ...over };
}

function observed(over: Partial<LeasesObserved['envs'][number]> = {}, known: LeasesObserved['known'] = {}, extra: Partial<LeasesObserved> = {}): LeasesObserved {
  return {
    remote: { name: 'origin', url: '/r', kind: 'local', timeoutMs: 1000 }, now: NOW, me, ttlMs: TTL, known, releasing: false,
    envs: [{ name: 'staging', oid: null, record: null, hasPolicy: true, ...over }], ...extra,
  };
}

const kinds = (o: LeasesObserved) => planLeases(o).actions.filter((a) => a.type !== 'note').map((a) => `${a.type}${'expected' in a ? ` ${a.expected ?? 'none'}` : ''}`);

describe('planLeases (table)', () => {
  const cases: { name: string; o: LeasesObserved; actions: string[] }[] = [
    { name: 'no lease ref: take it, expecting none', o: observed(), actions: ['take none'] },
    { name: 'another holds it, just seen: follow', o: observed({ oid: O1, record: record(other) }), actions: [] },
    { name: 'another holds it, seen unchanged for less than its term: follow', o: observed({ oid: O1, record: record(other) }, { staging: { oid: O1, record: record(other), seenAt: NOW - TTL + 1 } }), actions: [] },
    { name: 'another holds it, seen unchanged for its whole term: take it over, expecting that lease', o: observed({ oid: O1, record: record(other) }, { staging: { oid: O1, record: record(other), seenAt: NOW - TTL } }), actions: [`take ${O1}`] },
    { name: 'the term is the lease\'s own, not this controller\'s setting', o: observed({ oid: O1, record: record(other, { ttlMs: 2 * TTL }) }, { staging: { oid: O1, record: record(other), seenAt: NOW - TTL } }), actions: [] },
    { name: 'released by its holder: take it at once', o: observed({ oid: O1, record: record(other, { released: true }) }), actions: [`take ${O1}`] },
    { name: 'held here, renewed less than a third ago: nothing', o: observed({ oid: O1, record: record(me) }, { staging: { oid: O1, record: record(me), seenAt: NOW - 1000, renewedAt: NOW - 1000 } }), actions: [] },
    { name: 'held here, a third has passed: renew', o: observed({ oid: O1, record: record(me) }, { staging: { oid: O1, record: record(me), seenAt: NOW - TTL / 3, renewedAt: NOW - TTL / 3 } }), actions: [`renew ${O1}`] },
    { name: 'held here, renewed just now, but what it proved changed: renew at once (the next environment learns it)', o: observed({ oid: O1, record: record(me), proofChanged: true }, { staging: { oid: O1, record: record(me), seenAt: NOW - 1000, renewedAt: NOW - 1000 } }), actions: [`renew ${O1}`] },
    { name: 'held by this sandbox before a restart: renew at once', o: observed({ oid: O1, record: record({ ...me, pid: 9 }) }), actions: [`renew ${O1}`] },
    { name: 'this machine is not in runsOn: never take a free lease', o: observed({ runsOn: ['host-b'] }), actions: [] },
    { name: 'not in runsOn: never take an expired one either', o: observed({ oid: O1, record: record(other), runsOn: ['host-b'] }, { staging: { oid: O1, record: record(other), seenAt: NOW - 10 * TTL } }), actions: [] },
    { name: 'held here but runsOn no longer lists this machine: release', o: observed({ oid: O1, record: record(me), runsOn: ['host-b'] }, { staging: { oid: O1, record: record(me), seenAt: NOW, renewedAt: NOW } }), actions: [`release ${O1}`] },
    { name: 'in runsOn: take it', o: observed({ runsOn: ['host-b', 'host-a'] }), actions: ['take none'] },
    { name: 'no policy in force: nothing to act on, not taken', o: observed({ hasPolicy: false }), actions: [] },
    { name: 'stopping: release what is held here', o: observed({ oid: O1, record: record(me) }, { staging: { oid: O1, record: record(me), seenAt: NOW, renewedAt: NOW } }, { releasing: true }), actions: [`release ${O1}`] },
    { name: 'stopping: take nothing', o: observed({}, {}, { releasing: true }), actions: [] },
    { name: 'an unreadable lease ref counts as held until the default term has passed', o: observed({ oid: O1, record: null, problem: 'not a lease' }, { staging: { oid: O1, record: null, seenAt: NOW - TTL } }), actions: [`take ${O1}`] },
  ];
  for (const c of cases) it(c.name, () => expect(kinds(c.o)).toEqual(c.actions));

  it('looks again no later than the other holder\'s expiry, and renews every third of the term', () => {
    expect(planLeases(observed({ oid: O1, record: record(other) }, { staging: { oid: O1, record: record(other), seenAt: NOW - TTL + 500 } })).requeueAfterMs).toBe(500);
    expect(planLeases(observed({ oid: O1, record: record(me) }, { staging: { oid: O1, record: record(me), seenAt: NOW - 1000, renewedAt: NOW - 1000 } })).requeueAfterMs).toBe(TTL / 3 - 1000);
  });
});

describe('environmentsToWake: a lease pass wakes the environments when what they may do changed', () => {
  const held = (renewedAt: number, state?: LeaseRecord['state']) => ({ oid: O1, record: record(me, state ? { state } : {}), seenAt: renewedAt, renewedAt });
  const others = (state?: LeaseRecord['state']) => ({ oid: O1, record: record(other, state ? { state } : {}), seenAt: NOW });
  const wake = (before: Record<string, LeaseEntry>, after: Record<string, LeaseEntry>, from = NOW, to = NOW + 100) => environmentsToWake(new Map(Object.entries(before)), new Map(Object.entries(after)), from, to);
  it('taken, or lost', () => {
    expect(wake({}, { staging: held(NOW) })).toBe(true);
    expect(wake({ staging: held(NOW) }, { staging: others() })).toBe(true);
  });
  it('renewed while still held: nothing changed for the environments', () => {
    expect(wake({ staging: held(NOW - 1000) }, { staging: held(NOW + 50) })).toBe(false);
  });
  it('renewed after it lapsed here while the renewal was on its way (an environment pass may have seen it free and gone to sleep)', () => {
    const renewedAt = NOW - (2 * TTL) / 3 + 50;
    expect(wake({ staging: held(renewedAt) }, { staging: held(NOW + 10) }, NOW, NOW + 100)).toBe(true);
  });
  it('another holder\'s proof (healthy or rolled-back commits) changed: a follower adopts it', () => {
    expect(wake({ staging: others({ head: null, deployed: null, healthy: [] }) }, { staging: others({ head: null, deployed: null, healthy: [O1] }) })).toBe(true);
    expect(wake({ staging: others({ head: null, deployed: null, healthy: [O1] }) }, { staging: others({ head: null, deployed: null, healthy: [O1], next: 'x' }) })).toBe(false);
  });
});

describe('leaseView', () => {
  const book = () => {
    const b = new LeaseBook({ host: 'host-a', user: 'alice', pid: 10 });
    b.me.id = me.id;
    b.remote = 'origin';
    return b;
  };
  it('no remote: no lease needed, the controller acts', () => {
    expect(leaseView(new LeaseBook({ host: 'h', user: 'u', pid: 1 }), 'staging', NOW)).toBeUndefined();
    expect(leaseRole(undefined, 'staging', NOW)).toBe('act');
  });
  it('held here only within two thirds of the term after the last renewal began', () => {
    const b = book();
    b.entries.set('staging', { oid: O1, record: record(me), seenAt: NOW, renewedAt: NOW });
    expect(leaseView(b, 'staging', NOW + (2 * TTL) / 3 - 1)?.state).toBe('held');
    expect(leaseView(b, 'staging', NOW + (2 * TTL) / 3)?.state).toBe('free');
    expect(leaseRole(b, 'staging', NOW)).toBe('act');
  });
  it('another holder: followed until its term has passed unchanged, then free', () => {
    const b = book();
    b.entries.set('staging', { oid: O1, record: record(other, { state: { head: O1, deployed: O1, health: 'healthy: ok' } }), seenAt: NOW });
    const v = leaseView(b, 'staging', NOW + 1)!;
    expect(v).toMatchObject({ state: 'other', holder: other, holderState: { deployed: O1 } });
    expect(leaseRole(b, 'staging', NOW + 1)).toBe('follow');
    expect(leaseView(b, 'staging', NOW + TTL)?.state).toBe('free');
    expect(leaseRole(b, 'staging', NOW + TTL)).toBe('wait');
  });
  it('not in runsOn: excluded, and the branches follow', () => {
    const b = book();
    b.entries.set('staging', { oid: null, record: null, seenAt: NOW });
    expect(leaseView(b, 'staging', NOW, ['host-b'])?.state).toBe('excluded');
  });
  it('not read yet: wait (neither push nor follow)', () => {
    expect(leaseView(book(), 'staging', NOW)?.state).toBe('unknown');
    expect(leaseRole(book(), 'staging', NOW)).toBe('wait');
  });
});

describe('parseLeaseRecord: the lease ref is hostile input', () => {
  const good = { version: 1, environment: 'staging', holder: other, acquiredAt: 'a', renewedAt: 'b', expiresAt: 'c', ttlMs: 5000 };
  it('reads a lease', () => expect(parseLeaseRecord(Buffer.from(JSON.stringify(good)), 'staging')).toMatchObject({ holder: other, ttlMs: 5000 }));
  it('refuses another environment\'s lease, bad JSON, a missing holder, a bad term', () => {
    expect(parseLeaseRecord(Buffer.from(JSON.stringify(good)), 'production')).toBeNull();
    expect(parseLeaseRecord(Buffer.from('{'), 'staging')).toBeNull();
    expect(parseLeaseRecord(Buffer.from(JSON.stringify({ ...good, holder: undefined })), 'staging')).toBeNull();
    expect(parseLeaseRecord(Buffer.from(JSON.stringify({ ...good, ttlMs: -1 })), 'staging')).toBeNull();
  });
  it('caps a term that would lock the team out for days', () => {
    expect(parseLeaseRecord(Buffer.from(JSON.stringify({ ...good, ttlMs: 1e12 })), 'staging')?.ttlMs).toBe(3_600_000);
  });
});

describe('planLeases: a remote that does not answer', () => {
  it('takes and renews nothing, keeps what it knew with the reason, and looks again within a third of the term', () => {
    const o = observed({}, { staging: { oid: O1, record: record(me), seenAt: NOW - 1000, renewedAt: NOW - 1000 } }, { envs: [], unreachable: { reason: 'RemoteUnavailable', message: 'no answer' } });
    const p = planLeases(o);
    expect(p.actions).toEqual([{ type: 'note', environment: 'staging', entry: expect.objectContaining({ oid: O1, renewedAt: NOW - 1000, problem: 'no answer' }) }]);
    expect(p.blocked?.reason).toBe('RemoteUnavailable');
    expect(p.requeueAfterMs).toBe(TTL / 3);
  });
});

describe('runsOn is policy: a sandbox edit of it is pending until promoted', () => {
  it('policyDifferences names runsOn when the sandbox\'s copy differs from the one in force', async () => {
    const { policyDifferences, describePolicyDifference } = await import('../src/config/pipeline.js');
    const env = { name: 'production', branch: 'main', from: 'staging', promotion: 'approval' as const, gates: [], approvals: { required: 1, signers: [] }, windows: [], health: [], healthyAfter: 1, failureThreshold: 1, progressDeadlineMs: 1, rollback: { automatic: true } };
    const inForce = { env: { ...env, runsOn: ['prod-1'] }, fromBranch: 'staging' };
    const sandbox = { env: { ...env, runsOn: ['prod-1', 'laptop'] }, fromBranch: 'staging' };
    const diffs = policyDifferences(sandbox, inForce);
    expect(diffs).toEqual([{ setting: 'runsOn', sandbox: 'laptop, prod-1', inForce: 'prod-1' }]);
    expect(describePolicyDifference(diffs[0]!, 'main')).toBe('pending policy change: runsOn laptop, prod-1 (sandbox) vs prod-1 (in force on main); takes effect once promoted');
    expect(policyDifferences({ env, fromBranch: 'staging' }, { env, fromBranch: 'staging' })).toEqual([]);
  });
});

describe('environment branches in a team: only the lease holder pushes them (planEnvironmentBranch)', () => {
  it('a follower never pushes, even a commit it promoted while it held the lease: it follows the holder\'s; while the lease is not read yet nothing moves', async () => {
    const { planEnvironmentBranch } = await import('../reconcilers/remote.js');
    const a = 'a'.repeat(40);
    const b = 'b'.repeat(40);
    const base = { environment: 'staging', branch: 'staging', remoteName: 'origin', primary: true, checkedOut: false, sandboxBranch: 'develop', ahead: false, contained: false, promotedHere: false, remoteMovedAway: false };
    // The holder rolled back to b; a former holder with its own promotion a (ahead of b) must not push it back.
    expect(planEnvironmentBranch({ ...base, local: a, remote: b, ahead: true, promotedHere: true, lease: 'act' }).action).toBe('push');
    expect(planEnvironmentBranch({ ...base, local: a, remote: b, ahead: true, promotedHere: true, lease: 'follow' })).toMatchObject({ action: 'follow', keep: true });
    expect(planEnvironmentBranch({ ...base, local: a, remote: null, promotedHere: true, lease: 'follow' }).action).toBe('none');
    expect(planEnvironmentBranch({ ...base, local: a, remote: b, ahead: true, promotedHere: true, lease: 'wait' }).action).toBe('none');
    expect(planEnvironmentBranch({ ...base, local: a, remote: b, contained: true, promotedHere: true, lease: 'wait' }).action).toBe('none');
    // Not its own promotion: followed while waiting, and a missing branch is fetched (its trust root; no lease is taken without it).
    expect(planEnvironmentBranch({ ...base, local: a, remote: b, contained: true, lease: 'wait' }).action).toBe('follow');
    expect(planEnvironmentBranch({ ...base, local: null, remote: b, lease: 'wait' }).action).toBe('follow');
    expect(planEnvironmentBranch({ ...base, local: a, remote: null, promotedHere: true, lease: 'wait' }).action).toBe('none');
    expect(planEnvironmentBranch({ ...base, local: a, remote: b, contained: true, lease: 'follow' }).action).toBe('follow');
  });
});
