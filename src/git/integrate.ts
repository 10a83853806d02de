import { lstat, mkdir, readFile, readlink, rename, rm, rmdir, symlink, writeFile, chmod } from "node:fs/promises";
import type { Stats } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { createHash, randomBytes } from "node:crypto";
import { dirname, join } from "node:path";
import { mergeTextOurs } from "./native/merge.js";
import { writeFileDurably } from "../fs-util.js";
import { CatFileBatch, diffTrees, GitError, runGit, SETTLE_MS, updateIndexInfo, updateRefs, type GitRepo, type IndexInfo } from "./native/index.js";

/**
 * Bringing commits made elsewhere into the sandbox, crash-safe. The invariant: from the moment the
 * branch moves until every file has caught up, `.git/cascade-sync/integrating.json` names the commit the
 * files came from and the one they go to, and nothing commits the sandbox while it exists (the controller
 * finishes it first, at start and before every integration). So a path whose file still holds the old
 * commit's version is the remote's to update, never a sandbox edit to commit: a crash (kill -9) at any
 * point can neither revert a remote edit nor lose a sandbox edit.
 *
 * Order: journal (fsynced) -> branch moved with compare-and-swap -> files written one by one, each checked
 * immediately before it is replaced -> the index entries of exactly those paths (native update-index) ->
 * journal removed. Every step after the journal is repeatable: finishing again changes nothing that was
 * done.
 */

/** One integration: the sandbox branch moves from `from` to `to`, and the files follow. */
export interface Integration {
  /** Full ref name, e.g. refs/heads/develop. */
  ref: string;
  from: string;
  to: string;
  /** The reflog message of the move. */
  message: string;
}

/** What the files of an integration need from the sandbox. */
export interface IntegrationSandbox {
  /** The work tree's top folder. */
  dir: string;
  /** The .git folder. */
  gitdir: string;
  /** How the native gateway addresses the repository. */
  git: GitRepo;
  /** security.encrypt: such paths hold plaintext while their blobs hold ciphertext (compared and written through it). */
  policy: {
    isEncrypted(path: string): boolean;
    blobContent(path: string, content: Buffer): Buffer;
    fromGit(path: string, blob: Buffer): Buffer;
    /** Why this sandbox's key cannot decrypt `blob` (another person's key, no key), or undefined. */
    undecryptable(path: string, blob: Buffer): unknown;
  };
}

/** What catching up did. */
export interface CatchUp {
  /** Paths now holding the target's version (written now, or already there). */
  written: string[];
  /** Paths being edited in the sandbox: left as they are, for the next sandbox commit. */
  skipped: string[];
}

const JOURNAL = ["cascade-sync", "integrating.json"];

function journalPath(gitdir: string): string {
  return join(gitdir, ...JOURNAL);
}

/** The integration a crash interrupted, if any (a damaged journal counts as none: it was never complete, so the branch never moved). */
export async function pendingIntegration(gitdir: string): Promise<Integration | undefined> {
  const text = await readFile(journalPath(gitdir), "utf8").catch(() => undefined);
  if (text === undefined) return undefined;
  try {
    const j = JSON.parse(text) as Partial<Integration>;
    if (typeof j.ref === "string" && typeof j.from === "string" && typeof j.to === "string" && typeof j.message === "string") return j as Integration;
  } catch {
    // fall through
  }
  await rm(journalPath(gitdir), { force: true });
  return undefined;
}

/**
 * Starts an integration: writes the journal durably, then moves the branch from `from` to `to` (only if it
 * still holds `from`). Rejects with Transient `RefConflict` when the branch moved meanwhile (the journal is
 * removed again: nothing was written) or `LockBusy`.
 */
export async function beginIntegration(sandbox: IntegrationSandbox, i: Integration): Promise<void> {
  await writeFileDurably(journalPath(sandbox.gitdir), `${JSON.stringify(i)}\n`, { makeFolder: true, syncFolder: true });
  try {
    await updateRefs(sandbox.git, [{ ref: i.ref, newOid: i.to, expectedOld: i.from }], i.message);
  } catch (err) {
    await rm(journalPath(sandbox.gitdir), { force: true });
    throw err;
  }
}

/**
 * Finishes an integration (the one just begun, or one a crash interrupted): moves the branch if it still
 * holds `from`, brings every path that differs between the two commits to `to`'s version when its file
 * still holds `from`'s (or already holds `to`'s), leaves a path being edited as it is, sets the index
 * entries of those paths, and removes the journal. A branch that moved elsewhere meanwhile (a native
 * commit while the controller was down) ends the integration without writing: the files are then what
 * that commit's author left. Resolves with what was written and skipped; `null` when the branch had moved
 * elsewhere.
 */
export async function finishIntegration(sandbox: IntegrationSandbox, i: Integration): Promise<CatchUp | null> {
  const head = await branchHead(sandbox.git, i.ref);
  if (head === i.from) await updateRefs(sandbox.git, [{ ref: i.ref, newOid: i.to, expectedOld: i.from }], i.message);
  else if (head !== i.to && !(head && (await isAncestor(sandbox.git, i.to, head)))) {
    await rm(journalPath(sandbox.gitdir), { force: true });
    return null;
  }
  const result = await catchUp(sandbox, i.from, i.to);
  await rm(journalPath(sandbox.gitdir), { force: true });
  await rm(scratchDir(sandbox.gitdir), { recursive: true, force: true });
  return result;
}

async function branchHead(repo: GitRepo, ref: string): Promise<string | null> {
  const r = await runGit(["rev-parse", "--verify", "--quiet", "--end-of-options", `${ref}^{commit}`], { ...repo, okExitCodes: [0, 1] });
  return r.exitCode === 0 ? r.stdout.toString("utf8").trim() : null;
}

async function isAncestor(repo: GitRepo, a: string, b: string): Promise<boolean> {
  const r = await runGit(["merge-base", "--is-ancestor", a, b], { ...repo, okExitCodes: [0, 1] });
  return r.exitCode === 0;
}

function scratchDir(gitdir: string): string {
  return join(gitdir, "cascade-sync", "incoming");
}

/** Every path whose entry differs between two commits (`git diff-tree -r`, no renames): files, symlinks, submodules. */
export async function changedPaths(repo: GitRepo, from: string, to: string): Promise<{ path: string; before?: Entry; after?: Entry }[]> {
  return (await diffTrees(repo, from, to)).map((d) => ({
    path: d.path,
    ...(gone(d.srcMode) ? {} : { before: { mode: d.srcMode, oid: d.srcOid } }),
    ...(gone(d.dstMode) ? {} : { after: { mode: d.dstMode, oid: d.dstOid } }),
  }));
}

/**
 * The paths among `paths` (changed between `from` and `to`) whose files hold neither version: edits in
 * the sandbox not yet committed. Integrating now would leave them as they are and the next sandbox commit
 * would then take them whole, dropping the other side's hunks; committing them first lets the merge keep
 * both sides' hunks.
 */
export async function editedPaths(sandbox: IntegrationSandbox, paths: { path: string; before?: Entry; after?: Entry }[]): Promise<string[]> {
  const filemode = (await runGit(["config", "--bool", "core.filemode"], { ...sandbox.git, okExitCodes: [0, 1] })).stdout.toString("utf8").trim() !== "false";
  const reader = new CatFileBatch(sandbox.git);
  const look = new Look(sandbox, reader, filemode);
  try {
    const out: string[] = [];
    for (const p of paths) {
      if (p.before?.mode === "160000" || p.after?.mode === "160000") continue;
      const abs = join(sandbox.dir, p.path);
      if (!(await look.holds(abs, p.path, p.before)) && !(await look.holds(abs, p.path, p.after))) out.push(p.path);
    }
    return out;
  } finally {
    await reader.close();
  }
}

/**
 * Brings the work tree from `from`'s files to `to`'s, path by path (see finishIntegration). Deletions go
 * first (deepest first, emptied folders removed as git does), so a folder can become a file and back.
 */
async function catchUp(sandbox: IntegrationSandbox, from: string, to: string): Promise<CatchUp> {
  const diff = await diffTrees(sandbox.git, from, to);
  const filemode = (await runGit(["config", "--bool", "core.filemode"], { ...sandbox.git, okExitCodes: [0, 1] })).stdout.toString("utf8").trim() !== "false";
  const deletions = diff.filter((d) => gone(d.dstMode)).reverse();
  const rest = diff.filter((d) => !gone(d.dstMode));
  const reader = new CatFileBatch(sandbox.git);
  const look = new Look(sandbox, reader, filemode);
  const written: string[] = [];
  const skipped: string[] = [];
  const index: IndexInfo[] = [];
  const rehash: string[] = [];
  try {
    await mkdir(scratchDir(sandbox.gitdir), { recursive: true });
    for (const d of [...deletions, ...rest]) {
      const after = gone(d.dstMode) ? undefined : { mode: d.dstMode, oid: d.dstOid };
      const before = gone(d.srcMode) ? undefined : { mode: d.srcMode, oid: d.srcOid };
      // A submodule's files are its own repository's: only its index entry follows, as with git merge.
      if (d.srcMode === "160000" || d.dstMode === "160000") {
        index.push(after ? { ...after, path: d.path } : removal(d.path));
        written.push(d.path);
        continue;
      }
      // A blob this sandbox's key cannot decrypt (another person's key) is held: not written, and the
      // sandbox reconciler never commits over it (see security/git-filter.ts); the rest goes on.
      const outcome = after && (await look.undecryptable(d.path, after)) ? "skipped" : await bring(sandbox, look, d.path, before, after);
      if (outcome === "skipped") {
        skipped.push(d.path);
        // The index says what the branch has; git then sees the edit as a change to commit.
        index.push(after ? { ...after, path: d.path } : removal(d.path));
        continue;
      }
      written.push(d.path);
      // An encrypted path's entry is the known ciphertext blob (git's clean filter gives the same from the plaintext).
      if (after && sandbox.policy.isEncrypted(d.path) && after.mode !== "120000") index.push({ ...after, path: d.path });
      else rehash.push(d.path);
    }
    await setIndex(sandbox, rehash, index);
    return { written, skipped };
  } finally {
    await reader.close();
  }
}

function gone(mode: string): boolean {
  return /^0+$/.test(mode);
}

function removal(path: string): IndexInfo {
  return { mode: "0", oid: "0".repeat(40), path };
}

/**
 * The index entries of exactly the paths handled: written files hashed by git from what is on disk now
 * (`update-index --add --remove --replace`: attributes and filters applied, stat data recorded), the rest
 * set as given.
 */
async function setIndex(sandbox: IntegrationSandbox, rehash: string[], entries: IndexInfo[]): Promise<void> {
  const literal: GitRepo = { ...sandbox.git, env: { ...sandbox.git.env, GIT_LITERAL_PATHSPECS: "1" } };
  if (rehash.length) await runGit(["update-index", "-z", "--add", "--remove", "--replace", "--stdin"], { ...literal, stdin: `${rehash.join("\0")}\0` });
  await updateIndexInfo(literal, entries);
}

/**
 * Merges `after`'s changes since `before` into the edited text file at `abs` (`git merge-file -p --ours`:
 * the file's own edits win overlapping hunks), written only if the file still holds the bytes merged.
 * Binary, symlink, encrypted and added/deleted paths are left as they are (the sandbox wins whole).
 */
async function mergeIntoEdited(sandbox: IntegrationSandbox, look: Look, abs: string, path: string, before: Entry | undefined, after: Entry | undefined): Promise<void> {
  const regular = (e: Entry | undefined) => e && (e.mode === "100644" || e.mode === "100755");
  if (!regular(before) || !regular(after) || sandbox.policy.isEncrypted(path)) return;
  const base = await look.blobOf(before!);
  const theirs = await look.blobOf(after!);
  // A save landing while the merge is prepared makes it start again from the saved bytes: the remote's
  // hunks left out would be reverted by the sandbox's next commit of the file.
  for (let attempt = 0; attempt < MERGE_ATTEMPTS; attempt++) {
    const mine = await steadyRead(abs);
    if (!mine) return;
    const merged = await mergeTextOurs(sandbox.git, scratchDir(sandbox.gitdir), mine.bytes, base, theirs);
    if (merged === undefined || merged.equals(mine.bytes)) return;
    const tmp = join(scratchDir(sandbox.gitdir), `${randomBytes(8).toString("hex")}.merged`);
    await writeFile(tmp, merged);
    await chmod(tmp, mine.st.mode & 0o777);
    // The last look: an edit saved meanwhile is never overwritten.
    const now = await steadyRead(abs, 1);
    if (now && now.bytes.equals(mine.bytes) && sameStat(now.st, mine.st)) return rename(tmp, abs);
    await rm(tmp, { force: true });
  }
}

/** Looks at a file until it holds still (see steadyRead). */
const STEADY_ROUNDS = 5;
/** Merges tried into a file whose person keeps saving it. */
const MERGE_ATTEMPTS = 10;

/**
 * The bytes of the regular file at `abs` and its lstat, read whole: a file that changed while it was
 * read, or that is empty moments after it was written (a save in progress: truncated, its bytes still
 * to come; renamed over, the save would be lost), is read again after a while, at most `rounds`
 * times. Null when it is not a regular file, or never held still.
 */
async function steadyRead(abs: string, rounds = STEADY_ROUNDS): Promise<{ st: Stats; bytes: Buffer } | null> {
  for (let round = 0; round < rounds; round++) {
    if (round > 0) await sleep(SETTLE_MS / 5);
    const st = await lstat(abs).catch(() => null);
    if (!st?.isFile()) return null;
    if (st.size === 0 && Date.now() - st.mtimeMs < SETTLE_MS) continue;
    const bytes = await readFile(abs).catch(() => null);
    const again = await lstat(abs).catch(() => null);
    if (bytes && again && bytes.length === st.size && sameStat(again, st)) return { st, bytes };
  }
  return null;
}

function sameStat(a: Stats, b: Stats): boolean {
  return a.ino === b.ino && a.size === b.size && a.mtimeMs === b.mtimeMs && a.ctimeMs === b.ctimeMs;
}

/** A tree entry of a file: its mode and blob (or gitlink) id. */
export type Entry = { mode: string; oid: string };

/**
 * Puts `after` (or its absence) at `path` when the file holds `before` (or already holds `after`):
 * the new content is prepared beside .git first, the check is made again right before the rename that
 * replaces the file, so an edit saved meanwhile is never overwritten.
 */
async function bring(sandbox: IntegrationSandbox, look: Look, path: string, before: Entry | undefined, after: Entry | undefined): Promise<"written" | "skipped"> {
  const abs = join(sandbox.dir, path);
  // The old version first: the usual case, and one the bytes decide without asking git to clean them.
  if (!(await look.holds(abs, path, before))) {
    if (await look.holds(abs, path, after)) return "written";
    // Edited here: the remote's hunks are merged into the edited file (the sandbox winning overlapping
    // ones), so the sandbox's next commit of this file cannot revert the other side's lines.
    await mergeIntoEdited(sandbox, look, abs, path, before, after);
    return "skipped";
  }
  if (!after) {
    await rm(abs, { force: true });
    await removeEmptyFolders(sandbox.dir, dirname(path));
    return "written";
  }
  const content = await look.content(path, after);
  const tmp = join(scratchDir(sandbox.gitdir), `${randomBytes(8).toString("hex")}.tmp`);
  if (after.mode === "120000") await symlink(content.toString(), tmp);
  else {
    await writeFile(tmp, content);
    await chmod(tmp, after.mode === "100755" ? 0o755 : 0o644);
  }
  try {
    await mkdir(dirname(abs), { recursive: true });
    // The last look: between it and the rename no await runs but the rename itself.
    if (!(await look.holds(abs, path, before))) {
      await rm(tmp, { force: true });
      return "skipped";
    }
    await rename(tmp, abs);
    return "written";
  } catch (err) {
    await rm(tmp, { force: true });
    const code = (err as NodeJS.ErrnoException).code;
    // A folder of edited files where the file goes (or a file where a folder goes): the sandbox's stays.
    if (code === "EISDIR" || code === "ENOTDIR" || code === "ENOTEMPTY" || code === "EEXIST") return "skipped";
    throw err;
  }
}

/** Removes `folder` and its parents up to (not including) the top while they are empty. */
async function removeEmptyFolders(top: string, folder: string): Promise<void> {
  for (let f = folder; f !== "." && f !== "" && f !== "/"; f = dirname(f)) {
    try {
      await rmdir(join(top, f));
    } catch {
      return;
    }
  }
}

/** Compares working files with blobs, and reads blobs to write, the way git would see them. */
class Look {
  constructor(
    private readonly sandbox: IntegrationSandbox,
    private readonly reader: CatFileBatch,
    private readonly filemode: boolean,
  ) {}

  /** The bytes to write for `entry` at `path` (an encrypted path's blob decrypted). */
  async content(path: string, entry: Entry): Promise<Buffer> {
    const blob = await this.blob(entry.oid);
    return entry.mode === "120000" ? blob : this.sandbox.policy.fromGit(path, blob);
  }

  /** True when `entry` is an encrypted path's blob that this sandbox's key cannot decrypt. */
  async undecryptable(path: string, entry: Entry): Promise<boolean> {
    if (entry.mode === "120000" || entry.mode === "160000" || !this.sandbox.policy.isEncrypted(path)) return false;
    return !!this.sandbox.policy.undecryptable(path, await this.blob(entry.oid));
  }

  /** The stored bytes of `entry`'s blob. */
  async blobOf(entry: Entry): Promise<Buffer> {
    return this.blob(entry.oid);
  }

  private async blob(oid: string): Promise<Buffer> {
    const obj = await this.reader.read(oid);
    if (!obj) throw new GitError("Transient", "ObjectMissing", `blob ${oid} is missing from the sandbox's repository`, { command: "git cat-file --batch", stderr: "", hint: "run `git fsck` in the sandbox" });
    return obj.data;
  }

  /**
   * True when the file at `path` is what `entry` records (absent when undefined), as git status would
   * judge it: same kind and exec bit (when core.filemode), and content whose blob is `entry.oid` (the
   * bytes themselves, or cleaned by git's filters; an encrypted path through its ciphertext).
   */
  async holds(abs: string, path: string, entry: Entry | undefined): Promise<boolean> {
    const st = await lstat(abs).catch(() => null);
    if (!st || !(st.isFile() || st.isSymbolicLink())) return !entry && !st;
    if (!entry) return false;
    if (st.isSymbolicLink()) return entry.mode === "120000" && (await readlink(abs, { encoding: "buffer" })).equals(await this.blob(entry.oid));
    if (entry.mode === "120000" || entry.mode === "160000") return false;
    if (this.filemode && (st.mode & 0o100 ? "100755" : "100644") !== entry.mode) return false;
    const bytes = await readFile(abs).catch(() => null);
    if (bytes === null) return false;
    if (this.sandbox.policy.isEncrypted(path)) return blobOid(this.sandbox.policy.blobContent(path, bytes)) === entry.oid;
    if (blobOid(bytes) === entry.oid) return true;
    // Not the blob's bytes: maybe the blob after git's smudge (eol, filters). Ask git to clean it.
    const { stdout } = await runGit(["hash-object", "--stdin", `--path=${path}`], { ...this.sandbox.git, stdin: bytes });
    return stdout.toString("utf8").trim() === entry.oid;
  }
}

/** The blob id git gives `content` (sha1 object ids: the formats this release supports). */
function blobOid(content: Buffer): string {
  return createHash("sha1").update(`blob ${content.length}\0`).update(content).digest("hex");
}
