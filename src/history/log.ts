/**
 * The versions of sandbox paths, read by native git in one walk: `git log --first-parent` with the
 * paths as a literal pathspec (git skips unrelated commits by comparing tree ids, and with a
 * commit-graph's changed-path filters without opening their trees), `--since` to stop the walk early,
 * and the sizes of every version from one `git cat-file --batch-check`.
 */
import { runGit, splitNul, GitOutputParseError, type GitRepo } from "../git/native/index.js";
import { gitDate } from "./when.js";

/** One path as a commit left it. */
export interface PathVersion {
  path: string;
  /** A added, M modified, D deleted, T type changed (file <-> symlink). */
  status: string;
  /** The blob after the commit; null when deleted. */
  oid: string | null;
  mode: string | null;
  /** Bytes of the stored blob (for an encrypted path: of its ciphertext); null when deleted or a submodule. */
  size: number | null;
}

/** One commit of the sandbox branch that changed the asked paths. */
export interface HistoryEntry {
  commit: string;
  /** Committer time, ms since the epoch: when this version became the branch's. */
  time: number;
  /** The commit's subject line. */
  summary: string;
  /** The asked paths this commit changed (all its paths when none were asked), sorted. */
  paths: PathVersion[];
}

/** What to read. */
export interface HistoryQuery {
  /** The sandbox branch (its first-parent line is the sandbox's own sequence of states). */
  branch: string;
  /** Paths relative to the sandbox root (files or folders); empty = the whole sandbox. */
  paths: readonly string[];
  /** Only commits made at or after this time (ms). */
  sinceMs?: number;
  /** At most this many commits. */
  limit?: number;
}

const ZERO = /^0+$/;

/**
 * Every commit of `query.branch` (first-parent, newest first) that changed one of `query.paths`,
 * with each changed path's new size or its deletion. A merge counts by what it changed against the
 * branch's previous state (a remote edit that came in). Rejects with the gateway's GitError when git
 * fails (an unknown branch: Stalled).
 */
export async function readHistory(repo: GitRepo, query: HistoryQuery): Promise<HistoryEntry[]> {
  const args = [
    "log", "-z", "--first-parent", "--diff-merges=first-parent", "--no-renames", "--raw", "--no-abbrev",
    "--format=%x01%H %ct %s",
    ...(query.sinceMs !== undefined ? [`--since=${gitDate(query.sinceMs)}`] : []),
    ...(query.limit !== undefined ? [`--max-count=${query.limit}`] : []),
    `refs/heads/${query.branch}`, "--",
    ...query.paths.filter((p) => p !== "" && p !== "."),
  ];
  const { stdout } = await runGit(args, { ...repo, env: { ...repo.env, GIT_LITERAL_PATHSPECS: "1" } });
  const entries = parseLogRaw(stdout);
  await fillSizes(repo, entries);
  return entries;
}

/**
 * Parses `git log -z --raw --no-abbrev --format=%x01%H %ct %s`: a header record per commit (after
 * \x01), then per changed path a `:srcmode dstmode srcoid dstoid status` record (the first one after a
 * newline) and the path. Sizes are left null.
 */
export function parseLogRaw(out: Buffer | string): HistoryEntry[] {
  const records = splitNul(out);
  const entries: HistoryEntry[] = [];
  for (let i = 0; i < records.length; i++) {
    const r = records[i]!.replace(/^\n/, "");
    if (r === "") continue;
    if (r.startsWith("\x01")) {
      const m = /^\x01([0-9a-f]{40,64}) (\d+) ?(.*)$/s.exec(r);
      if (!m) throw new GitOutputParseError("log header", r);
      entries.push({ commit: m[1]!, time: Number(m[2]) * 1000, summary: m[3]!, paths: [] });
      continue;
    }
    const current = entries[entries.length - 1];
    if (!r.startsWith(":") || !current) throw new GitOutputParseError("log raw", r);
    const [, dstMode, , dstOid, status] = r.slice(1).split(" ");
    const path = records[++i];
    if (!dstMode || !dstOid || !status || path === undefined) throw new GitOutputParseError("log raw", r);
    const gone = ZERO.test(dstMode);
    current.paths.push({ path, status: status[0]!, oid: gone ? null : dstOid, mode: gone ? null : dstMode, size: null });
  }
  for (const e of entries) e.paths.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  return entries;
}

/** Sizes of every version's blob, asked of one `git cat-file --batch-check` (one process for all). */
async function fillSizes(repo: GitRepo, entries: HistoryEntry[]): Promise<void> {
  const oids = new Set<string>();
  for (const e of entries) for (const p of e.paths) if (p.oid && p.mode !== "160000") oids.add(p.oid);
  if (!oids.size) return;
  const { stdout } = await runGit(["cat-file", "--batch-check=%(objectname) %(objectsize)"], { ...repo, stdin: [...oids].join("\n") + "\n" });
  const sizes = new Map<string, number>();
  for (const line of stdout.toString("utf8").split("\n")) {
    const [oid, size] = line.split(" ");
    if (oid && size && /^\d+$/.test(size)) sizes.set(oid, Number(size));
  }
  for (const e of entries) for (const p of e.paths) if (p.oid) p.size = sizes.get(p.oid) ?? null;
}
