import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { evaluateFreezes, FREEZE_NAMESPACE, freezeMessage, frozenDecision, parseFreezes, signFreeze, type FreezeReport } from '../src/approvals/freeze.js';
import { planEnvironment, type EnvironmentObserved } from '../reconcilers/environment.js';
import type { HealthState } from '../src/pipeline/health-state.js';
import { git, revParse } from './helpers/git.js';
import { envReport, passControllerTime, pipelineConfig, sshKey, startDeployedPipeline } from './helpers/pipeline.js';
import { run, type RunningController } from './helpers/sandbox.js';
import { sshVerify } from './helpers/ssh.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

const exec = promisify(execFile);
const NOW = Date.parse('2026-12-04T12:00:00Z');
const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');

let keys: string;
let alice: { file: string; pub: string };
let mallory: { file: string; pub: string };

beforeAll(async () => {
  keys = await makeTmpDir('freeze-keys');
  [alice, mallory] = await Promise.all([sshKey(keys, 'alice@example.com'), sshKey(keys, 'mallory@example.com')]);
});

let controllers: RunningController[] = [];
afterEach(async () => {
  for (const c of controllers) await c.stop();
  controllers = [];
});

/** A `freezes:` entry signed with the real `ssh-keygen -Y sign` (namespace cascade-sync-freeze unless told). */
async function signedFreeze(key: string, f: { environment: string; action: 'freeze' | 'lift'; reason?: string; at: string; expires?: string; signer: string }, o: { namespace?: string; signFor?: { reason?: string } } = {}): Promise<string> {
  const msgFile = `${key}.freeze-${Math.random().toString(36).slice(2)}`;
  await writeFile(msgFile, freezeMessage({ ...f, ...(o.signFor ?? {}) }));
  await exec('ssh-keygen', ['-Y', 'sign', '-n', o.namespace ?? FREEZE_NAMESPACE, '-f', key, msgFile]);
  const sig = await readFile(`${msgFile}.sig`, 'utf8');
  return [
    `  - environment: ${f.environment}`,
    `    action: ${f.action}`,
    ...(f.reason !== undefined ? [`    reason: ${JSON.stringify(f.reason)}`] : []),
    `    at: "${f.at}"`,
    ...(f.expires ? [`    expires: "${f.expires}"`] : []),
    `    signer: ${f.signer}`,
    '    signature: |',
    ...sig.trimEnd().split('\n').map((l) => `      ${l}`),
    '',
  ].join('\n');
}

function judge(entries: string[], o: { working?: string[]; now?: number; signers?: string[] } = {}): FreezeReport {
  const parse = (list: string[]) => parseFreezes(`freezes:\n${list.join('')}`, 'cascade-sync-state.yaml').entries;
  return evaluateFreezes({ environment: 'production', signers: o.signers ?? [alice.pub], signersFrom: 'cascade-sync-config.yaml on branch main', committed: parse(entries), working: parse(o.working ?? entries), now: o.now ?? NOW });
}

describe('freeze entries (real ssh-keygen signatures)', () => {
  it('a committed freeze by a listed signer is in force with who, why and until when; ssh-keygen verifies what freeze writes', async () => {
    const entry = await signedFreeze(alice.file, { environment: 'production', action: 'freeze', reason: 'incident 4711: database failover', at: iso(NOW - 60_000), expires: iso(NOW + 4 * 3_600_000), signer: 'alice@example.com' });
    const r = judge([entry]);
    expect(r.rejected).toEqual([]);
    expect(r.active).toHaveLength(1);
    expect(r.active[0]).toMatchObject({ signer: 'alice@example.com', reason: 'incident 4711: database failover', at: iso(NOW - 60_000), expires: iso(NOW + 4 * 3_600_000) });
    expect(frozenDecision(r, 'production', NOW, 20_000)).toMatchObject({ reason: 'Frozen', next: expect.stringMatching(/^frozen: nothing is promoted into production until 2026-12-04T16:00:00Z \(frozen by alice@example.com at .*: incident 4711: database failover\)/), hint: 'cascade-sync unfreeze production --key FILE' });

    // The other way round: what `freeze` signs in-process verifies with ssh-keygen -Y verify.
    const sandbox = await makeTmpDir('freeze-sign');
    const written = await signFreeze({ sandboxDir: sandbox, environment: 'production', action: 'freeze', reason: 'release train stopped', expiresInMs: 3_600_000, keyFile: alice.file, now: NOW });
    const v = await sshVerify(sandbox, { allowedSigners: [alice.pub], principal: 'alice@example.com', namespace: FREEZE_NAMESPACE, signature: written.entry.signature, message: freezeMessage(written.entry) });
    expect(v.code, v.stderr).toBe(0);
    const text = await readFile(path.join(sandbox, 'cascade-sync-state.yaml'), 'utf8');
    const parsed = parseFreezes(text, 'x').entries;
    expect(parsed).toHaveLength(1);
    expect(evaluateFreezes({ environment: 'production', signers: [alice.pub], signersFrom: 'x', committed: parsed, working: parsed, now: NOW }).active[0]?.reason).toBe('release train stopped');
  });

  it('rejects unknown signers, forged or altered entries, approval signatures, entries from the future and malformed ones, each with its reason', async () => {
    const at = iso(NOW - 60_000);
    const entries = [
      await signedFreeze(mallory.file, { environment: 'production', action: 'freeze', reason: 'I say so', at, signer: 'mallory@example.com' }),
      await signedFreeze(mallory.file, { environment: 'production', action: 'freeze', reason: 'pretending', at, signer: 'alice@example.com' }),
      await signedFreeze(alice.file, { environment: 'production', action: 'freeze', reason: 'altered afterwards', at, signer: 'alice@example.com' }, { signFor: { reason: 'the original reason' } }),
      await signedFreeze(alice.file, { environment: 'production', action: 'freeze', reason: 'approval namespace', at, signer: 'alice@example.com' }, { namespace: 'cascade-sync' }),
      await signedFreeze(alice.file, { environment: 'production', action: 'freeze', reason: 'tomorrow', at: iso(NOW + 86_400_000), signer: 'alice@example.com' }),
      await signedFreeze(alice.file, { environment: 'production', action: 'freeze', at, signer: 'alice@example.com' }),
    ];
    const r = judge(entries);
    expect(r.active).toEqual([]);
    expect(r.rejected.map((x) => x.reason)).toEqual(['unknown-signer', 'unknown-signer', 'bad-signature', 'bad-signature', 'from-the-future', 'malformed']);
    expect(r.rejected[0]!.message).toMatch(/no line of approvals.signers \(cascade-sync-config.yaml on branch main\) lists mallory@example.com/);
    expect(r.rejected[1]!.message).toMatch(/alice@example.com is in approvals.signers, but not with the key SHA256:/);
    expect(r.rejected[5]!.message).toMatch(/a freeze needs a reason/);
    // Without signers on the environment's branch nobody can freeze it.
    const none = judge([entries[2]!.replace('altered afterwards', 'the original reason')], { signers: [] });
    expect(none.rejected[0]).toMatchObject({ reason: 'unknown-signer', message: expect.stringMatching(/production has no approvals.signers/) });
  });

  it('ends by expiry or by a later lift (an earlier lift does not end it); a working-copy-only entry does not count yet', async () => {
    const freeze = await signedFreeze(alice.file, { environment: 'production', action: 'freeze', reason: 'incident', at: iso(NOW - 600_000), expires: iso(NOW + 600_000), signer: 'alice@example.com' });
    expect(judge([freeze]).active).toHaveLength(1);
    expect(judge([freeze], { now: NOW + 600_001 }).active).toEqual([]);
    const lateLift = await signedFreeze(alice.file, { environment: 'production', action: 'lift', at: iso(NOW - 60_000), signer: 'alice@example.com' });
    const lifted = judge([freeze, lateLift]);
    expect(lifted.active).toEqual([]);
    expect(lifted.lifted).toEqual({ signer: 'alice@example.com', at: iso(NOW - 60_000) });
    const earlyLift = await signedFreeze(alice.file, { environment: 'production', action: 'lift', at: iso(NOW - 3_600_000), signer: 'alice@example.com' });
    expect(judge([earlyLift, freeze]).active).toHaveLength(1);
    // Times are to the second: a lift and a freeze signed in the same second are ordered by the file
    // (the commands append): a freeze written after the lift is in force, one written before is lifted.
    const sameSecondLift = await signedFreeze(alice.file, { environment: 'production', action: 'lift', at: iso(NOW - 30_000), signer: 'alice@example.com' });
    const sameSecondFreeze = await signedFreeze(alice.file, { environment: 'production', action: 'freeze', reason: 'again', at: iso(NOW - 30_000), signer: 'alice@example.com' });
    expect(judge([freeze, sameSecondLift, sameSecondFreeze]).active.map((f) => f.reason)).toEqual(['again']);
    expect(judge([freeze, sameSecondFreeze, sameSecondLift]).active).toEqual([]);
    const pending = judge([], { working: [freeze] });
    expect(pending.active).toEqual([]);
    expect(pending.rejected.map((x) => x.reason)).toEqual(['not-committed']);
    // Another environment's freeze is not this one's.
    const staging = await signedFreeze(alice.file, { environment: 'staging', action: 'freeze', reason: 'x', at: iso(NOW - 60_000), signer: 'alice@example.com' });
    expect(judge([staging])).toMatchObject({ active: [], rejected: [] });
  });
});

describe('the environment planner while frozen', () => {
  const A = 'a'.repeat(40);
  const B = 'b'.repeat(40);
  const C = 'c'.repeat(40);
  const healthy = (commit: string): HealthState => ({ commit, since: NOW - 600_000, phase: 'healthy', okStreak: 5, failStreak: 0, rollback: false, last: { at: NOW - 30_000, results: [] } });
  const freeze: FreezeReport = { active: [{ signer: 'alice@example.com', reason: 'incident', at: iso(NOW - 60_000), expires: iso(NOW + 5_000), fingerprint: 'SHA256:x', line: 2 }], rejected: [], signersFrom: 'x' };
  const observed = (over: Partial<EnvironmentObserved> = {}): EnvironmentObserved => ({
    env: { name: 'staging', branch: 'staging', from: 'develop', promotion: 'auto', gates: [], approvals: { required: 1, signers: [] }, windows: [], deploy: { directory: '/srv/staging', keep: 5, selfHeal: true, hooks: {} }, health: [{ name: 'web', command: 'true', timeoutMs: 1000 }], healthyAfter: 2, failureThreshold: 2, progressDeadlineMs: 60_000, rollback: { automatic: true } },
    fromBranch: 'develop', now: NOW, head: A, deployed: A, candidate: B, candidateRelation: 'fast-forward', target: { commit: B, relation: 'fast-forward', approvals: [] }, gates: null,
    window: { open: true, reason: 'always open' }, health: healthy(A), rollbackTarget: null, failed: {}, healthIntervalMs: 20_000, freeze, ...over,
  });

  it('promotes nothing, says who froze it, why and until when, and looks again at the expiry', () => {
    const plan = planEnvironment(observed());
    expect(plan.actions).toEqual([]);
    expect(plan.report.next).toMatch(/^frozen: nothing is promoted into staging until .* \(frozen by alice@example.com at .*: incident\); rollback still works/);
    expect(plan.report.blocked).toBe(true);
    expect(plan.report.freeze?.active[0]?.signer).toBe('alice@example.com');
    expect(plan.requeueAfterMs).toBe(5_001);
    expect(planEnvironment(observed({ freeze: { ...freeze, active: [] } })).actions.map((a) => a.type)).toEqual(['promote', 'deploy']);
  });

  it('still rolls back a failing release', () => {
    const plan = planEnvironment(observed({ health: { ...healthy(A), failStreak: 1 }, round: [{ name: 'web', ok: false, message: 'exit 1' }], rollbackTarget: C }));
    expect(plan.actions.map((a) => a.type)).toEqual(['record-health', 'rollback']);
  });
});

describe('freeze and unfreeze with a real controller', () => {
  afterEach(async () => {
    await cleanupTmpDirs();
  });

  /** Waits until staging holds a commit whose app.txt is `content`, approves it for production with alice's key, and returns it. */
  async function approveStagingWith(dir: string, content: string): Promise<string> {
    const commit = await waitFor(async () => {
      const s = await revParse(dir, 'staging');
      return (await git(dir, 'show', `${s}:app.txt`).catch(() => '')) === content.trim() ? s : undefined;
    }, { what: `staging to hold ${JSON.stringify(content)}`, timeoutMs: 60_000 }).catch(async (e: Error) => {
      throw new Error(`${e.message}\nstaging: ${JSON.stringify(await envReport(dir, 'staging'))}\ndevelop: ${await git(dir, 'log', '--oneline', '-5', 'develop')}`);
    });
    const approve = await run(dir, ['approve', 'production', commit, '--key', alice.file, '--expires', '2h']);
    expect(approve.code, approve.stderr).toBe(0);
    return commit;
  }

  it('a committed freeze stops promotion into production even with a valid approval (status and plan say who, why, until when); unfreeze lets it go on; an expired freeze ends by itself', async () => {
    const dir = await makeTmpDir('sandbox');
    const deployRoot = await makeTmpDir('deploy');
    const logFile = path.join(await makeTmpDir('logs'), 'cascade-sync.log');
    // production's approvals.signers (committed on main at init) say who may freeze it.
    const { c1, clock } = await startDeployedPipeline({ dir, config: pipelineConfig({ signers: [alice.pub], logFile, deployRoot }), deployRoot, track: (c) => controllers.push(c) });

    const frozen = await run(dir, ['freeze', 'production', '--reason', 'incident 42: payments down', '--key', alice.file]);
    expect(frozen.code, frozen.stderr).toBe(0);
    expect(frozen.stdout).toMatch(/froze production until lifted: incident 42: payments down/);
    const bad = await run(dir, ['freeze', 'production', '--reason', 'not mine to stop', '--key', mallory.file]);
    expect(bad.code, bad.stderr).toBe(0);
    await waitFor(async () => {
      const r = await envReport(dir, 'production');
      return r?.next?.startsWith('frozen:') && r.freeze?.rejected?.length === 1 ? r : undefined;
    }, { what: 'production frozen by the committed freeze', timeoutMs: 60_000 }).catch(async (e: Error) => {
      throw new Error(`${e.message}\n${JSON.stringify(await envReport(dir, 'production'))}`);
    });

    await writeFile(path.join(dir, 'app.txt'), 'v2\n');
    const c2 = await approveStagingWith(dir, 'v2\n');
    const report = await waitFor(async () => {
      const r = await envReport(dir, 'production');
      return r?.approvals?.valid?.some((a: { commit: string }) => a.commit === c2) && r.next.startsWith('frozen:') ? r : undefined;
    }, { what: 'a valid approval of c2, and production still frozen', timeoutMs: 60_000 }).catch(async (e: Error) => {
      throw new Error(`${e.message}\n${JSON.stringify(await envReport(dir, 'production'))}`);
    });
    expect(report.freeze.active[0]).toMatchObject({ signer: 'alice@example.com', reason: 'incident 42: payments down' });
    expect(report.freeze.rejected[0]).toMatchObject({ reason: 'unknown-signer', signer: 'mallory@example.com' });
    await passControllerTime(dir, clock, 'env:production', 3_000, 1_000);
    expect(await revParse(dir, 'main')).toBe(c1);
    const status = await run(dir, ['status']);
    expect(status.stdout).toMatch(/FROZEN by alice@example.com at \S+, until lifted: incident 42: payments down/);
    expect(status.stdout).toMatch(/freeze rejected \(line \d+, mallory@example.com\): unknown-signer/);
    const plan = await run(dir, ['plan']);
    expect(plan.stdout).toMatch(/next: frozen: nothing is promoted into production until lifted \(frozen by alice@example.com/);

    const lift = await run(dir, ['unfreeze', 'production', '--key', alice.file]);
    expect(lift.code, lift.stderr).toBe(0);
    await waitFor(async () => (await revParse(dir, 'main')) === c2 || undefined, { what: 'production promoted after the lift', timeoutMs: 60_000 }).catch(async (e: Error) => {
      throw new Error(`${e.message}\n${JSON.stringify(await envReport(dir, 'production'))}`);
    });
    // (The promoting pass's report shows what it saw before acting: the next one shows the lift.)
    const liftedReport = await waitFor(async () => {
      const r = await envReport(dir, 'production');
      return r?.freeze && r.freeze.active.length === 0 ? r : undefined;
    }, { what: 'the lift in the report' });
    expect(liftedReport.freeze.lifted).toMatchObject({ signer: 'alice@example.com' });

    // A freeze with an expiry ends by itself: controller time passes beyond it.
    const timed = await run(dir, ['freeze', 'production', '--reason', 'short break', '--expires', '2m', '--key', alice.file]);
    expect(timed.code, timed.stderr).toBe(0);
    await waitFor(async () => (await envReport(dir, 'production'))?.next?.match(/^frozen: .* until \S+ \(frozen by alice@example.com at .*: short break\)/) || undefined, { what: 'the timed freeze in force', timeoutMs: 60_000 });
    await writeFile(path.join(dir, 'app.txt'), 'v3\n');
    const c3 = await approveStagingWith(dir, 'v3\n');
    await waitFor(async () => (await envReport(dir, 'production'))?.approvals?.valid?.some((a: { commit: string }) => a.commit === c3) || undefined, { what: 'a valid approval of c3', timeoutMs: 60_000 });
    expect(await revParse(dir, 'main')).toBe(c2);
    clock.advance(3 * 60_000);
    await waitFor(async () => (await revParse(dir, 'main')) === c3 || undefined, { what: 'production promoted once the freeze expired', timeoutMs: 60_000 });
  }, 300_000);
});
