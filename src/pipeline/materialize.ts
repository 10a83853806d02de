import { constants as fsConstants } from "node:fs";
import { createHash } from "node:crypto";
import { link, lstat, mkdir, open, rm, symlink } from "node:fs/promises";
import { dirname, join, posix } from "node:path";
import { mapLimit } from "../concurrency.js";
import { stalled, type CascadeError } from "../errors.js";
import type { Repo } from "../git/repo.js";

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
    return await writeEntries(repo, dir, entries, opts);
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

/**
 * Why a single tree entry name must not be written, or undefined when it is safe. Mirrors git's
 * verify_path (and isomorphic-git's tree parser) on every platform: a tree that is harmless on Linux
 * is still refused, so a release never holds a ".git" that a hook running git would obey.
 */
export function unsafeNameReason(name: string): string | undefined {
  if (name === "") return "has an empty path component";
  if (/[/\\\0]/.test(name)) return "has a path separator in a component";
  const hfs = name.replace(HFS_IGNORABLE, "");
  if (hfs === "." || hfs === "..") return `has a "${name}" component`;
  const ntfs = (hfs.split(":")[0] ?? "").toLowerCase().replace(/[. ]+$/, "");
  if (ntfs === ".git" || /^\.?git~[1-9]$/.test(ntfs)) return "has a .git component";
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
    // isomorphic-git refuses the same names while parsing, before we see the tree's entries.
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

function unsafePath(problems: string[]): CascadeError {
  const listed = problems.slice(0, MAX_LISTED_PROBLEMS).join("; ");
  const more = problems.length > MAX_LISTED_PROBLEMS ? ` (and ${problems.length - MAX_LISTED_PROBLEMS} more)` : "";
  return stalled(
    "UnsafePath",
    `the commit's tree holds paths that cannot be deployed safely: ${listed}${more}`,
    "remove or rename these entries on the branch and commit again; nothing was deployed",
  );
}

async function writeEntries(repo: Repo, root: string, entries: PlannedEntry[], opts: MaterializeOptions): Promise<MaterializeCounts> {
  const dirs = new DirMaker(root);
  let linked = 0;
  const place = async (e: PlannedEntry) => {
    opts.signal?.throwIfAborted();
    if (e.kind === "dir" || e.kind === "gitlink") return dirs.ensure(e.path);
    await dirs.ensure(parentOf(e.path));
    if (e.kind === "symlink") return writeSymlink(repo, root, e);
    const mode = e.kind === "executable" ? 0o755 : 0o644;
    if (opts.linkFrom && (await linkUnchanged(opts.linkFrom, root, e, mode))) linked++;
    else await writeRegular(repo, root, e, mode);
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
  const files = entries.filter((e) => e.kind !== "dir").length;
  return { files, linked, written: files - linked };
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

async function writeRegular(repo: Repo, root: string, e: PlannedEntry, mode: number): Promise<void> {
  const data = await repo.readBlob(e.oid);
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
}

async function writeSymlink(repo: Repo, root: string, e: PlannedEntry): Promise<void> {
  // The target is raw bytes (it may point anywhere, as git allows); only the link itself is created.
  const target = await repo.readBlob(e.oid);
  await symlink(target, join(root, e.path)).catch((err: NodeJS.ErrnoException) => {
    throw collision(err, e.path);
  });
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
async function linkUnchanged(from: LinkSource, root: string, e: PlannedEntry, mode: number): Promise<boolean> {
  const before = from.files.get(e.path);
  if (!before || before.oid !== e.oid || before.mode !== e.mode) return false;
  const src = join(from.dir, e.path);
  const st = await lstat(src).catch(() => undefined);
  if (!st?.isFile() || (st.mode & 0o7777) !== mode) return false;
  if ((await fileBlobOid(src, st.size).catch(() => undefined)) !== e.oid) return false;
  try {
    await link(src, join(root, e.path));
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "";
    if (LINK_FALLBACK_CODES.has(code)) return false;
    throw collision(err as NodeJS.ErrnoException, e.path);
  }
}

/** The blob oid of a file's content, streamed (releases may hold large files). */
async function fileBlobOid(path: string, size: number): Promise<string> {
  const hash = createHash("sha1").update(`blob ${size}\0`);
  let read = 0;
  const fh = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
  try {
    for await (const chunk of fh.createReadStream({ autoClose: false }) as AsyncIterable<Buffer>) {
      read += chunk.length;
      hash.update(chunk);
    }
  } finally {
    await fh.close();
  }
  // A size that changed while reading makes the header wrong: report no oid rather than a false one.
  return read === size ? hash.digest("hex") : "";
}
