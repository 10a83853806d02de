import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { beginIntegration, changedPaths, editedPaths, finishIntegration, pendingIntegration, type IntegrationSandbox } from "../src/git/integrate.js";
import { commitTree, GitError, mergeWinning } from "../src/git/native/index.js";
import { gitRepoOf } from "./sandbox.js";
import { fetchBranch, pushBranch, remoteBranchTips } from "../src/git/transport.js";
import { branchRef } from "../src/git/repo.js";
import { RefConflictError } from "../src/git/native/failure.js";
import { leaseRole, leaseView, pushUnderLease } from "../src/pipeline/lease.js";
import { CascadeError, stalled, toCascadeError, transient } from "../src/errors.js";
import { mapLimit } from "../src/concurrency.js";
import { RACE_REASONS } from "../src/backoff.js";
import { assertSafeTree, linkOnTheWay } from "../src/pipeline/materialize.js";
import type { Config, RemoteSpec } from "../src/config/types.js";
import type { Plan, Reconciler, ReconcileContext, Result } from "../src/reconcile.js";


/** How the local branch relates to the remote's. */
export type Relation = "in-sync" | "remote-empty" | "ahead" | "behind" | "diverged";

export interface RemoteObserved {
  remote: RemoteSpec;
  /** The branch checked out in the sandbox: remote commits are brought into the files only on the sandbox branch. */
  checkedOut: string | null;
  local: string | null;
  remoteTip: string | null;
  relation: Relation;
  base: string | null;
  /** Each environment branch: the local commit, the remote's, and what keeps them in step safely. */
  environments: EnvironmentBranchSync[];
}

/**
 * How one environment branch is kept in step with one remote. The rule behind every choice: a
 * remote's environment branch only moves to a commit that passed that environment's promotion here
 * (a `promote:` or `rollback:` entry in the local branch's reflog), and a local environment branch
 * that cannot be pushed follows the first remote's instead of overwriting it.
 * - `none`: nothing to do (`note` may say why a push was left out);
 * - `push`: the remote lacks the branch (created there), or the local commit was promoted here and
 *   the remote's is an ancestor of it (a fast-forward);
 * - `force`: the remote holds a commit this controller moved the environment away from (a rollback,
 *   or a head superseded by an approved commit) and the local commit was promoted or rolled back to
 *   here; pushed only while the remote still holds exactly `remote` (checked again just before);
 * - `follow`: the first remote's branch is not behind a promoted local commit (the local one is
 *   missing, behind, diverged, or was never promoted here): the local branch moves to the remote's,
 *   whose objects observe fetched; a local commit that is not in the remote's history stays
 *   reachable under `refs/cascade-sync/replaced/<environment>/<commit>`;
 * - `blocked`: neither is safe; a person must look (`reason` and `message` say why); or (`kind`
 *   Transient) the branch could not be observed on the remote (listed or fetched): looked at again
 *   on the next pass, while the sandbox branch syncs.
 */
export interface EnvironmentBranchSync {
  environment: string;
  branch: string;
  local: string | null;
  remote: string | null;
  action: "none" | "push" | "force" | "follow" | "blocked";
  /** Why a push was left out (action none), or why nothing is safe (action blocked). */
  note?: string;
  /** follow: the local commit is not in the remote's history; keep it reachable. */
  keep?: boolean;
  reason?: string;
  hint?: string;
  /** For `blocked`: Stalled (default: a person must act) or Transient (it could not be observed; retried). */
  kind?: "Stalled" | "Transient";
}

export type RemoteAction =
  | { type: "fast-forward"; to: string }
  | { type: "merge"; theirs: string; base: string | null }
  | { type: "push"; commit: string }
  | { type: "push-environment"; environment: string; branch: string; commit: string; force: boolean; expected: string | null }
  | { type: "follow-environment"; environment: string; branch: string; from: string | null; to: string; keep: boolean };

/**
 * branch <-> one remote: fetches the sandbox branch (on every pass, so also before each push),
 * brings commits made elsewhere into the sandbox (fast-forward, or a merge where the sandbox wins
 * every path changed on both sides), then pushes as a fast-forward; never force-pushes it.
 * Environment branches are kept in step by planEnvironmentBranch: a remote's environment branch
 * moves only to a commit that passed the environment's promotion here, and is overwritten only
 * where this controller rolled it back; otherwise the local branch follows the first remote's.
 */
export function remoteReconciler(remoteName: string): Reconciler<RemoteObserved, RemoteAction> {
  const find = (desired: Config) => {
    const r = desired.remotes.find((x) => x.name === remoteName);
    if (!r) throw transient("RemoteRemoved", `remote ${remoteName} is no longer configured`);
    return r;
  };
  // Passes in a row that the remote's commits waited for sandbox edits (see integrate).
  const postponed: { since?: number } = {};
  return {
    name: `remote:${remoteName}`,

    async observe(ctx, desired) {
      const remote = find(desired);
      const branch = desired.sandbox.branch;
      const who = await ctx.who();
      const remoteTip = await counted((ok) => ctx.metrics.fetched(remoteName, ok), () => fetchBranch(ctx.repo, remote, branch, { ...transportCap(ctx), who }));
      const local = await ctx.repo.branchHead(branch);
      const at = new Date(ctx.clock.now()).toISOString();
      let relation: Relation;
      let base: string | null = null;
      if (!remoteTip) relation = "remote-empty";
      else if (!local || remoteTip === local) relation = "in-sync";
      else if (await ctx.repo.isAncestor(remoteTip, local)) relation = "ahead";
      else if (await ctx.repo.isAncestor(local, remoteTip)) relation = "behind";
      else {
        relation = "diverged";
        base = await ctx.repo.mergeBase(local, remoteTip);
      }
      ctx.state.remotes[remoteName] = { ...ctx.state.remotes[remoteName], lastFetch: { commit: remoteTip, at }, relation };
      return { remote, checkedOut: await ctx.repo.currentBranch(), local, remoteTip, relation, base, environments: await observeEnvironmentBranches(ctx, desired, remote) };
    },

    plan(desired, o): Plan<RemoteAction> {
      const sync = planSync(desired, o);
      const envActions: RemoteAction[] = [];
      for (const e of o.environments) {
        if (e.action === "push" || e.action === "force") envActions.push({ type: "push-environment", environment: e.environment, branch: e.branch, commit: e.local!, force: e.action === "force", expected: e.remote });
        if (e.action === "follow") {
          envActions.push({ type: "follow-environment", environment: e.environment, branch: e.branch, from: e.local, to: e.remote!, keep: e.keep === true });
        }
      }
      const stuck = o.environments.find((e) => e.action === "blocked");
      const blocked = sync.blocked ?? (stuck ? { reason: stuck.reason!, message: stuck.note!, ...(stuck.hint ? { hint: stuck.hint } : {}) } : undefined);
      return { actions: withoutPushesWhenPaused(o.remote, [...sync.actions, ...envActions]), ...(blocked ? { blocked } : {}) };
    },

    async apply(ctx, desired, plan, o): Promise<Result> {
      const branch = desired.sandbox.branch;
      const done: string[] = [];
      let head = o.local;
      if (!plan.actions.some((a) => a.type === "fast-forward" || a.type === "merge")) delete postponed.since;
      // What keeps each environment's branch from being in step here: blocked in observe, or failed below.
      const envProblems = new Map<string, CascadeError>();
      for (const e of o.environments) if (e.action === "blocked") envProblems.set(e.environment, (e.kind === "Transient" ? transient : stalled)(e.reason!, e.note!, e.hint));
      for (const action of plan.actions) {
        if (action.type === "follow-environment" || action.type === "push-environment") {
          // An environment branch that cannot be moved is that environment's problem: it never fails (or delays) the sandbox branch's sync (issue 15).
          try {
            done.push(action.type === "follow-environment" ? await followEnvironment(ctx, remoteName, action) : await pushEnvironment(ctx, o.remote, action));
          } catch (err) {
            const e = toCascadeError(err);
            envProblems.set(action.environment, e);
            ctx.log[e.kind === "Stalled" ? "error" : "warn"](`${action.environment}: ${e.message}`, { remote: remoteName, environment: action.environment, reason: e.reason });
          }
        } else if (action.type === "push") {
          if (!head) break;
          const who = await ctx.who();
          const tip = head;
          // The first push of a run may carry the whole history: show how it goes.
          const progress = ctx.state.remotes[remoteName]?.lastPush ? undefined : ctx.progress(`pushing ${branch} to ${remoteName}`, "objects");
          try {
            await counted((ok) => ctx.metrics.pushed(remoteName, ok), () => pushBranch(ctx.repo, o.remote, branch, tip, { ...transportCap(ctx), who, ...(progress ? { onProgress: (n, total) => progress.update(n, total) } : {}) }));
            progress?.end();
          } catch (err) {
            progress?.end("failed");
            throw err;
          }
          ctx.state.remotes[remoteName] = { ...ctx.state.remotes[remoteName], lastPush: { commit: head, at: new Date(ctx.clock.now()).toISOString() }, relation: "in-sync" };
          ctx.log.info(`pushed ${branch} ${head.slice(0, 7)} to ${remoteName}`, { remote: remoteName, commit: head });
          done.push(`pushed ${head.slice(0, 7)}`);
        } else {
          const moved = await ctx.exclusive(() => integrate(ctx, branch, o.local!, action, postponed, desired));
          if (moved === null) return { requeueAfterMs: desired.sandbox.debounceMs, summary: `waiting for edits to files ${remoteName} changed to be committed first` };
          head = moved;
          done.push(action.type === "merge" ? `merged ${remoteName}/${branch}` : `fast-forwarded to ${action.to.slice(0, 7)}`);
        }
      }
      const syncBlocked = planSync(desired, o).blocked;
      // Only the sandbox branch's own block fails the pass: an environment branch a person must look at never delays its sync (issue 15).
      if (syncBlocked) throw stalled(syncBlocked.reason, syncBlocked.message, syncBlocked.hint);
      noteEnvironmentProblems(ctx, remoteName, o, envProblems);
      const problem = envProblems.values().next().value;
      for (const e of o.environments) if (e.action === "none" && e.note) done.push(e.note);
      if (o.remote.paused) done.push(pausedNote(o));
      // An environment branch that lost a race (another push got there first) is looked at again soon, as a failed pass's race would be.
      const race = [...envProblems.values()].some((e) => RACE_REASONS.has(e.reason));
      return { requeueAfterMs: race ? Math.min(desired.intervals.fetchMs, desired.retry.initialMs) : desired.intervals.fetchMs, summary: done.join(", ") || "in sync", ...(problem ? { problem } : {}) };
    },

    describe(a) {
      if (a.type === "push-environment") return `push ${a.branch} ${a.commit.slice(0, 7)} to ${remoteName}${a.force ? " (moving it back after a rollback)" : ""}`;
      if (a.type === "follow-environment") return `fetch ${a.branch} from ${remoteName} and move the local ${a.branch} ${a.from ? `from ${a.from.slice(0, 7)} ` : ""}to ${a.to.slice(0, 7)} (${remoteName}'s; never overwritten from here)`;
      if (a.type === "push") return `push ${a.commit === "(merge)" ? "the merge commit" : a.commit.slice(0, 7)} to ${remoteName}`;
      if (a.type === "fast-forward") return `fast-forward to ${remoteName}'s ${a.to.slice(0, 7)} and update the sandbox's files`;
      return `merge ${remoteName}'s ${a.theirs.slice(0, 7)} (the sandbox wins paths changed on both sides) and update the sandbox's files`;
    },
  };

  /** Keeping the sandbox branch in sync with the remote, both ways. */
  function planSync(desired: Config, o: RemoteObserved): Plan<RemoteAction> {
    if (!o.local) return { actions: [] };
    const branch = desired.sandbox.branch;
    if ((o.relation === "behind" || o.relation === "diverged") && o.checkedOut !== branch) {
      return {
        actions: [],
        blocked: {
          reason: "WrongBranch",
          message: `${remoteName} has new commits on ${branch}, but the sandbox has ${o.checkedOut ? `branch ${o.checkedOut}` : "a detached HEAD"} checked out, so they cannot be brought into its files`,
          hint: `run \`git checkout ${branch}\` in the sandbox`,
        },
      };
    }
    switch (o.relation) {
      case "in-sync":
        return { actions: [] };
      case "remote-empty":
      case "ahead":
        return { actions: [{ type: "push", commit: o.local }] };
      case "behind":
        return { actions: [{ type: "fast-forward", to: o.remoteTip! }] };
      case "diverged":
        return { actions: [{ type: "merge", theirs: o.remoteTip!, base: o.base }, { type: "push", commit: "(merge)" }] };
    }
  }
}


/** The sandbox as an integration addresses it. */
function integrationSandbox(ctx: Pick<ReconcileContext, "repo">): IntegrationSandbox {
  return { dir: ctx.repo.dir, gitdir: ctx.repo.gitdir, git: gitRepoOf(ctx.repo), policy: ctx.repo.policy };
}

/**
 * Finishes an integration a crash interrupted (see src/git/integrate.ts): the branch already names (or is
 * moved to) the remote's commit, and every file still holding the old version catches up, so the next
 * sandbox commit can never take a half-written merge for sandbox edits. Run before anything commits the
 * sandbox (the controller's start and the `reconcile` command) and before each integration.
 */
export async function resumeIntegration(ctx: Pick<ReconcileContext, "repo" | "log" | "hint">): Promise<void> {
  const pending = await pendingIntegration(ctx.repo.gitdir);
  if (!pending) return;
  const done = await finishIntegration(integrationSandbox(ctx), pending);
  if (!done) {
    ctx.log.warn(`an interrupted integration of ${pending.to.slice(0, 7)} was dropped: ${pending.ref} moved elsewhere meanwhile`, { commit: pending.to });
    return;
  }
  for (const p of done.skipped) ctx.hint(p);
  ctx.log.info(`finished an interrupted integration (${pending.message}): ${done.written.length} path(s) brought up to date${done.skipped.length ? `, ${done.skipped.length} left as edited (the sandbox wins)` : ""}`, { commit: pending.to });
}

/**
 * Brings the remote's commits into the local branch and the sandbox's files, crash-safe (see
 * src/git/integrate.ts): the merge is computed by git without touching the work tree (the sandbox wins per
 * hunk), a journal is written, the branch moves, then the files follow one by one, a file being edited
 * never overwritten. When files the remote changed hold uncommitted edits, the integration waits for the
 * sandbox to commit them (at most a batch window and a debounce, by when a batch is committed however busy), so the merge keeps both sides' hunks instead of the
 * edit later replacing the remote's whole file. Returns the new head, or null when it waits.
 */
async function integrate(ctx: ReconcileContext, branch: string, local: string, action: Extract<RemoteAction, { type: "fast-forward" | "merge" }>, postponed: { since?: number }, desired: Config): Promise<string | null> {
  await resumeIntegration(ctx);
  const current = await ctx.repo.branchHead(branch);
  if (current !== local) throw transient("BranchMoved", `${branch} moved while integrating remote commits; looking again`);
  const sandbox = integrationSandbox(ctx);
  const git = sandbox.git;
  const who = await ctx.who();
  let target: string;
  let message: string;
  if (action.type === "fast-forward") {
    target = action.to;
    message = `fast-forward: ${branch} to ${action.to.slice(0, 7)}`;
  } else {
    const merged = await mergeWinning(git, local, action.theirs, { scratch: join(ctx.repo.gitdir, "cascade-sync"), perFile: (p) => ctx.repo.policy.isEncrypted(p) });
    const hunks = merged.settled.filter((s) => s.how === "hunks").length;
    const files = merged.settled.length - hunks;
    const body = merged.settled.length ? `\nBoth sides changed ${merged.settled.length} path(s): ${hunks} merged per hunk (the sandbox's lines where they overlap), ${files} taken whole from the sandbox.\n` : "";
    target = await commitTree(git, {
      tree: merged.tree,
      parents: [local, action.theirs],
      message: `merge: remote commits into ${branch} (the sandbox wins where both sides changed the same lines)\n${body}`,
      author: { name: who.name, email: who.email, date: `@${who.timestamp} ${gitOffset(who.timezoneOffset)}` },
    });
    message = `merge: ${action.theirs.slice(0, 7)} into ${branch}`;
  }
  const targetTree = await ctx.repo.commitTree(target);
  // A remote commit is hostile input: nothing of it is written unless every path is safe.
  await assertSafeTree(ctx.repo, targetTree, "the sandbox");
  const diff = await changedPaths(git, local, target);
  const through = (await mapLimit(diff, 8, async (d) => ((await linkOnTheWay(ctx.repo.dir, d.path)) !== undefined ? d.path : undefined))).filter((p) => p !== undefined);
  if (through.length) {
    throw stalled("UnsafePath", `remote commit ${target.slice(0, 7)} would write ${through.slice(0, 5).map((p) => JSON.stringify(p)).join(", ")}${through.length > 5 ? ` (and ${through.length - 5} more)` : ""} through a symlink or file in the sandbox; nothing was written`,
      "look at that commit and at the sandbox's symlinks; replace the symlink by a folder (or fix the commit on the remote)");
  }
  // An encrypted blob this sandbox's key cannot decrypt is held by the catch-up (not written); the rest goes on.
  const edited = await editedPaths(sandbox, diff);
  const now = ctx.clock.now();
  if (edited.length && (postponed.since === undefined || now - postponed.since < desired.sandbox.batchWindowMs + desired.sandbox.debounceMs)) {
    postponed.since ??= now;
    for (const p of edited) ctx.hint(p);
    ctx.log.info(`${edited.length} file(s) the remote changed are being edited here (${edited.slice(0, 3).join(", ")}${edited.length > 3 ? ", ..." : ""}): committing them before merging`, { paths: edited.slice(0, 20) });
    return null;
  }
  delete postponed.since;
  const integration = { ref: branchRef(branch), from: local, to: target, message };
  try {
    await beginIntegration(sandbox, integration);
  } catch (err) {
    if (err instanceof GitError && err.reason === "RefConflict") throw transient("BranchMoved", `${branch} moved while integrating remote commits; looking again`);
    throw err;
  }
  ctx.branchMoved();
  const done = await finishIntegration(sandbox, integration);
  const skipped = done?.skipped ?? [];
  for (const p of skipped) ctx.hint(p);
  // The sandbox looks at every encrypted path the branch's move changed (issue 15): a blob this key cannot
  // decrypt is held and reported, and one that decrypts again releases the file and the report, also when
  // the file already held its plaintext (nothing written, so no watcher event would say so).
  for (const d of diff) if (ctx.repo.policy.isEncrypted(d.path)) ctx.hint(d.path);
  ctx.log.info(`${message}: ${done?.written.length ?? 0} file(s) updated in the sandbox${skipped.length ? `, ${skipped.length} left as edited (the sandbox wins)` : ""}`, { commit: target });
  return target;
}

/** A timezone offset as git writes it (`+0100`), from JS minutes (UTC+1 is -60). */
function gitOffset(minutes: number): string {
  const m = -minutes;
  const abs = Math.abs(m);
  return `${m < 0 ? "-" : "+"}${String(Math.floor(abs / 60)).padStart(2, "0")}${String(abs % 60).padStart(2, "0")}`;
}

function transportCap(ctx: ReconcileContext): { timeoutMs?: number } {
  return ctx.timeoutCapMs !== undefined ? { timeoutMs: ctx.timeoutCapMs } : {};
}

/**
 * Each configured environment branch: the local commit, the remote's (its objects fetched when they
 * are not here yet, so that the two can be compared and followed), and what keeps them in step (see
 * EnvironmentBranchSync). Only the first remote is followed: two remotes that disagree must never
 * move a local environment branch back and forth.
 */
async function observeEnvironmentBranches(ctx: ReconcileContext, desired: Config, remote: RemoteSpec): Promise<RemoteObserved["environments"]> {
  const envs = Object.values(desired.environments).filter((e) => e.branch !== desired.sandbox.branch);
  if (!envs.length) return [];
  const who = await ctx.who();
  let tips: Record<string, string | null>;
  try {
    tips = await remoteBranchTips(ctx.repo, remote, [...new Set(envs.map((e) => e.branch))], { ...transportCap(ctx), who });
  } catch (err) {
    // A value, not a failed pass: the sandbox branch, fetched already, still syncs (issue 15).
    return envs.map((e) => unobserved(e.name, e.branch, remote, "listed", err));
  }
  const primary = desired.remotes[0]?.name === remote.name;
  const checkedOut = await ctx.repo.currentBranch();
  const out: RemoteObserved["environments"] = [];
  for (const e of envs) {
    const local = await ctx.repo.branchHead(e.branch);
    const theirs = tips[e.branch] ?? null;
    if (theirs && theirs !== local && !(await ctx.repo.hasObject(theirs))) {
      try {
        await counted((ok) => ctx.metrics.fetched(remote.name, ok), () => fetchBranch(ctx.repo, remote, e.branch, { ...transportCap(ctx), who }));
      } catch (err) {
        out.push(unobserved(e.name, e.branch, remote, "fetched", err, local));
        continue;
      }
    }
    const facts = {
      environment: e.name, branch: e.branch, local, remote: theirs, primary, remoteName: remote.name, checkedOut: checkedOut === e.branch, sandboxBranch: desired.sandbox.branch,
      ahead: !!(local && theirs && (await ctx.repo.isAncestor(theirs, local))),
      contained: !!(local && theirs && (await ctx.repo.isAncestor(local, theirs))),
      // Only the lease holder's promotions are pushed; a follower's branch only follows (issue 15).
      lease: leaseRole(ctx.pipeline?.leases, e.name, ctx.clock.now()),
      promotedHere: local ? await promotedHere(ctx, e.branch, local) : false,
      remoteMovedAway: theirs ? await movedAway(ctx, e.name, theirs) : false,
    };
    out.push(planEnvironmentBranch(facts));
  }
  return out;
}

/** An environment branch that could not be listed or fetched on `remote`: nothing moves, and it is reported on the environment (Transient). */
function unobserved(environment: string, branch: string, remote: RemoteSpec, how: "listed" | "fetched", err: unknown, local: string | null = null): EnvironmentBranchSync {
  const e = toCascadeError(err);
  return {
    environment, branch, local, remote: null, action: "blocked", kind: "Transient", reason: "EnvironmentBranchUnreadable",
    note: `${environment}'s branch ${branch} could not be ${how} on ${remote.name} (${e.reason}: ${e.message}); it is neither pushed nor followed there until it can be, while the sandbox branch keeps syncing`,
    hint: `looked at again at the next fetch (intervals.fetch); if it lasts, check that the remote serves it: git ls-remote ${remote.name} refs/heads/${branch} and git fetch ${remote.name} ${branch}${e.hint ? ` (${e.hint})` : ""}`,
  };
}

/**
 * Pushes an environment branch. To the lease's remote under the lease (a compare-and-swap of the lease
 * in the same atomic push, see pushUnderLease): a holder that lost its lease while it promoted or deployed
 * moves nothing. Elsewhere (further remotes, no leases) as before: a fast-forward, or a forced push checked
 * against what was judged. Returns what was done.
 */
async function pushEnvironment(ctx: ReconcileContext, remote: RemoteSpec, action: Extract<RemoteAction, { type: "push-environment" }>): Promise<string> {
  const book = ctx.pipeline?.leases;
  const now = ctx.clock.now();
  const view = leaseView(book, action.environment, now);
  if (view && book?.remote === remote.name) {
    await counted((ok) => ctx.metrics.pushed(remote.name, ok), () => pushUnderLease(ctx, remote, action.environment, { branch: action.branch, commit: action.commit, expected: action.expected }));
  } else {
    // A further remote cannot be fenced in the same push: at least never after the lease is known lost here.
    if (view && view.state !== "held") throw transient("LeaseLost", `${action.branch} ${action.commit.slice(0, 7)} was not pushed to ${remote.name}: this controller no longer holds ${action.environment}'s lease`, "nothing to do: it follows the lease holder");
    const who = await ctx.who();
    if (action.force) await assertRemoteStill(ctx, remote, action.branch, action.expected);
    await counted((ok) => ctx.metrics.pushed(remote.name, ok), () => pushBranch(ctx.repo, remote, action.branch, action.commit, { ...transportCap(ctx), who, force: action.force }));
  }
  ctx.log.info(`pushed ${action.branch} ${action.commit.slice(0, 7)} to ${remote.name}${action.force ? " (it had moved back: a rollback)" : ""}${view && book?.remote === remote.name ? " (with a renewal of the lease: fenced)" : ""}`, { remote: remote.name, branch: action.branch, commit: action.commit });
  return `pushed ${action.branch} ${action.commit.slice(0, 7)}`;
}

/**
 * Records on the pipeline what keeps each environment's branch from being in step with remote
 * `remoteName` (cleared for the others), so the environment shows it in status with its hint.
 */
function noteEnvironmentProblems(ctx: ReconcileContext, remoteName: string, o: RemoteObserved, problems: Map<string, CascadeError>): void {
  if (!ctx.pipeline) return;
  const all = (ctx.pipeline.branchProblems ??= new Map());
  for (const e of o.environments) {
    const mine = all.get(e.environment) ?? new Map<string, CascadeError>();
    const p = problems.get(e.environment);
    if (p) mine.set(remoteName, p);
    else mine.delete(remoteName);
    if (mine.size) all.set(e.environment, mine);
    else all.delete(e.environment);
  }
}

/** What observe found out about one environment branch on one remote (plain data, for the pure rule). */
export interface EnvironmentBranchFacts {
  environment: string;
  branch: string;
  remoteName: string;
  local: string | null;
  remote: string | null;
  /** The remote is the first configured one: the one whose environment branches are followed. */
  primary: boolean;
  /** The branch is checked out in the sandbox (moving it would change files under the user). */
  checkedOut: boolean;
  sandboxBranch: string;
  /** The remote's commit is an ancestor of the local one. */
  ahead: boolean;
  /** The local commit is an ancestor of the remote's. */
  contained: boolean;
  /** The local commit was put on the branch here by a promotion or a rollback. */
  promotedHere: boolean;
  /** The remote's commit is one this controller moved the environment away from (rolled back or superseded). */
  remoteMovedAway: boolean;
  /**
   * The environment's lease (issue 15): `follow` when another controller holds it (nothing is pushed,
   * the branch only follows), `wait` while it is not read or not taken yet (nothing moves); absent or `act`: this controller acts.
   */
  lease?: "act" | "follow" | "wait";
}

/**
 * The rule for one environment branch and one remote (pure): push only what passed the environment's
 * promotion here, follow the first remote otherwise, never overwrite a remote's commit that this
 * controller did not itself move the environment away from.
 */
export function planEnvironmentBranch(facts: EnvironmentBranchFacts): EnvironmentBranchSync {
  if (facts.lease === "wait") {
    // The lease is not read yet (or about to be taken here): nothing is pushed, and a branch is followed
    // (a missing one fetched) unless it holds this controller's own promotion, which a restart must not move back.
    const r = planEnvironmentBranch({ ...facts, lease: "act" });
    const hold = r.action === "push" || r.action === "force" || (r.action === "follow" && facts.promotedHere);
    return hold ? { environment: facts.environment, branch: facts.branch, local: facts.local, remote: facts.remote, action: "none" } : r;
  }
  // A follower's own promotions (made while it held the lease) no longer count: the holder's branch wins.
  const f = facts.lease === "follow" ? { ...facts, promotedHere: false } : facts;
  if (f.lease === "follow" && f.local && !f.remote) return { environment: f.environment, branch: f.branch, local: f.local, remote: f.remote, action: "none", note: `${f.branch} not pushed to ${f.remoteName}: another controller holds ${f.environment}'s lease` };
  const base = { environment: f.environment, branch: f.branch, local: f.local, remote: f.remote };
  const short = (c: string) => c.slice(0, 7);
  if (!f.local && !f.remote) return { ...base, action: "none" };
  if (f.local === f.remote) return { ...base, action: "none" };
  if (f.local && !f.remote) return { ...base, action: "push" };
  const local = f.local;
  const theirs = f.remote!;
  const follow = (): EnvironmentBranchSync => {
    if (!f.primary) {
      if (!local) return { ...base, action: "none" };
      return f.ahead
        ? { ...base, action: "none", note: `${f.branch} not pushed to ${f.remoteName}: ${short(local)} did not pass ${f.environment}'s promotion here` }
        : {
          ...base, action: "blocked", reason: "EnvironmentBranchMovedElsewhere",
          note: `branch ${f.branch} on ${f.remoteName} is at ${short(theirs)}, a commit cascade-sync did not put there; only cascade-sync moves environment branches, and only the first remote's are followed`,
          hint: `look at that commit; to let cascade-sync go on, reset ${f.branch} on ${f.remoteName} to ${short(local)} (or delete it there)`,
        };
    }
    if (f.checkedOut) {
      return {
        ...base, action: "blocked", reason: "WrongBranch",
        note: `${f.remoteName}'s ${f.branch} is at ${short(theirs)} and the local ${f.branch} must follow it, but ${f.branch} is checked out in the sandbox`,
        hint: `run \`git checkout ${f.sandboxBranch}\` in the sandbox`,
      };
    }
    return { ...base, action: "follow", ...(local && !f.contained ? { keep: true } : {}) };
  };
  if (!local) return follow();
  if (f.ahead) return f.promotedHere ? { ...base, action: "push" } : follow();
  // The remote is ahead or elsewhere. Only a commit this controller moved away from may be overwritten, and only with one promoted here.
  if (f.remoteMovedAway) {
    if (f.promotedHere) return { ...base, action: "force" };
    return {
      ...base, action: "blocked", reason: "EnvironmentBranchConflict",
      note: `branch ${f.branch} on ${f.remoteName} is at ${short(theirs)}, which ${f.environment} was moved away from here (rolled back or superseded), and the local ${f.branch} is at ${short(local)}, which no promotion put there; neither is pushed nor followed`,
      hint: `look at both commits; reset the local ${f.branch} to the commit ${f.environment} should run (e.g. git branch -f ${f.branch} ${short(theirs)}, once ${short(theirs)} may run again), or reset ${f.branch} on ${f.remoteName}`,
    };
  }
  return follow();
}

/**
 * True when the local branch's reflog says `commit` was put there by a promotion or a rollback (the
 * environment reconciler's `promote:` and `rollback:` entries, written under the ref's lock together
 * with the move). A branch created or moved any other way (init, native git, following a remote)
 * holds a commit that did not pass the environment's promotion here.
 */
async function promotedHere(ctx: ReconcileContext, branch: string, commit: string): Promise<boolean> {
  const log = await readFile(join(ctx.repo.gitdir, "logs", branchRef(branch)), "utf8").catch(() => "");
  const lines = log.split("\n");
  for (let i = lines.length - 1; i >= 0; i--) {
    const line = lines[i]!;
    const tab = line.indexOf("\t");
    const [, to] = line.split(" ", 2);
    if (to !== commit) continue;
    const message = tab < 0 ? "" : line.slice(tab + 1);
    return message.startsWith("promote:") || message.startsWith("rollback:");
  }
  return false;
}

/**
 * Moves the local environment branch to the remote's commit (compare-and-swap against what observe
 * saw), keeping a local commit that is not in the remote's history reachable. Returns what was done.
 */
async function followEnvironment(ctx: ReconcileContext, remoteName: string, a: Extract<RemoteAction, { type: "follow-environment" }>): Promise<string> {
  const who = await ctx.who();
  if (a.keep && a.from) await ctx.repo.setRef(`refs/cascade-sync/replaced/${a.environment}/${a.from}`, a.from, undefined, `follow: ${remoteName}'s ${a.branch} is at ${a.to.slice(0, 7)}`, who);
  try {
    await ctx.repo.setRef(branchRef(a.branch), a.to, a.from, `fetch: follow ${remoteName}'s ${a.branch} at ${a.to.slice(0, 7)}`, who);
  } catch (err) {
    if (err instanceof RefConflictError) throw transient("BranchMoved", `${a.branch} moved while following ${remoteName}'s; looking again`);
    throw err;
  }
  ctx.log.info(`${a.branch} follows ${remoteName}: ${a.from ? a.from.slice(0, 7) : "(none)"} -> ${a.to.slice(0, 7)}${a.keep ? ` (${a.from!.slice(0, 7)} kept under refs/cascade-sync/replaced/${a.environment}/)` : ""}`, { remote: remoteName, branch: a.branch, commit: a.to });
  ctx.branchMoved();
  return `${a.branch} follows ${remoteName} at ${a.to.slice(0, 7)}`;
}

/** Throws Transient `EnvironmentBranchMoved` unless the remote's `branch` is still `expected` (a forced push overwrites only what was judged). */
async function assertRemoteStill(ctx: ReconcileContext, remote: RemoteSpec, branch: string, expected: string | null): Promise<void> {
  const now = (await remoteBranchTips(ctx.repo, remote, [branch], { ...transportCap(ctx), who: await ctx.who() }))[branch] ?? null;
  if (now !== expected) throw transient("EnvironmentBranchMoved", `${branch} on ${remote.name} moved to ${now ? now.slice(0, 7) : "(deleted)"} while it was being judged; looking again`);
}

/** True when cascade-sync moved environment `env` away from `commit` (it is under a failed or superseded ref). */
async function movedAway(ctx: ReconcileContext, env: string, commit: string): Promise<boolean> {
  if (!(await ctx.repo.hasObject(commit))) return false;
  const refs = [...(await ctx.repo.listRefs(`refs/cascade-sync/failed/${env}`)), ...(await ctx.repo.listRefs(`refs/cascade-sync/superseded/${env}`))];
  for (const ref of refs) {
    const tip = await ctx.repo.ref(ref);
    if (tip && (await ctx.repo.isAncestor(commit, tip).catch(() => false))) return true;
  }
  return false;
}

/**
 * `remotes[].paused: true` (issue 16): nothing is pushed to this remote (sandbox branch and environment
 * branches alike), so commits wait locally. Fetching goes on on purpose: the remote's commits still reach
 * the sandbox and environment branches still follow it, and status shows how far ahead the local side is.
 */
export function withoutPushesWhenPaused(remote: RemoteSpec, actions: RemoteAction[]): RemoteAction[] {
  return remote.paused ? actions.filter((a) => a.type !== "push" && a.type !== "push-environment") : actions;
}

/** What a paused remote's pass says in status: that pushes wait, and whether commits are waiting. */
function pausedNote(o: RemoteObserved): string {
  const waiting = o.relation === "ahead" || o.relation === "remote-empty" || o.relation === "diverged" || o.environments.some((e) => e.action === "push" || e.action === "force");
  return `paused (remotes[].paused: true): not pushing${waiting ? "; commits wait locally" : ""}`;
}

/** Runs one transfer (a fetch or a push) and counts whether it succeeded. */
async function counted<T>(count: (ok: boolean) => void, transfer: () => Promise<T>): Promise<T> {
  try {
    const result = await transfer();
    count(true);
    return result;
  } catch (err) {
    count(false);
    throw err;
  }
}
