import { lstat } from "node:fs/promises";
import { join } from "node:path";
import type { CommittedPath } from "../src/git/commit.js";
import { gitIdentity, type EntryMode, type Repo } from "../src/git/repo.js";
import { commitNative, GitError, worktreeChanges, type GitRepo, type StatusEntry } from "../src/git/native/index.js";
import { stalled, transient, waiting } from "../src/errors.js";
import { readIntents, restoreInProgress, restoreMessage, settleIntents } from "../src/history/intent.js";
import type { Config } from "../src/config/types.js";
import type { Plan, Reconciler, ReconcileContext, Result } from "../src/reconcile.js";
import type { HeldBack } from "../src/security/blob-policy.js";
import { followCommit, heldInIndex, indexAsCommitted, keepOutOfGit, undecryptableInTree, writeInfoAttributes } from "../src/security/git-filter.js";
import { TEAM_KEY_HINT } from "../src/security/filter-content.js";
import { CONFIG_FILE } from "../src/config/load.js";

/**
 * Changed paths one sandbox pass takes at most, hinted or found by a whole-tree scan: a bigger burst
 * becomes a few commits, one after the other, each with bounded memory and time (30,000 files in one
 * pass peaked at 400 MB). The first commit of a burst comes sooner too: at 100,000 files a pass of
 * 2,500 took about 2 s on 2 busy cores, one of 5,000 about 4 s (the whole 30,000-file burst then took
 * 39-45 s instead of 34 s). A hint can be a folder (a deleted one is asked about as a whole), whose
 * paths all go into one commit.
 */
export const MAX_PASS_PATHS = 2_500;

/** What the sandbox looks like now. */
export interface SandboxObserved {
  checkedOut: string | null;
  head: string | null;
  /** What git says changed (encrypted paths as git's cascade-sync filter stores them), held-back paths left out. */
  changes: StatusEntry[];
  /**
   * Files held back: security.encrypt without a key (never committed in plaintext), or an encrypted
   * path whose committed blob this key cannot decrypt (another person's key: never committed over).
   */
  heldBack: string[];
  /** Every path git reported that is held (also a held file that is gone): committed only as the branch has it. */
  keptAsCommitted: string[];
  /** A whole-tree scan whose changes are all in this pass. */
  full: boolean;
}

/** The leading entries of `changes` that name at most `max` paths (a path's entries are never split). */
function firstPaths(changes: StatusEntry[], max: number): StatusEntry[] {
  const paths = new Set<string>();
  let n = 0;
  for (; n < changes.length; n++) {
    const p = changes[n]!.path;
    if (!paths.has(p) && paths.size === max) break;
    paths.add(p);
  }
  return changes.slice(0, n);
}

/**
 * `held`: paths kept out of the batch (security.encrypt without a key, or encrypted with another key);
 * their index entries are set back to the branch's before the commit, which records the whole index.
 */
export type SandboxAction = { type: "commit"; changes: StatusEntry[]; preview: string; held: string[] };

/** The sandbox as the native git gateway addresses it (never discovered: the work tree and .git are given). */
export function gitRepoOf(repo: Repo): GitRepo {
  return { cwd: repo.dir, gitDir: repo.gitdir, workTree: repo.dir };
}

/**
 * sandbox -> branch: commits what changed in the working folder as one commit per batch. git decides
 * what changed (`git status` on the paths the watcher hinted, or the whole tree on a full scan, with
 * the index as git's own stat cache) and what is committed (git stages the files with the
 * repository's attributes, filters and ignore rules), so the commit is what `git add -A -- PATHS &&
 * git commit` would record.
 */
export const sandboxReconciler: Reconciler<SandboxObserved, SandboxAction> = {
  name: "sandbox",

  async observe(ctx, desired) {
    const checkedOut = await ctx.repo.currentBranch();
    const before = await ctx.repo.branchHead(desired.sandbox.branch);
    const none = { checkedOut, head: before, changes: [], heldBack: [], keptAsCommitted: [], full: ctx.hints.full };
    if (checkedOut !== desired.sandbox.branch || !before || desired.sandbox.paused) return none;
    const paths = ctx.hints.full ? [] : [...ctx.hints.paths].filter((p) => p !== "");
    if (!ctx.hints.full && paths.length === 0) return none;
    // The first whole-tree scan of a run may take a while on a big tree: show how it goes.
    const progress = ctx.hints.full && !ctx.state.scannedOnce ? ctx.progress("scanning the sandbox", "files") : undefined;
    const repo = gitRepoOf(ctx.repo);
    const policy = ctx.repo.policy;
    const heldBack: string[] = [];
    const changes: StatusEntry[] = [];
    const found = await worktreeChanges(repo, paths);
    // The head is read after git status (issue 15). An integration runs beside this look: it moves the
    // branch first, then writes files and index entries (src/git/integrate.ts), so a head read now is never
    // older than the index git status compared with. Read before, a remote blob this key cannot decrypt,
    // already in the index, looked like a sandbox edit of a file the older head still decrypted: it was
    // not held, not reported, and committed over on top of the merge.
    const head = await ctx.repo.branchHead(desired.sandbox.branch);
    if (!head) return { ...none, head };
    // Files held for another key are looked at again on every pass (not only when hinted), so the report
    // follows what the head holds now: kept while their blobs do not decrypt, gone once they do.
    const heldForOtherKey = policy.encryptionKey ? ctx.state.heldBack.filter((p) => policy.isEncrypted(p)) : [];
    const otherKey = new Set(await undecryptableAtHead(ctx.repo, head, found, ctx.hints.full ? undefined : [...paths, ...heldForOtherKey]));
    const keptAsCommitted: string[] = [];
    for (const e of found) {
      // Without a key a file is held back, but its deletion (which reveals nothing) is committed.
      const present = otherKey.has(e.path) || (policy.holdsBack(e.path) && (await exists(join(ctx.repo.dir, e.path))));
      if (present) {
        keptAsCommitted.push(e.path);
        heldBack.push(e.path);
        continue;
      }
      changes.push(e);
    }
    for (const p of otherKey) if (!heldBack.includes(p)) heldBack.push(p);
    reportAnotherKey(ctx, otherKey);
    if (progress) {
      progress.end(`${changes.length} changed`);
      ctx.state.scannedOnce = true;
    }
    // What is held back is reported in status: replaced on a full scan, updated for the paths looked at.
    const held = ctx.hints.full ? new Set<string>() : new Set(ctx.state.heldBack);
    if (!ctx.hints.full) for (const p of [...paths, ...heldForOtherKey]) held.delete(p);
    for (const p of heldBack) held.add(p);
    ctx.state.heldBack = [...held].sort();
    // A file held back by the scan that is no longer a change (deleted, or back as committed) leaves the list.
    const changed = new Set(changes.map((c) => c.path));
    for (const p of Object.keys(ctx.state.findings)) {
      const looked = ctx.hints.full || paths.some((h) => h === p || p.startsWith(`${h}/`));
      if (looked && !changed.has(p)) delete ctx.state.findings[p];
    }
    // A whole-tree scan that found more than one pass takes commits the first paths; the rest go next.
    const taken = ctx.hints.full ? firstPaths(changes, MAX_PASS_PATHS) : changes;
    if (taken.length < changes.length) ctx.leaveForNextPass([...new Set(changes.slice(taken.length).map((c) => c.path))]);
    return { checkedOut, head, changes: taken, heldBack, keptAsCommitted, full: ctx.hints.full && taken.length === changes.length };
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
    if (desired.sandbox.paused) return { actions: [], blocked: PAUSED };
    if (!o.changes.length) return { actions: [] };
    const preview = summarize([...new Map(o.changes.map((c) => [c.path, c] as const)).values()].map(previewPath)).summary;
    return { actions: [{ type: "commit", changes: o.changes, preview, held: o.keptAsCommitted }] };
  },

  async apply(ctx, desired, plan, o): Promise<Result> {
    if (plan.blocked === PAUSED) throw waiting(PAUSED.reason, PAUSED.message, PAUSED_RECHECK_MS, PAUSED.hint);
    if (plan.blocked) throw stalled(plan.blocked.reason, plan.blocked.message, plan.blocked.hint);
    const action = plan.actions[0];
    if (!action) return { summary: "no changes" };
    // A `cascade-sync restore` names its batch; one still writing its files is waited for (one batch, one message).
    const intents = await readIntents(ctx.repo.gitdir);
    const restoring = restoreInProgress(intents, ctx.clock.now());
    if (restoring) throw waiting("RestoreInProgress", `a restore of ${restoring.paths.join(", ")} is still writing files`, 200);
    const messageOf = (ps: CommittedPath[]) => restoreMessage(intents, ps.map((p) => p.path), summarize(ps).body) ?? commitMessage(desired, ps);
    const who = await ctx.who();
    const policy = ctx.repo.policy;
    const started = performance.now();
    // security.encrypt may have changed since start: git's attributes follow it before git reads a file.
    await writeInfoAttributes(ctx.repo.gitdir, desired.security.encrypt);
    try {
      let head = o.head!;
      const outcome = await ctx.exclusive(async () => {
        // What was observed is judged against the head it was observed at (which encrypted files are
        // another key's): when the branch moved meanwhile with a change to an encrypted path (an
        // integration bringing a teammate's blob), it is looked at again, never committed on top of the
        // new head (issue 15). Any other move (a person's native commit) is committed on top of, as git
        // would: a person committing in a tight loop must not starve the sandbox.
        head = (await ctx.repo.branchHead(desired.sandbox.branch)) ?? head;
        if (head !== o.head && policy.encryptsAnything && (await ctx.repo.diffTrees(o.head!, head)).some((d) => policy.isEncrypted(d.path))) {
          throw transient("BranchMoved", `${desired.sandbox.branch} moved since the sandbox was looked at; observing again`);
        }
        // A held file goes into this commit exactly as the branch has it (never deleted or reverted by it).
        await indexAsCommitted(ctx.repo, head, action.held);
        return commitNative<HeldBack>(gitRepoOf(ctx.repo), {
          changes: action.changes,
          lookAgain: o.full ? [] : [...new Set([...ctx.hints.paths, ...action.changes.map((c) => c.path)])].filter((p) => p !== ""),
          ref: `refs/heads/${desired.sandbox.branch}`,
          parent: head,
          // An encrypted path git would not (or could not) run the filter on is never given to git.
          keepOut: keepOutOfGit(ctx.repo, policy),
          // What a merge left staged that this sandbox cannot commit goes back to the branch's entries.
          setBack: (paths, parent) => heldInIndex(ctx.repo, policy, parent, paths),
          // The secret scan and the size rule judge the exact bytes git staged; an encrypted path's must be ciphertext.
          judge: (p, blob) => policy.judgeStaged(p, blob),
          objects: { readBlob: (oid) => ctx.repo.readBlob(oid), treeOf: (commit) => ctx.repo.commitTree(commit) },
          message: (changes) => messageOf(changes as CommittedPath[]),
          author: gitIdentity(who),
        });
      });
      const held = outcome.held.map((h) => h.held);
      await recordHeld(ctx, [...new Set(action.changes.map((c) => c.path))], held);
      if (!outcome.commit) {
        if (held.length) return { summary: `nothing committed: ${held.length} file(s) held back (${held.map((h) => h.path).join(", ")})` };
        // A person's `git commit` moved the branch while ours was made: it committed the index, which held what we staged.
        if (outcome.parent !== head) return { summary: `a native commit made meanwhile (${outcome.parent?.slice(0, 7)}) recorded these changes` };
        return { summary: "changes were undone before the commit" };
      }
      const paths = outcome.changes as CommittedPath[];
      const message = messageOf(paths).split("\n")[0]!;
      await settleIntents(ctx.repo.gitdir, intents, paths.map((p) => p.path), ctx.clock.now());
      ctx.state.lastCommit = { commit: outcome.commit, message, at: new Date(ctx.clock.now()).toISOString() };
      ctx.metrics.commitMade(performance.now() - started, paths.length);
      ctx.log.info(`committed ${outcome.commit.slice(0, 7)} on ${desired.sandbox.branch}: ${message}`, { commit: outcome.commit, files: paths.length });
      ctx.branchMoved();
      // The list of encrypted files at the head follows the commit (a full scan or the next start needs it).
      if (policy.encryptsAnything) await followCommit(ctx.repo, policy, outcome.parent, outcome.commit, outcome.changes);
      return { summary: `committed ${outcome.commit.slice(0, 7)}: ${message}${held.length ? `; ${held.length} file(s) held back` : ""}` };
    } catch (err) {
      if (err instanceof GitError && err.reason === "RefConflict") {
        // Someone (a native `git commit`) moved the branch meanwhile: look again at once.
        throw transient("BranchMoved", `${desired.sandbox.branch} moved while committing; observing again`);
      }
      throw err;
    }
  },

  describe(a) {
    return `commit ${new Set(a.changes.map((c) => c.path)).size} path(s): ${a.preview}`;
  },
};

/**
 * `sandbox.paused: true` (issue 16): nothing is committed. The edits stay in the folder and their paths
 * stay pending (a Waiting pass hands its hints back to the loop), so unpausing commits them as one batch;
 * the controller runs the sandbox at once when the field changes, the recheck only bounds a missed reload.
 */
const PAUSED = { reason: "Paused", message: "the sandbox is paused (sandbox.paused: true): edits wait uncommitted, nothing is lost", hint: "set sandbox.paused to false (or remove it) to commit them as one batch" };
const PAUSED_RECHECK_MS = 60_000;

async function exists(abs: string): Promise<boolean> {
  return lstat(abs).then(() => true, () => false);
}

/**
 * The encrypted paths the branch head holds as blobs this sandbox's key cannot decrypt (another
 * person's key): among what git reported and the hinted paths, or all of them on a full scan. Such a
 * path is held: the sandbox never commits over a teammate's file it cannot even read.
 */
async function undecryptableAtHead(work: Repo, head: string, found: readonly StatusEntry[], hinted: readonly string[] | undefined): Promise<string[]> {
  const policy = work.policy;
  // Without a key every encrypted path is held back already (holdsBack).
  if (!policy.encryptionKey) return [];
  const candidates = hinted === undefined ? undefined : [...new Set([...found.map((e) => e.path), ...hinted].filter((p) => policy.isEncrypted(p)))];
  if (candidates && candidates.length === 0) return [];
  return undecryptableInTree(work, policy, policy.encryptionKey, head, candidates);
}

/**
 * Status says why files are held for another person's key, and stops saying it once none are: `held` is
 * every such file at the observed head among what the pass looked at, which always includes the files
 * held so far (see observe), so any pass may set or clear the report.
 */
function reportAnotherKey(ctx: ReconcileContext, held: ReadonlySet<string>): void {
  if (held.size) {
    if (ctx.state.keyProblem && ctx.state.keyProblem.reason !== "EncryptedWithAnotherKey") return;
    const key = ctx.repo.policy.encryptionKey!;
    const message = `${[...held].sort().join(", ")} do(es) not decrypt with this sandbox's key (${key.fingerprint}): encrypted with another key; held (not written, not committed over) while the rest syncs`;
    if (ctx.state.keyProblem?.message !== message) ctx.log.warn(message, { paths: [...held] });
    ctx.state.keyProblem = { reason: "EncryptedWithAnotherKey", message, hint: TEAM_KEY_HINT };
  } else if (ctx.state.keyProblem?.reason === "EncryptedWithAnotherKey") {
    delete ctx.state.keyProblem;
  }
}

/**
 * Keeps status's list of files held back by the secret scan or their size up to date for the
 * paths of this batch (a path committed, deleted or clean again leaves it), and raises a
 * `secret-found` notification once per finding.
 */
async function recordHeld(ctx: ReconcileContext, batch: string[], held: HeldBack[]): Promise<void> {
  for (const p of batch) delete ctx.state.findings[p];
  for (const h of held) {
    if (h.why === "no-key" || h.why === "other-key") continue; // reported as held back (status), like a file the worktree held back
    if (h.why === "unfiltered") {
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

/**
 * A change as git status reports it, shaped for summarize() (the `plan` preview: added, modified or
 * deleted; the blob a file will get is not known before it is staged, so no rename is guessed).
 */
function previewPath(c: StatusEntry): CommittedPath {
  const gone = "000000";
  const before = c.kind === "ordinary" || c.kind === "renamed" ? (c.modeHead !== gone ? { mode: c.modeHead as EntryMode, oid: c.oidHead } : undefined) : undefined;
  const deleted = (c.kind === "ordinary" || c.kind === "renamed") && c.modeWorktree === gone;
  const after = deleted ? undefined : { mode: (c.kind === "ordinary" || c.kind === "renamed" ? c.modeWorktree : "100644") as EntryMode, oid: `work:${c.path}` };
  return { path: c.path, ...(before ? { before } : {}), ...(after ? { after } : {}) };
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
 * A deletion and an addition of the same content are one rename. Each path is counted and listed
 * once, also when `paths` names it twice (issue 15: a message listed paths two or three times).
 */
export function summarize(listed: CommittedPath[]): { summary: string; body: string; files: number } {
  const paths = eachPathOnce(listed);
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

/**
 * One entry per path, in the order of first mention: a path named twice is what it was before the
 * first mention and what it is after the last; one that ends as it began (absent) is left out.
 */
function eachPathOnce(paths: CommittedPath[]): CommittedPath[] {
  const byPath = new Map<string, CommittedPath>();
  for (const p of paths) {
    const seen = byPath.get(p.path);
    if (!seen) byPath.set(p.path, p);
    else byPath.set(p.path, { path: p.path, ...(seen.before ? { before: seen.before } : {}), ...(p.after ? { after: p.after } : {}) });
  }
  return [...byPath.values()].filter((p) => p.before || p.after);
}
