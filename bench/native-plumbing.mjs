#!/usr/bin/env node
/**
 * A one-file commit at scale: cascade-sync's native gateway on the known path (update-index for the
 * path, write-tree, commit-tree, update-ref with the expected old value) against `git add -A && git
 * commit`, in the same repository, alternating, so both see the same cache state.
 *
 *   npm run build && node bench/native-plumbing.mjs [--files 100000] [--folders 5000] [--rounds 15] [--dir DIR] [--keep]
 *
 * The tree is generated once (and its first `git add -A` + commit timed) in a temp dir, or reused from
 * --dir when it already holds a repository; --keep leaves a generated one behind for the next run.
 * Prints the figures as a table and as one JSON line.
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { promisify } from "node:util";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const gateway = await import(pathToFileURL(path.join(ROOT, "dist", "src", "git", "native", "index.js")).href).catch(() => {
  console.error("build first: npm run build (dist/src/git/native is missing)");
  process.exit(2);
});
const run = promisify(execFile);

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}
const FILES = Number(arg("files", "100000"));
const FOLDERS = Number(arg("folders", "5000"));
const ROUNDS = Number(arg("rounds", "15"));
const KEEP = process.argv.includes("--keep");
const IDENTITY = { name: "Bench", email: "bench@example.invalid" };
const ENV = {
  GIT_CONFIG_NOSYSTEM: "1", GIT_CONFIG_GLOBAL: "/dev/null",
  GIT_AUTHOR_NAME: IDENTITY.name, GIT_AUTHOR_EMAIL: IDENTITY.email, GIT_COMMITTER_NAME: IDENTITY.name, GIT_COMMITTER_EMAIL: IDENTITY.email,
};
const git = (dir, ...args) => run("git", args, { cwd: dir, env: { ...process.env, ...ENV, LC_ALL: "C" }, maxBuffer: 1 << 30 }).then((r) => r.stdout.trim());

async function generate(dir) {
  await git(dir, "init", "--quiet", "-b", "develop");
  // No background gc or maintenance: it would run beside the measured commits (and race the cleanup).
  await git(dir, "config", "gc.auto", "0");
  await git(dir, "config", "maintenance.auto", "false");
  const perFolder = Math.ceil(FILES / FOLDERS);
  for (let f = 0; f < FOLDERS; f++) {
    const folder = path.join(dir, `d${Math.floor(f / 100)}`, `f${f}`);
    await mkdir(folder, { recursive: true });
    const writes = [];
    for (let i = 0; i < perFolder && f * perFolder + i < FILES; i++) writes.push(writeFile(path.join(folder, `file${i}.txt`), `folder ${f} file ${i}\n`));
    await Promise.all(writes);
  }
  const t0 = performance.now();
  await git(dir, "add", "-A");
  await git(dir, "commit", "--quiet", "-m", "initial");
  return performance.now() - t0;
}

function stats(ms) {
  const s = [...ms].sort((a, b) => a - b);
  const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
  return { p50: Math.round(q(0.5)), min: Math.round(s[0]), max: Math.round(s[s.length - 1]) };
}

const reused = arg("dir") && existsSync(path.join(arg("dir"), ".git"));
const dir = arg("dir") ?? (await mkdtemp(path.join(os.tmpdir(), "cascade-native-plumbing-")));
await mkdir(dir, { recursive: true });
let initialMs;
if (!reused) {
  const t = performance.now();
  console.error(`generating ${FILES} files in ${FOLDERS} folders under ${dir} ...`);
  initialMs = await generate(dir);
  console.error(`generated in ${Math.round((performance.now() - t) / 1000)} s (first git add -A + commit ${Math.round(initialMs)} ms)`);
}
const repo = { cwd: dir, env: ENV };
// Warm both the same way: one status, as a running controller would have done.
await git(dir, "status", "--porcelain");
const target = "d0/f0/file0.txt";
const plumbing = [];
const porcelain = [];
for (let round = 0; round < ROUNDS; round++) {
  await writeFile(path.join(dir, target), `plumbing round ${round}\n`);
  let parent = await git(dir, "rev-parse", "refs/heads/develop");
  let t = performance.now();
  await gateway.commitKnownPaths(repo, { paths: [target], ref: "refs/heads/develop", parent, message: `plumbing ${round}\n`, author: IDENTITY });
  plumbing.push(performance.now() - t);

  await writeFile(path.join(dir, target), `porcelain round ${round}\n`);
  t = performance.now();
  await git(dir, "add", "-A");
  await git(dir, "commit", "--quiet", "-m", `porcelain ${round}`);
  porcelain.push(performance.now() - t);
}
const clean = (await git(dir, "status", "--porcelain")) === "";
const t = performance.now();
await git(dir, "status", "--porcelain");
const statusMs = performance.now() - t;
const result = {
  files: FILES, folders: FOLDERS, rounds: ROUNDS, git: await git(dir, "version"),
  plumbingKnownPathMs: stats(plumbing), addAllCommitMs: stats(porcelain), warmStatusMs: Math.round(statusMs),
  initialAddCommitMs: initialMs === undefined ? undefined : Math.round(initialMs), cleanAfter: clean,
};
console.log(`one-file commit at ${FILES} files (${ROUNDS} rounds, ${result.git})`);
console.log(`  gateway plumbing on the known path  p50 ${result.plumbingKnownPathMs.p50} ms  (min ${result.plumbingKnownPathMs.min}, max ${result.plumbingKnownPathMs.max})`);
console.log(`  git add -A && git commit            p50 ${result.addAllCommitMs.p50} ms  (min ${result.addAllCommitMs.min}, max ${result.addAllCommitMs.max})`);
console.log(`  warm git status                     ${result.warmStatusMs} ms; work tree clean after: ${clean}`);
console.log(JSON.stringify(result));
if (!reused && !KEEP) await rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
