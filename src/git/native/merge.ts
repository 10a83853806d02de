import { mkdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { CatFileBatch } from "./cat-file.js";
import { mergeTree, type ConflictStage } from "./merge-tree.js";
import { parseLsTree } from "./parse.js";
import { updateIndexInfo, writeTree, type IndexInfo } from "./plumbing.js";
import { runGit, type GitRepo } from "./run.js";

/** How one path that both sides changed was settled. */
export interface SettledPath {
  path: string;
  /**
   * `hunks`: a text file merged line by line, only the overlapping hunks taking the winner's lines;
   * `file`: the winner's whole entry (binary, symlink, submodule, per-file path, modify/delete, or a
   * file/folder clash), which may also be its deletion.
   */
  how: "hunks" | "file";
}

/** What {@link mergeWinning} produced. */
export interface WinningMerge {
  /** The merged tree (written to the object store). */
  tree: string;
  /** Paths both sides changed in ways git could not merge by itself, and how each was settled. */
  settled: SettledPath[];
}

/** What {@link mergeWinning} needs besides the two commits. */
export interface WinningMergeOptions {
  /**
   * A folder it may use for scratch files (a temporary index, the three versions of a file), inside the
   * repository's .git so nothing of it is ever in the work tree; created and removed again.
   */
  scratch: string;
  /** Paths merged per file whatever their content (encrypted ones: merging ciphertext line by line is meaningless). */
  perFile?: (path: string) => boolean;
}

/**
 * Merges `other` into `winner` without a work tree or the repository's index, the way `git merge -X
 * ours` would with `winner` checked out: git's own three-way merge (`git merge-tree --write-tree`, merge
 * base and renames found by git), and where both sides changed the same text file, hunks that do not
 * overlap are both kept while overlapping ones take the winner's lines (`git merge-file --ours` on the
 * three versions, as git 2.38/2.39 have no `merge-tree -X`). Binary files, symlinks, submodules and
 * `perFile` paths take the winner's whole entry; a modify/delete takes the winner's side (its version,
 * or its deletion), and so does a file/folder clash (no `name~branch` copies are left in the tree).
 * Unrelated histories merge as two additions. Resolves with the tree; rejects with a GitError (an
 * unknown commit: Transient `GitFailed`).
 */
export async function mergeWinning(repo: GitRepo, winner: string, other: string, opts: WinningMergeOptions): Promise<WinningMerge> {
  const result = await mergeTree(repo, winner, other, { allowUnrelatedHistories: true });
  if (result.clean) return { tree: result.tree, settled: [] };
  const scratch = join(opts.scratch, `merge-${process.pid}-${randomBytes(4).toString("hex")}`);
  await mkdir(scratch, { recursive: true });
  const reader = new CatFileBatch(repo);
  try {
    const fixes: IndexInfo[] = [];
    const settled: SettledPath[] = [];
    const byPath = new Map<string, Partial<Record<1 | 2 | 3, ConflictStage>>>();
    for (const s of result.conflicts) byPath.set(s.path, { ...byPath.get(s.path), [s.stage]: s });
    // A file/folder clash: git moved one side's file to `name~branch`; the message names [moved, original].
    const moved = new Map<string, string>();
    for (const m of result.messages) if ((m.type === "CONFLICT (file/directory)" || m.type === "CONFLICT (directory/file)") && m.paths.length === 2) moved.set(m.paths[0]!, m.paths[1]!);
    for (const [path, stages] of byPath) {
      const original = moved.get(path);
      if (original !== undefined) {
        fixes.push(remove(path));
        if (stages[2]) {
          // The winner's file was moved out of the way of the other side's folder: the winner's file stays, the folder goes.
          for (const under of await pathsUnder(repo, result.tree, original)) fixes.push(remove(under));
          fixes.push({ mode: stages[2].mode, oid: stages[2].oid, path: original });
        }
        settled.push({ path: original, how: "file" });
        continue;
      }
      const ours = stages[2];
      const theirs = stages[3];
      if (ours && theirs && isRegular(ours.mode) && isRegular(theirs.mode) && !opts.perFile?.(path)) {
        const merged = await mergeFileContent(repo, reader, scratch, stages[1], ours, theirs);
        if (merged !== undefined) {
          // The mode merges three-way like the content: a side that kept the base's mode takes the other's.
          const mode = stages[1] && stages[1].mode === ours.mode ? theirs.mode : ours.mode;
          fixes.push({ mode, oid: merged, path });
          settled.push({ path, how: "hunks" });
          continue;
        }
      }
      fixes.push(ours ? { mode: ours.mode, oid: ours.oid, path } : remove(path));
      settled.push({ path, how: "file" });
    }
    const tree = await rewriteTree(repo, scratch, result.tree, fixes);
    return { tree, settled: settled.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0)) };
  } finally {
    await reader.close();
    await rm(scratch, { recursive: true, force: true });
  }
}

function isRegular(mode: string): boolean {
  return mode === "100644" || mode === "100755";
}

function remove(path: string): IndexInfo {
  return { mode: "0", oid: "0".repeat(40), path };
}

/** Every path of a blob or gitlink at or under `folder` in `tree`. */
async function pathsUnder(repo: GitRepo, tree: string, folder: string): Promise<string[]> {
  const { stdout } = await runGit(["ls-tree", "-r", "-z", "--full-tree", tree, "--", folder], { ...repo, env: { ...repo.env, GIT_LITERAL_PATHSPECS: "1" } });
  return parseLsTree(stdout).map((e) => e.path).filter((p) => p === folder || p.startsWith(`${folder}/`));
}

/**
 * The winner-favouring line merge of one file (`git merge-file -p --ours`; an absent base is empty, as
 * for an add/add), stored as a blob. Undefined when git will not merge it as text (a binary file).
 */
async function mergeFileContent(repo: GitRepo, reader: CatFileBatch, scratch: string, base: ConflictStage | undefined, ours: ConflictStage, theirs: ConflictStage): Promise<string | undefined> {
  const read = async (s: ConflictStage | undefined) => (s ? (await reader.read(s.oid))?.data ?? null : Buffer.alloc(0));
  const [b, o, t] = await Promise.all([read(base), read(ours), read(theirs)]);
  if (b === null || o === null || t === null) return undefined;
  const merged = await mergeTextOurs(repo, scratch, o, b, t);
  if (merged === undefined) return undefined;
  const { stdout: oid } = await runGit(["hash-object", "-w", "--no-filters", "--stdin"], { ...repo, stdin: merged });
  return oid.toString("utf8").trim();
}

/**
 * `git merge-file -p --ours` of three versions' bytes (scratch files under `scratch`, removed after):
 * both sides' hunks where they do not overlap, `ours` where they do. Undefined when git will not merge
 * them as text (exit 255: a binary file); with --ours nothing is left in conflict.
 */
export async function mergeTextOurs(repo: GitRepo, scratch: string, ours: Buffer, base: Buffer, theirs: Buffer): Promise<Buffer | undefined> {
  const id = randomBytes(8).toString("hex");
  const files = ["ours", "base", "theirs"].map((n) => join(scratch, `${id}.${n}`));
  try {
    await Promise.all([writeFile(files[0]!, ours), writeFile(files[1]!, base), writeFile(files[2]!, theirs)]);
    const { stdout, exitCode } = await runGit(["merge-file", "-p", "--ours", "--", files[0]!, files[1]!, files[2]!], { ...repo, okExitCodes: [0, 255] });
    return exitCode === 0 ? stdout : undefined;
  } finally {
    await Promise.all(files.map((f) => rm(f, { force: true })));
  }
}

/** `tree` with `fixes` applied, through a temporary index (never the repository's own). */
async function rewriteTree(repo: GitRepo, scratch: string, tree: string, fixes: IndexInfo[]): Promise<string> {
  const at: GitRepo = { ...repo, env: { ...repo.env, GIT_INDEX_FILE: join(scratch, "index") } };
  await runGit(["read-tree", tree], at);
  await updateIndexInfo(at, fixes);
  return writeTree(at);
}
