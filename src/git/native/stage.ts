import { lstat } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { CatFileBatch } from "./cat-file.js";
import { GitError } from "./failure.js";
import { parseLsTree, parseStatusV2, type RawDiffEntry, type StatusEntry } from "./parse.js";
import { commitTree, diffTrees, updateIndexInfo, writeTree, type GitIdentity } from "./plumbing.js";
import { updateRefs } from "./refs.js";
import { runGit, type GitRepo } from "./run.js";

/**
 * Paths handed to git are always literal (a file may be named `*`, `:(top)` or `back\slash.txt`):
 * GIT_LITERAL_PATHSPECS turns off every glob and magic for the command.
 */
function literal(repo: GitRepo): GitRepo {
  return { ...repo, env: { ...repo.env, GIT_LITERAL_PATHSPECS: "1" } };
}

/**
 * What git says changed in the work tree against the index and HEAD, for `paths` (relative to the top;
 * none or `[""]`: the whole tree): `git status --porcelain=v2 -z --untracked-files=all --no-renames
 * --ignore-submodules=dirty`. git's own rules decide: attributes and filters, ignore rules (which never
 * hide a tracked file), submodules (a changed checked-out commit only; one not checked out is unchanged),
 * embedded repositories (one untracked entry ending in `/`). Ignored files are not listed. The index's
 * stat data (and git's untracked cache where it is enabled) keeps this cheap on a big tree.
 */
export async function worktreeChanges(repo: GitRepo, paths: readonly string[] = []): Promise<StatusEntry[]> {
  const scoped = paths.filter((p) => p !== "");
  // Without an encryption key the cascade-sync clean filter refuses plaintext, and a required filter
  // that fails makes git status die; status only compares (it stores nothing), so here the failure
  // just marks the file changed, and the sandbox holds it back.
  const args = ["-c", "filter.cascade-sync.required=false", "status", "--porcelain=v2", "-z", "--untracked-files=all", "--no-renames", "--ignore-submodules=dirty"];
  const all = async () => parseStatusV2((await runGit(args, repo)).stdout).entries.filter((e) => e.kind !== "ignored");
  if (scoped.length === 0) return all();
  // Many paths: git matches each file against every pathspec (files x pathspecs), so one whole-tree
  // status filtered here costs less than the slices of pathspecs would.
  if (scoped.length > PATHS_PER_COMMAND) return (await all()).filter(insidePaths(scoped));
  // status takes no --pathspec-from-file: the paths go on the command line, in slices that fit in one.
  const out: StatusEntry[] = [];
  for (let i = 0; i < scoped.length; i += PATHS_PER_COMMAND) {
    const { stdout } = await runGit([...args, "--", ...scoped.slice(i, i + PATHS_PER_COMMAND)], literal(repo));
    out.push(...parseStatusV2(stdout).entries.filter((e) => e.kind !== "ignored"));
  }
  return out;
}

/**
 * Whether a path is one of `paths` or under one of them, as a literal pathspec matches (an embedded
 * repository's `sub/` matches `sub`). Cost: one set lookup per level of the path.
 */
function insidePaths(paths: readonly string[]): (e: { path: string }) => boolean {
  const set = new Set(paths.map((p) => (p.endsWith("/") ? p.slice(0, -1) : p)));
  return ({ path }) => {
    const p = path.endsWith("/") ? path.slice(0, -1) : path;
    for (let end = p.length; end > 0; end = p.lastIndexOf("/", end - 1)) if (set.has(p.slice(0, end))) return true;
    return false;
  };
}

/** Paths per command line: well inside Linux's and macOS's argument limits for paths of a few hundred bytes. */
const PATHS_PER_COMMAND = 1000;

/** The paths of status entries, each once (a path git lists as both staged and changed is one path). */
export function changedPathsOf(entries: readonly StatusEntry[]): string[] {
  return [...new Set(entries.map((e) => e.path))].sort();
}

/** One path as a commit recorded it: before (in the parent) and after (in the new commit); absent = no such file. */
export interface StagedChange {
  path: string;
  before?: { mode: string; oid: string };
  after?: { mode: string; oid: string };
}

/** Why a path was kept out of a commit (the caller's own type: a secret finding, no key, ciphertext). */
export interface Held<H> {
  path: string;
  held: H;
}

/** A batch to commit with native git. */
export interface NativeCommit<H> {
  /** What git said changed ({@link worktreeChanges}); paths relative to the top, an embedded repository's ending in `/`. */
  changes: readonly StatusEntry[];
  /** The branch to move, e.g. refs/heads/develop. */
  ref: string;
  /** The branch's commit now: the parent, and what the ref must still hold when it moves; null for a first commit. */
  parent: string | null;
  /** What the ref must hold when it moves, when that is not `parent` (null: it must not exist yet, as for a new branch starting at `parent`). */
  expected?: string | null;
  /**
   * Paths git must not read at all, by why (an encrypted path whose attributes would not run the
   * cascade-sync filter: git would store its plaintext as an object): they are never staged.
   */
  keepOut?: (paths: readonly string[]) => Promise<Map<string, H>>;
  /**
   * Of the paths the new tree changes that this batch did not stage (a merge or a person left them
   * staged), those that must go back to the parent's entries, unreported (an encrypted file this
   * sandbox cannot commit): the tree is written again without them.
   */
  setBack?: (paths: readonly string[], parent: string) => Promise<string[]>;
  /** Judges the exact bytes staged for a regular file: undefined to commit them, or why they stay out. */
  judge: (path: string, blob: Buffer) => H | undefined;
  /** The commit message for what the commit changes. */
  message: (changes: StagedChange[]) => string;
  /**
   * Where to ask git again once deletions are staged ([] = the whole tree): with core.ignorecase, a file
   * renamed only in case stays hidden behind the old index entry until that entry is gone.
   */
  lookAgain?: readonly string[];
  author: GitIdentity;
  /**
   * The repository's long-lived object reader, when the caller has one (a commit then starts no
   * `git cat-file` or `git rev-parse` of its own): a staged blob's bytes, a commit's tree.
   */
  objects?: { readBlob(oid: string): Promise<Buffer>; treeOf(commit: string): Promise<string> };
}

/** What {@link commitNative} did: the new commit (null when nothing is left to commit), what it changed, and what was held back. */
export interface NativeCommitOutcome<H> {
  commit: string | null;
  /** The commit this one was made on (or compared with, when null): `parent`, or a native commit that moved the branch meanwhile. */
  parent: string | null;
  tree: string;
  changes: StagedChange[];
  held: Held<H>[];
}

/**
 * Commits `paths` the way `git add -A -- PATHS && git commit` would record them, with git doing the work:
 * `git add -A` and `git update-index` stage every path (attributes, eol, clean filters and LFS applied by
 * git, gitlinks for submodules and embedded repositories; `security.encrypt` paths through the
 * cascade-sync filter, which stores their ciphertext) except those `keepOut` names, which git never
 * reads. Then write-tree; the blob of every regular file the new tree records differently from the
 * parent's (`git diff-tree`) is read back and judged (the secret scan sees exactly the committed
 * bytes, an encrypted path's must be ciphertext); a held path, and one `setBack` names, gets the
 * parent's entry back (or none when new) and the tree is written again. Then commit-tree, and an update-ref transaction that moves `ref` only if it still holds `parent`: a native
 * commit racing us is never lost: what is still staged is committed on top of it, and after
 * {@link REF_RACE_ATTEMPTS} lost races Transient `RefConflict` goes to the caller (the index keeps the
 * paths staged, which the next look sees as changes). A file edited while this runs is committed as git
 * read it.
 */
export async function commitNative<H>(repo: GitRepo, c: NativeCommit<H>): Promise<NativeCommitOutcome<H>> {
  const held: Held<H>[] = [];
  const keepOut = async (entries: readonly StatusEntry[]) => {
    const out = (await c.keepOut?.(changedPathsOf(entries))) ?? new Map<string, H>();
    for (const [path, h] of out) held.push({ path, held: h });
    return entries.filter((e) => !out.has(e.path));
  };
  const changes = await keepOut(c.changes);
  const top = repo.workTree ?? repo.cwd ?? process.cwd();
  await holdStill(top, filesOf(changes));
  const began = Date.now();
  const { removed, files: staged } = await stagePlain(repo, changes);
  const batch = new Set(changedPathsOf(changes));
  if (removed && c.lookAgain) {
    const known = new Set(changedPathsOf(c.changes));
    const more = await keepOut((await worktreeChanges(repo, c.lookAgain)).filter((e) => e.kind === "untracked" && !known.has(e.path)));
    staged.push(...(await stagePlain(repo, more)).files);
    for (const p of changedPathsOf(more)) batch.add(p);
  }
  await leaveOutMoving(repo, top, staged, began, c.parent);
  let parent = c.parent;
  let expected = c.expected === undefined ? parent : c.expected;
  const judged = new Set<string>();
  for (let attempt = 1; ; ) {
    const tree = await writeTree(repo);
    const parentTree = parent ? await treeOfCommit(repo, c, parent) : EMPTY_TREE;
    if (tree === parentTree) return { commit: null, parent, tree, changes: [], held };
    // The message says what the commit records: the index may hold more than the batch (a file a
    // person staged with `git add`, or left staged by a native commit racing ours), issue 15; and
    // every staged blob it records is judged, whoever staged it.
    const changes = await treeChanges(repo, parentTree, tree);
    const back = parent && c.setBack ? await c.setBack(changes.filter((ch) => !batch.has(ch.path)).map((ch) => ch.path), parent) : [];
    if (back.length) {
      await indexAsIn(repo, parent, back);
      continue;
    }
    const refused = await judgeStaged(repo, c, changes.filter((ch) => !judged.has(judgedKey(ch))));
    for (const ch of changes) judged.add(judgedKey(ch));
    if (refused.length) {
      // A held path gets the parent's entry back (none when new), and the tree is written again.
      for (const r of refused) held.push({ path: r.change.path, held: r.held });
      await updateIndexInfo(repo, refused.map(({ change: ch }) => (ch.before ? { mode: ch.before.mode, oid: ch.before.oid, path: ch.path } : { mode: "0", oid: "0".repeat(ch.after!.oid.length), path: ch.path })));
      continue;
    }
    const message = c.message(changes);
    const commit = await commitTree(repo, { tree, parents: parent ? [parent] : [], message, author: c.author });
    try {
      await updateRefs(repo, [{ ref: c.ref, newOid: commit, expectedOld: expected }], `commit: ${message.split("\n")[0]}`);
      return { commit, parent, tree, changes, held };
    } catch (err) {
      // A native `git commit` moved the branch between our staging and the ref move. It committed the
      // index, which holds what we staged: commit what is still staged on top of it (never over it).
      if (!(err instanceof GitError) || err.reason !== "RefConflict" || attempt++ >= REF_RACE_ATTEMPTS) throw err;
      const now = await runGit(["rev-parse", "--verify", "--end-of-options", `${c.ref}^{commit}`], repo).catch(() => null);
      if (!now) throw err;
      parent = now.stdout.toString("utf8").trim();
      expected = parent;
    }
  }
}

/** git's empty tree, which git knows without storing it: the "parent tree" of a first commit. */
const EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";

/** Ref moves tried when native commits keep moving the branch under ours; then RefConflict goes to the caller. */
const REF_RACE_ATTEMPTS = 5;

/**
 * Stages what git said changed, with git reading the files (attributes and filters applied): a path whose
 * file is still gone (or became a folder) with `git update-index --force-remove`; every other file, tracked or
 * not, with `git update-index --add --remove --replace` (a tracked file under an ignored folder is still
 * a tracked file, which `git add` would refuse to name; `--replace` settles a file that took a folder's
 * place, as `git add` does; one path a line, so a burst of any size costs one pass, where `git add` would
 * match every file against every pathspec); an embedded repository (`sub/`) with `git add -A`, which
 * makes it a gitlink. A path that changed again since it was observed (became a folder, or went away
 * under a new symlink) makes git refuse the list, and an embedded repository without a commit makes
 * `git add` refuse it: then the paths are asked again, those repositories left out, and staged once more.
 * Resolves whether a tracked path was removed, and the files git read.
 */
async function stagePlain(repo: GitRepo, entries: readonly StatusEntry[], retried = false): Promise<{ removed: boolean; files: string[] }> {
  const top = repo.workTree ?? repo.cwd ?? process.cwd();
  // A file git saw gone may be back by now (a checkout or restore writes a file by deleting it first):
  // it is staged as it is, never committed as deleted.
  const gone = entries.filter((e) => e.kind !== "untracked" && goneFromWorktree(e)).map((e) => e.path);
  const back = new Set((await Promise.all(gone.map(async (p) => ((await fileThere(top, p)) ? p : undefined)))).filter((p): p is string => p !== undefined));
  const removed = gone.filter((p) => !back.has(p));
  const files = [...filesOf(entries), ...back];
  const repos = entries.filter((e) => e.kind === "untracked" && e.path.endsWith("/")).map((e) => e.path);
  if (removed.length) await runGit(["update-index", "-z", "--force-remove", "--stdin"], { ...repo, stdin: `${removed.join("\0")}\0` });
  try {
    if (files.length) await runGit(["update-index", "-z", "--add", "--remove", "--replace", "--stdin"], { ...repo, stdin: `${files.join("\0")}\0` });
    if (repos.length) await runGit(["add", "-A", "--pathspec-from-file=-", "--pathspec-file-nul"], { ...literal(repo), stdin: `${repos.join("\0")}\0` });
  } catch (err) {
    if (!(err instanceof GitError) || retried) throw err;
    // An embedded repository without a commit cannot be a gitlink: it stays out (status names it, see
    // embedded.ts), and the rest is committed.
    const unborn = new Set([...err.stderr.matchAll(/^error: '(.+)' does not have a commit checked out$/gm)].map((m) => m[1]!));
    const again = (await worktreeChanges(repo, [...files, ...repos])).filter((e) => !unborn.has(e.path));
    return stagePlain(repo, again, true);
  }
  return { removed: removed.length > 0, files };
}

/** True when a file or symlink is at `path` under `top`, reached through real folders only (as git would read it). */
async function fileThere(top: string, path: string): Promise<boolean> {
  const parts = path.split("/");
  for (let i = 1; i < parts.length; i++) {
    if (!(await lstat(join(top, ...parts.slice(0, i))).catch(() => null))?.isDirectory()) return false;
  }
  const st = await lstat(join(top, path)).catch(() => null);
  return !!st && (st.isFile() || st.isSymbolicLink());
}

/** A status entry whose file is gone from the work tree (its removal is what to stage). */
function goneFromWorktree(e: StatusEntry): boolean {
  return e.kind === "ordinary" && (e.xy[1] === "D" || (e.xy[0] === "D" && e.xy[1] === "."));
}

/** The paths among `entries` that git reads a file for when staging (not removals, not embedded repositories). */
function filesOf(entries: readonly StatusEntry[]): string[] {
  return entries.filter((e) => !goneFromWorktree(e) && !(e.kind === "untracked" && e.path.endsWith("/"))).map((e) => e.path);
}

/**
 * A save is not atomic: an editor (or `fs.writeFile`) truncates the file, then writes it, so git may
 * read it half-written, most often empty. Such a commit, once a merge base, makes a teammate's merge
 * take one side's whole file (issue 15: one person's latest line was replaced by an older one). So
 * before staging, files modified less than {@link SETTLE_MS} ago are waited for until they have held
 * still that long (at most {@link SETTLE_ROUNDS} waits; nothing is staged meanwhile, so a native
 * commit made then never takes our half of a batch). A file edited long enough ago (the debounce's
 * usual case) costs one lstat.
 */
async function holdStill(top: string, files: readonly string[]): Promise<void> {
  for (let round = 0; round < SETTLE_ROUNDS; round++) {
    const now = Date.now();
    const mtimes = await Promise.all(files.map(async (p) => (await lstat(join(top, p)).catch(() => null))?.mtimeMs ?? 0));
    const newest = Math.max(0, ...mtimes);
    if (now - newest >= SETTLE_MS) return;
    await sleep(SETTLE_MS - (now - newest));
  }
}

/**
 * After staging: a file modified since staging began (git may have read it half-written) or empty and
 * written moments ago (a save between its truncation and its bytes) stays out of this commit, its entry
 * back to the parent's (none when new). Its writer was at work, so the watcher hints it again and the
 * next batch takes it.
 */
async function leaveOutMoving(repo: GitRepo, top: string, files: readonly string[], began: number, parent: string | null): Promise<void> {
  const torn = await filterAsync(files, async (p) => {
    const st = await lstat(join(top, p)).catch(() => null);
    return !!st?.isFile() && (st.mtimeMs >= began || (st.size === 0 && st.mtimeMs >= Date.now() - SETTLE_MS));
  });
  await indexAsIn(repo, parent, torn);
}

/**
 * Sets the index entries of `paths` to what `treeish` holds (removed where it holds nothing, or when
 * there is no treeish), without touching the files.
 */
export async function indexAsIn(repo: GitRepo, treeish: string | null, paths: readonly string[]): Promise<void> {
  if (paths.length === 0) return;
  const had = new Map<string, { mode: string; oid: string }>();
  if (treeish) {
    for (let i = 0; i < paths.length; i += PATHS_PER_COMMAND) {
      const { stdout } = await runGit(["ls-tree", "-z", "--full-tree", treeish, "--", ...paths.slice(i, i + PATHS_PER_COMMAND)], literal(repo));
      for (const e of parseLsTree(stdout)) had.set(e.path, e);
    }
  }
  await updateIndexInfo(repo, paths.map((path) => {
    const e = had.get(path);
    return e ? { mode: e.mode, oid: e.oid, path } : { mode: "0", oid: "0".repeat(40), path };
  }));
}

async function filterAsync<T>(items: readonly T[], keep: (item: T) => Promise<boolean>): Promise<T[]> {
  const kept = await Promise.all(items.map(keep));
  return items.filter((_, i) => kept[i]);
}

/** How long a file just written must hold still before its bytes are trusted (see holdStill). */
export const SETTLE_MS = 100;
/** Waits for files still changing before they are staged as they are (see holdStill). */
const SETTLE_ROUNDS = 5;

/** What `tree` changes from `parentTree`, path by path. */
async function treeChanges(repo: GitRepo, parentTree: string, tree: string): Promise<StagedChange[]> {
  return (await diffTrees(repo, parentTree, tree)).map(toChange);
}

/** A change as judged once: the same path with the same staged blob is not read again. */
function judgedKey(ch: StagedChange): string {
  return `${ch.path}\0${ch.after?.mode ?? ""}\0${ch.after?.oid ?? ""}`;
}

/** The tree of `commit`, through the caller's object reader when it gave one. */
async function treeOfCommit(repo: GitRepo, c: NativeCommit<unknown>, commit: string): Promise<string> {
  if (c.objects) return c.objects.treeOf(commit);
  return (await runGit(["rev-parse", "--verify", "--end-of-options", `${commit}^{tree}`], repo)).stdout.toString("utf8").trim();
}

/** Reads back the staged blob of every added or modified regular file among `changes` and judges it: those held, and why. */
async function judgeStaged<H>(repo: GitRepo, c: NativeCommit<H>, changes: readonly StagedChange[]): Promise<{ change: StagedChange; held: H }[]> {
  const files = changes.filter((ch) => ch.after && (ch.after.mode === "100644" || ch.after.mode === "100755"));
  if (files.length === 0) return [];
  const own = c.objects ? undefined : new CatFileBatch(repo);
  const readBlob = c.objects ? (oid: string) => c.objects!.readBlob(oid) : async (oid: string) => {
    const obj = await own!.read(oid);
    if (!obj) throw new Error(`git staged ${oid}, which the repository does not have`);
    return obj.data;
  };
  try {
    const out: { change: StagedChange; held: H }[] = [];
    for (const change of files) {
      const h = c.judge(change.path, await readBlob(change.after!.oid));
      if (h !== undefined) out.push({ change, held: h });
    }
    return out;
  } finally {
    await own?.close();
  }
}

function toChange(e: RawDiffEntry): StagedChange {
  const gone = (mode: string) => mode === "000000";
  return {
    path: e.path,
    ...(gone(e.srcMode) ? {} : { before: { mode: e.srcMode, oid: e.srcOid } }),
    ...(gone(e.dstMode) ? {} : { after: { mode: e.dstMode, oid: e.dstOid } }),
  };
}
