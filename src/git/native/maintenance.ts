import { setPriority } from "node:os";
import { runGit, type GitRepo } from "./run.js";

/**
 * Keeps the sandbox's object store tidy the way git's own porcelain does. `git commit`, `merge` and
 * `fetch` end with `git maintenance run --auto` (which runs `git gc --auto`: pack loose objects once
 * there are more than gc.auto, merge packs once there are more than gc.autoPackLimit); the controller
 * commits with plumbing (`commit-tree`, `update-ref`), which never does, so it asks for it itself.
 */

/** When maintenance is asked for. */
export interface MaintenancePolicy {
  /** After this many commits since the last run. */
  everyCommits: number;
  /** After one commit of at least this many paths (a burst leaves as many loose objects). */
  bigCommitPaths: number;
  /** At the latest this long after the last run (the first run comes {@link MaintenancePolicy.firstAfterMs} after start). */
  periodMs: number;
  /** The first run after start: edits made while stopped are committed by then. */
  firstAfterMs: number;
}

/** Every 25 commits, after a commit of 1,000 paths or more, a minute after start, and daily. */
export const DEFAULT_MAINTENANCE: MaintenancePolicy = { everyCommits: 25, bigCommitPaths: 1000, periodMs: 24 * 3_600_000, firstAfterMs: 60_000 };

/** Where {@link AutoMaintenance} reports. */
export interface MaintenanceLog {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
}

/** Niceness of the maintenance git and everything it starts (gc, repack, pack-objects inherit it). */
const LOW_PRIORITY = 10;

/**
 * Runs `git maintenance run --auto --quiet` once, in the foreground (gc.autoDetach=false, so the caller
 * knows when it is over and never starts a second one), at low CPU priority. git decides what is due and
 * does nothing when nothing is (a few milliseconds); its own gc.pid lock keeps a gc started by a native
 * `git commit` or `fetch` from running beside this one. Rejects with a GitError when git fails, Transient
 * `GitAborted` when `signal` aborts (the whole process group is killed; git's temporary packs are
 * removed by the next gc).
 */
export async function runAutoMaintenance(repo: GitRepo, opts: UpkeepOptions = {}): Promise<void> {
  await runUpkeep(repo, ["-c", "gc.autoDetach=false", "-c", "maintenance.autoDetach=false", "maintenance", "run", "--auto", "--quiet"], opts);
}

interface UpkeepOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
}

/** Runs an upkeep git command in the foreground at low CPU priority (an hour at most unless told). */
async function runUpkeep(repo: GitRepo, args: string[], opts: UpkeepOptions): Promise<void> {
  await runGit(args, {
    ...repo,
    timeoutMs: opts.timeoutMs ?? 60 * 60_000,
    ...(opts.signal ? { signal: opts.signal } : {}),
    onSpawn: (pid) => lowerPriority(pid),
  });
}

/**
 * Rolls a repository's packs up geometrically (`git repack -d --geometric=2`): afterwards each pack
 * holds at least twice the objects of the next smaller one, so a repository that gets a pack per push
 * keeps a handful (about log2 of its objects) instead of growing to gc.autoPackLimit (50) before
 * `gc --auto` merges everything; only the small packs are rewritten, never the big one holding most
 * of the history. Loose objects are rolled in too. In the foreground, at low CPU priority.
 */
export async function rollUpPacks(repo: GitRepo, opts: UpkeepOptions = {}): Promise<void> {
  await runUpkeep(repo, ["repack", "-d", "-q", "--geometric=2"], opts);
}

function lowerPriority(pid: number): void {
  try {
    setPriority(pid, LOW_PRIORITY);
  } catch {
    // Gone already, or not allowed: it runs at normal priority.
  }
}

/**
 * Decides when the sandbox gets `git maintenance run --auto` and runs it, one at a time, beside the
 * loop (never awaited by a commit). A run starts only through `gate` (the controller's lock on the
 * sandbox's index and branch), so it never starts while a commit of ours holds the index or moves a
 * ref; once started it runs beside later commits, as git's own auto gc does after a `git commit`
 * (git's lock files keep both safe: a ref lock met by a commit is retried). Failures are logged, never
 * thrown: maintenance is side work.
 */
export class AutoMaintenance {
  private commits = 0;
  private paths = 0;
  private running: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly stopping = new AbortController();
  private closed = false;

  constructor(
    private readonly repo: GitRepo,
    private readonly gate: <T>(fn: () => Promise<T>) => Promise<T>,
    private readonly log: MaintenanceLog,
    private readonly policy: MaintenancePolicy = DEFAULT_MAINTENANCE,
    /**
     * The local remotes this sandbox pushes to (their git directories): each push leaves a pack there,
     * and git merges them only past gc.autoPackLimit, so each run rolls their packs up ({@link rollUpPacks}).
     */
    private readonly localRemotes: () => Promise<readonly GitRepo[]> = async () => [],
  ) {}

  /** Arms the periodic run: the first {@link MaintenancePolicy.firstAfterMs} from now, then every period. */
  start(): void {
    this.arm(this.policy.firstAfterMs);
  }

  /** Counts a commit of `paths` paths (Infinity: unknown, maybe many), and starts a run when the policy says one is due. */
  committed(paths: number): void {
    this.commits++;
    this.paths = Math.max(this.paths, paths);
    if (this.paths >= this.policy.bigCommitPaths) this.launch("after a big commit");
    else if (this.commits >= this.policy.everyCommits) this.launch(`after ${this.commits} commits`);
  }

  /** Resolves once no run is under way (tests, and a caller that wants to wait). */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  /**
   * Stops the timer and waits up to `graceMs` for a run under way; after that the run is killed (its
   * process group), which git tolerates: its temporary packs go at the next gc, a left lock at the next start.
   */
  async close(graceMs = 10_000): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    const run = this.running;
    if (!run) return;
    const t = setTimeout(() => this.stopping.abort(), graceMs);
    t.unref();
    await run;
    clearTimeout(t);
  }

  /** Rolls up the packs of each local remote; one that fails is logged, the others still get theirs. */
  private async rollUpRemotes(): Promise<void> {
    for (const remote of await this.localRemotes()) {
      if (this.stopping.signal.aborted) return;
      await rollUpPacks(remote, { signal: this.stopping.signal }).catch((err: Error) => this.log.warn(`git repack --geometric=2 in ${remote.gitDir} failed: ${err.message}; tried again at the next maintenance`));
    }
  }

  private arm(ms: number): void {
    clearTimeout(this.timer);
    if (this.closed) return;
    this.timer = setTimeout(() => this.launch("periodic"), ms);
    this.timer.unref();
  }

  private launch(why: string): void {
    if (this.running || this.closed) return;
    this.commits = 0;
    this.paths = 0;
    const t0 = Date.now();
    const run = this.gate(async () => {
      // Started while nothing of ours writes; not awaited inside the gate (commits need not wait for a repack).
      return { done: runAutoMaintenance(this.repo, { signal: this.stopping.signal }) };
    })
      // The local remotes' packs are rolled up whether or not the sandbox's run succeeded.
      .then(({ done }) => done.finally(() => this.rollUpRemotes()))
      .then(
        () => this.log.debug(`git maintenance run --auto (${why}) took ${Date.now() - t0} ms`),
        (err: Error) => this.log.warn(`git maintenance run --auto failed: ${err.message}; tried again later`),
      )
      .finally(() => {
        this.running = undefined;
        this.arm(this.policy.periodMs);
      });
    this.running = run;
  }
}
