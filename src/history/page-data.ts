/**
 * The status page's history view of the sandbox branch: recent commits, each with its paths and, for
 * each path, the exact `cascade-sync restore` command that brings that version back.
 */
import type { GitRepo } from "../git/native/index.js";
import { readHistory } from "./log.js";
import { localTime } from "./when.js";

/** One path of a commit on the page, with the command that restores its version of that commit. */
export interface PagePath {
  path: string;
  /** A, M, D or T. */
  status: string;
  size: number | null;
  /** For a deletion: the command restoring the version before it was deleted. */
  restore: string;
}

/** One commit on the page. */
export interface PageCommit {
  commit: string;
  time: string;
  localTime: string;
  summary: string;
  paths: PagePath[];
  /** Paths left out (a commit of thousands of files shows the first {@link PATHS_SHOWN}). */
  morePaths: number;
}

/** Paths shown per commit. */
export const PATHS_SHOWN = 20;

/** A path as one shell word: as it is when it is plain, else single-quoted. */
export function shellWord(s: string): string {
  return /^[\w./@%+=:,-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** The command that puts `path` back as commit `commit` left it (for a deletion: as it was just before). */
export function restoreCommand(path: string, commit: string, deleted: boolean): string {
  return `cascade-sync restore ${shellWord(path)} --at ${commit.slice(0, 12)}${deleted ? "~1" : ""}`;
}

/** The last `limit` commits of `branch` for the page (first-parent, newest first). */
export async function recentHistory(repo: GitRepo, branch: string, limit = 30): Promise<{ branch: string; commits: PageCommit[] }> {
  const entries = await readHistory(repo, { branch, paths: [], limit });
  return {
    branch,
    commits: entries.map((e) => ({
      commit: e.commit,
      time: new Date(e.time).toISOString(),
      localTime: localTime(e.time),
      summary: e.summary,
      paths: e.paths.slice(0, PATHS_SHOWN).map((p) => ({ path: p.path, status: p.status, size: p.size, restore: restoreCommand(p.path, e.commit, !p.oid) })),
      morePaths: Math.max(0, e.paths.length - PATHS_SHOWN),
    })),
  };
}
