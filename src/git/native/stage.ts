import { lstat, readFile, readlink } from "node:fs/promises";
import { join } from "node:path";
import { CatFileBatch } from "./cat-file.js";
import { GitError } from "./failure.js";
import { parseRawDiff, parseStatusV2, type RawDiffEntry, type StatusEntry } from "./parse.js";
import { commitTree, updateIndexInfo, writeTree, type GitIdentity, type IndexInfo } from "./plumbing.js";
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
  const args = ["status", "--porcelain=v2", "-z", "--untracked-files=all", "--no-renames", "--ignore-submodules=dirty"];
  if (scoped.length === 0) return parseStatusV2((await runGit(args, repo)).stdout).entries.filter((e) => e.kind !== "ignored");
  // status takes no --pathspec-from-file: the paths go on the command line, in slices that fit in one.
  const out: StatusEntry[] = [];
  for (let i = 0; i < scoped.length; i += PATHS_PER_COMMAND) {
    const { stdout } = await runGit([...args, "--", ...scoped.slice(i, i + PATHS_PER_COMMAND)], literal(repo));
    out.push(...parseStatusV2(stdout).entries.filter((e) => e.kind !== "ignored"));
  }
  return out;
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

/** What an encrypted path's working file becomes in git: its blob bytes, or why it stays out. */
export type EncryptedBlob<H> = { ok: true; blob: Buffer } | { ok: false; held: H };

/** A batch to commit with native git. */
export interface NativeCommit<H> {
  /** What git said changed ({@link worktreeChanges}); paths relative to the top, an embedded repository's ending in `/`. */
  changes: readonly StatusEntry[];
  /** The branch to move, e.g. refs/heads/develop. */
  ref: string;
  /** The branch's commit now: the parent, and what the ref must still hold when it moves. */
  parent: string;
  /** True for a path git must never read itself (security.encrypt): its blob comes from {@link encrypt}. */
  isEncrypted: (path: string) => boolean;
  /** The blob to store for an encrypted path's working file, or why it is held back (never plaintext). */
  encrypt: (path: string, content: Buffer) => EncryptedBlob<H>;
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
}

/** What {@link commitNative} did: the new commit (null when nothing is left to commit), what it changed, and what was held back. */
export interface NativeCommitOutcome<H> {
  commit: string | null;
  tree: string;
  changes: StagedChange[];
  held: Held<H>[];
}

/**
 * Commits `paths` the way `git add -A -- PATHS && git commit` would record them, with git doing the work:
 * `git add -A` stages every path that is not encrypted (attributes, eol, clean filters and LFS applied by
 * git, gitlinks for submodules and embedded repositories); an encrypted path is never given to git: its
 * ciphertext is written with `hash-object -w --no-filters` and set with `update-index --index-info` (held
 * back without a key). The staged blobs of regular files are read back and judged (the secret scan sees
 * exactly the committed bytes); a held path gets HEAD's entry back (or none when new). Then write-tree,
 * commit-tree, and an update-ref transaction that moves `ref` only if it still holds `parent`: a native
 * commit racing us is never lost: what is still staged is committed on top of it, and after
 * {@link REF_RACE_ATTEMPTS} lost races Transient `RefConflict` goes to the caller (the index keeps the
 * paths staged, which the next look sees as changes). A file edited while this runs is committed as git
 * read it.
 */
export async function commitNative<H>(repo: GitRepo, c: NativeCommit<H>): Promise<NativeCommitOutcome<H>> {
  const held: Held<H>[] = [];
  let paths = changedPathsOf(c.changes);
  const removed = await stagePlain(repo, c.changes.filter((e) => !c.isEncrypted(e.path)));
  if (removed && c.lookAgain) {
    const known = new Set(paths);
    const surfaced = (await worktreeChanges(repo, c.lookAgain)).filter((e) => e.kind === "untracked" && !known.has(e.path) && !c.isEncrypted(e.path));
    await stagePlain(repo, surfaced);
    paths = changedPathsOf([...c.changes, ...surfaced]);
  }
  for (const p of paths.filter((p) => c.isEncrypted(p))) {
    const h = await stageEncrypted(repo, p, c.encrypt);
    if (h !== undefined) held.push({ path: p, held: h });
  }
  let parent = c.parent;
  let staged = await stagedChanges(repo, parent, paths);
  const restore: IndexInfo[] = [];
  const judged = await judgeStaged(repo, staged.filter((e) => !c.isEncrypted(e.path)), c.judge);
  for (const { entry, held: h } of judged) {
    held.push({ path: entry.path, held: h });
    restore.push(entry.srcMode === "000000" ? { mode: "0", oid: "0".repeat(entry.srcOid.length), path: entry.path } : { mode: entry.srcMode, oid: entry.srcOid, path: entry.path });
  }
  await updateIndexInfo(repo, restore);
  const heldPaths = new Set(judged.map((j) => j.entry.path));
  for (let attempt = 1; ; attempt++) {
    const changes = staged.filter((e) => !heldPaths.has(e.path)).map(toChange);
    const tree = await writeTree(repo);
    const parentTree = (await runGit(["rev-parse", `${parent}^{tree}`], repo)).stdout.toString("utf8").trim();
    if (tree === parentTree) return { commit: null, tree, changes: [], held };
    const message = c.message(changes);
    const commit = await commitTree(repo, { tree, parents: [parent], message, author: c.author });
    try {
      await updateRefs(repo, [{ ref: c.ref, newOid: commit, expectedOld: parent }], `commit: ${message.split("\n")[0]}`);
      return { commit, tree, changes, held };
    } catch (err) {
      // A native `git commit` moved the branch between our staging and the ref move. It committed the
      // index, which holds what we staged: commit what is still staged on top of it (never over it).
      if (!(err instanceof GitError) || err.reason !== "RefConflict" || attempt >= REF_RACE_ATTEMPTS) throw err;
      const now = await runGit(["rev-parse", "--verify", "--end-of-options", `${c.ref}^{commit}`], repo).catch(() => null);
      if (!now) throw err;
      parent = now.stdout.toString("utf8").trim();
      staged = await stagedChanges(repo, parent, paths);
    }
  }
}

/** Ref moves tried when native commits keep moving the branch under ours; then RefConflict goes to the caller. */
const REF_RACE_ATTEMPTS = 5;

/**
 * Stages what git said changed, with git reading the files (attributes and filters applied): a tracked
 * path with `git update-index` (`--force-remove` when its file is gone or became a folder; a tracked file
 * under an ignored folder is still a tracked file, which `git add` would refuse to name), then the
 * untracked ones with `git add -A` (status lists no ignored file, so git takes them all; an embedded
 * repository becomes a gitlink). An untracked path that matches nothing any more (deleted again since
 * it was observed) makes git refuse the whole list, so the paths git still sees are asked again.
 * Resolves true when a tracked path was removed.
 */
async function stagePlain(repo: GitRepo, entries: readonly StatusEntry[]): Promise<boolean> {
  const gone = (e: StatusEntry) => e.kind === "ordinary" && (e.xy[1] === "D" || (e.xy[0] === "D" && e.xy[1] === "."));
  const removed = entries.filter((e) => e.kind !== "untracked" && gone(e)).map((e) => e.path);
  const updated = entries.filter((e) => e.kind !== "untracked" && !gone(e)).map((e) => e.path);
  const untracked = entries.filter((e) => e.kind === "untracked").map((e) => e.path);
  if (removed.length) await runGit(["update-index", "-z", "--force-remove", "--stdin"], { ...repo, stdin: `${removed.join("\0")}\0` });
  if (updated.length) await runGit(["update-index", "-z", "--add", "--remove", "--stdin"], { ...repo, stdin: `${updated.join("\0")}\0` });
  if (untracked.length === 0) return removed.length > 0;
  const add = (ps: readonly string[]) => runGit(["add", "-A", "--pathspec-from-file=-", "--pathspec-file-nul"], { ...literal(repo), stdin: `${ps.join("\0")}\0` });
  try {
    await add(untracked);
  } catch (err) {
    if (!(err instanceof GitError) || !/did not match any files/.test(err.message)) throw err;
    const still = (await worktreeChanges(repo, untracked)).filter((e) => e.kind === "untracked").map((e) => e.path);
    if (still.length) await add(still);
  }
  return removed.length > 0;
}

/** Stages an encrypted path's ciphertext (or its deletion); returns why it was held back, if it was. */
async function stageEncrypted<H>(repo: GitRepo, path: string, encrypt: NativeCommit<H>["encrypt"]): Promise<H | undefined> {
  const abs = join(workTreeOf(repo), path);
  const st = await lstat(abs).catch(() => null);
  if (!st || !(st.isFile() || st.isSymbolicLink())) {
    await runGit(["update-index", "-z", "--force-remove", "--stdin"], { ...repo, stdin: `${path}\0` });
    return undefined;
  }
  let blob: Buffer;
  let mode: string;
  if (st.isSymbolicLink()) {
    blob = Buffer.from(await readlink(abs));
    mode = "120000";
  } else {
    const stored = encrypt(path, await readFile(abs));
    if (!stored.ok) return stored.held;
    blob = stored.blob;
    mode = st.mode & 0o100 ? "100755" : "100644";
  }
  const oid = (await runGit(["hash-object", "-w", "--no-filters", "--stdin"], { ...repo, stdin: blob })).stdout.toString("utf8").trim();
  await updateIndexInfo(repo, [{ mode, oid, path }]);
  // The blob is ciphertext while the file is plaintext: git would report it changed forever, so git is
  // told to trust the entry; the caller compares encrypted paths itself (by encrypting them again).
  if (mode !== "120000") await runGit(["update-index", "-z", "--assume-unchanged", "--stdin"], { ...repo, stdin: `${path}\0` });
  return undefined;
}

/** The work tree's top folder of a repository description. */
function workTreeOf(repo: GitRepo): string {
  return repo.workTree ?? repo.cwd ?? process.cwd();
}

/** What the index now holds differently from `parent` for `paths`: `git diff-index --cached -z --raw --no-renames`. */
async function stagedChanges(repo: GitRepo, parent: string, paths: readonly string[]): Promise<RawDiffEntry[]> {
  if (paths.length === 0) return [];
  // An embedded repository was asked for as `sub/`; its gitlink is the path `sub`.
  const scope = paths.map((p) => (p.endsWith("/") ? p.slice(0, -1) : p));
  const { stdout } = await runGit(["diff-index", "--cached", "-z", "--raw", "--no-renames", "--full-index", parent, "--", ...scope], literal(repo));
  return parseRawDiff(stdout).entries;
}

/** Reads back the staged blob of every added or modified regular file and judges it. */
async function judgeStaged<H>(repo: GitRepo, entries: RawDiffEntry[], judge: NativeCommit<H>["judge"]): Promise<{ entry: RawDiffEntry; held: H }[]> {
  const files = entries.filter((e) => e.dstMode === "100644" || e.dstMode === "100755");
  if (files.length === 0) return [];
  const reader = new CatFileBatch(repo);
  try {
    const out: { entry: RawDiffEntry; held: H }[] = [];
    for (const entry of files) {
      const obj = await reader.read(entry.dstOid);
      if (!obj) throw new Error(`git add staged ${entry.path} as ${entry.dstOid}, which the repository does not have`);
      const h = judge(entry.path, obj.data);
      if (h !== undefined) out.push({ entry, held: h });
    }
    return out;
  } finally {
    await reader.close();
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
