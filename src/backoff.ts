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
