/**
 * Errors are values with a reason. Every error a person can see is one of three kinds, each mapped to
 * what the control loop does next:
 * - `Stalled`: a person must act (bad credentials, invalid config, refused push); no retry until
 *   something changes, or a probe now and then (sooner, after `retryAfterMs`, where the cause can
 *   go away by itself and looking costs next to nothing).
 * - `Waiting`: nothing is wrong, a condition is pending; look again after `retryAfterMs`.
 * - `Transient`: network down, lock held; retry with backoff, reset after a success.
 * A `reason` is a stable code used by status, logs, notifications and tests.
 */
export type ErrorKind = "Stalled" | "Waiting" | "Transient";

/** A problem a person can read: what happened, and `hint` says what to do next. */
export class CascadeError extends Error {
  readonly kind: ErrorKind;
  readonly reason: string;
  readonly hint: string | undefined;
  readonly retryAfterMs: number | undefined;

  constructor(
    kind: ErrorKind,
    reason: string,
    message: string,
    opts: { hint?: string; retryAfterMs?: number; cause?: unknown } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = `${kind}Error`;
    this.kind = kind;
    this.reason = reason;
    this.hint = opts.hint;
    this.retryAfterMs = opts.retryAfterMs;
  }
}

/** A person must act; the loop does not retry until the world changes. */
export function stalled(reason: string, message: string, hint?: string, cause?: unknown): CascadeError {
  return new CascadeError("Stalled", reason, message, { hint, cause });
}

/** A condition is pending; the loop looks again after `retryAfterMs`. */
export function waiting(reason: string, message: string, retryAfterMs: number, hint?: string): CascadeError {
  return new CascadeError("Waiting", reason, message, { hint, retryAfterMs });
}

/** A passing fault; the loop retries with backoff. */
export function transient(reason: string, message: string, hint?: string, cause?: unknown): CascadeError {
  return new CascadeError("Transient", reason, message, { hint, cause });
}

/**
 * A bug in cascade-sync itself, never the user's doing. Its message says so, so that nobody
 * spends time fixing their config for it.
 */
export class InternalError extends Error {
  constructor(message: string, cause?: unknown) {
    super(`internal error (a bug in cascade-sync, please report it): ${message}`, cause === undefined ? undefined : { cause });
    this.name = "InternalError";
  }
}

/**
 * Classifies anything thrown into a CascadeError. Node system errors that mean "try again later"
 * (network, busy files) become Transient; everything unknown is wrapped as an internal error
 * reported as Stalled with reason `InternalError`, so the loop neither crashes nor spins on it.
 */
export function toCascadeError(err: unknown): CascadeError {
  if (err instanceof CascadeError) return err;
  const code = (err as { code?: unknown } | null)?.code;
  const message = err instanceof Error ? err.message : String(err);
  if (typeof code === "string" && TRANSIENT_CODES.has(code)) {
    return transient(`System${code}`, message, undefined, err);
  }
  if (err instanceof InternalError) return stalled("InternalError", err.message, undefined, err);
  return stalled(
    "InternalError",
    `internal error (a bug in cascade-sync, please report it): ${message}`,
    "see the log file for the stack trace",
    err,
  );
}

const TRANSIENT_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EAI_AGAIN",
  "ENOTFOUND",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EPIPE",
  "EBUSY",
  "EAGAIN",
  "EMFILE",
  "ENFILE",
  "UND_ERR_CONNECT_TIMEOUT",
  "UND_ERR_HEADERS_TIMEOUT",
  "UND_ERR_BODY_TIMEOUT",
  "UND_ERR_SOCKET",
  "UND_ERR_CLOSED",
]);
