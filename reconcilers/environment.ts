import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { CONFIG_FILE, formatProblem } from "../src/config/load.js";
import type { Config, EnvironmentSpec, LoadResult } from "../src/config/types.js";
import { describePolicyDifference, fromBranch as fromBranchOf, policyDifferences, type PolicyDifference, type PolicyView } from "../src/config/pipeline.js";
import { CascadeError, stalled, transient } from "../src/errors.js";
import { branchRef } from "../src/git/repo.js";
import { commitTree as commitObject, mergeWinning } from "../src/git/native/index.js";
import { approvalsByCommit, evaluateApprovals, type ApprovalEvaluation, type ValidApproval } from "../src/approvals/evaluate.js";
import { parseStateFile, STATE_FILE, type ParsedEntry } from "../src/approvals/state.js";
import { frozenDecision, observeFreeze, type FreezeReport } from "../src/approvals/freeze.js";
import { parseCommitConfig } from "../src/pipeline/commit-config.js";
import { runHealthRound } from "../src/pipeline/checks.js";
import { currentRelease, deployRelease, listReleases, prepareRelease, releaseDir, repairRelease, switchCurrent, verifyReleaseIntegrity, type ReleasePreparation } from "../src/pipeline/deploy.js";
import type { GateReport } from "../src/pipeline/gates.js";
import {
  describeDrift, describeHealth, describeIntegrity, newRelease, pastDeadline, recordIntegrity, recordRound, summarizeDrift,
  type DriftSummary, type HealthEvent, type HealthState, type IntegrityEvent, type RoundResult,
} from "../src/pipeline/health-state.js";
import { isIntact, manifestPathFor, writeManifest, type ReleaseManifest, type VerifyResult } from "../src/security/manifest.js";
import { windowState, type WindowState } from "../src/pipeline/windows.js";
import { describeHolder, leaseView, mayAct, type LeaseView, type PolicyReader } from "../src/pipeline/lease.js";
import type { Plan, ReconcileContext, Reconciler, Result } from "../src/reconcile.js";

/** What an environment looks like now, for `status` and `plan`. */
export interface EnvironmentReport {
  name: string;
  branch: string;
  from: string;
  promotion: "auto" | "approval";
  /** The environment branch's commit. */
  head: string | null;
  /** The live release's commit (deploy.directory's `current`), when the environment deploys. */
  deployed: string | null;
  /** Head of the `from` branch: what would be promoted next. */
  candidate: string | null;
  /** The commit the environment would move to now (auto: the candidate; approval: the newest approved one). */
  target: string | null;
  gates: GateReport | null;
  approvals?: {
    required: number; signersFrom: string; signers: number; valid: ValidApproval[]; rejected: ApprovalEvaluation["rejected"];
    /** Why no approval can count at all (no signers on the environment's branch). */
    problem?: string;
    /** Problems with the state file as a whole or with signers lines, as `file:line:col: message`. */
    fileProblems?: string[];
  };
  window: WindowState;
  /** Signed freezes of this environment (issue 16): while one is in force nothing is promoted into it. */
  freeze?: FreezeReport;
  health: { phase: string; description: string; checks: RoundResult[] } | null;
  /** The live release checked against its manifest (environments with a deploy directory). */
  integrity?: IntegrityReport;
  /** Commits rolled back in this environment: never promoted again automatically. */
  failed: string[];
  /**
   * Where the sandbox's copy of this environment's policy differs from the one in force (committed on
   * its branch): each takes effect only once a commit carrying it is promoted into the environment.
   */
  pendingPolicy?: (PolicyDifference & { message: string })[];
  /** What the controller does next, or why it does not. */
  next: string;
  /** The exact command a person can run to unblock it (e.g. approve). */
  hint?: string;
  /** True when promotion waits on something (gates, approvals, a window, health) rather than being done or under way. */
  blocked: boolean;
  /** True while the controller is acting on this environment (promoting, deploying, rolling back, gates running). */
  inProgress: boolean;
  /**
   * The environment's lease on the first remote (a team: only its holder acts on the environment);
   * absent without a remote (a single controller needs none).
   */
  lease?: LeaseView;
}

/** The live release against its manifest, for status. */
export interface IntegrityReport {
  commit: string;
  state: "intact" | "drifted" | "unverified";
  /** One line: intact with how many paths, or the drift with its first paths and when it began. */
  description: string;
  /** What differs (each list capped, counts in full), while it differs. */
  drift?: DriftSummary;
  verifiedAt?: string;
  /** deploy.selfHeal: drift is restored from git; when false it is only reported. */
  selfHeal: boolean;
}

/** One verification of the live release, as observed: the drift, or why it could not be verified. */
export type IntegrityObservation = { commit: string } & (
  | {
      drift: VerifyResult;
      entries: number;
      durationMs: number;
      /** The manifest was missing or unreadable; this one was built from the commit's tree, to be written. */
      rebuilt?: { why: "missing" | "invalid"; manifest: ReleaseManifest };
    }
  | { error: string }
);

export type EnvironmentAction =
  | { type: "record-health"; state: HealthState; event?: HealthEvent }
  | { type: "write-manifest"; commit: string; why: "missing" | "invalid" }
  | { type: "report-drift"; commit: string; drift: DriftSummary; since: number }
  | { type: "repair-release"; commit: string; drift: VerifyResult }
  | { type: "rollback"; from: string; to: string; reason: string }
  | { type: "deploy"; commit: string; release: ReleaseSettings }
  | { type: "run-gates"; commit: string }
  | { type: "promote"; commit: string; mode: "fast-forward" | "merge" | "reset"; signers: string[]; approvalIds: string[]; release: ReleaseSettings }
  | { type: "notify"; event: "approval-needed" | "gate-failed"; key: string; message: string }
  | { type: "pin-branch"; branch: string }
  | { type: "adopt-holder-record"; healthy: string[]; failed: string[]; holder: string };

/** A release's deploy hooks: always those of the commit being deployed (its own config). */
export type DeployHooks = NonNullable<EnvironmentSpec["deploy"]>["hooks"];

/** What a commit's own config says its release runs: its deploy hooks, and whether it has health checks. */
export interface ReleaseSettings {
  hooks: DeployHooks;
  checks: boolean;
}

export interface EnvironmentObserved {
  /**
   * The spec in force: name, branch and where it deploys from the sandbox's config; the policy
   * (promotion, from, approvals, windows, gates, rollback) from the config committed on the branch;
   * deploy.hooks from the head's config; health checks and rules from the live release's config.
   */
  env: EnvironmentSpec;
  /** The branch candidates come from, as the policy in force resolves `from`. */
  fromBranch: string;
  now: number;
  head: string | null;
  deployed: string | null;
  candidate: string | null;
  /** How the candidate relates to the head. */
  candidateRelation: Relation;
  /**
   * When `from` is another environment: that environment, and its newest healthy commit still on its
   * branch (null: none yet). Only commits up to it may be promoted: a release feeds the next
   * environment once it is healthy where it is (healthyAfter), not while it is still being proven.
   */
  proving?: { environment: string; healthy: string | null; waiting: string | null };
  /**
   * The commit the environment would move to, with what its own config says its release runs, or the problem that
   * keeps its config from becoming the policy in force (then it is not promoted).
   */
  target: { commit: string; relation: Relation; approvals: ValidApproval[]; release?: ReleaseSettings; problem?: PolicyProblem } | null;
  /** What the head's release runs (from the head's config, the policy in force), for deploying it. */
  headRelease?: ReleaseSettings;
  gates: GateReport | null;
  approvals?: EnvironmentReport["approvals"] & { byCommit: Record<string, number> };
  window: WindowState;
  health?: HealthState;
  /** This pass's round of health checks, when one was due. */
  round?: RoundResult[];
  /** This pass's verification of the live release against its manifest, when one was due. */
  integrity?: IntegrityObservation;
  rollbackTarget: string | null;
  failed: Record<string, { approvals: string[] }>;
  healthIntervalMs: number;
  /** The sandbox's copy of this environment's policy, for the pending-policy report. */
  sandbox?: PolicyView;
  /** Set when the environment has no policy in force: nothing is promoted into it or deployed. */
  policyProblem?: PolicyProblem;
  /** Signed freezes judged against the signers in force (absent without a policy in force). */
  freeze?: FreezeReport;
  /**
   * The branch pinned for this environment in the sandbox's .git/config (null: none yet, pinned on
   * this pass; undefined: not observed). Its trust root cannot be moved by a config edit alone.
   */
  pinnedBranch?: string | null;
  /** The environment's lease as this controller holds or sees it; absent: no lease needed (no remote). Only `held` acts. */
  lease?: LeaseView;
  /** What this controller's own record says (healthy and rolled-back commits), for adopting the holder's. */
  known?: { healthy: string[] };
}

/** How a commit relates to the environment branch's head. */
type Relation = "none" | "contained" | "create" | "fast-forward" | "diverged";

export interface EnvironmentPlan extends Plan<EnvironmentAction> {
  report: EnvironmentReport;
}

/**
 * One environment of the pipeline: promotes its `from` branch's head when the gates pass (and, with
 * `promotion: approval`, only a commit with enough valid signed approvals, inside an allowed window),
 * deploys what its branch holds, watches health and rolls back on its own. Only this reconciler moves
 * the environment's branch; the remote reconcilers push it.
 */
export function environmentReconciler(name: string): Reconciler<EnvironmentObserved, EnvironmentAction> & { plan(desired: Config, o: EnvironmentObserved): EnvironmentPlan } {
  const spec = (desired: Config) => {
    const env = Object.hasOwn(desired.environments, name) ? desired.environments[name] : undefined;
    if (!env) throw transient("EnvironmentRemoved", `environment ${name} is no longer configured`);
    return env;
  };
  return {
    name: `env:${name}`,

    async observe(ctx, desired) {
      const sandboxEnv = spec(desired);
      const pipeline = ctx.pipeline!;
      const rec = pipeline.store.get(name);
      const now = ctx.clock.now();
      const branch = sandboxEnv.branch;
      const head = await ctx.repo.branchHead(branch);
      const pinnedBranch = (await ctx.repo.getConfig(pinKey(name))) ?? null;
      // The trust root: the config committed on the environment's own branch. Never the sandbox's copy.
      const policy: TrustedSpec = pinnedBranch !== null && pinnedBranch !== branch ? { ok: false, problem: branchChanged(name, pinnedBranch, branch) }
        : head ? await trustedSpecAt(ctx, desired, name, branch, head, "head") : { ok: false, problem: missingBranch(name, branch) };
      const inForce = policy.ok ? policy : undefined;
      const sandbox: PolicyView = { env: sandboxEnv, fromBranch: fromBranchOf(desired, sandboxEnv) };
      const deploy = deploySettings(sandboxEnv, inForce?.env);
      const deployed = deploy ? await currentRelease(deploy.directory) : null;
      // Health checks and their rules are the live release's own (the content that was approved for it).
      const live = deploy ? deployed : head;
      const liveSpec = live === head ? inForce?.env : live ? await releaseSpecAt(ctx, desired, name, live) : undefined;
      const env = effectiveSpec(sandboxEnv, inForce?.env, liveSpec ?? inForce?.env, deploy);
      const fromBranch = inForce?.fromBranch ?? sandbox.fromBranch;
      const fromHead = inForce ? await ctx.repo.branchHead(fromBranch) : null;
      const proven = inForce?.fromEnvironment ? await provenCommit(ctx, inForce.fromEnvironment, fromHead) : undefined;
      // With `from` another environment, what is not healthy there yet is no candidate (auto) and no target (approval).
      const candidate = proven === undefined ? fromHead : proven;
      const relation = (c: string | null) => relate(ctx, c, head);
      const candidateRelation = await relation(candidate);
      const failed = Object.fromEntries(Object.entries(rec.failed).map(([c, f]) => [c, { approvals: f.approvals }]));

      let target: EnvironmentObserved["target"] = null;
      let approvals: EnvironmentObserved["approvals"];
      let waiting: string | null = null;
      if (inForce && env.promotion === "auto") {
        if (candidate && movable(candidateRelation) && !failed[candidate]) {
          target = { commit: candidate, relation: candidateRelation, approvals: [] };
        }
        if (fromHead && fromHead !== candidate && movable(await relation(fromHead))) waiting = fromHead;
      } else if (inForce) {
        // Approvals are judged against the branch (a commit still being proven may be approved ahead).
        approvals = await observeApprovals(ctx, desired, env, head, fromHead);
        const approved = await approvedTarget(ctx, approvals, env.approvals.required, failed, head);
        if (approved && proven !== undefined && !(proven && (approved.commit === proven || (await ctx.repo.isAncestor(approved.commit, proven))))) waiting = approved.commit;
        else target = approved;
      }
      if (target) target = { ...target, ...(await releaseOf(ctx, desired, name, branch, target.commit)) };
      const subject = !inForce ? null : target?.commit ?? (candidate && movable(candidateRelation) && !failed[candidate] ? candidate : null);
      const gates = subject && env.gates.length ? pipeline.gates.report(name, subject, env.gates) : null;

      // runsOn is policy: read from the config in force on the branch, like who may approve.
      // No remote (any more): a single controller, no lease.
      const lease = desired.remotes.length ? leaseView(pipeline.leases, name, now, inForce?.env.runsOn) : undefined;
      // A controller that follows another's lease runs no commands for the environment (the holder watches it).
      const acting = !lease || lease.state === "held";
      const release = env.deploy ? deployed : head;
      const stored = rec.health?.commit === release ? rec.health : undefined;
      const due = !stored?.last || now >= stored.last.at + desired.intervals.healthMs;
      const round = acting && release && env.health.length && due ? await runHealthRound(env, release, desired.dir, pipeline.env) : undefined;
      // Verified on the health interval whether or not there are checks; drift never fails a check.
      const verifyDue = !stored?.integrity || now >= stored.integrity.at + desired.intervals.healthMs;
      const integrity = acting && env.deploy && deployed && verifyDue ? await observeIntegrity(ctx, env.deploy.directory, deployed) : undefined;
      const releases = env.deploy ? new Set(await listReleases(env.deploy.directory)) : undefined;
      const rollbackTarget = [...rec.healthy].reverse().find((c) => c !== release && !failed[c] && (!releases || releases.has(c))) ?? null;
      return {
        env, fromBranch, now, head, deployed, candidate, candidateRelation, target, gates, window: windowState(env.windows, now),
        ...(inForce?.fromEnvironment ? { proving: { environment: inForce.fromEnvironment, healthy: proven ?? null, waiting } } : {}),
        ...(approvals ? { approvals } : {}), ...(stored ? { health: stored } : {}), ...(round ? { round } : {}), ...(integrity ? { integrity } : {}),
        rollbackTarget, failed, healthIntervalMs: desired.intervals.healthMs, sandbox,
        ...(inForce ? { freeze: await observeFreeze(ctx, desired, env) } : {}),
        ...(inForce ? { headRelease: releaseSettings(inForce.env) } : {}),
        ...(policy.ok ? {} : { policyProblem: policy.problem }), pinnedBranch, ...(lease ? { lease } : {}),
        ...(lease && !acting ? { known: { healthy: [...rec.healthy] } } : {}),
      };
    },

    plan(desired, o): EnvironmentPlan {
      return planEnvironment(o);
    },

    async apply(ctx, desired, plan, o): Promise<Result> {
      const p = plan as EnvironmentPlan;
      const pipeline = ctx.pipeline!;
      const done: string[] = [];
      try {
        for (const action of p.actions) done.push(await applyAction(ctx, o, action));
        await recordRejections(ctx, o);
      } finally {
        // After acting, the report says what was done; the pass that follows (at once) says what is next.
        const acted = done.filter((_, i) => ["promote", "deploy", "rollback"].includes(p.actions[i]!.type));
        const rec = pipeline.store.get(name);
        // A repair in this pass changed what the integrity line says.
        const integrity = p.report.integrity && rec.health?.commit === p.report.integrity.commit ? integrityReport(rec.health, o.env) : undefined;
        pipeline.reports[name] = { ...p.report, failed: Object.keys(rec.failed), ...(acted.length ? { next: acted.join("; ") } : {}), ...(integrity ? { integrity } : {}) };
        await pipeline.store.save();
      }
      if (p.blocked) throw stalled(p.blocked.reason, p.blocked.message, p.blocked.hint);
      // The branch could not be kept in step with a remote (listed, fetched or pushed): shown here, on the environment (issue 15).
      const branchProblem = pipeline.branchProblems?.get(name)?.values().next().value;
      return { requeueAfterMs: p.requeueAfterMs ?? o.healthIntervalMs, summary: [...done, p.report.next].join("; "), ...(branchProblem ? { problem: branchProblem } : {}) };
    },

    describe(a) {
      switch (a.type) {
        case "record-health": return a.event ? `health: ${a.event}` : "start watching the live release's health";
        case "write-manifest": return `write the manifest of ${a.commit.slice(0, 7)} (${a.why}), built from the commit's tree`;
        case "report-drift": return `report drift of ${name}'s live release ${a.commit.slice(0, 7)}: ${describeDrift(a.drift)}`;
        case "repair-release": return `restore ${name}'s live release ${a.commit.slice(0, 7)} from git: ${describeDrift(a.drift)}`;
        case "rollback": return `roll back ${name} from ${a.from.slice(0, 7)} to ${a.to.slice(0, 7)}: ${a.reason}`;
        case "deploy": return `deploy ${a.commit.slice(0, 7)} to ${name}`;
        case "run-gates": return `run the gates of ${name} on ${a.commit.slice(0, 7)}`;
        case "promote": return `promote ${a.commit.slice(0, 7)} to ${name} (${a.mode})${a.signers.length ? `, approved by ${a.signers.join(", ")}` : ""}`;
        case "notify": return `notify ${a.event}: ${a.message}`;
        case "pin-branch": return `pin ${name}'s branch to ${a.branch} (git config ${pinKey(name)})`;
        case "adopt-holder-record": return `record what the lease holder ${a.holder} reports: ${a.healthy.length} healthy, ${a.failed.length} rolled back`;
      }
    },
  };

  /** Side effects of one action; returns what was done, in a few words. */
  async function applyAction(ctx: ReconcileContext, o: EnvironmentObserved, action: EnvironmentAction): Promise<string> {
    const pipeline = ctx.pipeline!;
    const rec = pipeline.store.get(name);
    const env = o.env;
    const at = new Date(ctx.clock.now()).toISOString();
    // The lease may have run out while this pass observed (a long health round): only its holder acts.
    if (["promote", "deploy", "rollback", "run-gates", "repair-release"].includes(action.type) && o.lease && !mayAct(pipeline.leases, name, ctx.clock.now())) {
      throw transient("LeaseLost", `${name}: this controller no longer holds ${name}'s lease; it follows the holder`, "nothing to do: the lease is renewed or taken over on its own");
    }
    switch (action.type) {
      case "record-health": {
        rec.health = action.state;
        // A release first seen healthy (no checks: e.g. one deployed by another controller) counts like one that became so.
        const firstSeenHealthy = !action.event && action.state.phase === "healthy" && !rec.healthy.includes(action.state.commit);
        if (action.event === "healthy" || action.event === "recovered" || firstSeenHealthy) {
          pipeline.store.markHealthy(name, action.state.commit);
          // A release proven here may be the next environment's candidate: it looks again now, not a health interval later.
          ctx.branchMoved();
        }
        if (action.event === "degraded" || action.event === "failed") {
          ctx.notifier.reset("health-recovered", `${name}:${action.state.commit}`);
          await ctx.notifier.notify({ event: "health-degraded", key: `${name}:${action.state.commit}`, message: `${name}: ${action.state.commit.slice(0, 7)} is ${describeHealth(action.state, env, ctx.clock.now())}`, details: { environment: name, commit: action.state.commit } });
        }
        if (action.event === "recovered") {
          ctx.notifier.reset("health-degraded", `${name}:${action.state.commit}`);
          await ctx.notifier.notify({ event: "health-recovered", key: `${name}:${action.state.commit}`, message: `${name}: ${action.state.commit.slice(0, 7)} is healthy again`, details: { environment: name, commit: action.state.commit } });
        }
        if (action.event) ctx.log.info(`${name}: ${action.state.commit.slice(0, 7)} ${action.event}`, { environment: name, commit: action.state.commit, phase: action.state.phase });
        return action.event ? `health ${action.event}` : "watching health";
      }
      case "write-manifest": {
        const i = o.integrity;
        if (!env.deploy || !i || i.commit !== action.commit || !("rebuilt" in i) || !i.rebuilt) return "no manifest to write";
        await writeManifest(manifestPathFor(releaseDir(env.deploy.directory, action.commit)), i.rebuilt.manifest);
        ctx.log.info(`${name}: wrote the manifest of ${action.commit.slice(0, 7)} (${action.why}), built from the commit's tree`, { environment: name, commit: action.commit });
        return `manifest of ${action.commit.slice(0, 7)} written`;
      }
      case "report-drift": {
        const what = describeDrift(action.drift);
        const then = env.deploy?.selfHeal ? "restoring it from git" : "deploy.selfHeal is false: only reported; restore it by hand or redeploy";
        await pipeline.history.append({ at, environment: name, event: "drift-detected", commit: action.commit, result: what });
        ctx.log.warn(`${name}: the live release ${action.commit.slice(0, 7)} differs from its manifest: ${what}`, { environment: name, commit: action.commit, total: action.drift.total });
        await ctx.notifier.notify({
          event: "drift-detected", key: `${name}:${action.commit}:${action.since}`,
          message: `${name}: the live release ${action.commit.slice(0, 7)} differs from its manifest: ${what}; ${then}`,
          details: { environment: name, commit: action.commit, changed: action.drift.changed, added: action.drift.added, removed: action.drift.removed, total: action.drift.total },
        });
        return `drift reported (${action.drift.total} paths)`;
      }
      case "repair-release": {
        // One history entry per drift episode: something rewriting the release every round must not flood it.
        const firstInEpisode = !(rec.health?.commit === action.commit && rec.health.integrity?.repaired);
        const outcome = await repairLive(ctx, env.deploy!.directory, action.commit, action.drift);
        if (rec.health?.commit === action.commit && rec.health.integrity) rec.health.integrity = { ...rec.health.integrity, repaired: { at: ctx.clock.now(), ...outcome } };
        if (firstInEpisode) await pipeline.history.append({ at, environment: name, event: "release-repaired", commit: action.commit, result: outcome.message });
        ctx.log[outcome.ok ? "info" : "warn"](`${name}: ${outcome.ok ? "restored" : "could not fully restore"} ${action.commit.slice(0, 7)} from git: ${outcome.message}`, { environment: name, commit: action.commit });
        return outcome.ok ? `release ${action.commit.slice(0, 7)} restored from git` : `release ${action.commit.slice(0, 7)} repair failed`;
      }
      case "rollback": {
        // Before anything changes: the target may have been edited through a hard link shared with a newer release.
        if (env.deploy) await recordPreparation(ctx, action.to, await prepareRelease(ctx.repo, env.deploy.directory, action.to, { selfHeal: env.deploy.selfHeal }), "rollback target");
        await ctx.repo.setRef(`refs/cascade-sync/failed/${name}/${action.from}`, action.from, undefined, `rollback: ${action.reason}`, await ctx.who());
        rec.failed[action.from] = { at, reason: action.reason, approvals: rec.promotedWith[action.from] ?? [] };
        if (env.deploy) await switchCurrent(env.deploy.directory, action.to);
        const head = await ctx.repo.branchHead(env.branch);
        if (head === action.from) await ctx.repo.setRef(branchRef(env.branch), action.to, head, `rollback: ${name} to ${action.to.slice(0, 7)} (${action.from.slice(0, 7)} failed)`, await ctx.who());
        rec.health = newRelease(action.to, ctx.clock.now(), true, env.health.length > 0);
        await ctx.pipeline!.history.append({ at, environment: name, event: "rolled-back", commit: action.to, from: action.from, result: action.reason });
        ctx.log.warn(`${name}: rolled back from ${action.from.slice(0, 7)} to ${action.to.slice(0, 7)}: ${action.reason}`, { environment: name, from: action.from, to: action.to });
        await ctx.notifier.notify({ event: "rolled-back", key: `${name}:${action.from}`, message: `${name}: rolled back from ${action.from.slice(0, 7)} to ${action.to.slice(0, 7)}: ${action.reason}; ${action.from.slice(0, 7)} will not be promoted again automatically`, details: { environment: name, from: action.from, to: action.to } });
        ctx.branchMoved();
        return `rolled back to ${action.to.slice(0, 7)}`;
      }
      case "deploy": {
        const protect = rec.healthy.slice(-2);
        // The hooks of the commit being deployed (the approved content), never the sandbox's.
        const d = await deployRelease(ctx.repo, { environment: name, commit: action.commit, deploy: { ...env.deploy!, hooks: action.release.hooks }, protect, env: ctx.pipeline!.env, selfHeal: env.deploy!.selfHeal });
        if (d.integrity) await recordPreparation(ctx, action.commit, d.integrity, "reused release");
        rec.health = newRelease(action.commit, ctx.clock.now(), false, action.release.checks);
        if (!action.release.checks) pipeline.store.markHealthy(name, action.commit);
        await ctx.pipeline!.history.append({ at, environment: name, event: "deployed", commit: action.commit, from: d.previous, result: `release ${d.reused ? "reused" : `written (${d.written} files, ${d.linked} hard-linked)`}` });
        ctx.log.info(`${name}: deployed ${action.commit.slice(0, 7)} to ${d.release.dir}`, { environment: name, commit: action.commit, linked: d.linked, written: d.written });
        return `deployed ${action.commit.slice(0, 7)}`;
      }
      case "run-gates":
        pipeline.gates.start(name, action.commit, env.gates);
        return `gates started on ${action.commit.slice(0, 7)}`;
      case "promote": {
        const to = await promote(ctx, o, action);
        rec.promotedWith[to] = action.approvalIds;
        if (!env.deploy) rec.health = newRelease(to, ctx.clock.now(), false, action.release.checks);
        if (!env.deploy && !action.release.checks) pipeline.store.markHealthy(name, to);
        await ctx.pipeline!.history.append({ at, environment: name, event: "promoted", commit: to, from: o.head, ...(action.signers.length ? { signers: action.signers } : {}), result: action.mode });
        ctx.log.info(`${name}: promoted ${to.slice(0, 7)} (${action.mode})`, { environment: name, commit: to, from: o.head, signers: action.signers });
        await ctx.notifier.notify({ event: "promoted", key: `${name}:${to}`, message: `${name}: promoted ${to.slice(0, 7)}${action.signers.length ? ` (approved by ${action.signers.join(", ")})` : ""}`, details: { environment: name, commit: to } });
        ctx.branchMoved();
        return `promoted ${to.slice(0, 7)}`;
      }
      case "notify":
        await ctx.notifier.notify({ event: action.event, key: action.key, message: action.message, details: { environment: name } });
        return `notified ${action.event}`;
      case "adopt-holder-record":
        for (const c of action.healthy) pipeline.store.markHealthy(name, c);
        for (const c of action.failed) rec.failed[c] ??= { at, reason: `rolled back by the lease holder ${action.holder}`, approvals: [] };
        // A commit proven by the holder may be the next environment's candidate (or approved target): it looks again now, not at its next timer.
        if (action.healthy.length) ctx.branchMoved();
        return `recorded the holder's ${action.healthy.length} healthy and ${action.failed.length} rolled-back commit(s)`;
      case "pin-branch":
        await ctx.repo.setConfig(pinKey(name), action.branch);
        ctx.log.info(`${name}: branch ${action.branch} pinned as its trust root (git config ${pinKey(name)})`, { environment: name, branch: action.branch });
        return `branch ${action.branch} pinned`;
    }
  }

  /** Repairs the live release; a failure is a value (it is retried on the next verification), not a thrown error. */
  async function repairLive(ctx: ReconcileContext, directory: string, commit: string, drift: VerifyResult): Promise<{ ok: boolean; message: string }> {
    try {
      const r = await repairRelease(ctx.repo, directory, commit, drift);
      const did = `${r.rewritten.length} rewritten, ${r.removed.length} removed${r.rematerialized ? " (the release folder was materialized again)" : ""}`;
      return isIntact(r.after) ? { ok: true, message: did } : { ok: false, message: `${did}; still differs: ${describeDrift(r.after)}` };
    } catch (err) {
      return { ok: false, message: err instanceof CascadeError ? `${err.reason}: ${err.message}` : err instanceof Error ? err.message : String(err) };
    }
  }

  /** History and log for a release verified before it is made current again (a reuse or a rollback target). */
  async function recordPreparation(ctx: ReconcileContext, commit: string, p: ReleasePreparation, what: string): Promise<void> {
    const at = new Date(ctx.clock.now()).toISOString();
    const v = p.verification;
    if (v.rebuilt) ctx.log.info(`${name}: ${what} ${commit.slice(0, 7)} had no readable manifest (${v.rebuilt.why}); wrote one from the commit's tree`, { environment: name, commit });
    if (isIntact(v.drift)) return;
    const drift = describeDrift(v.drift);
    await ctx.pipeline!.history.append({ at, environment: name, event: "drift-detected", commit, result: `${what}: ${drift}` });
    ctx.log.warn(`${name}: ${what} ${commit.slice(0, 7)} differs from its manifest: ${drift}`, { environment: name, commit });
    await ctx.notifier.notify({ event: "drift-detected", key: `${name}:${commit}:${what}:${ctx.clock.now()}`, message: `${name}: the ${what} ${commit.slice(0, 7)} differs from its manifest: ${drift}${p.repair ? "; restored from git before it was made current" : "; deploy.selfHeal is false: made current as it is"}`, details: { environment: name, commit, ...summarizeDrift(v.drift) } });
    if (!p.repair) return;
    const ok = isIntact(p.repair.after);
    const result = `${what}: ${p.repair.rewritten.length} rewritten, ${p.repair.removed.length} removed${ok ? "" : `; still differs: ${describeDrift(p.repair.after)}`}`;
    await ctx.pipeline!.history.append({ at, environment: name, event: "release-repaired", commit, result });
  }

  /** Moves the environment branch (compare-and-swap against the observed head); returns the new head. */
  async function promote(ctx: ReconcileContext, o: EnvironmentObserved, action: Extract<EnvironmentAction, { type: "promote" }>): Promise<string> {
    const who = await ctx.who();
    const ref = branchRef(o.env.branch);
    if (action.mode === "merge") {
      // The environment has commits the candidate lacks: merge them so nothing is lost, the candidate
      // winning where both sides changed the same lines (per hunk, as git merge -X ours with the
      // candidate checked out; binary files and modify/delete per file), computed by git without a work tree.
      const git = { cwd: ctx.repo.dir, gitDir: ctx.repo.gitdir, workTree: ctx.repo.dir };
      const merged = await mergeWinning(git, action.commit, o.head!, { scratch: join(ctx.repo.gitdir, "cascade-sync"), perFile: (p) => ctx.repo.policy.isEncrypted(p) });
      const merge = await commitObject(git, {
        tree: merged.tree,
        parents: [o.head!, action.commit],
        message: `promote: ${action.commit.slice(0, 7)} into ${o.env.branch} (the candidate wins where both sides changed the same lines)\n`,
        author: { name: who.name, email: who.email, date: `@${who.timestamp} +0000` },
      });
      await ctx.repo.setRef(ref, merge, o.head, `promote: merge ${action.commit.slice(0, 7)}`, who);
      return merge;
    }
    if (action.mode === "reset" && o.head) {
      // An approval names one exact commit: keep what the branch held reachable, then move to it.
      await ctx.repo.setRef(`refs/cascade-sync/superseded/${name}/${o.head}`, o.head, undefined, `promote: superseded by ${action.commit.slice(0, 7)}`, who);
    }
    await ctx.repo.setRef(ref, action.commit, o.head, `promote: ${name} to ${action.commit.slice(0, 7)} (${action.mode})`, who);
    return action.commit;
  }

  /** Writes each newly rejected approval entry to history once. */
  async function recordRejections(ctx: ReconcileContext, o: EnvironmentObserved): Promise<void> {
    for (const r of o.approvals?.rejected ?? []) {
      // An uncommitted entry is not rejected for good: it is judged once the controller commits it.
      if (r.reason === "not-committed") continue;
      const key = `${r.line}:${r.commit ?? ""}:${r.signer ?? ""}:${r.reason}`;
      if (!ctx.pipeline!.store.firstRejection(name, key)) continue;
      await ctx.pipeline!.history.append({ at: new Date(ctx.clock.now()).toISOString(), environment: name, event: "approval-rejected", commit: r.commit ?? "", ...(r.signer ? { signers: [r.signer] } : {}), result: `${r.reason}: ${r.message}` });
    }
  }
}

/**
 * The pure decision for one environment: health first (a failing release is rolled back before
 * anything else), then the deploy of what the branch holds, then promotion with its gates,
 * approvals, window and the health of the current release. Also the report for status and plan.
 */
export function planEnvironment(o: EnvironmentObserved): EnvironmentPlan {
  const env = o.env;
  const actions: EnvironmentAction[] = [];
  const release = env.deploy ? o.deployed : o.head;
  const short = (c: string | null | undefined) => (c ? c.slice(0, 7) : "(none)");
  let requeueAfterMs: number | undefined;
  /** An approval sits in the working copy: the sandbox's next batch commits it, so promotion is under way. */
  let awaitingCommit = false;
  const report: EnvironmentReport = {
    name: env.name, branch: env.branch, from: o.fromBranch, promotion: env.promotion, head: o.head, deployed: o.deployed,
    candidate: o.candidate, target: o.target?.commit ?? null, gates: o.gates,
    ...(o.approvals ? { approvals: reportApprovals(o.approvals) } : {}),
    ...(o.freeze ? { freeze: o.freeze } : {}),
    window: o.window, health: null, failed: Object.keys(o.failed), next: "", blocked: false, inProgress: false,
  };
  // No trust root (branch or committed config missing or invalid): nothing is promoted or deployed, and a person must act.
  const policyProblem = o.policyProblem ?? (o.head ? undefined : missingBranch(env.name, env.branch));
  const pending = !policyProblem && o.sandbox ? policyDifferences(o.sandbox, { env, fromBranch: o.fromBranch }) : [];
  if (pending.length) report.pendingPolicy = pending.map((d) => ({ ...d, message: describePolicyDifference(d, env.branch) }));
  const finish = (next: string, hint?: string): EnvironmentPlan => {
    const acting = actions.some((a) => a.type === "promote" || a.type === "deploy" || a.type === "rollback");
    const blocked = !acting && !next.startsWith("up to date");
    const inProgress = acting || awaitingCommit || actions.some((a) => a.type === "run-gates") || o.gates?.state === "running";
    return {
      actions, report: { ...report, next, blocked, inProgress, ...(hint ? { hint } : {}) }, ...(requeueAfterMs !== undefined ? { requeueAfterMs } : {}),
      ...(policyProblem ? { blocked: { reason: policyProblem.reason, message: policyProblem.message, hint: policyProblem.hint } } : {}),
    };
  };

  if (o.lease) report.lease = o.lease;
  // Another controller holds the lease (or nobody yet): follow, never act.
  if (o.lease && o.lease.state !== "held") return follow(o.lease);

  // Health of the live release.
  let health = o.health;
  if (release && (!health || health.commit !== release)) {
    health = newRelease(release, o.now, false, env.health.length > 0);
    actions.push({ type: "record-health", state: health });
  }
  if (health) {
    const step = o.round ? recordRound(health, o.round, o.now, env) : pastDeadline(health, o.now, env);
    const checked = integrityStep(step.state);
    if (checked.state !== health) actions.push({ type: "record-health", state: checked.state, ...(step.event ? { event: step.event } : {}) });
    health = checked.state;
    integrityActions(health, checked.event);
    report.health = { phase: health.phase, description: describeHealth(health, env, o.now), checks: health.last?.results ?? [] };
    if (env.deploy && o.deployed === health.commit) report.integrity = integrityReport(health, env);
    if ((step.event === "failed" || step.event === "degraded") && env.rollback.automatic && release && !policyProblem) {
      if (health.rollback) return finish(`${short(release)} is failing after a rollback; not rolling back again: a person must look`);
      if (o.rollbackTarget) {
        actions.push({ type: "rollback", from: release, to: o.rollbackTarget, reason: `${short(release)} ${describeHealth(health, env, o.now)}` });
        requeueAfterMs = 0;
        return finish(`roll back to ${short(o.rollbackTarget)}`);
      }
      return finish(`${short(release)} is failing and there is no earlier healthy release to roll back to`);
    }
  }
  if (env.health.length && health?.phase === "progressing") requeueAfterMs = Math.min(o.healthIntervalMs, Math.max(0, health.since + env.progressDeadlineMs - o.now));

  if (policyProblem) return finish(`blocked: ${policyProblem.message}`, policyProblem.hint);
  // Trust on first use: from now on a config edit alone cannot point this environment at another branch.
  if (o.pinnedBranch === null) actions.push({ type: "pin-branch", branch: env.branch });

  // The live release follows the branch.
  if (env.deploy && o.head && o.deployed !== o.head) {
    actions.push({ type: "deploy", commit: o.head, release: o.headRelease ?? { hooks: env.deploy.hooks, checks: env.health.length > 0 } });
    requeueAfterMs = 0;
    return finish(`deploy ${short(o.head)}`);
  }

  // Promotion.
  const frozen = frozenDecision(o.freeze, env.name, o.now, o.healthIntervalMs);
  if (frozen) {
    requeueAfterMs = Math.min(requeueAfterMs ?? Infinity, frozen.requeueAfterMs);
    return finish(frozen.next, frozen.hint);
  }
  const waitingFor = o.target?.commit ?? null;
  if (!o.target) {
    if (o.proving?.waiting) {
      return finish(`${short(o.proving.waiting)} ${env.promotion === "approval" ? "is approved and " : ""}waits to become healthy in ${o.proving.environment} before it is promoted (healthyAfter)`);
    }
    if (o.proving && !o.proving.healthy && !(env.promotion === "approval" && o.approvals?.problem)) {
      return finish(`waiting for a commit to become healthy in ${o.proving.environment}: only a healthy release there is promoted to ${env.name}`);
    }
    if (env.promotion === "approval" && o.approvals) {
      if (o.approvals.problem) return finish(`no promotion: ${o.approvals.problem}`);
      const candidate = o.candidate && movable(o.candidateRelation) ? o.candidate : null;
      if (!candidate) return finish(o.candidate ? `up to date with ${o.fromBranch}` : `branch ${o.fromBranch} does not exist yet`);
      if (o.failed[candidate]) return finish(`${short(candidate)} was rolled back; it needs a new approval or a newer commit`, approveCommand(env.name, candidate));
      const have = o.approvals.byCommit[candidate] ?? 0;
      const cmd = approveCommand(env.name, candidate);
      const uncommitted = o.approvals.rejected.filter((r) => r.reason === "not-committed" && r.commit === candidate).length;
      if (o.gates?.state !== "failed" && uncommitted === 0) {
        actions.push({ type: "notify", event: "approval-needed", key: `${env.name}:${candidate}`, message: `${env.name}: ${short(candidate)} waits for approval (${have}/${env.approvals.required}); run: ${cmd}` });
      }
      gateAction(candidate);
      if (uncommitted > 0) {
        awaitingCommit = true;
        return finish(`${uncommitted} approval(s) of ${short(candidate)} written to ${STATE_FILE} but not committed yet (${have}/${env.approvals.required} valid): the controller commits ${uncommitted === 1 ? "it" : "them"} with the next batch, then promotes${gatesNote()}`, "if no controller is running: cascade-sync reconcile");
      }
      return finish(`waiting for approval of ${short(candidate)} (${have}/${env.approvals.required} valid)${gatesNote()}`, cmd);
    }
    if (o.candidate && o.failed[o.candidate]) return finish(`${short(o.candidate)} was rolled back; waiting for a newer commit on ${o.fromBranch}`);
    return finish(o.candidate ? `up to date with ${o.fromBranch}` : `branch ${o.fromBranch} does not exist yet`);
  }
  const target = waitingFor!;
  // Its config becomes the policy in force once promoted: one that would leave none is refused.
  if (o.target.problem) return finish(`not promoting ${short(target)}: ${o.target.problem.message}`, o.target.problem.hint);
  if (o.gates && o.gates.state !== "passed") {
    gateAction(target);
    if (o.gates.state === "failed") {
      const failedGate = o.gates.gates.find((g) => g.state === "failed");
      const msg = failedGate && "message" in failedGate ? failedGate.message : "";
      actions.push({ type: "notify", event: "gate-failed", key: `${env.name}:${target}:${failedGate?.name ?? ""}`, message: `${env.name}: gate ${failedGate?.name} failed on ${short(target)}: ${msg}` });
      return finish(`blocked: gate ${failedGate?.name} failed on ${short(target)}: ${msg}`, `fix it in the sandbox; the next commit on ${o.fromBranch} is tested again`);
    }
    return finish(`waiting for the gates on ${short(target)}${gatesNote()}`);
  }
  if (!o.window.open) {
    if (o.window.nextOpenAt !== undefined) requeueAfterMs = Math.min(requeueAfterMs ?? Infinity, Math.max(0, o.window.nextOpenAt - o.now));
    return finish(`waiting for a window: ${o.window.reason}`);
  }
  if (health?.phase === "progressing") return finish(`waiting for ${short(release)} to become healthy before promoting ${short(target)}`);
  const mode = o.target.relation === "diverged" ? (env.promotion === "approval" ? "reset" : "merge") : "fast-forward";
  // The release runs what the promoted commit's own config says (its hooks, its health checks).
  const released = o.target.release ?? { hooks: {}, checks: env.health.length > 0 };
  actions.push({ type: "promote", commit: target, mode, signers: [...new Set(o.target.approvals.map((a) => a.signer))], approvalIds: o.target.approvals.map((a) => a.id), release: released });
  if (env.deploy) actions.push({ type: "deploy", commit: target, release: released });
  requeueAfterMs = 0;
  return finish(`promote ${short(target)}${env.deploy ? " and deploy it" : ""}`);

  /**
   * The plan of a controller that does not hold the lease: nothing but pinning the branch; the report
   * shows the environment as its holder left it (the branches themselves are followed by the remote reconciler).
   */
  function follow(lease: LeaseView): EnvironmentPlan {
    if (!policyProblem && o.pinnedBranch === null) actions.push({ type: "pin-branch", branch: env.branch });
    const held = lease.holderState;
    // What the holder proved and rolled back counts here too: for the next environment's candidates, and after a takeover.
    const healthy = (held?.healthy ?? []).filter((c) => !o.known?.healthy.includes(c));
    const failed = (held?.failed ?? []).filter((c) => !o.failed[c]);
    if (lease.holder && (healthy.length || failed.length)) actions.push({ type: "adopt-holder-record", healthy, failed, holder: describeHolder(lease.holder) });
    const holder = lease.holder ? `${describeHolder(lease.holder)}, which holds ${env.name}'s lease until ${lease.until}` : undefined;
    let next: string;
    if (lease.state === "other") next = `following ${holder}${held?.next ? `; it says: ${held.next}` : ""}`;
    else if (lease.state === "excluded") next = `not acting: this machine (${lease.me}) is not in ${env.name}'s runsOn (${(lease.runsOn ?? []).join(", ")})${holder ? `; following ${holder}` : "; no controller holds the lease now"}`;
    else if (lease.state === "free") next = `${env.name}'s lease is free: this controller takes it, then acts${lease.problem ? ` (${lease.problem})` : ""}`;
    else next = `not acting until ${env.name}'s lease on the remote has been read${lease.problem ? `: ${lease.problem}` : ""}`;
    // Without a policy in force no lease is taken: that, not the lease, is what a person must fix.
    if (policyProblem && lease.state !== "other") next = `blocked: ${policyProblem.message}`;
    const shown: EnvironmentReport = {
      ...report, next, blocked: false, inProgress: false,
      ...(held ? { deployed: held.deployed, health: held.health ? { phase: held.health.split(":")[0] ?? "unknown", description: held.health, checks: [] } : null } : {}),
    };
    return {
      actions, report: shown,
      ...(policyProblem ? { blocked: { reason: policyProblem.reason, message: policyProblem.message, hint: policyProblem.hint } } : {}),
    };
  }
  /** The health state with this pass's verification recorded (drift is reported and repaired, never a failed check). */
  function integrityStep(s: HealthState): { state: HealthState; event?: IntegrityEvent } {
    const i = o.integrity;
    if (!env.deploy || !i || i.commit !== s.commit) return { state: s };
    return recordIntegrity(s, "error" in i ? { error: i.error } : i, o.now);
  }
  /** A manifest to write, drift to report (once per episode) and, with selfHeal, a release to restore. */
  function integrityActions(s: HealthState, event: IntegrityEvent | undefined): void {
    const i = o.integrity;
    if (!env.deploy || !i || i.commit !== s.commit || "error" in i) return;
    if (i.rebuilt) actions.push({ type: "write-manifest", commit: i.commit, why: i.rebuilt.why });
    if (event === "drift-detected" && s.integrity?.drift) {
      const { since, ...drift } = s.integrity.drift;
      actions.push({ type: "report-drift", commit: i.commit, drift, since });
    }
    if (!isIntact(i.drift) && env.deploy.selfHeal) actions.push({ type: "repair-release", commit: i.commit, drift: i.drift });
  }
  function gateAction(commit: string): void {
    const g = o.gates;
    if (g && g.commit === commit && g.state === "pending") actions.push({ type: "run-gates", commit });
  }
  function gatesNote(): string {
    if (!o.gates) return "";
    return `; gates: ${o.gates.gates.map((g) => `${g.name} ${g.state}`).join(", ")}`;
  }
}

/** The integrity line of the report, from the stored state of the live release. */
function integrityReport(h: HealthState, env: EnvironmentSpec): IntegrityReport {
  const i = h.integrity;
  const state = i?.drift ? "drifted" : i?.entries !== undefined ? "intact" : "unverified";
  const drift = i?.drift ? (({ since: _since, ...d }) => d)(i.drift) : undefined;
  return {
    commit: h.commit, state, description: describeIntegrity(i), selfHeal: env.deploy?.selfHeal ?? true,
    ...(drift ? { drift } : {}), ...(i ? { verifiedAt: new Date(i.at).toISOString() } : {}),
  };
}

/** Verifies the live release; read-only (a rebuilt manifest is returned for apply to write). Errors are values. */
async function observeIntegrity(ctx: ReconcileContext, directory: string, commit: string): Promise<IntegrityObservation> {
  try {
    const v = await verifyReleaseIntegrity(ctx.repo, directory, commit);
    return { commit, drift: v.drift, entries: v.entries, durationMs: v.durationMs, ...(v.rebuilt ? { rebuilt: v.rebuilt } : {}) };
  } catch (err) {
    return { commit, error: err instanceof CascadeError ? `${err.reason}: ${err.message}` : err instanceof Error ? err.message : String(err) };
  }
}

function reportApprovals(a: NonNullable<EnvironmentObserved["approvals"]>): NonNullable<EnvironmentReport["approvals"]> {
  const { byCommit: _byCommit, ...report } = a;
  return report;
}

/** The command that approves `commit` for `environment` (shown in status, plan and notifications). */
export function approveCommand(environment: string, commit: string): string {
  return `cascade-sync approve ${environment} ${commit} --key ~/.ssh/id_ed25519`;
}

/** True when the environment can move to a commit in this relation (it is not there yet). */
function movable(r: Relation): boolean {
  return r === "create" || r === "fast-forward" || r === "diverged";
}

async function relate(ctx: ReconcileContext, commit: string | null, head: string | null): Promise<Relation> {
  if (!commit) return "none";
  if (!head) return "create";
  if (await ctx.repo.isAncestor(commit, head)) return "contained";
  if (await ctx.repo.isAncestor(head, commit)) return "fast-forward";
  return "diverged";
}

/**
 * Reads the approvals that can count for `env`: entries committed on the sandbox branch, checked
 * against the signers of the policy in force (`env`, read from the config committed on the
 * environment's own branch, so a sandbox edit of the signers cannot approve itself), and the working
 * copy's extra entries (not committed).
 */
async function observeApprovals(ctx: ReconcileContext, desired: Config, env: EnvironmentSpec, head: string | null, candidate: string | null): Promise<NonNullable<EnvironmentObserved["approvals"]>> {
  const stateFile = join(desired.dir, STATE_FILE);
  const sandboxHead = await ctx.repo.branchHead(desired.sandbox.branch);
  const committedText = sandboxHead ? await ctx.repo.fileAt(sandboxHead, STATE_FILE) : null;
  const committedParse = committedText ? parseStateFile(committedText.toString("utf8"), stateFile) : { entries: [], problems: [] };
  const committed: ParsedEntry[] = committedParse.entries;
  const workingText = await readFile(stateFile, "utf8").catch(() => null);
  const working: ParsedEntry[] = workingText !== null ? parseStateFile(workingText, stateFile).entries : [];

  // The policy in force: `env.approvals` was read from the config committed on the environment's branch.
  const signers = env.approvals.signers;
  const signersFrom = `${CONFIG_FILE} on branch ${env.branch}`;
  const problem = signers.length ? undefined : `no signers for ${env.name} in the ${CONFIG_FILE} committed on branch ${env.branch}: add approvals.signers, and have it promoted (at init, the config is committed to every branch)`;

  const commits = new Set<string>();
  for (const e of [...committed, ...working]) {
    const c = e.ok ? e.approval.commit : e.fields.commit;
    if (typeof c === "string" && /^[0-9a-f]{40}$/.test(c)) commits.add(c);
  }
  const classes = new Map<string, "eligible" | "promoted" | "unknown">();
  for (const c of commits) classes.set(c, await classify(ctx, c, head, candidate));
  const approvalEnvironments = Object.values(desired.environments).filter((e) => e.promotion === "approval").map((e) => e.name);
  const evaluation = evaluateApprovals({ environment: env.name, approvalEnvironments, signers, committed, working, classifyCommit: (c) => classes.get(c) ?? "unknown", now: ctx.clock.now() });
  const byCommit: Record<string, number> = {};
  for (const [c, list] of approvalsByCommit(evaluation.valid)) byCommit[c] = list.length;
  const fileProblems = [
    ...committedParse.problems.map((p) => `${formatProblem(p)} (in the committed ${STATE_FILE})`),
    ...(evaluation.signerProblems ?? []).map((p) => `approvals.signers[${p.index}] on branch ${env.branch}: ${p.message}`),
  ];
  return {
    required: env.approvals.required, signersFrom, signers: signers.length, valid: evaluation.valid, rejected: evaluation.rejected, byCommit,
    ...(problem ? { problem } : {}), ...(fileProblems.length ? { fileProblems } : {}),
  };
}

async function classify(ctx: ReconcileContext, commit: string, head: string | null, candidate: string | null): Promise<"eligible" | "promoted" | "unknown"> {
  if (!(await ctx.repo.hasObject(commit))) return "unknown";
  try {
    if (head && (await ctx.repo.isAncestor(commit, head))) return "promoted";
    if (candidate && (await ctx.repo.isAncestor(commit, candidate))) return "eligible";
  } catch {
    // Not a commit (a blob or tree id): it cannot be promoted.
  }
  return "unknown";
}

/**
 * The newest commit with enough valid approvals that the environment can move to: reachable from
 * the from-branch, not yet in the environment, and not rolled back (unless approved anew since).
 */
async function approvedTarget(
  ctx: ReconcileContext,
  approvals: NonNullable<EnvironmentObserved["approvals"]>,
  required: number,
  failed: Record<string, { approvals: string[] }>,
  head: string | null,
): Promise<EnvironmentObserved["target"]> {
  if (approvals.problem) return null;
  const ready: { commit: string; approvals: ValidApproval[]; time: number }[] = [];
  for (const [commit, list] of approvalsByCommit(approvals.valid)) {
    const counted = failed[commit] ? list.filter((a) => !failed[commit]!.approvals.includes(a.id)) : list;
    if (counted.length < required) continue;
    const c = await ctx.repo.readCommit(commit);
    ready.push({ commit, approvals: counted, time: c.committer.timestamp });
  }
  ready.sort((a, b) => b.time - a.time);
  const best = ready[0];
  if (!best) return null;
  return { commit: best.commit, relation: await relate(ctx, best.commit, head), approvals: best.approvals };
}

/**
 * The newest commit that became healthy in `environment` (and was not rolled back there) and is still
 * on its branch (`branchHead` or an ancestor of it); null when there is none yet.
 */
async function provenCommit(ctx: ReconcileContext, environment: string, branchHead: string | null): Promise<string | null> {
  if (!branchHead) return null;
  const rec = ctx.pipeline!.store.get(environment);
  for (const c of [...rec.healthy].reverse()) {
    if (rec.failed[c]) continue;
    if (c === branchHead) return c;
    try {
      if (await ctx.repo.isAncestor(c, branchHead)) return c;
    } catch {
      // A commit no longer in the repository: not a candidate.
    }
  }
  return null;
}

/**
 * The lease reconciler's reader: whether `name` has a policy in force (the config committed on its
 * branch, which the sandbox's .git/config pins) and the runsOn it states. runsOn is read from there,
 * not from the sandbox's copy, so that every controller of a team judges who may hold the lease by
 * the same committed text, and a change of who may deploy an environment is itself promoted (and,
 * for production, approved) before it counts.
 */
export const readLeasePolicy: PolicyReader = async (ctx, desired, name) => {
  const sandboxEnv = Object.hasOwn(desired.environments, name) ? desired.environments[name] : undefined;
  if (!sandboxEnv) return { ok: false };
  const pinned = await ctx.repo.getConfig(pinKey(name));
  if (pinned !== undefined && pinned !== sandboxEnv.branch) return { ok: false };
  const head = await ctx.repo.branchHead(sandboxEnv.branch);
  if (!head) return { ok: false };
  const t = await trustedSpecAt(ctx, desired, name, sandboxEnv.branch, head, "head");
  return t.ok ? { ok: true, ...(t.env.runsOn ? { runsOn: t.env.runsOn } : {}) } : { ok: false };
};

/** Why an environment has no policy in force, or why a commit's config cannot become it. */
export interface PolicyProblem {
  reason: "EnvironmentBranchMissing" | "EnvironmentBranchChanged" | "PolicyMissing" | "PolicyUnreadable" | "PolicyInvalid" | "PolicyWithoutEnvironment" | "PolicyBranchMismatch";
  message: string;
  hint: string;
}

/** An environment's spec as a commit's config states it, with `from` resolved in that same config; or why there is none. */
type TrustedSpec = ({ ok: true } & PolicyView) | { ok: false; problem: PolicyProblem };

/**
 * Parsed configs by commit, per sandbox config in force (a commit's config never changes, but what its
 * ${VAR}s read does when the sandbox's config or .env is reloaded); a few are enough: head, live release, target.
 */
const configsByDesired = new WeakMap<Config, Map<string, LoadResult | null>>();
const CONFIG_CACHE_SIZE = 32;

/** The config committed in `commit` (null when it has none, `unreadable` when its tree cannot be read), parsed as the sandbox's would be; cached per commit. */
async function configAt(ctx: ReconcileContext, desired: Config, commit: string): Promise<LoadResult | null | { unreadable: string }> {
  const configsByCommit = configsByDesired.get(desired) ?? new Map<string, LoadResult | null>();
  configsByDesired.set(desired, configsByCommit);
  const key = commit;
  if (configsByCommit.has(key)) return configsByCommit.get(key)!;
  let text: Buffer | null;
  try {
    text = await ctx.repo.fileAt(commit, CONFIG_FILE);
  } catch (err) {
    // A tree git itself would not check out (e.g. a ".GIT" entry): no policy can come from it. Not cached: it may be an I/O error.
    return { unreadable: err instanceof CascadeError ? `${err.reason}: ${err.message}` : err instanceof Error ? err.message : String(err) };
  }
  const loaded = text ? await parseCommitConfig(text.toString("utf8"), desired.dir, ctx.pipeline!.source) : null;
  if (configsByCommit.size >= CONFIG_CACHE_SIZE) configsByCommit.delete(configsByCommit.keys().next().value!);
  configsByCommit.set(key, loaded);
  return loaded;
}

/**
 * Environment `name` as the config committed in `commit` states it, when that config is valid and keeps
 * `name` on `branch`. `role` says what the commit is, for the messages: the head of the environment's
 * branch (its policy in force) or a candidate to promote (whose config becomes the policy in force).
 */
async function trustedSpecAt(ctx: ReconcileContext, desired: Config, name: string, branch: string, commit: string, role: "head" | "candidate"): Promise<TrustedSpec> {
  const loaded = await configAt(ctx, desired, commit);
  const where = role === "head" ? `the ${CONFIG_FILE} committed on branch ${branch} (${commit.slice(0, 7)})` : `the ${CONFIG_FILE} of ${commit.slice(0, 7)}`;
  const outcome = role === "head"
    ? `so ${name} has no policy in force: nothing is promoted into it or deployed`
    : `and promoted it would leave ${name} without a policy in force`;
  const hint = role === "head"
    ? `a person who may change ${name}'s policy commits a valid ${CONFIG_FILE} (with environments.${name} on branch ${branch}) onto branch ${branch}; the sandbox's copy is never used for ${name}`
    : `fix ${CONFIG_FILE} in the sandbox; the next commit on the branch ${name} is promoted from is considered again`;
  const fail = (reason: PolicyProblem["reason"], what: string): TrustedSpec => ({ ok: false, problem: { reason, message: `${what}, ${outcome}`, hint } });
  if (loaded && "unreadable" in loaded) return fail("PolicyUnreadable", `${where} cannot be read (${loaded.unreadable})`);
  if (!loaded) return fail("PolicyMissing", role === "head" ? `branch ${branch} has no committed ${CONFIG_FILE} (at ${commit.slice(0, 7)})` : `${commit.slice(0, 7)} has no ${CONFIG_FILE}`);
  if (!loaded.ok) {
    const errors = loaded.problems.filter((p) => p.severity === "error");
    const shown = errors.slice(0, 3).map((p) => formatProblem({ ...p, file: `${commit.slice(0, 7)}:${CONFIG_FILE}` })).join("; ");
    return fail("PolicyInvalid", `${where} is not valid (${shown}${errors.length > 3 ? `; ${errors.length - 3} more` : ""})`);
  }
  const env = Object.hasOwn(loaded.config.environments, name) ? loaded.config.environments[name]! : undefined;
  if (!env) return fail("PolicyWithoutEnvironment", `${where} has no environment ${name}`);
  if (env.branch !== branch) return fail("PolicyBranchMismatch", `${where} puts ${name} on branch ${env.branch}, not ${branch}`);
  const fromEnvironment = Object.hasOwn(loaded.config.environments, env.from) ? env.from : undefined;
  return { ok: true, env, fromBranch: fromBranchOf(loaded.config, env), ...(fromEnvironment ? { fromEnvironment } : {}) };
}

/** The release settings (hooks, health) of `commit` for environment `name`, when its config is valid and has the environment. */
async function releaseSpecAt(ctx: ReconcileContext, desired: Config, name: string, commit: string): Promise<EnvironmentSpec | undefined> {
  const loaded = await configAt(ctx, desired, commit);
  return loaded && "ok" in loaded && loaded.ok && Object.hasOwn(loaded.config.environments, name) ? loaded.config.environments[name] : undefined;
}

/** What a promotion target deploys with (its own config's hooks), or why its config cannot become the policy in force. */
async function releaseOf(ctx: ReconcileContext, desired: Config, name: string, branch: string, commit: string): Promise<{ release: ReleaseSettings } | { problem: PolicyProblem }> {
  const t = await trustedSpecAt(ctx, desired, name, branch, commit, "candidate");
  return t.ok ? { release: releaseSettings(t.env) } : { problem: t.problem };
}

/** The release settings a commit's own environment spec states. */
function releaseSettings(env: EnvironmentSpec): ReleaseSettings {
  return { hooks: env.deploy?.hooks ?? {}, checks: env.health.length > 0 };
}

/** The problem of an environment whose branch does not exist here: its trust root is missing, and it is never invented. */
function missingBranch(name: string, branch: string): PolicyProblem {
  return {
    reason: "EnvironmentBranchMissing",
    message: `branch ${branch} does not exist in this repository, so ${name} has no policy in force (the config committed on that branch): nothing is promoted into it or deployed, and the branch is not created from a candidate`,
    hint: `fetch it from the team's remote (git fetch origin ${branch}:${branch}), or run \`cascade-sync init\` to create the pipeline's branches`,
  };
}

/**
 * Where the environment deploys: `deploy.directory`, `keep` and `selfHeal` from the sandbox's config
 * (a place on this machine; it changes where approved content goes, never what), or the policy in
 * force's when the sandbox has none; `hooks` only from the policy in force (the head's own config).
 */
function deploySettings(sandbox: EnvironmentSpec, inForce: EnvironmentSpec | undefined): EnvironmentSpec["deploy"] {
  const where = sandbox.deploy ?? inForce?.deploy;
  if (!where) return undefined;
  return { ...where, hooks: inForce?.deploy?.hooks ?? {} };
}

/**
 * The spec the environment runs on: name and branch from the sandbox (they locate the trust root),
 * policy from the config in force on the branch (the sandbox's only when there is none, and then
 * nothing is promoted or deployed), health checks and their rules from the live release's config.
 */
function effectiveSpec(sandbox: EnvironmentSpec, inForce: EnvironmentSpec | undefined, release: EnvironmentSpec | undefined, deploy: EnvironmentSpec["deploy"]): EnvironmentSpec {
  const { deploy: _deploy, ...policy } = inForce ?? sandbox;
  return {
    ...policy,
    name: sandbox.name,
    branch: sandbox.branch,
    // No trusted config for the live release: no commands run for it (never the sandbox's).
    health: release?.health ?? [],
    healthyAfter: release?.healthyAfter ?? policy.healthyAfter,
    failureThreshold: release?.failureThreshold ?? policy.failureThreshold,
    progressDeadlineMs: release?.progressDeadlineMs ?? policy.progressDeadlineMs,
    ...(deploy ? { deploy } : {}),
  };
}

/** The git config key that pins environment `name`'s branch (in the sandbox's .git/config, which no push can change). */
export function pinKey(name: string): string {
  return `cascade-sync.${name}.branch`;
}

/** The problem of a sandbox config that points an environment at another branch than the pinned one. */
function branchChanged(name: string, pinned: string, branch: string): PolicyProblem {
  return {
    reason: "EnvironmentBranchChanged",
    message: `the sandbox's config puts ${name} on branch ${branch}, but ${name}'s branch is ${pinned} (pinned when cascade-sync first ran it): an environment's branch holds its policy in force, so an edit of the config alone does not move it`,
    hint: `if the move is intended, a person who may change ${name}'s policy runs in the sandbox: git config ${pinKey(name)} ${branch}; otherwise put branch: ${pinned} back under environments.${name}`,
  };
}
