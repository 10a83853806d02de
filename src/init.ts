import * as fs from "node:fs";
import { mkdir, readFile, writeFile, access } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import git from "isomorphic-git";
import { lockedFs } from "./git/locked-fs.js";
import { parseDocument } from "yaml";
import { CONFIG_FILE } from "./config/load.js";
import { isHttpUrl } from "./config/normalize.js";
import { exclusionsFor } from "./exclusions.js";
import { commitWorktree } from "./git/commit.js";
import { readIndex } from "./git/index-file.js";
import { readSymbolicRef, writeSymbolicRef } from "./git/refs.js";
import { branchRef, EMPTY_TREE, Repo, type Person } from "./git/repo.js";
import { packageRoot } from "./package-root.js";
import { ensureRuntimeDir } from "./runtime.js";
import { Worktree } from "./worktree.js";
import { loadConfig } from "./config/load.js";
import { stalled } from "./errors.js";
import { formatProblem } from "./config/load.js";
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

  let repo = await Repo.open(dir).catch(() => undefined);
  if (!repo) {
    await git.init({ fs: lockedFs, dir, defaultBranch: "develop" });
    repo = await Repo.open(dir);
    // isomorphic-git writes core.filemode=false, which would lose exec-bit changes.
    await repo.setConfig("core.filemode", "true");
    await repo.setConfig("core.logallrefupdates", "true");
    lines.push(`created a git repository in ${dir}`);
  }
  await ensureRuntimeDir(repo.gitdir);

  const configPath = join(dir, CONFIG_FILE);
  const hasConfig = await exists(configPath);
  if (!hasConfig) {
    let text = defaultConfigText(remoteUrl);
    if (opts.configOverrides) text = opts.configOverrides(text);
    await writeFile(configPath, text);
    lines.push(`wrote the default config ${configPath}`);
  } else if (remoteUrl) {
    if (await addRemoteIfMissing(configPath, remoteUrl)) lines.push(`added remote ${remoteUrl} to ${CONFIG_FILE}`);
  }

  const loaded = await loadConfig(configPath, opts.env);
  if (!loaded.ok) {
    throw stalled("ConfigInvalid", `the config is not valid:\n${loaded.problems.map(formatProblem).join("\n")}`, "fix it, then run init again");
  }
  const config = loaded.config;
  for (const r of config.remotes) {
    if (r.kind === "local" && !(await exists(r.url))) {
      await git.init({ fs: lockedFs, gitdir: r.url, bare: true, defaultBranch: config.sandbox.branch });
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

  const branches = [config.sandbox.branch, ...PIPELINE_BRANCHES.filter((b) => !Object.values(config.environments).some((e) => e.branch === b)), ...Object.values(config.environments).map((e) => e.branch)];
  const missing: string[] = [];
  for (const b of new Set(branches)) if (!(await repo.branchHead(b))) missing.push(b);
  if (missing.length) {
    const who = await author(repo, opts.now());
    const sandboxHead = await repo.branchHead(config.sandbox.branch);
    const headTarget = await readSymbolicRef(repo.gitdir, "HEAD");
    const base = sandboxHead ?? (await repo.ref("HEAD"));
    const filemode = (await repo.getConfig("core.filemode")) !== "false";
    const worktree = new Worktree(dir, repo, exclusions, filemode);
    const index = await readIndex(repo.gitdir);
    const obs = await worktree.observe(base ? await repo.commitTree(base) : EMPTY_TREE, [""], { entries: index.entries, mtime: { sec: 0, nsec: 0 } });
    const outcome = await commitWorktree(repo, {
      branch: config.sandbox.branch,
      parent: base,
      paths: obs.changes.map((c) => ({ path: c.path, deleted: !c.work })),
      refresh: obs.refresh.map((r) => r.path),
      modeOf: (st, head) => worktree.modeOf(st, head),
      headEntry: async (p) => {
        const e = base ? await worktree.headEntry(await repo.commitTree(base), p) : undefined;
        return e && !e.isTree ? { mode: e.mode, oid: e.oid } : undefined;
      },
      message: (paths) => `cascade-sync init: ${paths.length} file(s)\n`,
      author: who,
      allowEmpty: !base,
      expectedBranchHead: sandboxHead,
    });
    if (obs.heldBack.length) lines.push(`held back (match security.encrypt, and there is no encryption key; never committed in plaintext): ${obs.heldBack.join(", ")}`);
    for (const h of outcome.held) lines.push(`held back: ${h.message}`);
    const start = outcome.commit ?? base!;
    if (!sandboxHead && !outcome.commit) await repo.setRef(branchRef(config.sandbox.branch), start, null, "cascade-sync init", who);
    if (outcome.commit) lines.push(`committed the current content as ${outcome.commit.slice(0, 7)} on ${config.sandbox.branch} (${outcome.paths.length} file(s))`);
    for (const b of missing.filter((x) => x !== config.sandbox.branch)) {
      await repo.setRef(branchRef(b), start, null, "cascade-sync init", who);
    }
    lines.push(`branches ${missing.join(", ")} start at ${start.slice(0, 7)}`);
    if (headTarget !== branchRef(config.sandbox.branch)) {
      await writeSymbolicRef(repo.gitdir, "HEAD", branchRef(config.sandbox.branch));
      lines.push(`checked out ${config.sandbox.branch}`);
    }
  }
  const warnings = loaded.warnings.map(formatProblem);
  if (!lines.length) return { changed: false, lines: [`${dir} is already a cascade-sync sandbox; nothing changed`, ...warnings] };
  return { changed: true, lines: [...lines, ...warnings] };
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
