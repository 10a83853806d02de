import { classifyGitFailure } from "./failure.js";
import { GitOutputParseError, splitNul } from "./parse.js";
import { runGit, type GitRepo } from "./run.js";

/** One stage of a conflicted path: 1 base, 2 ours (the first commit), 3 theirs. */
export interface ConflictStage {
  path: string;
  stage: 1 | 2 | 3;
  mode: string;
  oid: string;
}

/** One of merge-tree's informational messages, with the paths it is about. */
export interface MergeMessage {
  paths: string[];
  /** A stable type, e.g. `Auto-merging`, `CONFLICT (contents)`, `CONFLICT (modify/delete)`. */
  type: string;
  /** The message for a person, as git words it. */
  message: string;
}

/** What a merge without a work tree produced. */
export interface MergeTreeResult {
  /** No conflicts: `tree` is the merge result. */
  clean: boolean;
  /** The merged tree; with conflicts, conflicted files hold conflict markers. */
  tree: string;
  /** Every stage of every conflicted path, in git's order. */
  conflicts: ConflictStage[];
  messages: MergeMessage[];
}

/**
 * Parses `git merge-tree --write-tree -z --messages` output: the tree oid; for a conflicted merge the
 * stages (`<mode> <oid> <stage>\t<path>`); an empty record; then each message as
 * `<count>, <count paths>, <type>, <message>`.
 */
export function parseMergeTree(out: Buffer | string, clean: boolean): MergeTreeResult {
  const records = splitNul(out);
  const tree = records[0];
  if (!tree) throw new GitOutputParseError("merge-tree", "");
  const conflicts: ConflictStage[] = [];
  let i = 1;
  for (; i < records.length && records[i] !== ""; i++) {
    const r = records[i]!;
    const m = /^(\d+) (\S+) ([123])\t([\s\S]*)$/.exec(r);
    if (!m) throw new GitOutputParseError("merge-tree conflict", r);
    conflicts.push({ mode: m[1]!, oid: m[2]!, stage: Number(m[3]) as 1 | 2 | 3, path: m[4]! });
  }
  i++; // the empty record before the messages
  const messages: MergeMessage[] = [];
  while (i < records.length) {
    const count = Number(records[i++]);
    if (!Number.isInteger(count)) throw new GitOutputParseError("merge-tree message", records[i - 1] ?? "");
    const paths = records.slice(i, i + count);
    i += count;
    const type = records[i++];
    const message = records[i++];
    if (type === undefined || message === undefined) throw new GitOutputParseError("merge-tree message", paths.join(","));
    messages.push({ paths, type, message: message.replace(/\n$/, "") });
  }
  return { clean, tree, conflicts, messages };
}

/**
 * Merges two commits without a work tree or index (`git merge-tree --write-tree -z --messages`, git
 * >= 2.38): writes the merged tree and its blobs to the object store and reports conflicts. The merge
 * base is found by git. Exit 1 means conflicts and is an answer, not a failure; other failures reject
 * with a GitError (an unknown commit: Transient `GitFailed` with git's message).
 */
export async function mergeTree(repo: GitRepo, ours: string, theirs: string, opts: { allowUnrelatedHistories?: boolean } = {}): Promise<MergeTreeResult> {
  const args = ["merge-tree", "--write-tree", "-z", "--messages"];
  if (opts.allowUnrelatedHistories) args.push("--allow-unrelated-histories");
  args.push(ours, theirs);
  const { stdout, stderr, exitCode } = await runGit(args, { ...repo, okExitCodes: [0, 1] });
  // git 2.39 also exits 1 for "not something we can merge", with nothing on stdout.
  if (stdout.length === 0) throw classifyGitFailure({ args, exitCode, stderr, redact: repo.redact });
  return parseMergeTree(stdout, exitCode === 0);
}
