import { randomBytes } from "node:crypto";
import { appendFile, lstat, mkdir, open, readdir, readFile, readlink, rename, rm, symlink, writeFile } from "node:fs/promises";
import { basename, dirname, join, posix, resolve } from "node:path";
import { CascadeError, InternalError, stalled } from "../errors.js";
import type { Repo } from "../git/repo.js";
import { describeCommandResult } from "./checks.js";
import { materializeTree, type LinkSource } from "./materialize.js";
import { runCommand, type CommandResult } from "./run-command.js";

/*
 * A deploy directory:
 *   current            symlink -> releases/<commit>, replaced by rename(2), so it is never missing
 *   releases/<commit>/ complete releases; a name of this shape exists only once its content is complete
 *   releases/.deployed deploy log, one JSON object per line, oldest first
 *   releases/.tmp-*    in progress or being removed; never pointed at, removed by the next deploy
 *   .current-*         a new `current` about to be renamed into place
 * One deploy at a time per directory: the caller serializes (the controller holds the sandbox lock).
 */

/** A materialized commit in a deploy directory. */
export interface Release {
  commit: string;
  /** Absolute path of releases/<commit>. */
  dir: string;
}

/** What deployRelease needs. */
export interface DeployInput {
  environment: string;
  commit: string;
  deploy: { directory: string; keep: number; hooks: { pre?: string; post?: string } };
  /** Commits pruning must keep (the last healthy one, for rollback). */
  protect?: string[];
  /** The hooks' environment; the CASCADE_* variables are added to it. */
  env: NodeJS.ProcessEnv;
  signal?: AbortSignal;
  /** Per hook; default 10 minutes. */
  hookTimeoutMs?: number;
}

/** What deployRelease did. */
export interface DeployOutcome {
  release: Release;
  /** The commit `current` pointed at before, or null. */
  previous: string | null;
  /** The release existed already and was not written again. */
  reused: boolean;
  linked: number;
  written: number;
  /** The hooks' combined output, each under a "--- hooks.pre: <result> ---" header. */
  hookOutput: string;
  /** Releases removed by pruning, oldest first. */
  pruned: string[];
  /** Pruning failed (the deploy itself succeeded); the next deploy prunes again. */
  pruneError?: string;
}

/**
 * A deploy hook failed (Stalled, reason "DeployHookFailed"). `switched` says whether `current` had
 * already moved: false for hooks.pre (current unchanged), true for hooks.post, when `outcome`
 * describes the deploy that did happen and the caller's health checks and rollback decide.
 */
export class DeployHookError extends CascadeError {
  constructor(
    readonly stage: "pre" | "post",
    readonly result: CommandResult,
    readonly switched: boolean,
    readonly outcome: DeployOutcome | undefined,
    message: string,
    hint: string,
  ) {
    super("Stalled", "DeployHookFailed", message, { hint });
  }
}

const RELEASES = "releases";
const CURRENT = "current";
const DEPLOY_LOG = ".deployed";
const TEMP_PREFIX = ".tmp-";
const CURRENT_TEMP_PREFIX = ".current-";
const COMMIT_ID = /^[0-9a-f]{40}(?:[0-9a-f]{24})?$/;
const DEFAULT_HOOK_TIMEOUT_MS = 10 * 60_000;

/** The absolute path of releases/<commit> under `directory` (whether or not it exists). */
export function releaseDir(directory: string, commit: string): string {
  assertCommitId(commit);
  return join(resolve(directory), RELEASES, commit);
}

/**
 * The commit `current` points at (the basename of its target under releases/), or null when there is
 * no `current` or it points somewhere else. Does not check that the release exists. Rejects with
 * Stalled "CurrentNotSymlink" when `current` is a file or folder (cascade-sync would not replace it).
 */
export async function currentRelease(directory: string): Promise<string | null> {
  const root = resolve(directory);
  let target: string;
  try {
    target = await readlink(join(root, CURRENT));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return null;
    if (code === "EINVAL") {
      throw stalled(
        "CurrentNotSymlink",
        `${join(root, CURRENT)} is not a symlink`,
        "cascade-sync switches `current` as a symlink to releases/<commit>; move it out of the way",
      );
    }
    throw err;
  }
  const abs = resolve(root, target);
  const name = basename(abs);
  return dirname(abs) === join(root, RELEASES) && COMMIT_ID.test(name) ? name : null;
}

/**
 * Commits with a complete release under releases/, newest deploy first: ordered by the deploy log,
 * then releases missing from it (never switched to, or the log was lost) by folder mtime, newest
 * first. [] when there is no releases/ folder.
 */
export async function listReleases(directory: string): Promise<string[]> {
  const root = resolve(directory);
  const complete = await completeReleases(root);
  const log = await readDeployLog(root);
  const rank = new Map([...log].map(([commit, r]) => [commit, r.rank]));
  const mtimes = new Map<string, number>();
  for (const commit of complete) {
    if (!rank.has(commit)) mtimes.set(commit, (await lstat(join(root, RELEASES, commit))).mtimeMs);
  }
  return complete.sort((a, b) => {
    const ra = rank.get(a);
    const rb = rank.get(b);
    if (ra !== undefined && rb !== undefined) return rb - ra;
    if (ra !== undefined) return -1;
    if (rb !== undefined) return 1;
    return (mtimes.get(b) ?? 0) - (mtimes.get(a) ?? 0) || a.localeCompare(b);
  });
}

/**
 * Deploys `commit` into `input.deploy.directory`, in this order: materializes releases/<commit>/ under
 * a temporary name and renames it when complete (an existing release is reused; unchanged files are
 * hard-linked from the current release), runs hooks.pre in the release folder, switches `current`
 * atomically to "releases/<commit>", runs hooks.post, then prunes to `keep` releases, never the
 * `protect` commits or the current one. Hooks get CASCADE_ENVIRONMENT, CASCADE_COMMIT,
 * CASCADE_RELEASE_DIR, CASCADE_PREVIOUS_COMMIT ("" for none) and CASCADE_DEPLOY_DIR on top of
 * `input.env`.
 *
 * Resolves with what happened (a pruning failure is reported in `pruneError`, not thrown). Rejects with
 * DeployHookError (Stalled "DeployHookFailed") for a failing hook: from hooks.pre with `current`
 * unchanged, from hooks.post after the switch. Rejects with Stalled "UnsafePath" when the tree cannot
 * be written safely and "CurrentNotSymlink" when `current` is not a symlink (nothing changed), with the
 * signal's reason when aborted (`current` unchanged unless the abort came during hooks.post), and with
 * the fs error as thrown for disk trouble (toCascadeError classifies it).
 */
export async function deployRelease(repo: Repo, input: DeployInput): Promise<DeployOutcome> {
  const { commit, signal } = input;
  const directory = resolve(input.deploy.directory);
  const release: Release = { commit, dir: releaseDir(directory, commit) };
  await mkdir(join(directory, RELEASES), { recursive: true });
  const previous = await currentRelease(directory);
  await removeLeftovers(directory);
  signal?.throwIfAborted();
  const built = await ensureRelease(repo, directory, commit, previous, signal);

  const env = hookEnv(input, release, previous, directory);
  const timeoutMs = input.hookTimeoutMs ?? DEFAULT_HOOK_TIMEOUT_MS;
  const outputs: string[] = [];
  const { pre, post } = input.deploy.hooks;
  if (pre !== undefined) {
    const result = await runHook(pre, release.dir, env, timeoutMs, signal);
    outputs.push(hookSection("pre", result, timeoutMs));
    if (!result.ok) throw hookFailed("pre", result, timeoutMs, input, previous, undefined);
  }
  signal?.throwIfAborted();
  await pointCurrent(directory, commit);

  const outcome: DeployOutcome = { release, previous, ...built, hookOutput: "", pruned: [] };
  if (post !== undefined) {
    const result = await runHook(post, release.dir, env, timeoutMs, signal);
    outputs.push(hookSection("post", result, timeoutMs));
    if (!result.ok) {
      outcome.hookOutput = outputs.join("\n");
      throw hookFailed("post", result, timeoutMs, input, previous, outcome);
    }
  }
  outcome.hookOutput = outputs.join("\n");
  try {
    outcome.pruned = await pruneReleases(directory, input.deploy.keep, [...(input.protect ?? []), commit]);
  } catch (err) {
    outcome.pruneError = err instanceof Error ? err.message : String(err);
  }
  return outcome;
}

/**
 * Points `current` at the existing release of `commit` atomically (a rollback) and records it in the
 * deploy log. Rejects with Stalled "ReleaseMissing" when releases/<commit> is not a complete release
 * (pruned, or never deployed), "CurrentNotSymlink" when `current` is not a symlink.
 */
export async function switchCurrent(directory: string, commit: string): Promise<void> {
  const root = resolve(directory);
  const dir = releaseDir(root, commit);
  if (!(await isRealDirectory(dir))) {
    throw stalled(
      "ReleaseMissing",
      `there is no release of ${commit.slice(0, 12)} in ${join(root, RELEASES)}`,
      "it was pruned or never deployed: deploy that commit again (a larger deploy.keep keeps more releases)",
    );
  }
  await currentRelease(root);
  await pointCurrent(root, commit);
}

/**
 * Removes complete releases beyond the newest `keep` (in listReleases order), oldest first, never one
 * in `protect` or the current one, and compacts the deploy log. A release is renamed to a temporary
 * name before it is deleted, so a crash never leaves a partial folder under a commit's name. Resolves
 * with the removed commits, oldest first; rejects with the fs error when one cannot be removed.
 */
export async function pruneReleases(directory: string, keep: number, protect: string[]): Promise<string[]> {
  const root = resolve(directory);
  const current = await currentRelease(root);
  const ordered = await listReleases(root);
  const kept = new Set([...ordered.slice(0, Math.max(0, keep)), ...protect, ...(current ? [current] : [])]);
  const doomed = ordered.filter((c) => !kept.has(c)).reverse();
  for (const commit of doomed) await removeRelease(root, commit);
  if (doomed.length > 0) await compactDeployLog(root, ordered.filter((c) => !doomed.includes(c)));
  return doomed;
}

function assertCommitId(commit: string): void {
  // The commit becomes a path component: anything but a full object id is a caller's bug.
  if (!COMMIT_ID.test(commit)) throw new InternalError(`not a full commit id: ${JSON.stringify(commit)}`);
}

async function isRealDirectory(path: string): Promise<boolean> {
  return lstat(path).then(
    (st) => st.isDirectory(),
    () => false,
  );
}

async function completeReleases(root: string): Promise<string[]> {
  const entries = await readdir(join(root, RELEASES), { withFileTypes: true }).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT") return [];
    throw err;
  });
  return entries.filter((e) => e.isDirectory() && COMMIT_ID.test(e.name)).map((e) => e.name);
}

/** Removes what a crashed deploy or prune left behind: temporary releases and `current` candidates. */
async function removeLeftovers(root: string): Promise<void> {
  for (const name of await readdir(join(root, RELEASES))) {
    if (name.startsWith(TEMP_PREFIX)) await rm(join(root, RELEASES, name), { recursive: true, force: true });
  }
  for (const name of await readdir(root)) {
    if (name.startsWith(CURRENT_TEMP_PREFIX)) await rm(join(root, name), { force: true });
  }
}

/** Materializes releases/<commit> unless it is there; only a complete tree ever gets that name. */
async function ensureRelease(
  repo: Repo,
  root: string,
  commit: string,
  previous: string | null,
  signal: AbortSignal | undefined,
): Promise<{ reused: boolean; linked: number; written: number }> {
  const final = releaseDir(root, commit);
  if (await isRealDirectory(final)) return { reused: true, linked: 0, written: 0 };
  const temp = join(root, RELEASES, `${TEMP_PREFIX}${commit}-${randomBytes(6).toString("hex")}`);
  const linkFrom = await linkSource(repo, root, previous, commit);
  const counts = await materializeTree(repo, commit, temp, { ...(linkFrom ? { linkFrom } : {}), ...(signal ? { signal } : {}) });
  try {
    await rename(temp, final);
  } catch (err) {
    await rm(temp, { recursive: true, force: true });
    throw err;
  }
  return { reused: false, linked: counts.linked, written: counts.written };
}

/** The current release as a hard-link source, or undefined when there is none to link from. */
async function linkSource(repo: Repo, root: string, previous: string | null, commit: string): Promise<LinkSource | undefined> {
  if (!previous || previous === commit) return undefined;
  const dir = releaseDir(root, previous);
  if (!(await isRealDirectory(dir))) return undefined;
  try {
    return { dir, files: await repo.flattenTree(await repo.commitTree(previous)) };
  } catch {
    // The previous commit may be gone from this repository (a rewritten branch, gc): write everything.
    return undefined;
  }
}

/** Replaces `current` by rename(2) over it, so readers always see the old or the new release. */
async function pointCurrent(root: string, commit: string): Promise<void> {
  const temp = join(root, `${CURRENT_TEMP_PREFIX}${randomBytes(6).toString("hex")}`);
  // Relative, so the deploy directory can be moved or mounted elsewhere without breaking it.
  await symlink(posix.join(RELEASES, commit), temp);
  try {
    await rename(temp, join(root, CURRENT));
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
  await syncDirectory(root);
  await appendDeployLog(root, commit);
}

/** Makes a rename durable across a power loss; file systems that cannot fsync a folder are fine. */
async function syncDirectory(path: string): Promise<void> {
  try {
    const fh = await open(path, "r");
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  } catch {
    // EINVAL/EISDIR on some file systems: the rename is still atomic, just not yet durable.
  }
}

async function appendDeployLog(root: string, commit: string): Promise<void> {
  // Newline first: a line torn by a crash mid-append then stays a line of its own, and the next
  // record still parses.
  await appendFile(join(root, RELEASES, DEPLOY_LOG), `\n${JSON.stringify({ commit, at: new Date().toISOString() })}`);
}

/**
 * Commit -> its last record in the log and that record's position (higher is newer); empty when
 * there is no log.
 */
async function readDeployLog(root: string): Promise<Map<string, { rank: number; line: string }>> {
  const text = await readFile(join(root, RELEASES, DEPLOY_LOG), "utf8").catch(() => "");
  const records = new Map<string, { rank: number; line: string }>();
  text.split("\n").forEach((line, rank) => {
    try {
      const commit = (JSON.parse(line) as { commit?: unknown }).commit;
      if (typeof commit === "string" && COMMIT_ID.test(commit)) records.set(commit, { rank, line });
    } catch {
      // Blank or torn line.
    }
  });
  return records;
}

/** Rewrites the log atomically with only the last record of each commit in `keep`, in log order. */
async function compactDeployLog(root: string, keep: string[]): Promise<void> {
  const wanted = new Set(keep);
  const records = [...(await readDeployLog(root))].filter(([commit]) => wanted.has(commit)).sort((a, b) => a[1].rank - b[1].rank);
  const temp = join(root, RELEASES, `${TEMP_PREFIX}${DEPLOY_LOG.slice(1)}-${randomBytes(6).toString("hex")}`);
  await writeFile(temp, records.map(([, r]) => `\n${r.line}`).join(""));
  await rename(temp, join(root, RELEASES, DEPLOY_LOG));
}

async function removeRelease(root: string, commit: string): Promise<void> {
  const temp = join(root, RELEASES, `${TEMP_PREFIX}removing-${commit}-${randomBytes(6).toString("hex")}`);
  await rename(join(root, RELEASES, commit), temp);
  await rm(temp, { recursive: true, force: true });
}

function hookEnv(input: DeployInput, release: Release, previous: string | null, root: string): NodeJS.ProcessEnv {
  return {
    ...input.env,
    CASCADE_ENVIRONMENT: input.environment,
    CASCADE_COMMIT: release.commit,
    CASCADE_RELEASE_DIR: release.dir,
    CASCADE_PREVIOUS_COMMIT: previous ?? "",
    CASCADE_DEPLOY_DIR: root,
  };
}

async function runHook(
  command: string,
  cwd: string,
  env: NodeJS.ProcessEnv,
  timeoutMs: number,
  signal: AbortSignal | undefined,
): Promise<CommandResult> {
  const result = await runCommand(command, { cwd, env, timeoutMs, ...(signal ? { signal } : {}) });
  // An abort is the controller stopping, not the hook failing.
  if (result.aborted) signal?.throwIfAborted();
  return result;
}

function hookSection(stage: "pre" | "post", result: CommandResult, timeoutMs: number): string {
  return `--- hooks.${stage}: ${describeCommandResult(result, timeoutMs)} ---\n${result.output}`;
}

function hookFailed(
  stage: "pre" | "post",
  result: CommandResult,
  timeoutMs: number,
  input: DeployInput,
  previous: string | null,
  outcome: DeployOutcome | undefined,
): DeployHookError {
  const what = `deploy hook hooks.${stage} failed for ${input.environment} at ${input.commit.slice(0, 12)}: ${describeCommandResult(result, timeoutMs)}`;
  const hint =
    stage === "pre"
      ? `current still points at ${previous ? previous.slice(0, 12) : "nothing"}; fix the hook or the commit, the deploy is retried when either changes`
      : `current now points at ${input.commit.slice(0, 12)}; health checks and rollback decide what happens next`;
  return new DeployHookError(stage, result, stage === "post", outcome, what, hint);
}
