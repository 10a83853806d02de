// Helpers shared by the bench scripts (run.mjs, long.mjs, native-commit.mjs): processes, timing,
// statistics, /proc readings, the generated tree and a minimal smart-HTTP git server.
import { execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { mkdtemp, readFile } from "node:fs/promises";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root (bench/..). */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
/** Kernel clock ticks per second, the unit of /proc/<pid>/stat's CPU times. */
export const CLK_TCK = 100;

/** `--name value`, `--name=value` and bare `--flag` (true) into an object. */
export function parseArgs(argv) {
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

/** Milliseconds of a config duration such as `300ms`, `1s`, `2m`. */
export function parseDuration(s) {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)$/.exec(s);
  if (!m) throw new Error(`bad duration ${s}`);
  return Number(m[1]) * (m[2] === "ms" ? 1 : m[2] === "s" ? 1000 : 60_000);
}

/** The process environment without the user's GIT_* variables, plus `extra` (HOME isolated by the caller). */
export function cleanEnv(extra) {
  const out = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("GIT_") && k !== "XDG_CONFIG_HOME") out[k] = v;
  return { ...out, ...extra };
}

/**
 * A bench's temp dir with an isolated HOME (its .gitconfig: a bench identity, `develop` as the first
 * branch, plus `gitconfigExtra`) and the environment and command runners bound to it.
 */
export async function benchWorkspace(prefix, gitconfigExtra = "") {
  const tmp = await mkdtemp(path.join(os.tmpdir(), prefix));
  const home = path.join(tmp, "home");
  mkdirSync(home);
  writeFileSync(path.join(home, ".gitconfig"), `[user]\n\tname = Bench\n\temail = bench@example.invalid\n[init]\n\tdefaultBranch = develop\n${gitconfigExtra}`);
  const env = cleanEnv({ HOME: home, GIT_CONFIG_NOSYSTEM: "1" });
  return { tmp, home, env, sh: (cmd, argv, opts) => sh(env, cmd, argv, opts), must: (cmd, argv, opts) => must(env, cmd, argv, opts) };
}

/** Runs a command (never a shell unless `cmd` is one); resolves with code, output and duration, never rejects. */
export function sh(env, cmd, argv, opts = {}) {
  const t = performance.now();
  return new Promise((resolve) => {
    execFile(cmd, argv, { cwd: opts.cwd, env: opts.env ?? env, maxBuffer: opts.maxBuffer ?? 64 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === "number" ? err.code : 1) : 0, stdout, stderr, ms: round(performance.now() - t) });
    });
  });
}

/** Like sh, but throws with git's stderr when the command fails. */
export async function must(env, cmd, argv, opts = {}) {
  const r = await sh(env, cmd, argv, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${argv.join(" ")} failed (${r.code}): ${r.stderr}${r.stdout}`.slice(0, 4000));
  return r;
}

/** Polls `fn` until it returns a truthy value, which it returns; throws after `timeoutMs`. */
export async function waitFor(fn, timeoutMs, what, intervalMs = 50) {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

/** A branch's commit read from the loose ref (or packed-refs), without spawning git; works for bare and non-bare. */
export async function refOf(dir, branch) {
  const gitdir = existsSync(path.join(dir, ".git")) ? path.join(dir, ".git") : dir;
  try {
    return (await readFile(path.join(gitdir, "refs", "heads", branch), "utf8")).trim();
  } catch {
    const packed = await readFile(path.join(gitdir, "packed-refs"), "utf8").catch(() => "");
    return packed.split("\n").find((l) => l.endsWith(` refs/heads/${branch}`))?.slice(0, 40);
  }
}

/** Number of pack files in a repository (bare or not). */
export function packCount(dir) {
  const gitdir = existsSync(path.join(dir, ".git")) ? path.join(dir, ".git") : dir;
  try {
    return readdirSync(path.join(gitdir, "objects", "pack")).filter((f) => f.endsWith(".pack")).length;
  } catch {
    return 0;
  }
}

/** Resident memory of a process from /proc: peak (VmHWM) and current (VmRSS), in MB. */
export function procMemory(pid) {
  const s = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (k) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, "m").exec(s)?.[1] ?? NaN);
  // RssAnon: the heap, V8's pages and malloc's; RssFile: mapped files, mostly the node binary's code as it is first run.
  return { peakRssMB: round(kb("VmHWM") / 1024, 1), rssMB: round(kb("VmRSS") / 1024, 1), anonMB: round(kb("RssAnon") / 1024, 1), fileMB: round(kb("RssFile") / 1024, 1) };
}

/** Resets a process's peak RSS (VmHWM) to its current RSS; false when the kernel does not let us. */
export function resetPeakRss(pid) {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, "5");
    return true;
  } catch {
    return false;
  }
}

/** User + system CPU time of a process so far, in clock ticks. */
export function procCpu(pid) {
  const s = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
  // Fields 14 and 15 (utime, stime), counted from the pid; f starts at field 3.
  return Number(f[11]) + Number(f[12]);
}

/**
 * CPU seconds of a process so far: its own (user + system) and its waited-for children's (the git
 * processes it ran and reaped), from /proc/<pid>/stat.
 */
export function procCpuSplit(pid) {
  const s = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
  // Fields 14-17 (utime, stime, cutime, cstime), counted from the pid; f starts at field 3.
  return { selfS: round((Number(f[11]) + Number(f[12])) / CLK_TCK, 2), childrenS: round((Number(f[13]) + Number(f[14])) / CLK_TCK, 2) };
}

/**
 * Starts `cascade-sync start` in `cwd`; `ready` resolves on its "cascade-sync: ready" line. With
 * `profileDir`, node writes a CPU profile (.cpuprofile) there when the controller exits.
 */
export function startController(bin, cwd, env, profileDir) {
  const node = profileDir ? ["--cpu-prof", `--cpu-prof-dir=${profileDir}`] : [];
  const child = spawn(process.execPath, [...node, bin, "start"], { cwd, env, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (out += d));
  const exited = new Promise((resolve) => child.once("exit", (code) => resolve(code)));
  const ready = new Promise((resolve, reject) => {
    const check = () => {
      if (out.includes("cascade-sync: ready")) return resolve();
      if (child.exitCode !== null) return reject(new Error(`controller exited: ${out.slice(-4000)}`));
      setTimeout(check, 5);
    };
    check();
  });
  return { child, pid: child.pid, ready, exited, output: () => out };
}

/** Stops a controller started by startController (SIGTERM: it commits and pushes what is pending); ms taken. */
export async function stopController(c, timeoutMs = 120_000) {
  const t = performance.now();
  c.child.kill("SIGTERM");
  const timer = setTimeout(() => c.child.kill("SIGKILL"), timeoutMs);
  await c.exited;
  clearTimeout(timer);
  return round(performance.now() - t);
}

/** Kills a controller a failed run left behind (SIGKILL) and waits for it to exit. */
export async function killController(c) {
  c.child.kill("SIGKILL");
  await c.exited.catch(() => undefined);
}

/**
 * The functions that took the most self time in a V8 .cpuprofile, and the same by source file:
 * [{ name, ms, pct }] each, biggest first (idle and GC included, as V8 names them).
 */
export function profileSummary(file, top = 15) {
  const prof = JSON.parse(readFileSync(file, "utf8"));
  const byNode = new Map(prof.nodes.map((n) => [n.id, n]));
  const selfMs = new Map();
  for (let i = 0; i < prof.samples.length; i++) selfMs.set(prof.samples[i], (selfMs.get(prof.samples[i]) ?? 0) + (prof.timeDeltas[i] ?? 0) / 1000);
  const total = [...selfMs.values()].reduce((a, b) => a + b, 0);
  const fns = new Map();
  const files = new Map();
  for (const [id, ms] of selfMs) {
    const cf = byNode.get(id).callFrame;
    const where = cf.url ? cf.url.replace(/^file:\/\//, "").replace(/^.*\/(dist|node_modules)\//, "$1/") : "";
    const fn = `${cf.functionName || "(anonymous)"}${where ? ` ${where}:${cf.lineNumber + 1}` : ""}`;
    fns.set(fn, (fns.get(fn) ?? 0) + ms);
    const key = where || cf.functionName || "(native)";
    files.set(key, (files.get(key) ?? 0) + ms);
  }
  const list = (m) => [...m].sort((a, b) => b[1] - a[1]).slice(0, top).map(([name, ms]) => ({ name, ms: round(ms), pct: round((ms / total) * 100, 1) }));
  return { totalMs: round(total), functions: list(fns), files: list(files) };
}

/** git's object id of a blob with this content. */
export function blobOid(content) {
  return createHash("sha1").update(`blob ${content.length}\0`).update(content).digest("hex");
}

/** A seeded pseudo-random generator in [0, 1). */
export function mulberry32(a) {
  return () => {
    a |= 0;
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Writes the generated tree of `files` files into `dir` with `jobs` child processes (bench/gen-tree.mjs,
 * each a share of the folders) and returns { names (in generation order), bytes, dirs, ms }.
 */
export async function generateTree(dir, files, { jobs = 2, perFolder = 20 } = {}) {
  const t = performance.now();
  const script = path.join(ROOT, "bench", "gen-tree.mjs");
  const parts = await Promise.all(Array.from({ length: jobs }, (_, j) => new Promise((resolve, reject) => {
    execFile(process.execPath, [script, dir, String(files), String(perFolder), String(j), String(jobs)], { maxBuffer: 1 << 30 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`gen-tree failed: ${stderr}`));
      else resolve(JSON.parse(stdout));
    });
  })));
  const names = new Array(files);
  for (const p of parts) for (const [i, n] of p.names) names[i] = n;
  return { names, bytes: parts.reduce((a, p) => a + p.bytes, 0), dirs: parts.reduce((a, p) => a + p.dirs, 0), ms: round(performance.now() - t) };
}

/** `count` distinct names out of `names` spread over the tree (deterministic per seed). */
export function pickFiles(names, count, seed) {
  const rnd = mulberry32(seed);
  const chosen = new Set();
  while (chosen.size < Math.min(count, names.length)) chosen.add((rnd() * names.length) | 0);
  return [...chosen].map((i) => names[i]);
}

/** min / median / max (and the values) of a list of numbers, rounded. */
export function spread(xs, digits = 0) {
  const v = xs.filter((x) => typeof x === "number" && !Number.isNaN(x));
  if (!v.length) return undefined;
  return { min: round(Math.min(...v), digits), median: round(median(v), digits), max: round(Math.max(...v), digits), n: v.length };
}

export function round(x, digits = 0) { const p = 10 ** digits; return Math.round(x * p) / p; }
export function ratio(a, b) { return round(a / b, 2); }
export function median(xs) { return percentile(xs, 50); }
export function mean(xs) { return xs.reduce((a, b) => a + b, 0) / xs.length; }
/** Linear-interpolated percentile p (0-100) of xs. */
export function percentile(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  if (!s.length) return NaN;
  const i = (p / 100) * (s.length - 1);
  const lo = Math.floor(i);
  return s[lo] + (s[Math.min(lo + 1, s.length - 1)] - s[lo]) * (i - lo);
}
export function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

/** A markdown table (first row the header), columns padded. */
export function markdownTable(rows) {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((row) => String(row[c]).length)));
  const line = (row) => `| ${row.map((v, c) => String(v).padEnd(widths[c])).join(" | ")} |`;
  return [line(rows[0]), `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`, ...rows.slice(1).map(line)].join("\n");
}

/**
 * A smart-HTTP git server on 127.0.0.1 serving the bare repositories under `root` through native `git
 * http-backend` (push allowed, no auth): the minimal form of test/helpers/git-http-server.ts.
 * Returns { url(name), close() }.
 */
export async function startGitHttpServer(root, env) {
  const exec = (await sh(env, "git", ["--exec-path"])).stdout.trim();
  const backend = path.join(exec, "git-http-backend");
  const base = { ...env, GIT_PROJECT_ROOT: root, GIT_HTTP_EXPORT_ALL: "1", GIT_CONFIG_COUNT: "1", GIT_CONFIG_KEY_0: "http.receivepack", GIT_CONFIG_VALUE_0: "true", GATEWAY_INTERFACE: "CGI/1.1", SERVER_PROTOCOL: "HTTP/1.1" };
  const children = new Set();
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://127.0.0.1");
    const cgi = { ...base, REQUEST_METHOD: req.method, PATH_INFO: decodeURIComponent(url.pathname), QUERY_STRING: url.search.replace(/^\?/, ""), REMOTE_ADDR: "127.0.0.1" };
    if (req.headers["content-type"]) cgi.CONTENT_TYPE = req.headers["content-type"];
    if (req.headers["content-length"]) cgi.CONTENT_LENGTH = req.headers["content-length"];
    if (typeof req.headers["git-protocol"] === "string") cgi.GIT_PROTOCOL = req.headers["git-protocol"];
    if (req.headers["content-encoding"]) cgi.HTTP_CONTENT_ENCODING = req.headers["content-encoding"];
    const child = spawn(backend, [], { env: cgi, stdio: ["pipe", "pipe", "ignore"] });
    children.add(child);
    child.on("close", () => children.delete(child));
    child.stdin.on("error", () => undefined);
    req.pipe(child.stdin);
    let head = Buffer.alloc(0);
    const onData = (chunk) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) return;
      child.stdout.off("data", onData);
      let status = 200;
      const headers = {};
      for (const l of head.subarray(0, end).toString("latin1").split("\r\n")) {
        const c = l.indexOf(":");
        if (c <= 0) continue;
        const k = l.slice(0, c).trim();
        const v = l.slice(c + 1).trim();
        if (k.toLowerCase() === "status") status = parseInt(v, 10) || 500;
        else headers[k] = v;
      }
      res.writeHead(status, headers);
      res.write(head.subarray(end + 4));
      child.stdout.pipe(res);
    };
    child.stdout.on("data", onData);
    child.on("close", () => { if (!res.headersSent) { res.writeHead(502); res.end(); } });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = server.address().port;
  return {
    url: (name) => `http://127.0.0.1:${port}/${name}`,
    close: () => {
      for (const c of children) c.kill("SIGKILL");
      server.closeAllConnections();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
