import { join } from "node:path";
import { lstat, readdir } from "node:fs/promises";
import { watch as fsWatch, type FSWatcher as NodeFSWatcher } from "node:fs";
import type { Exclusions } from "./exclusions.js";

/** What the watcher reports: a path that may have changed, or that events may have been missed. */
export interface WatchSink {
  changed(rel: string): void;
  missedEvents(why: string): void;
  /** HEAD was rewritten (a checkout): what blocked on the branch may proceed now. */
  headChanged(): void;
}

/** Folders read at once while walking the tree. */
const WALK_CONCURRENCY = 16;

/**
 * Watches the sandbox and turns every event into a hint: "look at this path again". Events are
 * never trusted as the truth (a burst can overflow inotify without an error); the controller
 * re-observes hinted paths and rescans the whole tree periodically and after errors.
 * `exclusions()` is read on every event, so a config reload applies at once.
 *
 * Only folders are watched (one `fs.watch`, i.e. one inotify watch, per folder): a folder's watch
 * names every entry created, changed (content or metadata), moved or deleted in it, so per-file
 * watches add nothing but memory. chokidar set one per file and kept a stat per file: about 870 MB
 * at 100,000 files, against about 10 MB of watches here (issue 5 has the measurements). A new
 * folder is watched when its parent reports it, and then hinted as a whole, so files written into
 * it before its watch existed are observed too.
 */
export class SandboxWatcher {
  /** Watched folders by posix path relative to the sandbox ("" is the sandbox itself). */
  private readonly dirs = new Map<string, NodeFSWatcher>();
  /** Entries with a pending check "is this a folder to watch, or a watched folder that is gone?". */
  private readonly checking = new Set<string>();
  private head: NodeFSWatcher | undefined;
  private closed = false;
  private limitReported = false;

  constructor(
    private readonly dir: string,
    private readonly gitdir: string,
    private readonly exclusions: () => Exclusions,
    private readonly sink: WatchSink,
  ) {}

  /** Starts watching; resolves once every folder of the tree is watched. */
  async start(): Promise<void> {
    this.closed = false;
    await this.watchTree("");
    // .git itself is not watched (our own writes would wake us), except HEAD: a checkout moves it
    // without touching any file when both branches have the same tree.
    try {
      this.head = fsWatch(this.gitdir, { persistent: false }, (_ev, name) => {
        if (name === "HEAD") this.sink.headChanged();
      });
      this.head.on("error", () => undefined);
    } catch {
      // Without it, a checkout is noticed at the next event or rescan.
    }
  }

  /** How many folders are watched now. */
  get watchedFolders(): number {
    return this.dirs.size;
  }

  /** Stops watching and releases every watch. */
  async close(): Promise<void> {
    this.closed = true;
    this.head?.close();
    this.head = undefined;
    for (const w of this.dirs.values()) w.close();
    this.dirs.clear();
  }

  /**
   * Brings the watches at and below `root` in line with the exclusions as they are now (after a
   * .gitignore or the config changed them): folders no longer excluded get a watch, newly
   * excluded ones lose theirs.
   */
  async rewatch(root: string): Promise<void> {
    const prefix = root === "" ? "" : `${root}/`;
    for (const rel of [...this.dirs.keys()]) {
      if (rel !== "" && (rel === root || rel.startsWith(prefix)) && this.exclusions().quickExcluded(rel, true)) this.unwatch(rel);
    }
    await this.watchTree(root, true);
  }

  /**
   * Watches `root` and every folder below it that is not excluded (breadth first, a few folders at
   * a time). Folders already watched are skipped with what is below them, unless `descend`.
   */
  private async watchTree(root: string, descend = false): Promise<void> {
    const queue = [root];
    const worker = async () => {
      for (let rel = queue.pop(); rel !== undefined; rel = queue.pop()) {
        if (this.closed) return;
        if (rel !== "" && this.exclusions().quickExcluded(rel, true)) continue;
        const abs = rel === "" ? this.dir : join(this.dir, rel);
        // Watch first, then list: a sub-folder made after the watch is reported by it, one made
        // before is in the listing (a folder in both is skipped by the `has` check).
        if (this.dirs.has(rel)) {
          if (!descend) continue;
        } else if (!this.watchOne(rel, abs)) continue;
        const entries = await readdir(abs, { withFileTypes: true }).catch(() => []);
        const prefix = rel === "" ? "" : `${rel}/`;
        for (const e of entries) if (e.isDirectory()) queue.push(prefix + e.name);
      }
    };
    while (queue.length && !this.closed) await Promise.all(Array.from({ length: WALK_CONCURRENCY }, worker));
  }

  /** Adds the watch of one folder; false when it cannot be watched (gone, or the watch limit). */
  private watchOne(rel: string, abs: string): boolean {
    let w: NodeFSWatcher;
    try {
      w = fsWatch(abs, { persistent: true }, (event, name) => this.onEvent(rel, event, name));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOSPC" || code === "EMFILE") {
        if (!this.limitReported) {
          this.limitReported = true;
          this.sink.missedEvents(`cannot watch ${rel || "."}: ${code} (the inotify watch limit is reached; raise fs.inotify.max_user_watches); folders without a watch are seen at each rescan`);
        }
      }
      return false;
    }
    w.on("error", () => {
      // The folder went away (or its watch broke): its parent's watch reports the change.
      this.unwatch(rel);
      this.sink.changed(rel);
    });
    this.dirs.set(rel, w);
    return true;
  }

  private onEvent(dirRel: string, event: string, name: string | Buffer | null): void {
    if (this.closed) return;
    const prefix = dirRel === "" ? "" : `${dirRel}/`;
    if (name === null || name === undefined) {
      // The kernel did not say which entry: look at the whole folder again.
      this.sink.changed(dirRel);
      return;
    }
    const child = prefix + name.toString();
    if (this.exclusions().quickExcluded(child)) return;
    this.sink.changed(child);
    // "rename" covers creation, deletion and moves: the entry may be a folder to start or stop watching.
    if (event === "rename") this.check(child);
  }

  /** Starts watching `rel` if it is now a folder, stops watching it (and below) if it is not. */
  private check(rel: string): void {
    if (this.checking.has(rel)) return;
    this.checking.add(rel);
    void lstat(join(this.dir, rel))
      .then((st) => st.isDirectory(), () => false)
      .then(async (isDir) => {
        this.checking.delete(rel);
        if (this.closed) return;
        if (!isDir) {
          this.unwatch(rel);
          return;
        }
        if (this.dirs.has(rel) || this.exclusions().quickExcluded(rel, true)) return;
        await this.watchTree(rel);
        // Files written into the new folder before its watch existed: observe the folder as a whole.
        this.sink.changed(rel);
      })
      .catch((err: unknown) => this.sink.missedEvents(`watcher error: ${(err as Error).message ?? String(err)}`));
  }

  /** Stops watching `rel` and every folder below it. */
  private unwatch(rel: string): void {
    const w = this.dirs.get(rel);
    if (!w) return;
    w.close();
    this.dirs.delete(rel);
    const prefix = `${rel}/`;
    for (const [k, sub] of this.dirs) {
      if (k.startsWith(prefix)) {
        sub.close();
        this.dirs.delete(k);
      }
    }
  }
}
