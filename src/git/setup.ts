import { lstat, type BigIntStats } from "node:fs";
import { mkdir, readdir, rm, rmdir } from "node:fs/promises";
import { promisify } from "node:util";
import { dirname, join } from "node:path";
import { CascadeError } from "../errors.js";
import { readContent } from "../worktree.js";
import { acquireLock } from "./lockfile.js";
import { entryFromStat, isStatClean, readIndex, writeIndex, type GitIndex } from "./index-file.js";
import { RefConflictError, writeSymbolicRef } from "./refs.js";
import { blobOid, branchRef, type EntryMode, type FileEntry, type Person, type Repo, type TreeDiff } from "./repo.js";
import { writeWorkFile } from "./commit.js";
import { runGit } from "./native/run.js";

const lstatBig = promisify(lstat) as unknown as (p: string, o: { bigint: true }) => Promise<BigIntStats>;

/**
 * Creates an empty repository with the installed git (`git init`), so it gets git's own defaults for
 * the platform (core.ignorecase, core.symlinks, core.filemode as git probes them): at `path` with its
 * `.git` (a work tree), or at `path` itself when `bare`. HEAD points at the unborn `defaultBranch`.
 * Rejects with the gateway's classified GitError (a folder it may not write, say).
 */
export async function createRepository(path: string, opts: { bare: boolean; defaultBranch: string }): Promise<void> {
  await mkdir(path, { recursive: true });
  await runGit(["init", "-q", ...(opts.bare ? ["--bare"] : []), "-b", opts.defaultBranch, "--", path], { cwd: path });
}

/**
 * A checkout was refused because it would have overwritten or deleted something that is not
 * recorded in the commit being left (a local edit, an untracked or ignored file, a folder in the
 * way, a submodule). Stalled (reason `CheckoutConflict`); nothing was changed. `paths` lists them.
 */
export class CheckoutConflictError extends CascadeError {
  constructor(
    readonly branch: string,
    readonly paths: string[],
  ) {
    super("Stalled", "CheckoutConflict", `checking out ${branch} would overwrite or delete ${paths.length} path(s) that are not as the current commit has them: ${preview(paths)}; nothing was changed`, {
      hint: "commit or move them away, then try again",
    });
  }
}

/**
 * Switches the work tree from commit `from` (null: an unborn HEAD) to `branch`, like `git checkout
 * branch` but stricter: every path the two commits differ in must be on disk exactly as `from`
 * records it (or absent, where `from` has nothing), so that nothing the user has is overwritten or
 * deleted; a file is compared by its bytes, or through `repo.policy` for an encrypted path. Paths
 * the commits agree on are left alone (with any local edit). Files are written through
 * `repo.policy` (encrypted ones decrypted, all of them before anything is written) and atomically;
 * then HEAD points at the branch (with a reflog entry) and the index is written, all under
 * `.git/index.lock`.
 *
 * Returns the paths written and deleted. Throws CheckoutConflictError (nothing changed) when a path
 * is not as `from` has it, RefConflictError when HEAD no longer resolves to `from`, LockBusyError
 * when the index is locked, Stalled `EncryptionKeyMissing` when an encrypted file cannot be decrypted
 * (nothing changed).
 */
export async function checkoutBranch(
  repo: Repo,
  opts: { from: string | null; branch: string; committer: Person; trustExecutableBit: boolean; message: string },
): Promise<{ written: string[]; deleted: string[] }> {
  const to = await repo.branchHead(opts.branch);
  if (!to) throw new CascadeError("Stalled", "BranchMissing", `branch ${opts.branch} does not exist; nothing was changed`);
  const lock = await acquireLock(join(repo.gitdir, "index"), { timeoutMs: 1000 });
  try {
    const head = await repo.ref("HEAD");
    if (head !== opts.from) throw new RefConflictError("HEAD", opts.from, head);
    const index = await readIndex(repo.gitdir);
    const diff = await repo.diffTrees(opts.from ? await repo.commitTree(opts.from) : null, await repo.commitTree(to));
    const conflicts = await findConflicts(repo, diff, index, opts.trustExecutableBit);
    if (conflicts.length) throw new CheckoutConflictError(opts.branch, conflicts);

    const deleted: string[] = [];
    const written: string[] = [];
    // Deletions first: a file leaving may be the folder (or the file) in the way of one arriving.
    for (const d of diff) {
      if (d.after) continue;
      await rm(join(repo.dir, d.path), { force: true });
      index.entries.delete(d.path);
      await pruneEmptyParents(repo.dir, d.path);
      deleted.push(d.path);
    }
    for (const d of diff) {
      if (!d.after) continue;
      const abs = join(repo.dir, d.path);
      await writeWorkFile(abs, await checkoutContent(repo, d.path, d.after), d.after.mode);
      const st = await lstatBig(abs, { bigint: true });
      index.entries.set(d.path, entryFromStat(d.path, st, d.after.oid, parseInt(d.after.mode, 8)));
      written.push(d.path);
    }
    await writeSymbolicRef(repo.gitdir, "HEAD", branchRef(opts.branch), { message: opts.message, committer: opts.committer });
    await writeIndex(repo.gitdir, index, { lock });
    return { written, deleted };
  } catch (err) {
    await lock.rollback().catch(() => undefined);
    throw err;
  }
}

/** The paths of `diff` whose disk state is not what the checkout may replace (see checkoutBranch). */
async function findConflicts(repo: Repo, diff: TreeDiff[], index: GitIndex, trustExecutableBit: boolean): Promise<string[]> {
  const leaving = new Set(diff.filter((d) => d.before && !d.after).map((d) => d.path));
  const conflicts = new Set<string>();
  for (const d of diff) {
    if (d.before?.mode === "160000" || d.after?.mode === "160000") {
      conflicts.add(d.path);
      continue;
    }
    const abs = join(repo.dir, d.path);
    const st = await lstatBig(abs, { bigint: true }).catch(() => null);
    if (st?.isDirectory()) {
      // A folder where a file arrives: only fine when everything in it is leaving anyway.
      if (!d.after || !(await filesUnder(abs, d.path)).every((p) => leaving.has(p))) conflicts.add(d.path);
    } else if (!(await matches(repo, d.path, st, d.before, index, trustExecutableBit))) {
      conflicts.add(d.path);
    }
    if (!d.after) continue;
    // A file (or symlink) where a folder of an arriving path must be, and it is not leaving.
    const parts = d.path.split("/");
    for (let i = 1; i < parts.length; i++) {
      const prefix = parts.slice(0, i).join("/");
      const pst = await lstatBig(join(repo.dir, prefix), { bigint: true }).catch(() => null);
      if (pst && !pst.isDirectory() && !leaving.has(prefix)) conflicts.add(prefix);
      if (!pst || !pst.isDirectory()) break;
    }
  }
  return [...conflicts].sort();
}

/**
 * What a checkout writes for an entry, as git's smudge filter would: a symlink's target; an encrypted
 * file decrypted, or its ciphertext when this sandbox cannot decrypt it (no key, another person's key),
 * so that a clone of a team's history never fails on a key it does not have yet.
 */
async function checkoutContent(repo: Repo, path: string, entry: { oid: string; mode: string }): Promise<Buffer> {
  const blob = await repo.readBlob(entry.oid);
  return entry.mode === "120000" ? blob : repo.policy.toWorkTree(path, blob);
}

/** True when the disk state `st` of `path` is exactly `expected` (absent when `expected` is). */
async function matches(repo: Repo, path: string, st: BigIntStats | null, expected: FileEntry | undefined, index: GitIndex, trustExecutableBit: boolean): Promise<boolean> {
  if (!expected) return st === null;
  if (!st || !(st.isFile() || st.isSymbolicLink())) return false;
  if (st.isSymbolicLink() !== (expected.mode === "120000")) return false;
  if (trustExecutableBit && st.isFile() && ((Number(st.mode) & 0o100) !== 0) !== (expected.mode === "100755")) return false;
  const idx = index.entries.get(path);
  if (idx && idx.oid === expected.oid && !idx.flags.assumeValid && isStatClean(idx, st, index.mtime, { trustExecutableBit })) return true;
  const content = await readContent(join(repo.dir, path), st).catch(() => null);
  if (content === null) return false;
  if (blobOid(content) === expected.oid) return true;
  // An encrypted path holds plaintext while its blob is ciphertext (deterministic with the key).
  return st.isFile() && repo.policy.isEncrypted(path) && blobOid(repo.policy.blobContent(path, content)) === expected.oid;
}

/** Every non-folder under `abs` (relative paths, prefixed with `rel/`), and `rel/` for an empty folder (never leaving). */
async function filesUnder(abs: string, rel: string): Promise<string[]> {
  const out: string[] = [];
  const entries = await readdir(abs, { withFileTypes: true });
  if (!entries.length) out.push(`${rel}/`);
  for (const e of entries) {
    if (e.isDirectory()) out.push(...(await filesUnder(join(abs, e.name), `${rel}/${e.name}`)));
    else out.push(`${rel}/${e.name}`);
  }
  return out;
}

/** Removes the folders of `rel` that the deletion left empty, as git does; stops at the first that is not. */
async function pruneEmptyParents(root: string, rel: string): Promise<void> {
  for (let d = dirname(rel); d !== "." && d !== ""; d = dirname(d)) {
    try {
      await rmdir(join(root, d));
    } catch {
      return;
    }
  }
}

function preview(paths: string[]): string {
  return paths.length > 10 ? `${paths.slice(0, 10).join(", ")} and ${paths.length - 10} more` : paths.join(", ");
}

/**
 * Writes the files of `commit` into a work tree that has no history yet (the adoption of a remote's
 * branch by init), never replacing or deleting anything already there: a path that exists on disk
 * (or whose folder is taken by a file) is left as it is and listed in `kept`, so that it is
 * committed on top as the sandbox's own content. Every path of the commit is decrypted through
 * `repo.policy` before anything is written (a missing key or a tampered blob changes nothing);
 * submodules are not written. The index gets an entry for each file written, under `.git/index.lock`.
 *
 * Returns the paths written and kept. Throws Stalled `EncryptionKeyMissing`/`EncryptedBlobTampered`
 * from the policy (nothing written), LockBusyError when the index is locked.
 */
export async function populateWorkTree(repo: Repo, commit: string): Promise<{ written: string[]; kept: string[] }> {
  const files = [...(await repo.flattenTree(await repo.commitTree(commit)))].filter(([, e]) => e.mode !== "160000");
  const lock = await acquireLock(join(repo.gitdir, "index"), { timeoutMs: 1000 });
  try {
    const index = await readIndex(repo.gitdir);
    const written: string[] = [];
    const kept: string[] = [];
    for (const [path, e] of files) {
      const abs = join(repo.dir, path);
      if (await occupied(repo.dir, path)) {
        kept.push(path);
        continue;
      }
      await writeWorkFile(abs, await checkoutContent(repo, path, e), e.mode);
      const st = await lstatBig(abs, { bigint: true });
      index.entries.set(path, entryFromStat(path, st, e.oid, parseInt(e.mode, 8)));
      written.push(path);
    }
    await writeIndex(repo.gitdir, index, { lock });
    return { written, kept };
  } catch (err) {
    await lock.rollback().catch(() => undefined);
    throw err;
  }
}

/** True when `rel` exists on disk, or one of its folders is something other than a folder. */
async function occupied(root: string, rel: string): Promise<boolean> {
  const parts = rel.split("/");
  for (let i = 1; i <= parts.length; i++) {
    const st = await lstatBig(join(root, ...parts.slice(0, i)), { bigint: true }).catch(() => null);
    if (!st) return false;
    if (i === parts.length || !st.isDirectory()) return true;
  }
  return false;
}
