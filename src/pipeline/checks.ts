import { performance } from "node:perf_hooks";
import { formatDuration } from "../duration.js";
import { InternalError } from "../errors.js";
import { join } from "node:path";
import type { CommandEnvEntry, EnvironmentSpec, HttpCheckSpec, JsonAssertionSpec } from "../config/types.js";
import { Redactor } from "../redact.js";
import { commandEnv, WITHHELD } from "./command-env.js";
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
  /**
   * Not ok only because the service is not there yet: its JSON is about another commit than
   * `{commit}`, or a field holds one of its assertion's `progressing` values. A new release keeps
   * progressing on such a round instead of failing (see recordRound).
   */
  pending?: boolean;
}

/** A command or HTTP check: the shape shared by GateSpec and HealthCheckSpec. */
export interface CheckSpec {
  name: string;
  command?: string;
  http?: HttpCheckSpec;
  timeoutMs: number;
  /** What the config names for the command's environment; the caller builds `opts.env` from it with commandEnv. */
  env?: CommandEnvEntry[];
}

/** Options of runCheck. */
export interface CheckOptions {
  cwd: string;
  /** The command's complete environment, built by commandEnv (nothing else is inherited). */
  env: NodeJS.ProcessEnv;
  /** Values masked in the command's output and message (commandEnv's `secrets`); an http check also masks its secret headers. */
  secrets?: readonly string[];
  /** The commit the check is about (a health check: the commit the environment runs; a gate: its candidate): what `{commit}` in a JSON assertion becomes. */
  commit?: string;
  signal?: AbortSignal;
}

/** How much of an HTTP body is searched for `http.body`. */
const BODY_LIMIT_BYTES = 1024 * 1024;
/** How much of an HTTP body is parsed for `expect.json` (an Argo CD application with many resources runs to a few hundred KiB). */
const JSON_LIMIT_BYTES = 4 * 1024 * 1024;
/** How much of an actual value a failed assertion quotes. */
const ACTUAL_MAX_CHARS = 120;
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
 * - http: a GET on a fresh connection with `http.headers`, ok when the status equals `http.status`,
 *   when `http.body` is set the first 1 MiB of the body contains it, and every `http.json`
 *   assertion holds on the body parsed as JSON (`{commit}` in an expected text is `opts.commit`).
 *   A failed assertion is named with the value found. Redirects are not followed. Connection
 *   errors and timeouts (the whole exchange, body included) are `ok: false`. Secret header values
 *   and `opts.secrets` never appear in the message or output; a header holding a withheld
 *   variable ("[withheld]": a committed config read one of the controller's own credentials) is
 *   not sent, and the check fails saying so.
 *
 * Rejects with InternalError only for a spec with neither `command` nor `http` (a builtin gate
 * belongs to the caller).
 */
export async function runCheck(spec: CheckSpec, opts: CheckOptions): Promise<CheckResult> {
  if (spec.command !== undefined) return runCommandCheck(spec.name, spec.command, spec.timeoutMs, opts);
  if (spec.http) return runHttpCheck(spec.name, spec.http, spec.timeoutMs, opts);
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

async function runHttpCheck(name: string, http: HttpCheckSpec, timeoutMs: number, opts: CheckOptions): Promise<CheckResult> {
  const started = performance.now();
  const outer = opts.signal;
  const mask = maskerFor(http, opts.secrets);
  const done = (ok: boolean, message: string, output?: string, pending?: boolean): CheckResult => ({
    name,
    ok,
    message: mask(message),
    durationMs: Math.round(performance.now() - started),
    ...(output !== undefined ? { output: mask(output) } : {}),
    ...(pending ? { pending } : {}),
  });
  const withheld = (http.headers ?? []).find((h) => h.value.includes(WITHHELD));
  if (withheld) {
    return done(false, `header ${withheld.name} was not sent: its value reads one of the controller's own credentials (a CASCADE_* variable, or one its config reads for itself), which a committed config cannot read; give the check a variable of its own, such as ARGOCD_TOKEN`);
  }
  const timeout = AbortSignal.timeout(Math.min(Math.max(timeoutMs, 1), MAX_TIMER_MS));
  const signal = outer ? AbortSignal.any([outer, timeout]) : timeout;
  try {
    // reset: a fresh connection per check. A kept-alive socket to a service that a deploy just
    // restarted fails with "other side closed" and would count as unhealthy.
    // Loaded on first use: undici alone added about 0.2 s to every start.
    const { request } = await import("undici");
    const res = await request(http.url, { method: "GET", signal, reset: true, headers: requestHeaders(http) });
    const assertions = http.json ?? [];
    const statusOk = res.statusCode === http.status;
    const limit = !statusOk ? BODY_EXCERPT_BYTES : assertions.length ? JSON_LIMIT_BYTES : http.body !== undefined ? BODY_LIMIT_BYTES : BODY_EXCERPT_BYTES;
    const { body, truncated } = await readUpTo(res.body, limit);
    const took = formatDuration(performance.now() - started);
    if (!statusOk) return done(false, `HTTP ${res.statusCode} in ${took}, expected ${http.status}`, excerpt(body));
    if (http.body !== undefined && !body.subarray(0, BODY_LIMIT_BYTES).includes(Buffer.from(http.body))) {
      return done(false, `HTTP ${res.statusCode}, body does not contain ${JSON.stringify(http.body)}`, excerpt(body));
    }
    if (assertions.length) {
      const failed = checkJson(body, truncated, assertions, opts.commit);
      if (failed) return done(false, `HTTP ${res.statusCode} in ${took}, but ${failed.message}`, excerpt(body), failed.pending);
      return done(true, `HTTP ${res.statusCode} in ${took}, ${assertions.length === 1 ? "its JSON assertion holds" : `all ${assertions.length} JSON assertions hold`}`);
    }
    return done(true, `HTTP ${res.statusCode} in ${took}`);
  } catch (err) {
    if (timeout.aborted) return done(false, `timed out after ${formatDuration(timeoutMs)}`);
    if (outer?.aborted) return done(false, "aborted");
    return done(false, describeRequestError(err, http.url));
  }
}

/** The request's headers: a User-Agent unless the config sets one, then the config's, in order. */
function requestHeaders(http: HttpCheckSpec): Record<string, string> {
  const headers: Record<string, string> = {};
  if (!(http.headers ?? []).some((h) => h.name.toLowerCase() === "user-agent")) headers["user-agent"] = "cascade-sync";
  for (const h of http.headers ?? []) headers[h.name] = h.value;
  return headers;
}

/** Masks the check's secret header values and `secrets` (a server may echo a header back, in a body or an error). */
function maskerFor(http: HttpCheckSpec, secrets: readonly string[] | undefined): (text: string) => string {
  const redactor = new Redactor();
  for (const s of secrets ?? []) redactor.add(s);
  for (const h of http.headers ?? []) {
    if (!h.secret) continue;
    redactor.add(h.value);
    // "Bearer <token>": the token alone must not show either.
    for (const part of h.value.split(/\s+/)) if (part.length >= 8) redactor.add(part);
  }
  return (text) => redactor.redact(text);
}

/**
 * Why the JSON body fails `assertions`, or undefined when all hold. Each failed assertion is named
 * with the value found (`status.health.status is "Degraded", expected "Healthy"`). While an
 * assertion with `{commit}` fails, the body is about another commit: only those are reported, and
 * the result is `pending` (not there yet). Otherwise it is pending when every failed assertion
 * found one of its `progressing` values.
 */
export function checkJson(body: Buffer, truncated: boolean, assertions: readonly JsonAssertionSpec[], commit: string | undefined): { message: string; pending: boolean } | undefined {
  let doc: unknown;
  try {
    doc = JSON.parse(body.toString("utf8"));
  } catch (err) {
    if (truncated) return { message: `the body is larger than ${JSON_LIMIT_BYTES / 1024 / 1024} MiB, so its JSON assertions cannot be checked`, pending: false };
    return { message: `the body is not JSON (${(err as Error).message})`, pending: false };
  }
  const results = assertions.map((a) => ({ a, failure: checkAssertion(doc, a, commit) }));
  const failed = results.filter((r) => r.failure);
  if (!failed.length) return undefined;
  const elsewhere = failed.filter((r) => r.failure!.commit);
  if (elsewhere.length) return { message: `not at {commit} yet: ${elsewhere.map((r) => r.failure!.message).join("; ")}`, pending: true };
  return { message: failed.map((r) => r.failure!.message).join("; "), pending: failed.every((r) => r.failure!.progressing) };
}

/** Why one assertion fails: its message, whether it compares with {commit}, whether the field exists, and whether its value means "still rolling out". */
function checkAssertion(doc: unknown, a: JsonAssertionSpec, commit: string | undefined): { message: string; commit: boolean; found: boolean; progressing: boolean } | undefined {
  const usesCommit = typeof a.equals === "string" && a.equals.includes("{commit}");
  if (usesCommit && !commit) return { message: `${a.path} cannot be compared: {commit} is known only once the environment runs a commit`, commit: false, found: false, progressing: false };
  const expected = usesCommit ? (a.equals as string).split("{commit}").join(commit!) : a.equals;
  const found = lookUp(doc, a.path);
  const shown = `${quote(expected)}${usesCommit ? " ({commit})" : ""}`;
  if (!found.ok) return { message: `${a.path} is missing (${found.why}), expected ${shown}`, commit: usesCommit, found: false, progressing: false };
  if (found.value === expected) return undefined;
  const progressing = (a.progressing ?? []).some((p) => p === found.value);
  return { message: `${a.path} is ${quote(found.value)}, expected ${shown}${progressing ? " (still progressing)" : ""}`, commit: usesCommit, found: true, progressing };
}

/** A value as a failed assertion shows it: JSON, shortened. */
function quote(v: unknown): string {
  const text = v === undefined ? "undefined" : JSON.stringify(v);
  return text.length > ACTUAL_MAX_CHARS ? `${text.slice(0, ACTUAL_MAX_CHARS - 1)}…` : text;
}

/** One step of a JSON path: a key, an index, or the first list item whose `key` is `value`. */
type PathStep = { key: string } | { index: number } | { where: string; is: string };

/** The steps of a path such as `status.conditions[type=Ready].status` (the schema has checked its form). */
export function parsePath(path: string): PathStep[] {
  const steps: PathStep[] = [];
  for (const m of path.matchAll(/\[([^\]]*)\]|([^.[\]]+)/g)) {
    if (m[2] !== undefined) steps.push({ key: m[2] });
    else if (/^\d+$/.test(m[1]!)) steps.push({ index: Number(m[1]) });
    else {
      const eq = m[1]!.indexOf("=");
      steps.push({ where: m[1]!.slice(0, eq), is: m[1]!.slice(eq + 1) });
    }
  }
  return steps;
}

/** The value at `path` in `doc`, or why there is none. */
function lookUp(doc: unknown, path: string): { ok: true; value: unknown } | { ok: false; why: string } {
  let v: unknown = doc;
  let at = "";
  for (const step of parsePath(path)) {
    if ("key" in step) {
      if (!v || typeof v !== "object" || Array.isArray(v) || !Object.hasOwn(v, step.key)) return { ok: false, why: `no key ${JSON.stringify(step.key)}${at ? ` in ${at}` : ""}` };
      v = (v as Record<string, unknown>)[step.key];
      at = at ? `${at}.${step.key}` : step.key;
      continue;
    }
    if (!Array.isArray(v)) return { ok: false, why: `${at || "the body"} is not a list` };
    if ("index" in step) {
      if (step.index >= v.length) return { ok: false, why: `${at || "the body"} has ${v.length} item(s)` };
      v = v[step.index];
      at = `${at}[${step.index}]`;
    } else {
      const item = v.find((x) => x && typeof x === "object" && !Array.isArray(x) && Object.hasOwn(x, step.where) && String((x as Record<string, unknown>)[step.where]) === step.is);
      if (item === undefined) return { ok: false, why: `no item of ${at || "the body"} has ${step.where} ${JSON.stringify(step.is)}` };
      v = item;
      at = `${at}[${step.where}=${step.is}]`;
    }
  }
  return { ok: true, value: v };
}

/** Reads at most `limit` bytes of a body and discards the rest (the stream is destroyed); `truncated` when there was more. */
async function readUpTo(body: AsyncIterable<Buffer> & { destroy(): unknown }, limit: number): Promise<{ body: Buffer; truncated: boolean }> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    chunks.push(chunk);
    size += chunk.length;
    if (size > limit) break;
  }
  body.destroy();
  const all = Buffer.concat(chunks);
  return all.length > limit ? { body: all.subarray(0, limit), truncated: true } : { body: all, truncated: false };
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
 * One round of an environment's health checks, run at once. `live` is the commit the environment
 * runs: the deployed release (`deploy.directory/current`) when it deploys, else the head of its
 * branch (a cluster tool such as Argo CD or Flux deploys it). Command checks run in the live
 * release when there is one, else in the sandbox, with the environment commandEnv builds from
 * `processEnv` (the controller's) and each check's `env`: CASCADE_ENVIRONMENT, and CASCADE_COMMIT
 * (and CASCADE_RELEASE_DIR when deployed here) when `live` is known; `{commit}` in an http check's
 * JSON assertions is `live`. Returns each check's name, outcome, one-line message and, for a
 * failed http check whose service is not there yet, `pending`.
 */
export async function runHealthRound(env: EnvironmentSpec, live: string | null, sandboxDir: string, processEnv: NodeJS.ProcessEnv): Promise<{ name: string; ok: boolean; message: string; pending?: boolean }[]> {
  const deployed = env.deploy && live ? env.deploy.directory : undefined;
  const cwd = deployed ? join(deployed, "current") : sandboxDir;
  const cascade: Record<string, string> = {
    CASCADE_ENVIRONMENT: env.name,
    ...(live ? { CASCADE_COMMIT: live } : {}),
    ...(deployed && live ? { CASCADE_RELEASE_DIR: releaseDir(deployed, live) } : {}),
  };
  const results = await Promise.all(env.health.map((h) => {
    const built = commandEnv({ controller: processEnv, ...(h.env ? { entries: h.env } : {}), cascade });
    return runCheck(h, { cwd, env: built.env, secrets: built.secrets, ...(live ? { commit: live } : {}) });
  }));
  return results.map((r) => ({ name: r.name, ok: r.ok, message: r.message, ...(r.pending ? { pending: true } : {}) }));
}
