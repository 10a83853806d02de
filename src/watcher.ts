import { basename, join } from "node:path";
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

/** One folder's watch and the folder it was set on (a folder made again under the same name is another one). */
interface Watched {
  watch: NodeFSWatcher;
  /** `dev:ino` of the folder when it was watched; undefined until known. */
  id: string | undefined;
}

/**
 * Watches the sandbox and turns every event into a hint: "look at this path again". Events are
 * never trusted as the truth (a burst can overflow inotify without an error); the controller
 * re-observes hinted paths and rescans the whole tree periodically and after errors.
 * `exclusions()` is read on every event, so a config reload applies at once.
 *
 * Only folders are watched (one `fs.watch`, i.e. one inotify watch, per folder): a folder's watch
 * names every entry created, changed (content or metadata), moved or deleted in it, so per-file
 * watches add nothing but memory. chokidar set one per file and kept a stat per file: about 870 MB
 * at 100,000 files, against about 27 MB here (issue 5 and issue 15 have the measurements). A new
 * folder is watched when its parent reports it, and then hinted as a whole, so files written into
 * it before its watch existed are observed too.
 *
 * An inotify watch follows the folder (the inode), not its name, and a deleted folder's watch just
 * goes quiet: so whenever a parent reports that a name was created, deleted or moved, whatever was
 * watched under that name is dropped and the name is looked at afresh (issue 15: `rm -r d && mkdir
 * d`, `mv d x && mkdir d` and folder -> file -> folder lost their watch). Events that come while that
 * look is under way make it look once more when it ends, so the last state of the name wins.
 */
export class SandboxWatcher {
  /** Watched folders by posix path relative to the sandbox ("" is the sandbox itself). */
  private readonly dirs = new Map<string, Watched>();
  /** Names being looked at ("is this a folder to watch?"). */
  private readonly checking = new Set<string>();
  /** Names that had another event while being looked at: looked at once more afterwards. */
  private readonly recheck = new Set<string>();
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
    for (const w of this.dirs.values()) w.watch.close();
    this.dirs.clear();
  }

  /**
   * Brings the watches at and below `root` in line with the tree and the exclusions as they are now
   * (after a .gitignore or the config changed them, and at each full rescan, for what events
   * missed): folders no longer excluded or not yet watched get a watch, newly excluded ones lose
   * theirs, and a watch whose folder was replaced under the same name is set again on the new one
   * (the new folder is then hinted as a whole).
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
   * a time). Folders already watched are skipped with what is below them, unless `descend`: then
   * each is checked to be still the folder its watch was set on.
   */
  private async watchTree(root: string, descend = false): Promise<void> {
    // A pool of WALK_CONCURRENCY folders in flight: a folder's sub-folders join the queue as it is
    // listed, and the walk ends when nothing is queued or in flight (a loop that let its workers end
    // whenever the queue was empty for a moment ran most of the walk one folder at a time).
    const queue = [root];
    let active = 0;
    await new Promise<void>((resolve, reject) => {
      const pump = () => {
        while (active < WALK_CONCURRENCY && queue.length && !this.closed) {
          active++;
          this.watchFolder(queue.pop()!, descend, queue).then(() => {
            active--;
            pump();
          }, reject);
        }
        if (active === 0 && (!queue.length || this.closed)) resolve();
      };
      pump();
    });
  }

  /** One folder of {@link watchTree}: watched (or checked, when `descend`), its sub-folders queued. */
  private async watchFolder(rel: string, descend: boolean, queue: string[]): Promise<void> {
    if (this.closed) return;
    if (rel !== "" && this.exclusions().quickExcluded(rel, true)) return;
    const abs = rel === "" ? this.dir : join(this.dir, rel);
    const known = this.dirs.get(rel);
    if (known && !descend) return;
    if (known && known.id !== undefined && known.id !== (await this.idOf(abs))) {
      // Replaced since it was watched (an event was missed): watch the new folder, look at it whole.
      this.unwatch(rel);
      if (!this.watchOne(rel, abs)) return;
      await this.identify(rel, abs);
      this.sink.changed(rel);
    } else if (!known) {
      // Watch first, then list: a sub-folder made after the watch is reported by it, one made
      // before is in the listing (a folder in both is skipped by the `has` check).
      if (!this.watchOne(rel, abs)) return;
      await this.identify(rel, abs);
    }
    const entries = await readdir(abs, { withFileTypes: true }).catch(() => []);
    const prefix = rel === "" ? "" : `${rel}/`;
    for (const e of entries) if (e.isDirectory()) queue.push(prefix + e.name);
  }

  /** `dev:ino` of the folder at `abs`, or undefined when there is none. */
  private async idOf(abs: string): Promise<string | undefined> {
    const st = await lstat(abs).catch(() => null);
    return st?.isDirectory() ? `${st.dev}:${st.ino}` : undefined;
  }

  /** Records which folder the new watch of `rel` is on (read after the watch: a folder swapped in between is caught by its parent's event). */
  private async identify(rel: string, abs: string): Promise<void> {
    const id = await this.idOf(abs);
    const w = this.dirs.get(rel);
    if (w && w.id === undefined) w.id = id;
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
    const watched: Watched = { watch: w, id: undefined };
    w.on("error", () => {
      // The folder went away (or its watch broke): look at its name again.
      if (this.dirs.get(rel) !== watched) return;
      this.sink.changed(rel);
      if (rel !== "") this.check(rel);
    });
    this.dirs.set(rel, watched);
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
    const entry = name.toString();
    const child = prefix + entry;
    // A watched folder deleted or moved away reports a "rename" of its own name to its own watch
    // (inotify's IN_DELETE_SELF / IN_MOVE_SELF): look at that name again too, in case its parent's
    // event is lost. (A child of the same name makes this look once more than needed: harmless.)
    if (event === "rename" && dirRel !== "" && entry === basename(dirRel)) this.check(dirRel);
    if (this.exclusions().quickExcluded(child)) return;
    this.sink.changed(child);
    // "rename" covers creation, deletion and moves: the entry may be a folder to start or stop watching.
    if (event === "rename") this.check(child);
  }

  /**
   * Looks at the name `rel` afresh: whatever was watched under it is dropped (it may be gone, a file,
   * or another folder now), and a folder there now is watched with what is below it and hinted as a
   * whole. Another event for the name while this runs makes it look once more when it ends.
   */
  private check(rel: string): void {
    if (this.checking.has(rel)) {
      this.recheck.add(rel);
      return;
    }
    this.checking.add(rel);
    // On the next turn: the other events of the same swap (delete, create, the old folder's own
    // deletion) come in the same read and then need no look of their own.
    void new Promise<void>((resolve) => setImmediate(resolve))
      .then(() => this.lookAgain(rel))
      .catch((err: unknown) => this.sink.missedEvents(`watcher error: ${(err as Error).message ?? String(err)}`))
      .finally(() => {
        this.checking.delete(rel);
        this.recheck.delete(rel);
      });
  }

  private async lookAgain(rel: string): Promise<void> {
    do {
      this.recheck.delete(rel);
      const abs = join(this.dir, rel);
      const id = await this.idOf(abs);
      if (this.closed) return;
      this.unwatch(rel);
      if (id === undefined || this.exclusions().quickExcluded(rel, true)) continue;
      await this.watchTree(rel);
      // Files written into the new folder before its watch existed: observe the folder as a whole.
      this.sink.changed(rel);
    } while (this.recheck.has(rel) && !this.closed);
  }

  /** Stops watching `rel` and every folder below it. */
  private unwatch(rel: string): void {
    const w = this.dirs.get(rel);
    if (!w) return;
    w.watch.close();
    this.dirs.delete(rel);
    const prefix = rel === "" ? "" : `${rel}/`;
    for (const [k, sub] of this.dirs) {
      if (k.startsWith(prefix)) {
        sub.watch.close();
        this.dirs.delete(k);
      }
    }
  }
}
