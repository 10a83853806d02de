/**
 * `cascade-sync history` and `cascade-sync restore`: the versions of sandbox paths on the sandbox
 * branch, and putting paths back as they were at a moment, as edits the controller commits.
 */
import { isAbsolute, relative, resolve, sep } from "node:path";
import { formatProblem, loadConfig } from "../config/load.js";
import type { Config } from "../config/types.js";
import { stalled } from "../errors.js";
import { Repo } from "../git/repo.js";
import { runGit, type GitRepo } from "../git/native/index.js";
import { readHistory, type HistoryEntry } from "../history/log.js";
import { gitDate, localTime, parseMoment } from "../history/when.js";
import { newIntentId, restoreSubject, writeIntent, type RestoreIntent } from "../history/intent.js";
import { applyRestore, planRestore, uncommittedUnder, type RestorePlan } from "../history/restore.js";
import { loadBlobPolicy } from "../security/blob-policy.js";
import { runningController } from "../runtime.js";
import type { MainArgs } from "./main.js";

type Out = (s: string) => void;
type Flags = Record<string, string | boolean>;

/** How long `restore` waits for a running controller to commit uncommitted edits of the paths first. */
const COMMIT_FIRST_TIMEOUT_MS = 60_000;

async function sandboxConfig(args: MainArgs, configFile: string, err: Out): Promise<Config | undefined> {
  const loaded = await loadConfig(configFile, args.env);
  if (loaded.ok) return loaded.config;
  for (const p of loaded.problems) err(formatProblem(p));
  return undefined;
}

function gitRepo(repo: Repo): GitRepo {
  return { cwd: repo.dir, gitDir: repo.gitdir, workTree: repo.dir };
}

/**
 * A path as typed (relative to the current directory) as a path in the sandbox ("." for its root).
 * Throws Stalled `PathOutsideSandbox` for a path outside it or inside .git.
 */
export function sandboxPath(cwd: string, dir: string, typed: string): string {
  const rel = relative(dir, resolve(cwd, typed)).split(sep).join("/");
  if (rel.startsWith("..") || isAbsolute(rel)) throw stalled("PathOutsideSandbox", `${typed} is outside the sandbox ${dir}`);
  if (rel === ".git" || rel.startsWith(".git/")) throw stalled("PathOutsideSandbox", `${typed} is inside .git, which has no history of its own`);
  return rel === "" ? "." : rel;
}

/** A history entry as `--json` gives it (and the status page shows it). */
export function historyJson(e: HistoryEntry) {
  return {
    commit: e.commit,
    time: new Date(e.time).toISOString(),
    localTime: localTime(e.time),
    summary: e.summary,
    paths: e.paths.map((p) => ({ path: p.path, status: p.status, ...(p.oid ? { size: p.size } : { deleted: true }) })),
  };
}

/** `cascade-sync history [PATH...] [--since DURATION|TIME] [--limit N] [--json]`. */
export async function historyCmd(args: MainArgs, configFile: string, positionals: string[], flags: Flags, out: Out, err: Out): Promise<number> {
  const config = await sandboxConfig(args, configFile, err);
  if (!config) return 1;
  const paths = positionals.map((p) => sandboxPath(args.cwd, config.dir, p));
  let sinceMs: number | undefined;
  if (typeof flags.since === "string") {
    const m = parseMoment(flags.since, args.clock.now());
    if (m?.kind !== "time") {
      err(`cascade-sync history: --since ${flags.since} is neither a duration nor a time\nhint: e.g. --since 4h, --since 2d, --since "2025-03-01 14:00"`);
      return 2;
    }
    sinceMs = m.ms;
  }
  const limit = typeof flags.limit === "string" ? Number(flags.limit) : undefined;
  if (limit !== undefined && !(Number.isInteger(limit) && limit > 0)) {
    err(`cascade-sync history: --limit ${String(flags.limit)} is not a positive whole number`);
    return 2;
  }
  const repo = await Repo.open(config.dir);
  const entries = await readHistory(gitRepo(repo), { branch: config.sandbox.branch, paths, ...(sinceMs !== undefined ? { sinceMs } : {}), ...(limit ? { limit } : {}) });
  if (flags.json) {
    out(JSON.stringify({ branch: config.sandbox.branch, paths: paths.length ? paths : ["."], ...(sinceMs !== undefined ? { since: new Date(sinceMs).toISOString() } : {}), versions: entries.map(historyJson) }, null, 2));
    return 0;
  }
  if (!entries.length) {
    out(`no versions of ${paths.length ? paths.join(", ") : "the sandbox"} on ${config.sandbox.branch}${sinceMs !== undefined ? ` since ${localTime(sinceMs)}` : ""}`);
    return 0;
  }
  for (const l of formatHistoryEntries(entries, paths.length > 0)) out(l);
  return 0;
}

/** Text lines for history entries: one line per commit, then (for asked paths) each path's size or deletion. */
export function formatHistoryEntries(entries: readonly HistoryEntry[], showPaths: boolean): string[] {
  const lines: string[] = [];
  for (const e of entries) {
    lines.push(`${localTime(e.time)}  ${e.commit.slice(0, 7)}  ${e.summary}`);
    if (!showPaths) continue;
    for (const p of e.paths) lines.push(`    ${p.oid ? `${String(p.size ?? "?").padStart(9)} B` : "  deleted  "}  ${p.path}`);
  }
  return lines;
}

/** The commit the sandbox branch had at `ms` (first-parent: the sandbox's own states), or null before its first. */
async function commitAt(repo: GitRepo, branch: string, ms: number): Promise<string | null> {
  const { stdout } = await runGit(["rev-list", "-1", "--first-parent", `--before=${gitDate(ms)}`, `refs/heads/${branch}`], repo);
  return stdout.toString("utf8").trim() || null;
}

async function commitOf(repo: GitRepo, text: string): Promise<{ oid: string; time: number } | null> {
  const { stdout } = await runGit(["rev-parse", "--verify", "--quiet", "--end-of-options", `${text}^{commit}`], { ...repo, okExitCodes: [0, 1] });
  const oid = stdout.toString("utf8").trim();
  if (!oid) return null;
  const { stdout: ct } = await runGit(["show", "-s", "--format=%ct", oid], repo);
  return { oid, time: Number(ct.toString("utf8").trim()) * 1000 };
}

/** `cascade-sync restore PATH... --at TIME|DURATION|COMMIT [--dry-run]`. */
export async function restoreCmd(args: MainArgs, configFile: string, positionals: string[], flags: Flags, out: Out, err: Out): Promise<number> {
  if (!positionals.length || typeof flags.at !== "string") {
    err(`cascade-sync restore: ${positionals.length ? "--at is required" : "which paths?"}\nhint: cascade-sync restore PATH... --at 2h | --at "2025-03-01 14:00" | --at COMMIT [--dry-run]; \`cascade-sync history PATH\` lists the versions`);
    return 2;
  }
  const config = await sandboxConfig(args, configFile, err);
  if (!config) return 1;
  const paths = [...new Set(positionals.map((p) => sandboxPath(args.cwd, config.dir, p)))];
  const repo = await Repo.open(config.dir);
  const git = gitRepo(repo);
  const branch = config.sandbox.branch;
  const moment = parseMoment(flags.at, args.clock.now());
  let target: { oid: string; time: number } | null = null;
  let shownTime: number | undefined;
  if (moment?.kind === "time") {
    const oid = await commitAt(git, branch, moment.ms);
    if (oid) target = { oid, time: moment.ms };
    if (!target) {
      err(`cascade-sync restore: ${branch} has no commit at or before ${localTime(moment.ms)}\nhint: \`cascade-sync history\` lists the sandbox's commits`);
      return 2;
    }
    shownTime = moment.ms;
  } else if (moment?.kind === "commit") {
    target = await commitOf(git, moment.text);
    shownTime = target?.time;
  }
  if (!target || shownTime === undefined) {
    err(`cascade-sync restore: --at ${flags.at} is neither a duration, a time nor a commit of this repository\nhint: e.g. --at 2h, --at "2025-03-01 14:00", --at 1a2b3c4 (see \`cascade-sync history PATH\`)`);
    return 2;
  }
  if ((await repo.currentBranch()) !== branch) {
    err(`cascade-sync restore: the sandbox does not have ${branch} checked out; a restore writes ${branch}'s files\nhint: run \`git checkout ${branch}\` in the sandbox`);
    return 2;
  }
  const policy = (await loadBlobPolicy(config, args.env)).policy;
  const dryRun = !!flags["dry-run"];
  if (!(await committedFirst(args, repo, policy, branch, paths, dryRun, out, err))) return 2;
  const head = (await repo.branchHead(branch))!;
  const plan = await planRestore(git, policy, head, target.oid, paths);
  const at = localTime(shownTime);
  const subject = restoreSubject({ paths, at, commit: target.oid });
  if (plan.unknown.length) {
    err(`cascade-sync restore: ${plan.unknown.join(", ")} existed neither at ${at} nor now\nhint: \`cascade-sync history ${plan.unknown[0]}\` lists its versions`);
    return 2;
  }
  for (const l of describePlan(plan, subject)) out(l);
  if (!plan.changes.length || dryRun) {
    if (dryRun && plan.changes.length) out("dry run: nothing was changed");
    return 0;
  }
  const intent: RestoreIntent = { id: newIntentId(args.clock.now()), paths, at, commit: target.oid, changes: plan.changes.map((c) => c.path), state: "writing", pid: process.pid, createdAt: args.clock.now() };
  await writeIntent(repo.gitdir, intent);
  try {
    await applyRestore(git, config.dir, policy, plan, paths);
  } finally {
    // Also after a failure: what was written is the restore's, and it is committed under its name.
    await writeIntent(repo.gitdir, { ...intent, state: "ready" });
  }
  const running = await runningController(repo.gitdir);
  out(running
    ? `restored ${plan.changes.length} file(s); the controller commits them as "${subject}"`
    : `restored ${plan.changes.length} file(s); they are committed as "${subject}" when the controller runs (\`cascade-sync start\` or \`cascade-sync reconcile\`)`);
  return 0;
}

/** The lines `restore` prints: what it will change, file by file. */
export function describePlan(plan: RestorePlan, subject: string): string[] {
  if (!plan.changes.length) return [`nothing to restore: already as of ${subject.replace(/^restore: .* as of /, "")}`];
  return [
    `${subject}: ${plan.changes.length} file(s)`,
    ...plan.changes.map((c) => c.action === "delete"
      ? `  delete   ${c.path} (created since)`
      : `  ${c.existsNow ? "overwrite" : "recreate "} ${c.path}${c.size !== undefined ? ` (${c.size} B${c.encrypted ? " encrypted in git, written as plaintext" : ""})` : ""}`),
  ];
}

/**
 * Makes sure nothing under `paths` is uncommitted, so that a restore never loses a version: with a
 * controller running it waits (up to a minute) for the controller to commit those edits (they are in
 * its batch already; a separate process is also nudged); without one it refuses with a hint. A dry
 * run only says so. False when the restore must not go on.
 */
async function committedFirst(args: MainArgs, repo: Repo, policy: Awaited<ReturnType<typeof loadBlobPolicy>>["policy"], branch: string, paths: string[], dryRun: boolean, out: Out, err: Out): Promise<boolean> {
  const git = gitRepo(repo);
  const dirty = async () => uncommittedUnder(git, repo.dir, policy, (await repo.branchHead(branch))!, paths);
  let pending = await dirty();
  if (!pending.length) return true;
  const list = `${pending.slice(0, 5).join(", ")}${pending.length > 5 ? `, +${pending.length - 5} more` : ""}`;
  if (dryRun) {
    out(`note: ${pending.length} file(s) have uncommitted edits (${list}); a real restore commits them first (their version stays in history)`);
    return true;
  }
  const running = await runningController(repo.gitdir);
  if (!running) {
    err(`cascade-sync restore: ${pending.length} file(s) under ${paths.join(", ")} have uncommitted edits (${list}); restoring now would lose them\nhint: start the controller (\`cascade-sync start\`) or run \`cascade-sync reconcile\` so that they are committed, then restore again (their version stays in history)`);
    return false;
  }
  out(`waiting for the controller (pid ${running.pid}) to commit ${pending.length} uncommitted file(s) first (${list}), so that their version stays in history...`);
  if (running.pid !== process.pid) process.kill(running.pid, "SIGUSR1");
  const deadline = args.clock.now() + COMMIT_FIRST_TIMEOUT_MS;
  while (args.clock.now() < deadline) {
    await new Promise((r) => setTimeout(r, 200));
    pending = await dirty();
    if (!pending.length) return true;
  }
  err(`cascade-sync restore: the controller has not committed ${pending.join(", ")} within ${COMMIT_FIRST_TIMEOUT_MS / 1000}s (held back by the secret scan or size rule?)\nhint: see \`cascade-sync status\`; nothing was restored`);
  return false;
}
