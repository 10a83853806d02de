import { setTimeout as sleep } from "node:timers/promises";
import { lstatSync, watch, type FSWatcher } from "node:fs";
import { join, posix } from "node:path";
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { CONFIG_FILE, formatProblem, loadConfig } from "./config/load.js";
import { DOTENV_FILE, dotenvPath } from "./config/dotenv.js";
import type { Config, ConfigProblem, VariableSource } from "./config/types.js";
import { CascadeError, stalled, toCascadeError } from "./errors.js";
import { exclusionsFor, type Exclusions } from "./exclusions.js";
import { Repo, requireUsableRepository, type Person } from "./git/repo.js";
import type { Clock } from "./clock.js";
import { fixableByCommit, FAST_RACE_RETRIES, RACE_REASONS, retryDelay } from "./backoff.js";
import type { Logger } from "./log.js";
import { Notifier } from "./notify.js";
import type { Redactor } from "./redact.js";
import { reconcile, type Condition, type Plan, type ReconcileContext, type Reconciler, type Result, type SharedState } from "./reconcile.js";
import { ensureRuntimeDir, writeRuntimeFile } from "./runtime.js";
import { SandboxWatcher } from "./watcher.js";
import { withoutPathsInGoneFolders } from "./hints.js";
import { MAX_PASS_PATHS, sandboxReconciler } from "../reconcilers/sandbox.js";
import { remoteReconciler, resumeIntegration } from "../reconcilers/remote.js";
import { environmentReconciler, readLeasePolicy, type EnvironmentReport } from "../reconcilers/environment.js";
import { assumeLeasePlan, LeaseBook, leaseReconciler, localHolder } from "./pipeline/lease.js";
import { GateRunner } from "./pipeline/gates.js";
import { CommandSourceEnv, controllerVariableNames } from "./pipeline/command-env.js";
import { HistoryLog, type HistoryEntry } from "./pipeline/history.js";
import { promotionOrder } from "./config/pipeline.js";
import { PipelineStore } from "./pipeline/store.js";
import { Metrics } from "./server/metrics.js";
import { loadBlobPolicy, type LoadedPolicy } from "./security/blob-policy.js";
import { setUpEncryptionFilter } from "./security/git-filter.js";
import type { Finding } from "./security/scan.js";
import { noProgress, type ProgressReporter } from "./progress.js";
import { startStatusServer, type StatusServer } from "./server/http.js";
import { recentHistory } from "./history/page-data.js";
import type { PipelineServices } from "./reconcile.js";
import { requireGitVersion } from "./git/native/version.js";
import { SandboxUpkeep } from "./upkeep.js";
import type { EmbeddedRepository } from "./git/native/embedded.js";

/** Per-reconciler bookkeeping: when it runs next, how often it failed, what it last said. */
interface Slot {
  r: Reconciler<any, any>;
  nextRunAt: number | undefined;
  failures: number;
  running: boolean;
  /** The pass under way (launched by the loop), while `running`. */
  pass?: Promise<unknown>;
  /** Something that may fix this reconciler's failure happened during the pass under way: if it fails, it looks again soon. */
  wokenWhileRunning?: boolean;
  /** The problem a successful pass reported last (logged once, not on every pass). */
  lastProblem?: string;
  /** When the last pass started; undefined before the first. */
  lastRunAt?: number;
  /** When the last pass ended. */
  lastDoneAt?: number;
  lastError?: { kind: string; reason: string; message: string; hint?: string; at: string };
  lastSummary?: string;
  lastSuccessAt?: string;
  conditions: Condition[];
}

/** The controller's view, written to .git/cascade-sync/status.json and shown by `status`. */
export interface StatusSnapshot {
  version: 1;
  pid: number;
  running: boolean;
  startedAt: string;
  updatedAt: string;
  sandbox: {
    dir: string; branch: string; head: string | null; pendingPaths: number;
    /** Files matching security.encrypt held back for want of a usable key (`keyProblem` says why). */
    heldBack: string[]; keyProblem?: SharedState["keyProblem"];
    /** Files held back by the secret scan or their size: where, which rule, the fingerprint (never the secret). */
    findings?: Finding[];
    lastCommit?: SharedState["lastCommit"];
    /** Embedded repositories (nested folders with their own .git) whose content does not travel with the sandbox. */
    embedded?: EmbeddedRepository[];
    /** `sandbox.paused: true` is in force: nothing is committed, `pendingPaths` wait. */
    paused?: boolean;
  };
  /** `variables`: where each ${VAR} of the config in force came from (`shell`, `.env`, `missing`), never a value. */
  config: { file: string; valid: boolean; problems: string[]; lastGoodAt: string; variables?: VariableSource[] };
  remotes: { name: string; url: string; lastPush?: { commit: string; at: string }; lastFetch?: { commit: string | null; at: string }; relation?: string; error?: Slot["lastError"]; paused?: boolean }[];
  /** `lastRunAt`/`lastDoneAt`: when the last pass started/ended; `running`: a pass is under way (its results are not in this snapshot yet). */
  reconcilers: { name: string; conditions: Condition[]; failures: number; running: boolean; lastRunAt?: string; lastDoneAt?: string; nextRunAt?: string; lastError?: Slot["lastError"]; lastSummary?: string; lastSuccessAt?: string }[];
  /** Each environment of the pipeline, in promotion order, as its reconciler last saw it. */
  environments: (EnvironmentReport & { error?: Slot["lastError"] })[];
  /** Recent promotions, rollbacks, deploys and rejected approvals, oldest first. */
  history: HistoryEntry[];
  /** The status page and /metrics, while the controller serves them (`server.listen`). */
  server?: { url: string };
  /** Subject, author and time of every commit named above (sandbox and environment heads, candidates, targets). */
  commits?: Record<string, CommitInfo>;
}

/** What status shows of a commit. */
export interface CommitInfo {
  subject: string;
  author: string;
  at: string;
}

export interface ControllerDeps {
  configFile: string;
  env: NodeJS.ProcessEnv;
  clock: Clock;
  log: Logger;
  redactor: Redactor;
  /** Progress of long work on the terminal; none by default (commands other than `start`). */
  progress?: ProgressReporter;
}

/** One promoter per environment in a team: the leases on the first remote (issue 15). */
const leases = leaseReconciler(readLeasePolicy);

const STALLED_PROBE_MS = 60_000;
const STATUS_THROTTLE_MS = 500;
const STOP_TIMEOUT_MS = 10_000;
/** How long git's user.name and user.email are taken as read (see Controller.gitIdentity). */
const IDENTITY_MS = 5_000;
/** How long a stop, or a one-shot command, lets queued notifications be delivered before giving up on them. */
const NOTIFY_GRACE_MS = 3_000;
/** How long a one-shot command (`reconcile`) waits for a race to clear before it can finish an interrupted integration. */
const RESUME_PATIENCE_ONCE_MS = 30_000;
/** A batch with at least this many hinted paths may have lost events to an inotify overflow. */
const BURST_RESCAN_THRESHOLD = 1000;
/**
 * The long-running loop: observes the sandbox, the remotes and the config, and reconciles them
 * toward the config. Watcher events, timers and config edits only wake reconcilers; each one
 * re-observes. Failures back off per reconciler and never stop the others.
 */
export class Controller {
  private slots = new Map<string, Slot>();
  private hints = { paths: new Set<string>(), full: true };
  private firstHintAt: number | undefined;
  /** Paths of the big burst being committed (over a few passes), for the rescan that follows it. */
  private burstPaths = 0;
  /** The last (or current) sandbox pass took only part of the batch: the rest is due when it ends. */
  private batchLeft = false;
  private lastHintAt: number | undefined;
  private configDueAt: number | undefined;
  private nextRescanAt: number | undefined;
  private wakeUp: (() => void) | undefined;
  private mutex: Promise<unknown> = Promise.resolve();
  private identity: { at: number; value: Promise<{ name?: string; email?: string }> } | undefined;
  private readonly inflight = new Set<Promise<unknown>>();
  /** Set by a nudge: run every environment once the sandbox's next pass has ended. */
  private environmentsAfterSandbox = false;
  private statusWrite: Promise<void> = Promise.resolve();
  /** Pending changes arrived since status.json was written; it is rewritten at most every STATUS_THROTTLE_MS. */
  private statusDirty = false;
  private lastStatusAt = 0;
  private readonly state: SharedState = { pendingPaths: 0, remotes: {}, heldBack: [], findings: {} };
  private configProblems: ConfigProblem[] = [];
  /** Warnings of the config in force (unknown keys, for one), shown in status while it is valid. */
  private configWarnings: ConfigProblem[] = [];
  private configLastGoodAt: string;
  private lastConfigDigest = "";
  private readonly startedAt: string;
  private watcher: SandboxWatcher | undefined;
  private head: string | null = null;
  private timeoutCapMs: number | undefined;
  /** The status server while one listens (`server.listen`), and the address it was started for. */
  private server: { listen: string; token: string; running: Promise<StatusServer | undefined>; url?: string } | undefined;
  /** Set once the first whole-sandbox pass has ended (/readyz). */
  private scanned = false;
  /** How long `open` took to check the encryption filter (for the start's report of where its time went). */
  private encryptionCheckMs = 0;
  /** When the loop last turned (/healthz: a loop stuck for long is not healthy). */
  private lastTurnAt = 0;
  /** Set while start() runs the loop (a one-shot pass releases its leases when it ends). */
  private looping = false;
  /** Commits are immutable: what status shows of each is read once. */
  private readonly commitInfos = new Map<string, CommitInfo>();
  /** Stale git locks at start, `git maintenance run --auto`, embedded repositories for status. */
  private readonly upkeep: SandboxUpkeep;

  private constructor(
    private readonly deps: ControllerDeps,
    private config: Config,
    private readonly repo: Repo,
    private exclusions: Exclusions,
    private readonly notifier: Notifier,
    private readonly pipeline: PipelineServices,
    private readonly metrics: Metrics,
  ) {
    this.startedAt = new Date(deps.clock.now()).toISOString();
    this.configLastGoodAt = this.startedAt;
    this.upkeep = new SandboxUpkeep(repo, (fn) => this.exclusive(fn), deps.log, () => this.now(), () => {
      this.statusDirty = true;
      this.wakeUp?.();
    }, undefined, () => this.config.remotes.filter((r) => r.kind === "local").map((r) => r.url));
    this.rebuildSlots();
  }

  /**
   * Loads the config and opens the sandbox. Throws Stalled `ConfigInvalid` (with every problem in
   * the message) when there is no valid config to start from, `NotASandbox` when the folder has no
   * git repository.
   */
  static async open(deps: ControllerDeps): Promise<Controller> {
    // The installed git is the engine: refuse one too old before anything is read or written.
    await requireGitVersion();
    const loaded = await loadConfig(deps.configFile, deps.env);
    if (!loaded.ok) {
      throw stalled("ConfigInvalid", `the config is not valid:\n${loaded.problems.map(formatProblem).join("\n")}`, "fix the problems above, then run `cascade-sync validate`");
    }
    const config = loaded.config;
    for (const w of loaded.warnings) deps.log.warn(formatProblem(w));
    for (const s of config.secrets) deps.redactor.add(s);
    const repo = await Repo.open(config.dir).catch(() => {
      throw stalled("NotASandbox", `${config.dir} is not a git repository`, `run \`cascade-sync init ${config.dir}\``);
    });
    await requireUsableRepository(repo.gitdir);
    await ensureRuntimeDir(repo.gitdir);
    const exclusions = await exclusionsFor(config);
    await exclusions.writeInfoExclude(repo.gitdir);
    const loadedPolicy = await loadBlobPolicy(config, deps.env);
    repo.policy = loadedPolicy.policy;
    const checkBegan = performance.now();
    for (const line of await setUpEncryptionFilter(repo, { encrypt: config.security.encrypt, policy: loadedPolicy.policy })) deps.log.info(line);
    const encryptionCheckMs = performance.now() - checkBegan;
    const notifier = new Notifier(config.notifications, deps.log, deps.redactor, deps.clock);
    let c: Controller | undefined;
    const metrics = new Metrics();
    // Gates, hooks, health checks and committed configs never see the controller's own credentials.
    const source = new CommandSourceEnv(deps.env, controllerVariableNames(config));
    const pipeline: PipelineServices = {
      store: await PipelineStore.load(repo.gitdir),
      // A finished gate run wakes its environment at once.
      gates: await GateRunner.open(repo, deps.log, source, (env) => c?.wake(`env:${env}`), (env, g) => metrics.gateResult(env, g.name, g.ok)),
      history: await HistoryLog.open(repo.gitdir, (entry) => metrics.recordHistory(entry)),
      env: source.env,
      source,
      reports: {},
      leases: new LeaseBook(localHolder(deps.env)),
    };
    c = new Controller(deps, config, repo, exclusions, notifier, pipeline, metrics);
    c.lastConfigDigest = await configDigest(config.file);
    c.configWarnings = loaded.warnings;
    c.usePolicy(loadedPolicy);
    c.encryptionCheckMs = encryptionCheckMs;
    return c;
  }

  /** The config in force (the last valid one). */
  get current(): Config {
    return this.config;
  }

  /**
   * Runs until `signal` aborts: watches the sandbox, runs a full scan first (edits made while
   * stopped are committed), then reconciles on events and timers. On abort it commits the pending
   * batch and pushes it if the remotes are reachable, then resolves.
   */
  async start(signal: AbortSignal, onReady?: () => void): Promise<void> {
    // Milliseconds since the process started (Node's time origin), for the report of where the start's time went.
    const opened = performance.now();
    await this.upkeep.start();
    this.watcher = new SandboxWatcher(this.config.dir, this.repo.gitdir, () => this.exclusions, {
      changed: (rel) => this.onPathChanged(rel),
      headChanged: () => this.retryStalled(),
      missedEvents: (why) => {
        this.deps.log.warn(`${why}; rescanning the whole sandbox`);
        this.rescanAll();
      },
    });
    await this.watcher.start();
    const watching = performance.now();
    // A merge a crash interrupted is finished before anything can commit its half-written files as sandbox edits.
    await this.finishInterruptedIntegration(signal);
    const dotenvWatch = this.watchDotenv();
    this.requestFullScan();
    // Edits made while stopped are committed at once, not after a debounce.
    for (const slot of this.slots.values()) slot.nextRunAt = this.now();
    this.nextRescanAt = this.now() + this.config.intervals.rescanMs;
    this.looping = true;
    const onAbort = () => this.wakeUp?.();
    signal.addEventListener("abort", onAbort);
    try {
      await this.serveStatus();
      while (!signal.aborted) {
        this.lastTurnAt = this.now();
        await this.launchDue();
        if (this.statusDirty && this.now() >= this.lastStatusAt + STATUS_THROTTLE_MS) this.saveStatus();
        const sandbox = this.slots.get("sandbox")!;
        // Ready once the first pass over the whole sandbox has finished (also when it failed: status says
        // why), and the passes after it, when it found more than one pass takes.
        if (!this.scanned && sandbox.lastRunAt !== undefined && !sandbox.running && !this.batchLeft) {
          this.scanned = true;
          this.reportStart(opened, watching);
          onReady?.();
        }
        await this.sleepUntilDue(signal);
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
      dotenvWatch?.close();
      await this.watcher.close();
      await this.pipeline.gates.close();
      await this.settlePasses();
      await this.flush();
      await this.upkeep.close();
      await this.stopServing();
      // Notifications are delivered beside the loop; a stop gives the pending ones a few seconds, no more.
      await this.notifier.close(NOTIFY_GRACE_MS);
    }
  }

  /** One full pass (the `reconcile` command): scan the whole sandbox, commit, fetch, merge, push. */
  async runOnce(): Promise<{ ok: boolean; results: { name: string; summary?: string; error?: CascadeError }[] }> {
    this.requestFullScan();
    await this.finishInterruptedIntegration(undefined, RESUME_PATIENCE_ONCE_MS);
    const results: { name: string; summary?: string; error?: CascadeError }[] = [];
    for (const slot of this.orderedSlots()) results.push(await this.runSlot(slot));
    // Remote commits merged in the first pass may leave edited paths to commit, and new commits to push.
    if (this.hints.paths.size) {
      for (const slot of this.orderedSlots()) results.push(await this.runSlot(slot));
    }
    results.push(...(await this.settleEnvironments()));
    await this.writeStatus(false);
    await this.notifier.settle(NOTIFY_GRACE_MS);
    return { ok: results.every((r) => !r.error), results };
  }

  /**
   * Finishes a merge of remote commits that a crash interrupted (resumeIntegration), before anything
   * may commit the sandbox. A race is waited out rather than ending the start: a lock held by a live
   * git (a person's `git commit` in the sandbox, a git the killed controller left running) or the
   * branch moving is retried with a growing pause (at most 2 s) until it clears, the signal aborts,
   * or `patienceMs` passed. Rejects with the last error then, and at once with any other kind of
   * error (a person must act).
   */
  private async finishInterruptedIntegration(signal?: AbortSignal, patienceMs = Number.POSITIVE_INFINITY): Promise<void> {
    const since = this.now();
    for (let attempt = 1; ; attempt++) {
      try {
        await this.exclusive(() => resumeIntegration(this.context()));
        return;
      } catch (err) {
        const e = toCascadeError(err);
        if (e.kind !== "Transient" || signal?.aborted || this.now() - since >= patienceMs) throw err;
        if (attempt === 1) this.deps.log.warn(`finishing an interrupted integration: ${e.message}; retrying until it clears`, { reason: e.reason });
        await sleep(Math.min(2_000, 100 * 2 ** attempt));
      }
    }
  }

  /**
   * Runs the environments (in promotion order) until none has anything left to do now: gates
   * running in the background are awaited, a promotion is followed by its deploy and by the next
   * environment's pass, and the remotes push what moved. Bounded, so a flapping state cannot spin.
   */
  async settleEnvironments(only?: string[]): Promise<{ name: string; summary?: string; error?: CascadeError }[]> {
    const results: { name: string; summary?: string; error?: CascadeError }[] = [];
    const envs = () => this.orderedSlots().filter((s) => s.r.name.startsWith("env:") && (!only || only.includes(s.r.name.slice(4))));
    // The leases first: only an environment whose lease this controller holds is acted on.
    const leaseSlot = this.slots.get(leases.name);
    if (leaseSlot && !leaseSlot.running) results.push(await this.runSlot(leaseSlot));
    for (let round = 0; round < 10; round++) {
      let again = false;
      for (const slot of envs()) {
        const env = slot.r.name.slice(4);
        await this.pipeline.gates.idle(env);
        const r = await this.runSlot(slot);
        results.push(r);
        if (slot.nextRunAt !== undefined && slot.nextRunAt <= this.now()) again = true;
        if (this.pipeline.gates.running(env)) again = true;
      }
      if (!again) break;
    }
    for (const slot of this.orderedSlots().filter((s) => s.r.name.startsWith("remote:"))) results.push(await this.runSlot(slot));
    // A one-shot pass (reconcile, deploy-*) lets go of its leases: the team need not wait for them to expire.
    if (!this.looping) await leases.release(this.context(), this.config);
    // A one-shot command (deploy-*) exits after this: what it notified gets a few seconds to be delivered.
    await this.notifier.settle(NOTIFY_GRACE_MS);
    return results;
  }

  /** Observes and plans every reconciler (or those named in `only`) without applying anything (the `plan` command). */
  async planAll(only?: string[]): Promise<{ name: string; plan?: Plan<unknown>; lines: string[]; error?: CascadeError }[]> {
    this.requestFullScan();
    const out: { name: string; plan?: Plan<unknown>; lines: string[]; error?: CascadeError }[] = [];
    for (const slot of this.orderedSlots().filter((s) => !only || only.includes(s.r.name))) {
      try {
        const observed = await slot.r.observe(this.context(), this.config);
        const plan = slot.r.plan(this.config, observed);
        // The environments are planned as they would be once the lease plan is applied (taken, renewed, or followed).
        if (slot.r === leases && this.pipeline.leases) assumeLeasePlan(this.pipeline.leases, observed, plan);
        out.push({ name: slot.r.name, plan, lines: plan.actions.map((a) => slot.r.describe(a)) });
      } catch (err) {
        out.push({ name: slot.r.name, lines: [], error: toCascadeError(err) });
      }
    }
    return out;
  }

  /** A hint from the watcher: `rel` may have changed. */
  onPathChanged(rel: string): void {
    // .env feeds the config's ${VAR}s: its edit is a config edit.
    if (rel === CONFIG_FILE || rel === DOTENV_FILE) this.configDueAt = this.now() + this.config.sandbox.debounceMs;
    if (rel === ".gitignore" || rel.endsWith("/.gitignore")) void this.gitignoreChanged(rel);
    this.addHint(rel);
  }

  /**
   * Watches the sandbox's top folder for edits of .env on its own: .env is often git-ignored or
   * excluded, and the sandbox watcher reports no excluded path. Undefined when the folder cannot be
   * watched (the sandbox watcher then reports why).
   */
  private watchDotenv(): FSWatcher | undefined {
    try {
      const w = watch(this.config.dir, { persistent: false }, (_event, name) => {
        if (name?.toString() !== DOTENV_FILE) return;
        this.configDueAt = this.now() + this.config.sandbox.debounceMs;
        this.wakeUp?.();
      });
      w.on("error", () => undefined);
      return w;
    } catch {
      return undefined;
    }
  }

  /**
   * A .gitignore changed: its rules apply from now on. The folder it governs is observed again
   * (a path no longer ignored gets committed) and its watches follow the new rules.
   */
  private async gitignoreChanged(rel: string): Promise<void> {
    const folder = posix.dirname(rel) === "." ? "" : posix.dirname(rel);
    try {
      await this.exclusions.reload();
      if (folder === "") this.requestFullScan();
      else this.addHint(folder);
      await this.watcher?.rewatch(folder);
    } catch (err) {
      this.deps.log.warn(`cannot read ${rel} again: ${(err as Error).message}; rescanning`);
      this.requestFullScan();
    }
  }

  /** Logs where the start's time went, from the process's start to ready (times from performance.now()). */
  private reportStart(opened: number, watching: number): void {
    const ms = (n: number) => Math.round(n);
    const s = (n: number) => `${(n / 1000).toFixed(2)} s`;
    const ready = performance.now();
    const folders = this.watcher?.watchedFolders ?? 0;
    this.deps.log.info(
      `ready ${s(ready)} after the process started: loading and opening ${s(opened)} (of which the encryption check ${s(this.encryptionCheckMs)}), ` +
        `watching ${folders} folder(s) ${s(watching - opened)}, the first whole-tree scan and its commits ${s(ready - watching)}`,
      { readyMs: ms(ready), openMs: ms(opened), encryptionCheckMs: ms(this.encryptionCheckMs), watchMs: ms(watching - opened), folders, firstPassMs: ms(ready - watching) },
    );
  }

  /** Runs the reconciler named `name` soon (e.g. when its background gates finished). */
  wake(name: string): void {
    const slot = this.slots.get(name);
    if (!slot) return;
    slot.nextRunAt = this.now();
    this.wakeUp?.();
  }

  /**
   * Runs every reconciler now with a full scan (the nudge of `reconcile` and `deploy-*` to a running
   * controller): the sandbox first, and the environments once its pass has ended, so that they see
   * what it committed.
   */
  reconcileNow(): void {
    this.requestFullScan();
    for (const s of this.slots.values()) if (!s.r.name.startsWith("env:")) s.nextRunAt = this.now();
    this.environmentsAfterSandbox = true;
    this.wakeUp?.();
  }

  /** Runs every Stalled reconciler again soon: something a person does may have unblocked it. */
  retryStalled(): void {
    for (const s of this.slots.values()) {
      if (s.lastError?.kind === "Stalled") s.nextRunAt = this.now() + this.config.sandbox.debounceMs;
    }
    this.wakeUp?.();
  }

  /** Asks for a whole-tree scan in the next batch (start, periodic rescan, missed events). */
  requestFullScan(): void {
    this.hints.full = true;
    this.addHint(undefined);
  }

  /** A whole-tree scan that also checks every folder's watch (an event a watch missed may have left a folder unwatched). */
  private rescanAll(): void {
    this.requestFullScan();
    void this.watcher?.rewatch("").catch((err: unknown) => this.deps.log.warn(`cannot check the sandbox's watches: ${(err as Error).message}`));
  }

  private addHint(rel: string | undefined): void {
    const now = this.now();
    if (rel !== undefined) this.hints.paths.add(rel);
    this.firstHintAt ??= now;
    this.lastHintAt = now;
    this.state.pendingPaths = this.hints.paths.size;
    this.statusDirty = true;
    const slot = this.slots.get("sandbox")!;
    const { debounceMs, batchWindowMs } = this.config.sandbox;
    const due = Math.min(this.lastHintAt + debounceMs, this.firstHintAt + batchWindowMs);
    // A slot in backoff keeps its retry time unless the batch is due later than that.
    slot.nextRunAt = slot.failures > 0 && slot.nextRunAt !== undefined ? Math.max(slot.nextRunAt, due) : due;
    this.wakeUp?.();
  }

  /** Sandbox first, then the environments in promotion order, then the remotes (which push what moved). */
  private orderedSlots(): Slot[] {
    return [...this.slots.values()];
  }

  /**
   * Starts every due reconciler without waiting for it: a remote that hangs until its timeout
   * never delays the sandbox's commits. Mutations of the branch are serialized by `exclusive`
   * and guarded by compare-and-swap, so concurrent passes cannot overwrite each other.
   */
  private async launchDue(): Promise<void> {
    if (this.configDueAt !== undefined && this.configDueAt <= this.now()) {
      this.configDueAt = undefined;
      await this.reloadConfig();
    }
    if (this.nextRescanAt !== undefined && this.nextRescanAt <= this.now()) {
      // Read from the config on each turn, so an edited rescan interval applies at once.
      this.nextRescanAt = this.now() + this.config.intervals.rescanMs;
      this.rescanAll();
    }
    for (const slot of this.orderedSlots()) {
      if (slot.running || slot.nextRunAt === undefined || slot.nextRunAt > this.now()) continue;
      const run: Promise<unknown> = this.runSlot(slot).finally(() => {
        slot.pass = undefined;
        this.inflight.delete(run);
        this.saveStatus();
        this.wakeUp?.();
      });
      this.inflight.add(run);
      slot.pass = run;
    }
  }

  /** Writes status.json after the writes already queued (never two at once). */
  private saveStatus(): Promise<void> {
    this.statusDirty = false;
    this.lastStatusAt = this.now();
    this.statusWrite = this.statusWrite
      .then(() => this.writeStatus(true))
      .catch((err) => this.deps.log.warn(`cannot write status: ${(err as Error).message}`));
    return this.statusWrite;
  }

  private async runSlot(slot: Slot): Promise<{ name: string; summary?: string; error?: CascadeError }> {
    const isSandbox = slot.r.name === "sandbox";
    const taken = isSandbox ? this.takeHints() : undefined;
    slot.running = true;
    slot.wokenWhileRunning = false;
    slot.nextRunAt = undefined;
    slot.lastRunAt = this.now();
    const ctx = this.context(taken);
    const lastCommit = this.state.lastCommit;
    try {
      const t0 = Date.now();
      const observed = await slot.r.observe(ctx, this.config);
      const t1 = Date.now();
      const result: Result = await reconcile(slot.r, ctx, this.config, observed);
      this.deps.log.debug(`${slot.r.name}: ${result.summary ?? "done"}`, { observeMs: t1 - t0, applyMs: Date.now() - t1 });
      this.succeeded(slot, result);
      if (taken) this.upkeep.afterSandboxPass(this.state.lastCommit === lastCommit ? 0 : taken.full ? Infinity : taken.paths.size, taken.full);
      if (taken && !taken.full && taken.paths.size >= BURST_RESCAN_THRESHOLD) this.burstPaths += taken.paths.size;
      if (isSandbox && this.burstPaths && this.hints.paths.size === 0) {
        // inotify drops events without an error when its queue overflows in a big burst: once the
        // burst has been committed, look at the whole tree to catch what the events missed.
        this.deps.log.info(`a burst of ${this.burstPaths} changed paths: rescanning the whole sandbox after it`);
        this.burstPaths = 0;
        this.rescanAll();
      }
      return { name: slot.r.name, ...(result.summary ? { summary: result.summary } : {}) };
    } catch (err) {
      const e = toCascadeError(err);
      if (taken) this.returnHints(taken);
      await this.failed(slot, e, err);
      return { name: slot.r.name, error: e };
    } finally {
      slot.running = false;
      slot.lastDoneAt = this.now();
      if (isSandbox && this.environmentsAfterSandbox) {
        this.environmentsAfterSandbox = false;
        for (const s of this.slots.values()) if (s.r.name.startsWith("env:")) s.nextRunAt = this.now();
      }
    }
  }

  private succeeded(slot: Slot, result: Result): void {
    if (slot.failures > 0 && slot.r.name.startsWith("remote:")) {
      this.deps.log.info(`${slot.r.name} recovered`);
      this.notifier.reset("push-failing", slot.r.name);
    }
    const recovered = slot.failures > 0;
    slot.failures = 0;
    delete slot.lastError;
    if (recovered && slot.r.name === "sandbox") this.retryStalled();
    slot.lastSummary = result.summary;
    slot.lastSuccessAt = new Date(this.now()).toISOString();
    slot.conditions = [{ type: "Ready", status: true, reason: "Succeeded", message: result.summary ?? "reconciled" }];
    if (result.problem) this.reportProblem(slot, result.problem);
    else delete slot.lastProblem;
    if (result.requeueAfterMs !== undefined) slot.nextRunAt = this.earliest(slot.nextRunAt, this.now() + result.requeueAfterMs);
    if (slot.r.name === "sandbox" && this.hints.paths.size === 0 && !this.hints.full) {
      this.firstHintAt = undefined;
      this.lastHintAt = undefined;
    } else if (slot.r.name === "sandbox" && this.batchLeft) {
      // What this pass left of its batch (a burst bigger than one pass takes) goes next.
      slot.nextRunAt = this.now();
    }
  }

  /**
   * A pass that did its main work but left a part a person must look at (an environment branch moved
   * elsewhere, while the sandbox branch synced): shown as the reconciler's error and conditions, logged
   * when it first appears, while the next pass comes as after any success (issue 15: an environment's
   * problem never delays the sandbox branch's sync).
   */
  private reportProblem(slot: Slot, e: CascadeError): void {
    const message = this.deps.redactor.redact(e.message);
    slot.lastError = { kind: e.kind, reason: e.reason, message, ...(e.hint ? { hint: e.hint } : {}), at: new Date(this.now()).toISOString() };
    slot.conditions = [
      { type: "Ready", status: false, reason: e.reason, message, ...(e.hint ? { hint: e.hint } : {}) },
      ...(e.kind === "Stalled" ? [{ type: "Stalled" as const, status: true, reason: e.reason, message, ...(e.hint ? { hint: e.hint } : {}) }] : []),
    ];
    const key = `${e.reason}\0${message}`;
    if (slot.lastProblem === key) return;
    slot.lastProblem = key;
    this.deps.log[e.kind === "Stalled" ? "error" : "warn"](`${slot.r.name}: ${message}${e.hint ? ` (hint: ${e.hint})` : ""}; the rest of its work goes on`, { reconciler: slot.r.name, reason: e.reason, kind: e.kind });
  }

  private async failed(slot: Slot, e: CascadeError, raw: unknown): Promise<void> {
    slot.failures++;
    delete slot.lastProblem;
    const at = new Date(this.now()).toISOString();
    slot.lastError = { kind: e.kind, reason: e.reason, message: this.deps.redactor.redact(e.message), ...(e.hint ? { hint: e.hint } : {}), at };
    let delay: number;
    if (e.kind === "Waiting") delay = e.retryAfterMs ?? this.config.retry.initialMs;
    else if (e.kind === "Stalled") delay = e.retryAfterMs ?? Math.max(this.config.retry.maxMs, STALLED_PROBE_MS);
    else delay = retryDelay(this.config.retry, e.reason, slot.failures);
    // The sandbox branch moved while this pass ran: the new commit may be what it lacked.
    if (slot.wokenWhileRunning && fixableByCommit(e.reason)) delay = Math.min(delay, this.config.retry.initialMs);
    slot.nextRunAt = this.now() + delay;
    slot.conditions = [
      { type: "Ready", status: false, reason: e.reason, message: slot.lastError.message, ...(e.hint ? { hint: e.hint } : {}) },
      ...(e.kind === "Stalled" ? [{ type: "Stalled" as const, status: true, reason: e.reason, message: slot.lastError.message, ...(e.hint ? { hint: e.hint } : {}) }] : []),
    ];
    const level = e.kind === "Stalled" ? "error" : "warn";
    this.deps.log[level](`${slot.r.name}: ${e.message}${e.hint ? ` (hint: ${e.hint})` : ""}; ${e.kind === "Stalled" ? "a person must act" : "retrying"} in ${Math.round(delay / 1000)}s`,
      { reconciler: slot.r.name, reason: e.reason, kind: e.kind, failures: slot.failures, ...(e.reason === "InternalError" ? { stack: (raw as Error)?.stack } : {}) });
    // A lost race is retried at once and is nobody's concern, unless it keeps being lost.
    const race = RACE_REASONS.has(e.reason) && slot.failures <= FAST_RACE_RETRIES;
    if (slot.r.name.startsWith("remote:") && !race && (e.kind === "Stalled" || slot.failures >= 3)) {
      void this.notifier.notify({ event: "push-failing", key: slot.r.name, message: `${slot.r.name}: ${e.message}`, details: { reason: e.reason } });
    }
  }

  private takeHints(): { paths: Set<string>; full: boolean } {
    this.batchLeft = false;
    // A deleted folder is asked about as a whole: its files' own hints would cut it into several commits.
    if (!this.hints.full && this.hints.paths.size > 1) this.hints.paths = withoutPathsInGoneFolders(this.hints.paths, (p) => this.isGone(p));
    if (!this.hints.full && this.hints.paths.size > MAX_PASS_PATHS) {
      // The oldest paths now; the rest is overdue, so the next pass follows this one at once.
      const paths = new Set<string>();
      for (const p of this.hints.paths) {
        if (paths.size === MAX_PASS_PATHS) break;
        paths.add(p);
        this.hints.paths.delete(p);
      }
      this.state.pendingPaths = this.hints.paths.size;
      this.batchLeft = true;
      return { paths, full: false };
    }
    const taken = this.hints;
    this.hints = { paths: new Set(), full: false };
    this.firstHintAt = undefined;
    this.lastHintAt = undefined;
    this.state.pendingPaths = 0;
    return taken;
  }

  /** Changed paths a pass could not take (a whole-tree scan found more than one pass takes): the next pass follows at once. */
  private leaveForNextPass(paths: readonly string[]): void {
    for (const p of paths) this.hints.paths.add(p);
    this.state.pendingPaths = this.hints.paths.size;
    this.batchLeft = true;
  }

  /** True when nothing is at `rel` in the sandbox any more. */
  private isGone(rel: string): boolean {
    try {
      lstatSync(join(this.config.dir, rel));
      return false;
    } catch {
      return true;
    }
  }

  /** Puts hints of a failed batch back, so that nothing is lost. */
  private returnHints(taken: { paths: Set<string>; full: boolean }): void {
    this.batchLeft = false;
    for (const p of taken.paths) this.hints.paths.add(p);
    this.hints.full ||= taken.full;
    this.state.pendingPaths = this.hints.paths.size;
    this.firstHintAt ??= this.now();
  }

  private context(hints = this.hints): ReconcileContext {
    return {
      repo: this.repo,
      exclusions: this.exclusions,
      log: this.deps.log,
      notifier: this.notifier,
      clock: this.deps.clock,
      state: this.state,
      hints,
      hint: (p) => this.addHint(p),
      leaveForNextPass: (paths) => this.leaveForNextPass(paths),
      exclusive: (fn) => this.exclusive(fn),
      who: () => this.who(),
      branchMoved: () => this.sandboxBranchMoved(),
      pipeline: this.pipeline,
      metrics: this.metrics,
      progress: this.deps.progress ?? noProgress,
      ...(this.timeoutCapMs !== undefined ? { timeoutCapMs: this.timeoutCapMs } : {}),
    };
  }

  /**
   * The sandbox branch moved (a commit, a merge, a fast-forward, an environment branch following a
   * remote): every remote and environment looks again now, also one that failed, unless its failure is
   * one a commit cannot fix (an unreachable remote, refused credentials: left to its backoff). A pass
   * under way saw the old head: `succeeded` keeps this earlier time, and `failed` retries soon.
   */
  private sandboxBranchMoved(): void {
    for (const s of this.slots.values()) {
      if (!s.r.name.startsWith("remote:") && !s.r.name.startsWith("env:")) continue;
      if (s.failures > 0 && s.lastError && !fixableByCommit(s.lastError.reason)) continue;
      s.nextRunAt = this.now();
      if (s.running) s.wokenWhileRunning = true;
    }
    this.wakeUp?.();
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.mutex.then(fn, fn);
    this.mutex = run.catch(() => undefined);
    return run;
  }

  private async who(): Promise<Person> {
    const author = this.config.sandbox.author;
    const git = author?.name !== undefined && author.email !== undefined ? {} : await this.gitIdentity();
    const name = author?.name ?? git.name ?? "cascade-sync";
    const email = author?.email ?? git.email ?? "cascade-sync@localhost";
    const now = this.now();
    return { name, email, timestamp: Math.floor(now / 1000), timezoneOffset: new Date(now).getTimezoneOffset() };
  }

  /**
   * git's `user.name` and `user.email`, read again once {@link IDENTITY_MS} have passed: one change
   * asks for the author several times (its commit, the fetch and the push after it), each of them a
   * `git config` process otherwise. An identity a person changes shows in commits made a few seconds later.
   */
  private async gitIdentity(): Promise<{ name?: string; email?: string }> {
    const now = performance.now();
    if (!this.identity || now - this.identity.at > IDENTITY_MS) this.identity = { at: now, value: this.repo.userIdentity() };
    return this.identity.value.catch((err: unknown) => {
      this.identity = undefined;
      throw err;
    });
  }

  /**
   * Re-reads the config after an edit of it or of .env. A valid one takes effect at once
   * (exclusions, remotes and their credentials, logging, notifications); an invalid one is reported
   * and the last good config stays in force.
   */
  private async reloadConfig(): Promise<void> {
    const d = await configDigest(this.config.file);
    const loaded = await loadConfig(this.config.file, this.deps.env);
    if (!loaded.ok) {
      this.configProblems = loaded.problems;
      const lines = loaded.problems.map(formatProblem);
      this.deps.log.error(`config edit is not valid; the last good config stays in force:\n${lines.join("\n")}`);
      void this.notifier.notify({ event: "config-invalid", key: d, message: `config edit is not valid (last good config kept): ${lines[0] ?? ""}`, details: { problems: lines } });
      return;
    }
    const wasInvalid = this.configProblems.length > 0;
    this.configProblems = [];
    this.configWarnings = loaded.warnings;
    if (d === this.lastConfigDigest && !wasInvalid) return;
    this.lastConfigDigest = d;
    for (const w of loaded.warnings) this.deps.log.warn(formatProblem(w));
    const old = this.config;
    const config = loaded.config;
    for (const s of config.secrets) this.deps.redactor.add(s);
    this.pipeline.source.update(this.deps.env, controllerVariableNames(config));
    this.config = config;
    this.configLastGoodAt = new Date(this.now()).toISOString();
    this.deps.log.reconfigure(config.logging.file, config.logging.level);
    this.notifier.reconfigure(config.notifications);
    if (this.server || config.server.listen) await this.serveStatus();
    const before = this.exclusions;
    const policyBefore = this.repo.policy.identity;
    this.exclusions = await exclusionsFor(config);
    await this.exclusions.writeInfoExclude(this.repo.gitdir);
    this.usePolicy(await loadBlobPolicy(config, this.deps.env));
    this.rebuildSlots();
    for (const s of this.slots.values()) if (s.r.name.startsWith("remote:") || s.r.name.startsWith("env:")) s.nextRunAt = this.now();
    // Unpausing commits what waited at once, as one batch (the paused passes handed their paths back).
    if (!!old.sandbox.paused !== !!config.sandbox.paused) this.slots.get("sandbox")!.nextRunAt = this.now();
    this.deps.log.info(`config reloaded${wasInvalid ? " (valid again)" : ""}`, { remotes: config.remotes.map((r) => r.name), exclude: config.sandbox.exclude });
    if (old.intervals.rescanMs !== config.intervals.rescanMs && this.nextRescanAt !== undefined) this.nextRescanAt = this.now() + config.intervals.rescanMs;
    // A path no longer excluded, held back or judged the same must be looked at: rescan when the rules changed.
    if (JSON.stringify(before.patterns) !== JSON.stringify(this.exclusions.patterns) || policyBefore !== this.repo.policy.identity) {
      this.requestFullScan();
      await this.watcher?.rewatch("");
    }
  }

  /** Puts the security policy (encryption key, secret scan) in force and says what is wrong with the key. */
  private usePolicy(loaded: LoadedPolicy): void {
    this.repo.policy = loaded.policy;
    for (const w of loaded.warnings) this.deps.log.warn(w);
    const problem = loaded.keyProblem;
    if (problem && problem.reason !== "EncryptionKeyMissing") this.deps.log.error(`${problem.message}; files matching security.encrypt are held back`, { reason: problem.reason });
    if (problem) this.state.keyProblem = { reason: problem.reason, message: problem.message, ...(problem.hint ? { hint: problem.hint } : {}) };
    // Files held for another person's key stay held across a reload that leaves the key usable (issue 15):
    // the sandbox's passes say when they are not any more (a new key makes a whole-tree look).
    else if (this.state.keyProblem?.reason !== "EncryptedWithAnotherKey") delete this.state.keyProblem;
  }

  /** Keeps slots for reconcilers that stay, adds new remotes and environments, drops removed ones. */
  private rebuildSlots(): void {
    const wanted: Reconciler<any, any>[] = [
      sandboxReconciler,
      // With a remote, the leases decide which controller of a team acts on each environment.
      ...(this.config.remotes.length && Object.keys(this.config.environments).length ? [leases] : []),
      ...promotionOrder(this.config).map((e) => environmentReconciler(e)),
      ...this.config.remotes.map((r) => remoteReconciler(r.name)),
    ];
    const next = new Map<string, Slot>();
    for (const r of wanted) {
      const old = this.slots.get(r.name);
      // The same slot object is kept: a pass in flight during a reload marks *it* as done when it ends
      // (a copy would stay `running` forever, and that reconciler would never run again).
      if (old) old.r = r;
      next.set(r.name, old ?? { r, nextRunAt: undefined, failures: 0, running: false, conditions: [] });
    }
    this.slots = next;
  }

  private async sleepUntilDue(signal: AbortSignal): Promise<void> {
    if (signal.aborted) return;
    const times = [...this.slots.values()].map((s) => (s.running ? undefined : s.nextRunAt)).filter((t): t is number => t !== undefined);
    if (this.configDueAt !== undefined) times.push(this.configDueAt);
    if (this.nextRescanAt !== undefined) times.push(this.nextRescanAt);
    if (this.statusDirty) times.push(this.lastStatusAt + STATUS_THROTTLE_MS);
    const wait = times.length ? Math.max(0, Math.min(...times) - this.now()) : 60_000;
    if (wait === 0) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, Math.min(wait, 60_000));
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wakeUp = done;
    });
    this.wakeUp = undefined;
  }

  /**
   * On stop: waits for the passes under way. A commit is always finished; a transfer or an
   * environment pass only for STOP_TIMEOUT_MS (a remote that hangs until its own timeout must not
   * hold the stop; what it was pushing is committed locally and pushed at the next start).
   */
  private async settlePasses(): Promise<void> {
    const sandbox = this.slots.get("sandbox")!;
    await sandbox.pass;
    const others = Promise.allSettled([...this.inflight]).then(() => true);
    if (await Promise.race([others, sleep(STOP_TIMEOUT_MS, false, { ref: false })])) return;
    const stuck = [...this.slots.values()].filter((s) => s.running).map((s) => s.r.name);
    this.deps.log.warn(`stopping without waiting longer for ${stuck.join(", ")} (still under way after ${STOP_TIMEOUT_MS / 1000}s); commits are kept locally and pushed at the next start`);
  }

  /** On stop: commit what is pending and push it if the remotes answer, within a bounded time. */
  private async flush(): Promise<void> {
    const sandbox = this.slots.get("sandbox")!;
    // A write whose event was still on its way when the watch closed has no hint: a last look at the
    // whole tree (git status, cheap with the index's stat data) commits everything written before the stop.
    this.requestFullScan();
    if (this.hints.paths.size || this.hints.full) {
      this.deps.log.info("stopping: committing the pending batch");
      await this.runSlot(sandbox);
    }
    // A remote still busy with a transfer that did not end is not asked again.
    const remotes = [...this.slots.values()].filter((s) => s.r.name.startsWith("remote:") && !s.running);
    if (remotes.length) {
      this.deps.log.info("stopping: pushing to the remotes that answer");
      // A stop waits for an unreachable remote only briefly: the commits are safe locally.
      this.timeoutCapMs = STOP_TIMEOUT_MS;
      await Promise.all(remotes.map((s) => this.runSlot(s)));
      this.timeoutCapMs = undefined;
    }
    // Graceful: the leases held here are released, so another controller takes over at once.
    this.timeoutCapMs = STOP_TIMEOUT_MS;
    await leases.release(this.context(), this.config);
    this.timeoutCapMs = undefined;
    await this.statusWrite;
    await this.writeStatus(false);
  }

  /** Looks at the sandbox's embedded repositories now, for a snapshot taken while no controller runs (`status`). */
  lookAtEmbedded(): Promise<void> {
    return this.upkeep.refreshEmbedded();
  }

  /** The status snapshot (also written to status.json). */
  async snapshot(running: boolean): Promise<StatusSnapshot> {
    this.head = await this.repo.branchHead(this.config.sandbox.branch).catch(() => this.head);
    const slots = [...this.slots.values()];
    const reports = Object.values(this.pipeline.reports);
    const commits = await this.describeCommits([this.head, ...reports.flatMap((r) => [r.head, r.deployed, r.candidate, r.target])]);
    return {
      version: 1,
      pid: process.pid,
      running,
      startedAt: this.startedAt,
      updatedAt: new Date(this.now()).toISOString(),
      sandbox: {
        dir: this.config.dir,
        branch: this.config.sandbox.branch,
        head: this.head,
        pendingPaths: this.hints.paths.size,
        heldBack: this.state.heldBack,
        ...(this.state.heldBack.length && this.state.keyProblem ? { keyProblem: this.state.keyProblem } : {}),
        findings: Object.values(this.state.findings).flat(),
        ...(this.state.lastCommit ? { lastCommit: this.state.lastCommit } : {}),
        embedded: this.upkeep.embeddedRepositories(),
        ...(this.config.sandbox.paused ? { paused: true } : {}),
      },
      config: { file: this.config.file, valid: this.configProblems.length === 0, problems: (this.configProblems.length ? this.configProblems : this.configWarnings).map(formatProblem), lastGoodAt: this.configLastGoodAt, variables: this.config.variables },
      remotes: this.config.remotes.map((r) => {
        const s = this.slots.get(`remote:${r.name}`);
        return { name: r.name, url: this.deps.redactor.redact(r.url), ...this.state.remotes[r.name], ...(s?.lastError ? { error: s.lastError } : {}), ...(r.paused ? { paused: true } : {}) };
      }),
      reconcilers: slots.map((s) => ({
        name: s.r.name,
        conditions: s.conditions,
        failures: s.failures,
        running: s.running,
        ...(s.lastRunAt !== undefined ? { lastRunAt: new Date(s.lastRunAt).toISOString() } : {}),
        ...(s.lastDoneAt !== undefined ? { lastDoneAt: new Date(s.lastDoneAt).toISOString() } : {}),
        ...(s.nextRunAt !== undefined ? { nextRunAt: new Date(s.nextRunAt).toISOString() } : {}),
        ...(s.lastError ? { lastError: s.lastError } : {}),
        ...(s.lastSummary ? { lastSummary: s.lastSummary } : {}),
        ...(s.lastSuccessAt ? { lastSuccessAt: s.lastSuccessAt } : {}),
      })),
      environments: promotionOrder(this.config).flatMap((name) => {
        const report = this.pipeline.reports[name];
        const error = this.slots.get(`env:${name}`)?.lastError;
        return report ? [{ ...report, ...(error ? { error } : {}) }] : [];
      }),
      history: this.pipeline.history.recent(),
      ...(this.server?.url ? { server: { url: this.server.url } } : {}),
      commits,
    };
  }

  private async describeCommits(shas: (string | null | undefined)[]): Promise<Record<string, CommitInfo>> {
    const out: Record<string, CommitInfo> = {};
    for (const sha of new Set(shas)) {
      if (!sha) continue;
      let info = this.commitInfos.get(sha);
      if (!info) {
        const c = await this.repo.readCommit(sha).catch(() => undefined);
        if (!c) continue;
        info = { subject: c.subject, author: c.author.name, at: new Date(c.author.timestamp * 1000).toISOString() };
        if (this.commitInfos.size > 1000) this.commitInfos.clear();
        this.commitInfos.set(sha, info);
      }
      out[sha] = info;
    }
    return out;
  }

  /**
   * Starts, restarts or stops the status server to match `server` in the config in force. A server
   * that cannot listen is reported and the controller goes on without it (a person fixes the config).
   */
  private async serveStatus(): Promise<void> {
    const { listen, token = "" } = this.config.server;
    if (this.server && this.server.listen === listen && this.server.token === token) return;
    await this.stopServing();
    if (!listen) return;
    const running = startStatusServer({
      listen, ...(token ? { token } : {}), metrics: this.metrics, log: this.deps.log, redactor: this.deps.redactor,
      status: () => this.snapshot(true),
      history: () => recentHistory({ cwd: this.repo.dir, gitDir: this.repo.gitdir, workTree: this.repo.dir }, this.config.sandbox.branch),
      ready: () => this.scanned && this.configProblems.length === 0,
      // The loop sleeps at most a minute between turns.
      alive: () => this.now() - this.lastTurnAt < 90_000,
    }).then(
      (server) => {
        this.deps.log.info(`status page and /metrics on ${server.url}`, { url: server.url });
        this.notifier.setLink(server.url);
        if (this.server?.running === running) this.server.url = server.url;
        return server;
      },
      (err: unknown) => {
        const e = toCascadeError(err);
        this.deps.log.error(`the status server did not start: ${e.message}${e.hint ? ` (hint: ${e.hint})` : ""}`, { reason: e.reason });
        return undefined;
      },
    );
    this.server = { listen, token, running };
    await running;
  }

  private async stopServing(): Promise<void> {
    const server = await this.server?.running;
    this.server = undefined;
    this.notifier.setLink(undefined);
    await server?.close();
  }

  private async writeStatus(running: boolean): Promise<void> {
    const snap = this.deps.redactor.redactValue(await this.snapshot(running));
    this.metrics.observeStatus(snap);
    void this.server?.running.then((s) => s?.publish(snap));
    await writeRuntimeFile(this.repo.gitdir, "status.json", JSON.stringify(snap, null, 2));
  }

  private now(): number {
    return this.deps.clock.now();
  }

  private earliest(a: number | undefined, b: number): number {
    return a === undefined ? b : Math.min(a, b);
  }
}

function digest(text: string): string {
  return createHash("sha256").update(text).digest("hex").slice(0, 16);
}

/**
 * What the config in force is made of: the config file and the .env its ${VAR}s read, hashed
 * together (a change of either is a config edit). The hash names the content in notification keys;
 * it is one-way, so no value of .env can be read back from it.
 */
async function configDigest(file: string): Promise<string> {
  const [text, dotenv] = await Promise.all([readFile(file, "utf8").catch(() => ""), readFile(dotenvPath(file)).catch(() => undefined)]);
  return digest(`${text}\0${dotenv === undefined ? "none" : createHash("sha256").update(dotenv).digest("hex")}`);
}
