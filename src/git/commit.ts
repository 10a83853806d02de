import { lstat, type BigIntStats } from "node:fs";
import { mkdir, rename, rm, symlink, writeFile, chmod } from "node:fs/promises";
import { promisify } from "node:util";
import { dirname, join } from "node:path";
import { randomBytes } from "node:crypto";
import { acquireLock } from "./lockfile.js";
import { entryFromStat, readIndex, writeIndex, type FileStats, type GitIndex } from "./index-file.js";
import { branchRef, type EntryMode, type FileEntry, type ObjectBatch, type Person, type Repo, type TreeDiff } from "./repo.js";
import { readContent } from "../worktree.js";
import { mapLimit } from "../concurrency.js";
import type { BlobPolicy, HeldBack } from "../security/blob-policy.js";

const PARALLEL_WRITES = 16;
const lstatBig = promisify(lstat) as unknown as (p: string, o: { bigint: true }) => Promise<BigIntStats>;

/** One path to record in a commit: the working file at `path`, or its deletion. */
export interface StagedPath {
  path: string;
  deleted: boolean;
  /** The file as an observation just read it (stat data taken before the bytes); read again when absent. */
  read?: { stats: FileStats; content: Buffer };
}

/** What a sandbox commit recorded, per path, as finally read from disk. */
export interface CommittedPath {
  path: string;
  before?: FileEntry;
  after?: FileEntry;
}

/** The outcome of commitWorktree: the new commit, or null when the content equals the head. */
export interface CommitOutcome {
  commit: string | null;
  paths: CommittedPath[];
  /** Paths the policy kept out of this commit (a secret found, too large, no key for an encrypted path). */
  held: HeldBack[];
}

/**
 * Records the working-tree state of `paths` as a commit on `branch`, like `git add <paths> && git
 * commit`: holds `.git/index.lock` for the whole operation (so a native git command waits or fails
 * cleanly instead of racing), re-reads each file (it may have changed since it was observed),
 * passes exactly the bytes read through `repo.policy` (encrypted, or held back and left out of the
 * commit and the index), writes blobs, rebuilds only the trees on those paths, writes the commit, moves the branch with
 * compare-and-swap from `parent`, and then writes the index. A file that vanished meanwhile is
 * recorded as deleted. `message` gets the paths as finally read and returns the commit message.
 * Returns a null commit when the result equals the parent's tree (e.g. a change undone meanwhile).
 * Throws LockBusyError (Transient) when the index is locked, RefConflictError when the branch moved.
 */
export async function commitWorktree(
  repo: Repo,
  opts: {
    branch: string;
    /** The branch's current commit (compare-and-swap), or null for the first commit of a new branch. */
    parent: string | null;
    paths: StagedPath[];
    refresh: string[];
    modeOf: (st: FileStats, head?: FileEntry) => EntryMode;
    message: (paths: CommittedPath[]) => string;
    author: Person;
    headEntry: (path: string) => Promise<FileEntry | undefined>;
    /** Commit even when nothing changed (the first commit of an empty folder). */
    allowEmpty?: boolean;
    /** What the branch must point at now, when that is not `parent` (null: the branch must not exist yet). */
    expectedBranchHead?: string | null;
  },
): Promise<CommitOutcome> {
  const lock = await acquireLock(join(repo.gitdir, "index"), { timeoutMs: 1000 });
  try {
    const index = await readIndex(repo.gitdir);
    const parentTree = opts.parent ? await repo.commitTree(opts.parent) : null;
    const changes = new Map<string, FileEntry | null>();
    const recorded: CommittedPath[] = [];
    const held: HeldBack[] = [];
    // Blobs are written in parallel (each is a deflate and a file write); the order of `recorded` stays the paths' order.
    // Blobs and trees of a big commit go into packs; a small one stays loose.
    const objects = repo.batch(opts.paths.length + opts.refresh.length);
    const staged = await mapLimit(opts.paths, PARALLEL_WRITES, async (p) => {
      const before = await opts.headEntry(p.path);
      const after = p.deleted ? undefined : await stageFile(objects, index, p, opts.modeOf, repo.policy, before);
      return { path: p.path, before, after };
    });
    for (const { path, before, after } of staged) {
      if (after && "held" in after) {
        held.push(after.held);
        continue;
      }
      if (before?.oid === after?.oid && before?.mode === after?.mode) continue;
      changes.set(path, after ?? null);
      if (!after) index.entries.delete(path);
      recorded.push({ path, ...(before ? { before } : {}), ...(after ? { after } : {}) });
    }
    await mapLimit(opts.refresh, PARALLEL_WRITES, async (path) => stageFile(objects, index, { path, deleted: false }, opts.modeOf, repo.policy, await opts.headEntry(path)));
    let commit: string | null = null;
    const tree = changes.size || opts.allowEmpty ? await repo.buildTree(parentTree, changes, objects) : parentTree;
    // Every blob and tree is stored before the commit names them.
    await objects.finish();
    if (tree !== null && tree !== parentTree) {
      commit = await repo.writeCommit({ tree, parents: opts.parent ? [opts.parent] : [], message: opts.message(recorded), author: opts.author });
      await repo.setRef(branchRef(opts.branch), commit, opts.expectedBranchHead === undefined ? opts.parent : opts.expectedBranchHead, `commit: ${firstLine(opts.message(recorded))}`, opts.author);
    }
    await writeIndex(repo.gitdir, index, { lock });
    return { commit, paths: commit ? recorded : [], held };
  } catch (err) {
    await lock.rollback().catch(() => undefined);
    throw err;
  }
}

/**
 * Reads a working file (or takes what the observation read), writes what `policy` makes of it as
 * its blob and updates its index entry; undefined when it is gone, `held` (index untouched) when
 * the policy keeps it out of git.
 */
async function stageFile(blobs: ObjectBatch, index: GitIndex, staged: StagedPath, modeOf: (st: FileStats, head?: FileEntry) => EntryMode, policy: BlobPolicy, head?: FileEntry): Promise<FileEntry | { held: HeldBack } | undefined> {
  const { path } = staged;
  const abs = join(blobs.repo.dir, path);
  // Stat before reading: if the file changes after this, its new stat differs from the index
  // entry and the next observation reads it again.
  const st = staged.read?.stats ?? (await lstatBig(abs, { bigint: true }).catch(() => null));
  if (!st || !(st.isFile() || st.isSymbolicLink())) {
    index.entries.delete(path);
    return undefined;
  }
  const tooLarge = st.isFile() ? policy.tooLarge(path, Number(st.size)) : undefined;
  if (tooLarge) return { held: tooLarge };
  const content = staged.read?.content ?? (await readContent(abs, st).catch(() => null));
  if (content === null) {
    index.entries.delete(path);
    return undefined;
  }
  // The bytes just read are the ones judged and stored: a secret written a moment later is judged next time.
  const stored = st.isSymbolicLink() ? { ok: true as const, blob: content } : policy.toGit(path, content);
  if (!stored.ok) return { held: stored.held };
  const mode = modeOf(st, head);
  const oid = await blobs.add("blob", stored.blob);
  index.entries.set(path, indexEntry(blobs.repo, path, st, oid, mode));
  return { mode, oid };
}

/**
 * Brings the working tree from `from` to the merged result: writes every changed path whose working
 * file still holds exactly what `isUntouched` says it had, atomically (temp file + rename), and
 * updates the index for it under `.git/index.lock`. A path being edited (not untouched) is left as
 * it is and returned, so that the next batch commits the sandbox's version. Never deletes or
 * overwrites an edit. `finalize` (moving the branch) runs after the files are written and before
 * the index is, still under the lock; if it throws, the index is left as it was. Blobs come out
 * through `repo.policy` (encrypted ones decrypted). An encrypted blob this sandbox's key cannot
 * decrypt (another person's key, or none) is held: not written, its index entry kept, returned in
 * `held` (and in `skipped`, so that the sandbox looks at it again and reports it).
 */
export async function applyToWorktree(
  repo: Repo,
  diff: TreeDiff[],
  isUntouched: (path: string, expected: FileEntry | undefined) => Promise<boolean>,
  finalize: () => Promise<void>,
): Promise<{ written: string[]; skipped: string[]; held: string[] }> {
  const lock = await acquireLock(join(repo.gitdir, "index"), { timeoutMs: 1000 });
  const written: string[] = [];
  const skipped: string[] = [];
  try {
    // A blob this sandbox's key cannot decrypt (another person's key) is held: not written, the index
    // entry kept, and the sandbox never commits over it; the rest of the change goes on.
    const held: string[] = [];
    for (const d of diff) {
      if (d.after && d.after.mode !== "120000" && repo.policy.isEncrypted(d.path) && repo.policy.undecryptable(d.path, await repo.readBlob(d.after.oid))) held.push(d.path);
    }
    const index = await readIndex(repo.gitdir);
    for (const d of diff) {
      if (held.includes(d.path) || !(await isUntouched(d.path, d.before))) {
        skipped.push(d.path);
        continue;
      }
      const abs = join(repo.dir, d.path);
      if (!d.after) {
        await rm(abs, { force: true });
        index.entries.delete(d.path);
      } else {
        await writeWorkFile(abs, await repo.readContent(d.path, d.after), d.after.mode);
        const st = await lstatBig(abs, { bigint: true });
        index.entries.set(d.path, indexEntry(repo, d.path, st, d.after.oid, d.after.mode));
      }
      written.push(d.path);
    }
    await finalize();
    await writeIndex(repo.gitdir, index, { lock });
    return { written, skipped, held };
  } catch (err) {
    await lock.rollback().catch(() => undefined);
    throw err;
  }
}

/**
 * The index entry of a working file stored as blob `oid`. An encrypted file's blob is ciphertext
 * while the file holds plaintext: git's cascade-sync filter gives that blob back from the file, so
 * the entry is an ordinary one.
 */
function indexEntry(repo: Repo, path: string, st: FileStats, oid: string, mode: EntryMode) {
  return entryFromStat(path, st, oid, parseInt(mode, 8));
}

/** Writes a file (or symlink) atomically: a temp file beside it, then rename over the old one. */
export async function writeWorkFile(abs: string, content: Buffer, mode: EntryMode): Promise<void> {
  await mkdir(dirname(abs), { recursive: true });
  const tmp = join(dirname(abs), `.cascade-sync-${randomBytes(6).toString("hex")}.tmp`);
  if (mode === "120000") await symlink(content.toString(), tmp);
  else {
    await writeFile(tmp, content);
    await chmod(tmp, mode === "100755" ? 0o755 : 0o644);
  }
  try {
    await rename(tmp, abs);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

function firstLine(s: string): string {
  return s.split("\n")[0] ?? s;
}
