import { createHash } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CONFIG_FILE, formatProblem } from "../config/load.js";
import type { GateSpec } from "../config/types.js";
import type { Repo } from "../git/repo.js";
import type { Logger } from "../log.js";
import { readRuntimeJson, writeRuntimeFile } from "../runtime.js";
import { runCheck } from "./checks.js";
import { commandEnv, CommandSourceEnv } from "./command-env.js";
import { parseCommitConfig } from "./commit-config.js";
import { materializeTree } from "./materialize.js";
import { describeFinding, scanCommit } from "../security/scan-commit.js";

/** One gate's finished result for one commit. */
export interface GateOutcome {
  name: string;
  ok: boolean;
  message: string;
  at: string;
  durationMs: number;
}

/** Where the gates of one commit stand: all passed, one failed, still running, or not started. */
export interface GateReport {
  commit: string;
  state: "passed" | "failed" | "running" | "pending";
  gates: ({ name: string; state: "passed" | "failed" } & Omit<GateOutcome, "name"> | { name: string; state: "running" | "pending" | "not run" })[];
}

interface Job {
  commit: string;
  abort: AbortController;
  done: Promise<void>;
  current?: string;
}

const CACHE_FILE = "gates.json";
const MAX_CACHED = 1000;

/**
 * Runs gates against a commit's tree exported to a clean temporary folder (never the sandbox), one
 * job per environment in the background. Results are remembered per (commit, gate definition), also
 * across restarts, so an unchanged commit is not tested twice; starting a job for a newer commit
 * cancels the one still running for an older commit. `onSettled(env)` is called when a job ends.
 * A gate's command gets only what commandEnv builds from the controller's environment (`env`) and
 * the gate's own `env`, with CASCADE_ENVIRONMENT and CASCADE_COMMIT; its logged output has the
 * values named there masked.
 */
export class GateRunner {
  private readonly jobs = new Map<string, Job>();
  private cache = new Map<string, GateOutcome>();

  private constructor(
    private readonly repo: Repo,
    private readonly log: Logger,
    private readonly source: CommandSourceEnv,
    private readonly onSettled: (environment: string) => void,
    private readonly onResult: (environment: string, outcome: GateOutcome) => void,
  ) {}

  /**
   * A runner with the remembered results of earlier runs; `onResult` hears of each gate that finishes
   * (metrics). `env` is what gates may read of the controller's environment: a CommandSourceEnv (its
   * credentials withheld, kept current by the controller), or a plain environment, taken as one.
   */
  static async open(repo: Repo, log: Logger, env: CommandSourceEnv | NodeJS.ProcessEnv, onSettled: (environment: string) => void, onResult: (environment: string, outcome: GateOutcome) => void = () => undefined): Promise<GateRunner> {
    const r = new GateRunner(repo, log, env instanceof CommandSourceEnv ? env : new CommandSourceEnv(env), onSettled, onResult);
    const saved = await readRuntimeJson<[string, GateOutcome][]>(repo.gitdir, CACHE_FILE);
    if (Array.isArray(saved)) r.cache = new Map(saved);
    return r;
  }

  /** The gates of `commit` for `environment` as far as they are known (pure lookup, starts nothing). */
  report(environment: string, commit: string, gates: GateSpec[]): GateReport {
    const job = this.jobs.get(environment);
    const running = job?.commit === commit;
    const rows: GateReport["gates"] = [];
    let failed = false;
    for (const g of gates) {
      const hit = this.cache.get(key(commit, g));
      if (hit) {
        rows.push({ ...hit, name: g.name, state: hit.ok ? "passed" : "failed" });
        failed ||= !hit.ok;
      } else if (failed) rows.push({ name: g.name, state: "not run" });
      else rows.push({ name: g.name, state: running && job.current === g.name ? "running" : "pending" });
    }
    const state = failed ? "failed" : rows.every((r) => r.state === "passed") ? "passed" : running ? "running" : "pending";
    return { commit, state, gates: rows };
  }

  /**
   * Starts the gates of `commit` for `environment` in the background unless they already run or are
   * all known; a job for another commit of the same environment is cancelled first.
   */
  start(environment: string, commit: string, gates: GateSpec[]): void {
    const job = this.jobs.get(environment);
    if (job?.commit === commit) return;
    if (job) {
      this.log.info(`gates for ${environment}: cancelling the run for ${job.commit.slice(0, 7)}, ${commit.slice(0, 7)} is newer`);
      job.abort.abort();
    }
    const abort = new AbortController();
    const next: Job = { commit, abort, done: Promise.resolve() };
    next.done = this.run(environment, next, gates).finally(() => {
      if (this.jobs.get(environment) === next) this.jobs.delete(environment);
      this.onSettled(environment);
    });
    this.jobs.set(environment, next);
  }

  /** True while a gate job runs for `environment`. */
  running(environment: string): boolean {
    return this.jobs.has(environment);
  }

  /** Resolves when `environment` has no gate job running. */
  async idle(environment: string): Promise<void> {
    for (let job = this.jobs.get(environment); job; job = this.jobs.get(environment)) await job.done;
  }

  /** Cancels every running job (stop). */
  async close(): Promise<void> {
    for (const job of this.jobs.values()) job.abort.abort();
    await Promise.allSettled([...this.jobs.values()].map((j) => j.done));
  }

  private async run(environment: string, job: Job, gates: GateSpec[]): Promise<void> {
    const todo = gates.filter((g) => !this.cache.has(key(job.commit, g)));
    if (!todo.length) return;
    const tmp = await mkdtemp(join(tmpdir(), "cascade-gates-"));
    const tree = join(tmp, "tree");
    try {
      await materializeTree(this.repo, job.commit, tree);
      for (const gate of todo) {
        if (job.abort.signal.aborted) return;
        job.current = gate.name;
        const outcome = await this.runGate(environment, job, gate, tree);
        if (job.abort.signal.aborted) return; // a cancelled run proves nothing
        this.cache.set(key(job.commit, gate), outcome);
        this.onResult(environment, outcome);
        this.log[outcome.ok ? "info" : "warn"](`gate ${gate.name} for ${environment} on ${job.commit.slice(0, 7)}: ${outcome.ok ? "passed" : "failed"}: ${outcome.message}`,
          { environment, commit: job.commit, gate: gate.name, ok: outcome.ok });
        if (!outcome.ok) break;
      }
    } catch (err) {
      // The export itself failed (e.g. an unsafe path in the tree): every remaining gate fails with it.
      const message = `the commit could not be exported for its gates: ${exportFailure(err)}`;
      for (const gate of todo) {
        if (!this.cache.has(key(job.commit, gate))) this.cache.set(key(job.commit, gate), { name: gate.name, ok: false, message, at: new Date().toISOString(), durationMs: 0 });
      }
      this.log.warn(`gates for ${environment} on ${job.commit.slice(0, 7)}: ${message}`);
    } finally {
      await rm(tmp, { recursive: true, force: true });
      await this.persist();
    }
  }

  private async runGate(environment: string, job: Job, gate: GateSpec, tree: string): Promise<GateOutcome> {
    const t0 = Date.now();
    const finish = (ok: boolean, message: string): GateOutcome => ({ name: gate.name, ok, message, at: new Date().toISOString(), durationMs: Date.now() - t0 });
    if (gate.builtin === "config") {
      const text = await this.repo.fileAt(job.commit, CONFIG_FILE);
      if (!text) return finish(false, `the commit has no ${CONFIG_FILE}`);
      const loaded = await parseCommitConfig(text.toString("utf8"), this.repo.dir, this.source);
      return loaded.ok ? finish(true, "the config is valid") : finish(false, loaded.problems.map(formatProblem).join("; "));
    }
    if (gate.builtin === "integrity") {
      const { objects, problems } = await this.repo.verifyClosure(job.commit);
      return problems.length ? finish(false, problems.slice(0, 5).join("; ")) : finish(true, `${objects} objects verified`);
    }
    if (gate.builtin === "security-scan") {
      // The commit's own config says what is encrypted and what a person accepted; without a valid one the gate fails closed.
      const text = await this.repo.fileAt(job.commit, CONFIG_FILE);
      const loaded = text ? await parseCommitConfig(text.toString("utf8"), this.repo.dir, this.source) : undefined;
      if (!loaded?.ok) return finish(false, `the commit has no valid ${CONFIG_FILE} to read security settings from; the scan cannot run`);
      const findings = await scanCommit(this.repo, job.commit, loaded.config.security);
      if (!findings.length) return finish(true, "no secrets or oversized files found");
      const shown = findings.slice(0, 5).map(describeFinding).join("; ");
      return finish(false, `${findings.length} finding(s): ${shown}${findings.length > 5 ? "; ..." : ""} (remove them, or add the fingerprint to security.allow)`);
    }
    const { env, secrets } = commandEnv({ controller: this.source.env, ...(gate.env ? { entries: gate.env } : {}), cascade: { CASCADE_ENVIRONMENT: environment, CASCADE_COMMIT: job.commit } });
    const result = await runCheck(gate, { cwd: tree, env, secrets, commit: job.commit, signal: job.abort.signal });
    if (result.output) this.log.info(`gate ${gate.name} output:\n${result.output}`, { environment, commit: job.commit, gate: gate.name });
    return { name: gate.name, ok: result.ok, message: result.message, at: new Date().toISOString(), durationMs: result.durationMs };
  }


  private async persist(): Promise<void> {
    const entries = [...this.cache.entries()].slice(-MAX_CACHED);
    this.cache = new Map(entries);
    await writeRuntimeFile(this.repo.gitdir, CACHE_FILE, JSON.stringify(entries));
  }
}

/**
 * A gate result is valid for one commit and one exact gate definition: editing the gate re-runs it.
 * Of `env` and of http headers only the names count: a value may be a secret, and this key is
 * stored on disk. An empty `env` is left out, so results remembered before env existed stay valid.
 */
function key(commit: string, gate: GateSpec): string {
  const { env, ...rest } = gate;
  // Header values may be tokens too: only their names count.
  const http = rest.http?.headers ? { ...rest.http, headers: rest.http.headers.map((h) => h.name) } : rest.http;
  const definition = { ...rest, ...(http ? { http } : {}), ...(env?.length ? { env: env.map((e) => (e.value === undefined ? e.name : `${e.name}=`)) } : {}) };
  return `${commit}:${createHash("sha256").update(JSON.stringify(definition)).digest("hex").slice(0, 16)}`;
}

/** Why an export failed, in one line (a hash mismatch reported as `SHA check failed! Expected X, computed Y` becomes one clear sentence). */
function exportFailure(err: unknown): string {
  const message = (err as Error)?.message ?? String(err);
  const sha = /SHA check failed! Expected (\w+), computed (\w+)/.exec(message);
  return sha ? `object ${sha[1]} is corrupt (its content hashes to ${sha[2]})` : message;
}
