/** The `retry` settings: first wait, growth factor, cap and random spread. */
export interface RetryPolicy {
  initialMs: number;
  factor: number;
  maxMs: number;
  jitter: number;
}

/**
 * How long to wait before the next attempt after `failures` consecutive failures (1 = the first):
 * `initial * factor^(failures-1)`, capped at `max`, spread by ±`jitter` so that many controllers do
 * not retry in step. `random` is injectable for tests (0..1).
 */
export function backoffDelay(policy: RetryPolicy, failures: number, random: () => number = Math.random): number {
  const base = Math.min(policy.maxMs, policy.initialMs * policy.factor ** Math.max(0, failures - 1));
  return Math.round(base * (1 - policy.jitter + 2 * policy.jitter * random()));
}

/**
 * Reasons that name a race, not a refusal: someone else moved a ref, held a lock or pushed first
 * between our look and our move (another controller of the team, a native git command, a push to
 * the remote). Looking again settles them; nobody has to act.
 */
export const RACE_REASONS: ReadonlySet<string> = new Set([
  "RefConflict", "NonFastForward", "LockBusy", "BranchMoved", "EnvironmentBranchMoved",
]);

/**
 * Reasons a new local commit cannot fix: the remote does not answer or does not trust us. A reconciler
 * failing for one of these is left to its backoff (or a config edit); any other failure is looked at
 * again when the sandbox branch moves, since the new commit may be what it waited for.
 */
const NOT_FIXED_BY_A_COMMIT: ReadonlySet<string> = new Set([
  "RemoteUnavailable", "GitTimeout", "AuthFailed", "HostKeyUnknown", "HostKeyChanged", "ProtocolNotAllowed",
  "RemoteNotFound", "AskpassMissing", "UnsafeRepositoryOwner", "RepositoryFormatUnsupported", "DiskFull", "RemoteRemoved",
]);

/** Consecutive races retried at once (spread at random) before the policy's backoff takes over. */
export const FAST_RACE_RETRIES = 8;
/** The longest wait between fast race retries: a race lost twice in a row makes way for the winner, briefly. */
const RACE_CAP_MS = 4_000;

/**
 * How long to wait after a failure: a race is retried soon (well under a second at first, spread at
 * random so that the racers do not collide again, never more than a few seconds) for
 * FAST_RACE_RETRIES attempts; what keeps losing after that, and every other failure, follows the
 * policy's exponential backoff (counted from the end of the fast retries, so a long race does not
 * jump straight to `retry.max`).
 */
export function retryDelay(policy: RetryPolicy, reason: string, failures: number, random: () => number = Math.random): number {
  if (!RACE_REASONS.has(reason)) return backoffDelay(policy, failures, random);
  if (failures > FAST_RACE_RETRIES) return backoffDelay(policy, failures - FAST_RACE_RETRIES, random);
  const base = Math.min(RACE_CAP_MS, Math.min(policy.initialMs, 500) * 2 ** (failures - 1));
  // Full spread whatever retry.jitter says: racers that retry in step race again.
  return Math.round(base * (0.5 + random()));
}

/** True when a reconciler that failed for `reason` should look again now that the sandbox branch moved. */
export function fixableByCommit(reason: string): boolean {
  return !NOT_FIXED_BY_A_COMMIT.has(reason);
}
