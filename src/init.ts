import * as fs from "node:fs";
import { mkdir, readFile, writeFile, access } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { parseDocument } from "yaml";
import { CONFIG_FILE, formatProblem, loadConfig, parseConfig } from "./config/load.js";
import { isHttpUrl } from "./config/normalize.js";
import type { Config, ConfigProblem } from "./config/types.js";
import { exclusionsFor } from "./exclusions.js";
import { commitWorktree } from "./git/commit.js";
import { readIndex } from "./git/index-file.js";
import { writeSymbolicRef } from "./git/refs.js";
import { branchRef, EMPTY_TREE, Repo, type Person } from "./git/repo.js";
import { checkoutBranch, CheckoutConflictError, createRepository } from "./git/setup.js";
import { packageRoot } from "./package-root.js";
import { ensureRuntimeDir } from "./runtime.js";
import { Worktree } from "./worktree.js";
import { stalled, type CascadeError } from "./errors.js";
import { ensureDefaultKeyFile } from "./security/keyfile.js";
import { loadBlobPolicy } from "./security/blob-policy.js";

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
  const remoteUrl = opts.remote === undefined ? undefined : isHttpUrl(opts.remote) ? opts.remote : resolve(opts.cwd, opts.remote);
  const configPath = join(dir, CONFIG_FILE);

  let repo = await Repo.open(dir).catch(() => undefined);
  if (repo) {
    // Before anything is written: switching to the sandbox branch is the one step that may refuse.
    lines.push(...(await switchToSandboxBranch(repo, configPath, remoteUrl, opts)));
  } else {
    await createRepository(dir, { bare: false, defaultBranch: "develop" });
    repo = await Repo.open(dir);
    // isomorphic-git writes core.filemode=false, which would lose exec-bit changes.
    await repo.setConfig("core.filemode", "true");
    await repo.setConfig("core.logallrefupdates", "true");
    lines.push(`created a git repository in ${dir}`);
  }
  await ensureRuntimeDir(repo.gitdir);

  const hasConfig = await exists(configPath);
  if (!hasConfig) {
    await writeFile(configPath, defaultText(remoteUrl, opts));
    lines.push(`wrote the default config ${configPath}`);
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
    if (r.kind === "local" || r.kind === "http") {
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
  const baseTree = base ? await repo.commitTree(base) : EMPTY_TREE;
  const worktree = new Worktree(dir, repo, exclusions, (await repo.getConfig("core.filemode")) !== "false");
  const index = await readIndex(repo.gitdir);
  const obs = await worktree.observe(baseTree, [""], { entries: index.entries, mtime: index.mtime ?? { sec: 0, nsec: 0 } });
  if (obs.changes.length || obs.refresh.length || !base) {
    const outcome = await commitWorktree(repo, {
      branch: sandbox,
      parent: base,
      paths: obs.changes.map((c) => ({ path: c.path, deleted: !c.work })),
      refresh: obs.refresh.map((r) => r.path),
      modeOf: (st, head) => worktree.modeOf(st, head),
      headEntry: async (p) => {
        const e = await worktree.headEntry(baseTree, p);
        return e && !e.isTree ? { mode: e.mode, oid: e.oid } : undefined;
      },
      message: (paths) => `cascade-sync init: ${paths.length} file(s)\n`,
      author: who,
      allowEmpty: !base,
      expectedBranchHead: sandboxHead,
    });
    for (const h of outcome.held) lines.push(`held back: ${h.message}`);
    if (outcome.commit) lines.push(`committed the current content as ${outcome.commit.slice(0, 7)} on ${sandbox} (${outcome.paths.length} file(s))`);
  }
  if (obs.heldBack.length) lines.push(`held back (match security.encrypt, and there is no encryption key; never committed in plaintext): ${obs.heldBack.join(", ")}`);
  let start = await repo.branchHead(sandbox);
  if (!start) {
    // The content equals the commit checked out: the new sandbox branch starts right there.
    start = base!;
    await repo.setRef(branchRef(sandbox), start, null, "cascade-sync init", who);
  }
  const created = sandboxHead ? [] : [sandbox];
  const kept: string[] = [];
  for (const b of pipelineBranches(config)) {
    const at = await repo.branchHead(b);
    if (at) kept.push(`${b} (${at.slice(0, 7)})`);
    else {
      await repo.setRef(branchRef(b), start, null, "cascade-sync init", who);
      created.push(b);
    }
  }
  if (created.length) lines.push(`created branch(es) ${created.join(", ")} at ${start.slice(0, 7)}`);
  if (checkedOut !== sandbox) {
    // The branch was just made from the files as they are: pointing HEAD at it changes no file.
    await writeSymbolicRef(repo.gitdir, "HEAD", branchRef(sandbox), { message: `checkout: moving from ${checkedOut ?? "a detached HEAD"} to ${sandbox}`, committer: who });
    lines.push(`checked out ${sandbox}`);
  }
  if (lines.length && kept.length) lines.push(`kept the existing branch(es) ${kept.join(", ")} where they are (their history is untouched)`);
  const warnings = loaded.warnings.map(formatProblem);
  if (!lines.length) return { changed: false, lines: [`${dir} is already a cascade-sync sandbox; nothing changed`, ...warnings] };
  return { changed: true, lines: [...lines, ...warnings] };
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
  const fromTree = from ? await repo.commitTree(from) : EMPTY_TREE;
  const index = await readIndex(repo.gitdir);
  const dirty: string[] = [];
  // Staged changes (or conflicts) would be lost with the index.
  const tracked = await repo.flattenTree(fromTree);
  for (const [p, e] of tracked) {
    const i = index.entries.get(p);
    if (!i || i.oid !== e.oid || i.mode !== parseInt(e.mode, 8) || i.flags.intentToAdd) dirty.push(`${p} (staged)`);
  }
  for (const p of index.entries.keys()) if (!tracked.has(p)) dirty.push(`${p} (staged)`);
  for (const c of index.conflicts) dirty.push(`${c.path} (conflict)`);
  const worktree = new Worktree(repo.dir, repo, await exclusionsFor(config), filemode);
  const obs = await worktree.observe(fromTree, [""], { entries: index.entries, mtime: index.mtime ?? { sec: 0, nsec: 0 } });
  for (const c of obs.changes) dirty.push(`${c.path} (${!c.head ? "untracked" : c.work ? "modified" : "deleted"})`);
  for (const p of obs.heldBack) if (tracked.has(p)) dirty.push(`${p} (encrypted, no key to compare it)`);
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
  const local = !isHttpUrl(remoteUrl);
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
  const same = (u: string | undefined) => u === url || (!!u && !isHttpUrl(u) && resolve(dirname(configPath), u) === resolve(dirname(configPath), url));
  if (remotes.some((r) => same(r.url))) return false;
  const names = new Set(remotes.map((r) => r.name));
  let name = "origin";
  for (let i = 2; names.has(name); i++) name = `origin${i}`;
  if (!doc.has("remotes") || !Array.isArray(doc.toJS()?.remotes)) doc.set("remotes", doc.createNode([]));
  doc.addIn(["remotes"], doc.createNode({ name, url }));
  await writeFile(configPath, doc.toString());
  return true;
}

async function author(repo: Repo, now: number): Promise<Person> {
  return {
    name: (await repo.getConfig("user.name")) ?? "cascade-sync",
    email: (await repo.getConfig("user.email")) ?? "cascade-sync@localhost",
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
