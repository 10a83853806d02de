import { constants as fsConstants } from "node:fs";
import { createHash, randomBytes } from "node:crypto";
import { link, lstat, mkdir, open, readdir, rename, rm, rmdir, symlink, unlink } from "node:fs/promises";
import { dirname, join, posix } from "node:path";
import { mapLimit } from "../concurrency.js";
import { stalled, type CascadeError } from "../errors.js";
import type { Repo } from "../git/repo.js";
import { MANIFEST_VERSION, type ManifestEntry, type ReleaseManifest } from "../security/manifest.js";

/** A release already on disk whose unchanged files can be hard-linked instead of written. */
export interface LinkSource {
  dir: string;
  /** Its commit's files, as `Repo.flattenTree` returns them. */
  files: Map<string, { mode: string; oid: string }>;
}

/** Options of materializeTree. */
export interface MaterializeOptions {
  linkFrom?: LinkSource;
  /** Stops between files; the call then rejects with the signal's reason and `dir` is removed. */
  signal?: AbortSignal;
}

/** How many entries were materialized, and how: `files` = `linked` + `written`. */
export interface MaterializeCounts {
  /** Regular files, symlinks and gitlinks. */
  files: number;
  /** Regular files hard-linked from `linkFrom`. */
  linked: number;
  written: number;
  /**
   * The release's manifest, from what was written: each written file hashed from the commit's blob,
   * each linked file from the bytes checked against the blob's oid before linking.
   */
  manifest: ReleaseManifest;
}

type EntryKind = "file" | "executable" | "symlink" | "gitlink" | "dir";

interface PlannedEntry {
  /** Relative, "/"-separated, every component checked. */
  path: string;
  kind: EntryKind;
  oid: string;
  /** The mode as the tree holds it, to compare with `linkFrom`. */
  mode: string;
}

const WRITE_CONCURRENCY = 16;
const MAX_LISTED_PROBLEMS = 10;
/** Code points HFS+ ignores in names, so ".g\u200cit" is ".git" there (git's is_hfs_dotgit). */
const HFS_IGNORABLE = /[\u200C-\u200F\u202A-\u202E\u206A-\u206F\uFEFF]/g;
/** link() failures that mean "cannot link here", not "something is wrong": write the file instead. */
const LINK_FALLBACK_CODES = new Set(["EXDEV", "EPERM", "EMLINK", "ENOTSUP", "EOPNOTSUPP", "ENOENT"]);

/**
 * Writes the tree of `commit` into `dir`, which must not exist (its parent is created). Regular
 * files get mode 0644 or 0755 exactly (umask ignored), symlinks are created as symlinks and never
 * followed while writing, gitlinks become empty directories. Blobs are written byte for byte, with no
 * attribute filters. With `opts.linkFrom`, a file whose mode and oid are unchanged is hard-linked from
 * that release once its content there is checked against the oid (anything edited in place is
 * written fresh); where linking is impossible (EXDEV, EPERM) it is written.
 *
 * Every path is checked before anything is created. Rejects with Stalled "UnsafePath" listing the
 * offending paths when one is absolute, contains "." or "..", has a component that is ".git" under any
 * spelling ("GIT", ".git. ", "git~1", NTFS streams, HFS-ignorable characters), or would be written
 * through a symlink or file of the same tree (duplicate names). Rejects with the fs error EEXIST when
 * `dir` exists. On any failure after `dir` was created, `dir` is removed again.
 *
 * Returns the counts of entries materialized, linked and written.
 */
export async function materializeTree(repo: Repo, commit: string, dir: string, opts: MaterializeOptions = {}): Promise<MaterializeCounts> {
  const entries = await planTree(repo, await repo.commitTree(commit));
  await mkdir(dirname(dir), { recursive: true });
  await mkdir(dir);
  try {
    const { linked, recorded } = await writeEntries(repo, dir, entries, opts);
    const files = entries.filter((e) => e.kind !== "dir").length;
    return { files, linked, written: files - linked, manifest: manifestOf(commit, recorded) };
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

/**
 * The manifest of `commit` as its tree says it must be on disk, built from git alone (no release is
 * read): a release deployed before manifests existed is judged against this, never against its own
 * possibly edited files. Rejects with Stalled "UnsafePath" for a tree that could not be deployed, and
 * with the git error when the commit or a blob is missing.
 */
export async function treeManifest(repo: Repo, commit: string): Promise<ReleaseManifest> {
  const entries = await planTree(repo, await repo.commitTree(commit));
  const hashes = new Map<string, Promise<{ size: number; sha256: string } | { target: string }>>();
  const describe = (e: PlannedEntry) => {
    const key = `${e.kind === "symlink" ? "l" : "f"}${e.oid}`;
    let h = hashes.get(key);
    if (!h) {
      h = repo.readContent(e.path, e).then((data) => (e.kind === "symlink" ? { target: data.toString("utf8") } : { size: data.length, sha256: sha256(data) }));
      hashes.set(key, h);
    }
    return h;
  };
  const recorded = await mapLimit(
    entries.filter((e) => e.kind === "file" || e.kind === "executable" || e.kind === "symlink"),
    WRITE_CONCURRENCY,
    async (e): Promise<ManifestEntry> => {
      const h = await describe(e);
      return "target" in h ? { path: e.path, type: "symlink", target: h.target } : { path: e.path, type: "file", mode: fileMode(e.kind), ...h };
    },
  );
  return manifestOf(commit, recorded);
}

/** What restoreReleasePaths did: paths written fresh from the commit, and paths removed. */
export interface RestoreCounts {
  rewritten: string[];
  removed: string[];
}

/**
 * Puts `paths` of the release at `dir` back to what the tree of `commit` holds there: a path the
 * tree has as a file or symlink is written fresh from its blob, any other path is removed (and so
 * are folders it leaves empty that the tree does not have). `dir` must be a real folder, not a
 * symlink (the caller checks).
 *
 * Never writes through anything: a file is written to a new temporary name with
 * O_CREAT|O_EXCL|O_NOFOLLOW and renamed over the old name, so a hard link shared with another release
 * (materializeTree links unchanged files) keeps its bytes, and a symlink at the name is replaced, not
 * followed. A parent folder that became a symlink or a file is removed and made a real folder again.
 * Rejects with Stalled "UnsafePath" when a path is not a safe relative path or the tree is unsafe.
 */
export async function restoreReleasePaths(repo: Repo, commit: string, dir: string, paths: readonly string[]): Promise<RestoreCounts> {
  const problems = paths.filter((p) => !isRelativeInside(p)).map((p) => `${JSON.stringify(p)} is not a relative path inside the release`);
  if (problems.length > 0) throw unsafePath(problems);
  const planned = await planTree(repo, await repo.commitTree(commit));
  const byPath = new Map(planned.map((e) => [e.path, e]));
  const isTreeDir = (p: string) => p === "" || byPath.get(p)?.kind === "dir" || byPath.get(p)?.kind === "gitlink";
  const wanted = (p: string) => {
    const e = byPath.get(p);
    return e && e.kind !== "dir" && e.kind !== "gitlink" ? e : undefined;
  };
  const unique = [...new Set(paths)];
  const removed: string[] = [];
  // Removals first: an added symlink "a" must be gone before "a/x" is written below a real "a".
  for (const p of unique.filter((x) => !wanted(x)).sort(deepestFirst)) {
    // A parent that is no real folder (any more) leads outside: what it holds is not the release's.
    if (!(await underRealDirs(dir, parentOf(p)))) continue;
    if (await removeEntry(join(dir, p))) removed.push(p);
    await removeEmptyParents(dir, parentOf(p), isTreeDir);
  }
  const rewritten: string[] = [];
  const dirs = new RealDirs(dir);
  for (const p of unique.filter((x) => wanted(x)).sort()) {
    const e = wanted(p)!;
    await dirs.ensure(parentOf(p));
    await replaceEntry(repo, dir, e);
    rewritten.push(p);
  }
  return { rewritten, removed: removed.sort() };
}

/**
 * Why a single tree entry name must not be written, or undefined when it is safe. Mirrors git's
 * verify_path with core.protectNTFS and core.protectHFS on every platform: a ".git" in any spelling
 * that some file system would take for ".git" is refused also on Linux, so a release never holds a
 * ".git" that a hook running git would obey. A backslash is a separator only where git takes it for
 * one (Windows, `platform` "win32"); elsewhere it is an ordinary character that git itself commits and
 * checks out, and the sandbox's own commits may hold it (the fault storm, issue 15).
 */
export function unsafeNameReason(name: string, platform: NodeJS.Platform = process.platform): string | undefined {
  if (name === "") return "has an empty path component";
  if ((platform === "win32" ? /[/\\\0]/ : /[/\0]/).test(name)) return "has a path separator in a component";
  const hfs = name.replace(HFS_IGNORABLE, "");
  if (hfs === "." || hfs === "..") return `has a "${name}" component`;
  const ntfs = (hfs.split(":")[0] ?? "").toLowerCase().replace(/[. ]+$/, "");
  if (ntfs === ".git" || /^\.?git~[1-9]$/.test(ntfs)) return "has a .git component";
  return undefined;
}

/**
 * Checks every name in `tree` as materializeTree does (no `..`, absolute paths, `.git` in any
 * spelling, names twice in a folder); rejects with Stalled "UnsafePath" listing all problems. Used
 * before remote commits are written into the sandbox.
 */
export async function assertSafeTree(repo: Repo, tree: string, place: string): Promise<void> {
  const problems: string[] = [];
  await walkTree(repo, tree, "", [], problems);
  if (problems.length > 0) throw unsafePath(problems, place);
}

/**
 * The first existing ancestor folder of `rel` under `root` that is not a real folder (a symlink
 * or a file), so that writing `rel` would go through it; undefined when every existing ancestor is a
 * real folder (missing ones are created as real folders).
 */
export async function linkOnTheWay(root: string, rel: string): Promise<string | undefined> {
  const parts = rel.split("/").slice(0, -1);
  for (let i = 1; i <= parts.length; i++) {
    const p = parts.slice(0, i).join("/");
    const st = await lstat(join(root, p)).catch(() => undefined);
    if (!st) return undefined;
    if (!st.isDirectory()) return p;
  }
  return undefined;
}

/** Reads the whole tree and checks every name; rejects with UnsafePath listing all problems. */
async function planTree(repo: Repo, tree: string): Promise<PlannedEntry[]> {
  const out: PlannedEntry[] = [];
  const problems: string[] = [];
  await walkTree(repo, tree, "", out, problems);
  if (problems.length > 0) throw unsafePath(problems);
  return out;
}

async function walkTree(repo: Repo, tree: string, prefix: string, out: PlannedEntry[], problems: string[]): Promise<void> {
  let entries: Awaited<ReturnType<Repo["readTree"]>>;
  try {
    entries = await repo.readTree(tree);
  } catch (err) {
    // A tree reader that refuses such names itself reports them before we see the tree's entries.
    if ((err as { code?: unknown }).code !== "UnsafeFilepathError") throw err;
    problems.push(`${prefix === "" ? "the root folder" : JSON.stringify(prefix)}: ${(err as Error).message}`);
    return;
  }
  const seen = new Set<string>();
  for (const e of entries) {
    const path = prefix + e.path;
    // A name twice in one folder ("a" a symlink and "a" a folder) would write through the first.
    const why = unsafeNameReason(e.path) ?? (seen.has(e.path) ? "appears twice in its folder" : undefined);
    seen.add(e.path);
    if (why) {
      problems.push(`${JSON.stringify(path)} ${why}`);
      continue;
    }
    const kind = kindOf(e.mode);
    out.push({ path, kind, oid: e.oid, mode: e.mode });
    if (kind === "dir") await walkTree(repo, e.oid, `${path}/`, out, problems);
  }
}

function kindOf(mode: string): EntryKind {
  switch (mode) {
    case "040000":
      return "dir";
    case "100755":
      return "executable";
    case "120000":
      return "symlink";
    case "160000":
      return "gitlink";
    default:
      return "file";
  }
}

function unsafePath(problems: string[], place?: string): CascadeError {
  const listed = problems.slice(0, MAX_LISTED_PROBLEMS).join("; ");
  const more = problems.length > MAX_LISTED_PROBLEMS ? ` (and ${problems.length - MAX_LISTED_PROBLEMS} more)` : "";
  return stalled(
    "UnsafePath",
    `the commit's tree holds paths that cannot be ${place ? `written safely into ${place}` : "deployed safely"}: ${listed}${more}`,
    `remove or rename these entries on the branch and commit again; nothing was ${place ? "written" : "deployed"}`,
  );
}

async function writeEntries(repo: Repo, root: string, entries: PlannedEntry[], opts: MaterializeOptions): Promise<{ linked: number; recorded: ManifestEntry[] }> {
  const dirs = new DirMaker(root);
  let linked = 0;
  const recorded: ManifestEntry[] = [];
  const place = async (e: PlannedEntry) => {
    opts.signal?.throwIfAborted();
    if (e.kind === "dir" || e.kind === "gitlink") return dirs.ensure(e.path);
    await dirs.ensure(parentOf(e.path));
    if (e.kind === "symlink") {
      recorded.push({ path: e.path, type: "symlink", target: await writeSymlink(repo, root, e) });
      return;
    }
    const mode = e.kind === "executable" ? 0o755 : 0o644;
    const hashed = (opts.linkFrom && (await linkUnchanged(opts.linkFrom, root, e, mode))) || undefined;
    if (hashed) linked++;
    const content = hashed ?? (await writeRegular(repo, root, e, mode));
    recorded.push({ path: e.path, type: "file", mode: fileMode(e.kind), ...content });
  };
  // Symlinks last: by the time one exists, every folder and file is already in place, so no
  // write can pass through it even if a check above were wrong.
  await mapLimit(
    entries.filter((e) => e.kind !== "symlink"),
    WRITE_CONCURRENCY,
    place,
  );
  await mapLimit(
    entries.filter((e) => e.kind === "symlink"),
    WRITE_CONCURRENCY,
    place,
  );
  return { linked, recorded };
}

function manifestOf(commit: string, entries: ManifestEntry[]): ReleaseManifest {
  // Code-unit order, as buildManifest sorts.
  return { version: MANIFEST_VERSION, commit, entries: [...entries].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0)) };
}

function fileMode(kind: EntryKind): "100644" | "100755" {
  return kind === "executable" ? "100755" : "100644";
}

function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

function parentOf(path: string): string {
  const parent = posix.dirname(path);
  return parent === "." ? "" : parent;
}

/**
 * Creates folders one component at a time below `root`, each once. A component that already exists
 * must be a real folder: on a case-insensitive file system "A" (a symlink) and "a/x" collide, and
 * mkdir -p would follow the symlink.
 */
class DirMaker {
  private readonly made = new Map<string, Promise<void>>([["", Promise.resolve()]]);

  constructor(private readonly root: string) {}

  ensure(path: string): Promise<void> {
    let done = this.made.get(path);
    if (!done) {
      done = this.create(path);
      this.made.set(path, done);
    }
    return done;
  }

  private async create(path: string): Promise<void> {
    await this.ensure(parentOf(path));
    const abs = join(this.root, path);
    try {
      await mkdir(abs);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const st = await lstat(abs);
      if (!st.isDirectory()) throw unsafePath([`${JSON.stringify(path)} would be written through a ${st.isSymbolicLink() ? "symlink" : "file"}`]);
    }
  }
}

/** Writes a new file (never an existing name); returns the size and SHA-256 of the bytes written. */
async function writeRegular(repo: Repo, root: string, e: PlannedEntry, mode: number): Promise<{ size: number; sha256: string }> {
  const data = await repo.readContent(e.path, e);
  // O_EXCL|O_NOFOLLOW: never open an existing file or a symlink planted at this name.
  const flags = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW;
  const fh = await open(join(root, e.path), flags, mode).catch((err: NodeJS.ErrnoException) => {
    throw collision(err, e.path);
  });
  try {
    await fh.writeFile(data);
    await fh.chmod(mode);
  } finally {
    await fh.close();
  }
  return { size: data.length, sha256: sha256(data) };
}

/** Creates the symlink (never following anything); returns its target as readlink(2) reports it. */
async function writeSymlink(repo: Repo, root: string, e: PlannedEntry): Promise<string> {
  // The target is raw bytes (it may point anywhere, as git allows); only the link itself is created.
  const target = await repo.readBlob(e.oid);
  await symlink(target, join(root, e.path)).catch((err: NodeJS.ErrnoException) => {
    throw collision(err, e.path);
  });
  return target.toString("utf8");
}

function collision(err: NodeJS.ErrnoException, path: string): unknown {
  if (err.code === "EEXIST" || err.code === "ELOOP") {
    return unsafePath([`${JSON.stringify(path)} collides with another entry (a case-insensitive file system?)`]);
  }
  return err;
}

/**
 * Hard-links `e` from the previous release when it is unchanged there; false when it must be written.
 * The old file is hashed first: a hook or a person may have edited it in place, and linking it would
 * ship that edit as if it were the commit's content.
 */
async function linkUnchanged(from: LinkSource, root: string, e: PlannedEntry, mode: number): Promise<{ size: number; sha256: string } | false> {
  const before = from.files.get(e.path);
  if (!before || before.oid !== e.oid || before.mode !== e.mode) return false;
  const src = join(from.dir, e.path);
  const st = await lstat(src).catch(() => undefined);
  if (!st?.isFile() || (st.mode & 0o7777) !== mode) return false;
  const hashed = await fileHashes(src, st.size).catch(() => undefined);
  if (hashed?.oid !== e.oid) return false;
  try {
    await link(src, join(root, e.path));
    return { size: st.size, sha256: hashed.sha256 };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "";
    if (LINK_FALLBACK_CODES.has(code)) return false;
    throw collision(err as NodeJS.ErrnoException, e.path);
  }
}

/** The blob oid and the SHA-256 of a file's content, in one streamed read (releases may hold large files). */
async function fileHashes(path: string, size: number): Promise<{ oid: string; sha256: string }> {
  const hash = createHash("sha1").update(`blob ${size}\0`);
  const sha = createHash("sha256");
  let read = 0;
  const fh = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
  try {
    for await (const chunk of fh.createReadStream({ autoClose: false }) as AsyncIterable<Buffer>) {
      read += chunk.length;
      hash.update(chunk);
      sha.update(chunk);
    }
  } finally {
    await fh.close();
  }
  // A size that changed while reading makes the header wrong: report no oid rather than a false one.
  return read === size ? { oid: hash.digest("hex"), sha256: sha.digest("hex") } : { oid: "", sha256: "" };
}

const REPAIR_TEMP_PREFIX = ".cascade-repair-";

/** A "/"-separated relative path with no empty, "." or ".." component (any other name may be removed from a release). */
function isRelativeInside(p: string): boolean {
  return p !== "" && !p.includes("\0") && !p.startsWith("/") && p.split("/").every((c) => c !== "" && c !== "." && c !== "..");
}

/** True when `rel` and each folder above it below `root` is a real folder (no symlink on the way). */
async function underRealDirs(root: string, rel: string): Promise<boolean> {
  for (let p = rel; p !== ""; p = parentOf(p)) {
    if (!(await lstat(join(root, p)).catch(() => undefined))?.isDirectory()) return false;
  }
  return true;
}

function deepestFirst(a: string, b: string): number {
  return b.split("/").length - a.split("/").length || (a < b ? -1 : a > b ? 1 : 0);
}

/** Removes one name (a folder with what it holds; a symlink itself, never its target); false when it was not there. */
async function removeEntry(abs: string): Promise<boolean> {
  const st = await lstat(abs).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT" || err.code === "ENOTDIR") return undefined;
    throw err;
  });
  if (!st) return false;
  // rm never follows a symlink, at the top or below: only names inside the release go.
  if (st.isDirectory()) await rm(abs, { recursive: true, force: true });
  else await unlink(abs);
  return true;
}

/** Removes `rel` and its parents while each is an empty real folder that the tree does not have. */
async function removeEmptyParents(root: string, rel: string, isTreeDir: (p: string) => boolean): Promise<void> {
  for (let p = rel; !isTreeDir(p); p = parentOf(p)) {
    const abs = join(root, p);
    const st = await lstat(abs).catch(() => undefined);
    if (!st?.isDirectory() || (await readdir(abs)).length > 0) return;
    await rmdir(abs).catch(() => undefined);
  }
}

/**
 * Makes folders below `root` real folders, one component at a time: a component missing is created,
 * one that is a symlink or a file (drift: the tree has a folder there) is removed first, so nothing
 * is ever written through a symlink.
 */
class RealDirs {
  private readonly done = new Set<string>([""]);

  constructor(private readonly root: string) {}

  async ensure(path: string): Promise<void> {
    if (this.done.has(path)) return;
    await this.ensure(parentOf(path));
    const abs = join(this.root, path);
    const st = await lstat(abs).catch((err: NodeJS.ErrnoException) => {
      if (err.code === "ENOENT") return undefined;
      throw err;
    });
    if (st && !st.isDirectory()) await unlink(abs);
    if (!st?.isDirectory()) await mkdir(abs);
    this.done.add(path);
  }
}

/** Writes `e` from its blob under a fresh temporary name beside it, then renames it over the old name. */
async function replaceEntry(repo: Repo, root: string, e: PlannedEntry): Promise<void> {
  const data = await repo.readContent(e.path, e);
  const target = join(root, e.path);
  const temp = join(dirname(target), `${REPAIR_TEMP_PREFIX}${randomBytes(6).toString("hex")}`);
  try {
    if (e.kind === "symlink") await symlink(data, temp);
    else {
      const mode = e.kind === "executable" ? 0o755 : 0o644;
      const fh = await open(temp, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW, mode);
      try {
        await fh.writeFile(data);
        await fh.chmod(mode);
        await fh.sync();
      } finally {
        await fh.close();
      }
    }
    // rename(2) replaces a file or symlink but not a folder: a folder where the tree has a file goes first.
    if ((await lstat(target).catch(() => undefined))?.isDirectory()) await rm(target, { recursive: true, force: true });
    await rename(temp, target);
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
}
