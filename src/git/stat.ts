/**
 * What a stat cache keeps of a file and how a fresh lstat is compared with it (git's
 * ce_match_stat_basic rules, made strict). No index file is read or written here: entries come from git
 * (`git ls-files -s -z`, see {@link statCacheEntry}) or from what was just written and lstat'ed.
 */
import type * as fs from "node:fs";

/** Per-entry flags a stat cache entry carries. */
export interface IndexEntryFlags {
  /** `git update-index --assume-unchanged`: git trusts the entry without looking at the file. */
  assumeValid: boolean;
  extended: boolean;
  /** 0 for a normal entry; 1-3 for the stages of a conflict. */
  stage: 0 | 1 | 2 | 3;
  skipWorktree: boolean;
  /** `git add -N`. */
  intentToAdd: boolean;
}

/** What is known of a tracked file: its mode and blob, and the stat data (32-bit truncated, as git keeps it) when known. */
export interface IndexEntry {
  /** Repository-relative, `/`-separated. */
  path: string;
  /** 0o100644, 0o100755, 0o120000 (symlink) or 0o160000 (gitlink). */
  mode: number;
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

/** A file timestamp: seconds and nanoseconds. */
export interface IndexTimestamp {
  sec: number;
  nsec: number;
}

/**
 * What a stat cache keeps of a file's lstat: a BigIntStats, or the compact copy fileStats() makes of
 * one (about a quarter of its memory: a batch of 30,000 changes keeps one per file).
 */
export type FileStats = Pick<fs.BigIntStats, "dev" | "ino" | "mode" | "uid" | "gid" | "size" | "ctimeNs" | "mtimeNs" | "isFile" | "isSymbolicLink" | "isDirectory">;

/** A compact copy of the fields of `st` that a stat comparison uses. */
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
 * An entry for a path git lists (`git ls-files -s`: mode, blob, stage) without stat data: never stat
 * clean, so whoever compares it with a file reads the file. Throws nothing.
 */
export function statCacheEntry(path: string, mode: string, oid: string, stage = 0): IndexEntry {
  return {
    path, mode: parseInt(mode, 8), oid, size: 0, ctimeSec: 0, ctimeNsec: 0, mtimeSec: 0, mtimeNsec: 0, dev: 0, ino: 0, uid: 0, gid: 0,
    flags: { assumeValid: false, extended: false, stage: stage as 0 | 1 | 2 | 3, skipWorktree: false, intentToAdd: false },
  };
}

/** Options of {@link isStatClean}. */
export interface StatCleanOptions {
  /** core.filemode: when false, the executable bit is not compared. Default true. */
  trustExecutableBit?: boolean;
}

/**
 * Whether `stats` (fs.lstat with bigint) proves the file still has the content the entry records,
 * without reading it: file type (and the owner executable bit unless disabled), size, mtime and ctime
 * (seconds and nanoseconds), inode, uid and gid all match, and the entry is not racily clean (its mtime
 * is before `indexMtime`, when the entry's stat data was taken).
 *
 * Returns true only then. False means "unknown": hash the file. Always false for gitlinks, intent-to-add
 * entries, and when `indexMtime` is null.
 */
export function isStatClean(entry: IndexEntry, stats: FileStats, indexMtime: IndexTimestamp | null, opts: StatCleanOptions = {}): boolean {
  if (indexMtime === null || entry.flags.intentToAdd) return false;
  const type = entry.mode & 0o170000;
  if (type === 0o100000) {
    if (!stats.isFile()) return false;
    if ((opts.trustExecutableBit ?? true) && ((BigInt(entry.mode) ^ stats.mode) & 0o100n) !== 0n) return false;
  } else if (type === 0o120000) {
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
  // git's is_racy_stat with nanoseconds: the file may have changed in the same tick the entry was taken.
  return indexMtime.sec > entry.mtimeSec || (indexMtime.sec === entry.mtimeSec && indexMtime.nsec > entry.mtimeNsec);
}

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
