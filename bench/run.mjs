#!/usr/bin/env node
// cascade-sync against native git, on identical copies of one generated tree (issue 5).
//
//   npm run bench -- [--files 100000] [--idle-seconds 60] [--samples 10] [--burst 30000]
//                    [--debounce 1s] [--batch-window 10s] [--out FILE] [--keep] [--bin PATH]
//                    [--setup-only] (make and keep the trees, measure nothing: for profiling)
//
// It drives the real compiled controller (`node bin/cascade-sync.js start` in a sandbox made by
// `init`), so memory and CPU are the real process's (/proc/<pid>/status VmHWM, /proc/<pid>/stat).
// Absolute times on a shared 2-core machine are noisy; the ratios against native git on the same
// tree, measured in the same run, are the figures that matter. Prints a table and writes a JSON
// report (its path is printed at the end). Everything lives under one temp dir, removed at the end
// unless --keep.
import { spawn, execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, writeFileSync, readFileSync, existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const args = parseArgs(process.argv.slice(2));
const FILES = int(args.files, 100_000);
const IDLE_S = num(args["idle-seconds"], 60);
const SAMPLES = int(args.samples, 10);
const BURST = Math.min(int(args.burst, 30_000), Math.floor(FILES * 0.9));
const DEBOUNCE = args.debounce ?? "1s";
const BATCH_WINDOW = args["batch-window"] ?? "10s";
const BIN = path.resolve(args.bin ?? path.join(ROOT, "bin", "cascade-sync.js"));
const DIST = path.join(path.dirname(BIN), "..", "dist");
const CLK_TCK = 100;

const TARGETS = {
  commit: "<= 0.3x",
  latencyP50: "<= 300 ms",
  latencyP95: "<= 1000 ms",
  burstLost: "0",
  burstFirst: `<= ${BATCH_WINDOW} + 5 s`,
  start: "<= 10x",
  memory: "<= 300 MB",
  idle: "<= 1 %",
  promote: "<= 1x",
};

const tmp = await mkdtemp(path.join(os.tmpdir(), "cascade-bench-"));
const home = path.join(tmp, "home");
mkdirSync(home);
writeFileSync(path.join(home, ".gitconfig"), "[user]\n\tname = Bench\n\temail = bench@example.invalid\n[init]\n\tdefaultBranch = develop\n[gc]\n\tauto = 0\n");
const env = cleanEnv({ HOME: home, GIT_CONFIG_NOSYSTEM: "1" });
const sandbox = path.join(tmp, "sandbox");
const native = path.join(tmp, "native");
const remote = path.join(tmp, "remote.git");
const nativeRemote = path.join(tmp, "native-remote.git");
const logFile = path.join(tmp, "logs", "cascade-sync.log");
const report = {
  files: FILES,
  config: { debounce: DEBOUNCE, batchWindow: BATCH_WINDOW, idleSeconds: IDLE_S, samples: SAMPLES, burst: BURST },
  machine: { cpus: os.cpus().length, node: process.version, git: "" },
  setup: {},
  figures: {},
};
let controller;
/** Paths of the generated files, in generation order. */
let generated = [];
const started = Date.now();

try {
  report.machine.git = (await sh("git", ["--version"])).stdout.trim();
  step(`generating ${FILES} files under ${sandbox}`);
  const gen = timed(() => generateTree(sandbox, FILES));
  report.setup.tree = { files: FILES, bytes: gen.value.bytes, dirs: gen.value.dirs, ms: gen.ms };
  writeFileSync(path.join(sandbox, "cascade-sync-config.yaml"), configText());
  await sh("git", ["init", "-q", "--bare", "--initial-branch=develop", remote]);

  step("cascade-sync init (commits the whole tree)");
  const init = await sh(process.execPath, [BIN, "init"], { cwd: sandbox });
  if (init.code !== 0) throw new Error(`init failed: ${init.stderr}${init.stdout}`);
  report.setup.initMs = init.ms;

  step("native copy and both remotes (native git push, not measured)");
  await sh("cp", ["-a", sandbox, native]);
  // The copy has new inodes and ctimes: let native git refresh its index once, as a user's would be.
  await sh("git", ["update-index", "-q", "--refresh"], { cwd: native });
  report.setup.nativeRefreshMs = (await sh("git", ["status", "--porcelain"], { cwd: native })).ms;
  // Both remotes already hold the tree, as loose objects: what cascade-sync's own pushes leave in a
  // local bare remote (a remote packed by `git gc` costs each push more; see the report notes).
  await sh("git", ["init", "-q", "--bare", "--initial-branch=develop", nativeRemote]);
  await sh("git", ["remote", "add", "origin", nativeRemote], { cwd: native });
  for (const bare of [remote, nativeRemote]) {
    await sh("rm", ["-rf", path.join(bare, "objects")]);
    await sh("cp", ["-a", path.join(sandbox, ".git", "objects"), path.join(bare, "objects")]);
    for (const b of ["develop", "staging", "main"]) await sh("git", ["update-ref", `refs/heads/${b}`, await refOf(sandbox, b)], { cwd: bare });
  }
  await sh("git", ["fetch", "-q", "origin"], { cwd: native });
  if (args["setup-only"]) {
    args.keep = true;
    throw new Error("--setup-only: stopped after the setup");
  }

  // --- start: edits made while stopped, then `start` until ready, vs a cold `git status` -----------
  const edits = pickFiles(FILES, 10, 7).map((f) => ({ rel: f, content: `edited while stopped ${f}\n` }));
  for (const e of edits) writeFileSync(path.join(sandbox, e.rel), e.content);
  for (const e of edits) writeFileSync(path.join(native, e.rel), e.content);
  // The target compares with a cold native `git status`: both sides start with an empty page cache
  // when it can be dropped (root); otherwise both run warm, which is the stricter comparison.
  const cold = await dropCaches();
  const status = [];
  for (let i = 0; i < 3; i++) status.push((await sh("git", ["status", "--porcelain"], { cwd: native })).ms);
  if (cold) await dropCaches();
  step(`start the controller (${cold ? "cold" : "warm"} page cache)`);
  const t0 = performance.now();
  controller = startController();
  await controller.ready;
  const startMs = performance.now() - t0;
  const missing = await notCommitted(sandbox, edits);
  report.figures.start = {
    cascadeMs: round(startMs), nativeStatusMs: status.map(round), cache: cold ? "cold" : "warm",
    ratio: ratio(startMs, cold ? status[0] : median(status)), ratioToWarmStatus: ratio(startMs, median(status.slice(1))),
    editsWhileStoppedCommitted: missing.length === 0, target: TARGETS.start,
  };
  if (missing.length) throw new Error(`edits made while stopped were not committed: ${missing.join(", ")}`);
  // Native side: the same edits committed, so both trees stay identical.
  await sh("sh", ["-c", "git add -A && git commit -q -m stopped-edits"], { cwd: native });
  await waitFor(async () => (await refOf(remote, "develop")) === (await refOf(sandbox, "develop")), 120_000, "the start commit to reach the remote");
  report.figures.memoryAfterStart = procMemory(controller.pid);

  // --- idle CPU -----------------------------------------------------------------------------------
  await sleep(2000);
  step(`idle CPU over ${IDLE_S}s`);
  const c0 = procCpu(controller.pid);
  const w0 = performance.now();
  await sleep(IDLE_S * 1000);
  const c1 = procCpu(controller.pid);
  const idlePct = ((c1 - c0) / CLK_TCK) / ((performance.now() - w0) / 1000) * 100;
  report.figures.idle = { seconds: IDLE_S, cpuPercentOfOneCore: round(idlePct, 2), target: TARGETS.idle };

  // --- commit cost and change-to-remote latency ----------------------------------------------------
  step(`${SAMPLES} single-file changes: commit cost and change-to-remote latency`);
  const debounceMs = parseDuration(DEBOUNCE);
  const ours = [];
  const latencies = [];
  const nativeCommit = [];
  const plumbingCommit = [];
  const samplePaths = pickFiles(FILES, SAMPLES, 11);
  for (let i = 0; i < SAMPLES; i++) {
    const rel = samplePaths[i];
    const content = `sample ${i} ${Date.now()}\n`;
    const before = await refOf(remote, "develop");
    const logSize = (await stat(logFile)).size;
    const tw = performance.now();
    writeFileSync(path.join(sandbox, rel), content);
    await waitFor(async () => (await refOf(remote, "develop")) !== before, 60_000, "the commit to reach the remote", 5);
    latencies.push(performance.now() - tw - debounceMs);
    const line = await waitFor(async () => commitLogLine(await readFile(logFile, "utf8"), logSize), 10_000, "the commit's log line");
    ours.push(line.observeMs + line.applyMs);
    // Baseline: native plumbing on the known path, in the native copy, with a scratch content (the
    // porcelain commit right after records the sample's, so both trees stay identical).
    writeFileSync(path.join(native, rel), `plumbing ${content}`);
    plumbingCommit.push(await plumbingKnownPath(native, rel, `plumbing ${i}`));
    writeFileSync(path.join(native, rel), content);
    nativeCommit.push((await sh("sh", ["-c", `git add -A && git commit -q -m 'sample ${i}'`], { cwd: native })).ms);
    await sleep(300);
  }
  report.figures.commit = {
    cascadeMs: ours.map(round), nativeMs: nativeCommit.map(round), plumbingMs: plumbingCommit.map(round),
    cascadeMedianMs: round(median(ours)), nativeMedianMs: round(median(nativeCommit)), plumbingMedianMs: round(median(plumbingCommit)),
    ratio: ratio(median(ours), median(nativeCommit)), ratioToPlumbing: ratio(median(ours), median(plumbingCommit)), target: TARGETS.commit,
  };
  report.figures.latency = {
    minusDebounceMs: latencies.map(round), p50Ms: round(percentile(latencies, 50)), p95Ms: round(percentile(latencies, 95)),
    debounceMs, target: `p50 ${TARGETS.latencyP50}, p95 ${TARGETS.latencyP95}`,
  };

  // Peak memory while watching the tree (start, idle, single-file commits and pushes): before the burst.
  report.figures.memoryWatching = { ...procMemory(controller.pid), target: TARGETS.memory };

  // --- burst: files rewritten by another process within about one second -------------------------
  step(`burst: ${BURST} files rewritten by another process`);
  const burstFiles = pickFiles(FILES, BURST, 23);
  const listFile = path.join(tmp, "burst.json");
  writeFileSync(listFile, JSON.stringify(burstFiles));
  const stamp = `burst ${Date.now()}`;
  const beforeBurst = await refOf(sandbox, "develop");
  const tb = performance.now();
  const writer = await sh(process.execPath, ["-e", `
    const fs = require("fs"), path = require("path");
    const files = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
    const t = Date.now();
    for (const f of files) fs.writeFileSync(path.join(process.argv[2], f), process.argv[3] + " " + f + "\\n");
    process.stdout.write(String(Date.now() - t));`, listFile, sandbox, stamp]);
  const writeMs = Number(writer.stdout);
  let firstCommitMs;
  await waitFor(async () => {
    if ((await refOf(sandbox, "develop")) === beforeBurst) return false;
    firstCommitMs = performance.now() - tb;
    return true;
  }, 120_000, "the first commit of the burst", 20);
  const expected = new Map(burstFiles.map((f) => [f, blobOid(Buffer.from(`${stamp} ${f}\n`))]));
  let lost = expected.size;
  let allMs;
  const deadline = performance.now() + 240_000;
  while (performance.now() < deadline) {
    lost = await countLost(sandbox, expected);
    if (lost === 0) {
      allMs = performance.now() - tb;
      break;
    }
    await sleep(1000);
  }
  report.figures.burst = {
    files: BURST, writeMs, firstCommitMs: round(firstCommitMs), allCommittedMs: allMs === undefined ? null : round(allMs),
    lost, target: `${TARGETS.burstLost} lost, first commit ${TARGETS.burstFirst}`,
  };
  for (const f of burstFiles) writeFileSync(path.join(native, f), `${stamp} ${f}\n`);
  await sh("sh", ["-c", "git add -A && git commit -q -m burst"], { cwd: native });
  await waitFor(async () => (await refOf(remote, "develop")) === (await refOf(sandbox, "develop")), 180_000, "the burst to reach the remote");
  report.figures.memory = { ...procMemory(controller.pid), target: TARGETS.memory };

  step("stop the controller");
  const stopT = performance.now();
  controller.child.kill("SIGTERM");
  await controller.exited;
  report.figures.stopMs = round(performance.now() - stopT);
  controller = undefined;

  // --- promote: develop -> staging fast-forward plus push to a local bare remote ------------------
  step("promote: develop -> staging fast-forward + push, vs native git push");
  report.figures.promote = await promote();

  // --- the trees agree ----------------------------------------------------------------------------
  const sTree = (await sh("git", ["rev-parse", "develop^{tree}"], { cwd: sandbox })).stdout.trim();
  const nTree = (await sh("git", ["rev-parse", "develop^{tree}"], { cwd: native })).stdout.trim();
  const porcelain = (await sh("git", ["status", "--porcelain"], { cwd: sandbox })).stdout;
  const fsck = await sh("git", ["fsck", "--strict", "--no-dangling", "--connectivity-only"], { cwd: sandbox });
  report.checks = { sameTreeAsNative: sTree === nTree, statusClean: porcelain === "", fsckOk: fsck.code === 0 };
} catch (err) {
  report.error = String(err?.stack ?? err);
  process.exitCode = 1;
} finally {
  if (controller) {
    controller.child.kill("SIGKILL");
    await controller.exited.catch(() => undefined);
  }
  report.totalSeconds = round((Date.now() - started) / 1000);
  const out = path.resolve(args.out ?? path.join(os.tmpdir(), `cascade-bench-${FILES}-${Date.now()}.json`));
  await writeFile(out, JSON.stringify(report, null, 2) + "\n");
  process.stdout.write(`\n${table(report)}\n`);
  if (report.error) process.stderr.write(`\nbench failed: ${report.error}\n`);
  if (args.keep) process.stdout.write(`trees kept in ${tmp}\n`);
  else await rm(tmp, { recursive: true, force: true, maxRetries: 3 });
  process.stdout.write(`report: ${out}\n`);
}

// ------------------------------------------------------------------------------------------------

function configText() {
  return [
    "version: 1",
    "sandbox:",
    "  branch: develop",
    `  debounce: ${DEBOUNCE}`,
    `  batchWindow: ${BATCH_WINDOW}`,
    "remotes:",
    "  - name: origin",
    `    url: ${JSON.stringify(remote)}`,
    "intervals: { fetch: 30s, rescan: 10m }",
    `logging: { file: ${JSON.stringify(logFile)}, level: debug }`,
    "notifications: { desktop: false }",
    "",
  ].join("\n");
}

/** Empties the kernel's page cache (root only); false when it cannot. */
async function dropCaches() {
  if (process.getuid?.() !== 0) return false;
  await sh("sync", []);
  try {
    writeFileSync("/proc/sys/vm/drop_caches", "3\n");
    return true;
  } catch {
    return false;
  }
}

function startController() {
  const child = spawn(process.execPath, [BIN, "start"], { cwd: sandbox, env, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (out += d));
  const exited = new Promise((resolve) => child.once("exit", (code) => resolve(code)));
  const ready = new Promise((resolve, reject) => {
    const check = () => {
      if (out.includes("cascade-sync: ready")) return resolve();
      if (child.exitCode !== null) return reject(new Error(`controller exited: ${out}`));
      setTimeout(check, 5);
    };
    check();
  });
  return { child, pid: child.pid, ready, exited, output: () => out };
}

/**
 * A one-file commit through native plumbing on the known path, as four git processes: `update-index --
 * PATH`, `write-tree`, `commit-tree`, `update-ref NEW OLD` (no status, no scan). Returns its duration.
 */
async function plumbingKnownPath(dir, rel, message) {
  const t = performance.now();
  const git = async (...argv) => {
    const r = await sh("git", argv, { cwd: dir });
    if (r.code !== 0) throw new Error(`git ${argv.join(" ")}: ${r.stderr}`);
    return r.stdout.trim();
  };
  const old = await git("rev-parse", "refs/heads/develop");
  await git("update-index", "--", rel);
  const tree = await git("write-tree");
  const commit = await git("commit-tree", tree, "-p", old, "-m", message);
  await git("update-ref", "refs/heads/develop", commit, old);
  return performance.now() - t;
}

/** The sandbox reconciler's debug line for a commit logged after `offset`: its observe and apply times. */
function commitLogLine(text, offset) {
  for (const l of Buffer.from(text).subarray(offset).toString().split("\n")) {
    if (!l) continue;
    const j = JSON.parse(l);
    if (j.level === "debug" && /^sandbox: committed/.test(j.msg) && typeof j.observeMs === "number") return j;
  }
  return undefined;
}

async function promote() {
  const { Repo, branchRef } = await import(pathToFileURL(path.join(DIST, "src", "git", "repo.js")).href);
  const { pushBranch } = await import(pathToFileURL(path.join(DIST, "src", "git", "transport.js")).href);
  const repo = await Repo.open(sandbox);
  const bare = Repo.bare(remote);
  const who = { name: "Bench", email: "bench@example.invalid", timestamp: Math.floor(Date.now() / 1000), timezoneOffset: 0 };
  const target = { name: "origin", url: remote, kind: "local", timeoutMs: 60_000 };
  const base = await repo.branchHead("staging");
  const develop = await repo.branchHead("develop");
  const nBase = (await sh("git", ["rev-parse", "staging"], { cwd: native })).stdout.trim();
  const nDevelop = (await sh("git", ["rev-parse", "develop"], { cwd: native })).stdout.trim();
  await sh("git", ["push", "-q", "origin", "develop"], { cwd: native });
  const ours = [];
  const theirs = [];
  for (let i = 0; i < 5; i++) {
    // Put staging back where init left it, locally and on the remote, then promote again.
    await repo.setRef(branchRef("staging"), base, undefined, "bench: reset", who);
    await bare.setRef(branchRef("staging"), base, undefined, "bench: reset", who);
    const t = performance.now();
    await repo.setRef(branchRef("staging"), develop, base, "promote: staging (fast-forward)", who);
    await pushBranch(repo, target, "staging", develop, { who });
    ours.push(performance.now() - t);
    await sh("git", ["update-ref", "refs/heads/staging", nBase], { cwd: nativeRemote });
    theirs.push((await sh("git", ["push", "-q", "origin", `${nDevelop}:refs/heads/staging`], { cwd: native })).ms);
  }
  if ((await refOf(remote, "staging")) !== develop) throw new Error("promote did not reach the remote");
  return {
    cascadeMs: ours.map(round), nativePushMs: theirs.map(round), cascadeMedianMs: round(median(ours)), nativeMedianMs: round(median(theirs)),
    ratio: ratio(median(ours), median(theirs)), target: TARGETS.promote,
  };
}

/** Paths (of those generateTree wrote) whose committed blob is not the expected one. */
async function notCommitted(dir, edits) {
  const expected = new Map(edits.map((e) => [e.rel, blobOid(Buffer.from(e.content))]));
  const tree = await lsTree(dir);
  return [...expected].filter(([p, oid]) => tree.get(p) !== oid).map(([p]) => p);
}

async function countLost(dir, expected) {
  const tree = await lsTree(dir);
  let lost = 0;
  for (const [p, oid] of expected) if (tree.get(p) !== oid) lost++;
  return lost;
}

async function lsTree(dir) {
  const r = await sh("git", ["ls-tree", "-r", "-z", "develop"], { cwd: dir, maxBuffer: 1 << 30 });
  const m = new Map();
  for (const rec of r.stdout.split("\0")) {
    const tab = rec.indexOf("\t");
    if (tab > 0) m.set(rec.slice(tab + 1), rec.slice(0, tab).split(" ")[2]);
  }
  return m;
}

/** A branch's commit read from the loose ref (or packed-refs), without spawning git. */
async function refOf(dir, branch) {
  const gitdir = existsSync(path.join(dir, ".git")) ? path.join(dir, ".git") : dir;
  try {
    return (await readFile(path.join(gitdir, "refs", "heads", branch), "utf8")).trim();
  } catch {
    const packed = await readFile(path.join(gitdir, "packed-refs"), "utf8").catch(() => "");
    return packed.split("\n").find((l) => l.endsWith(` refs/heads/${branch}`))?.slice(0, 40);
  }
}

function procMemory(pid) {
  const s = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (k) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, "m").exec(s)?.[1] ?? NaN);
  return { peakRssMB: round(kb("VmHWM") / 1024, 1), rssMB: round(kb("VmRSS") / 1024, 1) };
}

function procCpu(pid) {
  const s = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
  // Fields 14 and 15 (utime, stime), counted from the pid; f starts at field 3.
  return Number(f[11]) + Number(f[12]);
}

/**
 * A tree of `n` files in nested folders (about 20 files per leaf folder, three levels deep) with
 * the size spread of a source tree with assets: mostly text of 100 B - 8 KB, some larger files, a
 * few binary ones. Deterministic (seeded).
 */
function generateTree(dir, n) {
  const rnd = mulberry32(42);
  const words = "const let function return import export from default class interface type if else for while await async new this true false null undefined string number value result error config data item list map set get path file name index state props render update".split(" ");
  const exts = [".ts", ".ts", ".ts", ".js", ".json", ".md", ".css", ".html", ".yaml", ".txt"];
  const dirs = new Set();
  let bytes = 0;
  generated = [];
  for (let i = 0; i < n; i++) {
    const leaf = Math.floor(i / 20);
    const rel = `pkg${Math.floor(leaf / 100)}/mod${Math.floor(leaf / 10) % 10}/part${leaf % 10}`;
    if (!dirs.has(rel)) {
      mkdirSync(path.join(dir, rel), { recursive: true });
      dirs.add(rel);
    }
    const r = rnd();
    const binary = r > 0.97;
    const size = Math.floor(r < 0.7 ? 100 + rnd() * 1900 : r < 0.95 ? 2000 + rnd() * 6000 : r < 0.995 ? 8000 + rnd() * 24000 : 32000 + rnd() * 224000);
    let content;
    if (binary) {
      content = Buffer.allocUnsafe(size);
      for (let b = 0; b < size; b++) content[b] = (rnd() * 256) | 0;
    } else {
      const parts = [];
      let len = 0;
      while (len < size) {
        const w = words[(rnd() * words.length) | 0];
        parts.push(w);
        len += w.length + 1;
        if (rnd() < 0.1) parts.push("\n");
      }
      content = Buffer.from(parts.join(" ").slice(0, size));
    }
    const name = `${rel}/f${i}${binary ? ".png" : exts[i % exts.length]}`;
    writeFileSync(path.join(dir, name), content);
    generated.push(name);
    bytes += size;
  }
  return { bytes, dirs: dirs.size };
}

/** `count` distinct generated files spread over the tree (deterministic per seed). */
function pickFiles(n, count, seed) {
  const rnd = mulberry32(seed);
  const chosen = new Set();
  while (chosen.size < Math.min(count, n)) chosen.add((rnd() * n) | 0);
  return [...chosen].map((i) => generated[i]);
}

function mulberry32(a) {
  return () => {
    a |= 0;
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function blobOid(content) {
  return createHash("sha1").update(`blob ${content.length}\0`).update(content).digest("hex");
}

function table(r) {
  const f = r.figures;
  const rows = [["figure", "cascade-sync", "native git", "ratio / value", "target", "met"]];
  const ok = (b) => (b === undefined ? "?" : b ? "yes" : "NO");
  if (f.commit) {
    rows.push(["commit cost (1 file changed)", `${f.commit.cascadeMedianMs} ms`, `${f.commit.nativeMedianMs} ms (add -A && commit)`, `${f.commit.ratio}x`, TARGETS.commit, ok(f.commit.ratio <= 0.3)]);
    if (f.commit.plumbingMedianMs !== undefined) rows.push(["  same commit vs native plumbing (baseline)", `${f.commit.cascadeMedianMs} ms`, `${f.commit.plumbingMedianMs} ms (update-index, write-tree, commit-tree, update-ref)`, `${f.commit.ratioToPlumbing}x`, "-", "-"]);
  }
  if (f.latency) {
    rows.push(["change-to-remote latency p50", `${f.latency.p50Ms} ms`, "-", `${f.latency.p50Ms} ms`, TARGETS.latencyP50, ok(f.latency.p50Ms <= 300)]);
    rows.push(["change-to-remote latency p95", `${f.latency.p95Ms} ms`, "-", `${f.latency.p95Ms} ms`, TARGETS.latencyP95, ok(f.latency.p95Ms <= 1000)]);
  }
  if (f.burst) {
    rows.push([`burst: ${f.burst.files} files lost`, `${f.burst.lost}`, "-", `${f.burst.lost}`, TARGETS.burstLost, ok(f.burst.lost === 0)]);
    const limit = parseDuration(BATCH_WINDOW) + 5000;
    rows.push(["burst: first commit after", `${f.burst.firstCommitMs} ms`, "-", `all in ${f.burst.allCommittedMs ?? "-"} ms`, TARGETS.burstFirst, ok(f.burst.firstCommitMs <= limit)]);
  }
  if (f.start) {
    const cold = f.start.cache === "cold";
    rows.push([`start until ready (${f.start.cache} cache)`, `${f.start.cascadeMs} ms`, `${cold ? f.start.nativeStatusMs[0] : median(f.start.nativeStatusMs)} ms (${f.start.cache} git status)`, `${f.start.ratio}x`, TARGETS.start, ok(f.start.ratio <= 10 && f.start.editsWhileStoppedCommitted)]);
    if (cold) rows.push(["  same start vs a warm git status", "-", `${median(f.start.nativeStatusMs.slice(1))} ms`, `${f.start.ratioToWarmStatus}x`, "-", "-"]);
  }
  if (f.memoryWatching) rows.push(["memory: peak RSS while watching", `${f.memoryWatching.peakRssMB} MB`, "-", `${f.memoryWatching.peakRssMB} MB`, TARGETS.memory, ok(f.memoryWatching.peakRssMB <= 300)]);
  if (f.memory) rows.push([`memory: peak RSS with the ${f.burst?.files ?? ""}-file burst`, `${f.memory.peakRssMB} MB`, "-", `${f.memory.peakRssMB} MB`, TARGETS.memory, ok(f.memory.peakRssMB <= 300)]);
  if (f.idle) rows.push([`idle CPU over ${f.idle.seconds} s`, `${f.idle.cpuPercentOfOneCore} %`, "-", `${f.idle.cpuPercentOfOneCore} %`, TARGETS.idle, ok(f.idle.cpuPercentOfOneCore <= 1)]);
  if (f.promote) rows.push(["promote (ff + push)", `${f.promote.cascadeMedianMs} ms`, `${f.promote.nativeMedianMs} ms (git push)`, `${f.promote.ratio}x`, TARGETS.promote, ok(f.promote.ratio <= 1)]);
  const widths = rows[0].map((_, c) => Math.max(...rows.map((row) => String(row[c]).length)));
  const line = (row) => `| ${row.map((v, c) => String(v).padEnd(widths[c])).join(" | ")} |`;
  const head = `cascade-sync vs native git, ${r.files} files (${r.setup.tree ? `${Math.round(r.setup.tree.bytes / 1e6)} MB in ${r.setup.tree.dirs} folders` : "?"}), ${r.machine.cpus} cores, node ${r.machine.node}, ${r.machine.git}; debounce ${r.config.debounce}, batchWindow ${r.config.batchWindow}`;
  const checks = r.checks ? `checks: same tree as native ${ok(r.checks.sameTreeAsNative)}, git status clean ${ok(r.checks.statusClean)}, git fsck ${ok(r.checks.fsckOk)}; init ${r.setup.initMs} ms; total ${r.totalSeconds} s` : "";
  return [head, "", line(rows[0]), `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`, ...rows.slice(1).map(line), "", checks].join("\n");
}

// ------------------------------------------------------------------------------------------------

function sh(cmd, argv, opts = {}) {
  const t = performance.now();
  return new Promise((resolve) => {
    execFile(cmd, argv, { cwd: opts.cwd, env, maxBuffer: opts.maxBuffer ?? 64 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === "number" ? err.code : 1) : 0, stdout, stderr, ms: round(performance.now() - t) });
    });
  });
}

function timed(fn) {
  const t = performance.now();
  const value = fn();
  return { value, ms: round(performance.now() - t) };
}

async function waitFor(fn, timeoutMs, what, intervalMs = 50) {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

function cleanEnv(extra) {
  const out = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("GIT_") && k !== "XDG_CONFIG_HOME") out[k] = v;
  return { ...out, ...extra };
}

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) continue;
    const [k, v] = a.slice(2).split("=", 2);
    if (v !== undefined) out[k] = v;
    else if (argv[i + 1] !== undefined && !argv[i + 1].startsWith("--")) out[k] = argv[++i];
    else out[k] = true;
  }
  return out;
}

function parseDuration(s) {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)$/.exec(s);
  if (!m) throw new Error(`bad duration ${s}`);
  return Number(m[1]) * (m[2] === "ms" ? 1 : m[2] === "s" ? 1000 : 60_000);
}

function int(v, d) { return v === undefined ? d : parseInt(v, 10); }
function num(v, d) { return v === undefined ? d : Number(v); }
function round(x, digits = 0) { const p = 10 ** digits; return Math.round(x * p) / p; }
function ratio(a, b) { return round(a / b, 2); }
function median(xs) { return percentile(xs, 50); }
function percentile(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  if (!s.length) return NaN;
  const i = (p / 100) * (s.length - 1);
  const lo = Math.floor(i);
  return s[lo] + (s[Math.min(lo + 1, s.length - 1)] - s[lo]) * (i - lo);
}
function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }
function step(msg) { process.stdout.write(`[${round((Date.now() - started) / 1000)}s] ${msg}\n`); }
