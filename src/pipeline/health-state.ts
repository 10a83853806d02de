/**
 * The health of one environment's live release as a pure state machine: a new release is
 * `progressing` until `healthyAfter` passing rounds in a row make it `healthy`; it `failed` when
 * `failureThreshold` rounds fail in a row or the progress deadline passes first. A round whose
 * failures are all `pending` (the service is not there yet) counts neither way for a new release. A healthy release
 * that fails `failureThreshold` rounds in a row is `degraded`, and `healthyAfter` passing rounds
 * make it healthy again (`recovered`).
 */
import { formatDuration } from "../duration.js";
import type { VerifyResult } from "../security/manifest.js";

export type HealthPhase = "progressing" | "healthy" | "degraded" | "failed";

/** One check's outcome in a round, as shown by status. */
export interface RoundResult {
  name: string;
  ok: boolean;
  message: string;
  /** Not ok only because the service is not there yet (an http check's JSON is about another commit, or says it is progressing). */
  pending?: boolean;
}

export interface HealthState {
  /** The commit of the release being watched. */
  commit: string;
  /** When it went live (ms since the epoch). */
  since: number;
  phase: HealthPhase;
  okStreak: number;
  failStreak: number;
  /** This release is the result of a rollback: its failure is reported, never rolled back again. */
  rollback: boolean;
  last?: { at: number; results: RoundResult[] };
  /** The last verification of the live release against its manifest (deployed environments only). */
  integrity?: IntegrityState;
}

/** Drift between a release and its manifest, for status: each list capped, `total` counting every path. */
export interface DriftSummary {
  changed: string[];
  added: string[];
  removed: string[];
  /** How many paths of each kind there are in all. */
  counts: { changed: number; added: number; removed: number };
  total: number;
}

/** What the last verification of the live release found. */
export interface IntegrityState {
  /** When it ran (ms since the epoch). */
  at: number;
  /** Paths the manifest lists, and how long the verification took. */
  entries?: number;
  durationMs?: number;
  /** Set while the release differs from its manifest: the drift last seen and when this episode began. */
  drift?: DriftSummary & { since: number };
  /** Why the release could not be verified (a reason code and message). */
  error?: string;
  /** The last repair in this drift episode. */
  repaired?: { at: number; ok: boolean; message: string };
}

/** What one verification means: a drift episode begins, or it ends (the release is intact again). */
export type IntegrityEvent = "drift-detected" | "drift-resolved";

/** One verification as observed: its drift, or why it could not run. */
export type IntegrityResult = { drift: VerifyResult; entries: number; durationMs: number } | { error: string };

/** How many paths of each kind status lists; the rest are counted. */
export const DRIFT_LISTED = 20;

/** What a transition means for the environment; absent when nothing changed that a person should hear about. */
export type HealthEvent = "healthy" | "failed" | "degraded" | "recovered";

export interface HealthRules {
  healthyAfter: number;
  failureThreshold: number;
  progressDeadlineMs: number;
}

/** The state of a release that just went live; with no checks configured it is healthy at once. */
export function newRelease(commit: string, now: number, rollback: boolean, hasChecks: boolean): HealthState {
  return { commit, since: now, phase: hasChecks ? "progressing" : "healthy", okStreak: 0, failStreak: 0, rollback };
}

/** The state after one round of checks (`results` all ok means a passing round), and the event it causes. */
export function recordRound(s: HealthState, results: RoundResult[], now: number, rules: HealthRules): { state: HealthState; event?: HealthEvent } {
  const ok = results.every((r) => r.ok);
  const next: HealthState = {
    ...s,
    okStreak: ok ? s.okStreak + 1 : 0,
    failStreak: ok ? 0 : s.failStreak + 1,
    last: { at: now, results },
  };
  if (s.phase === "progressing") {
    // Not there yet (e.g. Argo CD still reports the previous revision): neither a pass nor a failure,
    // and it breaks both runs; progressDeadline bounds how long a release may stay so.
    if (!ok && results.every((r) => r.ok || r.pending)) return pastDeadline({ ...next, okStreak: 0, failStreak: 0 }, now, rules);
    if (next.okStreak >= rules.healthyAfter) return { state: { ...next, phase: "healthy" }, event: "healthy" };
    if (next.failStreak >= rules.failureThreshold) return { state: { ...next, phase: "failed" }, event: "failed" };
    return pastDeadline(next, now, rules);
  }
  if (s.phase === "healthy") {
    if (next.failStreak >= rules.failureThreshold) return { state: { ...next, phase: "degraded" }, event: "degraded" };
    return { state: next };
  }
  // degraded or failed: only a run of passing rounds brings it back.
  if (next.okStreak >= rules.healthyAfter) return { state: { ...next, phase: "healthy" }, event: "recovered" };
  return { state: next };
}

/**
 * The state after one verification of the live release. Drift begins an episode (`drift-detected`,
 * once: later rounds with drift only update what is listed) and the first intact verification ends it
 * (`drift-resolved`). An error leaves an episode open. Drift never changes the health phase: it is
 * reported and repaired, not rolled back.
 */
export function recordIntegrity(s: HealthState, r: IntegrityResult, now: number): { state: HealthState; event?: IntegrityEvent } {
  const before = s.integrity;
  if ("error" in r) return { state: { ...s, integrity: { ...before, at: now, error: r.error } } };
  const base = { at: now, entries: r.entries, durationMs: r.durationMs };
  const drifted = driftCount(r.drift) > 0;
  if (!drifted) return { state: { ...s, integrity: base }, ...(before?.drift ? { event: "drift-resolved" as const } : {}) };
  const since = before?.drift?.since ?? now;
  const integrity: IntegrityState = { ...base, drift: { ...summarizeDrift(r.drift), since }, ...(before?.drift && before.repaired ? { repaired: before.repaired } : {}) };
  return { state: { ...s, integrity }, ...(before?.drift ? {} : { event: "drift-detected" as const }) };
}

/** The drift with each list cut to `DRIFT_LISTED` paths, the counts in full. */
export function summarizeDrift(v: VerifyResult): DriftSummary {
  const counts = { changed: v.changed.length, added: v.added.length, removed: v.removed.length };
  return { changed: v.changed.slice(0, DRIFT_LISTED), added: v.added.slice(0, DRIFT_LISTED), removed: v.removed.slice(0, DRIFT_LISTED), counts, total: driftCount(v) };
}

/** `2 changed (a, b); 1 added (c)`: each kind with its count and its first `listed` paths. */
export function describeDrift(v: VerifyResult | DriftSummary, listed = 5): string {
  const kinds = (["changed", "added", "removed"] as const).filter((k) => v[k].length > 0);
  if (kinds.length === 0) return "no drift";
  return kinds
    .map((k) => {
      const n = "counts" in v ? v.counts[k] : v[k].length;
      return `${n} ${k} (${v[k].slice(0, listed).join(", ")}${n > listed ? ", ..." : ""})`;
    })
    .join("; ");
}

/** One line for status: `intact (1200 paths, verified in 40ms)`, `drift since ...: 1 changed (index.html)`. */
export function describeIntegrity(i: IntegrityState | undefined): string {
  if (!i) return "not verified yet";
  const err = i.error ? `; last verification failed: ${i.error}` : "";
  if (i.drift) {
    const repaired = i.repaired ? `; ${i.repaired.ok ? "repaired from git" : "repair failed"} at ${new Date(i.repaired.at).toISOString()}: ${i.repaired.message}` : "";
    return `drift since ${new Date(i.drift.since).toISOString()}: ${describeDrift(i.drift)}${repaired}${err}`;
  }
  if (i.entries === undefined) return `not verified${err}`;
  return `intact (${i.entries} paths, verified in ${i.durationMs ?? 0}ms)${err}`;
}

function driftCount(v: VerifyResult): number {
  return v.changed.length + v.added.length + v.removed.length;
}

/** A progressing release past its deadline has failed, whatever its streaks say. */
export function pastDeadline(s: HealthState, now: number, rules: HealthRules): { state: HealthState; event?: HealthEvent } {
  if (s.phase === "progressing" && now - s.since >= rules.progressDeadlineMs) return { state: { ...s, phase: "failed" }, event: "failed" };
  return { state: s };
}

/** One line for status: `healthy (3/3 rounds passed)`, `progressing (1/3, deadline in 4m)`. */
export function describeHealth(s: HealthState | undefined, rules: HealthRules, now: number): string {
  if (!s) return "no release watched yet";
  const lastFail = s.last?.results.find((r) => !r.ok);
  switch (s.phase) {
    case "progressing":
      return `progressing: ${s.okStreak}/${rules.healthyAfter} passing rounds, deadline in ${Math.max(0, Math.ceil((s.since + rules.progressDeadlineMs - now) / 1000))}s${lastFail ? `; last failure: ${lastFail.name}: ${lastFail.message}` : ""}`;
    case "healthy":
      return s.failStreak ? `healthy, ${s.failStreak}/${rules.failureThreshold} failing rounds: ${lastFail?.name}: ${lastFail?.message}` : "healthy";
    case "degraded":
      return `degraded: ${lastFail ? `${lastFail.name}: ${lastFail.message}` : `${s.okStreak}/${rules.healthyAfter} passing rounds to recover`}`;
    case "failed": {
      const why = s.failStreak >= rules.failureThreshold
        ? `${s.failStreak} failing rounds in a row`
        : `not healthy within the progress deadline (${formatDuration(rules.progressDeadlineMs)})`;
      return `failed${s.rollback ? " (after a rollback: not rolled back again)" : ""}: ${why}${lastFail ? `; last failure: ${lastFail.name}: ${lastFail.message}` : ""}`;
    }
  }
}
