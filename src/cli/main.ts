import { resolve, dirname, join } from "node:path";
import { spawn } from "node:child_process";
import { openSync, closeSync } from "node:fs";
import { CONFIG_FILE, formatProblem, loadConfig } from "../config/load.js";
import { formatVariables } from "../config/dotenv.js";
import type { LoadResult, VariableSource } from "../config/types.js";
import type { Clock } from "../clock.js";
import { Controller, type StatusSnapshot } from "../controller.js";
import { CascadeError, toCascadeError } from "../errors.js";
import { init } from "../init.js";
import { Logger } from "../log.js";
import { Redactor } from "../redact.js";
import { Repo } from "../git/repo.js";
import { isAlive, readLock, readRuntimeJson, runningController, runtimeDir, takeControllerLock } from "../runtime.js";
import { parseArgs } from "./args.js";
import { runDemo } from "./demo.js";
import { formatEnvironment, formatHistory, formatStatus, short } from "./format.js";
import { readHistory } from "../pipeline/history.js";
import type { EnvironmentPlan } from "../../reconcilers/environment.js";
import { terminalProgress } from "../progress.js";
import { loadBlobPolicy } from "../security/blob-policy.js";
import { approveCommit } from "../approvals/approve.js";
import { parseDuration } from "../duration.js";
import { runHealthRound } from "../pipeline/checks.js";
import { currentRelease, integrityCheck } from "../pipeline/deploy.js";
import { fromBranch as fromBranchOf, promotionOrder } from "../config/pipeline.js";
import { requireGitVersion } from "../git/native/version.js";
import { historyCmd, restoreCmd } from "./history.js";
import { filterCommand, keyCommand, type SecurityCommandArgs } from "../security/commands.js";
import { freezeCmd } from "./freeze.js";

/** The world the CLI runs in, passed in so that tests run it in-process. */
export interface MainArgs {
  argv: string[];
  cwd: string;
  env: NodeJS.ProcessEnv;
  stdout: { write(s: string): unknown; isTTY?: boolean };
  stderr: { write(s: string): unknown };
  clock: Clock;
  /** Aborted on SIGTERM/SIGINT: long-running commands stop gracefully. */
  signal: AbortSignal;
  /** Path of the bin script, for `start --detach`. */
  binPath?: string;
  /** Bytes for commands that read them (git's filter protocol, `key import`); default the process's stdin. */
  stdin?: NodeJS.ReadableStream;
  /** Asks a running controller to reconcile now (SIGUSR1 in production). */
  onNudge?: (handler: () => void) => void;
}

const USAGE = `usage: cascade-sync <command> [options]

commands:
  init [DIR] [--remote URL]   make DIR (default .) a sandbox; idempotent
  start [--detach]            run the controller (foreground unless --detach)
  stop                        stop the controller gracefully (pending batch committed and pushed)
  status [--json]             the pipeline at a glance
  plan [--json]               what the controller would do now and why, changing nothing
  validate                    check the config; every problem as file:line:col: path: message
  reconcile                   one full pass, then exit
  demo                        run on an embedded demo under the project folder (npm start)
  health [--json]             run every check now (controller, config, repository, each
                              environment's health checks); exit 0 only if all pass
  approve ENV [COMMIT] --key FILE [--expires 24h] [--signer NAME]
                              sign an approval of COMMIT (default: the one waiting for ENV)
                              into cascade-sync-state.yaml; the controller commits it
  freeze ENV --reason TEXT [--expires 4h] --key FILE [--signer NAME]
                              sign a freeze of ENV into cascade-sync-state.yaml: nothing is
                              promoted into ENV until it expires or is lifted (rollback still works)
  unfreeze ENV --key FILE [--signer NAME]
                              sign a lift of ENV's freezes into cascade-sync-state.yaml
  history [PATH...] [--since 4h|TIME] [--limit N] [--json]
                              every version of PATHs (default: the whole sandbox) on the sandbox
                              branch, newest first: time, commit, summary, each file's size or deletion
  restore PATH... --at 2h|TIME|COMMIT [--dry-run]
                              put files or folders (or .) back as they were then, as edits the
                              controller commits as "restore: ..."; prints what it changes
  deploy-staging, deploy-production
                              reconcile that environment now and say what happened or what
                              blocks it; never bypasses a gate, approval or window
  key export                  print this sandbox's encryption key (base64) for a teammate
  key import [FILE]           install the team's key from FILE or stdin, then decrypt the
                              encrypted files that hold their ciphertext
  filter-process, filter-textconv FILE
                              run by git for security.encrypt paths (registered by init)

options:
  --config PATH               the config file (default ./${CONFIG_FILE})
`;

/**
 * Runs one cascade-sync command and returns its exit code: 0 success, 1 the command's check
 * failed (invalid config, unhealthy, failed pass), 2 usage or a blocking error.
 */
export async function main(args: MainArgs): Promise<number> {
  const out = (s: string) => args.stdout.write(s.endsWith("\n") ? s : `${s}\n`);
  const err = (s: string) => args.stderr.write(s.endsWith("\n") ? s : `${s}\n`);
  let parsed;
  try {
    parsed = parseArgs(args.argv);
  } catch (e) {
    err(`cascade-sync: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  const { command, positionals, flags } = parsed;
  if (!command || flags.help || command === "help") {
    out(USAGE);
    return command || flags.help ? 0 : 2;
  }
  const configFile = resolve(args.cwd, typeof flags.config === "string" ? flags.config : CONFIG_FILE);
  const redactor = new Redactor();
  try {
    switch (command) {
      case "init": {
        const report = await init({ dir: positionals[0] ?? ".", ...(typeof flags.remote === "string" ? { remote: flags.remote } : {}), cwd: args.cwd, env: args.env, now: () => args.clock.now() });
        for (const l of report.lines) out(l);
        if (report.changed) out(`next: cd ${positionals[0] ?? "."} && cascade-sync start`);
        return 0;
      }
      case "validate": {
        await requireGitVersion();
        const loaded = await loadConfig(configFile, args.env);
        const problems = loaded.ok ? loaded.warnings : loaded.problems;
        for (const p of problems) (p.severity === "error" ? err : out)(formatProblem(p));
        const variables = variablesOf(loaded);
        if (variables.length) out(`variables: ${formatVariables(variables)}`);
        if (!loaded.ok) {
          err(`${loaded.problems.filter((p) => p.severity === "error").length} problem(s) in ${configFile}`);
          return 1;
        }
        out(`${configFile}: valid`);
        return 0;
      }
      case "start":
        return flags.detach ? await startDetached(args, configFile, out, err) : await startForeground(args, configFile, redactor, out);
      case "stop":
        return await stop(args, configFile, out, err);
      case "status":
        return await status(args, configFile, redactor, out, !!flags.json);
      case "reconcile":
        return await reconcileOnce(args, configFile, redactor, out, err);
      case "plan":
        return await plan(args, configFile, redactor, out, !!flags.json);
      case "demo":
        return await runDemo(args, out);
      case "health":
        return await healthCmd(args, configFile, redactor, out, !!flags.json);
      case "approve":
        return await approveCmd(args, configFile, positionals, flags, out, err);
      case "freeze":
      case "unfreeze":
        return await freezeCmd(args, configFile, positionals, flags, out, err, command === "freeze" ? "freeze" : "lift");
      case "history":
        return await historyCmd(args, configFile, positionals, flags, out, err);
      case "restore":
        return await restoreCmd(args, configFile, positionals, flags, out, err);
      case "deploy-staging":
      case "deploy-production":
        return await deployCmd(args, configFile, redactor, command.slice("deploy-".length), out, err);
      case "key":
        return await keyCommand(securityArgs(args, flags, out, err), positionals);
      case "filter-process":
      case "filter-textconv":
        return await filterCommand(securityArgs(args, {}, out, err), args.argv);
      default:
        err(`cascade-sync: unknown command "${command}"\n\n${USAGE}`);
        return 2;
    }
  } catch (e) {
    const ce = toCascadeError(e);
    // init's refusals carry their kind and reason code (scripts that set up sandboxes match on them).
    const code = command === "init" && ce.reason !== "InternalError" ? `${ce.kind} ${ce.reason}: ` : "";
    err(redactor.redact(`cascade-sync ${command}: ${code}${ce.message}${ce.hint ? `\nhint: ${ce.hint}` : ""}`));
    if (ce.reason === "InternalError" && e instanceof Error && e.stack) err(redactor.redact(e.stack));
    // An invalid config is the command's check failing (as for `validate`), not a usage error.
    return ce.reason === "ConfigInvalid" ? 1 : 2;
  }
}

/** The world of the encryption commands: git speaks bytes on the process's own stdin and stdout. */
function securityArgs(args: MainArgs, flags: Record<string, string | boolean>, out: (s: string) => void, err: (s: string) => void): SecurityCommandArgs {
  return {
    cwd: args.cwd,
    env: args.env,
    stdin: args.stdin ?? process.stdin,
    stdout: (args.stdout as Partial<NodeJS.WritableStream>).once ? (args.stdout as NodeJS.WritableStream) : process.stdout,
    out,
    err,
    ...(typeof flags.config === "string" ? { configFile: resolve(args.cwd, flags.config) } : {}),
  };
}

function makeLogger(args: MainArgs, redactor: Redactor, file: string | undefined, terminal: boolean): Logger {
  return new Logger({ ...(terminal ? { terminal: args.stdout } : {}), ...(file ? { file } : {}) }, "info", redactor, args.clock);
}

async function openController(args: MainArgs, configFile: string, redactor: Redactor, terminal: boolean): Promise<Controller> {
  const log = makeLogger(args, redactor, undefined, terminal);
  // Only the controller in the foreground (`start`) reports progress of long work on the terminal.
  const progress = terminal ? terminalProgress(args.stdout, args.clock) : undefined;
  const c = await Controller.open({ configFile, env: args.env, clock: args.clock, log, redactor, ...(progress ? { progress } : {}) });
  log.reconfigure(c.current.logging.file, c.current.logging.level);
  return c;
}

async function startForeground(args: MainArgs, configFile: string, redactor: Redactor, out: (s: string) => void): Promise<number> {
  const controller = await openController(args, configFile, redactor, true);
  const repo = await Repo.open(controller.current.dir);
  const lock = await takeControllerLock(repo.gitdir, new Date(args.clock.now()));
  try {
    if (lock.tookOver) out(`took over a stale lock left by pid ${lock.tookOver.pid} (no longer running)`);
    for (const l of lock.removedLocks) out(`removed ${l}, left behind by the crashed controller`);
    out(`cascade-sync: watching ${controller.current.dir} (branch ${controller.current.sandbox.branch}, ${controller.current.remotes.length} remote(s)); Ctrl-C stops`);
    args.onNudge?.(() => controller.reconcileNow());
    await controller.start(args.signal, () => out("cascade-sync: ready"));
    out("cascade-sync: stopped");
    return 0;
  } finally {
    await lock.release();
  }
}

async function startDetached(args: MainArgs, configFile: string, out: (s: string) => void, err: (s: string) => void): Promise<number> {
  const loaded = await loadConfig(configFile, args.env);
  if (!loaded.ok) {
    for (const p of loaded.problems) err(formatProblem(p));
    return 1;
  }
  const repo = await Repo.open(loaded.config.dir);
  const running = await runningController(repo.gitdir);
  if (running) {
    err(`cascade-sync is already running for this sandbox (pid ${running.pid}, since ${running.startedAt})\nhint: use \`cascade-sync status\` to see it, or \`cascade-sync stop\` to stop it`);
    return 2;
  }
  if (!args.binPath) throw new Error("start --detach needs the bin path");
  const logFile = join(runtimeDir(repo.gitdir), "controller.out");
  const fd = openSync(logFile, "a", 0o600);
  const child = spawn(process.execPath, [args.binPath, "start", "--config", configFile], { cwd: args.cwd, env: args.env, detached: true, stdio: ["ignore", fd, fd] });
  closeSync(fd);
  child.unref();
  const deadline = args.clock.now() + 60_000;
  while (args.clock.now() < deadline) {
    const lock = await readLock(repo.gitdir);
    const st = await readRuntimeJson<StatusSnapshot>(repo.gitdir, "status.json");
    if (lock?.pid === child.pid && st !== undefined && st.pid === child.pid && st.running) {
      out(`cascade-sync started in the background (pid ${child.pid}); log: ${loaded.config.logging.file}; stop with \`cascade-sync stop\``);
      return 0;
    }
    if (child.exitCode !== null || !(await isChildAlive(child.pid))) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  err(`the controller did not come up; see ${logFile}`);
  return 1;
}

async function isChildAlive(pid: number | undefined): Promise<boolean> {
  return pid !== undefined && (await isAlive({ pid, startedAt: "" }));
}

async function stop(args: MainArgs, configFile: string, out: (s: string) => void, err: (s: string) => void): Promise<number> {
  const repo = await Repo.open(dirname(configFile));
  const running = await runningController(repo.gitdir);
  if (!running) {
    out("cascade-sync is not running for this sandbox");
    return 0;
  }
  process.kill(running.pid, "SIGTERM");
  out(`stopping cascade-sync (pid ${running.pid}): committing and pushing the pending batch...`);
  const deadline = args.clock.now() + 120_000;
  while (args.clock.now() < deadline) {
    if (!(await isAlive(running))) {
      out("stopped");
      return 0;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  err(`pid ${running.pid} did not stop within 120s; it may still be pushing. Check \`cascade-sync status\`.`);
  return 1;
}

async function status(args: MainArgs, configFile: string, redactor: Redactor, out: (s: string) => void, json: boolean): Promise<number> {
  const repo = await Repo.open(dirname(configFile)).catch(() => undefined);
  if (!repo) {
    out(`${dirname(configFile)} is not a cascade-sync sandbox (no git repository); run \`cascade-sync init\``);
    return 2;
  }
  const running = await runningController(repo.gitdir);
  const loaded = await loadConfig(configFile, args.env);
  let snap: StatusSnapshot | undefined = await readRuntimeJson<StatusSnapshot>(repo.gitdir, "status.json");
  if (!running && loaded.ok) {
    // Not running: observe now, so that pending changes and heads are current.
    const c = await Controller.open({ configFile, env: args.env, clock: args.clock, log: makeLogger(args, redactor, undefined, false), redactor });
    // Only the sandbox is observed: status must answer at once, also while a remote is down.
    const pending = (await c.planAll(["sandbox"])).find((p) => p.name === "sandbox");
    await c.lookAtEmbedded();
    const now = await c.snapshot(false);
    // What the reconcilers said when a controller last ran; nothing is scheduled while none runs.
    const last = (snap?.reconcilers ?? []).map(({ nextRunAt: _next, ...r }) => r);
    snap = { ...now, reconcilers: last, environments: snap?.environments ?? [], ...(snap ? { remotes: mergeRemotes(snap, now) } : {}) };
    const action = pending?.plan?.actions[0] as { type: string; paths?: unknown[] } | undefined;
    snap.sandbox.pendingPaths = action?.type === "commit" ? action.paths?.length ?? 0 : 0;
  }
  // A running controller's own view says where the values in use came from; its environment may not be this shell's.
  const variables = (running ? snap?.config.variables : undefined) ?? variablesOf(loaded);
  const report = {
    running: !!running,
    ...(running ? { pid: running.pid } : {}),
    config: { ...(loaded.ok ? { valid: true, problems: loaded.warnings.map(formatProblem) } : { valid: false, problems: loaded.problems.map(formatProblem) }), variables },
    snapshot: snap ? redactor.redactValue(snap) : null,
  };
  if (json) out(JSON.stringify(report, null, 2));
  else out(formatStatus(report));
  return 0;
}

/** Where each ${VAR} of a loaded config came from (of an invalid one too, when it parsed that far). */
function variablesOf(loaded: LoadResult): VariableSource[] {
  return loaded.ok ? loaded.config.variables : loaded.variables ?? [];
}

function mergeRemotes(previous: StatusSnapshot, now: StatusSnapshot): StatusSnapshot["remotes"] {
  return now.remotes.map((r) => ({ ...previous.remotes.find((p) => p.name === r.name), ...r }));
}

async function reconcileOnce(args: MainArgs, configFile: string, redactor: Redactor, out: (s: string) => void, err: (s: string) => void): Promise<number> {
  const controller = await openController(args, configFile, redactor, false);
  const repo = await Repo.open(controller.current.dir);
  const running = await runningController(repo.gitdir);
  if (running) {
    process.kill(running.pid, "SIGUSR1");
    out(`asked the running controller (pid ${running.pid}) to run a full pass now (scan, commit, fetch, merge, push); see \`cascade-sync status\``);
    return 0;
  }
  const lock = await takeControllerLock(repo.gitdir, new Date(args.clock.now()));
  try {
    const { ok, results } = await controller.runOnce();
    for (const r of results) {
      if (r.error) err(redactor.redact(`${r.name}: ${r.error.kind} ${r.error.reason}: ${r.error.message}${r.error.hint ? ` (hint: ${r.error.hint})` : ""}`));
      else out(`${r.name}: ${r.summary ?? "ok"}`);
    }
    return ok ? 0 : 1;
  } finally {
    await lock.release();
  }
}

async function plan(args: MainArgs, configFile: string, redactor: Redactor, out: (s: string) => void, json: boolean): Promise<number> {
  const controller = await openController(args, configFile, redactor, false);
  const plans = await controller.planAll();
  const reportOf = (p: (typeof plans)[number]) => (p.plan as EnvironmentPlan | undefined)?.report;
  if (json) {
    out(JSON.stringify(redactor.redactValue(plans.map((p) => ({ name: p.name, actions: p.lines, blocked: p.plan?.blocked ?? null, error: p.error ? errorJson(p.error) : null, ...(reportOf(p) ? { environment: reportOf(p) } : {}) }))), null, 2));
    return 0;
  }
  for (const p of plans) {
    const report = reportOf(p);
    if (report && !p.error) {
      for (const l of formatEnvironment(report)) out(l);
      for (const l of p.lines) out(`  would ${l}`);
      continue;
    }
    if (p.error) out(redactor.redact(`${p.name}: cannot observe: ${p.error.message}${p.error.hint ? ` (hint: ${p.error.hint})` : ""}`));
    else if (p.plan?.blocked) out(`${p.name}: blocked: ${p.plan.blocked.message}${p.plan.blocked.hint ? ` (hint: ${p.plan.blocked.hint})` : ""}`);
    else if (!p.lines.length) out(`${p.name}: nothing to do`);
    else for (const l of p.lines) out(`${p.name}: would ${l}`);
  }
  return 0;
}

function errorJson(e: CascadeError) {
  return { kind: e.kind, reason: e.reason, message: e.message, ...(e.hint ? { hint: e.hint } : {}) };
}

async function approveCmd(args: MainArgs, configFile: string, positionals: string[], flags: Record<string, string | boolean>, out: (s: string) => void, err: (s: string) => void): Promise<number> {
  const [envName, commitArg] = positionals;
  const loaded = await loadConfig(configFile, args.env);
  if (!loaded.ok) {
    for (const p of loaded.problems) err(formatProblem(p));
    return 1;
  }
  const config = loaded.config;
  const approvalEnvs = Object.values(config.environments).filter((e) => e.promotion === "approval").map((e) => e.name);
  const env = envName && Object.hasOwn(config.environments, envName) ? config.environments[envName] : undefined;
  if (!env || env.promotion !== "approval") {
    err(`cascade-sync approve: ${envName ? `"${envName}" is not an environment with promotion: approval` : "which environment?"}\nhint: cascade-sync approve ENV [COMMIT] --key FILE, with ENV one of: ${approvalEnvs.join(", ") || "(none: no environment uses promotion: approval)"}`);
    return 2;
  }
  if (typeof flags.key !== "string") {
    err("cascade-sync approve: --key FILE is required (an unencrypted OpenSSH or PEM ed25519 private key)\nhint: with a passphrase-protected key, pass it anyway: the command then prints the ssh-keygen -Y sign steps to run instead");
    return 2;
  }
  const expiresInMs = parseDuration(typeof flags.expires === "string" ? flags.expires : "24h");
  if (!expiresInMs) {
    err(`cascade-sync approve: --expires ${String(flags.expires)} is not a duration\nhint: e.g. 24h, 30m, 7d`);
    return 2;
  }
  const repo = await Repo.open(config.dir);
  const fromBranch = fromBranchOf(config, env);
  const commit = commitArg ? await repo.resolveCommit(commitArg) : await repo.branchHead(fromBranch);
  if (!commit) {
    err(commitArg ? `cascade-sync approve: "${commitArg}" names no commit in this repository` : `cascade-sync approve: branch ${fromBranch} has no commit to approve`);
    return 2;
  }
  const result = await approveCommit({
    sandboxDir: config.dir, environment: env.name, commit, keyFile: resolve(args.cwd, flags.key), expiresInMs, now: args.clock.now(),
    ...(typeof flags.signer === "string" ? { signer: flags.signer } : {}),
  });
  out(result.entryText);
  out(`appended to ${result.stateFile}; the controller commits it with its next batch, and ${env.name} moves to ${commit.slice(0, 7)} once the approval counts (see \`cascade-sync plan\`)`);
  return 0;
}

async function healthCmd(args: MainArgs, configFile: string, redactor: Redactor, out: (s: string) => void, json: boolean): Promise<number> {
  const checks: { name: string; ok: boolean; message: string }[] = [];
  const loaded = await loadConfig(configFile, args.env);
  const repo = await Repo.open(dirname(configFile)).catch(() => undefined);
  const running = repo ? await runningController(repo.gitdir) : undefined;
  checks.push({ name: "controller", ok: !!running, message: running ? `running (pid ${running.pid})` : "not running (start it with `cascade-sync start`)" });
  checks.push({ name: "config", ok: loaded.ok, message: loaded.ok ? "valid" : loaded.problems.map(formatProblem).join("; ") });
  if (repo && loaded.ok) {
    const config = loaded.config;
    // A release is judged by what its files are in plaintext (an encrypted blob is decrypted with the key).
    repo.policy = (await loadBlobPolicy(config, args.env)).policy;
    const branches = [config.sandbox.branch, ...promotionOrder(config).map((e) => config.environments[e]!.branch)];
    for (const b of branches) {
      const head = await repo.branchHead(b);
      if (!head) {
        checks.push({ name: `repository ${b}`, ok: false, message: `branch ${b} does not exist` });
        continue;
      }
      const v = await repo.verifyClosure(head);
      checks.push({ name: `repository ${b}`, ok: !v.problems.length, message: v.problems.length ? v.problems.slice(0, 3).join("; ") : `${short(head)}: ${v.objects} objects verified` });
    }
    for (const name of promotionOrder(config)) {
      const env = config.environments[name]!;
      // Without deploy a cluster tool runs what the branch holds: that is the commit its checks are about.
      const live = env.deploy ? await currentRelease(env.deploy.directory) : await repo.branchHead(env.branch);
      for (const r of await runHealthRound(env, live, config.dir, args.env)) checks.push({ ...r, name: `${name}/${r.name}` });
      if (env.deploy && live) checks.push({ name: `${name}/integrity`, ...(await integrityCheck(repo, env.deploy.directory, live)) });
    }
  } else if (!repo) checks.push({ name: "repository", ok: false, message: `${dirname(configFile)} has no git repository; run \`cascade-sync init\`` });
  const ok = checks.every((c) => c.ok);
  if (json) out(JSON.stringify(redactor.redactValue({ ok, checks }), null, 2));
  else for (const c of checks) out(redactor.redact(`${c.ok ? "ok  " : "FAIL"} ${c.name}: ${c.message}`));
  return ok ? 0 : 1;
}


/**
 * Reconciles one environment now and reports the outcome: with a controller running, it is nudged
 * and its next status is read; otherwise the pass runs here (with the controller lock held). Exit 0
 * when the environment is up to date or was promoted now, 1 when something blocks it.
 */
async function deployCmd(args: MainArgs, configFile: string, redactor: Redactor, envName: string, out: (s: string) => void, err: (s: string) => void): Promise<number> {
  const controller = await openController(args, configFile, redactor, false);
  if (!Object.hasOwn(controller.current.environments, envName)) {
    err(`cascade-sync deploy-${envName}: there is no environment "${envName}" in the config\nhint: environments: ${Object.keys(controller.current.environments).join(", ") || "(none)"}`);
    return 2;
  }
  const repo = await Repo.open(controller.current.dir);
  const running = await runningController(repo.gitdir);
  let report;
  let error;
  const startedAt = new Date(args.clock.now()).toISOString();
  if (running) {
    process.kill(running.pid, "SIGUSR1");
    out(`asked the running controller (pid ${running.pid}) to reconcile ${envName} now...`);
    const deadline = args.clock.now() + 120_000;
    let last;
    while (args.clock.now() < deadline) {
      await new Promise((r) => setTimeout(r, 250));
      const st = await readRuntimeJson<StatusSnapshot>(repo.gitdir, "status.json");
      // The nudge runs the sandbox (committing pending edits), then the environments: only an
      // environment pass that started after that sandbox pass ended speaks for now.
      const passes = new Map(st?.reconcilers.map((r) => [r.name, r]));
      const sandbox = passes.get("sandbox");
      const slot = passes.get(`env:${envName}`);
      const env = st?.environments.find((e) => e.name === envName);
      const sandboxDone = sandbox && !sandbox.running && (sandbox.lastRunAt ?? "") >= startedAt ? sandbox.lastDoneAt ?? "" : undefined;
      if (sandboxDone !== undefined && slot && !slot.running && (slot.lastRunAt ?? "") >= sandboxDone && env) last = env;
      if (last && !last.inProgress) {
        report = last;
        error = last.error;
        break;
      }
    }
    if (!report) {
      if (last) for (const l of formatEnvironment(last)) out(l);
      err(`the controller has not finished with ${envName} within 120s; see \`cascade-sync status\``);
      return 1;
    }
  } else {
    const lock = await takeControllerLock(repo.gitdir, new Date(args.clock.now()));
    try {
      const results = await controller.settleEnvironments([envName]);
      const snap = await controller.snapshot(false);
      report = snap.environments.find((e) => e.name === envName);
      error = results.filter((r) => r.name === `env:${envName}`).at(-1)?.error;
      for (const r of results.filter((x) => x.name.startsWith("remote:") && x.error)) err(redactor.redact(`${r.name}: ${r.error!.message}`));
    } finally {
      await lock.release();
    }
  }
  const acted = (await readHistory(repo.gitdir, 50)).filter((h) => h.environment === envName && h.at >= startedAt);
  for (const h of acted) out(formatHistory(h));
  if (report) for (const l of formatEnvironment(report)) out(l);
  if (error) {
    err(redactor.redact(`${envName}: ${error.kind} ${error.reason}: ${error.message}${error.hint ? `\nhint: ${error.hint}` : ""}`));
    return 1;
  }
  // Promoted now: done, even if the environment already waits on its next candidate (a newer commit without approval).
  const promoted = acted.some((h) => h.event === "promoted");
  return promoted || !report?.blocked ? 0 : 1;
}
