import { describe, expect, it } from 'vitest';
import { planEnvironment, type EnvironmentObserved } from '../reconcilers/environment.js';
import type { EnvironmentSpec } from '../src/config/types.js';
import { newRelease, recordRound, pastDeadline, type HealthState } from '../src/pipeline/health-state.js';

const A = 'a'.repeat(40);
const B = 'b'.repeat(40);
const C = 'c'.repeat(40);
const NOW = Date.UTC(2026, 10, 24, 12);

function spec(over: Partial<EnvironmentSpec> = {}): EnvironmentSpec {
  return {
    name: 'staging', branch: 'staging', from: 'develop', promotion: 'auto', gates: [], approvals: { required: 1, signers: [] }, windows: [],
    deploy: { directory: '/srv/staging', keep: 5, selfHeal: true, hooks: {} }, health: [{ name: 'web', command: 'true', timeoutMs: 1000 }],
    healthyAfter: 2, failureThreshold: 2, progressDeadlineMs: 60_000, rollback: { automatic: true }, ...over,
  };
}

const healthy = (commit: string): HealthState => ({ commit, since: NOW - 600_000, phase: 'healthy', okStreak: 5, failStreak: 0, rollback: false, last: { at: NOW - 30_000, results: [] } });

function observed(over: Partial<EnvironmentObserved> = {}): EnvironmentObserved {
  return {
    env: spec(), fromBranch: 'develop', now: NOW, head: A, deployed: A, candidate: B, candidateRelation: 'fast-forward',
    target: { commit: B, relation: 'fast-forward', approvals: [] }, gates: null, window: { open: true, reason: 'no windows configured: always open' },
    health: healthy(A), rollbackTarget: null, failed: {}, healthIntervalMs: 20_000, ...over,
  };
}

const fail = [{ name: 'web', ok: false, message: 'exit 1' }];
const pass = [{ name: 'web', ok: true, message: 'exit 0' }];

describe('planEnvironment (table)', () => {
  const cases: { name: string; o: EnvironmentObserved; actions: string[]; next: RegExp; blocked?: boolean; inProgress?: boolean }[] = [
    { name: 'gates passed, window open, release healthy: promote and deploy', o: observed(), actions: ['promote', 'deploy'], next: /^promote bbbbbbb and deploy it/, blocked: false },
    { name: 'gates not run yet: start them, promote nothing', o: observed({ env: spec({ gates: [{ name: 't', command: 'true', timeoutMs: 1000 }] }), gates: { commit: B, state: 'pending', gates: [{ name: 't', state: 'pending' }] } }), actions: ['run-gates'], next: /^waiting for the gates on bbbbbbb/, blocked: true },
    { name: 'gates running: wait', o: observed({ gates: { commit: B, state: 'running', gates: [{ name: 't', state: 'running' }] } }), actions: [], next: /^waiting for the gates/ },
    { name: 'a gate failed: blocked, gate-failed notified', o: observed({ gates: { commit: B, state: 'failed', gates: [{ name: 't', state: 'failed', ok: false, message: 'exit 1: boom', at: '', durationMs: 1 }] } }), actions: ['notify'], next: /^blocked: gate t failed on bbbbbbb: exit 1: boom/, blocked: true },
    { name: 'window closed: wait until it opens', o: observed({ window: { open: false, reason: 'inside deny window', nextOpenAt: NOW + 60_000 } }), actions: [], next: /^waiting for a window: inside deny window/, blocked: true },
    { name: 'branch ahead of the live release: deploy first', o: observed({ head: B, deployed: A, target: null, candidateRelation: 'contained' }), actions: ['deploy'], next: /^deploy bbbbbbb/ },
    { name: 'current release still progressing: promotion waits', o: observed({ health: { ...healthy(A), phase: 'progressing', okStreak: 0, since: NOW - 1000, last: { at: NOW, results: [] } } }), actions: [], next: /^waiting for aaaaaaa to become healthy/ },
    { name: 'a new release fails its threshold: roll back to the last healthy one', o: observed({ health: { ...healthy(A), phase: 'progressing', okStreak: 0, failStreak: 1, since: NOW - 1000 }, round: fail, rollbackTarget: C }), actions: ['record-health', 'rollback'], next: /^roll back to ccccccc/ },
    { name: 'a healthy release degrades: roll back', o: observed({ health: { ...healthy(A), failStreak: 1 }, round: fail, rollbackTarget: C }), actions: ['record-health', 'rollback'], next: /^roll back to ccccccc/ },
    { name: 'failing after a rollback: never roll back again', o: observed({ health: { ...healthy(A), phase: 'progressing', rollback: true, okStreak: 0, failStreak: 1, since: NOW - 1000 }, round: fail, rollbackTarget: C }), actions: ['record-health'], next: /not rolling back again/ },
    { name: 'rollback.automatic false: no rollback, promotion goes on once failed', o: observed({ env: spec({ rollback: { automatic: false } }), health: { ...healthy(A), phase: 'progressing', okStreak: 0, failStreak: 1, since: NOW - 1000 }, round: fail, rollbackTarget: C }), actions: ['record-health', 'promote', 'deploy'], next: /^promote/ },
    { name: 'the candidate was rolled back: not promoted again', o: observed({ target: null, failed: { [B]: { approvals: [] } } }), actions: [], next: /^bbbbbbb was rolled back; waiting for a newer commit/ },
    { name: 'up to date', o: observed({ target: null, candidate: A, candidateRelation: 'contained' }), actions: [], next: /^up to date with develop/, blocked: false },
    {
      name: 'approval missing: approval-needed with the exact command',
      o: observed({ env: spec({ name: 'production', branch: 'main', promotion: 'approval' }), target: null, approvals: { required: 1, signersFrom: 'x', signers: 1, valid: [], rejected: [], byCommit: {} } }),
      actions: ['notify'], next: /^waiting for approval of bbbbbbb \(0\/1 valid\)/, blocked: true,
    },
    {
      name: 'approval written but not committed yet: say so, and count it as under way',
      o: observed({ env: spec({ name: 'production', branch: 'main', promotion: 'approval' }), target: null, approvals: { required: 1, signersFrom: 'x', signers: 1, valid: [], rejected: [{ environment: 'production', commit: B, signer: 'alice', line: 3, reason: 'not-committed', message: 'not committed yet' }], byCommit: {} } }),
      actions: [], next: /^1 approval\(s\) of bbbbbbb written to cascade-sync-state.yaml but not committed yet \(0\/1 valid\)/, blocked: true, inProgress: true,
    },
    {
      name: 'no signers on the production branch: say so',
      o: observed({ env: spec({ name: 'production', branch: 'main', promotion: 'approval' }), target: null, approvals: { required: 1, signersFrom: 'x', signers: 0, valid: [], rejected: [], byCommit: {}, problem: 'no signers for production' } }),
      actions: [], next: /^no promotion: no signers for production/,
    },
    {
      name: 'approved commit on a diverged branch: moved to exactly that commit',
      o: observed({ env: spec({ name: 'production', branch: 'main', promotion: 'approval' }), target: { commit: B, relation: 'diverged', approvals: [{ environment: 'production', commit: B, signer: 'alice', expires: '', fingerprint: '', id: 'x', line: 1 }] } }),
      actions: ['promote', 'deploy'], next: /^promote bbbbbbb/,
    },
  ];
  it.each(cases)('$name', ({ o, actions, next, blocked, inProgress }) => {
    const plan = planEnvironment(o);
    expect(plan.actions.map((a) => a.type)).toEqual(actions);
    expect(plan.report.next).toMatch(next);
    if (blocked !== undefined) expect(plan.report.blocked).toBe(blocked);
    if (inProgress !== undefined) expect(plan.report.inProgress).toBe(inProgress);
  });

  it('an approval promotion moves to exactly the approved commit (reset mode) and names the signers', () => {
    const plan = planEnvironment(cases.at(-1)!.o);
    expect(plan.actions[0]).toMatchObject({ type: 'promote', commit: B, mode: 'reset', signers: ['alice'], approvalIds: ['x'] });
  });

  it('says when the controller is still acting on the environment (deploy-* waits for that to end)', () => {
    expect(planEnvironment(observed()).report.inProgress).toBe(true);
    expect(planEnvironment(observed({ gates: { commit: B, state: 'running', gates: [{ name: 't', state: 'running' }] } })).report.inProgress).toBe(true);
    expect(planEnvironment(observed({ target: null, candidate: A, candidateRelation: 'contained' })).report.inProgress).toBe(false);
    expect(planEnvironment(observed({ window: { open: false, reason: 'closed', nextOpenAt: NOW + 1 } })).report.inProgress).toBe(false);
  });

  it('a closed window requeues exactly when it opens', () => {
    expect(planEnvironment(observed({ window: { open: false, reason: 'closed', nextOpenAt: NOW + 42_000 } })).requeueAfterMs).toBe(42_000);
  });
});

describe('health state machine', () => {
  const rules = { healthyAfter: 2, failureThreshold: 2, progressDeadlineMs: 60_000 };
  it('a new release becomes healthy after healthyAfter passing rounds in a row', () => {
    let s = newRelease(A, NOW, false, true);
    s = recordRound(s, pass, NOW + 1, rules).state;
    expect(s.phase).toBe('progressing');
    const r = recordRound(recordRound(s, fail, NOW + 2, rules).state, pass, NOW + 3, rules);
    expect(r.state.phase).toBe('progressing'); // a failure resets the passing streak
    const done = recordRound(r.state, pass, NOW + 4, rules);
    expect(done).toMatchObject({ event: 'healthy', state: { phase: 'healthy' } });
  });
  it('fails after failureThreshold failing rounds, or when the deadline passes first', () => {
    const s = newRelease(A, NOW, false, true);
    expect(recordRound(recordRound(s, fail, NOW + 1, rules).state, fail, NOW + 2, rules)).toMatchObject({ event: 'failed' });
    expect(pastDeadline(s, NOW + 59_999, rules).event).toBeUndefined();
    expect(pastDeadline(s, NOW + 60_000, rules)).toMatchObject({ event: 'failed', state: { phase: 'failed' } });
  });
  it('a healthy release degrades after failureThreshold failures and recovers after healthyAfter passes', () => {
    let s: HealthState = { ...newRelease(A, NOW, false, true), phase: 'healthy' };
    s = recordRound(s, fail, NOW, rules).state;
    const degraded = recordRound(s, fail, NOW, rules);
    expect(degraded.event).toBe('degraded');
    const recovered = recordRound(recordRound(degraded.state, pass, NOW, rules).state, pass, NOW, rules);
    expect(recovered).toMatchObject({ event: 'recovered', state: { phase: 'healthy' } });
  });
  it('without checks a release is healthy at once', () => {
    expect(newRelease(A, NOW, false, false).phase).toBe('healthy');
  });
});

describe('planEnvironment: release integrity (table)', () => {
  const none = { changed: [], added: [], removed: [] };
  const drift = { changed: ['index.html'], added: ['evil.php'], removed: [] };
  const intact = (over: object = {}) => ({ commit: A, drift: none, entries: 3, durationMs: 4, ...over });
  const drifted = (over: object = {}) => ({ commit: A, drift, entries: 3, durationMs: 4, ...over });
  const episode = (since: number): HealthState => ({ ...healthy(A), integrity: { at: NOW - 20_000, entries: 3, drift: { changed: ['index.html'], added: [], removed: [], counts: { changed: 1, added: 0, removed: 0 }, total: 1, since } } });
  const upToDate = { target: null, candidate: A, candidateRelation: 'contained' as const };
  const cases: { name: string; o: EnvironmentObserved; actions: string[]; state?: string }[] = [
    { name: 'intact: only the verification is recorded', o: observed({ ...upToDate, integrity: intact() }), actions: ['record-health'], state: 'intact' },
    { name: 'drift found: reported once and, with selfHeal, repaired', o: observed({ ...upToDate, integrity: drifted() }), actions: ['record-health', 'report-drift', 'repair-release'], state: 'drifted' },
    { name: 'drift with selfHeal false: reported only', o: observed({ ...upToDate, env: spec({ deploy: { directory: '/srv/staging', keep: 5, selfHeal: false, hooks: {} } }), integrity: drifted() }), actions: ['record-health', 'report-drift'], state: 'drifted' },
    { name: 'drift still there in a later round: no second report, repaired again', o: observed({ ...upToDate, health: episode(NOW - 60_000), integrity: drifted() }), actions: ['record-health', 'repair-release'], state: 'drifted' },
    { name: 'drift still there, selfHeal false: nothing but the record', o: observed({ ...upToDate, env: spec({ deploy: { directory: '/srv/staging', keep: 5, selfHeal: false, hooks: {} } }), health: episode(NOW - 60_000), integrity: drifted() }), actions: ['record-health'], state: 'drifted' },
    { name: 'intact again: the episode ends', o: observed({ ...upToDate, health: episode(NOW - 60_000), integrity: intact() }), actions: ['record-health'], state: 'intact' },
    { name: 'manifest missing (an older deploy): written from the commit tree', o: observed({ ...upToDate, integrity: intact({ rebuilt: { why: 'missing', manifest: { version: 1, commit: A, entries: [] } } }) }), actions: ['record-health', 'write-manifest'], state: 'intact' },
    { name: 'verification failed: recorded, nothing repaired', o: observed({ ...upToDate, integrity: { commit: A, error: 'UnsafePath: bad tree' } }), actions: ['record-health'], state: 'unverified' },
    { name: 'a verification of another commit (current moved meanwhile) is ignored', o: observed({ ...upToDate, integrity: drifted({ commit: C }) }), actions: [], state: 'unverified' },
    { name: 'drift is no health failure: a healthy release is not rolled back, promotion goes on', o: observed({ integrity: drifted(), rollbackTarget: C }), actions: ['record-health', 'report-drift', 'repair-release', 'promote', 'deploy'], state: 'drifted' },
  ];
  it.each(cases)('$name', ({ o, actions, state }) => {
    const plan = planEnvironment(o);
    expect(plan.actions.map((a) => a.type)).toEqual(actions);
    if (state) expect(plan.report.integrity?.state).toBe(state);
  });

  it('reports which files drifted, capped, with the counts in full, and keys the notification by episode', () => {
    const many = { changed: Array.from({ length: 30 }, (_, i) => `c${String(i).padStart(2, '0')}`), added: ['x'], removed: ['y', 'z'] };
    const plan = planEnvironment(observed({ target: null, candidate: A, candidateRelation: 'contained', integrity: { commit: A, drift: many, entries: 40, durationMs: 5 } }));
    const report = plan.actions.find((a) => a.type === 'report-drift');
    expect(report).toMatchObject({ type: 'report-drift', commit: A, since: NOW, drift: { counts: { changed: 30, added: 1, removed: 2 }, total: 33, added: ['x'], removed: ['y', 'z'] } });
    expect(report?.type === 'report-drift' && report.drift.changed).toHaveLength(20);
    expect(plan.actions.find((a) => a.type === 'repair-release')).toMatchObject({ drift: many }); // the repair gets every path
    expect(plan.report.integrity).toMatchObject({ state: 'drifted', selfHeal: true, drift: { total: 33 } });
    expect(plan.report.integrity?.description).toMatch(/^drift since .*: 30 changed \(c00, c01, c02, c03, c04, \.\.\.\); 1 added \(x\); 2 removed \(y, z\)/);
    const recorded = plan.actions.find((a) => a.type === 'record-health');
    expect(recorded?.type === 'record-health' && recorded.state.integrity?.drift?.since).toBe(NOW);
  });
});

describe('planEnvironment: the policy in force and the sandbox\'s pending changes (table)', () => {
  const alice = 'alice@example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPaliceKeyXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX';
  const production = (over: Partial<EnvironmentSpec> = {}) => spec({ name: 'production', branch: 'main', from: 'staging', promotion: 'approval', approvals: { required: 1, signers: [alice] }, ...over });
  const waiting = { target: null, approvals: { required: 1, signersFrom: 'cascade-sync-config.yaml on branch main', signers: 1, valid: [], rejected: [], byCommit: {} } };
  const inForce = (over: Partial<EnvironmentObserved> = {}) => observed({ env: production(), fromBranch: 'staging', ...waiting, ...over });
  const cases: { name: string; o: EnvironmentObserved; pending: string[]; actions?: string[]; next?: RegExp }[] = [
    {
      name: 'the sandbox agrees with the branch: nothing pending',
      o: inForce({ sandbox: { env: production(), fromBranch: 'staging' } }), pending: [], actions: ['notify'], next: /^waiting for approval/,
    },
    {
      name: 'promotion auto in the sandbox: pending, and production still waits for approval',
      o: inForce({ sandbox: { env: production({ promotion: 'auto' }), fromBranch: 'staging' } }),
      pending: ['pending policy change: promotion auto (sandbox) vs approval (in force on main); takes effect once promoted'], actions: ['notify'], next: /^waiting for approval of bbbbbbb/,
    },
    {
      name: 'from develop in the sandbox: pending',
      o: inForce({ sandbox: { env: production({ from: 'develop' }), fromBranch: 'develop' } }),
      pending: ['pending policy change: from develop (sandbox) vs staging (in force on main); takes effect once promoted'],
    },
    {
      name: 'signers emptied and approval dropped in the sandbox: both pending',
      o: inForce({ sandbox: { env: production({ promotion: 'auto', approvals: { required: 1, signers: [] } }), fromBranch: 'staging' } }),
      pending: [
        'pending policy change: promotion auto (sandbox) vs approval (in force on main); takes effect once promoted',
        'pending policy change: approvals.signers none (sandbox) vs alice@example.com (key ...XXXXXXXX) (in force on main); takes effect once promoted',
      ],
    },
    {
      name: 'required, windows, gates and rollback: each named',
      o: inForce({
        sandbox: {
          env: production({ approvals: { required: 2, signers: [alice] }, windows: [{ kind: 'deny', schedule: '* * * * *', durationMs: 3_600_000, timezone: 'UTC' }], gates: [{ name: 'test', command: 'npm test', timeoutMs: 1000 }], rollback: { automatic: false } }),
          fromBranch: 'staging',
        },
      }),
      pending: [
        'pending policy change: approvals.required 2 (sandbox) vs 1 (in force on main); takes effect once promoted',
        'pending policy change: windows deny "* * * * *" for 60m (UTC) (sandbox) vs none (in force on main); takes effect once promoted',
        'pending policy change: gates test (command "npm test") (sandbox) vs none (in force on main); takes effect once promoted',
        'pending policy change: rollback.automatic false (sandbox) vs true (in force on main); takes effect once promoted',
      ],
    },
    {
      name: 'a signers line only respaced or a comment added: the same trust, nothing pending',
      o: inForce({ sandbox: { env: production({ approvals: { required: 1, signers: ['# the release managers', `  ${alice.replace(/ /g, '   ')}  `] } }), fromBranch: 'staging' } }),
      pending: [],
    },
    {
      name: 'health and hooks differ: not policy (each release runs its own), nothing pending',
      o: inForce({ sandbox: { env: production({ health: [], deploy: { directory: '/elsewhere', keep: 1, selfHeal: false, hooks: { pre: 'touch /tmp/x' } } }), fromBranch: 'staging' } }),
      pending: [],
    },
    {
      name: 'no policy in force (the branch\'s config is invalid): nothing pending is shown, nothing promoted or deployed',
      o: observed({ head: B, deployed: A, sandbox: { env: spec({ promotion: 'approval' }), fromBranch: 'develop' }, policyProblem: { reason: 'PolicyInvalid', message: 'the cascade-sync-config.yaml committed on branch staging is not valid', hint: 'commit a valid one' } }),
      pending: [], actions: [], next: /^blocked: the cascade-sync-config.yaml committed on branch staging is not valid/,
    },
  ];
  it.each(cases)('$name', ({ o, pending, actions, next }) => {
    const plan = planEnvironment(o);
    expect((plan.report.pendingPolicy ?? []).map((d) => d.message)).toEqual(pending);
    if (actions) expect(plan.actions.map((a) => a.type)).toEqual(actions);
    if (next) expect(plan.report.next).toMatch(next);
  });

  it('no policy in force: Stalled with its reason and hint, and a failing release is not rolled back on the sandbox\'s say-so', () => {
    const problem = { reason: 'EnvironmentBranchMissing' as const, message: 'branch main does not exist in this repository', hint: 'fetch it' };
    const plan = planEnvironment(observed({ head: null, deployed: A, policyProblem: problem, health: { ...healthy(A), failStreak: 1 }, round: fail, rollbackTarget: C }));
    expect(plan.blocked).toEqual(problem);
    expect(plan.actions.map((a) => a.type)).toEqual(['record-health']);
    expect(plan.report).toMatchObject({ blocked: true, hint: 'fetch it' });
  });

  it('a missing branch is never created from the candidate, even without an observed problem', () => {
    const plan = planEnvironment(observed({ head: null, deployed: null, health: undefined, target: { commit: B, relation: 'create', approvals: [] } }));
    expect(plan.actions.map((a) => a.type)).toEqual([]);
    expect(plan.blocked?.reason).toBe('EnvironmentBranchMissing');
  });

  it('a target whose config would leave no policy in force is not promoted', () => {
    const problem = { reason: 'PolicyWithoutEnvironment' as const, message: 'the cascade-sync-config.yaml of bbbbbbb has no environment staging, and promoted it would leave staging without a policy in force', hint: 'fix it in the sandbox' };
    const plan = planEnvironment(observed({ target: { commit: B, relation: 'fast-forward', approvals: [], problem } }));
    expect(plan.actions.map((a) => a.type)).toEqual([]);
    expect(plan.report.next).toBe(`not promoting bbbbbbb: ${problem.message}`);
    expect(plan.report).toMatchObject({ blocked: true, hint: 'fix it in the sandbox' });
    expect(plan.blocked).toBeUndefined();
  });

  it('a promoted commit deploys with its own hooks and health, not those of the release before it', () => {
    const release = { hooks: { pre: 'echo from-the-target' }, checks: false };
    const plan = planEnvironment(observed({ target: { commit: B, relation: 'fast-forward', approvals: [], release } }));
    expect(plan.actions.filter((a) => a.type === 'promote' || a.type === 'deploy')).toEqual([
      expect.objectContaining({ type: 'promote', commit: B, release }),
      { type: 'deploy', commit: B, release },
    ]);
    const head = planEnvironment(observed({ head: B, deployed: A, target: null, candidateRelation: 'contained', headRelease: { hooks: { post: 'echo head' }, checks: true } }));
    expect(head.actions.find((a) => a.type === 'deploy')).toEqual({ type: 'deploy', commit: B, release: { hooks: { post: 'echo head' }, checks: true } });
  });
});

describe('planEnvironment: the environment\'s branch is pinned', () => {
  it('first pass with a policy in force: the branch is pinned (trust on first use)', () => {
    expect(planEnvironment(observed({ pinnedBranch: null })).actions.map((a) => a.type)).toEqual(['pin-branch', 'promote', 'deploy']);
    expect(planEnvironment(observed({ pinnedBranch: null })).actions[0]).toEqual({ type: 'pin-branch', branch: 'staging' });
  });
  it('already pinned, or no policy in force: nothing to pin', () => {
    expect(planEnvironment(observed({ pinnedBranch: 'staging' })).actions.map((a) => a.type)).toEqual(['promote', 'deploy']);
    const problem = { reason: 'PolicyMissing' as const, message: 'no config', hint: 'commit one' };
    expect(planEnvironment(observed({ pinnedBranch: null, policyProblem: problem })).actions.map((a) => a.type)).toEqual([]);
  });
});
