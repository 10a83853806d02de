#!/usr/bin/env node
// The long run (issue 17): what weeks of work do to the controller, compressed into bursts in a row.
//
//   npm run build && node bench/long.mjs [--bursts 1000] [--burst-files 300] [--long-files 10000]
//                                        [--debounce-long 300ms] [--push-files 30000] [--out FILE] [--keep] [--bin PATH]
//   (or `npm run bench -- --long ...`, which runs it after the main bench)
//
// One sandbox of --long-files generated files (committed by native git, adopted by `cascade-sync init`)
// with two remotes: a local bare repository and a bare repository served over smart HTTP by `git
// http-backend` on 127.0.0.1. The real controller (`start`) runs with git's defaults (gc.auto and
// gc.autoPackLimit as shipped: the object store is the controller's upkeep to keep in shape). Then
// --bursts bursts, one right after the other, each rewriting --burst-files existing files (new content
// of 1-4 KB each, so the tree keeps its size and only history and objects grow). Per burst: the time
// from the last write to a commit holding all of them (commit latency) and to each remote having that
// commit (push latency), the controller's RSS, and the packs in the sandbox and both remotes.
// Judged: latency of the last 100 bursts within 1.2x of the first 100 (the first and last half when
// fewer than 200 bursts), packs <= 50 at any sample, mean RSS of the last 100 within 10 % of the first
// 100, `git fsck --strict` clean at the end in all three repositories.
// Then the memory of one push of --push-files new files over HTTP: the HTTP remote is paused (a
// config edit), the files are written and committed (pushed to the local remote only), the
// controller's peak RSS is reset (/proc/PID/clear_refs) and the remote unpaused; the peak during that
// push is compared with the size of the pack git sent.
import { mkdirSync, writeFileSync, readdirSync, statSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import os from "node:os";
import path from "node:path";
import {
  ROOT, parseArgs, benchWorkspace, waitFor, refOf, packCount, procMemory, resetPeakRss,
  startController, stopController, killController, blobOid, generateTree, mulberry32, startGitHttpServer, spread, round, ratio, median, mean, sleep, markdownTable,
} from "./lib.mjs";

const args = parseArgs(process.argv.slice(2));
const BURSTS = int(args.bursts, 1000);
const BURST_FILES = int(args["burst-files"], 300);
const FILES = Math.max(int(args["long-files"], 10_000), BURST_FILES * 2);
const DEBOUNCE = args["debounce-long"] ?? "300ms";
const PUSH_FILES = int(args["push-files"], 30_000);
const BIN = path.resolve(args.bin ?? path.join(ROOT, "bin", "cascade-sync.js"));
/** The two windows compared: the first and the last 100 bursts (each half of a shorter run). */
const WINDOW = Math.max(1, Math.min(100, Math.floor(BURSTS / 2)));
const TARGETS = { latencyRatio: 1.2, maxPacks: 50, rssRatio: 1.1 };

// No gc settings: git's defaults (gc.auto 6700, gc.autoPackLimit 50) are what a user has.
const { tmp, env, sh, must } = await benchWorkspace("cascade-long-");
const sandbox = path.join(tmp, "sandbox");
const srv = path.join(tmp, "srv");
const local = path.join(tmp, "local.git");
const httpBare = path.join(srv, "site.git");
const logFile = path.join(tmp, "logs", "cascade-sync.log");
const started = Date.now();
const report = {
  config: { bursts: BURSTS, burstFiles: BURST_FILES, files: FILES, debounce: DEBOUNCE, pushFiles: PUSH_FILES, window: WINDOW },
  targets: TARGETS,
  machine: { cpus: os.cpus().length, node: process.version, loadBefore: os.loadavg().map((l) => round(l, 2)) },
  setup: {},
  bursts: [],
};
let controller;
let server;
let names = [];
/** The controller's status server (its /metrics gives the live heap beside the RSS read from /proc). */
const METRICS_PORT = await freePort();

try {
  report.machine.git = (await sh("git", ["--version"])).stdout.trim();
  server = await startGitHttpServer(srv, env);
  await setUp();
  step(`start the controller`);
  controller = startController(BIN, sandbox, env);
  await controller.ready;
  await waitSynced(await refOf(sandbox, "develop"), 120_000);
  step(`${BURSTS} bursts of ${BURST_FILES} files in a row`);
  const tb = performance.now();
  for (let b = 0; b < BURSTS; b++) {
    report.bursts.push(await burst(b));
    if ((b + 1) % 50 === 0) step(`  ${b + 1} bursts, last: commit ${report.bursts[b].commitMs} ms, push ${report.bursts[b].pushLocalMs}/${report.bursts[b].pushHttpMs} ms, RSS ${report.bursts[b].rssMB} MB, packs ${report.bursts[b].packs.join("/")}`);
  }
  report.burstsSeconds = round((performance.now() - tb) / 1000);
  report.figures = judge(report.bursts);
  step(`push of ${PUSH_FILES} new files over HTTP`);
  report.push = await bigHttpPush();
  step("stop the controller; git fsck --strict");
  report.stopMs = await stopController(controller);
  controller = undefined;
  report.fsck = await fsckAll();
} catch (err) {
  report.error = String(err?.stack ?? err);
  process.exitCode = 1;
} finally {
  if (controller) await killController(controller);
  await server?.close();
  report.machine.loadAfter = os.loadavg().map((l) => round(l, 2));
  report.totalSeconds = round((Date.now() - started) / 1000);
  report.table = table(report);
  const out = path.resolve(args.out ?? path.join(os.tmpdir(), `cascade-long-${BURSTS}-${Date.now()}.json`));
  await writeFile(out, JSON.stringify(report, null, 2) + "\n");
  // Called from run.mjs (--quiet), the table is printed there, after the main one.
  if (!args.quiet) process.stdout.write(`\n${report.table}\n`);
  if (report.error) process.stderr.write(`\nlong run failed: ${report.error}\n`);
  if (args.keep) process.stdout.write(`trees kept in ${tmp}\n`);
  else await rm(tmp, { recursive: true, force: true, maxRetries: 3 });
  process.stdout.write(`long-run report: ${out}\n`);
}

/** The sandbox (generated, committed natively, adopted by init) and both remotes holding its history. */
async function setUp() {
  step(`generating ${FILES} files; remotes: ${local} and ${server.url("site.git")}`);
  const gen = await generateTree(sandbox, FILES);
  names = gen.names;
  report.setup.tree = { files: FILES, bytes: gen.bytes, dirs: gen.dirs, ms: gen.ms };
  writeFileSync(path.join(sandbox, "cascade-sync-config.yaml"), configText(false));
  await must("git", ["init", "-q", "--initial-branch=develop"], { cwd: sandbox });
  report.setup.nativeFirstCommitMs = (await must("sh", ["-c", "git add -A && git commit -q -m 'first commit'"], { cwd: sandbox })).ms;
  mkdirSync(srv, { recursive: true });
  for (const bare of [local, httpBare]) {
    await must("git", ["init", "-q", "--bare", "--initial-branch=develop", bare]);
    await must("rm", ["-rf", path.join(bare, "objects")]);
    await must("cp", ["-al", path.join(sandbox, ".git", "objects"), path.join(bare, "objects")]);
    await must("git", ["update-ref", "refs/heads/develop", await refOf(sandbox, "develop")], { cwd: bare });
  }
  report.setup.initMs = (await must(process.execPath, [BIN, "init"], { cwd: sandbox })).ms;
}

function configText(httpPaused) {
  return [
    "version: 1",
    "sandbox:",
    "  branch: develop",
    `  debounce: ${DEBOUNCE}`,
    "  batchWindow: 10s",
    "remotes:",
    "  - name: origin",
    `    url: ${JSON.stringify(local)}`,
    "  - name: web",
    `    url: ${JSON.stringify(server.url("site.git"))}`,
    ...(httpPaused ? ["    paused: true"] : []),
    "intervals: { fetch: 30s, rescan: 10m }",
    `logging: { file: ${JSON.stringify(logFile)}, level: info }`,
    "notifications: { desktop: false }",
    `server: { listen: "127.0.0.1:${METRICS_PORT}" }`,
    "",
  ].join("\n");
}

/**
 * One burst: BURST_FILES existing files rewritten at once; waits for the commit holding all of them
 * and for both remotes to have it. Returns the latencies (from the last write), RSS and pack counts.
 */
async function burst(b) {
  const rnd = mulberry32(1000 + b);
  const start = (b * BURST_FILES) % names.length;
  const files = Array.from({ length: BURST_FILES }, (_, k) => names[(start + k) % names.length]);
  const expected = new Map();
  for (const f of files) {
    const content = Buffer.from(`burst ${b} ${f}\n${"x".repeat(1000 + Math.floor(rnd() * 3000))}\n`);
    writeFileSync(path.join(sandbox, f), content);
    expected.set(f, blobOid(content));
  }
  const tw = performance.now();
  const commit = await waitForCommitOf(expected, 120_000);
  const commitMs = performance.now() - tw;
  const pushed = await waitSynced(commit, 120_000);
  const mem = procMemory(controller.pid);
  return {
    commitMs: round(commitMs), pushLocalMs: round(pushed.local - tw), pushHttpMs: round(pushed.http - tw),
    rssMB: mem.rssMB, peakRssMB: mem.peakRssMB, anonMB: mem.anonMB, fileMB: mem.fileMB, ...(await heapMB()), packs: [packCount(sandbox), packCount(local), packCount(httpBare)],
  };
}

/**
 * The controller's V8 heap in use and its external memory (Buffers), from its /metrics (prom-client's
 * default metrics): whether a growing RSS is live memory or memory the allocator keeps.
 */
async function heapMB() {
  try {
    const text = await (await fetch(`http://127.0.0.1:${METRICS_PORT}/metrics`)).text();
    const value = (name) => Number(new RegExp(`^${name} ([0-9.e+]+)`, "m").exec(text)?.[1]) / 2 ** 20;
    return { heapUsedMB: round(value("nodejs_heap_size_used_bytes"), 1), heapTotalMB: round(value("nodejs_heap_size_total_bytes"), 1), externalMB: round(value("nodejs_external_memory_bytes"), 1) };
  } catch {
    return {};
  }
}

/** A port free on 127.0.0.1 now. */
async function freePort() {
  const { createServer } = await import("node:net");
  return new Promise((resolve, reject) => {
    const s = createServer().once("error", reject).listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Waits until develop holds every expected blob; returns that commit. */
async function waitForCommitOf(expected, timeoutMs) {
  let checked;
  // A few hundred paths go on the command line; more would pass the kernel's argument limit.
  const listed = expected.size <= 1000 ? ["--", ...expected.keys()] : ["-r"];
  return waitFor(async () => {
    const head = await refOf(sandbox, "develop");
    if (head === checked) return undefined;
    const r = await must("git", ["ls-tree", "-z", head, ...listed], { cwd: sandbox, maxBuffer: 1 << 30 });
    checked = head;
    let found = 0;
    for (const rec of r.stdout.split("\0")) {
      const tab = rec.indexOf("\t");
      if (tab > 0 && expected.get(rec.slice(tab + 1)) === rec.slice(0, tab).split(" ")[2]) found++;
    }
    return found === expected.size ? head : undefined;
  }, timeoutMs, "the commit of the written files", 10);
}

/** Waits until both remotes' develop is `commit`; returns when each got it (performance.now()). */
async function waitSynced(commit, timeoutMs) {
  const at = {};
  await waitFor(async () => {
    if (at.local === undefined && (await refOf(local, "develop")) === commit) at.local = performance.now();
    if (at.http === undefined && (await refOf(httpBare, "develop")) === commit) at.http = performance.now();
    return at.local !== undefined && at.http !== undefined;
  }, timeoutMs, `both remotes to have ${commit.slice(0, 7)}`, 10);
  return at;
}

/** The first WINDOW bursts against the last WINDOW: latency, RSS, and the packs at every sample. */
function judge(bursts) {
  const first = bursts.slice(0, WINDOW);
  const last = bursts.slice(-WINDOW);
  const fig = (key) => {
    const a = median(first.map((x) => x[key]));
    const z = median(last.map((x) => x[key]));
    return { firstMedianMs: round(a), lastMedianMs: round(z), ratio: ratio(z, a), first: spread(first.map((x) => x[key])), last: spread(last.map((x) => x[key])) };
  };
  const rssFirst = mean(first.map((x) => x.rssMB));
  const rssLast = mean(last.map((x) => x.rssMB));
  return {
    commit: fig("commitMs"), pushLocal: fig("pushLocalMs"), pushHttp: fig("pushHttpMs"),
    rss: { firstMeanMB: round(rssFirst, 1), lastMeanMB: round(rssLast, 1), ratio: ratio(rssLast, rssFirst), peakMB: Math.max(...bursts.map((x) => x.peakRssMB)) },
    anon: { firstMeanMB: round(mean(first.map((x) => x.anonMB ?? 0)), 1), lastMeanMB: round(mean(last.map((x) => x.anonMB ?? 0)), 1), fileFirstMB: round(mean(first.map((x) => x.fileMB ?? 0)), 1), fileLastMB: round(mean(last.map((x) => x.fileMB ?? 0)), 1) },
    heap: { firstMeanMB: round(mean(first.map((x) => x.heapUsedMB ?? 0)), 1), lastMeanMB: round(mean(last.map((x) => x.heapUsedMB ?? 0)), 1), externalFirstMB: round(mean(first.map((x) => x.externalMB ?? 0)), 1), externalLastMB: round(mean(last.map((x) => x.externalMB ?? 0)), 1) },
    packs: { sandboxMax: Math.max(...bursts.map((x) => x.packs[0])), localMax: Math.max(...bursts.map((x) => x.packs[1])), httpMax: Math.max(...bursts.map((x) => x.packs[2])), sandboxEnd: packCount(sandbox), localEnd: packCount(local) },
  };
}

/**
 * PUSH_FILES new files committed while the HTTP remote is paused, then one push of all of them to it
 * when unpaused: the controller's peak RSS during that push (reset just before), against its RSS before
 * and the size of the pack the remote received.
 */
async function bigHttpPush() {
  writeFileSync(path.join(sandbox, "cascade-sync-config.yaml"), configText(true));
  const paused = await waitForConfigCommit(true);
  await waitFor(async () => (await refOf(local, "develop")) === paused, 120_000, "the local remote to have the pausing config");
  const httpBefore = await refOf(httpBare, "develop");
  const packsBefore = new Set(packFiles(httpBare));
  const expected = new Map();
  const tw = performance.now();
  for (let i = 0; i < PUSH_FILES; i++) {
    const f = `${path.dirname(names[(i * 7) % names.length])}/push${i}.txt`;
    // Incompressible content: the pack git sends is as big as the files, so holding it would show.
    const content = Buffer.from(`push ${i}\n${randomBytes(400 + (i % 1500)).toString("base64")}\n`);
    writeFileSync(path.join(sandbox, f), content);
    expected.set(f, blobOid(content));
  }
  const commit = await waitForCommitOf(expected, 600_000);
  const committedMs = performance.now() - tw;
  await waitFor(async () => (await refOf(local, "develop")) === commit, 300_000, "the local remote to have the new files");
  if ((await refOf(httpBare, "develop")) !== httpBefore) throw new Error("the paused HTTP remote was pushed to");
  const commits = Number((await must("git", ["rev-list", "--count", `${httpBefore}..${commit}`], { cwd: sandbox })).stdout.trim());
  await sleep(1000);
  const before = procMemory(controller.pid);
  const reset = resetPeakRss(controller.pid);
  let sampledPeak = before.rssMB;
  const sampler = setInterval(() => { try { sampledPeak = Math.max(sampledPeak, procMemory(controller.pid).rssMB); } catch { /* exited */ } }, 20);
  const tp = performance.now();
  writeFileSync(path.join(sandbox, "cascade-sync-config.yaml"), configText(false));
  const unpaused = await waitForConfigCommit(false);
  await waitFor(async () => (await refOf(httpBare, "develop")) === unpaused, 600_000, "the HTTP remote to receive the push", 20);
  const pushMs = performance.now() - tp;
  clearInterval(sampler);
  const after = procMemory(controller.pid);
  const packBytes = packFiles(httpBare).filter((p) => !packsBefore.has(p)).reduce((a, p) => a + statSync(path.join(httpBare, "objects", "pack", p)).size, 0);
  return {
    files: PUSH_FILES, commits: commits + 1, committedMs: round(committedMs), pushMs: round(pushMs), packMB: round(packBytes / 1e6, 1),
    rssBeforeMB: before.rssMB, peakDuringPushMB: reset ? after.peakRssMB : null, sampledPeakMB: sampledPeak, peakResetWorked: reset,
  };
}

/** Waits for the sandbox's commit of the config with (or without) `paused: true` for the HTTP remote; returns it. */
async function waitForConfigCommit(paused) {
  return waitForLocal(async () => {
    const head = await refOf(sandbox, "develop");
    const text = (await must("git", ["show", `${head}:cascade-sync-config.yaml`], { cwd: sandbox })).stdout;
    return text.includes("paused: true") === paused ? head : undefined;
  });
}

function waitForLocal(fn) { return waitFor(fn, 120_000, "the config change to be committed", 50); }

function packFiles(bare) {
  try {
    return readdirSync(path.join(bare, "objects", "pack")).filter((f) => f.endsWith(".pack"));
  } catch {
    return [];
  }
}

/** `git fsck --strict` in the sandbox and both remotes, and their object counts. */
async function fsckAll() {
  const out = {};
  for (const [name, dir] of [["sandbox", sandbox], ["local", local], ["http", httpBare]]) {
    const r = await sh("git", ["fsck", "--strict", "--no-dangling"], { cwd: dir, maxBuffer: 1 << 28 });
    const count = (await sh("git", ["count-objects", "-v"], { cwd: dir })).stdout.trim().split("\n").join(", ");
    out[name] = { ok: r.code === 0, problems: r.code === 0 ? undefined : (r.stderr + r.stdout).slice(0, 2000), objects: count };
  }
  return out;
}

function table(r) {
  const head = `long run: ${r.bursts.length} of ${r.config.bursts} bursts of ${r.config.burstFiles} files, ${r.config.files}-file tree, debounce ${r.config.debounce}; first ${r.config.window} vs last ${r.config.window}; ${r.machine.cpus} cores, ${r.machine.git ?? "git ?"}`;
  const f = r.figures;
  if (!f) return `${head}\n\n(the bursts did not complete)`;
  const yes = (b) => (b ? "yes" : "NO");
  const rows = [["figure", "first", "last", "ratio / value", "target", "met"]];
  rows.push(["commit latency (median, from the last write)", `${f.commit.firstMedianMs} ms`, `${f.commit.lastMedianMs} ms`, `${f.commit.ratio}x`, `<= ${TARGETS.latencyRatio}x`, yes(f.commit.ratio <= TARGETS.latencyRatio)]);
  rows.push(["push latency, local remote", `${f.pushLocal.firstMedianMs} ms`, `${f.pushLocal.lastMedianMs} ms`, `${f.pushLocal.ratio}x`, `<= ${TARGETS.latencyRatio}x`, yes(f.pushLocal.ratio <= TARGETS.latencyRatio)]);
  rows.push(["push latency, HTTP remote", `${f.pushHttp.firstMedianMs} ms`, `${f.pushHttp.lastMedianMs} ms`, `${f.pushHttp.ratio}x`, `<= ${TARGETS.latencyRatio}x`, yes(f.pushHttp.ratio <= TARGETS.latencyRatio)]);
  rows.push(["controller RSS (mean)", `${f.rss.firstMeanMB} MB`, `${f.rss.lastMeanMB} MB`, `${f.rss.ratio}x (peak ${f.rss.peakMB} MB)`, `<= ${TARGETS.rssRatio}x`, yes(f.rss.ratio <= TARGETS.rssRatio)]);
  if (f.anon?.lastMeanMB) rows.push(["  of it anonymous / file-backed (mean)", `${f.anon.firstMeanMB} / ${f.anon.fileFirstMB} MB`, `${f.anon.lastMeanMB} / ${f.anon.fileLastMB} MB`, `${ratio(f.anon.lastMeanMB, f.anon.firstMeanMB)}x / ${ratio(f.anon.fileLastMB, f.anon.fileFirstMB)}x`, "(information)", "-"]);
  if (f.heap?.lastMeanMB) rows.push(["  its V8 heap in use / external memory (mean)", `${f.heap.firstMeanMB} / ${f.heap.externalFirstMB} MB`, `${f.heap.lastMeanMB} / ${f.heap.externalLastMB} MB`, `${ratio(f.heap.lastMeanMB, f.heap.firstMeanMB)}x / ${ratio(f.heap.externalLastMB, f.heap.externalFirstMB)}x`, "(information)", "-"]);
  rows.push(["packs at any sample: sandbox / local / HTTP", "-", `end ${f.packs.sandboxEnd} / ${f.packs.localEnd}`, `max ${f.packs.sandboxMax} / ${f.packs.localMax} / ${f.packs.httpMax}`, `<= ${TARGETS.maxPacks}`, yes(Math.max(f.packs.sandboxMax, f.packs.localMax) <= TARGETS.maxPacks)]);
  if (r.fsck) rows.push(["git fsck --strict at the end: sandbox / local / HTTP", "-", "-", `${yes(r.fsck.sandbox.ok)} / ${yes(r.fsck.local.ok)} / ${yes(r.fsck.http.ok)}`, "clean", yes(r.fsck.sandbox.ok && r.fsck.local.ok && r.fsck.http.ok)]);
  if (r.push) rows.push([`push of ${r.push.files} new files (${r.push.commits} commits) over HTTP: controller RSS`, `${r.push.rssBeforeMB} MB before`, `peak ${r.push.peakDuringPushMB ?? r.push.sampledPeakMB} MB`, `pack ${r.push.packMB} MB, ${round(r.push.pushMs / 1000, 1)} s`, "no whole push in memory", yes((r.push.peakDuringPushMB ?? r.push.sampledPeakMB) - r.push.rssBeforeMB < r.push.packMB)]);
  return [head, "", markdownTable(rows), "", `bursts took ${r.burstsSeconds} s; total ${r.totalSeconds} s; load average before ${r.machine.loadBefore.join(" ")}, after ${r.machine.loadAfter?.join(" ")}`].join("\n");
}

function int(v, d) { return v === undefined ? d : parseInt(v, 10); }
function step(msg) { process.stdout.write(`[long ${round((Date.now() - started) / 1000)}s] ${msg}\n`); }
