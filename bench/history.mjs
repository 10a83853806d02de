#!/usr/bin/env node
/**
 * `cascade-sync history` on a year-old sandbox: a history of --commits commits (default 20,000, one
 * every ~26 minutes over a year) over --files files in 100 folders, built in seconds by `git
 * fast-import`. Most commits change one or two ordinary files; `notes/rare.md` changes only in
 * --rare of them (default 12), `src/hot.ts` in every tenth. Timed, each the median of --rounds runs:
 *
 * - `git log --first-parent -- PATH` itself (the oracle and the floor),
 * - readHistory (what `history PATH` runs: the same walk with --raw, plus the sizes of every version
 *   from one `git cat-file --batch-check`), for the rare file, the hot file, a folder, and with
 *   `--since 30d` for the whole sandbox,
 * - the whole `cascade-sync history PATH --json` command (node start, config load included),
 * - the same again after `git commit-graph write --reachable --changed-paths` (git's Bloom filters:
 *   a commit that cannot have touched PATH is skipped without opening its trees).
 *
 *   npm run build && node bench/history.mjs [--commits 20000] [--files 2000] [--rare 12] [--rounds 5] [--keep]
 *
 * Prints a table and one JSON line.
 */
import { execFile, spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { promisify } from "node:util";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const { readHistory } = await import(pathToFileURL(path.join(ROOT, "dist", "src", "history", "log.js")).href).catch(() => {
  console.error("build first: npm run build (dist/src/history is missing)");
  process.exit(2);
});
const run = promisify(execFile);
const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};
const COMMITS = arg("commits", 20_000);
const FILES = arg("files", 2_000);
const RARE = arg("rare", 12);
const ROUNDS = arg("rounds", 5);
const KEEP = process.argv.includes("--keep");
const YEAR_S = 365 * 86_400;

/** Writes the fast-import stream for the whole history into git's stdin, in chunks (backpressure honoured). */
async function build(dir) {
  await run("git", ["init", "-q", "-b", "develop", dir]);
  const child = spawn("git", ["fast-import", "--quiet"], { cwd: dir, stdio: ["pipe", "inherit", "inherit"] });
  const done = new Promise((res, rej) => child.on("close", (c) => (c === 0 ? res() : rej(new Error(`fast-import exited ${c}`)))));
  const write = (s) => (child.stdin.write(s) ? Promise.resolve() : new Promise((r) => child.stdin.once("drain", r)));
  const start = Math.floor(Date.now() / 1000) - YEAR_S;
  const step = Math.floor(YEAR_S / COMMITS);
  const file = (i) => `folder${String(i % 100).padStart(3, "0")}/file${i}.txt`;
  const inline = (p, content) => `M 100644 inline ${p}\ndata ${Buffer.byteLength(content)}\n${content}\n`;
  const rareAt = new Set(Array.from({ length: RARE }, (_, k) => Math.floor(((k + 1) * COMMITS) / (RARE + 1))));
  let seed = 42;
  const rnd = (n) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), (seed >>> 8) % n);
  for (let c = 0; c < COMMITS; c++) {
    const msg = c === 0 ? "sync: initial" : `sync: ${c}`;
    let out = `commit refs/heads/develop\ncommitter Bench <bench@example.invalid> ${start + c * step} +0000\ndata ${msg.length}\n${msg}\n`;
    if (c === 0) {
      for (let i = 0; i < FILES; i++) out += inline(file(i), `file ${i}\n`);
      out += inline("notes/rare.md", "rare 0\n") + inline("src/hot.ts", "hot 0\n") + inline("cascade-sync-config.yaml", "version: 1\nsandbox: { branch: develop }\nremotes: []\nnotifications: { desktop: false }\n");
    } else {
      const n = 1 + rnd(2);
      for (let k = 0; k < n; k++) out += inline(file(rnd(FILES)), `file edit ${c}.${k}\n`);
      if (c % 10 === 0) out += inline("src/hot.ts", `hot ${c}\n`);
      if (rareAt.has(c)) out += inline("notes/rare.md", `rare ${c}\n`);
    }
    await write(out + "\n");
  }
  child.stdin.end();
  await done;
  await run("git", ["checkout", "-q", "-f", "develop"], { cwd: dir });
}

async function median(fn) {
  const times = [];
  let result;
  for (let i = 0; i < ROUNDS; i++) {
    const t0 = performance.now();
    result = await fn();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return { ms: Math.round(times[Math.floor(times.length / 2)]), result };
}

const dir = await mkdtemp(path.join(os.tmpdir(), "cascade-history-bench-"));
const rows = [];
try {
  const t0 = performance.now();
  await build(dir);
  const buildMs = Math.round(performance.now() - t0);
  const repo = { cwd: dir, gitDir: path.join(dir, ".git"), workTree: dir };
  const bin = path.join(ROOT, "bin", "cascade-sync.js");
  const thirtyDaysAgo = Date.now() - 30 * 86_400_000;
  const cases = [
    ["rare file (notes/rare.md)", ["notes/rare.md"], undefined],
    ["hot file (src/hot.ts)", ["src/hot.ts"], undefined],
    ["folder (folder007)", ["folder007"], undefined],
    ["whole sandbox, --since 30d", [], thirtyDaysAgo],
  ];
  for (const graph of [false, true]) {
    if (graph) await run("git", ["commit-graph", "write", "--reachable", "--changed-paths"], { cwd: dir });
    for (const [name, paths, since] of cases) {
      const log = await median(() => run("git", ["log", "--first-parent", "--format=%H", ...(since ? [`--since=${new Date(since).toISOString()}`] : []), "develop", "--", ...paths], { cwd: dir, maxBuffer: 1 << 30 }));
      const ours = await median(() => readHistory(repo, { branch: "develop", paths, ...(since ? { sinceMs: since } : {}) }));
      rows.push({ commitGraph: graph, case: name, versions: ours.result.length, gitLogMs: log.ms, readHistoryMs: ours.ms });
    }
    const cli = await median(() => run(process.execPath, [bin, "history", "notes/rare.md", "--json"], { cwd: dir, maxBuffer: 1 << 30 }));
    rows.push({ commitGraph: graph, case: "cascade-sync history notes/rare.md --json (whole process)", versions: JSON.parse(cli.result.stdout).versions.length, gitLogMs: null, readHistoryMs: cli.ms });
  }
  console.log(`history of ${COMMITS} commits over a year, ${FILES + 3} files; built by git fast-import in ${buildMs} ms; median of ${ROUNDS} runs`);
  console.log(["commit-graph", "case", "versions", "git log -- PATH ms", "ours ms"].join(" | "));
  for (const r of rows) console.log([r.commitGraph ? "yes" : "no", r.case, r.versions, r.gitLogMs ?? "-", r.readHistoryMs].join(" | "));
  console.log(JSON.stringify({ commits: COMMITS, files: FILES + 3, buildMs, rows }));
} finally {
  if (KEEP) console.log(`kept ${dir}`);
  else await rm(dir, { recursive: true, force: true });
}
