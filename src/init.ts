import * as fs from "node:fs";
import { mkdir, readFile, writeFile, access, lstat } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { parseDocument } from "yaml";
import { CONFIG_FILE, formatProblem, loadConfig, parseConfig } from "./config/load.js";
import { remoteKind } from "./config/normalize.js";
import type { Config, ConfigProblem } from "./config/types.js";
import { exclusionsFor } from "./exclusions.js";
import { blobOid, branchRef, gitIdentity, Repo, requireUsableRepository, type Person } from "./git/repo.js";
import { commitNative, parseLsFilesStage, runGit, worktreeChanges, type StatusEntry } from "./git/native/index.js";
import { requireGitVersion } from "./git/native/version.js";
import { checkoutBranch, CheckoutConflictError, createRepository, populateWorkTree } from "./git/setup.js";
import { fetchObjects, remoteBranchTips, type RemoteTarget } from "./git/transport.js";
import { assertSafeTree } from "./pipeline/materialize.js";
import { packageRoot } from "./package-root.js";
import { ensureRuntimeDir } from "./runtime.js";
import { CascadeError, stalled } from "./errors.js";
import { ensureDefaultKeyFile } from "./security/keyfile.js";
import { loadBlobPolicy, type HeldBack } from "./security/blob-policy.js";
import { keepOutOfGit, setUpEncryptionFilter } from "./security/git-filter.js";

/** The environment branches `init` creates next to the sandbox branch. */
export const PIPELINE_BRANCHES = ["staging", "main"];

export interface InitOptions {
  dir: string;
  /** A remote URL or a local path (resolved against `cwd`); a missing local path becomes a new bare repo. */
  remote?: string;
  cwd: string;
  env: NodeJS.ProcessEnv;
  now: () => number;
  /** Extra text appended to a newly written config (used by the demo). */
  configOverrides?: (text: string) => string;
}

/** What init did, line by line, for the terminal; `changed` false means nothing at all changed. */
export interface InitReport {
  changed: boolean;
  lines: string[];
}

/**
 * Makes `dir` a sandbox: a git repository (created, or adopted with its history kept), the default
 * config when none exists, branches develop/staging/main at one commit holding the current content
 * and config, and develop checked out. Idempotent: a second run changes nothing and says so.
 * Throws Stalled `ConfigInvalid` when an existing config does not validate.
 */
export async function init(opts: InitOptions): Promise<InitReport> {
  const dir = resolve(opts.cwd, opts.dir);
  const lines: string[] = [];
  await mkdir(dir, { recursive: true });
  const remoteUrl = opts.remote === undefined ? undefined : remoteKind(opts.remote) !== "local" ? opts.remote : resolve(opts.cwd, opts.remote);
  const configPath = join(dir, CONFIG_FILE);

  await requireGitVersion();
  let repo = await Repo.open(dir).catch(() => undefined);
  let adoption: Adoption | undefined;
  if (repo) {
    await requireUsableRepository(repo.gitdir);
    // Before anything is written: reading the remote (objects only) and the switch are the steps that may refuse.
    adoption = await adoptionFor(repo, configPath, remoteUrl, opts);
    lines.push(...(await adoptSandboxBranch(repo, adoption, opts)));
    lines.push(...(await switchToSandboxBranch(repo, configPath, remoteUrl, opts).catch(async (err) => {
      // The branch just adopted goes again: a refusal changes nothing.
      if (adoption?.createdSandbox) await repo!.deleteRef(branchRef((await sandboxBranchOnDisk(configPath, opts)) ?? "develop"), adoption.createdSandbox);
      throw err;
    })));
  } else {
    await createRepository(dir, { bare: false, defaultBranch: "develop" });
    repo = await Repo.open(dir);
    lines.push(`created a git repository in ${dir}`);
    adoption = await adoptionFor(repo, configPath, remoteUrl, opts);
  }
  lines.push(...(adoption?.notes ?? []));
  if (adoption && !(await repo.ref("HEAD"))) lines.push(...(await populateFromRemote(repo, adoption, configPath, opts)));
  await ensureRuntimeDir(repo.gitdir);

  const hasConfig = await exists(configPath);
  if (!hasConfig) {
    await writeFile(configPath, defaultText(remoteUrl, opts));
    lines.push(`wrote the default config ${configPath}`);
  } else if (remoteUrl && adoption?.teamConfig) {
    // The team's config is theirs: init never edits it (an edit would be committed and pushed to everyone).
    if (!(await listsRemote(configPath, remoteUrl))) lines.push(`the team's ${CONFIG_FILE} (adopted from ${remoteUrl}) does not list ${remoteUrl} as a remote; it was kept as it is`);
  } else if (remoteUrl) {
    if (await addRemoteIfMissing(configPath, remoteUrl)) lines.push(`added remote ${remoteUrl} to ${CONFIG_FILE}`);
  }

  const loaded = await loadConfig(configPath, opts.env);
  if (!loaded.ok) throw configInvalid(loaded.problems);
  const config = loaded.config;
  for (const r of config.remotes) {
    if (r.kind === "local" && !(await exists(r.url))) {
      await createRepository(r.url, { bare: true, defaultBranch: config.sandbox.branch });
      lines.push(`created the bare repository ${r.url} for remote ${r.name}`);
    }
    {
      if ((await repo.getConfig(`remote.${r.name}.url`)) !== r.url) {
        await repo.setConfig(`remote.${r.name}.url`, r.url);
        await repo.setConfig(`remote.${r.name}.fetch`, `+refs/heads/*:refs/remotes/${r.name}/*`);
        lines.push(`git remote ${r.name} -> ${r.url}`);
      }
    }
  }

  const keyFile = await ensureDefaultKeyFile({ dir, configDir: dirname(config.file), security: config.security }, opts.env);
  if (keyFile) {
    lines.push(`created the encryption key ${keyFile} (mode 0600, outside the sandbox) for the files matching security.encrypt (${config.security.encrypt.join(", ")})`);
    lines.push("  back it up: without it those files cannot be read back from git; on another machine set security.key to a copy of it");
  }

  // The first commit follows the same policy as every later one: encrypted, or held back, never plaintext.
  const { policy, keyProblem } = await loadBlobPolicy(config, opts.env);
  repo.policy = policy;
  if (keyProblem && keyProblem.reason !== "EncryptionKeyMissing") lines.push(`the encryption key cannot be used: ${keyProblem.message}`);
  lines.push(...(await setUpEncryptionFilter(repo, { encrypt: config.security.encrypt, policy })));

  const exclusions = await exclusionsFor(config);
  if (await exclusions.writeInfoExclude(repo.gitdir)) lines.push("wrote the exclusions to .git/info/exclude");

  const sandbox = config.sandbox.branch;
  const sandboxHead = await repo.branchHead(sandbox);
  const checkedOut = await repo.currentBranch();
  // Only reached when the branch in the config of the branch just checked out names yet another branch.
  if (sandboxHead && checkedOut !== sandbox) throw wrongBranch(sandbox, checkedOut, `the config that came with the files just checked out names ${sandbox} as the sandbox branch`, false);

  // The sandbox branch holds the current content and config: committed on it (or, when it does not
  // exist yet, on a new branch starting at the commit checked out, whose history it keeps).
  const who = await author(repo, opts.now());
  const base = sandboxHead ?? (await repo.ref("HEAD"));
  const { changes, heldBack } = await sandboxChanges(repo);
  if (changes.length || !base) {
    const policy = repo.policy;
    const outcome = await commitNative<HeldBack>(repo.git, {
      changes,
      ref: branchRef(sandbox),
      parent: base,
      expected: sandboxHead,
      // An encrypted path git would not (or could not) run the filter on is never given to git.
      keepOut: keepOutOfGit(repo, policy),
      // The first commit follows the policy of every later one: the exact bytes git staged are judged.
      judge: (p, blob) => policy.judgeStaged(p, blob),
      objects: { readBlob: (oid) => repo.readBlob(oid), treeOf: (commit) => repo.commitTree(commit) },
      message: (paths) => `cascade-sync init: ${paths.length} file(s)\n`,
      author: gitIdentity(who),
    });
    for (const h of outcome.held) lines.push(`held back: ${h.held.message}`);
    if (outcome.commit) lines.push(`committed the current content as ${outcome.commit.slice(0, 7)} on ${sandbox} (${outcome.changes.length} file(s))`);
  }
  if (heldBack.length) lines.push(`held back (match security.encrypt, and there is no encryption key; never committed in plaintext): ${heldBack.map((h) => h.path).join(", ")}`);
  let start = await repo.branchHead(sandbox);
  if (!start) {
    // The content equals the commit checked out: the new sandbox branch starts right there.
    start = base!;
    await repo.setRef(branchRef(sandbox), start, null, "cascade-sync init", who);
  }
  const created = sandboxHead ? [] : [sandbox];
  const kept: string[] = [];
  const adopted: string[] = [];
  for (const b of pipelineBranches(config)) {
    const at = await repo.branchHead(b);
    // An environment branch the remote has starts where the remote has it: never invented here.
    const theirs = adoption ? await adoption.tip(b) : null;
    if (at) {
      kept.push(`${b} (${at.slice(0, 7)})`);
      if (theirs && theirs !== at) adoption!.notes.push(`kept ${b} at ${at.slice(0, 7)}; ${adoption!.from} has it at ${theirs.slice(0, 7)}: the controller follows ${adoption!.source.name}'s unless ${at.slice(0, 7)} was promoted here`);
    } else if (theirs) {
      await repo.setRef(branchRef(b), theirs, null, `cascade-sync init: adopted from ${adoption!.source.name}`, who);
      adopted.push(`${b} -> ${theirs.slice(0, 7)}`);
    } else {
      await repo.setRef(branchRef(b), start, null, "cascade-sync init", who);
      created.push(b);
    }
  }
  if (adopted.length) adoption!.adopted.push(...adopted);
  if (adoption?.adopted.length) lines.push(`adopted from ${adoption.from}: ${adoption.adopted.join(", ")}${adoption.already.length ? ` (already there: ${adoption.already.join(", ")})` : ""}`);
  if (created.length) lines.push(`created branch(es) ${created.join(", ")} at ${start.slice(0, 7)}`);
  if (checkedOut !== sandbox) {
    // The branch was just made from the files as they are: pointing HEAD at it changes no file.
    await repo.setSymbolicRef("HEAD", branchRef(sandbox), `checkout: moving from ${checkedOut ?? "a detached HEAD"} to ${sandbox}`, who);
    lines.push(`checked out ${sandbox}`);
  }
  if (lines.length && kept.length) lines.push(`kept the existing branch(es) ${kept.join(", ")} where they are (their history is untouched)`);
  if (lines.length && adoption) lines.push(...adoption.notes.filter((n) => !lines.includes(n)));
  const warnings = loaded.warnings.map(formatProblem);
  if (!lines.length) return { changed: false, lines: [`${dir} is already a cascade-sync sandbox; nothing changed`, ...warnings] };
  return { changed: true, lines: [...lines, ...warnings] };
}

/** How long init waits for a remote that does not answer (the controller keeps trying later). */
const INIT_REMOTE_TIMEOUT_MS = 10_000;

/**
 * The remote whose pipeline init adopts: where its branches are (fetched, their objects copied
 * here), and what was adopted so far. `tip(branch)` reads a branch not read yet.
 */
interface Adoption {
  source: RemoteTarget;
  /** "remote origin (URL)", for messages. */
  from: string;
  /** The branches read so far: the remote's commit, or null when it has no such branch. */
  tips: Map<string, string | null>;
  tip(branch: string): Promise<string | null>;
  /** "branch -> commit" for each branch that now starts where the remote has it. */
  adopted: string[];
  /** "branch -> commit" for each branch that already was where the remote has it (reported with the others). */
  already: string[];
  /** Lines to report besides (the remote could not be read, a branch kept that differs). */
  notes: string[];
  /** True when the config in the sandbox came from the remote's sandbox branch (the team's). */
  teamConfig: boolean;
  /** The commit of the sandbox branch adoptSandboxBranch created (deleted again when the switch refuses). */
  createdSandbox?: string;
}

/**
 * The remote init adopts a pipeline from: the one given with --remote (when it exists), else, in a
 * clone, the config's first remote when git's remote of the same name (or `origin`) points at it.
 * Reads its sandbox and pipeline branches and copies their objects here without moving any ref (a
 * local remote) or into `refs/remotes/<name>/` (an HTTP one). A remote that cannot be read is
 * reported in `notes`; in a clone the branches git clone fetched are used instead.
 *
 * Throws Stalled `UnrelatedHistory` when the remote's branches share no commit with the local
 * history (nothing was changed), and Stalled `ConfigInvalid` for an invalid config on disk.
 */
async function adoptionFor(repo: Repo, configPath: string, remoteUrl: string | undefined, opts: InitOptions): Promise<Adoption | undefined> {
  const onDisk = (await exists(configPath)) ? await loadConfig(configPath, opts.env) : undefined;
  if (onDisk && !onDisk.ok) throw configInvalid(onDisk.problems);
  const config = onDisk?.config;
  const found = await adoptionSource(repo, config, remoteUrl, opts);
  if (!found) return undefined;
  const { source, tracking } = found;
  const who = await author(repo, opts.now());
  const from = `remote ${source.name} (${source.url})`;
  const tips = new Map<string, string | null>();
  const notes: string[] = [];
  let unreachable = false;
  const read = async (branches: string[]): Promise<void> => {
    const wanted = branches.filter((b) => !tips.has(b));
    if (!wanted.length) return;
    if (!unreachable) {
      try {
        for (const [b, t] of Object.entries(await readRemoteBranches(repo, source, wanted, who))) tips.set(b, t);
        return;
      } catch (err) {
        unreachable = true;
        const why = err instanceof CascadeError ? `${err.reason}: ${err.message}` : (err as Error).message;
        notes.push(tracking
          ? `could not read ${from} (${why}); adopting its branches as git clone fetched them`
          : `could not read ${from} (${why}); nothing was adopted from it (the controller follows its environment branches once it can reach it)`);
      }
    }
    for (const b of wanted) tips.set(b, tracking ? await repo.ref(`refs/remotes/${tracking}/${b}`) : null);
  };
  const sandbox = config?.sandbox.branch ?? "develop";
  await read([sandbox, ...(config ? pipelineBranches(config) : PIPELINE_BRANCHES)]);
  await refuseUnrelated(repo, sandbox, tips, source);
  return {
    source, from, tips, notes, adopted: [], already: [], teamConfig: false,
    async tip(branch) {
      await read([branch]);
      return tips.get(branch) ?? null;
    },
  };
}

/** Where to adopt from (see adoptionFor), and the git remote whose tracking refs a clone has. */
async function adoptionSource(repo: Repo, config: Config | undefined, remoteUrl: string | undefined, opts: InitOptions): Promise<{ source: RemoteTarget; tracking?: string } | undefined> {
  if (remoteUrl) {
    const kind = remoteKind(remoteUrl);
    const local = kind === "local";
    // A local path that does not exist yet becomes a new, empty bare repository: nothing to adopt.
    if (local && !(await isGitDir(remoteUrl))) return undefined;
    const known = config?.remotes.find((r) => sameUrl(r.url, remoteUrl));
    const source: RemoteTarget = known ?? {
      name: "origin", url: remoteUrl, kind, timeoutMs: INIT_REMOTE_TIMEOUT_MS,
      ...(opts.env.CASCADE_CLIENT_ID ? { username: opts.env.CASCADE_CLIENT_ID } : {}), ...(opts.env.CASCADE_CLIENT_SECRET ? { password: opts.env.CASCADE_CLIENT_SECRET } : {}),
    };
    return { source };
  }
  const first = config?.remotes[0];
  if (!first) return undefined;
  for (const name of [...new Set([first.name, "origin"])]) {
    const url = await repo.getConfig(`remote.${name}.url`);
    if (url && sameUrl(first.kind === "local" && !url.startsWith("file://") ? resolve(repo.dir, url) : url, first.url)) return { source: first, tracking: name };
  }
  return undefined;
}

/** Each branch's commit on the remote (null: none), with its objects copied here (see adoptionFor). */
async function readRemoteBranches(repo: Repo, source: RemoteTarget, branches: string[], who: Person): Promise<Record<string, string | null>> {
  const transport = { timeoutMs: INIT_REMOTE_TIMEOUT_MS, who };
  if (source.kind === "local" && !(await isGitDir(source.url))) throw stalled("RemoteNotFound", `${source.url} is not a git repository`);
  const tips = await remoteBranchTips(repo, source, branches, transport);
  // Objects only, no ref: a refusal after this leaves every ref, file and config as it was.
  const missing: string[] = [];
  for (const [b, t] of Object.entries(tips)) if (t && !(await repo.hasObject(t))) missing.push(b);
  await fetchObjects(repo, source, missing, transport);
  return tips;
}

/** Throws Stalled `UnrelatedHistory` when a branch of the remote shares no commit with the local history. */
async function refuseUnrelated(repo: Repo, sandbox: string, tips: Map<string, string | null>, source: RemoteTarget): Promise<void> {
  const mine = (await repo.branchHead(sandbox)) ?? (await repo.ref("HEAD"));
  if (!mine) return;
  const foreign: string[] = [];
  for (const [b, t] of tips) if (t && (await repo.mergeBase(mine, t)) === null) foreign.push(`${b} (${t.slice(0, 7)})`);
  if (!foreign.length) return;
  throw stalled(
    "UnrelatedHistory",
    `remote ${source.name} (${source.url}) has history unrelated to this repository: its ${foreign.join(", ")} ${foreign.length === 1 ? "shares" : "share"} no commit with ${sandbox === (await repo.currentBranch()) ? sandbox : "the commit checked out"} (${mine.slice(0, 7)}); init joins a remote's pipeline only where it continues the local history, and never merges unrelated histories (that would replace the team's files and config); nothing was changed`,
    `to join that pipeline, clone it and run init in the clone: git clone ${source.url} DIR && cd DIR && cascade-sync init; to give this repository a pipeline of its own, use an empty remote (a new bare repository) instead`,
  );
}

/**
 * In a repository with history but no sandbox branch (a clone of a remote whose default branch is
 * another one), creates the sandbox branch where the remote has it, so that the switch that follows
 * checks it out. Returns the lines to report.
 */
async function adoptSandboxBranch(repo: Repo, adoption: Adoption | undefined, opts: InitOptions): Promise<string[]> {
  if (!adoption || !(await repo.ref("HEAD"))) return [];
  const sandbox = (await sandboxBranchOnDisk(join(repo.dir, CONFIG_FILE), opts)) ?? "develop";
  const theirs = adoption.tips.get(sandbox);
  const mine = await repo.branchHead(sandbox);
  if (mine) {
    if (theirs === mine) adoption.already.push(`${sandbox} -> ${mine.slice(0, 7)}`);
    if (theirs && theirs !== mine) adoption.notes.push(`kept ${sandbox} at ${mine.slice(0, 7)}; ${adoption.from} has it at ${theirs.slice(0, 7)}: the controller brings the two together`);
    return [];
  }
  if (!theirs) return [];
  await repo.setRef(branchRef(sandbox), theirs, null, `cascade-sync init: adopted from ${adoption.source.name}`, await author(repo, opts.now()));
  adoption.createdSandbox = theirs;
  adoption.adopted.push(`${sandbox} -> ${theirs.slice(0, 7)}`);
  return [];
}

/**
 * In a repository without history: the sandbox branch starts at the remote's, whose files are
 * written into the folder (what is already there is kept, and committed on top as the sandbox's
 * own content), and the team's config comes with them. Returns the lines to report.
 */
async function populateFromRemote(repo: Repo, adoption: Adoption, configPath: string, opts: InitOptions): Promise<string[]> {
  const onDisk = (await exists(configPath)) ? await loadConfig(configPath, opts.env) : undefined;
  const sandbox = onDisk?.ok ? onDisk.config.sandbox.branch : "develop";
  const theirs = await adoption.tip(sandbox);
  if (!theirs) return [];
  // The files of the remote's commit are written through the policy of the config that will be in force.
  const text = onDisk ? undefined : (await repo.fileAt(theirs, CONFIG_FILE))?.toString("utf8");
  const governing = onDisk ?? (text !== undefined ? parseConfig(text, configPath, opts.env) : undefined);
  if (governing?.ok) repo.policy = (await loadBlobPolicy(governing.config, opts.env)).policy;
  // A remote commit is hostile input: nothing of it is written unless every path is safe.
  await assertSafeTree(repo, await repo.commitTree(theirs), "the sandbox");
  const { written, kept } = await populateWorkTree(repo, theirs);
  const who = await author(repo, opts.now());
  await repo.setRef(branchRef(sandbox), theirs, null, `cascade-sync init: adopted from ${adoption.source.name}`, who);
  const checkedOut = await repo.currentBranch();
  if (checkedOut !== sandbox) await repo.setSymbolicRef("HEAD", branchRef(sandbox), `checkout: moving from ${checkedOut ?? "HEAD"} to ${sandbox}`, who);
  adoption.teamConfig = !onDisk && text !== undefined;
  adoption.adopted.push(`${sandbox} -> ${theirs.slice(0, 7)}`);
  const lines = [`wrote ${written.length} file(s) of ${adoption.source.name}'s ${sandbox} (${theirs.slice(0, 7)}) into ${repo.dir}${adoption.teamConfig ? `, with the team's ${CONFIG_FILE}` : ""}`];
  if (kept.length) lines.push(`kept ${kept.length} file(s) already here as they are (${kept.slice(0, 5).join(", ")}${kept.length > 5 ? ", ..." : ""}): where they differ, they are committed on top (the sandbox wins)`);
  return lines;
}

/** The sandbox branch the config on disk names (undefined without a valid config). */
async function sandboxBranchOnDisk(configPath: string, opts: InitOptions): Promise<string | undefined> {
  if (!(await exists(configPath))) return undefined;
  const loaded = await loadConfig(configPath, opts.env);
  return loaded.ok ? loaded.config.sandbox.branch : undefined;
}

/** True when the config already lists `url` as a remote. */
async function listsRemote(configPath: string, url: string): Promise<boolean> {
  const doc = parseDocument(await readFile(configPath, "utf8"));
  const remotes = (doc.toJS() as { remotes?: { url?: string }[] } | null)?.remotes ?? [];
  return remotes.some((r) => !!r.url && (r.url === url || (remoteKind(r.url) === "local" && resolve(dirname(configPath), r.url) === resolve(url))));
}

/** True when two remote URLs name the same repository (a local path also as `file://`, a trailing `/` ignored). */
function sameUrl(a: string, b: string): boolean {
  if (remoteKind(a) !== "local" || remoteKind(b) !== "local") return a.replace(/\/+$/, "") === b.replace(/\/+$/, "");
  const path = (u: string) => resolve(u.startsWith("file://") ? decodeURIComponent(u.slice("file://".length)) : u).replace(/\/+$/, "");
  return path(a) === path(b);
}

async function isGitDir(path: string): Promise<boolean> {
  return (await exists(join(path, "objects"))) && (await exists(join(path, "HEAD")));
}

/**
 * In an existing repository where the sandbox branch exists but another branch (or a detached HEAD)
 * is checked out, checks the sandbox branch out, so that init commits onto it its own files and
 * never another branch's. It does so only when nothing can be lost: the index and the work tree
 * are exactly the commit checked out (no edit, no staged change, no untracked file that would be
 * synced), and every path that changes is on disk as that commit has it. Otherwise it throws
 * Stalled `WrongBranch`, having changed nothing. Returns the lines to report (none when there was
 * nothing to switch).
 */
async function switchToSandboxBranch(repo: Repo, configPath: string, remoteUrl: string | undefined, opts: InitOptions): Promise<string[]> {
  // The config on disk (or the default one init would write) names the branch and the exclusions.
  const loaded = (await exists(configPath)) ? await loadConfig(configPath, opts.env) : parseConfig(defaultText(remoteUrl, opts), configPath, opts.env);
  if (!loaded.ok) throw configInvalid(loaded.problems);
  const config = loaded.config;
  const sandbox = config.sandbox.branch;
  const checkedOut = await repo.currentBranch();
  if (checkedOut === sandbox || !(await repo.branchHead(sandbox))) return [];

  repo.policy = (await loadBlobPolicy(config, opts.env)).policy;
  const filemode = (await repo.getConfig("core.filemode")) !== "false";
  const from = await repo.ref("HEAD");
  const exclusions = await exclusionsFor(config);
  const dirty: string[] = [];
  const { changes, heldBack } = await sandboxChanges(repo);
  for (const c of changes) {
    if (c.kind === "untracked") {
      // The config's exclusions are not in .git/info/exclude yet: what they exclude would never be synced.
      if (!(await exclusions.isExcluded(c.path.replace(/\/$/, ""), c.path.endsWith("/")))) dirty.push(`${c.path} (untracked)`);
    } else if (c.kind === "unmerged") dirty.push(`${c.path} (conflict)`);
    else if (c.kind === "ordinary" || c.kind === "renamed") {
      // Staged changes would be lost with the index; a change in the work tree would be left behind.
      if (c.xy[0] !== ".") dirty.push(`${c.path} (staged)`);
      if (c.xy[1] === "D") dirty.push(`${c.path} (deleted)`);
      else if (c.xy[1] !== ".") dirty.push(`${c.path} (modified)`);
    }
  }
  for (const h of heldBack) if (h.tracked) dirty.push(`${h.path} (encrypted, no key to compare it)`);
  const was = checkedOut ? `branch ${checkedOut}` : "a detached HEAD";
  if (dirty.length) {
    const shown = [...new Set(dirty)];
    throw wrongBranch(sandbox, checkedOut, `the work tree has uncommitted changes (init never carries them over to ${sandbox}): ${shown.slice(0, 10).join(", ")}${shown.length > 10 ? ` and ${shown.length - 10} more` : ""}`);
  }
  try {
    const who = await author(repo, opts.now());
    const done = await checkoutBranch(repo, { from, branch: sandbox, committer: who, trustExecutableBit: filemode, message: `checkout: moving from ${checkedOut ?? from ?? "HEAD"} to ${sandbox}` });
    return [`checked out ${sandbox}: it already existed and ${was} had nothing uncommitted, so the files are now ${sandbox}'s (${done.written.length} written, ${done.deleted.length} removed; ${checkedOut ?? "that commit"} keeps its own in git)`];
  } catch (err) {
    if (err instanceof CheckoutConflictError) throw wrongBranch(sandbox, checkedOut, `switching would overwrite or delete files that the commit checked out does not hold as they are (e.g. ignored files): ${err.paths.slice(0, 10).join(", ")}${err.paths.length > 10 ? ` and ${err.paths.length - 10} more` : ""}`);
    throw err;
  }
}

/** Stalled `WrongBranch`: the sandbox branch exists, another is checked out, and init will not switch. */
function wrongBranch(sandbox: string, checkedOut: string | null, why: string, changedNothing = true): CascadeError {
  const was = checkedOut ? `branch ${checkedOut}` : "a detached HEAD";
  return stalled(
    "WrongBranch",
    `${was} is checked out, not the sandbox branch ${sandbox}, and init does not switch to ${sandbox} because ${why}; ${changedNothing ? "nothing was changed" : "no branch was changed"}`,
    `check out ${sandbox} first: git checkout ${sandbox} (commit or stash your changes on ${checkedOut ?? "a branch"} before, if git asks), then run cascade-sync init again`,
  );
}

function configInvalid(problems: ConfigProblem[]): CascadeError {
  return stalled("ConfigInvalid", `the config is not valid:\n${problems.map(formatProblem).join("\n")}`, "fix it, then run init again");
}

/** The branches next to the sandbox branch: the environments' branches, else staging and main. */
function pipelineBranches(config: Config): string[] {
  const envBranches = Object.values(config.environments).map((e) => e.branch);
  return [...new Set([...PIPELINE_BRANCHES.filter((b) => !envBranches.includes(b)), ...envBranches])].filter((b) => b !== config.sandbox.branch);
}

function defaultText(remoteUrl: string | undefined, opts: InitOptions): string {
  const text = defaultConfigText(remoteUrl);
  return opts.configOverrides ? opts.configOverrides(text) : text;
}

/** The commented default config, with the remote filled in (or an empty remote list). */
export function defaultConfigText(remoteUrl: string | undefined): string {
  const template = fs.readFileSync(join(packageRoot(), CONFIG_FILE), "utf8");
  if (!remoteUrl) {
    return template.replace(/^remotes:\n  - name: origin\n    url: REMOTE_URL\n((    .*)?\n)*/m, (block) =>
      `remotes: []\n# Example:\n${block.split("\n").slice(1).filter(Boolean).map((l) => `# ${l.replace("REMOTE_URL", "https://git.example.com/team/site.git")}`).join("\n")}\n\n`);
  }
  const local = remoteKind(remoteUrl) === "local";
  return template.replace(/^(    url: )REMOTE_URL\n((    .*)?\n)*/m, (block) => {
    const rest = block.split("\n").slice(1);
    // A local bare repository needs no credentials; keep the lines for HTTP remotes only.
    const kept = local ? rest.filter((l) => !/^    (username|password):|^    #/.test(l)) : rest;
    return `    url: ${JSON.stringify(remoteUrl)}\n${kept.join("\n")}`;
  });
}

/** Adds `url` as a remote when no remote has it; keeps the file's comments. Returns true when added. */
async function addRemoteIfMissing(configPath: string, url: string): Promise<boolean> {
  const doc = parseDocument(await readFile(configPath, "utf8"));
  const remotes = (doc.toJS() as { remotes?: { name?: string; url?: string }[] } | null)?.remotes ?? [];
  // A local path in the config is relative to the config's folder; `url` here is already absolute.
  const same = (u: string | undefined) => u === url || (!!u && remoteKind(u) === "local" && resolve(dirname(configPath), u) === resolve(dirname(configPath), url));
  if (remotes.some((r) => same(r.url))) return false;
  const names = new Set(remotes.map((r) => r.name));
  let name = "origin";
  for (let i = 2; names.has(name); i++) name = `origin${i}`;
  if (!doc.has("remotes") || !Array.isArray(doc.toJS()?.remotes)) doc.set("remotes", doc.createNode([]));
  doc.addIn(["remotes"], doc.createNode({ name, url }));
  await writeFile(configPath, doc.toString());
  return true;
}

/**
 * What differs in the work tree from the index and HEAD, as git sees it (`git status`, which writes
 * nothing: optional locks off), with tracked encrypted paths compared by their ciphertext (encrypted
 * again with the key) and paths held back apart: encrypted ones
 * without a key, which are never committed in plaintext.
 */
async function sandboxChanges(repo: Repo): Promise<{ changes: StatusEntry[]; heldBack: { path: string; tracked: boolean }[] }> {
  const git = { ...repo.git, env: { GIT_OPTIONAL_LOCKS: "0" } };
  const policy = repo.policy;
  const changes: StatusEntry[] = [];
  const heldBack: { path: string; tracked: boolean }[] = [];
  const present = (path: string) => lstat(join(repo.dir, path)).then(() => true, () => false);
  for (const e of await worktreeChanges(git, [])) {
    if (policy.isEncrypted(e.path) && e.kind !== "untracked") continue;
    if (policy.holdsBack(e.path)) {
      if (await present(e.path)) heldBack.push({ path: e.path, tracked: e.kind !== "untracked" });
      continue;
    }
    changes.push(e);
  }
  const { stdout } = await runGit(["ls-files", "-s", "-z"], git);
  for (const e of parseLsFilesStage(stdout)) {
    if (e.stage !== 0 || e.mode === "160000" || !policy.isEncrypted(e.path)) continue;
    const abs = join(repo.dir, e.path);
    const st = await lstat(abs).catch(() => null);
    if (st && policy.holdsBack(e.path)) {
      heldBack.push({ path: e.path, tracked: true });
      continue;
    }
    if (st && !st.isFile()) continue;
    if (st && blobOid(policy.blobContent(e.path, await readFile(abs))) === e.oid) continue;
    changes.push({ kind: "ordinary", xy: st ? ".M" : ".D", submodule: undefined, modeHead: e.mode, modeIndex: e.mode, modeWorktree: st ? e.mode : "000000", oidHead: e.oid, oidIndex: e.oid, path: e.path });
  }
  return { changes, heldBack };
}

async function author(repo: Repo, now: number): Promise<Person> {
  const git = await repo.userIdentity();
  return {
    name: git.name ?? "cascade-sync",
    email: git.email ?? "cascade-sync@localhost",
    timestamp: Math.floor(now / 1000),
    timezoneOffset: new Date(now).getTimezoneOffset(),
  };
}

async function exists(p: string): Promise<boolean> {
  try {
    await access(p);
    return true;
  } catch {
    return false;
  }
}
