/**
 * The git index (`.git/index`) in git's own on-disk format (Documentation/technical/index-format.txt,
 * read-cache.c): versions 2 and 3 read and written, version 4 (prefix-compressed paths) read and written,
 * split index and other required extensions refused. isomorphic-git cannot read v4 or a split index and
 * writes the index without `index.lock`, so cascade-sync owns this file format.
 *
 * Extension policy on write: only `REUC` (resolve-undo) is written back; every other extension is
 * dropped. `TREE` (cache-tree), `UNTR` (untracked cache), `FSMN` (fsmonitor), `EOIE`/`IEOT` (entry offset
 * tables) describe the entries or the work tree as they were and may be stale after our change; all are
 * optional caches git rebuilds on its own. `REUC` is keyed by path and records how past conflicts were
 * resolved; changing stage-0 entries does not invalidate it. Unknown optional (upper-case) extensions are
 * dropped because we cannot know they stay valid. Required (lower-case) extensions, `link` (split index)
 * and `sdir` (sparse index) among them, make readIndex throw UnsupportedIndexError.
 *
 * Cost at scale: the last index read or written is kept as the file's bytes plus where each entry and
 * path sits (EntryBase; entry objects are made only when asked for), keyed by the file's size and
 * SHA-1 trailer. An unchanged index is read by checking 20 bytes, and a write that only changes
 * existing entries (a commit of modified files) patches their fixed-size fields in a copy of the kept
 * bytes instead of encoding 100,000 entries again; the result is byte for byte what a full write gives.
 */
import { isUtf8 } from "node:buffer";
import { createHash } from "node:crypto";
import type * as fs from "node:fs";
import { open, type FileHandle } from "node:fs/promises";
import { join, resolve } from "node:path";
import { CascadeError, InternalError } from "../errors.js";
import { acquireLock, type Lock, type LockOptions } from "./lockfile.js";

/** Per-entry flags as stored in the index. */
export interface IndexEntryFlags {
  /** CE_VALID: `git update-index --assume-unchanged`. */
  assumeValid: boolean;
  /** The entry carries the v3 extended flags (skipWorktree or intentToAdd); recomputed on write. */
  extended: boolean;
  /** 0 for a normal entry; 1 (base), 2 (ours), 3 (theirs) for an unresolved merge conflict. */
  stage: 0 | 1 | 2 | 3;
  /** CE_SKIP_WORKTREE: sparse checkout leaves this path out of the work tree. */
  skipWorktree: boolean;
  /** CE_INTENT_TO_ADD: `git add -N`. */
  intentToAdd: boolean;
}

/** One index entry; the stat fields are 32-bit truncated exactly as git stores them. */
export interface IndexEntry {
  /** Repository-relative, `/`-separated, UTF-8. */
  path: string;
  /** 0o100644, 0o100755, 0o120000 (symlink) or 0o160000 (gitlink). */
  mode: number;
  /** 40-hex blob (or commit, for a gitlink) id. */
  oid: string;
  size: number;
  ctimeSec: number;
  ctimeNsec: number;
  mtimeSec: number;
  mtimeNsec: number;
  dev: number;
  ino: number;
  uid: number;
  gid: number;
  flags: IndexEntryFlags;
}

/** An extension block kept as raw bytes. */
export interface IndexExtension {
  /** Four ASCII characters, e.g. `TREE`, `REUC`. */
  signature: string;
  data: Buffer;
}

/** A file timestamp as git keeps it: seconds (32-bit) and nanoseconds. */
export interface IndexTimestamp {
  sec: number;
  nsec: number;
}

/** An index in memory. */
export interface GitIndex {
  /** Format version of the file read (2 for a new index). writeIndex keeps 4, else writes 2 or 3. */
  version: 2 | 3 | 4;
  /**
   * Stage-0 entries by path. For an index read from disk this is a copy-on-write view of entries
   * shared with other indexes read from the same file (it behaves as a Map); replace entries with
   * `set`, never change one in place.
   */
  entries: Map<string, IndexEntry>;
  /** Unresolved conflict entries (stages 1-3), preserved on write unless `entries` has the path. */
  conflicts: IndexEntry[];
  /** Every extension read, raw and in file order; writeIndex writes back only `REUC` (module doc). */
  extensions: IndexExtension[];
  /** The index file's mtime when read or last written by us; null when there is no index file. */
  mtime: IndexTimestamp | null;
}

/**
 * The index uses a feature cascade-sync cannot handle safely (split index, sparse index, another
 * required extension, an unknown entry format or version). Stalled (reason `UnsupportedIndex`): a
 * person must convert the index; the message says how.
 */
export class UnsupportedIndexError extends CascadeError {
  constructor(
    readonly file: string,
    problem: string,
    hint: string,
  ) {
    super("Stalled", "UnsupportedIndex", `cannot use the git index ${file}: ${problem}`, { hint });
  }
}

/**
 * The index file is damaged: wrong signature, truncated, or its SHA-1 trailer does not match its
 * content. Stalled (reason `IndexCorrupt`); the hint says how to rebuild it from HEAD.
 */
export class CorruptIndexError extends CascadeError {
  constructor(
    readonly file: string,
    problem: string,
  ) {
    super("Stalled", "IndexCorrupt", `the git index ${file} is corrupt: ${problem}`, {
      hint: `rebuild it from HEAD without touching your files: \`rm ${file} && git reset\` in the work tree`,
    });
  }
}

const HEADER_SIZE = 12;
const HASH_SIZE = 20;
const FIXED_SIZE = 62; // stat data (40) + oid (20) + flags (2)
const EXTENDED_FIXED_SIZE = 64;
const NAME_MASK = 0x0fff;
const F_ASSUME_VALID = 0x8000;
const F_EXTENDED = 0x4000;
const F2_SKIP_WORKTREE = 0x4000;
const F2_INTENT_TO_ADD = 0x2000;
const F2_KNOWN = F2_SKIP_WORKTREE | F2_INTENT_TO_ADD;
const MODE_GITLINK = 0o160000;
const MODE_SYMLINK = 0o120000;
const VALID_MODES = new Set([0o100644, 0o100755, MODE_SYMLINK, MODE_GITLINK]);
/** Extensions written back unchanged (module doc: extension policy). */
const KEPT_EXTENSIONS = new Set(["REUC"]);

/** Path of the index file of `gitdir`. */
function indexPath(gitdir: string): string {
  return join(gitdir, "index");
}

/** An index with no entries, as readIndex returns when `.git/index` does not exist. */
export function emptyIndex(): GitIndex {
  return { version: 2, entries: new Map(), conflicts: [], extensions: [], mtime: null };
}

function timestampOf(stats: fs.BigIntStats): IndexTimestamp {
  const [sec, nsec] = splitNs(stats.mtimeNs);
  return { sec, nsec };
}

/** Seconds (32-bit truncated, as git's `(unsigned int)st_mtime`) and nanoseconds of a bigint ns time. */
function splitNs(ns: bigint): [number, number] {
  let sec = ns / 1_000_000_000n;
  let nsec = ns % 1_000_000_000n;
  if (nsec < 0n) {
    // Before 1970: C's timespec keeps tv_nsec in [0, 1e9) and floors tv_sec.
    nsec += 1_000_000_000n;
    sec -= 1n;
  }
  return [Number(BigInt.asUintN(32, sec)), Number(nsec)];
}

function u32(n: bigint): number {
  return Number(BigInt.asUintN(32, n));
}

/**
 * Reads `<gitdir>/index`. Returns an empty index (version 2, mtime null) when the file does not exist.
 *
 * The index returned shares its unchanged entries with the last index this process read or wrote for
 * the same file (see EntryMap): reading an unchanged 100k-entry index costs a 20-byte read.
 *
 * Throws CorruptIndexError when the file is truncated, malformed, or its SHA-1 trailer does not match
 * (an all-zero trailer, written by git's `index.skipHash`, is accepted); UnsupportedIndexError for a
 * split index (`link`), a sparse index (`sdir`), any other required extension, an unknown version or
 * unknown extended entry flags, or a path that is not valid UTF-8.
 */
export async function readIndex(gitdir: string): Promise<GitIndex> {
  const file = indexPath(gitdir);
  let handle: FileHandle;
  try {
    handle = await open(file, "r");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return emptyIndex();
    throw err;
  }
  let buf: Buffer;
  let stats: fs.BigIntStats;
  try {
    // fstat and read through one descriptor: the mtime belongs to exactly the bytes we parse, even if a
    // native git renames a new index into place meanwhile.
    stats = await handle.stat({ bigint: true });
    const known = parsed.get(resolve(file));
    if (known && BigInt(known.size) === stats.size) {
      // The trailer is the SHA-1 of everything before it: equal trailers, equal files. Reading 20
      // bytes instead of parsing 100k entries is what keeps a one-file commit cheap in a big tree.
      const tail = Buffer.alloc(HASH_SIZE);
      const { bytesRead } = await handle.read(tail, 0, HASH_SIZE, known.size - HASH_SIZE);
      if (bytesRead === HASH_SIZE && tail.equals(known.trailer)) return fromSnapshot(known, timestampOf(stats));
    }
    buf = await handle.readFile();
  } finally {
    await handle.close();
  }
  const p = parseFile(buf, file);
  remember(file, buf, p);
  return { ...toIndex(p), mtime: timestampOf(stats) };
}

/**
 * The stage-0 entries of one index file, kept compact: the file's own bytes (never changed once a base
 * holds them), where each entry starts, and its path's UTF-8 bytes. An IndexEntry object is made only
 * when one is asked for, so that a 100,000-entry index costs a few buffers outside the JS heap (about
 * 15 MB) instead of 400,000 objects and strings for every garbage collection to walk. The entries are
 * in git's order (by path bytes), so a path is found by binary search.
 */
class EntryBase {
  static readonly EMPTY = new EntryBase(Buffer.alloc(0), new Uint32Array(0), Buffer.alloc(0), new Uint32Array(1));

  constructor(
    /** The index file's bytes. */
    readonly bytes: Buffer,
    /** Byte offset in `bytes` of each entry, in file order. */
    readonly offsets: Uint32Array,
    /** The entries' paths, UTF-8, one after the other. */
    readonly names: Buffer,
    /** Where entry i's path starts in `names`; entry i+1's start is where it ends (count + 1 values). */
    readonly nameStarts: Uint32Array,
  ) {}

  get length(): number {
    return this.offsets.length;
  }

  /** The ordinal of `path`, or -1 when it has no entry. */
  find(path: string): number {
    if (keyScratch.length < path.length * 3) keyScratch = Buffer.allocUnsafe(path.length * 3);
    const n = keyScratch.write(path, 0, keyScratch.length, "utf8");
    const { names, nameStarts } = this;
    let lo = 0;
    let hi = this.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const c = compareBytes(names, nameStarts[mid]!, nameStarts[mid + 1]!, keyScratch, 0, n);
      if (c === 0) return mid;
      if (c < 0) lo = mid + 1;
      else hi = mid - 1;
    }
    return -1;
  }

  path(i: number): string {
    return this.names.toString("utf8", this.nameStarts[i]!, this.nameStarts[i + 1]!);
  }

  entry(i: number, path = this.path(i)): IndexEntry {
    return entryAt(this.bytes, this.offsets[i]!, path);
  }

  /** Whether entry i carries the v3 extended flags. */
  extended(i: number): boolean {
    return (this.bytes.readUInt16BE(this.offsets[i]! + 60) & F_EXTENDED) !== 0;
  }
}

/** A path being looked up, UTF-8 encoded (reused: lookups are synchronous). */
let keyScratch = Buffer.allocUnsafe(1024);

/** memcmp order, shorter first on a common prefix (git's order of paths); <0, 0 or >0. */
function compareBytes(a: Buffer, aStart: number, aEnd: number, b: Buffer, bStart: number, bEnd: number): number {
  const n = Math.min(aEnd - aStart, bEnd - bStart);
  for (let k = 0; k < n; k++) {
    const d = a[aStart + k]! - b[bStart + k]!;
    if (d !== 0) return d;
  }
  return aEnd - aStart - (bEnd - bStart);
}

/** The entry whose fixed fields start at `off` in `buf`. */
function entryAt(buf: Buffer, off: number, path: string): IndexEntry {
  const flags = buf.readUInt16BE(off + 60);
  const flags2 = flags & F_EXTENDED ? buf.readUInt16BE(off + 62) : 0;
  return {
    path,
    mode: buf.readUInt32BE(off + 24),
    oid: buf.toString("hex", off + 40, off + 60),
    size: buf.readUInt32BE(off + 36),
    ctimeSec: buf.readUInt32BE(off),
    ctimeNsec: buf.readUInt32BE(off + 4),
    mtimeSec: buf.readUInt32BE(off + 8),
    mtimeNsec: buf.readUInt32BE(off + 12),
    dev: buf.readUInt32BE(off + 16),
    ino: buf.readUInt32BE(off + 20),
    uid: buf.readUInt32BE(off + 28),
    gid: buf.readUInt32BE(off + 32),
    flags: {
      assumeValid: (flags & F_ASSUME_VALID) !== 0,
      extended: (flags & F_EXTENDED) !== 0,
      stage: ((flags >> 12) & 3) as 0 | 1 | 2 | 3,
      skipWorktree: (flags2 & F2_SKIP_WORKTREE) !== 0,
      intentToAdd: (flags2 & F2_INTENT_TO_ADD) !== 0,
    },
  };
}

/**
 * The last index parsed or written per index file, identified by its size and SHA-1 trailer. Immutable:
 * indexes handed out share its `base`; callers replace entries (`entries.set`), never change one in place.
 */
interface Snapshot extends Parsed {
  size: number;
  trailer: Buffer;
}
const parsed = new Map<string, Snapshot>();

/** What parseFile finds in an index file. */
interface Parsed {
  version: 2 | 3 | 4;
  base: EntryBase;
  conflicts: IndexEntry[];
  extensions: IndexExtension[];
  /** Some entry carries the v3 extended flags. */
  anyExtended: boolean;
  /** Some entry carries the extended flags without needing them (git may write that; we never do). */
  looseExtended: boolean;
}

/** Keeps what `file` (whose bytes are `buf`, held by `p.base`) holds, for the next readIndex and writeIndex. */
function remember(file: string, buf: Buffer, p: Parsed): void {
  const trailer = buf.subarray(buf.length - HASH_SIZE);
  // An all-zero trailer (index.skipHash) does not identify the content: never reuse it.
  if (trailer.every((b) => b === 0)) parsed.delete(resolve(file));
  else parsed.set(resolve(file), { ...p, size: buf.length, trailer: Buffer.from(trailer), conflicts: [...p.conflicts], extensions: [...p.extensions] });
}

function toIndex(p: Parsed): GitIndex {
  return { version: p.version, entries: new EntryMap(p.base), conflicts: [...p.conflicts], extensions: [...p.extensions], mtime: null };
}

function fromSnapshot(s: Snapshot, mtime: IndexTimestamp): GitIndex {
  return { ...toIndex(s), mtime };
}

/**
 * The stage-0 entries of an index read from disk: a copy-on-write view of a shared EntryBase plus this
 * index's own changes, so that handing out a 100k-entry index, and changing a few entries of it, costs
 * what the change costs. It behaves as a Map<string, IndexEntry>, except that an entry deleted and set
 * again keeps its place in iteration order (nothing depends on that order: writeIndex sorts), and that
 * `get` makes a new IndexEntry each time for an entry of the base.
 */
class EntryMap implements Map<string, IndexEntry> {
  /** This map's changes to `base`: a new or replaced entry, or null for a deleted one. */
  readonly own = new Map<string, IndexEntry | null>();
  private count: number;

  constructor(public base: EntryBase) {
    this.count = base.length;
  }

  get [Symbol.toStringTag](): string {
    return "Map";
  }

  get size(): number {
    return this.count;
  }

  get(key: string): IndexEntry | undefined {
    const mine = this.own.get(key);
    if (mine !== undefined) return mine ?? undefined;
    const i = this.base.find(key);
    return i < 0 ? undefined : this.base.entry(i, key);
  }

  has(key: string): boolean {
    const mine = this.own.get(key);
    return mine !== undefined ? mine !== null : this.base.find(key) >= 0;
  }

  set(key: string, value: IndexEntry): this {
    if (!this.has(key)) this.count++;
    this.own.set(key, value);
    return this;
  }

  delete(key: string): boolean {
    if (!this.has(key)) return false;
    this.count--;
    if (this.base.find(key) >= 0) this.own.set(key, null);
    else this.own.delete(key);
    return true;
  }

  clear(): void {
    this.base = EntryBase.EMPTY;
    this.own.clear();
    this.count = 0;
  }

  /** Makes `base` this map's content and forgets the changes (after they were written into it). */
  rebase(base: EntryBase): void {
    this.base = base;
    this.own.clear();
    this.count = base.length;
  }

  *entries(): MapIterator<[string, IndexEntry]> {
    const base = this.base;
    for (let i = 0; i < base.length; i++) {
      const path = base.path(i);
      const mine = this.own.size ? this.own.get(path) : undefined;
      if (mine === undefined) yield [path, base.entry(i, path)];
      else if (mine !== null) yield [path, mine];
    }
    for (const [k, v] of this.own) if (v !== null && base.find(k) < 0) yield [k, v];
  }

  *keys(): MapIterator<string> {
    for (const [k] of this.entries()) yield k;
  }

  *values(): MapIterator<IndexEntry> {
    for (const [, v] of this.entries()) yield v;
  }

  [Symbol.iterator](): MapIterator<[string, IndexEntry]> {
    return this.entries();
  }

  forEach(fn: (value: IndexEntry, key: string, map: Map<string, IndexEntry>) => void, thisArg?: unknown): void {
    for (const [k, v] of this.entries()) fn.call(thisArg, v, k, this);
  }
}

/**
 * Parses index file content (`file` only names it in errors). Returns the index with `mtime` null; it
 * keeps `buf`, which must not change afterwards. Throws CorruptIndexError / UnsupportedIndexError as
 * readIndex does.
 */
export function parseIndex(buf: Buffer, file = "index"): GitIndex {
  return toIndex(parseFile(buf, file));
}

/**
 * Reads the entries of index file content `buf` (kept by the result's base). `written`: the bytes are
 * what writeIndex just made, so the checksum and the paths need no checking.
 */
function parseFile(buf: Buffer, file: string, written = false): Parsed {
  if (buf.length < HEADER_SIZE + HASH_SIZE) throw new CorruptIndexError(file, `only ${buf.length} bytes`);
  if (buf.toString("latin1", 0, 4) !== "DIRC") throw new CorruptIndexError(file, "bad signature (not DIRC)");
  const version = buf.readUInt32BE(4);
  if (version !== 2 && version !== 3 && version !== 4) {
    throw new UnsupportedIndexError(file, `index format version ${version}`, "run `git update-index --index-version 2`");
  }
  const bodyEnd = buf.length - HASH_SIZE;
  const trailer = buf.subarray(bodyEnd);
  if (!written && trailer.some((b) => b !== 0)) {
    const actual = createHash("sha1").update(buf.subarray(0, bodyEnd)).digest();
    if (!actual.equals(trailer)) {
      throw new CorruptIndexError(
        file,
        `SHA-1 checksum mismatch (trailer ${trailer.toString("hex")}, content hashes to ${actual.toString("hex")})`,
      );
    }
  }
  const count = buf.readUInt32BE(8);
  const offsets = new Uint32Array(count);
  const nameStarts = new Uint32Array(count + 1);
  // Stage-0 paths, one after the other; v4 paths are longer than their compressed bytes.
  let names = Buffer.allocUnsafe(Math.max(bodyEnd, 64));
  let used = 0;
  let kept = 0;
  const conflicts: IndexEntry[] = [];
  let anyExtended = false;
  let looseExtended = false;
  let off = HEADER_SIZE;
  // v4: the previous path's bytes, to which the next entry's suffix is appended.
  let scratch = Buffer.allocUnsafe(4096);
  let prevLen = 0;

  for (let i = 0; i < count; i++) {
    if (off + FIXED_SIZE > bodyEnd) throw new CorruptIndexError(file, `entry ${i} of ${count} runs past the end`);
    const flags = buf.readUInt16BE(off + 60);
    let flags2 = 0;
    let nameStart = off + FIXED_SIZE;
    if (flags & F_EXTENDED) {
      flags2 = buf.readUInt16BE(off + 62);
      if (flags2 & ~F2_KNOWN) {
        throw new UnsupportedIndexError(
          file,
          `unknown index entry format 0x${(flags2 << 16).toString(16).padStart(8, "0")}`,
          "this index was written by a newer git; run `git update-index --index-version 2` with it",
        );
      }
      anyExtended = true;
      if (flags2 === 0) looseExtended = true;
      nameStart = off + EXTENDED_FIXED_SIZE;
    }
    // The path's bytes are src[start .. end).
    let src: Buffer;
    let start: number;
    let end: number;
    let next: number;
    if (version === 4) {
      // Prefix compression: varint N = bytes to drop from the end of the previous path, then the
      // NUL-terminated suffix (git varint.c: each continuation adds 1 before shifting).
      let p = nameStart;
      let c = buf[p++] ?? 0;
      let strip = c & 127;
      while (c & 128) {
        c = buf[p++] ?? 0;
        strip = (strip + 1) * 128 + (c & 127);
      }
      const nul = buf.indexOf(0, p);
      if (nul < 0 || nul >= bodyEnd || strip > prevLen) throw new CorruptIndexError(file, `entry ${i}: bad compressed path`);
      const keep = prevLen - strip;
      const len = keep + (nul - p);
      if (len > scratch.length) {
        const bigger = Buffer.allocUnsafe(Math.max(len, scratch.length * 2));
        scratch.copy(bigger, 0, 0, keep);
        scratch = bigger;
      }
      buf.copy(scratch, keep, p, nul);
      prevLen = len;
      [src, start, end] = [scratch, 0, len];
      next = nul + 1;
    } else {
      let len = flags & NAME_MASK;
      if (len === NAME_MASK) len = buf.indexOf(0, nameStart + NAME_MASK) - nameStart;
      if (len < 0 || nameStart + len >= bodyEnd || buf[nameStart + len] !== 0) {
        throw new CorruptIndexError(file, `entry ${i}: path not NUL-terminated`);
      }
      [src, start, end] = [buf, nameStart, nameStart + len];
      // 1-8 NULs pad the entry to a multiple of 8 bytes.
      next = off + ((nameStart - off + len + 8) & ~7);
    }
    if (!written) checkUtf8(src, start, end, file);
    if ((flags >> 12) & 3) {
      conflicts.push(entryAt(buf, off, src.toString("utf8", start, end)));
    } else {
      // git dies on an index out of order ("unordered stage entries in index"); lookups rely on the order.
      if (kept > 0) {
        const c = compareBytes(names, nameStarts[kept - 1]!, used, src, start, end);
        if (c >= 0) {
          const path = JSON.stringify(src.toString("utf8", start, end));
          throw new CorruptIndexError(file, c === 0 ? `entry ${i}: ${path} is listed twice` : `entry ${i}: ${path} is out of order`);
        }
      }
      if (used + (end - start) > names.length) {
        const bigger = Buffer.allocUnsafe(Math.max(names.length * 2, used + (end - start)));
        names.copy(bigger, 0, 0, used);
        names = bigger;
      }
      used += src.copy(names, used, start, end);
      offsets[kept] = off;
      nameStarts[++kept] = used;
    }
    off = next;
  }

  const extensions: IndexExtension[] = [];
  while (off < bodyEnd) {
    if (off + 8 > bodyEnd) throw new CorruptIndexError(file, "truncated extension header");
    const signature = buf.toString("latin1", off, off + 4);
    const size = buf.readUInt32BE(off + 4);
    if (off + 8 + size > bodyEnd) throw new CorruptIndexError(file, `extension ${signature} runs past the end`);
    if (signature === "link") {
      throw new UnsupportedIndexError(
        file,
        "it is a split index (core.splitIndex), which cascade-sync cannot read",
        "run `git update-index --no-split-index` (and `git config core.splitIndex false` so it stays unsplit)",
      );
    }
    if (signature === "sdir") {
      throw new UnsupportedIndexError(
        file,
        "it is a sparse index (index.sparse), which cascade-sync cannot read",
        "run `git sparse-checkout init --no-sparse-index` (or `git sparse-checkout disable`)",
      );
    }
    const first = signature.charCodeAt(0);
    if (first < 0x41 || first > 0x5a) {
      // git: an extension whose signature does not start with A-Z is required for correctness.
      throw new UnsupportedIndexError(
        file,
        `it uses the required extension ${JSON.stringify(signature)} that cascade-sync does not understand`,
        "run `git update-index --index-version 2 --no-split-index` with a git that wrote it",
      );
    }
    extensions.push({ signature, data: Buffer.from(buf.subarray(off + 8, off + 8 + size)) });
    off += 8 + size;
  }
  // The paths are copied into a buffer of their own size: the one filled is as large as the file.
  const base = new EntryBase(buf, offsets.slice(0, kept), Buffer.from(names.subarray(0, used)), nameStarts.slice(0, kept + 1));
  return { version, base, conflicts, extensions, anyExtended, looseExtended };
}

function checkUtf8(buf: Buffer, start: number, end: number, file: string): void {
  if (isUtf8(buf.subarray(start, end))) return;
  throw new UnsupportedIndexError(
    file,
    `the path ${JSON.stringify(buf.toString("utf8", start, end))} is not valid UTF-8`,
    "rename the file to a UTF-8 name (git mv), then let cascade-sync continue",
  );
}

/**
 * What the index keeps of a file's lstat: a BigIntStats, or the compact copy fileStats() makes of
 * one (about a quarter of its memory: a batch of 30,000 changes keeps one per file).
 */
export type FileStats = Pick<fs.BigIntStats, "dev" | "ino" | "mode" | "uid" | "gid" | "size" | "ctimeNs" | "mtimeNs" | "isFile" | "isSymbolicLink" | "isDirectory">;

/** A compact copy of the fields of `st` that the index uses. */
export function fileStats(st: fs.BigIntStats): FileStats {
  return new CompactStats(st.dev, st.ino, st.mode, st.uid, st.gid, st.size, st.ctimeNs, st.mtimeNs);
}

class CompactStats implements FileStats {
  constructor(
    readonly dev: bigint,
    readonly ino: bigint,
    readonly mode: bigint,
    readonly uid: bigint,
    readonly gid: bigint,
    readonly size: bigint,
    readonly ctimeNs: bigint,
    readonly mtimeNs: bigint,
  ) {}

  isFile(): boolean {
    return (this.mode & 0o170000n) === 0o100000n;
  }

  isSymbolicLink(): boolean {
    return (this.mode & 0o170000n) === 0o120000n;
  }

  isDirectory(): boolean {
    return (this.mode & 0o170000n) === 0o040000n;
  }
}

/**
 * Builds an index entry from `fs.lstat(file, { bigint: true })` exactly as git's fill_stat_data does:
 * seconds, dev, ino, uid, gid and size truncated to 32 bits, nanoseconds kept. `mode` defaults to what
 * git derives from the stat (symlink 0o120000, directory 0o160000, else 0o100755 when the owner may
 * execute, 0o100644 otherwise); pass it to keep a recorded mode when core.filemode is false.
 *
 * Returns a stage-0 entry with no flags set. Throws nothing.
 */
export function entryFromStat(path: string, stats: FileStats, oid: string, mode?: number): IndexEntry {
  const [ctimeSec, ctimeNsec] = splitNs(stats.ctimeNs);
  const [mtimeSec, mtimeNsec] = splitNs(stats.mtimeNs);
  return {
    path,
    mode: mode ?? modeFromStat(stats),
    oid,
    size: u32(stats.size),
    ctimeSec,
    ctimeNsec,
    mtimeSec,
    mtimeNsec,
    dev: u32(stats.dev),
    ino: u32(stats.ino),
    uid: u32(stats.uid),
    gid: u32(stats.gid),
    flags: { assumeValid: false, extended: false, stage: 0, skipWorktree: false, intentToAdd: false },
  };
}

/**
 * git's create_ce_mode: the index mode for a file of this lstat. Returns 0o120000 for a symlink, 0o160000
 * for a directory (a gitlink), else 0o100755 or 0o100644 by the owner's executable bit. Throws nothing.
 */
export function modeFromStat(stats: FileStats): number {
  if (stats.isSymbolicLink()) return MODE_SYMLINK;
  if (stats.isDirectory()) return MODE_GITLINK;
  return (stats.mode & 0o100n) !== 0n ? 0o100755 : 0o100644;
}

/** Options of {@link isStatClean}. */
export interface StatCleanOptions {
  /** core.filemode: when false, the executable bit is not compared. Default true. */
  trustExecutableBit?: boolean;
}

/**
 * Whether `stats` (fs.lstat with bigint) proves the file still has the content the entry records,
 * without reading it, by git's rules (ce_match_stat_basic) made strict: file type (and the owner
 * executable bit unless disabled), size, mtime and ctime (seconds and nanoseconds), inode, uid and gid
 * all match, and the entry is not racily clean (its mtime is before `indexMtime`, the mtime of the index
 * file the entry was read from or written to).
 *
 * Returns true only then. False means "unknown": hash the file. Always false for gitlinks (the caller
 * must read the submodule's HEAD), intent-to-add entries, smudged entries (size 0 with a non-empty file)
 * and when `indexMtime` is null (no index file).
 */
export function isStatClean(
  entry: IndexEntry,
  stats: FileStats,
  indexMtime: IndexTimestamp | null,
  opts: StatCleanOptions = {},
): boolean {
  if (indexMtime === null || entry.flags.intentToAdd) return false;
  const type = entry.mode & 0o170000;
  if (type === 0o100000) {
    if (!stats.isFile()) return false;
    if ((opts.trustExecutableBit ?? true) && ((BigInt(entry.mode) ^ stats.mode) & 0o100n) !== 0n) return false;
  } else if (type === MODE_SYMLINK) {
    if (!stats.isSymbolicLink()) return false;
  } else {
    return false;
  }
  const [ctimeSec, ctimeNsec] = splitNs(stats.ctimeNs);
  const [mtimeSec, mtimeNsec] = splitNs(stats.mtimeNs);
  if (
    entry.size !== u32(stats.size) ||
    entry.mtimeSec !== mtimeSec ||
    entry.mtimeNsec !== mtimeNsec ||
    entry.ctimeSec !== ctimeSec ||
    entry.ctimeNsec !== ctimeNsec ||
    entry.ino !== u32(stats.ino) ||
    entry.uid !== u32(stats.uid) ||
    entry.gid !== u32(stats.gid)
  ) {
    return false;
  }
  return !isRacy(entry, indexMtime);
}

/** git's is_racy_stat with nanoseconds: the file may have changed in the same tick the index was written. */
function isRacy(entry: IndexEntry, indexMtime: IndexTimestamp): boolean {
  return isRacyTime(entry.mtimeSec, entry.mtimeNsec, indexMtime);
}

function isRacyTime(mtimeSec: number, mtimeNsec: number, indexMtime: IndexTimestamp): boolean {
  return indexMtime.sec < mtimeSec || (indexMtime.sec === mtimeSec && indexMtime.nsec <= mtimeNsec);
}

/**
 * Orders paths by their UTF-8 bytes, as git does (memcmp, shorter first), without encoding them: UTF-16
 * order equals code point order (hence UTF-8 byte order) except that a surrogate (a code point above
 * U+FFFF) must sort after U+E000..U+FFFF. Returns <0, 0 or >0 like Array#sort comparators; throws nothing.
 */
export function comparePaths(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a.charCodeAt(i) === b.charCodeAt(i)) i++;
  if (i === n) return a.length - b.length;
  const x = a.charCodeAt(i);
  const y = b.charCodeAt(i);
  if (x >= 0xd800 && x <= 0xdfff && y >= 0xe000) return 1;
  if (y >= 0xd800 && y <= 0xdfff && x >= 0xe000) return -1;
  return x - y;
}

/** git's verify_path, for what our callers can produce: no empty, `.`, `..` or `.git` components. */
const BAD_PATH = /(^|\/)(\.|\.\.|\.git)?(\/|$)|\0/i;

const SURROGATE = /[\uD800-\uDFFF]/;

/** Cheap pre-filter for BAD_PATH: only paths with a `.` component start, `//`, edge `/` or NUL can fail. */
function suspiciousPath(p: string): boolean {
  return (
    p === "" ||
    p.charCodeAt(0) === 0x2e ||
    p.charCodeAt(0) === 0x2f ||
    p.charCodeAt(p.length - 1) === 0x2f ||
    p.includes("/.") ||
    p.includes("//") ||
    p.includes("\0")
  );
}

/** Options of {@link writeIndex}. */
export interface WriteIndexOptions extends LockOptions {
  /**
   * An already held lock on `<gitdir>/index` (acquire it before readIndex for a read-modify-write that
   * cannot lose a concurrent native git's update). writeIndex commits it.
   */
  lock?: Lock;
}

/** What {@link writeIndex} wrote. */
export interface WriteIndexResult {
  version: 2 | 3 | 4;
  /** mtime of the new index file: the `indexMtime` for isStatClean. */
  mtime: IndexTimestamp;
  /** Paths written with size 0 because they were racily clean (git re-checks their content). */
  smudged: string[];
}

/**
 * Writes `index` to `<gitdir>/index` atomically under `<gitdir>/index.lock` (the given lock, else one
 * acquired here), in git's format with its SHA-1 trailer: entries sorted by path bytes then stage,
 * version 4 when the index was version 4, else 3 when an entry needs extended flags, else 2; extensions
 * per the module's policy (only REUC kept). A conflict entry is dropped when `entries` holds a stage-0
 * entry for its path (that resolves it, as `git add` does).
 *
 * Racy git: every entry whose mtime is not older than the new file's own mtime is written with size 0
 * ("smudged", as git does) so that git and isStatClean re-check its content.
 *
 * Afterwards `index` mirrors the file: version, mtime, kept extensions, resolved conflicts gone, smudged
 * entries replaced by copies with size 0. Returns what was written. Throws LockBusyError when index.lock
 * is held past the timeout (nothing written); InternalError for an entry git would reject (bad path,
 * mode or oid, or a lock for another file) — a bug in the caller.
 */
export async function writeIndex(gitdir: string, index: GitIndex, opts: WriteIndexOptions = {}): Promise<WriteIndexResult> {
  const file = indexPath(gitdir);
  if (opts.lock && resolve(opts.lock.path) !== resolve(file)) {
    throw new InternalError(`writeIndex got a lock for ${opts.lock.path}, not ${file}`);
  }
  // Entries are checked (InternalError) before the lock is taken.
  const plan = planPatch(file, index);
  let out = plan ? null : serialize(index);
  const lock = opts.lock ?? (await acquireLock(file, opts));
  try {
    // Under the lock the file cannot change any more; patch it only if it still is the snapshot.
    if (plan) out = (await fileIs(file, plan.snapshot)) ? applyPatch(plan) : serialize(index);
    const { buf, version, offsets, extensions } = out!;
    await lock.reset();
    await lock.write(buf);
    let mtime = timestampOf(await lock.stat());
    const smudgedAt = new Set<number>();
    // Smudging rewrites the file and so moves its mtime forward; entries not yet smudged are older than
    // the first mtime and stay older than the next. The loop only repeats if the clock went backwards.
    for (let round = 0; round < 5; round++) {
      let changed = false;
      for (let i = 0; i < offsets.length; i++) {
        const off = offsets[i]!;
        if (smudgedAt.has(i) || buf.readUInt32BE(off + 24) === MODE_GITLINK) continue;
        if (!isRacyTime(buf.readUInt32BE(off + 8), buf.readUInt32BE(off + 12), mtime)) continue;
        smudgedAt.add(i);
        if (buf.readUInt32BE(off + 36) !== 0) {
          buf.writeUInt32BE(0, off + 36);
          changed = true;
        }
      }
      if (!changed) break;
      createHash("sha1").update(buf.subarray(0, buf.length - HASH_SIZE)).digest().copy(buf, buf.length - HASH_SIZE);
      await lock.reset();
      await lock.write(buf);
      mtime = timestampOf(await lock.stat());
    }
    await lock.commit();
    // Forget the file first: if anything below threw, a stale copy must not be reused.
    parsed.delete(resolve(file));

    const smudged: string[] = [];
    for (const i of smudgedAt) smudged.push(out!.pathAt(i));
    // What a parse of the file gives, kept for the next readIndex and writeIndex.
    const next = out!.patched ?? parseFile(buf, file, true);
    if (!(index.entries instanceof EntryMap)) {
      for (const i of smudgedAt) {
        const e = index.entries.get(out!.pathAt(i));
        if (e && e.size !== 0 && ((buf.readUInt16BE(offsets[i]! + 60) >> 12) & 3) === 0) index.entries.set(e.path, { ...e, size: 0 });
      }
    }
    index.version = version;
    index.mtime = mtime;
    index.extensions = extensions;
    index.conflicts = index.conflicts.filter((c) => !index.entries.has(c.path));
    // The caller's index now mirrors the file (smudged entries with size 0 included), and is a
    // view of the new snapshot, so that its next write can be a patch again.
    if (index.entries instanceof EntryMap) index.entries.rebase(next.base);
    remember(file, buf, next);
    return { version, mtime, smudged };
  } finally {
    if (!opts.lock && !lock.released) await lock.rollback();
  }
}

/** What serialize or applyPatch produced: the file's bytes and where each entry sits in them. */
interface Serialized {
  buf: Buffer;
  version: 2 | 3 | 4;
  /** Byte offset of every entry (conflicts included), in file order. */
  offsets: Uint32Array;
  /** The path of the entry at offsets[i]. */
  pathAt: (i: number) => string;
  extensions: IndexExtension[];
  /** For a patch: what a parse of `buf` gives (its base reads `buf`, smudged entries included). */
  patched?: Parsed;
}

/** Changing stat data, oids and flags of existing entries of a snapshot, in the file's own bytes. */
interface Patch {
  snapshot: Snapshot;
  /** Ordinal in the snapshot's base, and the new entry (normalized, checked). */
  changes: [number, IndexEntry][];
}

/**
 * Whether `index` differs from the snapshot it was read from only in entries that keep their place and
 * size in the file (no path added or removed, extended flags unchanged), with the same version, no
 * conflicts and only extensions writeIndex keeps: then the new file is the old one with those entries'
 * fixed fields rewritten, and writing costs what the change costs instead of re-encoding every entry.
 * Returns null when a full serialization is needed. Throws InternalError for an entry git would reject.
 */
function planPatch(file: string, index: GitIndex): Patch | null {
  const s = parsed.get(resolve(file));
  const entries = index.entries;
  if (!s || !(entries instanceof EntryMap) || entries.base !== s.base) return null;
  if (s.conflicts.length || index.conflicts.length) return null;
  if ((index.version === 4 ? 4 : s.anyExtended ? 3 : 2) !== s.version) return null;
  if (s.extensions.some((x) => !KEPT_EXTENSIONS.has(x.signature))) return null;
  const kept = index.extensions.filter((x) => KEPT_EXTENSIONS.has(x.signature));
  if (kept.length !== s.extensions.length || kept.some((x, i) => x.signature !== s.extensions[i]!.signature || !x.data.equals(s.extensions[i]!.data))) return null;
  // An entry read from a file git wrote may carry the extended flag without needing it; a full write drops it.
  if (s.looseExtended) return null;
  const changes: [number, IndexEntry][] = [];
  for (const [path, e] of entries.own) {
    const i = s.base.find(path);
    if (e === null || i < 0) return null;
    if (e.path !== path) throw new InternalError(`index entry stored under ${JSON.stringify(path)} has path ${JSON.stringify(e.path)}`);
    if (e.flags.stage !== 0) throw new InternalError(`index entry ${JSON.stringify(e.path)} in entries has stage ${e.flags.stage}`);
    const ext = e.flags.skipWorktree || e.flags.intentToAdd;
    if (ext !== s.base.extended(i)) return null;
    checkEntry(e);
    if (!/^[0-9a-f]{40}$/.test(e.oid)) throw new InternalError(`invalid oid ${JSON.stringify(e.oid)} for ${JSON.stringify(e.path)}`);
    changes.push([i, e]);
  }
  return { snapshot: s, changes };
}

/** Whether `file` still is the snapshot's file: same size and SHA-1 trailer (as readIndex trusts it). */
async function fileIs(file: string, s: Snapshot): Promise<boolean> {
  let handle: FileHandle;
  try {
    handle = await open(file, "r");
  } catch {
    return false;
  }
  try {
    if ((await handle.stat()).size !== s.size) return false;
    const tail = Buffer.alloc(HASH_SIZE);
    const { bytesRead } = await handle.read(tail, 0, HASH_SIZE, s.size - HASH_SIZE);
    return bytesRead === HASH_SIZE && tail.equals(s.trailer);
  } finally {
    await handle.close();
  }
}

/**
 * A copy of the snapshot's file with the changed entries' fixed fields and the trailer rewritten (a
 * copy: the snapshot's bytes stay what indexes read from it know).
 */
function applyPatch(plan: Patch): Serialized {
  const s = plan.snapshot;
  const buf = Buffer.from(s.base.bytes);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  for (const [i, e] of plan.changes) {
    const off = s.base.offsets[i]!;
    writeFixed(dv, buf, off, e, dv.getUint16(off + 60) & NAME_MASK);
  }
  const body = buf.length - HASH_SIZE;
  createHash("sha1").update(buf.subarray(0, body)).digest().copy(buf, body);
  const base = new EntryBase(buf, s.base.offsets, s.base.names, s.base.nameStarts);
  const patched: Parsed = { version: s.version, base, conflicts: [], extensions: s.extensions, anyExtended: s.anyExtended, looseExtended: false };
  return { buf, version: s.version, offsets: s.base.offsets, pathAt: (i) => s.base.path(i), extensions: s.extensions, patched };
}

/** Writes an entry's stat data, oid and flags at `off`; `nameLen` is the 12-bit name length field. */
function writeFixed(dv: DataView, buf: Buffer, off: number, e: IndexEntry, nameLen: number): void {
  dv.setUint32(off, e.ctimeSec);
  dv.setUint32(off + 4, e.ctimeNsec);
  dv.setUint32(off + 8, e.mtimeSec);
  dv.setUint32(off + 12, e.mtimeNsec);
  dv.setUint32(off + 16, e.dev);
  dv.setUint32(off + 20, e.ino);
  dv.setUint32(off + 24, e.mode);
  dv.setUint32(off + 28, e.uid);
  dv.setUint32(off + 32, e.gid);
  dv.setUint32(off + 36, e.size);
  // Buffer#write stops at the first non-hex pair: 20 bytes written and 40 characters is a valid oid
  // (cheaper than a regular expression per entry).
  if (e.oid.length !== 40 || buf.write(e.oid, off + 40, 20, "hex") !== 20 || !isLowerHex(e.oid)) {
    throw new InternalError(`invalid oid ${JSON.stringify(e.oid)} for ${JSON.stringify(e.path)}`);
  }
  const ext = e.flags.skipWorktree || e.flags.intentToAdd;
  dv.setUint16(off + 60, (e.flags.assumeValid ? F_ASSUME_VALID : 0) | (ext ? F_EXTENDED : 0) | (e.flags.stage << 12) | nameLen);
  if (ext) dv.setUint16(off + 62, (e.flags.skipWorktree ? F2_SKIP_WORKTREE : 0) | (e.flags.intentToAdd ? F2_INTENT_TO_ADD : 0));
}

/**
 * Locks `<gitdir>/index`, reads it, lets `mutate` change it, and writes it back: the read-modify-write
 * that cannot lose an index update made by a native git meanwhile. If `mutate` throws, nothing is
 * written. Returns what writeIndex returns; throws what readIndex, mutate and writeIndex throw.
 */
export async function updateIndex(
  gitdir: string,
  mutate: (index: GitIndex) => void | Promise<void>,
  opts: LockOptions = {},
): Promise<WriteIndexResult> {
  const lock = await acquireLock(indexPath(gitdir), opts);
  try {
    const index = await readIndex(gitdir);
    await mutate(index);
    return await writeIndex(gitdir, index, { lock });
  } finally {
    if (!lock.released) await lock.rollback();
  }
}

const varintScratch = new Uint8Array(16);

/**
 * git varint.c encode_varint (big-endian base 128 where each continuation byte implies +1), written at
 * `buf[at]` (or only measured when `buf` is null). Returns the number of bytes.
 */
function putVarint(buf: Buffer | null, at: number, value: number): number {
  let pos = varintScratch.length - 1;
  varintScratch[pos] = value & 127;
  while ((value = Math.floor(value / 128)) > 0) {
    value -= 1;
    varintScratch[--pos] = 128 | (value & 127);
  }
  const len = varintScratch.length - pos;
  if (buf) buf.set(varintScratch.subarray(pos), at);
  return len;
}

const STAT_FIELDS = ["ctimeSec", "ctimeNsec", "mtimeSec", "mtimeNsec", "dev", "ino", "mode", "uid", "gid", "size"] as const;

function checkEntry(e: IndexEntry): void {
  if (suspiciousPath(e.path) && BAD_PATH.test(e.path)) throw new InternalError(`invalid path for the index: ${JSON.stringify(e.path)}`);
  if (!VALID_MODES.has(e.mode)) throw new InternalError(`invalid mode 0o${e.mode.toString(8)} for ${JSON.stringify(e.path)}`);
  for (const f of STAT_FIELDS) {
    // The DataView below would silently wrap anything that is not a uint32.
    const v = e[f];
    if (v >>> 0 !== v) throw new InternalError(`index entry ${JSON.stringify(e.path)}: ${f} ${v} is not a 32-bit unsigned integer`);
  }
}

/** git writes lower-case hex; upper-case would parse but not round-trip. Checks only the cheap signal. */
function isLowerHex(oid: string): boolean {
  const c = oid.charCodeAt(0);
  return !(c >= 0x41 && c <= 0x46) && oid === oid.toLowerCase();
}

/** True when entries are already in git's order (no surrogates: plain string order). */
function inOrder(entries: IndexEntry[]): boolean {
  for (let i = 1; i < entries.length; i++) {
    const a = entries[i - 1]!;
    const b = entries[i]!;
    if (a.path > b.path || (a.path === b.path && a.flags.stage >= b.flags.stage)) return false;
  }
  return true;
}

function serialize(index: GitIndex): Serialized {
  const sorted: IndexEntry[] = [];
  for (const [key, e] of index.entries) {
    if (key !== e.path) throw new InternalError(`index entry stored under ${JSON.stringify(key)} has path ${JSON.stringify(e.path)}`);
    if (e.flags.stage !== 0) throw new InternalError(`index entry ${JSON.stringify(e.path)} in entries has stage ${e.flags.stage}`);
    sorted.push(e);
  }
  for (const c of index.conflicts) {
    if (c.flags.stage === 0) throw new InternalError(`conflict entry ${JSON.stringify(c.path)} has stage 0`);
    if (!index.entries.has(c.path)) sorted.push(c);
  }
  // Native string comparison is UTF-16 order, which is git's byte order unless a path holds a surrogate
  // pair (a code point above U+FFFF); only then pay for the exact comparator.
  if (sorted.some((e) => SURROGATE.test(e.path))) {
    sorted.sort((a, b) => comparePaths(a.path, b.path) || a.flags.stage - b.flags.stage);
  } else if (!inOrder(sorted)) {
    // An index read from disk keeps file order, and changed entries keep their place: sorting is
    // then only needed when paths were added.
    sorted.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : a.flags.stage - b.flags.stage));
  }

  const count = sorted.length;
  let extended = false;
  for (let i = 0; i < count; i++) {
    const e = sorted[i]!;
    checkEntry(e);
    const prev = sorted[i - 1];
    if (prev && prev.path === e.path && prev.flags.stage === e.flags.stage) {
      throw new InternalError(`duplicate index entry ${JSON.stringify(e.path)} stage ${e.flags.stage}`);
    }
    if (e.flags.skipWorktree || e.flags.intentToAdd) extended = true;
  }
  const version: 2 | 3 | 4 = index.version === 4 ? 4 : extended ? 3 : 2;
  const extensions = index.extensions.filter((x) => KEPT_EXTENSIONS.has(x.signature));

  // All paths UTF-8 encoded by one native call; entry i's bytes are names[starts[i] .. starts[i]+lens[i]).
  const joined = sorted.map((e) => e.path).join("\0");
  const names = Buffer.from(joined, "utf8");
  const starts = new Uint32Array(count);
  const lens = new Uint32Array(count);
  const ascii = names.length === joined.length;
  for (let i = 0, at = 0; i < count; i++) {
    const path = sorted[i]!.path;
    const len = ascii ? path.length : Buffer.byteLength(path, "utf8");
    starts[i] = at;
    lens[i] = len;
    at += len + 1;
  }

  // Pass 1: sizes (and, for v4, how many bytes each entry shares with the previous path).
  const commons = version === 4 ? new Uint32Array(count) : null;
  let size = HEADER_SIZE;
  for (let i = 0; i < count; i++) {
    const e = sorted[i]!;
    const len = lens[i]!;
    const fixed = e.flags.skipWorktree || e.flags.intentToAdd ? EXTENDED_FIXED_SIZE : FIXED_SIZE;
    if (commons) {
      let common = 0;
      if (i > 0) {
        const a = starts[i - 1]!;
        const b = starts[i]!;
        const n = Math.min(lens[i - 1]!, len);
        while (common < n && names[a + common] === names[b + common]) common++;
      }
      commons[i] = common;
      size += fixed + putVarint(null, 0, (i > 0 ? lens[i - 1]! : 0) - common) + (len - common) + 1;
    } else {
      size += (fixed + len + 8) & ~7;
    }
  }
  for (const x of extensions) size += 8 + x.data.length;
  size += HASH_SIZE;

  // Pass 2: fill. alloc (zeroed) provides the NUL terminators and padding.
  const buf = Buffer.alloc(size);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  buf.write("DIRC", 0, "latin1");
  dv.setUint32(4, version);
  dv.setUint32(8, count);
  const offsets = new Uint32Array(count);
  let off = HEADER_SIZE;
  for (let i = 0; i < count; i++) {
    const e = sorted[i]!;
    const start = starts[i]!;
    const len = lens[i]!;
    offsets[i] = off;
    writeFixed(dv, buf, off, e, Math.min(len, NAME_MASK));
    let p = off + FIXED_SIZE;
    if (e.flags.skipWorktree || e.flags.intentToAdd) p += 2;
    if (commons) {
      const common = commons[i]!;
      p += putVarint(buf, p, (i > 0 ? lens[i - 1]! : 0) - common);
      p += names.copy(buf, p, start + common, start + len);
      off = p + 1;
    } else {
      names.copy(buf, p, start, start + len);
      off += (p - off + len + 8) & ~7;
    }
  }
  for (const x of extensions) {
    buf.write(x.signature, off, 4, "latin1");
    dv.setUint32(off + 4, x.data.length);
    x.data.copy(buf, off + 8);
    off += 8 + x.data.length;
  }
  if (off !== size - HASH_SIZE) throw new InternalError(`index serialization size mismatch: ${off} vs ${size - HASH_SIZE}`);
  createHash("sha1").update(buf.subarray(0, off)).digest().copy(buf, off);
  return { buf, version, offsets, pathAt: (i) => sorted[i]!.path, extensions };
}
