import { parseRawDiff, type RawDiffEntry } from "./parse.js";
import { updateRefs } from "./refs.js";
import { runGit, type GitRepo } from "./run.js";

/** Who made a commit, and when (default: now). */
export interface GitIdentity {
  name: string;
  email: string;
  /** A date git accepts, e.g. `2026-01-02T03:04:05Z` or `@1767322245 +0000`. */
  date?: string;
}

function checkPath(path: string): void {
  if (path.length === 0 || path.includes("\0")) throw new TypeError(`not a path git can take: ${JSON.stringify(path)}`);
}

/**
 * Brings the index entries of `paths` (relative to the work tree's top, which must be `repo.cwd` or
 * `repo.workTree`) in line with the files: `git update-index -z --add --remove --stdin`. A path whose file
 * exists is (re-)hashed with the repository's attributes and filters applied, one that is gone is
 * removed. Nothing else in the index is looked at, which is what makes a commit on a known path cheap.
 */
export async function updateIndex(repo: GitRepo, paths: readonly string[]): Promise<void> {
  if (paths.length === 0) return;
  for (const p of paths) checkPath(p);
  await runGit(["update-index", "-z", "--add", "--remove", "--stdin"], { ...repo, stdin: `${paths.join("\0")}\0` });
}

/** An index entry to write as is; mode "0" removes the path (every stage of it). */
export interface IndexInfo {
  mode: string;
  oid: string;
  path: string;
  /** 0 (default) for a merged entry, 1-3 for a conflict's stages. */
  stage?: number;
}

/**
 * Writes index entries whose blobs already exist (a merge result, a restored version):
 * `git update-index -z --index-info`. No file is read.
 */
export async function updateIndexInfo(repo: GitRepo, entries: readonly IndexInfo[]): Promise<void> {
  if (entries.length === 0) return;
  let input = "";
  for (const e of entries) {
    checkPath(e.path);
    input += `${e.mode} ${e.oid}${e.stage ? ` ${e.stage}` : ""}\t${e.path}\0`;
  }
  await runGit(["update-index", "-z", "--index-info"], { ...repo, stdin: input });
}

/** Writes the index as a tree (`git write-tree`) and resolves with its oid. Rejects when the index has conflicts. */
export async function writeTree(repo: GitRepo): Promise<string> {
  const { stdout } = await runGit(["write-tree"], repo);
  return stdout.toString("utf8").trim();
}

/**
 * What tree `b` changes from tree (or commit) `a`, path by path: `git diff-tree -r -z --raw --no-renames
 * --full-index`. Trees only: git 2.39's diff-tree reads the whole index anyway (42 ms at 100,000
 * files) though raw output of two trees never uses it, so it is pointed at an index that does not exist.
 */
export async function diffTrees(repo: GitRepo, a: string, b: string): Promise<RawDiffEntry[]> {
  const noIndex = { ...repo, env: { ...repo.env, GIT_INDEX_FILE: NO_INDEX } };
  const { stdout } = await runGit(["diff-tree", "-r", "-z", "--raw", "--no-renames", "--full-index", "--end-of-options", a, b], noIndex);
  return parseRawDiff(stdout).entries;
}

/** An index file that never exists (git reads a missing index as empty, and diff-tree writes none). */
const NO_INDEX = "/nonexistent/cascade-sync/no-index";

/** What a new commit holds. */
export interface CommitSpec {
  tree: string;
  parents: readonly string[];
  /** The whole message, as is (git keeps it byte for byte; commit-tree does no cleanup). */
  message: string;
  author: GitIdentity;
  /** Default: the author. */
  committer?: GitIdentity;
}

/** Writes a commit object (`git commit-tree`, the message on stdin) and resolves with its oid. */
export async function commitTree(repo: GitRepo, spec: CommitSpec): Promise<string> {
  const committer = spec.committer ?? spec.author;
  const args = ["commit-tree", spec.tree];
  for (const p of spec.parents) args.push("-p", p);
  const { stdout } = await runGit(args, {
    ...repo,
    stdin: spec.message,
    env: {
      ...repo.env,
      GIT_AUTHOR_NAME: spec.author.name,
      GIT_AUTHOR_EMAIL: spec.author.email,
      GIT_AUTHOR_DATE: spec.author.date,
      GIT_COMMITTER_NAME: committer.name,
      GIT_COMMITTER_EMAIL: committer.email,
      GIT_COMMITTER_DATE: committer.date,
    },
  });
  return stdout.toString("utf8").trim();
}

/** A commit of known changed paths on top of a branch. */
export interface KnownPathCommit {
  /** The paths that changed (added, modified or deleted), relative to the work tree's top. */
  paths: readonly string[];
  /** The branch to move, e.g. refs/heads/develop. */
  ref: string;
  /** What the branch holds now, which becomes the parent; null for the first commit. */
  parent: string | null;
  message: string;
  author: GitIdentity;
  committer?: GitIdentity;
}

/**
 * Commits `paths` on top of `parent` without looking at any other file: update-index for the paths,
 * write-tree, commit-tree, and a ref move that happens only if the branch still holds `parent`. The index
 * must match `parent` for every other path (it does when every commit goes through here or through
 * git itself). Resolves with the new commit and tree; rejects with Transient `RefConflict` when the branch
 * moved meanwhile (the index then already has the paths, which is harmless: they are staged changes).
 */
export async function commitKnownPaths(repo: GitRepo, c: KnownPathCommit): Promise<{ commit: string; tree: string }> {
  await updateIndex(repo, c.paths);
  const tree = await writeTree(repo);
  const commit = await commitTree(repo, {
    tree, parents: c.parent ? [c.parent] : [], message: c.message, author: c.author, ...(c.committer ? { committer: c.committer } : {}),
  });
  await updateRefs(repo, [{ ref: c.ref, newOid: commit, expectedOld: c.parent }], `commit: ${c.message.split("\n")[0]}`);
  return { commit, tree };
}
