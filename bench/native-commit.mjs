#!/usr/bin/env node
/**
 * A one-file commit at scale through the native commit engine (src/git/native/stage.ts: git status on the
 * hinted path or the whole tree, git stages, the staged blob read back and judged, write-tree, commit-tree,
 * update-ref expecting the parent) against native plumbing on the known path (commitKnownPaths), in the
 * same repository, alternating, so all see the same cache state.
 *
 *   npm run build && node bench/native-commit.mjs [--files 100000] [--folders 5000] [--rounds 10]
 *
 * Prints the figures as a table and as one JSON line.
 */
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { promisify } from "node:util";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const gateway = await import(pathToFileURL(path.join(ROOT, "dist", "src", "git", "native", "index.js")).href);
const run = promisify(execFile);
const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
};
const FILES = Number(arg("files", "100000"));
const FOLDERS = Number(arg("folders", "5000"));
const ROUNDS = Number(arg("rounds", "10"));
const IDENTITY = { name: "Bench", email: "bench@example.invalid" };
const ENV = {
  GIT_CONFIG_NOSYSTEM: "1", GIT_CONFIG_GLOBAL: "/dev/null",
  GIT_AUTHOR_NAME: IDENTITY.name, GIT_AUTHOR_EMAIL: IDENTITY.email, GIT_COMMITTER_NAME: IDENTITY.name, GIT_COMMITTER_EMAIL: IDENTITY.email,
};
const git = (dir, ...args) => run("git", args, { cwd: dir, env: { ...process.env, ...ENV, LC_ALL: "C" }, maxBuffer: 1 << 30 }).then((r) => r.stdout.trim());

const dir = await mkdtemp(path.join(os.tmpdir(), "cascade-native-commit-"));
await git(dir, "init", "--quiet", "-b", "develop");
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
await git(dir, "add", "-A");
await git(dir, "commit", "--quiet", "-m", "initial");
const repo = { cwd: dir, env: ENV };
await git(dir, "status", "--porcelain");
const target = "d0/f0/file0.txt";
const rows = { plumbing: [], hinted: [], rescan: [] };
const engine = async (hints) => {
  const changes = await gateway.worktreeChanges(repo, hints);
  const parent = await git(dir, "rev-parse", "refs/heads/develop");
  return gateway.commitNative(repo, {
    changes, ref: "refs/heads/develop", parent, author: IDENTITY,
    isEncrypted: () => false, encrypt: () => ({ ok: false, held: "none" }), judge: () => undefined, message: () => "bench\n",
  });
};
for (let round = 0; round < ROUNDS; round++) {
  await writeFile(path.join(dir, target), `plumbing round ${round}\n`);
  const parent = await git(dir, "rev-parse", "refs/heads/develop");
  let t = performance.now();
  await gateway.commitKnownPaths(repo, { paths: [target], ref: "refs/heads/develop", parent, message: `plumbing ${round}\n`, author: IDENTITY });
  rows.plumbing.push(performance.now() - t);
  await writeFile(path.join(dir, target), `hinted round ${round}\n`);
  t = performance.now();
  await engine([target]);
  rows.hinted.push(performance.now() - t);
  await writeFile(path.join(dir, target), `rescan round ${round}\n`);
  t = performance.now();
  await engine([]);
  rows.rescan.push(performance.now() - t);
}
const p50 = (ms) => Math.round([...ms].sort((a, b) => a - b)[Math.floor(ms.length / 2)]);
const result = { files: FILES, rounds: ROUNDS, git: await git(dir, "version"), plumbingKnownPathMs: p50(rows.plumbing), engineHintedMs: p50(rows.hinted), engineFullRescanMs: p50(rows.rescan), cleanAfter: (await git(dir, "status", "--porcelain")) === "" };
console.log(`one-file commit at ${FILES} files (${ROUNDS} rounds, ${result.git}), p50`);
console.log(`  native plumbing on the known path        ${result.plumbingKnownPathMs} ms`);
console.log(`  native engine, status on the hinted path ${result.engineHintedMs} ms`);
console.log(`  native engine, whole-tree status         ${result.engineFullRescanMs} ms`);
console.log(JSON.stringify(result));
await rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
