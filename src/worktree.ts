import { lstatSync, readdirSync, readFile, readFileSync, readlinkSync, type BigIntStats } from "node:fs";
import { promisify } from "node:util";
import { join } from "node:path";
import { blobOid, EMPTY_TREE, type EntryMode, type FileEntry, type Repo } from "./git/repo.js";
import { fileStats, isStatClean, type FileStats, type IndexEntry } from "./git/stat.js";
import type { Exclusions } from "./exclusions.js";

const readBytes = promisify(readFile) as (p: string) => Promise<Buffer>;

/** A file as it is in the working tree now. */
export interface WorkFile {
  mode: EntryMode;
  oid: string;
  /** Taken before `content` was read: if the file changes after, its stat data no longer match. */
  stats: FileStats;
  /** The bytes read to hash it, kept (within a budget) so that the commit need not read them again. */
  content?: Buffer;
}

/** A path whose working-tree state differs from the branch head; `work` absent means deleted. */
export interface PathChange {
  path: string;
  head?: FileEntry;
  work?: WorkFile;
}

/** What observing the sandbox found: changes against the head, and index entries merely out of date. */
export interface SandboxObservation {
  changes: PathChange[];
  /** Paths whose content equals the head but whose index stat data is stale (e.g. a `touch`). */
  refresh: { path: string; work: WorkFile }[];
  /** Files looked at. */
  scanned: number;
  /** Files that exist but are held back (security.encrypt without a key): never committed in plaintext. */
  heldBack: string[];
}

/** The index as a stat cache: its entries, and the index file's own mtime for racy-git checks. */
export interface StatCache {
  entries: Map<string, IndexEntry>;
  mtime: { sec: number; nsec: number };
}

/** A path to look at, and the head's entry there when already known (null: known to be absent). */
interface Probe {
  rel: string;
  head?: (FileEntry & { isTree: boolean }) | null;
}

/** One observation under way. */
interface Scan {
  headTree: string;
  cache: StatCache;
  out: SandboxObservation;
  queue: Probe[];
  seen: Set<string>;
}

const CONCURRENCY = 32;
/** Trees kept for the walks of hinted paths (the folders on the paths being edited, mostly). */
const TREES_REMEMBERED = 2000;
/** Bytes of file content one observation keeps for the commit that follows it (the rest is read again). */
const KEEP_CONTENT_BYTES = 32 * 1024 * 1024;
/** Small kept contents are copied into slabs of this size. */
const SLAB_BYTES = 1024 * 1024;
/** Files up to this size are read synchronously: cheaper than three trips to the thread pool. */
const SYNC_READ_BYTES = 64 * 1024;
/** A full scan gives the event loop a turn after this many entries (its stats are synchronous). */
const YIELD_EVERY = 1000;

/**
 * lstat without the thread pool: a full scan stats every file, and a synchronous lstat costs a few
 * microseconds where a queued one costs tens (100,000 files: about 1 s instead of 10-20 s, issue 5).
 * Returns null when the path does not exist (or a parent is not a folder).
 */
function lstatNow(abs: string): BigIntStats | null {
  try {
    return lstatSync(abs, { bigint: true, throwIfNoEntry: false }) ?? null;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOTDIR" || (e as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw e;
  }
}

/**
 * Reads the sandbox's working tree and compares it with a commit's tree, using the git index only
 * as a stat cache (a file whose stat data matches its index entry is not read again). Read-only.
 */
export class Worktree {
  private readonly trees = new Map<string, Map<string, FileEntry & { isTree: boolean }>>();
  /** Content bytes kept by the observation under way, and the slab it copies small contents into. */
  private keptBytes = 0;
  private slab = Buffer.alloc(0);
  private slabUsed = 0;

  constructor(
    readonly dir: string,
    private readonly repo: Repo,
    private readonly exclusions: Exclusions,
    private readonly filemode: boolean,
  ) {}

  /**
   * Observes the given paths (posix, relative; "" is the whole sandbox) against `headTree`.
   * Folders are walked; a path that vanished is a deletion of whatever the head has there.
   */
  async observe(headTree: string, paths: Iterable<string>, cache: StatCache, onProgress?: (filesLookedAt: number) => void): Promise<SandboxObservation> {
    const out: SandboxObservation = { changes: [], refresh: [], scanned: 0, heldBack: [] };
    this.keptBytes = 0;
    this.slab = Buffer.alloc(0);
    const seen = new Set<string>();
    const queue: Probe[] = [...new Set(paths)].map((rel) => ({ rel }));
    const scan: Scan = { headTree, cache, out, queue, seen };
    let sinceYield = 0;
    const worker = async () => {
      for (let p = queue.pop(); p !== undefined; p = queue.pop()) {
        if (seen.has(p.rel)) continue;
        seen.add(p.rel);
        await this.observeOne(p, scan);
        if (++sinceYield >= YIELD_EVERY) {
          sinceYield = 0;
          onProgress?.(out.scanned);
          await new Promise((resolve) => setImmediate(resolve));
        }
      }
    };
    // Workers drain one queue that folders keep adding to; loop until nothing is left in flight.
    while (queue.length) await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    // After a whole-tree scan, read the .gitignore files afresh: that picks up one whose change
    // event was missed.
    if (seen.has("")) await this.exclusions.reload();
    out.changes.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
    out.heldBack.sort();
    return out;
  }

  /** Whether `rel` is excluded, deciding without waiting when the .gitignore files on its way are known. */
  private async excluded(rel: string, isDir = false): Promise<boolean> {
    return this.exclusions.excludedIfKnown(rel, isDir) ?? (await this.exclusions.isExcluded(rel, isDir));
  }

  private async observeOne(probe: Probe, scan: Scan): Promise<void> {
    const { rel } = probe;
    const { out, queue } = scan;
    if (rel !== "" && (await this.excluded(rel))) return;
    const abs = rel === "" ? this.dir : join(this.dir, rel);
    const st = lstatNow(abs);
    const head = rel === "" ? { mode: "040000" as EntryMode, oid: scan.headTree, isTree: true } : probe.head !== undefined ? (probe.head ?? undefined) : await this.headEntry(scan.headTree, rel);
    if (!st || (!st.isFile() && !st.isSymbolicLink() && !st.isDirectory())) {
      if (head?.isTree) await this.deleteTree(head.oid, `${rel}/`, out);
      else if (head) out.changes.push({ path: rel, head: { mode: head.mode, oid: head.oid } });
      return;
    }
    if (st.isDirectory()) {
      if (rel !== "" && (await this.excluded(rel, true))) return;
      let names: string[];
      try {
        names = readdirSync(abs);
      } catch (e) {
        // Gone (or replaced by a file) since the lstat: observe the path again as whatever it is now.
        if ((e as NodeJS.ErrnoException).code !== "ENOENT" && (e as NodeJS.ErrnoException).code !== "ENOTDIR") throw e;
        scan.seen.delete(rel);
        queue.push({ rel });
        return;
      }
      // A nested repository is not ours to sync (git would record it as a gitlink).
      if (rel !== "" && names.includes(".git")) return;
      const prefix = rel === "" ? "" : `${rel}/`;
      // Learn this folder's .gitignore once, before its entries are looked at by parallel workers:
      // read it when the listing has one, never try to open one that is not there.
      await this.exclusions.learnFolder(rel, names);
      // The head's entries of this folder go along with its children: no walk from the root per path.
      const entries = head?.isTree ? await this.treeEntries(head.oid, false) : undefined;
      for (const n of names) queue.push({ rel: prefix + n, head: entries?.get(n) ?? null });
      if (entries) {
        const onDisk = new Set(names);
        for (const [name, e] of entries) if (!onDisk.has(name)) queue.push({ rel: prefix + name, head: e });
      } else if (head) out.changes.push({ path: rel, head: { mode: head.mode, oid: head.oid } });
      return;
    }
    if (this.repo.policy.holdsBack(rel)) {
      out.heldBack.push(rel);
      return;
    }
    out.scanned++;
    // One lookup serves both the stat check and the refresh decision (each finds and builds an entry).
    const idx = scan.cache.entries.get(rel);
    const work = await this.readWorkFile(abs, rel, st, scan.cache, head, idx);
    if (head?.isTree) await this.deleteTree(head.oid, `${rel}/`, out);
    const headFile = head && !head.isTree ? { mode: head.mode, oid: head.oid } : undefined;
    if (!headFile || headFile.oid !== work.oid || headFile.mode !== work.mode) {
      out.changes.push({ path: rel, ...(headFile ? { head: headFile } : {}), work: this.retained(work) });
    } else if (!idx || idx.oid !== work.oid || !isStatClean(idx, st, scan.cache.mtime)) {
      out.refresh.push({ path: rel, work: { mode: work.mode, oid: work.oid, stats: fileStats(st) } });
    }
  }

  /**
   * What an observation keeps of a changed file: compact stat data, and its content while within
   * the budget, copied densely into shared slabs (a small file read on its own keeps a buffer of
   * several KB alive; a batch of 30,000 changes keeps one per file).
   */
  private retained(work: WorkFile): WorkFile {
    const kept: WorkFile = { mode: work.mode, oid: work.oid, stats: fileStats(work.stats as BigIntStats) };
    const content = work.content;
    if (!content || (this.keptBytes += content.length) > KEEP_CONTENT_BYTES) return kept;
    if (content.length >= SLAB_BYTES / 16) return { ...kept, content };
    if (this.slabUsed + content.length > this.slab.length) {
      this.slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
      this.slabUsed = 0;
    }
    const copy = this.slab.subarray(this.slabUsed, this.slabUsed + content.length);
    content.copy(copy);
    this.slabUsed += content.length;
    return { ...kept, content: copy };
  }

  /**
   * Reads one working file's mode and blob id, trusting the index's oid when its stat data matches.
   * `idx`: the file's entry in `cache`, when the caller already looked it up.
   */
  async readWorkFile(abs: string, rel: string, st: BigIntStats, cache: StatCache, head?: FileEntry, idx = cache.entries.get(rel)): Promise<WorkFile> {
    const mode = this.modeOf(st, head);
    if (idx && modeString(idx.mode) === mode && isStatClean(idx, st, cache.mtime)) return { mode, oid: idx.oid, stats: st };
    const content = await readContent(abs, st);
    // An encrypted path is compared by its ciphertext (deterministic: unchanged content, same blob).
    return { mode, oid: blobOid(st.isSymbolicLink() ? content : this.repo.policy.blobContent(rel, content)), stats: st, content };
  }

  /** The mode git records for a file with these stats (keeping the head's exec bit when core.filemode is false). */
  modeOf(st: FileStats, head?: FileEntry): EntryMode {
    if (st.isSymbolicLink()) return "120000";
    if (!this.filemode && head && (head.mode === "100644" || head.mode === "100755")) return head.mode;
    return (Number(st.mode) & 0o100) !== 0 ? "100755" : "100644";
  }

  private async deleteTree(tree: string, prefix: string, out: SandboxObservation): Promise<void> {
    for (const [name, e] of await this.treeEntries(tree)) {
      if (e.isTree) await this.deleteTree(e.oid, `${prefix}${name}/`, out);
      else out.changes.push({ path: prefix + name, head: { mode: e.mode, oid: e.oid } });
    }
  }

  /** The head's entry at a path (file or tree), walking only the trees on that path. */
  async headEntry(tree: string, rel: string): Promise<(FileEntry & { isTree: boolean }) | undefined> {
    let current = tree;
    const parts = rel.split("/");
    for (let i = 0; i < parts.length; i++) {
      const e = (await this.treeEntries(current)).get(parts[i]!);
      if (!e) return undefined;
      if (i === parts.length - 1) return e;
      if (!e.isTree) return undefined;
      current = e.oid;
    }
    return undefined;
  }

  /**
   * A tree's entries by name. Remembered for the walks of hinted paths from the root (`remember`);
   * a folder walked by a scan is read once, so a full scan does not fill the cache.
   */
  private async treeEntries(oid: string, remember = true): Promise<Map<string, FileEntry & { isTree: boolean }>> {
    let m = this.trees.get(oid);
    if (!m) {
      m = new Map();
      const entries = oid === EMPTY_TREE ? [] : await this.repo.readTree(oid);
      for (const e of entries) m.set(e.path, { mode: e.mode, oid: e.oid, isTree: e.mode === "040000" });
      if (!remember) return m;
      // Trees are immutable by oid, so the cache never goes stale; it is bounded to keep memory flat.
      if (this.trees.size >= TREES_REMEMBERED) this.trees.clear();
      this.trees.set(oid, m);
    }
    return m;
  }

}

/** A file's blob content: its bytes, or a symlink's target; `st` is its lstat from just before. */
export async function readContent(abs: string, st: { isSymbolicLink(): boolean; size: bigint | number }): Promise<Buffer> {
  if (st.isSymbolicLink()) return readlinkSync(abs, { encoding: "buffer" });
  return Number(st.size) <= SYNC_READ_BYTES ? readFileSync(abs) : readBytes(abs);
}

/** An index entry's numeric mode as a tree mode string. */
export function modeString(mode: number): EntryMode {
  return mode.toString(8).padStart(6, "0") as EntryMode;
}
