import { performance } from "node:perf_hooks";
import { request } from "undici";
import { formatDuration } from "../duration.js";
import { InternalError } from "../errors.js";
import { join } from "node:path";
import type { CommandEnvEntry, EnvironmentSpec } from "../config/types.js";
import { commandEnv } from "./command-env.js";
import { releaseDir } from "./deploy.js";
import { runCommand, type CommandResult } from "./run-command.js";

/** The outcome of one gate or health check. */
export interface CheckResult {
  name: string;
  ok: boolean;
  /** One line for status and notifications: "HTTP 200 in 12ms", "exit 1: <last output line>", "timed out after 5s". */
  message: string;
  durationMs: number;
  /** The command's output (last 64 KiB), or the start of an HTTP body that failed the check. */
  output?: string;
}

/** A command or HTTP check: the shape shared by GateSpec and HealthCheckSpec. */
export interface CheckSpec {
  name: string;
  command?: string;
  http?: { url: string; status: number; body?: string };
  timeoutMs: number;
  /** What the config names for the command's environment; the caller builds `opts.env` from it with commandEnv. */
  env?: CommandEnvEntry[];
}

/** Options of runCheck. */
export interface CheckOptions {
  cwd: string;
  /** The command's complete environment, built by commandEnv (nothing else is inherited). */
  env: NodeJS.ProcessEnv;
  /** Values masked in the command's output and message (commandEnv's `secrets`). */
  secrets?: readonly string[];
  signal?: AbortSignal;
}

/** How much of an HTTP body is searched for `http.body`. */
const BODY_LIMIT_BYTES = 1024 * 1024;
/** How much of a failing HTTP body is kept in `output`. */
const BODY_EXCERPT_BYTES = 2048;
const LAST_LINE_MAX_CHARS = 200;
/** Timers overflow (and fire at once) above a signed 32-bit number of milliseconds. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Runs one command or HTTP check and resolves with its result; a failing check is `ok: false`
 * with a one-line `message`, never a rejection.
 *
 * - command: `runCommand` in `opts.cwd` with `opts.env` (nothing else inherited), killed with its
 *   process group after `spec.timeoutMs`. ok on exit 0. `opts.secrets` are masked in its output.
 * - http: a GET on a fresh connection, ok when the status equals `http.status` and, when
 *   `http.body` is set, the first 1 MiB of the body contains it. Redirects are not followed.
 *   Connection errors and timeouts (the whole exchange, body included) are `ok: false`.
 *
 * Rejects with InternalError only for a spec with neither `command` nor `http` (a builtin gate
 * belongs to the caller).
 */
export async function runCheck(spec: CheckSpec, opts: CheckOptions): Promise<CheckResult> {
  if (spec.command !== undefined) return runCommandCheck(spec.name, spec.command, spec.timeoutMs, opts);
  if (spec.http) return runHttpCheck(spec.name, spec.http, spec.timeoutMs, opts.signal);
  throw new InternalError(`check "${spec.name}" has neither command nor http`);
}

async function runCommandCheck(
  name: string,
  command: string,
  timeoutMs: number,
  opts: CheckOptions,
): Promise<CheckResult> {
  const result = await runCommand(command, { cwd: opts.cwd, env: opts.env, timeoutMs, ...(opts.secrets ? { secrets: opts.secrets } : {}), ...(opts.signal ? { signal: opts.signal } : {}) });
  return { name, ok: result.ok, message: describeCommandResult(result, timeoutMs), durationMs: result.durationMs, output: result.output };
}

/** One line saying how a command ended; exported for deploy hooks, which report the same way. */
export function describeCommandResult(result: CommandResult, timeoutMs: number): string {
  if (result.timedOut) return `timed out after ${formatDuration(timeoutMs)}`;
  if (result.aborted) return "aborted";
  const last = lastLine(result.output);
  const detail = last ? `: ${last}` : "";
  if (result.ok) return `exit 0 in ${formatDuration(result.durationMs)}`;
  if (result.signal) return `killed by ${result.signal}${detail}`;
  if (result.exitCode === null) return `could not run${detail}`;
  return `exit ${result.exitCode}${detail}`;
}

/** The last non-blank line of `text`, trimmed and shortened, or "" when there is none. */
function lastLine(text: string): string {
  const lines = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== "");
  const last = lines[lines.length - 1] ?? "";
  return last.length > LAST_LINE_MAX_CHARS ? `${last.slice(0, LAST_LINE_MAX_CHARS - 1)}…` : last;
}

async function runHttpCheck(
  name: string,
  http: { url: string; status: number; body?: string },
  timeoutMs: number,
  outer: AbortSignal | undefined,
): Promise<CheckResult> {
  const started = performance.now();
  const timeout = AbortSignal.timeout(Math.min(Math.max(timeoutMs, 1), MAX_TIMER_MS));
  const signal = outer ? AbortSignal.any([outer, timeout]) : timeout;
  const done = (ok: boolean, message: string, output?: string): CheckResult => ({
    name,
    ok,
    message,
    durationMs: Math.round(performance.now() - started),
    ...(output !== undefined ? { output } : {}),
  });
  try {
    // reset: a fresh connection per check. A kept-alive socket to a service that a deploy just
    // restarted fails with "other side closed" and would count as unhealthy.
    const res = await request(http.url, { method: "GET", signal, reset: true, headers: { "user-agent": "cascade-sync" } });
    const wantBody = http.body;
    const searched = wantBody !== undefined && res.statusCode === http.status;
    const body = await readUpTo(res.body, searched ? BODY_LIMIT_BYTES : BODY_EXCERPT_BYTES);
    const took = formatDuration(performance.now() - started);
    if (res.statusCode !== http.status) return done(false, `HTTP ${res.statusCode} in ${took}, expected ${http.status}`, excerpt(body));
    if (wantBody !== undefined && !body.includes(Buffer.from(wantBody))) {
      return done(false, `HTTP ${res.statusCode}, body does not contain ${JSON.stringify(wantBody)}`, excerpt(body));
    }
    return done(true, `HTTP ${res.statusCode} in ${took}`);
  } catch (err) {
    if (timeout.aborted) return done(false, `timed out after ${formatDuration(timeoutMs)}`);
    if (outer?.aborted) return done(false, "aborted");
    return done(false, describeRequestError(err, http.url));
  }
}

/** Reads at most `limit` bytes of a body and discards the rest (the stream is destroyed). */
async function readUpTo(body: AsyncIterable<Buffer> & { destroy(): unknown }, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    chunks.push(chunk);
    size += chunk.length;
    if (size >= limit) break;
  }
  body.destroy();
  const all = Buffer.concat(chunks);
  return all.length > limit ? all.subarray(0, limit) : all;
}

function excerpt(body: Buffer): string {
  return body.subarray(0, BODY_EXCERPT_BYTES).toString("utf8");
}

/** "connection refused by 127.0.0.1:8080" and the like; never the URL's credentials. */
function describeRequestError(err: unknown, url: string): string {
  const code = errorCode(err);
  const message = err instanceof Error ? err.message : String(err);
  const parsed = URL.canParse(url) ? new URL(url) : undefined;
  if (!parsed) return `invalid URL: ${message}`;
  if (code === "ECONNREFUSED") return `connection refused by ${parsed.host}`;
  if (code === "ENOTFOUND" || code === "EAI_AGAIN") return `cannot resolve ${parsed.hostname}`;
  if (code === "ECONNRESET" || code === "UND_ERR_SOCKET") return `connection to ${parsed.host} closed before a response`;
  return `request to ${parsed.host} failed${code ? ` (${code})` : ""}: ${message}`;
}

/** The system or undici error code, also from inside an AggregateError (one per address tried). */
function errorCode(err: unknown): string | undefined {
  const e = err as { code?: unknown; errors?: unknown[]; cause?: unknown } | null;
  if (typeof e?.code === "string") return e.code;
  if (Array.isArray(e?.errors) && e.errors.length > 0) return errorCode(e.errors[0]);
  if (e?.cause !== undefined) return errorCode(e.cause);
  return undefined;
}

/**
 * One round of an environment's health checks, run at once: command checks run in the live release
 * (`deploy.directory/current` when `live` names a deployed commit, else the sandbox) with the
 * environment commandEnv builds from `processEnv` (the controller's) and each check's `env`:
 * CASCADE_ENVIRONMENT, and CASCADE_COMMIT and CASCADE_RELEASE_DIR when a release is live. Returns
 * each check's name, outcome and one-line message.
 */
export async function runHealthRound(env: EnvironmentSpec, live: string | null, sandboxDir: string, processEnv: NodeJS.ProcessEnv): Promise<{ name: string; ok: boolean; message: string }[]> {
  const deployed = env.deploy && live ? env.deploy.directory : undefined;
  const cwd = deployed ? join(deployed, "current") : sandboxDir;
  const cascade: Record<string, string> = {
    CASCADE_ENVIRONMENT: env.name,
    ...(live ? { CASCADE_COMMIT: live } : {}),
    ...(deployed && live ? { CASCADE_RELEASE_DIR: releaseDir(deployed, live) } : {}),
  };
  const results = await Promise.all(env.health.map((h) => {
    const built = commandEnv({ controller: processEnv, ...(h.env ? { entries: h.env } : {}), cascade });
    return runCheck(h, { cwd, env: built.env, secrets: built.secrets });
  }));
  return results.map((r) => ({ name: r.name, ok: r.ok, message: r.message }));
}
