import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { StatusSnapshot } from "../controller.js";
import type { HistoryEntry } from "../pipeline/history.js";

/** Health phases exported as `cascade_sync_health_state{state}`; `unknown` when an environment has no health report. */
export const HEALTH_STATES = ["progressing", "healthy", "degraded", "failed", "unknown"] as const;

/** How often the default metrics sample the event loop's delay (nodejs_eventloop_lag_*). */
const EVENT_LOOP_SAMPLE_MS = 1000;

/**
 * The controller's Prometheus metrics on a registry of their own (never prom-client's global one, so
 * that two controllers in one process, or tests, do not share series), plus the default process
 * metrics. Counters are fed by the typed methods where things happen; gauges that a status snapshot
 * already holds are set by `observeStatus`. No method throws.
 */
export class Metrics {
  /** The registry `/metrics` serves. */
  readonly registry = new Registry();
  private readonly commits: Counter;
  private readonly commitSeconds: Histogram;
  private readonly batchFiles: Histogram;
  private readonly pending: Gauge;
  private readonly pushes: Counter<"remote">;
  private readonly pushFailures: Counter<"remote">;
  private readonly fetches: Counter<"remote">;
  private readonly fetchFailures: Counter<"remote">;
  private readonly promotions: Counter<"environment">;
  private readonly rollbacks: Counter<"environment">;
  private readonly gates: Counter<"environment" | "gate" | "result">;
  private readonly health: Gauge<"environment" | "state">;
  private readonly rejections: Counter<"environment" | "reason">;
  private readonly lastSuccess: Gauge<"reconciler">;

  constructor() {
    const registers = [this.registry];
    // The event loop delay is sampled once a second: prom-client's default (every 10 ms) wakes an idle
    // controller 100 times a second, which alone cost about half a percent of a core.
    collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
    this.commits = new Counter({ name: "cascade_sync_commits_total", help: "Commits made from the sandbox.", registers });
    this.commitSeconds = new Histogram({
      name: "cascade_sync_commit_duration_seconds", help: "Time to build and record one batch commit.", registers,
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    });
    this.batchFiles = new Histogram({
      name: "cascade_sync_batch_files", help: "Changed paths per batch commit.", registers,
      buckets: [1, 2, 5, 10, 25, 50, 100, 250, 1000, 5000, 20000, 100000],
    });
    this.pending = new Gauge({ name: "cascade_sync_pending_changes", help: "Changed paths waiting for the next batch.", registers });
    this.pushes = new Counter({ name: "cascade_sync_pushes_total", help: "Successful pushes, per remote.", labelNames: ["remote"], registers });
    this.pushFailures = new Counter({ name: "cascade_sync_push_failures_total", help: "Failed pushes, per remote.", labelNames: ["remote"], registers });
    this.fetches = new Counter({ name: "cascade_sync_fetches_total", help: "Successful fetches, per remote.", labelNames: ["remote"], registers });
    this.fetchFailures = new Counter({ name: "cascade_sync_fetch_failures_total", help: "Failed fetches, per remote.", labelNames: ["remote"], registers });
    this.promotions = new Counter({ name: "cascade_sync_promotions_total", help: "Promotions, per environment.", labelNames: ["environment"], registers });
    this.rollbacks = new Counter({ name: "cascade_sync_rollbacks_total", help: "Automatic rollbacks, per environment.", labelNames: ["environment"], registers });
    this.gates = new Counter({
      name: "cascade_sync_gate_results_total", help: "Finished gate runs, per environment, gate and result (passed or failed).",
      labelNames: ["environment", "gate", "result"], registers,
    });
    this.health = new Gauge({
      name: "cascade_sync_health_state", help: "1 for the live release's health phase per environment, 0 for the other phases.",
      labelNames: ["environment", "state"], registers,
    });
    this.rejections = new Counter({
      name: "cascade_sync_approvals_rejected_total", help: "Approval entries rejected, per environment and reason code.",
      labelNames: ["environment", "reason"], registers,
    });
    this.lastSuccess = new Gauge({
      name: "cascade_sync_last_successful_reconcile_timestamp_seconds", help: "Unix time of each reconciler's last successful pass.",
      labelNames: ["reconciler"], registers,
    });
  }

  /** A batch commit of `files` changed paths took `durationMs`. */
  commitMade(durationMs: number, files: number): void {
    this.commits.inc();
    this.commitSeconds.observe(durationMs / 1000);
    this.batchFiles.observe(files);
  }

  /** A push to `remote` succeeded (`ok`) or failed. */
  pushed(remote: string, ok: boolean): void {
    (ok ? this.pushes : this.pushFailures).inc({ remote });
  }

  /** A fetch from `remote` succeeded (`ok`) or failed. */
  fetched(remote: string, ok: boolean): void {
    (ok ? this.fetches : this.fetchFailures).inc({ remote });
  }

  /** `environment`'s branch moved to a new commit. */
  promoted(environment: string): void {
    this.promotions.inc({ environment });
  }

  /** `environment` was rolled back. */
  rolledBack(environment: string): void {
    this.rollbacks.inc({ environment });
  }

  /** One gate finished on `environment`'s candidate. */
  gateResult(environment: string, gate: string, ok: boolean): void {
    this.gates.inc({ environment, gate, result: ok ? "passed" : "failed" });
  }

  /** An approval entry for `environment` was rejected; `reason` is its RejectReason code. */
  approvalRejected(environment: string, reason: string): void {
    this.rejections.inc({ environment, reason });
  }

  /**
   * Counts one history entry: promotions, rollbacks and rejected approvals (whose `result` starts
   * with the reason code, as the environment reconciler writes it). Other events are ignored. Call
   * it once per appended entry, never for entries replayed from history.jsonl.
   */
  recordHistory(entry: HistoryEntry): void {
    if (entry.event === "promoted") this.promoted(entry.environment);
    else if (entry.event === "rolled-back") this.rolledBack(entry.environment);
    else if (entry.event === "approval-rejected") this.approvalRejected(entry.environment, /^([a-z-]+):/.exec(entry.result)?.[1] ?? "unknown");
  }

  /** Changed paths waiting for the next batch. */
  setPending(paths: number): void {
    this.pending.set(paths);
  }

  /** Sets `environment`'s health phase; null (no checks or nothing live) is `unknown`. */
  setHealth(environment: string, phase: string | null): void {
    const current = (HEALTH_STATES as readonly string[]).includes(phase ?? "") ? phase : "unknown";
    for (const state of HEALTH_STATES) this.health.set({ environment, state }, state === current ? 1 : 0);
  }

  /** Records a successful pass of `reconciler` (e.g. `sandbox`, `env:staging`, `remote:origin`) at `atMs`. */
  reconciled(reconciler: string, atMs: number): void {
    this.lastSuccess.set({ reconciler }, atMs / 1000);
  }

  /**
   * Sets every gauge a snapshot holds: pending changes, health per environment and each
   * reconciler's last success. Series of environments and reconcilers no longer in the snapshot are
   * dropped. Also starts the per-environment and per-remote counters at 0, so that `rate()` and
   * `increase()` see their first increment.
   */
  observeStatus(s: StatusSnapshot): void {
    this.setPending(s.sandbox.pendingPaths);
    this.health.reset();
    for (const e of s.environments) {
      this.setHealth(e.name, e.health?.phase ?? null);
      this.promotions.inc({ environment: e.name }, 0);
      this.rollbacks.inc({ environment: e.name }, 0);
    }
    for (const r of s.remotes) {
      for (const c of [this.pushes, this.pushFailures, this.fetches, this.fetchFailures]) c.inc({ remote: r.name }, 0);
    }
    this.lastSuccess.reset();
    for (const r of s.reconcilers) {
      const at = r.lastSuccessAt ? Date.parse(r.lastSuccessAt) : NaN;
      if (!Number.isNaN(at)) this.reconciled(r.name, at);
    }
  }

  /** The Prometheus text exposition of every metric. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  /** The content type of `text()`. */
  get contentType(): string {
    return this.registry.contentType;
  }
}
