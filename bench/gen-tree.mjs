#!/usr/bin/env node
// Writes one share of the bench's generated tree (run by lib.mjs generateTree, one process per job):
//
//   node bench/gen-tree.mjs DIR FILES PER_FOLDER JOB JOBS
//
// File i lives in leaf folder floor(i / PER_FOLDER) (three levels: pkgN/modN/partN); job J writes the
// leaf folders with leaf % JOBS == J, so jobs never share a folder. Sizes follow a source tree with
// assets: mostly text of 100 B - 8 KB, some larger files, about 3 % binary. Each file's size and kind
// come from its own seeded generator (the same tree whatever JOBS is), its content is a slice of a
// corpus made once, after a first line naming the file (so every blob differs): no per-byte work.
// Prints {"names": [[i, name], ...], "bytes": N, "dirs": N} on stdout.
import { mkdirSync, openSync, writeSync, closeSync } from "node:fs";
import path from "node:path";
import { mulberry32 } from "./lib.mjs";

const [dir, filesArg, perFolderArg, jobArg, jobsArg] = process.argv.slice(2);
const FILES = Number(filesArg);
const PER_FOLDER = Number(perFolderArg);
const JOB = Number(jobArg);
const JOBS = Number(jobsArg);
const EXTS = [".ts", ".ts", ".ts", ".js", ".json", ".md", ".css", ".html", ".yaml", ".txt"];
const MAX_SIZE = 256_000;

const text = textCorpus(4 << 20);
const binary = binaryCorpus(1 << 20);
const names = [];
let bytes = 0;
let dirs = 0;
const leaves = Math.ceil(FILES / PER_FOLDER);
for (let leaf = JOB; leaf < leaves; leaf += JOBS) {
  const rel = `pkg${Math.floor(leaf / 100)}/mod${Math.floor(leaf / 10) % 10}/part${leaf % 10}`;
  mkdirSync(path.join(dir, rel), { recursive: true });
  dirs++;
  for (let i = leaf * PER_FOLDER; i < Math.min(FILES, (leaf + 1) * PER_FOLDER); i++) {
    const { name, size, isBinary } = fileSpec(i, rel);
    const rnd = mulberry32(i + 7);
    const corpus = isBinary ? binary : text;
    const offset = Math.floor(rnd() * (corpus.length - size));
    const fd = openSync(path.join(dir, name), "w");
    writeSync(fd, `// ${name}\n`);
    writeSync(fd, corpus, offset, size);
    closeSync(fd);
    names.push([i, name]);
    bytes += size;
  }
}
process.stdout.write(JSON.stringify({ names, bytes, dirs }));

/** Name, size and kind of file i, from its own seeded generator. */
function fileSpec(i, rel) {
  const rnd = mulberry32(i * 2 + 42);
  const r = rnd();
  const isBinary = r > 0.97;
  const size = Math.min(MAX_SIZE, Math.floor(r < 0.7 ? 100 + rnd() * 1900 : r < 0.95 ? 2000 + rnd() * 6000 : r < 0.995 ? 8000 + rnd() * 24000 : 32000 + rnd() * 224000));
  return { name: `${rel}/f${i}${isBinary ? ".png" : EXTS[i % EXTS.length]}`, size, isBinary };
}

/** `n` bytes of code-like words and newlines (seeded). */
function textCorpus(n) {
  const words = "const let function return import export from default class interface type if else for while await async new this true false null undefined string number value result error config data item list map set get path file name index state props render update".split(" ");
  const rnd = mulberry32(1);
  const parts = [];
  let len = 0;
  while (len < n) {
    const w = rnd() < 0.1 ? "\n" : words[(rnd() * words.length) | 0] + " ";
    parts.push(w);
    len += w.length;
  }
  return Buffer.from(parts.join("")).subarray(0, n);
}

/** `n` seeded random bytes. */
function binaryCorpus(n) {
  const rnd = mulberry32(2);
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (rnd() * 256) | 0;
  return b;
}
