#!/usr/bin/env node
/**
 * A one-file commit at scale, in one repository, the ways side by side (alternating each round, so all
 * see the same cache state):
 *
 * - the gateway's plumbing on the known path (commitKnownPaths: update-index for the path, write-tree,
 *   commit-tree, update-ref expecting the parent): the floor for a commit that spawns git;
 * - the native commit engine (src/git/native/stage.ts: git status on the hinted path, git stages, the
 *   staged blob read back and judged, write-tree, commit-tree, update-ref), as the controller commits;
 * - the same engine after a whole-tree status (no hint: a rescan);
 * - `git add -A && git commit`, what a person types.
 *
 * The controller's own figure against plumbing, through the running process, is in `npm run bench`;
 * this one takes the controller out, to see what the engine itself costs.
 *
 *   npm run build && node bench/native-commit.mjs [--files 100000] [--folders 5000] [--rounds 10] [--dir DIR] [--keep]
 *
 * The tree is bench/gen-tree.mjs's (the same as the main bench's), generated once (its first `git add
 * -A && git commit` timed) in a temp dir, or reused from --dir when that already holds a repository;
 * --keep leaves a generated one behind for the next run. Prints a table and one JSON line.
 */
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { ROOT, parseArgs, cleanEnv, must as mustWith, generateTree, spread, round, markdownTable } from "./lib.mjs";

const gateway = await import(pathToFileURL(path.join(ROOT, "dist", "src", "git", "native", "index.js")).href).catch(() => {
  console.error("build first: npm run build (dist/src/git/native is missing)");
  process.exit(2);
});
const args = parseArgs(process.argv.slice(2));
const FILES = Number(args.files ?? 100_000);
const FOLDERS = Number(args.folders ?? Math.ceil(FILES / 20));
const ROUNDS = Number(args.rounds ?? 10);
const IDENTITY = { name: "Bench", email: "bench@example.invalid" };
const ENV = {
  GIT_CONFIG_NOSYSTEM: "1", GIT_CONFIG_GLOBAL: "/dev/null", LC_ALL: "C",
  GIT_AUTHOR_NAME: IDENTITY.name, GIT_AUTHOR_EMAIL: IDENTITY.email, GIT_COMMITTER_NAME: IDENTITY.name, GIT_COMMITTER_EMAIL: IDENTITY.email,
};
const env = cleanEnv(ENV);
const git = async (dir, ...argv) => (await mustWith(env, "git", argv, { cwd: dir, maxBuffer: 1 << 30 })).stdout.trim();
const timedGit = async (dir, ...argv) => (await mustWith(env, "git", argv, { cwd: dir, maxBuffer: 1 << 30 })).ms;

const reused = args.dir !== undefined && existsSync(path.join(args.dir, ".git"));
const dir = args.dir ?? (await mkdtemp(path.join(os.tmpdir(), "cascade-native-commit-")));
await mkdir(dir, { recursive: true });
const result = { files: FILES, folders: FOLDERS, rounds: ROUNDS, git: await git(dir, "version") };
if (!reused) {
  console.error(`generating ${FILES} files in ${FOLDERS} folders under ${dir} ...`);
  const gen = await generateTree(dir, FILES, { perFolder: Math.ceil(FILES / FOLDERS) });
  await git(dir, "init", "--quiet", "-b", "develop");
  // No background gc or maintenance: it would run beside the measured commits (and race the cleanup).
  await git(dir, "config", "gc.auto", "0");
  await git(dir, "config", "maintenance.auto", "false");
  const first = (await timedGit(dir, "add", "-A")) + (await timedGit(dir, "commit", "--quiet", "-m", "initial"));
  result.generateMs = gen.ms;
  result.firstAddCommitMs = round(first);
  console.error(`generated in ${round(gen.ms / 1000)} s; first git add -A + commit ${round(first / 1000)} s`);
}
const repo = { cwd: dir, env: ENV };
// Warm all the same way: one status, as a running controller would have done.
await git(dir, "status", "--porcelain");
const target = (await git(dir, "ls-files", "-z")).split("\0")[0];
const engine = async (hints) => {
  const changes = await gateway.worktreeChanges(repo, hints);
  const parent = await git(dir, "rev-parse", "refs/heads/develop");
  return gateway.commitNative(repo, {
    changes, ref: "refs/heads/develop", parent, author: IDENTITY, lookAgain: hints,
    judge: () => undefined, message: () => "bench\n",
  });
};
const ways = {
  plumbingKnownPath: async (round) => {
    const parent = await git(dir, "rev-parse", "refs/heads/develop");
    const t = performance.now();
    await gateway.commitKnownPaths(repo, { paths: [target], ref: "refs/heads/develop", parent, message: `plumbing ${round}\n`, author: IDENTITY });
    return performance.now() - t;
  },
  engineHinted: async () => timedAsync(() => engine([target])),
  engineRescan: async () => timedAsync(() => engine([])),
  addAllCommit: async (round) => (await timedGit(dir, "add", "-A")) + (await timedGit(dir, "commit", "--quiet", "-m", `porcelain ${round}`)),
};
const times = Object.fromEntries(Object.keys(ways).map((k) => [k, []]));
for (let r = 0; r < ROUNDS; r++) {
  for (const [name, way] of Object.entries(ways)) {
    await writeFile(path.join(dir, target), `${name} round ${r}\n`);
    times[name].push(await way(r));
  }
}
for (const [name, ms] of Object.entries(times)) result[`${name}Ms`] = spread(ms);
result.warmStatusMs = await timedGit(dir, "status", "--porcelain");
result.cleanAfter = (await git(dir, "status", "--porcelain")) === "";
const floor = result.plumbingKnownPathMs.median;
const rows = [["one-file commit", "median", "min-max", "vs plumbing"]];
const labels = { plumbingKnownPath: "gateway plumbing on the known path", engineHinted: "native engine, status on the hinted path", engineRescan: "native engine, whole-tree status", addAllCommit: "git add -A && git commit" };
for (const k of Object.keys(ways)) {
  const s = result[`${k}Ms`];
  rows.push([labels[k], `${s.median} ms`, `${s.min}-${s.max} ms`, `${round(s.median / floor, 2)}x`]);
}
console.log(`one-file commit at ${FILES} files in ${FOLDERS} folders (${ROUNDS} rounds, ${result.git}); warm git status ${result.warmStatusMs} ms; clean after: ${result.cleanAfter}`);
console.log(markdownTable(rows));
console.log(JSON.stringify(result));
if (!reused && !args.keep) await rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
else console.error(`tree kept in ${dir} (reuse with --dir ${dir})`);

async function timedAsync(fn) {
  const t = performance.now();
  await fn();
  return performance.now() - t;
}
