import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { StringDecoder } from "node:string_decoder";
import type { Readable } from "node:stream";
import { classifyGitFailure, GitError } from "./failure.js";

/**
 * Where a git command runs: the directory, and optionally an explicit git directory and work tree
 * (passed as `--git-dir`/`--work-tree`, so discovery never walks out of the sandbox).
 */
export interface GitRepo {
  /** Directory git runs in; default the process's. */
  cwd?: string;
  /** `--git-dir`: the repository (the `.git` folder, or a bare repository). */
  gitDir?: string;
  /** `--work-tree`: the checked-out files, when `gitDir` is given and the work tree is not its parent. */
  workTree?: string;
  /** Environment additions merged over the gateway's own (a value of undefined removes the variable). */
  env?: Record<string, string | undefined>;
  /** Applied to the command line and git's messages before they reach an error (secrets, URL credentials). */
  redact?: (text: string) => string;
}

/** How one git command runs. */
export interface GitRunOptions extends GitRepo {
  /** Written to git's stdin, which is then closed. Without it git's stdin is /dev/null. */
  stdin?: string | Buffer | Readable;
  /** The whole process group is killed after this long; default {@link DEFAULT_GIT_TIMEOUT_MS}. 0 = never. */
  timeoutMs?: number;
  /**
   * The whole process group is killed when git writes nothing (stdout or stderr) for this long: for a
   * transfer run with `--progress`, "no answer for this long" rather than "not done yet", so a big first
   * push is not cut off while a hung remote still is. Undefined = no such limit.
   */
  idleTimeoutMs?: number;
  /** Hears git's stderr as it comes (progress lines end with `\r`), besides collecting it for the result. */
  onStderr?: (text: string) => void;
  /** Aborting kills the whole process group, like the timeout. */
  signal?: AbortSignal;
  /** Exit codes that are answers, not failures (merge-tree's 1 = conflicts, diff --quiet's 1 = differs). Default [0]. */
  okExitCodes?: readonly number[];
  /**
   * The command talks to a remote: ssh gets `BatchMode=yes` (added to the user's `GIT_SSH_COMMAND` or
   * `core.sshCommand`, not replacing it), so an unknown host key or a key passphrase fails at once with a
   * recognisable message instead of prompting. `acceptNewHostKey` is the explicit opt-in to trust a host
   * seen for the first time (`StrictHostKeyChecking=accept-new`); a changed key is refused regardless.
   */
  remote?: { acceptNewHostKey?: boolean };
  /** Called once git has started with its pid, which is also its process group id. */
  onSpawn?: (pid: number) => void;
  /**
   * Hears each NUL-terminated record of stdout (a `-z` list) as it arrives, and none of stdout is kept
   * (the result's is empty): a whole-tree list, about 100 MB at a million files, is filtered without
   * ever being held. See {@link runGitRecords}.
   */
  onRecord?: (record: string) => void;
}

/** What a finished git command gave. */
export interface GitRunResult {
  stdout: Buffer;
  /** stderr as text (not redacted: it may be shown only through a GitError, which redacts). */
  stderr: string;
  exitCode: number;
}

/**
 * Ten minutes: long enough for a first `git add -A` of a million files on a slow disk, short enough
 * that a git stuck on something nobody will ever answer does not hold the loop for good.
 */
export const DEFAULT_GIT_TIMEOUT_MS = 10 * 60_000;

/**
 * Variables that point git at another repository, index or object store, or make it prompt. A controller
 * started from a git hook (or a shell with GIT_DIR exported) would otherwise act on the wrong repository.
 */
const DROPPED_ENV = new Set([
  "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES",
  "GIT_COMMON_DIR", "GIT_NAMESPACE", "GIT_PREFIX", "GIT_QUARANTINE_PATH", "GIT_CONFIG_PARAMETERS",
  "GIT_CONFIG_COUNT", "GIT_ASKPASS", "SSH_ASKPASS", "GIT_EDITOR", "GIT_SEQUENCE_EDITOR", "GIT_PAGER",
  "GIT_REFLOG_ACTION", "LANGUAGE",
]);

/**
 * The environment git runs with: the process's, minus what steers git elsewhere or prompts
 * ({@link DROPPED_ENV}), plus: no terminal prompt, no askpass program (ours comes through `extra` when
 * a remote needs credentials; GIT_ASKPASS="" keeps git from falling back to core.askPass or
 * SSH_ASKPASS), no editor or pager, English messages for the failure rules, no GUI prompt from
 * ssh or Git Credential Manager. `extra` is merged last.
 */
export function gitEnvironment(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (DROPPED_ENV.has(key) || /^GIT_CONFIG_(KEY|VALUE)_\d+$/.test(key)) continue;
    env[key] = value;
  }
  Object.assign(env, {
    GIT_TERMINAL_PROMPT: "0",
    GIT_ASKPASS: "",
    SSH_ASKPASS_REQUIRE: "never",
    GCM_INTERACTIVE: "never",
    GIT_EDITOR: ":",
    GIT_SEQUENCE_EDITOR: ":",
    GIT_PAGER: "cat",
    GIT_MERGE_AUTOEDIT: "no",
    LC_ALL: "C",
  });
  for (const [key, value] of Object.entries(extra)) {
    if (value === undefined) delete env[key];
    else env[key] = value;
  }
  return env;
}

/**
 * Runs the installed `git` with an argument array (never a shell), in its own session (no controlling
 * terminal, so nothing it starts can open /dev/tty) and its own process group, which the timeout or the
 * abort signal kills whole: `git fetch` over http runs git-remote-http, over ssh runs ssh, and killing
 * only git would leave those holding the connection. Resolves with stdout as bytes and stderr as text
 * for an exit code in `okExitCodes`; rejects with a {@link GitError}: the classified failure, Transient
 * `GitTimeout`, Transient `GitAborted`, or Stalled `GitNotFound`.
 */
export async function runGit(args: readonly string[], opts: GitRunOptions = {}): Promise<GitRunResult> {
  const full = [...globalArgs(opts), ...args];
  const env = gitEnvironment({ ...opts.env, ...(opts.remote ? { GIT_SSH_COMMAND: await batchSshCommand(opts) } : {}) });
  return spawnGit(full, args, env, opts);
}

/** The `--git-dir`/`--work-tree` options that come before the subcommand. */
export function globalArgs(repo: GitRepo): string[] {
  const out: string[] = [];
  if (repo.gitDir !== undefined) out.push(`--git-dir=${repo.gitDir}`);
  if (repo.workTree !== undefined) out.push(`--work-tree=${repo.workTree}`);
  return out;
}

/**
 * Runs git with a `-z` list on stdout, handing `onRecord` each record (without its NUL) as it arrives;
 * resolves when git has exited. Nothing of stdout is held, whatever its size.
 */
export async function runGitRecords(args: readonly string[], opts: GitRunOptions, onRecord: (record: string) => void): Promise<GitRunResult> {
  return runGit(args, { ...opts, onRecord });
}

/** Splits a byte stream at NULs (UTF-8 never has a 0 byte inside a character), a record at a time. */
function recordSplitter(onRecord: (record: string) => void): (chunk: Buffer) => void {
  let partial: Buffer | undefined;
  return (chunk) => {
    let at = 0;
    for (let nul = chunk.indexOf(0, at); nul >= 0; nul = chunk.indexOf(0, at)) {
      const piece = chunk.subarray(at, nul);
      onRecord((partial ? Buffer.concat([partial, piece]) : piece).toString("utf8"));
      partial = undefined;
      at = nul + 1;
    }
    if (at < chunk.length) partial = partial ? Buffer.concat([partial, chunk.subarray(at)]) : Buffer.from(chunk.subarray(at));
  };
}

function spawnGit(full: string[], shown: readonly string[], env: NodeJS.ProcessEnv, opts: GitRunOptions): Promise<GitRunResult> {
  const redact = opts.redact ?? ((t: string) => t);
  const command = redact(`git ${shown.join(" ")}`);
  return new Promise((resolve, reject) => {
    if (opts.signal?.aborted) {
      reject(aborted(command));
      return;
    }
    const child = spawn("git", full, {
      cwd: opts.cwd,
      env,
      stdio: [opts.stdin === undefined ? "ignore" : "pipe", "pipe", "pipe"],
      detached: true,
      windowsHide: true,
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let ended: "timeout" | "idle" | "abort" | undefined;
    const killGroup = (why: "timeout" | "idle" | "abort") => {
      ended ??= why;
      if (child.pid !== undefined) killProcessGroup(child.pid);
    };
    const timeoutMs = opts.timeoutMs ?? DEFAULT_GIT_TIMEOUT_MS;
    const timer = timeoutMs > 0 ? setTimeout(() => killGroup("timeout"), timeoutMs) : undefined;
    const idleMs = opts.idleTimeoutMs;
    let idleTimer = idleMs !== undefined && idleMs > 0 ? setTimeout(() => killGroup("idle"), idleMs) : undefined;
    const heard = () => {
      if (idleTimer === undefined) return;
      clearTimeout(idleTimer);
      idleTimer = setTimeout(() => killGroup("idle"), idleMs);
    };
    const onAbort = () => killGroup("abort");
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    const done = () => {
      clearTimeout(timer);
      clearTimeout(idleTimer);
      opts.signal?.removeEventListener("abort", onAbort);
    };
    if (child.pid !== undefined) opts.onSpawn?.(child.pid);
    const records = opts.onRecord ? recordSplitter(opts.onRecord) : undefined;
    child.stdout!.on("data", (d: Buffer) => {
      if (records) records(d);
      else out.push(d);
      heard();
    });
    const decoder = new StringDecoder("utf8");
    child.stderr!.on("data", (d: Buffer) => {
      err.push(d);
      heard();
      opts.onStderr?.(decoder.write(d));
    });
    child.on("error", (e: NodeJS.ErrnoException) => {
      done();
      reject(notStarted(command, e, opts.cwd));
    });
    child.on("close", (code) => {
      done();
      const stderr = Buffer.concat(err).toString("utf8");
      const stdout = Buffer.concat(out);
      if (ended === "timeout" || ended === "idle") reject(new GitError("Transient", "GitTimeout", ended === "idle"
        ? `${command} gave no sign of progress for ${idleMs} ms and was stopped`
        : `${command} did not finish within ${timeoutMs} ms and was stopped`, {
        command, stderr: redact(stderr), hint: "retried with backoff; a remote that accepts connections but never answers causes this",
      }));
      else if (ended === "abort") reject(aborted(command));
      else if (code !== null && (opts.okExitCodes ?? [0]).includes(code)) resolve({ stdout, stderr, exitCode: code });
      else reject(classifyGitFailure({ args: shown, exitCode: code ?? undefined, stderr, stdout: stdout.toString("utf8"), redact: opts.redact }));
    });
    feedStdin(child.stdin, opts.stdin);
  });
}

function feedStdin(stdin: NodeJS.WritableStream | null, input: GitRunOptions["stdin"]): void {
  if (!stdin || input === undefined) return;
  // git may exit before reading all of its input (a failure, or it needed only part): EPIPE is not ours to report.
  stdin.on("error", () => undefined);
  if (typeof input === "string" || Buffer.isBuffer(input)) stdin.end(input);
  else {
    input.on("error", () => stdin.end());
    input.pipe(stdin);
  }
}

/** Kills a whole process group; a group already gone is fine. */
export function killProcessGroup(pid: number): void {
  try {
    process.kill(-pid, "SIGKILL");
  } catch {
    // ESRCH: nothing left to kill.
  }
}

function aborted(command: string): GitError {
  return new GitError("Transient", "GitAborted", `${command} was stopped (shutting down)`, { command, stderr: "" });
}

function notStarted(command: string, e: NodeJS.ErrnoException, cwd: string | undefined): GitError {
  if (e.code === "ENOENT" && (cwd === undefined || existsSync(cwd))) {
    return new GitError("Stalled", "GitNotFound", `git is not installed or not on PATH (${command})`, {
      command, stderr: "", cause: e, hint: "install git 2.38 or newer (Debian/Ubuntu: apt install git) and make sure the service's PATH includes it",
    });
  }
  return new GitError("Stalled", "GitNotStarted", `${command} could not start: ${e.message}${cwd ? ` (in ${cwd})` : ""}`, { command, stderr: "", cause: e });
}

/**
 * The ssh command for a remote operation: the user's own (GIT_SSH_COMMAND, else GIT_SSH, else
 * core.sshCommand, else plain ssh) with `-o BatchMode=yes` appended, and `StrictHostKeyChecking=accept-new`
 * only on the explicit opt-in. Options given later on ssh's command line do not override earlier ones, but
 * the user's own command rarely sets BatchMode, and when it does, it is their choice.
 */
async function batchSshCommand(opts: GitRunOptions): Promise<string> {
  const fromEnv = (k: string) => (k in (opts.env ?? {}) ? opts.env![k] : process.env[k]);
  const base = fromEnv("GIT_SSH_COMMAND") || (fromEnv("GIT_SSH") ? shellQuote(fromEnv("GIT_SSH")!) : undefined) || (await configuredSshCommand(opts)) || "ssh";
  return sshWithBatchMode(base, opts.remote?.acceptNewHostKey === true);
}

/** Appends the no-prompt options to an ssh command line (as git runs it: through sh, arguments appended). */
export function sshWithBatchMode(base: string, acceptNewHostKey: boolean): string {
  return `${base} -o BatchMode=yes${acceptNewHostKey ? " -o StrictHostKeyChecking=accept-new" : ""}`;
}

/**
 * core.sshCommand as git would use it in `repo`, read again once {@link SSH_COMMAND_MS} have passed: a
 * change's fetch and push (and every remote's) would each start a `git config` for it otherwise.
 */
function configuredSshCommand(repo: GitRepo): Promise<string | undefined> {
  const key = repo.gitDir ?? repo.cwd ?? "";
  const now = performance.now();
  const known = sshCommands.get(key);
  if (known && now - known.at <= SSH_COMMAND_MS) return known.value;
  const value = readSshCommand(repo);
  sshCommands.set(key, { at: now, value });
  return value;
}

const sshCommands = new Map<string, { at: number; value: Promise<string | undefined> }>();
const SSH_COMMAND_MS = 5_000;

async function readSshCommand(repo: GitRepo): Promise<string | undefined> {
  const args = ["config", "--get", "core.sshCommand"];
  try {
    const { stdout } = await spawnGit([...globalArgs(repo), ...args], args, gitEnvironment(repo.env), { ...repo, okExitCodes: [0, 1], timeoutMs: 30_000 });
    return stdout.toString("utf8").trim() || undefined;
  } catch {
    // Outside a repository (a clone's first fetch) the global config is all there is; git reads it itself.
    return undefined;
  }
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}
