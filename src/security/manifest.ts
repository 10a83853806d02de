/**
 * Release integrity: a manifest (SHA-256, size and mode of each file, target of each symlink, and the
 * commit) is written beside every deployed release, and `health` verifies the live release against it.
 *
 * Walking never follows a symlink below the release root (a symlink is recorded as one, with its
 * target), and files are opened with O_NOFOLLOW, so a symlink planted mid-walk is seen as a change,
 * never read through. Empty folders are not recorded (git does not track them either).
 */
import { createHash } from "node:crypto";
import { closeSync, constants as fsConstants, fstatSync, openSync, readSync } from "node:fs";
import { open, readdir, readFile, readlink } from "node:fs/promises";
import { join } from "node:path";
import { writeFileDurably } from "../fs-util.js";
import { mapLimit } from "../concurrency.js";
import { stalled } from "../errors.js";

/** The manifest format this build writes and reads. */
export const MANIFEST_VERSION = 1;

/** Git's file modes: a file is executable or not, nothing finer is kept (as in git). */
export type FileMode = "100644" | "100755";

/** One recorded path, relative to the release root with `/` separators. */
export type ManifestEntry =
  | { path: string; type: "file"; mode: FileMode; size: number; sha256: string }
  | { path: string; type: "symlink"; target: string };

/** A release's manifest; `entries` are sorted by path. */
export interface ReleaseManifest {
  version: typeof MANIFEST_VERSION;
  commit: string;
  entries: ManifestEntry[];
}

/** Drift between a live release and its manifest; each list sorted. A mode, size, type or target change is `changed`. */
export interface VerifyResult {
  changed: string[];
  added: string[];
  removed: string[];
}

/** Tuning for buildManifest and verifyRelease. */
export interface ManifestOptions {
  /** Files hashed at once; default 16. */
  concurrency?: number;
}

const DEFAULT_CONCURRENCY = 8;
const CHUNK_BYTES = 256 * 1024;
/** Files up to this size are hashed synchronously (see hashFiles). */
const SMALL_FILE_BYTES = 256 * 1024;
/** The longest the event loop is held while hashing small files. */
const SLICE_MS = 10;
const O_NOFOLLOW = fsConstants.O_NOFOLLOW ?? 0;

/** Where the manifest of the release at `releaseDir` lives: beside it, `<releaseDir>.manifest.json`. */
export function manifestPathFor(releaseDir: string): string {
  return `${releaseDir.replace(/[\\/]+$/, "")}.manifest.json`;
}

/**
 * Records every file and symlink under `releaseDir` (the root itself may be a symlink, e.g. `current`;
 * nothing below it is followed). Throws Stalled `ReleaseMissing` when the folder cannot be read and
 * `ReleaseUnexpectedFile` for a fifo, socket or device (a release materialized from git has none) or
 * a file that vanishes or cannot be read while it is hashed.
 */
export async function buildManifest(releaseDir: string, commit: string, opts: ManifestOptions = {}): Promise<ReleaseManifest> {
  const walked = await walk(releaseDir);
  if (walked === undefined) {
    throw stalled("ReleaseMissing", `cannot build a manifest: the release folder ${releaseDir} does not exist`, "deploy the release again");
  }
  const unexpected = (path: string, why: string) => stalled("ReleaseUnexpectedFile", `${path} in ${releaseDir} ${why}`, "remove it and deploy again");
  const other = walked.find((w) => w.kind === "other");
  if (other) throw unexpected(other.path, "is not a regular file, folder or symlink");
  const concurrency = opts.concurrency ?? DEFAULT_CONCURRENCY;
  const files = walked.filter((w) => w.kind === "file");
  const hashes = await hashFiles(files.map((w) => ({ abs: absPath(releaseDir, w.path) })), concurrency);
  const links = walked.filter((w) => w.kind === "symlink");
  const targets = await mapLimit(links, concurrency, (w) => readlink(absPath(releaseDir, w.path)));
  const entries: ManifestEntry[] = [
    ...files.map((w, i): ManifestEntry => {
      const h = hashes[i]!;
      if (!("sha256" in h)) throw unexpected(w.path, "gone" in h ? "vanished while it was hashed" : `cannot be read (${"error" in h ? h.error : "changed"})`);
      return { path: w.path, type: "file", mode: h.mode, size: h.size, sha256: h.sha256 };
    }),
    ...links.map((w, i): ManifestEntry => ({ path: w.path, type: "symlink", target: targets[i]! })),
  ];
  return { version: MANIFEST_VERSION, commit, entries: entries.sort(byPath) };
}

/**
 * Compares the release at `releaseDir` with `manifest`: a path on disk only is `added`, in the
 * manifest only `removed`, and `changed` when its type, mode, size, symlink target or SHA-256 differ
 * (or when it cannot be read, since then nothing proves it intact). Every file whose mode and size
 * match is hashed. A missing release folder gives every path as removed. Never follows a symlink
 * below the root.
 */
export async function verifyRelease(releaseDir: string, manifest: ReleaseManifest, opts: ManifestOptions = {}): Promise<VerifyResult> {
  const onDisk = new Map(((await walk(releaseDir)) ?? []).map((w) => [w.path, w.kind]));
  const expected = new Set(manifest.entries.map((e) => e.path));
  const added = [...onDisk.keys()].filter((p) => !expected.has(p));
  const removed = manifest.entries.filter((e) => !onDisk.has(e.path)).map((e) => e.path);
  const both = manifest.entries.filter((e) => onDisk.has(e.path));
  const changed = both.filter((e) => onDisk.get(e.path) !== e.type).map((e) => e.path);
  const concurrency = opts.concurrency ?? DEFAULT_CONCURRENCY;

  const files = both.filter((e): e is Extract<ManifestEntry, { type: "file" }> => e.type === "file" && onDisk.get(e.path) === "file");
  const hashes = await hashFiles(files.map((e) => ({ abs: absPath(releaseDir, e.path), expect: e })), concurrency);
  files.forEach((e, i) => {
    const h = hashes[i]!;
    if ("gone" in h) removed.push(e.path);
    else if (!("sha256" in h) || h.size !== e.size || h.sha256 !== e.sha256) changed.push(e.path);
  });

  const links = both.filter((e): e is Extract<ManifestEntry, { type: "symlink" }> => e.type === "symlink" && onDisk.get(e.path) === "symlink");
  const targets = await mapLimit(links, concurrency, (e) => readlink(absPath(releaseDir, e.path)).catch(() => undefined));
  links.forEach((e, i) => {
    if (targets[i] !== e.target) changed.push(e.path);
  });
  return { changed: changed.sort(), added: added.sort(), removed: removed.sort() };
}

/** True when verifyRelease found no drift. */
export function isIntact(result: VerifyResult): boolean {
  return result.changed.length === 0 && result.added.length === 0 && result.removed.length === 0;
}

/**
 * Writes `manifest` to `path` atomically (a unique temp file in the same folder, fsync, rename), mode
 * 0600: it is the controller's own record, and hashes of small files such as a .env can be guessed.
 */
export async function writeManifest(path: string, manifest: ReleaseManifest): Promise<void> {
  // One entry per line, so that two manifests can be compared with diff.
  const text = `{"version":${manifest.version},"commit":${JSON.stringify(manifest.commit)},"entries":[\n${manifest.entries.map((e) => JSON.stringify(e)).join(",\n")}\n]}\n`;
  await writeFileDurably(path, text, { mode: 0o600 });
}

/**
 * Reads and checks a manifest written by writeManifest. Throws Stalled `ReleaseManifestMissing` when
 * there is none and `ReleaseManifestInvalid` (naming the first bad entry) when it is not a version-1
 * manifest with well-formed, unique, relative paths.
 */
export async function readManifest(path: string): Promise<ReleaseManifest> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") {
      throw stalled("ReleaseManifestMissing", `the release manifest ${path} does not exist`, "deploy the release again to write its manifest", err);
    }
    throw err;
  }
  const invalid = (what: string) => stalled("ReleaseManifestInvalid", `the release manifest ${path} is invalid: ${what}`, "remove it and deploy the release again");
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw invalid(`not JSON (${(err as Error).message})`);
  }
  const m = data as Partial<ReleaseManifest> | null;
  if (!m || typeof m !== "object") throw invalid("not an object");
  if (m.version !== MANIFEST_VERSION) throw invalid(`version ${String(m.version)}, this cascade-sync reads ${MANIFEST_VERSION}`);
  if (typeof m.commit !== "string" || !/^[0-9a-f]{40}(?:[0-9a-f]{24})?$/.test(m.commit)) throw invalid("the commit is not a commit id");
  if (!Array.isArray(m.entries)) throw invalid("entries is not a list");
  const seen = new Set<string>();
  for (const [i, e] of m.entries.entries()) {
    const problem = entryProblem(e as unknown);
    if (problem) throw invalid(`entry ${i + 1}: ${problem}`);
    if (seen.has(e.path)) throw invalid(`entry ${i + 1}: ${e.path} is listed twice`);
    seen.add(e.path);
  }
  return { version: MANIFEST_VERSION, commit: m.commit, entries: m.entries };
}

function entryProblem(e: unknown): string | undefined {
  const x = e as Record<string, unknown> | null;
  if (!x || typeof x !== "object") return "not an object";
  const p = x.path;
  if (typeof p !== "string" || p === "" || p.startsWith("/") || p.includes("\\") || p.includes("\0") || p.split("/").some((s) => s === "" || s === "." || s === "..")) {
    return `bad path ${JSON.stringify(p)}`;
  }
  if (x.type === "symlink") return typeof x.target === "string" && x.target !== "" ? undefined : "a symlink without a target";
  if (x.type !== "file") return `unknown type ${JSON.stringify(x.type)}`;
  if (x.mode !== "100644" && x.mode !== "100755") return `bad mode ${JSON.stringify(x.mode)}`;
  if (typeof x.size !== "number" || !Number.isSafeInteger(x.size) || x.size < 0) return "bad size";
  if (typeof x.sha256 !== "string" || !/^[0-9a-f]{64}$/.test(x.sha256)) return "bad sha256";
  return undefined;
}

type Kind = "file" | "symlink" | "other";

/** Every non-folder path under `root`, sorted, without following symlinks below it; undefined when `root` cannot be read. */
async function walk(root: string): Promise<Array<{ path: string; kind: Kind }> | undefined> {
  const list = (rel: string) => readdir(rel === "" ? root : join(root, ...rel.split("/")), { withFileTypes: true });
  let rootEntries;
  try {
    rootEntries = await list("");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") return undefined;
    throw err;
  }
  const out: Array<{ path: string; kind: Kind }> = [];
  let level = [{ rel: "", entries: rootEntries }];
  while (level.length > 0) {
    const next: string[] = [];
    for (const { rel, entries } of level) {
      for (const d of entries) {
        const path = rel === "" ? d.name : `${rel}/${d.name}`;
        if (d.isDirectory()) next.push(path);
        else out.push({ path, kind: d.isSymbolicLink() ? "symlink" : d.isFile() ? "file" : "other" });
      }
    }
    // A folder vanishing mid-walk has no paths left to report; any other error is the caller's to see.
    level = await mapLimit(next, 8, async (rel) => ({
      rel,
      entries: await list(rel).catch((err: NodeJS.ErrnoException) => {
        if (err.code === "ENOENT") return [];
        throw err;
      }),
    }));
  }
  // Code-unit order: stable across runs and platforms, which is all the manifest needs.
  return out.sort(byPath);
}

type Hashed = { mode: FileMode; size: number; sha256: string } | { differs: true } | { gone: true } | { error: string };
type HashJob = { abs: string; expect?: { mode: FileMode; size: number } };

/**
 * Hashes files: those up to SMALL_FILE_BYTES synchronously, in slices of at most SLICE_MS between
 * which the event loop runs (for many small files this is several times faster than a thread-pool
 * round trip per open, fstat, read and close), larger ones streamed with `concurrency` in flight.
 */
async function hashFiles(jobs: readonly HashJob[], concurrency: number): Promise<Hashed[]> {
  const out = new Array<Hashed>(jobs.length);
  const large: number[] = [];
  const buf = Buffer.allocUnsafe(SMALL_FILE_BYTES + 1);
  let sliceStart = performance.now();
  for (const [i, job] of jobs.entries()) {
    const h = hashSmallFileSync(job, buf);
    if (h === undefined) large.push(i);
    else out[i] = h;
    if (performance.now() - sliceStart > SLICE_MS) {
      await new Promise((resolve) => setImmediate(resolve));
      sliceStart = performance.now();
    }
  }
  await mapLimit(large, concurrency, async (i) => {
    out[i] = await hashFile(jobs[i]!);
  });
  return out;
}

/** hashFile for a file of at most SMALL_FILE_BYTES, read whole into `buf`; undefined for a larger file. */
function hashSmallFileSync(job: HashJob, buf: Buffer): Hashed | undefined {
  let fd: number;
  try {
    fd = openSync(job.abs, fsConstants.O_RDONLY | O_NOFOLLOW);
  } catch (err) {
    return openFailure(err);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) return { error: "not a regular file" };
    const mode = modeOf(st.mode);
    if (job.expect && (job.expect.mode !== mode || job.expect.size !== st.size)) return { differs: true };
    if (st.size > SMALL_FILE_BYTES) return undefined;
    let size = 0;
    // One byte more than fstat said, so that a file grown since is noticed and left to the streaming path.
    for (let n; size < buf.length && (n = readSync(fd, buf, size, buf.length - size, null)) > 0; ) size += n;
    if (size > SMALL_FILE_BYTES) return undefined;
    return { mode, size, sha256: createHash("sha256").update(buf.subarray(0, size)).digest("hex") };
  } catch (err) {
    return { error: (err as NodeJS.ErrnoException).code ?? String(err) };
  } finally {
    closeSync(fd);
  }
}

/**
 * Hashes one regular file, opened with O_NOFOLLOW and read in chunks. With `expect`, stops before
 * reading when the mode or size already differ. Returns `{ gone }` when the file vanished and
 * `{ error }` when it is not a regular file (or became a symlink) or cannot be read.
 */
async function hashFile(job: HashJob): Promise<Hashed> {
  let fh;
  try {
    fh = await open(job.abs, fsConstants.O_RDONLY | O_NOFOLLOW);
  } catch (err) {
    return openFailure(err);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) return { error: "not a regular file" };
    const mode = modeOf(st.mode);
    if (job.expect && (job.expect.mode !== mode || job.expect.size !== st.size)) return { differs: true };
    const hash = createHash("sha256");
    const buf = Buffer.allocUnsafe(CHUNK_BYTES);
    let size = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      size += bytesRead;
    }
    // The file may have changed since fstat; the bytes read are what was hashed, and their count is the size.
    return { mode, size, sha256: hash.digest("hex") };
  } catch (err) {
    return { error: (err as NodeJS.ErrnoException).code ?? String(err) };
  } finally {
    await fh.close();
  }
}

function openFailure(err: unknown): Hashed {
  const code = (err as NodeJS.ErrnoException).code;
  // ELOOP: O_NOFOLLOW met a symlink where the walk saw a file.
  return code === "ENOENT" ? { gone: true } : { error: code ?? String(err) };
}

function modeOf(mode: number): FileMode {
  return mode & 0o111 ? "100755" : "100644";
}

function absPath(root: string, rel: string): string {
  return join(root, ...rel.split("/"));
}

function byPath(a: { path: string }, b: { path: string }): number {
  return a.path < b.path ? -1 : a.path > b.path ? 1 : 0;
}
