import type { Config } from "./config/types.js";
import type { CascadeError } from "./errors.js";
import type { Exclusions } from "./exclusions.js";
import type { Repo, Person } from "./git/repo.js";
import type { Clock } from "./clock.js";
import type { Logger } from "./log.js";
import type { Notifier } from "./notify.js";
import type { GateRunner } from "./pipeline/gates.js";
import type { PipelineStore } from "./pipeline/store.js";
import type { HistoryLog } from "./pipeline/history.js";
import type { EnvironmentReport } from "../reconcilers/environment.js";
import type { Metrics } from "./server/metrics.js";
import type { ProgressReporter } from "./progress.js";
import type { Finding } from "./security/scan.js";
import type { CommandSourceEnv } from "./pipeline/command-env.js";
import type { LeaseBook } from "./pipeline/lease.js";

/** What the environment reconcilers share: their memory, the gate runner, the process environment for commands, and their reports. */
export interface PipelineServices {
  store: PipelineStore;
  gates: GateRunner;
  history: HistoryLog;
  /** What commands and committed configs may read of the controller's environment (its own credentials withheld); `env` is `source.env`. */
  env: NodeJS.ProcessEnv;
  source: CommandSourceEnv;
  reports: Record<string, EnvironmentReport>;
  /** Each environment's lease on the first remote (a team: only the holder acts); absent: no leases kept. */
  leases?: LeaseBook;
  /**
   * What keeps an environment's branch from being in step with a remote (environment -> remote ->
   * problem), as the remote reconcilers last found it: the environment shows it in status, while the
   * sandbox branch's sync goes on.
   */
  branchProblems?: Map<string, Map<string, CascadeError>>;
}

/** A status condition, as in Kubernetes/Flux: a type, whether it holds, a stable reason and a message. */
export interface Condition {
  type: "Ready" | "Reconciling" | "Stalled";
  status: boolean;
  reason: string;
  message: string;
  hint?: string;
}

/** What a reconcile pass asks of the loop: when to look again (undefined: only when woken). */
export interface Result {
  requeueAfterMs?: number;
  /** A one-line account of what was done, for the log and `status`. */
  summary?: string;
  /**
   * A part of the work that cannot go on until a person acts, while the rest went on (an environment
   * branch moved elsewhere on a remote, while the sandbox branch synced with it): shown in status as
   * the reconciler's error, and the next pass still comes at `requeueAfterMs`, with no backoff.
   */
  problem?: CascadeError;
}

/** The pure output of `plan`: actions to apply, and why nothing (more) happens. */
export interface Plan<A> {
  actions: A[];
  /** Set when the reconciler cannot proceed until a person acts (e.g. wrong branch checked out). */
  blocked?: { reason: string; message: string; hint?: string };
  requeueAfterMs?: number;
}

/** Shared facts the reconcilers report for `status`. */
export interface SharedState {
  lastCommit?: { commit: string; message: string; at: string };
  pendingPaths: number;
  /** Files not committed because they match security.encrypt and there is no key (they never leave in plaintext). */
  heldBack: string[];
  /** Why there is no usable encryption key, when files are held back for it. */
  keyProblem?: { reason: string; message: string; hint?: string };
  /** Files kept out of commits by the secret scan or their size, by path (never holding the secret itself). */
  findings: Record<string, Finding[]>;
  /** Set once the first whole-sandbox scan of this run has ended (its progress is shown, later ones are not). */
  scannedOnce?: boolean;
  remotes: Record<string, { lastPush?: { commit: string; at: string }; lastFetch?: { commit: string | null; at: string }; relation?: string }>;
}

/** Everything a reconciler may use: the world (repo), the loop's services, and hints. */
export interface ReconcileContext {
  repo: Repo;
  exclusions: Exclusions;
  log: Logger;
  notifier: Notifier;
  clock: Clock;
  state: SharedState;
  /** Paths the watcher says may have changed; `full` asks for a whole-tree scan. */
  hints: { paths: Set<string>; full: boolean };
  /** Marks a path for the next sandbox batch (e.g. a merge left it alone because it is being edited). */
  hint(path: string): void;
  /** Hands changed paths this sandbox pass does not take to the next one, which follows at once. */
  leaveForNextPass(paths: readonly string[]): void;
  /** Runs `fn` while no other reconciler mutates the sandbox's branch, index or files. */
  exclusive<T>(fn: () => Promise<T>): Promise<T>;
  /** The author/committer for commits made now. */
  who(): Promise<Person>;
  /** Tells the loop that the sandbox branch moved (remotes push soon). */
  branchMoved(): void;
  /** Caps every remote's timeout (set while stopping). */
  timeoutCapMs?: number;
  /** Counters and histograms for /metrics. */
  metrics: Metrics;
  /** Progress of long work on the terminal (the first scan, a remote's first push). */
  progress: ProgressReporter;
  /** The promotion pipeline's services (absent only in contexts that never run environments). */
  pipeline?: PipelineServices;
}

/**
 * One reconciler: a name and three stages kept apart. `observe` does read-only I/O and returns
 * plain data, `plan` is pure, `apply` holds every side effect. `cascade-sync plan` is observe +
 * plan + print; the controller runs `reconcile`.
 */
export interface Reconciler<O = unknown, A = unknown> {
  name: string;
  observe(ctx: ReconcileContext, desired: Config): Promise<O>;
  plan(desired: Config, observed: O): Plan<A>;
  apply(ctx: ReconcileContext, desired: Config, plan: Plan<A>, observed: O): Promise<Result>;
  /** A line a person can read for one action (used by `plan`). */
  describe(action: A): string;
}

/** Plans and applies one pass for already observed state. */
export async function reconcile<O, A>(r: Reconciler<O, A>, ctx: ReconcileContext, desired: Config, observed: O): Promise<Result> {
  return r.apply(ctx, desired, r.plan(desired, observed), observed);
}
