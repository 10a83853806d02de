import { lstat } from "node:fs/promises";
import { join } from "node:path";
import { parseLsFilesStageRecord, parseStatusV2 } from "./parse.js";
import { runGit, runGitRecords, type GitRepo } from "./run.js";

/**
 * Embedded repositories: folders of the sandbox with their own `.git`. git records one as a gitlink (the
 * commit its HEAD is at), never its files: a clone of the sandbox gets that commit only from the nested
 * repository's own remote (a submodule with a URL in .gitmodules), and its uncommitted edits nowhere.
 * This module finds the ones whose content does not travel with the sandbox, for `status`.
 */

/** Why an embedded repository's content does not travel with the sandbox. */
export type EmbeddedProblem =
  /** Its HEAD has no commit: git cannot record it (git add refuses it), so nothing of it is committed. */
  | "NoCommit"
  /** Its work tree has edits (or new files) its commit does not hold. */
  | "Uncommitted"
  /** No URL for it in .gitmodules: a clone gets an empty folder. */
  | "NoUrl"
  /** Its commit is on none of its remote-tracking branches: a clone cannot fetch it. */
  | "NotOnAnyRemote";

/** An embedded repository that is not synced, and what a person can do. */
export interface EmbeddedRepository {
  /** Folder, relative to the sandbox's top. */
  path: string;
  /** The commit its HEAD is at; null when it has none. */
  head: string | null;
  /** The URL .gitmodules gives for it, when any. */
  url?: string;
  /** True when the sandbox's index records it (a gitlink); false when git has not added it yet. */
  recorded: boolean;
  problems: { reason: EmbeddedProblem; message: string }[];
  /** What to do about it, for a person. */
  hint: string;
}

/**
 * Every embedded repository of the work tree `repo` whose content does not travel with the sandbox:
 * gitlinks in the index and nested repositories git lists as untracked (`sub/`), each looked at with git
 * run inside it (HEAD, `status`, remote-tracking branches containing HEAD; no network). A submodule that
 * is not checked out (an empty folder) is skipped: there is nothing in it to lose. Rejects with a
 * GitError when git fails on the sandbox itself; a nested repository git cannot read is reported, not
 * thrown.
 */
export async function unsyncedEmbeddedRepositories(sandbox: GitRepo, workTree: string): Promise<EmbeddedRepository[]> {
  const repo = withoutOptionalLocks(sandbox);
  const recorded: string[] = [];
  await runGitRecords(["ls-files", "-s", "-z"], repo, (r) => {
    const e = parseLsFilesStageRecord(r);
    if (e.mode === "160000") recorded.push(e.path);
  });
  const status = parseStatusV2((await runGit(["status", "--porcelain=v2", "-z", "--untracked-files=all", "--ignore-submodules=all"], repo)).stdout);
  const untracked = status.entries.filter((e) => e.kind === "untracked" && e.path.endsWith("/")).map((e) => e.path.slice(0, -1));
  const urls = await submoduleUrls(repo);
  const out: EmbeddedRepository[] = [];
  for (const [path, isRecorded] of [...recorded.map((p) => [p, true] as const), ...untracked.map((p) => [p, false] as const)]) {
    if (!(await hasGitDir(join(workTree, path)))) continue;
    const found = await inspect(join(workTree, path), path, isRecorded, urls.get(path));
    if (found.problems.length) out.push(found);
  }
  return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

async function inspect(abs: string, path: string, recorded: boolean, url: string | undefined): Promise<EmbeddedRepository> {
  const nested = withoutOptionalLocks({ cwd: abs, gitDir: join(abs, ".git"), workTree: abs });
  const problems: EmbeddedRepository["problems"] = [];
  const head = await runGit(["rev-parse", "--verify", "-q", "HEAD^{commit}"], { ...nested, okExitCodes: [0, 1] })
    .then((r) => r.stdout.toString("utf8").trim() || null, () => null);
  if (head === null) {
    problems.push({ reason: "NoCommit", message: "it has no commit yet, so git cannot record it and nothing of it is committed" });
    return { path, head, ...(url ? { url } : {}), recorded, problems, hint: `commit in it (git -C ${quote(path)} commit), or add ${path}/ to sandbox.exclude` };
  }
  const dirty = await runGit(["status", "--porcelain=v2", "-z", "--untracked-files=normal"], nested).then((r) => parseStatusV2(r.stdout).entries.filter((e) => e.kind !== "ignored").length, () => 0);
  if (dirty) problems.push({ reason: "Uncommitted", message: `${dirty} change(s) in its work tree are not in its commit, and only its commit is recorded` });
  if (!url) {
    problems.push({ reason: "NoUrl", message: "it has no URL in .gitmodules, so a clone of the sandbox gets an empty folder" });
  } else if (!(await onSomeRemote(nested, head))) {
    problems.push({ reason: "NotOnAnyRemote", message: `its commit ${head.slice(0, 7)} is on none of its remote branches (as last fetched), so a clone cannot check it out` });
  }
  const hints: string[] = [];
  if (dirty) hints.push(`commit in it (git -C ${quote(path)} commit -a)`);
  if (!url) hints.push(`make it a submodule with a URL (git submodule add URL ${quote(path)}) or add ${path}/ to sandbox.exclude`);
  else if (problems.some((p) => p.reason === "NotOnAnyRemote")) hints.push(`push its commit (git -C ${quote(path)} push)`);
  return { path, head, ...(url ? { url } : {}), recorded, problems, hint: hints.join("; then ") };
}

/** True when some remote-tracking branch of the nested repository contains `commit`. */
async function onSomeRemote(nested: GitRepo, commit: string): Promise<boolean> {
  const r = await runGit(["for-each-ref", "--count=1", "--format=%(refname)", `--contains=${commit}`, "refs/remotes/"], nested).catch(() => null);
  return r !== null && r.stdout.toString("utf8").trim() !== "";
}

/** path -> URL of every submodule .gitmodules names (read from the work tree's .gitmodules). */
async function submoduleUrls(repo: GitRepo): Promise<Map<string, string>> {
  const r = await runGit(["config", "-z", "--file", ".gitmodules", "--get-regexp", "^submodule\\..*\\.(path|url)$"], { ...repo, okExitCodes: [0, 1] }).catch(() => null);
  const byName = new Map<string, { path?: string; url?: string }>();
  for (const rec of (r?.stdout.toString("utf8") ?? "").split("\0")) {
    const nl = rec.indexOf("\n");
    if (nl < 0) continue;
    const key = rec.slice(0, nl);
    const m = /^submodule\.(.*)\.(path|url)$/.exec(key);
    if (!m) continue;
    const entry = byName.get(m[1]!) ?? {};
    entry[m[2] as "path" | "url"] = rec.slice(nl + 1);
    byName.set(m[1]!, entry);
  }
  const out = new Map<string, string>();
  for (const e of byName.values()) if (e.path && e.url) out.set(e.path, e.url);
  return out;
}

/**
 * A look for status only: `git status` must not refresh and write the index (it would take index.lock
 * and make a commit of ours, or the user's `git add`, fail meanwhile), as VS Code's background status does.
 */
function withoutOptionalLocks(repo: GitRepo): GitRepo {
  return { ...repo, env: { ...repo.env, GIT_OPTIONAL_LOCKS: "0" } };
}

async function hasGitDir(abs: string): Promise<boolean> {
  return lstat(join(abs, ".git")).then(() => true, () => false);
}

function quote(path: string): string {
  return /^[\w./-]+$/.test(path) ? path : `'${path.replace(/'/g, `'\\''`)}'`;
}
