import { commitWorktree, type CommittedPath, type StagedPath } from "../src/git/commit.js";
import { RefConflictError } from "../src/git/refs.js";
import { stalled, transient } from "../src/errors.js";
import type { Config } from "../src/config/types.js";
import type { Plan, Reconciler, ReconcileContext, Result } from "../src/reconcile.js";
import type { SandboxObservation } from "../src/worktree.js";
import type { HeldBack } from "../src/security/blob-policy.js";
import { CONFIG_FILE } from "../src/config/load.js";

/** What the sandbox looks like now. */
export interface SandboxObserved {
  checkedOut: string | null;
  head: string | null;
  observation: SandboxObservation;
  full: boolean;
}

export type SandboxAction =
  | { type: "commit"; paths: StagedPath[]; refresh: string[]; preview: string }
  | { type: "refresh-index"; paths: string[] };

/**
 * sandbox -> branch: commits what changed in the working folder as one commit per batch. It
 * looks only at the paths the watcher hinted (or the whole tree on a full scan) and compares them
 * with the branch head, so its cost follows the change.
 */
export const sandboxReconciler: Reconciler<SandboxObserved, SandboxAction> = {
  name: "sandbox",

  async observe(ctx, desired) {
    const checkedOut = await ctx.repo.currentBranch();
    const head = await ctx.repo.branchHead(desired.sandbox.branch);
    const empty: SandboxObservation = { changes: [], refresh: [], scanned: 0, heldBack: [] };
    if (checkedOut !== desired.sandbox.branch || !head) return { checkedOut, head, observation: empty, full: ctx.hints.full };
    const paths = ctx.hints.full ? [""] : [...ctx.hints.paths];
    // The first whole-tree scan of a run may take a while on a big tree: show how it goes.
    const progress = ctx.hints.full && !ctx.state.scannedOnce ? ctx.progress("scanning the sandbox", "files") : undefined;
    const observation = paths.length ? await ctx.worktree.observe(await ctx.repo.commitTree(head), paths, await ctx.statCache(), progress && ((n) => progress.update(n))) : empty;
    if (progress) {
      progress.update(observation.scanned);
      progress.end(`${observation.scanned.toLocaleString("en-US")} files, ${observation.changes.length} changed`);
      ctx.state.scannedOnce = true;
    }
    // What is held back is reported in status: replaced on a full scan, updated for hinted paths.
    const held = ctx.hints.full ? new Set<string>() : new Set(ctx.state.heldBack);
    if (!ctx.hints.full) for (const p of paths) held.delete(p);
    for (const p of observation.heldBack) held.add(p);
    ctx.state.heldBack = [...held].sort();
    // A file held back by the scan that is no longer a change (deleted, or back as committed) leaves the list.
    const changed = new Set(observation.changes.map((c) => c.path));
    for (const p of Object.keys(ctx.state.findings)) {
      const looked = ctx.hints.full || paths.some((h) => h === p || h === "" || p.startsWith(`${h}/`));
      if (looked && !changed.has(p)) delete ctx.state.findings[p];
    }
    return { checkedOut, head, observation, full: ctx.hints.full };
  },

  plan(desired, o): Plan<SandboxAction> {
    const branch = desired.sandbox.branch;
    if (!o.head) {
      return { actions: [], blocked: { reason: "BranchMissing", message: `branch ${branch} does not exist in the sandbox`, hint: "run `cascade-sync init` in the sandbox" } };
    }
    if (o.checkedOut !== branch) {
      return {
        actions: [],
        blocked: {
          reason: "WrongBranch",
          message: `the sandbox has ${o.checkedOut ? `branch ${o.checkedOut}` : "a detached HEAD"} checked out; cascade-sync commits only to ${branch}`,
          hint: `run \`git checkout ${branch}\` in the sandbox`,
        },
      };
    }
    const { changes, refresh } = o.observation;
    if (changes.length) {
      const paths = changes.map((c): StagedPath => ({ path: c.path, deleted: !c.work, ...(c.work?.content ? { read: { stats: c.work.stats, content: c.work.content } } : {}) }));
      const preview = summarize(changes.map((c) => ({ path: c.path, ...(c.head ? { before: c.head } : {}), ...(c.work ? { after: { mode: c.work.mode, oid: c.work.oid } } : {}) }))).summary;
      return { actions: [{ type: "commit", paths, refresh: refresh.map((r) => r.path), preview }] };
    }
    if (refresh.length) return { actions: [{ type: "refresh-index", paths: refresh.map((r) => r.path) }] };
    return { actions: [] };
  },

  async apply(ctx, desired, plan, o): Promise<Result> {
    if (plan.blocked) throw stalled(plan.blocked.reason, plan.blocked.message, plan.blocked.hint);
    const action = plan.actions[0];
    if (!action) return { summary: o.observation.scanned ? `no changes in ${o.observation.scanned} files` : "no changes" };
    const who = await ctx.who();
    const headTree = await ctx.repo.commitTree(o.head!);
    const started = performance.now();
    ctx.forgetStatCache();
    try {
      const outcome = await ctx.exclusive(() =>
        commitWorktree(ctx.repo, {
          branch: desired.sandbox.branch,
          parent: o.head!,
          paths: action.type === "commit" ? action.paths : [],
          refresh: action.type === "commit" ? action.refresh : action.paths,
          modeOf: (st, head) => ctx.worktree.modeOf(st, head),
          headEntry: async (p) => {
            const e = await ctx.worktree.headEntry(headTree, p);
            return e && !e.isTree ? { mode: e.mode, oid: e.oid } : undefined;
          },
          message: (paths) => commitMessage(desired, paths),
          author: who,
        }),
      );
      await recordHeld(ctx, action.type === "commit" ? action.paths.map((p) => p.path) : [], outcome.held);
      if (!outcome.commit) {
        if (outcome.held.length) return { summary: `nothing committed: ${outcome.held.length} file(s) held back (${outcome.held.map((h) => h.path).join(", ")})` };
        return { summary: action.type === "commit" ? "changes were undone before the commit" : `refreshed ${action.paths.length} index entries` };
      }
      const message = commitMessage(desired, outcome.paths).split("\n")[0]!;
      ctx.state.lastCommit = { commit: outcome.commit, message, at: new Date(ctx.clock.now()).toISOString() };
      ctx.metrics.commitMade(performance.now() - started, outcome.paths.length);
      ctx.log.info(`committed ${outcome.commit.slice(0, 7)} on ${desired.sandbox.branch}: ${message}`, { commit: outcome.commit, files: outcome.paths.length });
      ctx.branchMoved();
      return { summary: `committed ${outcome.commit.slice(0, 7)}: ${message}${outcome.held.length ? `; ${outcome.held.length} file(s) held back` : ""}` };
    } catch (err) {
      if (err instanceof RefConflictError) {
        // Someone (a native `git commit`) moved the branch meanwhile: look again at once.
        throw transient("BranchMoved", `${desired.sandbox.branch} moved while committing; observing again`);
      }
      throw err;
    }
  },

  describe(a) {
    return a.type === "commit" ? `commit ${a.paths.length} path(s): ${a.preview}` : `refresh ${a.paths.length} index entries (content unchanged)`;
  },
};

/**
 * Keeps status's list of files held back by the secret scan or their size up to date for the
 * paths of this batch (a path committed, deleted or clean again leaves it), and raises a
 * `secret-found` notification once per finding.
 */
async function recordHeld(ctx: ReconcileContext, batch: string[], held: HeldBack[]): Promise<void> {
  for (const p of batch) delete ctx.state.findings[p];
  for (const h of held) {
    if (h.why === "no-key") continue; // reported as held back (status), like a file the worktree held back
    if (h.why === "ciphertext") {
      ctx.log.error(h.message, { path: h.path });
      continue;
    }
    ctx.state.findings[h.path] = h.findings;
    for (const f of h.findings) {
      ctx.log.warn(`held back ${f.path}${f.line ? `:${f.line}` : ""}: ${f.rule}; not committed (fingerprint ${f.fingerprint})`, { path: f.path, line: f.line, rule: f.rule, fingerprint: f.fingerprint });
      // The config itself: its secrets belong in the environment, as ${VAR} (the controller reads them from there).
      const fix = f.path === CONFIG_FILE ? "write the secret as ${VAR} and export VAR where the controller runs" : `remove it, or accept it with security.allow: ["${f.fingerprint}"]`;
      await ctx.notifier.notify({ event: "secret-found", key: f.fingerprint, message: `${f.path}${f.line ? `:${f.line}` : ""}: ${f.message}; the file is held back (not committed). To fix: ${fix}`, details: { path: f.path, line: f.line, rule: f.rule, fingerprint: f.fingerprint } });
    }
  }
}

/** Builds the commit message from the config's template and the committed paths. */
export function commitMessage(desired: Config, paths: CommittedPath[]): string {
  const { summary, body, files } = summarize(paths);
  const subject = desired.sandbox.commitMessage
    .replaceAll("{summary}", summary)
    .replaceAll("{count}", String(files))
    .replaceAll("{branch}", desired.sandbox.branch);
  return `${subject}\n\n${body}\n`;
}

const MAX_SUBJECT_PATHS = 3;

/**
 * Describes a set of committed paths for people: counts by kind and the first few paths
 * (`2 modified, 1 added (src/app.ts, README.md, docs/intro.md)`), and a body listing every path.
 * A deletion and an addition of the same content are one rename.
 */
export function summarize(paths: CommittedPath[]): { summary: string; body: string; files: number } {
  const added = paths.filter((p) => p.after && !p.before);
  const deleted = paths.filter((p) => p.before && !p.after);
  const modified = paths.filter((p) => p.before && p.after);
  const renamed: { from: string; to: string }[] = [];
  const addedByOid = new Map<string, CommittedPath[]>();
  for (const a of added) addedByOid.set(a.after!.oid, [...(addedByOid.get(a.after!.oid) ?? []), a]);
  const renamedAway = new Set<CommittedPath>();
  for (const d of deleted) {
    const to = addedByOid.get(d.before!.oid)?.shift();
    if (to) {
      renamed.push({ from: d.path, to: to.path });
      renamedAway.add(d).add(to);
    }
  }
  const plainAdded = added.filter((p) => !renamedAway.has(p));
  const plainDeleted = deleted.filter((p) => !renamedAway.has(p));
  const counts = [
    [modified.length, "modified"],
    [plainAdded.length, "added"],
    [plainDeleted.length, "deleted"],
    [renamed.length, "renamed"],
  ].filter(([n]) => (n as number) > 0).map(([n, w]) => `${n} ${w}`);
  const shown = [...modified.map((p) => p.path), ...plainAdded.map((p) => p.path), ...plainDeleted.map((p) => p.path), ...renamed.map((r) => r.to)];
  const more = shown.length - MAX_SUBJECT_PATHS;
  const list = shown.slice(0, MAX_SUBJECT_PATHS).join(", ") + (more > 0 ? `, +${more} more` : "");
  const summary = counts.length ? `${counts.join(", ")} (${list})` : "no changes";
  const body = [
    ...modified.map((p) => `M ${p.path}`),
    ...plainAdded.map((p) => `A ${p.path}`),
    ...plainDeleted.map((p) => `D ${p.path}`),
    ...renamed.map((r) => `R ${r.from} -> ${r.to}`),
  ].join("\n");
  // Files changed, as a person counts them: a rename is one.
  return { summary, body, files: paths.length - renamed.length };
}
