import { randomBytes } from "node:crypto";
import { appendFile, lstat, mkdir, open, readdir, readFile, readlink, rename, rm, symlink, writeFile } from "node:fs/promises";
import { basename, dirname, join, posix, resolve } from "node:path";
import { performance } from "node:perf_hooks";
import { CascadeError, InternalError, stalled } from "../errors.js";
import type { Repo } from "../git/repo.js";
import { isIntact, manifestPathFor, readManifest, verifyRelease, writeManifest, type ReleaseManifest, type VerifyResult } from "../security/manifest.js";
import { describeCommandResult } from "./checks.js";
import { describeDrift } from "./health-state.js";
import { materializeTree, restoreReleasePaths, treeManifest, type LinkSource } from "./materialize.js";
import { runCommand, type CommandResult } from "./run-command.js";
import { commandEnv, type CommandEnv } from "./command-env.js";
import type { CommandEnvEntry } from "../config/types.js";

/*
 * A deploy directory:
 *   current            symlink -> releases/<commit>, replaced by rename(2), so it is never missing
 *   releases/<commit>/ complete releases; a name of this shape exists only once its content is complete
 *   releases/<commit>.manifest.json  its manifest (SHA-256 and mode of each file), written before
 *                      `current` points at it; a missing one is rebuilt from the commit's tree
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
  /** `hooks.env`: what the config names for the hooks' environment (commandEnv). */
  deploy: { directory: string; keep: number; hooks: { pre?: string; post?: string; env?: CommandEnvEntry[] } };
  /** Commits pruning must keep (the last healthy one, for rollback). */
  protect?: string[];
  /**
   * The controller's environment. Hooks get only its allow-listed variables, what `deploy.hooks.env`
   * names, and the CASCADE_* variables (commandEnv), never the whole of it.
   */
  env: NodeJS.ProcessEnv;
  signal?: AbortSignal;
  /** Per hook; default 10 minutes. */
  hookTimeoutMs?: number;
  /** An existing release reused by this deploy is repaired when it drifted from its manifest; default true. */
  selfHeal?: boolean;
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
  /** For a reused release: what verifying it against its manifest found, and the repair made before the switch. */
  integrity?: ReleasePreparation;
}

/** What verifying one release against its manifest found. */
export interface ReleaseVerification {
  commit: string;
  /** Files and symlinks the manifest lists. */
  entries: number;
  drift: VerifyResult;
  /** The manifest was missing or unreadable: `manifest` was built from the commit's tree and is not written yet. */
  rebuilt?: { why: "missing" | "invalid"; manifest: ReleaseManifest };
  /** releases/<commit> is not a real folder (gone, or replaced by a symlink or a file): everything counts as removed. */
  rootReplaced?: boolean;
  durationMs: number;
}

/** What repairRelease did, and what a verification right after it found (intact unless someone raced it). */
export interface RepairOutcome {
  rewritten: string[];
  removed: string[];
  /** The release folder was not a real folder and was materialized again as a whole. */
  rematerialized: boolean;
  after: VerifyResult;
}

/** What prepareRelease found and did. */
export interface ReleasePreparation {
  verification: ReleaseVerification;
  /** Set when the release had drifted and selfHeal repaired it. */
  repair?: RepairOutcome;
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
const MANIFEST_NAME = /^([0-9a-f]{40}(?:[0-9a-f]{24})?)\.manifest\.json$/;
/** writeManifest's temporary files: `.<name>.<pid>.<random>.tmp`. */
const MANIFEST_TEMP = /^\.[0-9a-f]{40}(?:[0-9a-f]{24})?\.manifest\.json\..*\.tmp$/;
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
 * a temporary name and renames it when complete, then writes its manifest beside it (unchanged files
 * are hard-linked from the current release; an existing release is reused after it is verified
 * against its manifest, repaired from git when it drifted and `selfHeal` is not false, and given a
 * manifest built from the commit's tree when it has none), runs hooks.pre in the release folder, switches `current`
 * atomically to "releases/<commit>", runs hooks.post, then prunes to `keep` releases, never the
 * `protect` commits or the current one. Hooks get CASCADE_ENVIRONMENT, CASCADE_COMMIT,
 * CASCADE_RELEASE_DIR, CASCADE_PREVIOUS_COMMIT ("" for none) and CASCADE_DEPLOY_DIR on top of the
 * allow-listed part of `input.env` and what `deploy.hooks.env` names; the values named there are
 * masked in `hookOutput`.
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
  const built = await ensureRelease(repo, directory, commit, previous, input.selfHeal ?? true, signal);

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
  if (!(await isRealDirectory(dir))) throw releaseMissing(root, commit);
  await currentRelease(root);
  await pointCurrent(root, commit);
}

function releaseMissing(root: string, commit: string): CascadeError {
  return stalled(
    "ReleaseMissing",
    `there is no release of ${commit.slice(0, 12)} in ${join(root, RELEASES)}`,
    "it was pruned or never deployed: deploy that commit again (a larger deploy.keep keeps more releases)",
  );
}

/**
 * Removes complete releases beyond the newest `keep` (in listReleases order), oldest first, never one
 * in `protect` or the current one, each with its manifest, and compacts the deploy log. A release is renamed to a temporary
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

/**
 * Removes what a crashed deploy or prune left behind: temporary releases, `current` candidates,
 * temporary manifests and manifests whose release is gone.
 */
async function removeLeftovers(root: string): Promise<void> {
  const names = await readdir(join(root, RELEASES));
  const present = new Set(names);
  for (const name of names) {
    const orphan = MANIFEST_NAME.exec(name)?.[1];
    if (name.startsWith(TEMP_PREFIX) || MANIFEST_TEMP.test(name) || (orphan && !present.has(orphan))) {
      await rm(join(root, RELEASES, name), { recursive: true, force: true });
    }
  }
  for (const name of await readdir(root)) {
    if (name.startsWith(CURRENT_TEMP_PREFIX)) await rm(join(root, name), { force: true });
  }
}

/**
 * Materializes releases/<commit> and writes its manifest unless the release is there; only a complete
 * tree ever gets that name. An existing release is verified (and repaired with `selfHeal`) instead.
 */
async function ensureRelease(
  repo: Repo,
  root: string,
  commit: string,
  previous: string | null,
  selfHeal: boolean,
  signal: AbortSignal | undefined,
): Promise<{ reused: boolean; linked: number; written: number; integrity?: ReleasePreparation }> {
  const final = releaseDir(root, commit);
  if (await isRealDirectory(final)) return { reused: true, linked: 0, written: 0, integrity: await prepareRelease(repo, root, commit, { selfHeal }) };
  const linkFrom = await linkSource(repo, root, previous, commit);
  const counts = await materializeRelease(repo, root, commit, linkFrom, signal);
  return { reused: false, linked: counts.linked, written: counts.written };
}

/** Materializes the release under a temporary name, renames it into place and writes its manifest. */
async function materializeRelease(repo: Repo, root: string, commit: string, linkFrom: LinkSource | undefined, signal: AbortSignal | undefined) {
  const final = releaseDir(root, commit);
  const temp = join(root, RELEASES, `${TEMP_PREFIX}${commit}-${randomBytes(6).toString("hex")}`);
  const counts = await materializeTree(repo, commit, temp, { ...(linkFrom ? { linkFrom } : {}), ...(signal ? { signal } : {}) });
  try {
    await rename(temp, final);
  } catch (err) {
    await rm(temp, { recursive: true, force: true });
    throw err;
  }
  // A crash before this line leaves a release without a manifest: the next verification rebuilds it from git.
  await writeManifest(manifestPathFor(final), counts.manifest);
  return counts;
}

/**
 * Verifies releases/<commit> against its manifest, read-only: a missing or unreadable manifest is
 * built from the commit's tree (returned in `rebuilt`, not written), a manifest naming another commit
 * counts as unreadable. A release folder that is not a real folder is never looked into (it could
 * lead anywhere): every path counts as removed. Rejects with Stalled "UnsafePath" when the commit's
 * tree is unsafe and with the git error when the commit is missing from the repository (only when the
 * manifest had to be rebuilt).
 */
export async function verifyReleaseIntegrity(repo: Repo, directory: string, commit: string): Promise<ReleaseVerification> {
  const started = performance.now();
  const dir = releaseDir(directory, commit);
  const { manifest, rebuilt } = await loadManifest(repo, dir, commit);
  const real = await isRealDirectory(dir);
  const drift = real ? await verifyRelease(dir, manifest) : { changed: [], added: [], removed: manifest.entries.map((e) => e.path) };
  return {
    commit,
    entries: manifest.entries.length,
    drift,
    ...(rebuilt ? { rebuilt: { why: rebuilt, manifest } } : {}),
    ...(real ? {} : { rootReplaced: true }),
    durationMs: Math.round(performance.now() - started),
  };
}

/**
 * Restores releases/<commit> from git where `drift` says it differs: changed and removed paths are
 * written fresh from the commit's blobs (to a temporary name, renamed over the old one, so a hard link
 * shared with another release is never written through), added paths are removed, modes come with
 * the fresh files. A release folder that is not a real folder is materialized again as a whole. The
 * manifest is written when it is missing. Resolves with what was done and a verification made right
 * after; rejects with Stalled "UnsafePath" for an unsafe tree and with the fs or git error otherwise.
 */
export async function repairRelease(repo: Repo, directory: string, commit: string, drift: VerifyResult): Promise<RepairOutcome> {
  const root = resolve(directory);
  const dir = releaseDir(root, commit);
  const { manifest, rebuilt } = await loadManifest(repo, dir, commit);
  if (rebuilt) await writeManifest(manifestPathFor(dir), manifest);
  if (!(await isRealDirectory(dir))) {
    await replaceReleaseFolder(repo, root, commit);
    return { rewritten: manifest.entries.map((e) => e.path), removed: [], rematerialized: true, after: await verifyRelease(dir, manifest) };
  }
  const done = await restoreReleasePaths(repo, commit, dir, [...drift.changed, ...drift.added, ...drift.removed]);
  return { ...done, rematerialized: false, after: await verifyRelease(dir, manifest) };
}

/**
 * Gets an existing release ready to be made current (a reuse or a rollback): writes its manifest when
 * it has none (built from git), verifies it, and with `selfHeal` repairs any drift. Hard links make
 * this necessary: a file edited in place in a newer release also changed every older release that
 * shares it. Rejects as verifyReleaseIntegrity and repairRelease do.
 */
export async function prepareRelease(repo: Repo, directory: string, commit: string, opts: { selfHeal: boolean }): Promise<ReleasePreparation> {
  const verification = await verifyReleaseIntegrity(repo, directory, commit);
  if (verification.rebuilt) await writeManifest(manifestPathFor(releaseDir(directory, commit)), verification.rebuilt.manifest);
  if (isIntact(verification.drift) || !opts.selfHeal) return { verification };
  return { verification, repair: await repairRelease(repo, directory, commit, verification.drift) };
}

/**
 * A rollback: prepares the existing release of `commit` (verified, and repaired with `selfHeal`)
 * before `current` is switched to it. Rejects as switchCurrent does ("ReleaseMissing" when it is
 * not there, checked before anything is written) and as prepareRelease does.
 */
export async function rollbackTo(repo: Repo, directory: string, commit: string, opts: { selfHeal: boolean }): Promise<ReleasePreparation> {
  const root = resolve(directory);
  if (!(await isRealDirectory(releaseDir(root, commit)))) throw releaseMissing(root, commit);
  const prepared = await prepareRelease(repo, root, commit, opts);
  await switchCurrent(root, commit);
  return prepared;
}

/**
 * One line for `health`: whether the live release matches its manifest. ok false on drift or when it
 * cannot be verified; never rejects.
 */
export async function integrityCheck(repo: Repo, directory: string, commit: string): Promise<{ ok: boolean; message: string }> {
  try {
    const v = await verifyReleaseIntegrity(repo, directory, commit);
    const what = `${commit.slice(0, 7)}${v.rebuilt ? ` (manifest ${v.rebuilt.why}: checked against the commit's tree)` : ""}`;
    if (v.rootReplaced) return { ok: false, message: `${what}: drift: ${releaseDir(directory, commit)} is not a real folder` };
    if (!isIntact(v.drift)) return { ok: false, message: `${what}: drift: ${describeDrift(v.drift)}` };
    return { ok: true, message: `${what}: ${v.entries} paths match the manifest (verified in ${v.durationMs} ms)` };
  } catch (err) {
    const e = err instanceof CascadeError ? `${err.reason}: ${err.message}` : err instanceof Error ? err.message : String(err);
    return { ok: false, message: `${commit.slice(0, 7)}: cannot verify: ${e}` };
  }
}

/** The manifest of the release at `dir`, or one built from the commit's tree when it is missing or unreadable. */
async function loadManifest(repo: Repo, dir: string, commit: string): Promise<{ manifest: ReleaseManifest; rebuilt?: "missing" | "invalid" }> {
  try {
    const manifest = await readManifest(manifestPathFor(dir));
    if (manifest.commit === commit) return { manifest };
    return { manifest: await treeManifest(repo, commit), rebuilt: "invalid" };
  } catch (err) {
    if (!(err instanceof CascadeError) || (err.reason !== "ReleaseManifestMissing" && err.reason !== "ReleaseManifestInvalid")) throw err;
    return { manifest: await treeManifest(repo, commit), rebuilt: err.reason === "ReleaseManifestMissing" ? "missing" : "invalid" };
  }
}

/** Materializes the release anew in place of whatever sits at its name (a symlink, a file, nothing). */
async function replaceReleaseFolder(repo: Repo, root: string, commit: string): Promise<void> {
  const final = releaseDir(root, commit);
  const temp = join(root, RELEASES, `${TEMP_PREFIX}${commit}-${randomBytes(6).toString("hex")}`);
  const counts = await materializeTree(repo, commit, temp);
  try {
    // Never followed: rm on a symlink removes the link; a real folder is not expected here.
    await rm(final, { recursive: true, force: true });
    await rename(temp, final);
  } catch (err) {
    await rm(temp, { recursive: true, force: true });
    throw err;
  }
  await writeManifest(manifestPathFor(final), counts.manifest);
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
  // After the folder: a crash in between leaves an orphan manifest, which removeLeftovers deletes.
  await rm(manifestPathFor(join(root, RELEASES, commit)), { force: true });
}

function hookEnv(input: DeployInput, release: Release, previous: string | null, root: string): CommandEnv {
  return commandEnv({
    controller: input.env,
    ...(input.deploy.hooks.env ? { entries: input.deploy.hooks.env } : {}),
    cascade: {
      CASCADE_ENVIRONMENT: input.environment,
      CASCADE_COMMIT: release.commit,
      CASCADE_RELEASE_DIR: release.dir,
      CASCADE_PREVIOUS_COMMIT: previous ?? "",
      CASCADE_DEPLOY_DIR: root,
    },
  });
}

async function runHook(
  command: string,
  cwd: string,
  env: CommandEnv,
  timeoutMs: number,
  signal: AbortSignal | undefined,
): Promise<CommandResult> {
  const result = await runCommand(command, { cwd, env: env.env, secrets: env.secrets, timeoutMs, ...(signal ? { signal } : {}) });
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
