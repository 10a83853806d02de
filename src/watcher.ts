import { basename, join, relative, sep } from "node:path";
import { watch, type FSWatcher } from "chokidar";
import { watch as fsWatch, type FSWatcher as NodeFSWatcher } from "node:fs";
import type { Exclusions } from "./exclusions.js";

/** What the watcher reports: a path that may have changed, or that events may have been missed. */
export interface WatchSink {
  changed(rel: string): void;
  missedEvents(why: string): void;
  /** HEAD was rewritten (a checkout): what blocked on the branch may proceed now. */
  headChanged(): void;
}

/**
 * Watches the sandbox with chokidar and turns every event into a hint: "look at this path again".
 * Events are never trusted as the truth (a burst can overflow inotify without an error); the
 * controller re-observes hinted paths and rescans the whole tree periodically and after errors.
 * `exclusions()` is read on every event, so a config reload applies at once.
 */
export class SandboxWatcher {
  private watcher: FSWatcher | undefined;
  private head: NodeFSWatcher | undefined;

  constructor(
    private readonly dir: string,
    private readonly gitdir: string,
    private readonly exclusions: () => Exclusions,
    private readonly sink: WatchSink,
  ) {}

  /** Starts watching; resolves once the initial directory walk is done. */
  async start(): Promise<void> {
    const rel = (p: string) => relative(this.dir, p).split(sep).join("/");
    this.watcher = watch(this.dir, {
      ignoreInitial: true,
      followSymlinks: false,
      persistent: true,
      ignored: (p, stats) => {
        const r = rel(p);
        return r !== "" && !r.startsWith("..") && this.exclusions().quickExcluded(r, stats?.isDirectory() ?? false);
      },
    });
    const ready = new Promise<void>((resolve) => this.watcher!.once("ready", () => resolve()));
    for (const ev of ["add", "change", "unlink", "addDir", "unlinkDir"] as const) {
      this.watcher.on(ev, (p: string) => this.sink.changed(rel(p)));
    }
    // chokidar filters out changes that touch only metadata (a chmod after the file was read), so the
    // raw inotify events are hints too: for a directory's watcher they name the entry that changed.
    this.watcher.on("raw", (_event: string, evPath: string | undefined, details: unknown) => {
      const watched = (details as { watchedPath?: string } | undefined)?.watchedPath;
      if (!watched) return;
      const target = evPath && evPath !== basename(watched) ? join(watched, evPath) : watched;
      const r = rel(target);
      if (r !== "" && !r.startsWith("..") && !this.exclusions().quickExcluded(r)) this.sink.changed(r);
    });
    this.watcher.on("error", (err: unknown) => this.sink.missedEvents(`watcher error: ${(err as Error).message ?? String(err)}`));
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
    await ready;
  }

  /** Stops watching and releases every watch. */
  async close(): Promise<void> {
    this.head?.close();
    this.head = undefined;
    await this.watcher?.close();
    this.watcher = undefined;
  }
}
