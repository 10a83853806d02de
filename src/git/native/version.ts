import { GitError } from "./failure.js";
import { runGit, type GitRepo } from "./run.js";

/** A git version as `git version` prints it. */
export interface GitVersion {
  major: number;
  minor: number;
  patch: number;
  /** The whole line, e.g. `git version 2.39.3 (Apple Git-146)`. */
  text: string;
}

/**
 * The oldest git cascade-sync runs with: 2.38.0, the first release with `git merge-tree --write-tree`
 * (with `-z`, `--name-only`, `--messages`), which merges a remote's commits without touching the work
 * tree or the index; without it a merge would need a second checkout. Everything else the gateway uses
 * is older: `update-ref --stdin` transactions with start/prepare/commit (2.28), `status --porcelain=v2 -z`
 * (2.11), `cat-file --batch` (1.8), sha256 repositories (2.29, experimental).
 */
export const MIN_GIT_VERSION = "2.38.0";

/**
 * Parses `git version` output: `git version 2.39.5`, `git version 2.39.3 (Apple Git-146)`,
 * `git version 2.45.1.windows.1`, `git version 2.40.0.rc1`, `git version 2.39`. Undefined when it is not
 * such a line.
 */
export function parseGitVersion(text: string): GitVersion | undefined {
  const line = text.trim().split("\n")[0] ?? "";
  const m = /^git version (\d+)\.(\d+)(?:\.(\d+))?/.exec(line);
  if (!m) return undefined;
  return { major: Number(m[1]), minor: Number(m[2]), patch: Number(m[3] ?? 0), text: line };
}

/** Compares two versions: negative when a is older than b, 0 when equal, positive when newer. */
export function compareGitVersions(a: Pick<GitVersion, "major" | "minor" | "patch">, b: Pick<GitVersion, "major" | "minor" | "patch">): number {
  return a.major - b.major || a.minor - b.minor || a.patch - b.patch;
}

/**
 * The installed git's version. Rejects with Stalled `GitNotFound` when git is not installed, and with an
 * InternalError-like GitError (`GitVersionUnreadable`) when its answer cannot be parsed.
 */
export async function gitVersion(repo: GitRepo = {}): Promise<GitVersion> {
  const { stdout } = await runGit(["version"], { ...repo, timeoutMs: 30_000 });
  const text = stdout.toString("utf8");
  const version = parseGitVersion(text);
  if (!version) {
    throw new GitError("Stalled", "GitVersionUnreadable", `git version printed something unexpected: ${text.trim().slice(0, 200)}`, {
      command: "git version", stderr: "", hint: "check which program is first on PATH under the name git",
    });
  }
  return version;
}

/**
 * Resolves with the installed version when it is at least `min` (default {@link MIN_GIT_VERSION});
 * rejects with Stalled `GitTooOld` saying which version was found and what is needed.
 */
export async function requireGitVersion(min: string = MIN_GIT_VERSION, repo: GitRepo = {}): Promise<GitVersion> {
  const found = await gitVersion(repo);
  const need = parseGitVersion(`git version ${min}`);
  if (!need) throw new TypeError(`requireGitVersion: not a version: ${min}`);
  if (compareGitVersions(found, need) < 0) throw gitTooOld(found, min);
  return found;
}

/** The Stalled error for a git older than `min`. */
export function gitTooOld(found: GitVersion, min: string): GitError {
  return new GitError("Stalled", "GitTooOld", `cascade-sync needs git ${min} or newer; found ${found.text}`, {
    command: "git version", stderr: "",
    hint: `install a newer git (Debian 12 ships 2.39; on older systems use backports or the git-core PPA, on macOS Homebrew's git) and make sure it is first on the service's PATH`,
  });
}
