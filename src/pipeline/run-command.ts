import { spawn, type ChildProcess } from "node:child_process";
import { performance } from "node:perf_hooks";
import { Redactor } from "../redact.js";

/** What running one shell command came to. */
export interface CommandResult {
  /** True only for exit code 0 without a timeout or an abort. */
  ok: boolean;
  /** The shell's exit code, or null when it was killed by a signal or never started. */
  exitCode: number | null;
  /** The signal that ended the shell (`SIGTERM`, `SIGKILL`), or null. */
  signal: string | null;
  /** The command ran longer than `timeoutMs` and its process group was killed. */
  timedOut: boolean;
  /** `opts.signal` aborted and the process group was killed (or the command never started). */
  aborted: boolean;
  /** Combined stdout+stderr in arrival order, the last 64 KiB, `secrets` masked; for a spawn failure, the error. */
  output: string;
  durationMs: number;
}

/** Options of runCommand. */
export interface RunCommandOptions {
  cwd: string;
  /**
   * The complete environment of the command (nothing is inherited implicitly). For a command from a
   * commit or config, build it with `commandEnv` (command-env.ts), never from process.env.
   */
  env: NodeJS.ProcessEnv;
  /** Values masked as [REDACTED] in `output` (the secrets `commandEnv` put into `env`). */
  secrets?: readonly string[];
  timeoutMs: number;
  signal?: AbortSignal;
  /** Between SIGTERM and SIGKILL to the process group; default 2 s. */
  killGraceMs?: number;
}

/** How much output a result keeps: the end of it, where the error usually is. */
export const OUTPUT_LIMIT_BYTES = 64 * 1024;

const DEFAULT_KILL_GRACE_MS = 2000;
/**
 * After the shell exits, how long to wait for its pipes to close. A background process the command
 * started (a hook launching a service) may hold them open for ever; its output is not waited for.
 */
const DRAIN_AFTER_EXIT_MS = 100;
/** setTimeout fires at once for delays above this (a signed 32-bit overflow). */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Runs `command` with `/bin/sh -c` in `opts.cwd`, as the leader of its own process group, and
 * resolves when the shell has exited. On timeout or abort the whole group is killed: SIGTERM, then
 * SIGKILL after `killGraceMs` (also to members that outlive the shell). Processes the command leaves
 * running in the background after a normal exit are not touched (a deploy hook may start a service).
 *
 * Never rejects for a failing command: a non-zero exit, a signal, a timeout or an abort is
 * `ok: false` with the reason in the fields; a spawn failure (missing cwd, bad env) is `ok: false`,
 * `exitCode: null`, with the error in `output`.
 */
export function runCommand(command: string, opts: RunCommandOptions): Promise<CommandResult> {
  const started = performance.now();
  if (opts.signal?.aborted) return Promise.resolve(notStarted(started, "aborted before start", { aborted: true }));
  let child: ChildProcess;
  try {
    // detached: the child calls setsid(), so its pid is also the id of a new process group that
    // holds everything it starts; killing -pid then reaches grandchildren too.
    child = spawn("/bin/sh", ["-c", command], { cwd: opts.cwd, env: opts.env, detached: true, stdio: ["ignore", "pipe", "pipe"] });
  } catch (err) {
    return Promise.resolve(notStarted(started, describeSpawnError(err, opts.cwd)));
  }
  return supervise(child, opts, started);
}

function supervise(child: ChildProcess, opts: RunCommandOptions, started: number): Promise<CommandResult> {
  return new Promise((resolve) => {
    const output = new OutputTail(OUTPUT_LIMIT_BYTES);
    let timedOut = false;
    let aborted = false;
    let exit: { code: number | null; signal: string | null } | undefined;
    let spawnError: string | undefined;
    let settled = false;
    let drainTimer: NodeJS.Timeout | undefined;
    let killTimer: NodeJS.Timeout | undefined;

    const killGroup = () => {
      if (killTimer) return;
      signalGroup(child, "SIGTERM");
      killTimer = setTimeout(() => signalGroup(child, "SIGKILL"), opts.killGraceMs ?? DEFAULT_KILL_GRACE_MS);
    };
    const onAbort = () => {
      aborted = true;
      killGroup();
    };
    const timeoutTimer = Number.isFinite(opts.timeoutMs)
      ? setTimeout(() => {
          timedOut = true;
          killGroup();
        }, Math.min(Math.max(opts.timeoutMs, 0), MAX_TIMER_MS))
      : undefined;
    opts.signal?.addEventListener("abort", onAbort, { once: true });

    const finish = () => {
      if (settled) return;
      settled = true;
      clearTimeout(timeoutTimer);
      clearTimeout(drainTimer);
      opts.signal?.removeEventListener("abort", onAbort);
      // killTimer stays armed: group members that ignored SIGTERM still get SIGKILL.
      releasePipes(child);
      const code = exit?.code ?? null;
      resolve({
        ok: code === 0 && !timedOut && !aborted && spawnError === undefined,
        exitCode: code,
        signal: exit?.signal ?? null,
        timedOut,
        aborted,
        output: spawnError ?? mask(output.text(), opts.secrets),
        durationMs: Math.round(performance.now() - started),
      });
    };

    const collect = (chunk: Buffer) => {
      if (!settled) output.push(chunk);
    };
    child.stdout?.on("data", collect);
    child.stderr?.on("data", collect);
    child.on("error", (err) => {
      // Only spawn failures reach here: signals are sent with process.kill, not child.kill.
      spawnError = describeSpawnError(err, opts.cwd);
      finish();
    });
    child.on("exit", (code, signal) => {
      exit = { code, signal };
      // The command is over: a timeout or abort while its pipes drain must not kill what it left running.
      clearTimeout(timeoutTimer);
      opts.signal?.removeEventListener("abort", onAbort);
      drainTimer = setTimeout(finish, DRAIN_AFTER_EXIT_MS);
    });
    child.on("close", finish);
  });
}

/** Sends `signal` to the child's process group; a group that is already gone is fine. */
function signalGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // ESRCH: every member has exited.
  }
}

/**
 * Lets go of pipes a background process may still hold. They keep being read (and discarded)
 * rather than closed, because closing them would kill a service that logs to stdout with SIGPIPE;
 * unref keeps them from holding the event loop open.
 */
function releasePipes(child: ChildProcess): void {
  for (const stream of [child.stdout, child.stderr]) {
    if (!stream || stream.destroyed) continue;
    stream.resume();
    (stream as unknown as { unref?: () => void }).unref?.();
  }
  child.unref();
}

/** `text` with every one of `secrets` (and any URL credentials) replaced by [REDACTED]. */
function mask(text: string, secrets: readonly string[] | undefined): string {
  if (!secrets?.length) return text;
  const redactor = new Redactor();
  for (const s of secrets) redactor.add(s);
  return redactor.redact(text);
}

function notStarted(started: number, output: string, flags: { aborted?: boolean } = {}): CommandResult {
  return {
    ok: false,
    exitCode: null,
    signal: null,
    timedOut: false,
    aborted: flags.aborted ?? false,
    output,
    durationMs: Math.round(performance.now() - started),
  };
}

function describeSpawnError(err: unknown, cwd: string): string {
  const message = err instanceof Error ? err.message : String(err);
  // Node reports a missing cwd as "spawn /bin/sh ENOENT", which points at the wrong file.
  return `could not start /bin/sh in ${cwd}: ${message}`;
}

/** The last `limit` bytes of a stream of chunks, without holding more than about twice that. */
class OutputTail {
  private chunks: Buffer[] = [];
  private size = 0;

  constructor(private readonly limit: number) {}

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    if (this.size > 2 * this.limit) {
      const tail = this.bytes();
      this.chunks = [tail];
      this.size = tail.length;
    }
  }

  text(): string {
    return this.bytes().toString("utf8");
  }

  private bytes(): Buffer {
    const all = Buffer.concat(this.chunks);
    return all.length > this.limit ? all.subarray(all.length - this.limit) : all;
  }
}
