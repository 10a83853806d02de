import { lstat, type BigIntStats } from "node:fs";
import { promisify } from "node:util";
import { join } from "node:path";
import { applyToWorktree } from "../src/git/commit.js";
import { fetchBranch, pushBranch, remoteBranchTips } from "../src/git/transport.js";
import { branchRef, type FileEntry } from "../src/git/repo.js";
import { stalled, transient } from "../src/errors.js";
import { mapLimit } from "../src/concurrency.js";
import { assertSafeTree, linkOnTheWay } from "../src/pipeline/materialize.js";
import type { Config, RemoteSpec } from "../src/config/types.js";
import type { Plan, Reconciler, ReconcileContext, Result } from "../src/reconcile.js";

const lstatBig = promisify(lstat) as unknown as (p: string, o: { bigint: true }) => Promise<BigIntStats>;

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
  /** Each environment branch: the local commit, the remote's, and how to bring the remote up to date. */
  environments: { branch: string; local: string; remote: string | null; push: "none" | "fast-forward" | "force" | "foreign" }[];
}

export type RemoteAction =
  | { type: "fast-forward"; to: string }
  | { type: "merge"; theirs: string; base: string | null }
  | { type: "push"; commit: string }
  | { type: "push-environment"; branch: string; commit: string; force: boolean };

/**
 * branch <-> one remote: fetches the sandbox branch (on every pass, so also before each push),
 * brings commits made elsewhere into the sandbox (fast-forward, or a merge where the sandbox wins
 * every path changed on both sides), then pushes as a fast-forward. Never force-pushes.
 */
export function remoteReconciler(remoteName: string): Reconciler<RemoteObserved, RemoteAction> {
  const find = (desired: Config) => {
    const r = desired.remotes.find((x) => x.name === remoteName);
    if (!r) throw transient("RemoteRemoved", `remote ${remoteName} is no longer configured`);
    return r;
  };
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
      const envPushes: RemoteAction[] = o.environments
        .filter((e) => e.push === "fast-forward" || e.push === "force")
        .map((e) => ({ type: "push-environment", branch: e.branch, commit: e.local, force: e.push === "force" }));
      const foreign = o.environments.find((e) => e.push === "foreign");
      const blocked = sync.blocked ?? (foreign ? {
        reason: "EnvironmentBranchMovedElsewhere",
        message: `branch ${foreign.branch} on ${remoteName} is at ${foreign.remote!.slice(0, 7)}, a commit cascade-sync did not put there; only cascade-sync moves environment branches`,
        hint: `look at that commit; to let cascade-sync go on, reset ${foreign.branch} on ${remoteName} to ${foreign.local.slice(0, 7)} (or delete it there)`,
      } : undefined);
      return { actions: [...sync.actions, ...envPushes], ...(blocked ? { blocked } : {}) };
    },

    async apply(ctx, desired, plan, o): Promise<Result> {
      const branch = desired.sandbox.branch;
      const done: string[] = [];
      let head = o.local;
      for (const action of plan.actions) {
        if (action.type === "push-environment") {
          const who = await ctx.who();
          await counted((ok) => ctx.metrics.pushed(remoteName, ok), () => pushBranch(ctx.repo, o.remote, action.branch, action.commit, { ...transportCap(ctx), who, force: action.force }));
          ctx.log.info(`pushed ${action.branch} ${action.commit.slice(0, 7)} to ${remoteName}${action.force ? " (it had moved back: a rollback)" : ""}`, { remote: remoteName, branch: action.branch, commit: action.commit });
          done.push(`pushed ${action.branch} ${action.commit.slice(0, 7)}`);
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
          head = await ctx.exclusive(() => integrate(ctx, branch, o.local!, action));
          done.push(action.type === "merge" ? `merged ${remoteName}/${branch}` : `fast-forwarded to ${action.to.slice(0, 7)}`);
        }
      }
      if (plan.blocked) throw stalled(plan.blocked.reason, plan.blocked.message, plan.blocked.hint);
      return { requeueAfterMs: desired.intervals.fetchMs, summary: done.join(", ") || "in sync" };
    },

    describe(a) {
      if (a.type === "push-environment") return `push ${a.branch} ${a.commit.slice(0, 7)} to ${remoteName}${a.force ? " (moving it back after a rollback)" : ""}`;
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

/**
 * Brings the remote's commits into the local branch and the sandbox's files. Files are written
 * first and the branch moved last (both under the index lock): a crash in between leaves files
 * that the next batch commits again, never a branch whose files were not written, which would
 * commit a revert of the remote's work. Returns the new head.
 */
async function integrate(ctx: ReconcileContext, branch: string, local: string, action: Extract<RemoteAction, { type: "fast-forward" | "merge" }>): Promise<string> {
  const current = await ctx.repo.branchHead(branch);
  if (current !== local) throw transient("BranchMoved", `${branch} moved while integrating remote commits; looking again`);
  const localTree = await ctx.repo.commitTree(local);
  let target: string;
  let message: string;
  if (action.type === "fast-forward") {
    target = action.to;
    message = `fast-forward: ${branch} to ${action.to.slice(0, 7)}`;
  } else {
    const theirsTree = await ctx.repo.commitTree(action.theirs);
    const baseTree = action.base ? await ctx.repo.commitTree(action.base) : null;
    const merged = await ctx.repo.mergeTreesOursWins(baseTree, localTree, theirsTree);
    const who = await ctx.who();
    target = await ctx.repo.writeCommit({
      tree: merged,
      parents: [local, action.theirs],
      message: `merge: remote commits into ${branch} (the sandbox wins paths changed on both sides)\n`,
      author: who,
    });
    message = `merge: ${action.theirs.slice(0, 7)} into ${branch}`;
  }
  const targetTree = await ctx.repo.commitTree(target);
  // A remote commit is hostile input: nothing of it is written unless every path is safe.
  await assertSafeTree(ctx.repo, targetTree, "the sandbox");
  const diff = await ctx.repo.diffTrees(localTree, targetTree);
  const through = (await mapLimit(diff, 8, async (d) => ((await linkOnTheWay(ctx.repo.dir, d.path)) !== undefined ? d.path : undefined))).filter((p) => p !== undefined);
  if (through.length) {
    throw stalled("UnsafePath", `remote commit ${target.slice(0, 7)} would write ${through.slice(0, 5).map((p) => JSON.stringify(p)).join(", ")}${through.length > 5 ? ` (and ${through.length - 5} more)` : ""} through a symlink or file in the sandbox; nothing was written`,
      "look at that commit and at the sandbox's symlinks; replace the symlink by a folder (or fix the commit on the remote)");
  }
  const cache = await ctx.statCache();
  const who = await ctx.who();
  const { written, skipped } = await applyToWorktree(ctx.repo, diff, async (path, expected) => untouched(ctx, path, expected, cache), async () => {
    await ctx.repo.setRef(branchRef(branch), target, local, message, who);
  });
  for (const p of skipped) ctx.hint(p);
  ctx.log.info(`${message}: ${written.length} file(s) updated in the sandbox${skipped.length ? `, ${skipped.length} left as edited (the sandbox wins)` : ""}`, { commit: target });
  ctx.branchMoved();
  return target;
}

/** True when the working file at `path` holds exactly `expected` (absent when undefined). */
async function untouched(ctx: ReconcileContext, path: string, expected: FileEntry | undefined, cache: Awaited<ReturnType<ReconcileContext["statCache"]>>): Promise<boolean> {
  const abs = join(ctx.repo.dir, path);
  const st = await lstatBig(abs, { bigint: true }).catch(() => null);
  if (!st) return !expected;
  if (!expected || !(st.isFile() || st.isSymbolicLink())) return false;
  const work = await ctx.worktree.readWorkFile(abs, path, st, cache, expected);
  return work.oid === expected.oid && work.mode === expected.mode;
}

function transportCap(ctx: ReconcileContext): { timeoutMs?: number } {
  return ctx.timeoutCapMs !== undefined ? { timeoutMs: ctx.timeoutCapMs } : {};
}

/**
 * Each environment branch that exists locally, with the remote's commit for it and how to bring the
 * remote up to date: a fast-forward, a forced push when the remote holds a commit cascade-sync itself
 * moved the branch away from (a rollback, or a superseded head), or "foreign" when someone else put a
 * commit there (never overwritten).
 */
async function observeEnvironmentBranches(ctx: ReconcileContext, desired: Config, remote: RemoteSpec): Promise<RemoteObserved["environments"]> {
  const envs = Object.values(desired.environments);
  const locals: { name: string; branch: string; local: string }[] = [];
  for (const e of envs) {
    const local = await ctx.repo.branchHead(e.branch);
    if (local) locals.push({ name: e.name, branch: e.branch, local });
  }
  if (!locals.length) return [];
  const tips = await remoteBranchTips(ctx.repo, remote, locals.map((l) => l.branch), { ...transportCap(ctx), who: await ctx.who() });
  const out: RemoteObserved["environments"] = [];
  for (const l of locals) {
    const theirs = tips[l.branch] ?? null;
    let push: RemoteObserved["environments"][number]["push"] = "none";
    if (theirs !== l.local) {
      if (!theirs || ((await ctx.repo.hasObject(theirs)) && (await ctx.repo.isAncestor(theirs, l.local)))) push = "fast-forward";
      else push = (await movedAway(ctx, l.name, theirs)) ? "force" : "foreign";
    }
    out.push({ branch: l.branch, local: l.local, remote: theirs, push });
  }
  return out;
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
