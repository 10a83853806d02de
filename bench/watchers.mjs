#!/usr/bin/env node
// Measures a sandbox watcher on a big tree (issue 15): time to subscribe, memory, how much of a
// 30,000-file burst it reports, and whether a folder removed and made again at once
// (`rm -r d && mkdir d`) is still watched.
//
//   node bench/watchers.mjs --make-tree DIR            100,000 files in 5,000 folders (once)
//   node bench/watchers.mjs --tree DIR --impl fswatch [--module dist/src/watcher.js]
//   node bench/watchers.mjs --tree DIR --impl parcel  [--module PATH/@parcel/watcher]
//
// Each run changes the tree (the burst adds files, the folder runs replace folders): make a fresh
// tree (or copy one) per run. Run it on a quiet machine: other processes' CPU skews the times.
import { mkdirSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join, relative, resolve, sep } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

const { values: opt } = parseArgs({
  options: {
    "make-tree": { type: "string" },
    tree: { type: "string" },
    impl: { type: "string", default: "fswatch" },
    module: { type: "string" },
    burst: { type: "string", default: "30000" },
    runs: { type: "string", default: "20" },
  },
});

const TOP = 50;
const SUB = 100;
const FILES = 20;

if (opt["make-tree"]) {
  const root = resolve(opt["make-tree"]);
  mkdirSync(join(root, ".git"), { recursive: true });
  writeFileSync(join(root, ".git/HEAD"), "ref: refs/heads/develop\n");
  for (let a = 0; a < TOP; a++) {
    for (let b = 0; b < SUB; b++) {
      const d = join(root, `a${a}`, `b${b}`);
      mkdirSync(d, { recursive: true });
      for (let f = 0; f < FILES; f++) writeFileSync(join(d, `f${f}.txt`), `${a}/${b}/${f}\n`);
    }
  }
  console.log(`made ${TOP * SUB * FILES} files in ${TOP * SUB} folders under ${root}`);
  process.exit(0);
}

const tree = resolve(opt.tree);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const mb = (n) => Math.round(n / 1e6);

/** Every hint (a path relative to the tree), in order. */
const hints = [];
/** Starts the watcher; resolves to its close function. */
async function startWatcher() {
  if (opt.impl === "parcel") {
    const mod = await import(opt.module ? pathToFileURL(resolve(opt.module, "index.js")).href : "@parcel/watcher");
    const parcel = mod.default ?? mod;
    const sub = await parcel.subscribe(tree, (err, events) => {
      if (err) hints.push(`!error ${err.message}`);
      for (const e of events ?? []) hints.push(relative(tree, e.path).split(sep).join("/"));
    }, { ignore: [".git"] });
    return () => sub.unsubscribe();
  }
  const modPath = resolve(opt.module ?? "dist/src/watcher.js");
  const { SandboxWatcher } = await import(pathToFileURL(modPath).href);
  const { Exclusions } = await import(pathToFileURL(join(modPath, "..", "exclusions.js")).href);
  const exclusions = await Exclusions.load(tree, []);
  const w = new SandboxWatcher(tree, join(tree, ".git"), () => exclusions, {
    changed: (rel) => hints.push(rel),
    missedEvents: (why) => hints.push(`!missed ${why}`),
    headChanged: () => undefined,
  });
  await w.start();
  return () => w.close();
}

/** True when a hint names `rel` or a folder above it. */
function covered(rel, from = 0) {
  for (let i = from; i < hints.length; i++) {
    const h = hints[i];
    if (h === rel || h === "" || rel.startsWith(`${h}/`)) return true;
  }
  return false;
}

async function waitCovered(rel, from, ms) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (covered(rel, from)) return true;
    await sleep(20);
  }
  return covered(rel, from);
}

globalThis.gc?.();
const rss0 = process.memoryUsage().rss;
const t0 = performance.now();
const close = await startWatcher();
const subscribeMs = performance.now() - t0;
globalThis.gc?.();
await sleep(500);
const rss1 = process.memoryUsage().rss;
console.log(`${opt.impl}: subscribed in ${(subscribeMs / 1000).toFixed(2)} s; RSS ${mb(rss0)} MB -> ${mb(rss1)} MB (+${mb(rss1 - rss0)} MB)`);

// A burst of new files spread over every folder, written a few hundred at a time.
const burst = Number(opt.burst);
const paths = Array.from({ length: burst }, (_, i) => `a${i % TOP}/b${Math.floor(i / TOP) % SUB}/burst${i}.txt`);
const from = hints.length;
const tb = performance.now();
for (let i = 0; i < paths.length; i += 500) await Promise.all(paths.slice(i, i + 500).map((p) => writeFile(join(tree, p), "burst\n")));
const writeMs = performance.now() - tb;
// Events still arriving: wait until none came for 2 s (at most 30 s).
for (let last = -1, quietSince = Date.now(), end = Date.now() + 30_000; Date.now() < end && Date.now() - quietSince < 2000; await sleep(100)) {
  if (hints.length !== last) {
    last = hints.length;
    quietSince = Date.now();
  }
}
const exact = new Set(hints.slice(from));
let reported = 0;
for (const p of paths) if (exact.has(p) || covered(p, from)) reported++;
const rss2 = process.memoryUsage().rss;
console.log(`${opt.impl}: burst of ${burst} files written in ${(writeMs / 1000).toFixed(1)} s; ${reported} of ${burst} reported (${hints.length - from} hints); RSS after ${mb(rss2)} MB`);

// rm -r d && mkdir d, then a write into d a moment later: is it reported?
const runs = Number(opt.runs);
let kept = 0;
const lost = [];
for (let i = 0; i < runs; i++) {
  const d = `a${i % TOP}/b${50 + i}`;
  const abs = join(tree, d);
  rmSync(abs, { recursive: true });
  mkdirSync(abs);
  writeFileSync(join(abs, "early.txt"), "early\n");
  await sleep(300);
  const mark = hints.length;
  await writeFile(join(abs, "late.txt"), "late\n");
  if (await waitCovered(`${d}/late.txt`, mark, 3000)) kept++;
  else lost.push(d);
}
console.log(`${opt.impl}: rm -r d && mkdir d: a later write reported in ${kept} of ${runs} runs${lost.length ? ` (lost: ${lost.join(", ")})` : ""}`);
if (hints.some((h) => h.startsWith("!"))) console.log(`${opt.impl}: ${hints.filter((h) => h.startsWith("!")).slice(0, 3).join("; ")}`);
await close();
if (!existsSync(tree)) process.exitCode = 1;
