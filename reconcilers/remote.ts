import { lstat, type BigIntStats } from "node:fs";
import { promisify } from "node:util";
import { join } from "node:path";
import { applyToWorktree } from "../src/git/commit.js";
import { fetchBranch, pushBranch } from "../src/git/transport.js";
import { branchRef, type FileEntry } from "../src/git/repo.js";
import { stalled, transient } from "../src/errors.js";
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
}

export type RemoteAction =
  | { type: "fast-forward"; to: string }
  | { type: "merge"; theirs: string; base: string | null }
  | { type: "push"; commit: string };

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
      const remoteTip = await fetchBranch(ctx.repo, remote, branch, { ...(ctx.timeoutCapMs !== undefined ? { timeoutMs: ctx.timeoutCapMs } : {}), who: await ctx.who() });
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
      return { remote, checkedOut: await ctx.repo.currentBranch(), local, remoteTip, relation, base };
    },

    plan(desired, o): Plan<RemoteAction> {
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
    },

    async apply(ctx, desired, plan, o): Promise<Result> {
      if (plan.blocked) throw stalled(plan.blocked.reason, plan.blocked.message, plan.blocked.hint);
      const branch = desired.sandbox.branch;
      const done: string[] = [];
      let head = o.local;
      for (const action of plan.actions) {
        if (action.type === "push") {
          if (!head) break;
          await pushBranch(ctx.repo, o.remote, branch, head, { ...(ctx.timeoutCapMs !== undefined ? { timeoutMs: ctx.timeoutCapMs } : {}), who: await ctx.who() });
          ctx.state.remotes[remoteName] = { ...ctx.state.remotes[remoteName], lastPush: { commit: head, at: new Date(ctx.clock.now()).toISOString() }, relation: "in-sync" };
          ctx.log.info(`pushed ${branch} ${head.slice(0, 7)} to ${remoteName}`, { remote: remoteName, commit: head });
          done.push(`pushed ${head.slice(0, 7)}`);
        } else {
          head = await ctx.exclusive(() => integrate(ctx, branch, o.local!, action));
          done.push(action.type === "merge" ? `merged ${remoteName}/${branch}` : `fast-forwarded to ${action.to.slice(0, 7)}`);
        }
      }
      return { requeueAfterMs: desired.intervals.fetchMs, summary: done.join(", ") || "in sync" };
    },

    describe(a) {
      if (a.type === "push") return `push ${a.commit === "(merge)" ? "the merge commit" : a.commit.slice(0, 7)} to ${remoteName}`;
      if (a.type === "fast-forward") return `fast-forward to ${remoteName}'s ${a.to.slice(0, 7)} and update the sandbox's files`;
      return `merge ${remoteName}'s ${a.theirs.slice(0, 7)} (the sandbox wins paths changed on both sides) and update the sandbox's files`;
    },
  };
}

/**
 * Brings the remote's commits into the local branch and the sandbox's files. Files are written
 * first and the branch moved last (both under the index lock): a crash in between leaves files
 * that the next batch commits again, never a branch whose files were not written, which would
 * commit a revert of the remote's work. Returns the new head.
 */
async function integrate(ctx: ReconcileContext, branch: string, local: string, action: Exclude<RemoteAction, { type: "push" }>): Promise<string> {
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
  const diff = await ctx.repo.diffTrees(localTree, await ctx.repo.commitTree(target));
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
