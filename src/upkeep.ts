import type { Logger } from "./log.js";
import type { Repo } from "./git/repo.js";
import { localRepositoryAt, recoverGitLocks, type LockDecision } from "./git/native/locks.js";
import { AutoMaintenance, DEFAULT_MAINTENANCE, type MaintenancePolicy } from "./git/native/maintenance.js";
import { unsyncedEmbeddedRepositories, type EmbeddedRepository } from "./git/native/embedded.js";
import type { GitRepo } from "./git/native/run.js";

/** Embedded repositories are looked at again at most this often (a whole-tree `git status` each time). */
const EMBEDDED_REFRESH_MS = 60_000;

/**
 * The sandbox's housekeeping beside the loop: at start, git locks a crashed git left in the sandbox and
 * in local remotes are cleared; after commits and periodically, `git maintenance run --auto` keeps the
 * object store packed (and the packs our pushes leave in local remotes are rolled up); after commits and whole-tree scans, the embedded repositories whose content
 * does not travel with the sandbox are listed for `status`. Nothing here fails a pass: problems are logged.
 */
export class SandboxUpkeep {
  private readonly maintenance: AutoMaintenance;
  private embedded: EmbeddedRepository[] = [];
  private embeddedAt = -Infinity;
  private embeddedRun: Promise<void> | undefined;

  constructor(
    private readonly repo: Repo,
    gate: <T>(fn: () => Promise<T>) => Promise<T>,
    private readonly log: Logger,
    private readonly now: () => number,
    /** Called when what status shows changed (the embedded repositories were looked at again). */
    private readonly changed: () => void,
    policy: MaintenancePolicy = DEFAULT_MAINTENANCE,
    /** The config's local remotes (their paths), read at start and at each maintenance run: a reload may change them. */
    private readonly localRemotes: () => readonly string[] = () => [],
  ) {
    this.maintenance = new AutoMaintenance(this.git(), gate, log, policy, async () => {
      const found = await Promise.all(this.localRemotes().map((path) => localRepositoryAt(path)));
      return found.filter((r) => r !== undefined).map((r) => ({ gitDir: r.gitDir, cwd: r.gitDir }));
    });
  }

  /**
   * Before the first pass: clears stale git locks in the sandbox and in the config's local remotes
   * (each one logged), then arms periodic maintenance. Resolves with what was decided for each lock.
   */
  async start(): Promise<LockDecision[]> {
    const decisions = await recoverGitLocks({ gitDir: this.repo.gitdir, workTree: this.repo.dir }, this.localRemotes(), this.log);
    this.maintenance.start();
    return decisions;
  }

  /** After a sandbox pass: `committed` paths went into a commit (0: none); `full` when it scanned the whole tree. */
  afterSandboxPass(committed: number, full: boolean): void {
    if (committed > 0) this.maintenance.committed(committed);
    if ((committed > 0 || full) && this.now() - this.embeddedAt >= EMBEDDED_REFRESH_MS) void this.refreshEmbedded();
  }

  /** Embedded repositories not synced, as last looked at (for status). */
  embeddedRepositories(): EmbeddedRepository[] {
    return this.embedded;
  }

  /** Looks at the embedded repositories now (one look at a time); resolves when done. Never rejects. */
  refreshEmbedded(): Promise<void> {
    this.embeddedRun ??= (async () => {
      this.embeddedAt = this.now();
      try {
        const found = await unsyncedEmbeddedRepositories(this.git(), this.repo.dir);
        const before = JSON.stringify(this.embedded);
        this.embedded = found;
        if (JSON.stringify(found) !== before) this.changed();
      } catch (err) {
        this.log.debug(`cannot list embedded repositories: ${(err as Error).message}`);
      } finally {
        this.embeddedRun = undefined;
      }
    })();
    return this.embeddedRun;
  }

  /** Stops periodic work; a maintenance run under way gets a few seconds to finish, then is stopped. */
  async close(): Promise<void> {
    await this.maintenance.close();
    await this.embeddedRun;
  }

  /** Waits for maintenance and the embedded look under way (tests). */
  async idle(): Promise<void> {
    await this.maintenance.idle();
    await this.embeddedRun;
  }

  private git(): GitRepo {
    return { cwd: this.repo.dir, gitDir: this.repo.gitdir, workTree: this.repo.dir };
  }
}
