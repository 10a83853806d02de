/**
 * The health of one environment's live release as a pure state machine: a new release is
 * `progressing` until `healthyAfter` passing rounds in a row make it `healthy`; it `failed` when
 * `failureThreshold` rounds fail in a row or the progress deadline passes first. A healthy release
 * that fails `failureThreshold` rounds in a row is `degraded`, and `healthyAfter` passing rounds
 * make it healthy again (`recovered`).
 */
import { formatDuration } from "../duration.js";

export type HealthPhase = "progressing" | "healthy" | "degraded" | "failed";

/** One check's outcome in a round, as shown by status. */
export interface RoundResult {
  name: string;
  ok: boolean;
  message: string;
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
}

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
