import { readFile, writeFile } from "node:fs/promises";
import { join, relative, isAbsolute } from "node:path";
import type { StatusSnapshot } from "../controller.js";
import type { Repo } from "../git/repo.js";
import type { GateOutcome } from "../pipeline/gates.js";
import { readHistory, type HistoryEntry } from "../pipeline/history.js";
import { STATE_FILE } from "../approvals/state.js";
import { readRuntimeJson } from "../runtime.js";
import { breakSiteConf, page, type DemoLayout } from "./demo-sandbox.js";

/** What the narrator sees of the running controller: its status, its history and its gate results. */
export interface Observation {
  status: StatusSnapshot | undefined;
  history: HistoryEntry[];
  /** Finished gate results by commit. */
  gates: Map<string, GateOutcome[]>;
}

type EnvStatus = StatusSnapshot["environments"][number];

/** What the tour needs from the demo around it. */
export interface TourContext {
  layout: DemoLayout;
  /** The sandbox repository (read-only use: ancestry of commits). */
  repo: Repo;
  /** Prints one narration line. */
  say: (line: string) => void;
  /** A path as a person in the demo's working folder would type it. */
  shown: (path: string) => string;
  /** Runs `cascade-sync approve ENV COMMIT --key KEY` (the real command, in-process); returns the command line run. */
  approve: (environment: string, commit: string) => Promise<string>;
  signal: AbortSignal;
  now: () => number;
  /** How long the demo waits before each of its own actions, so that a person can follow along. */
  pauseMs: number;
  /** What the demo set up, said right after the status page's address. */
  intro: string;
  /** How a person runs cascade-sync from the demo's working folder (`node bin/cascade-sync.js`). */
  bin: string;
}

/** How long one step may take before the tour gives up on it (the controller keeps running). */
const STEP_TIMEOUT_MS = 90_000;
const POLL_MS = 200;

class TourAborted extends Error {}

/** Reads the controller's runtime files: status.json, history.jsonl and gates.json. */
export async function observe(gitdir: string): Promise<Observation> {
  const status = await readRuntimeJson<StatusSnapshot>(gitdir, "status.json");
  const history = await readHistory(gitdir, 500);
  const saved = await readRuntimeJson<[string, GateOutcome][]>(gitdir, "gates.json");
  const gates = new Map<string, GateOutcome[]>();
  for (const [key, outcome] of Array.isArray(saved) ? saved : []) {
    const commit = key.split(":")[0]!;
    gates.set(commit, [...(gates.get(commit) ?? []), outcome]);
  }
  return { status, history, gates };
}

/**
 * The narrated tour: the demo acts like a person would (an edit, an approval, a broken edit) and
 * every line it prints says what it saw the controller do, read from the controller's status,
 * history and gate results. Resolves when the tour is over, also when a step did not happen in
 * time (said in one line) or the signal aborted.
 */
export async function runTour(t: TourContext): Promise<void> {
  const started = t.now();
  try {
    await tour(t);
    t.say(`the tour took ${Math.round((t.now() - started) / 1000)}s. The controller keeps running: edit files in ${t.shown(t.layout.sandbox)} and watch them cascade here and on the status page; Ctrl-C stops`);
    t.say(`try it: fix production.ulr back to production.url in ${t.shown(join(t.layout.sandbox, "site.conf"))}, then approve the new commit with: ${approveLine(t, "production", "<commit>", t.bin)}`);
  } catch (err) {
    if (err instanceof TourAborted) return;
    t.say(`the tour stopped: ${(err as Error).message}. The controller keeps running; see the status page or \`cascade-sync status\` in ${t.shown(t.layout.sandbox)}`);
  }
}

async function tour(t: TourContext): Promise<void> {
  const gitdir = t.repo.gitdir;
  const url = await until(t, "the status page", (o) => o.status?.server?.url);
  t.say(`status page: ${url} (open it to watch the pipeline live)`);
  t.say(t.intro);

  const first = await until(t, "the first deploys of staging and production", (o) => {
    const head = o.status?.sandbox.head;
    const s = env(o, "staging");
    const p = env(o, "production");
    return head && runsHealthy(s, head) && runsHealthy(p, head) ? head : undefined;
  });
  t.say(`start: develop, staging and production hold ${short(first)} (the site and its pipeline config, committed by init); both environments deployed it and are healthy`);

  // 1. A good change, all the way to production.
  await pause(t);
  const index = join(t.layout.sandbox, "index.html");
  await writeFile(index, page("Hello from the cascade-sync demo", `edited by the demo at ${new Date(t.now()).toLocaleTimeString()}`));
  t.say(`edit: the demo changed ${t.shown(index)}`);
  const good = await commitAfter(t, first);
  await promote(t, good);
  await approveAndDeploy(t, good);

  // 2. A broken change: the tests pass, staging is fine, production's health check is not.
  await pause(t);
  const conf = join(t.layout.sandbox, "site.conf");
  await writeFile(conf, breakSiteConf(await readFile(conf, "utf8")));
  t.say(`edit: the demo misspells production.url as production.ulr in ${t.shown(conf)} (a mistake only production's health check notices)`);
  const last = (await observe(gitdir)).status?.sandbox.head ?? good;
  const broken = await commitAfter(t, last);
  await promote(t, broken);
  await approveAndDeploy(t, broken, false);

  const rollback = await until(t, `production's rollback of ${short(broken)}`, (o) =>
    o.history.find((h) => h.environment === "production" && h.event === "rolled-back" && h.from === broken));
  t.say(`rollback: production's health check failed (${rollback.result}); the controller switched production back to ${short(rollback.commit)} automatically`);
  const kept = await until(t, `production back on ${short(rollback.commit)} with ${short(broken)} kept out`, (o) => {
    const p = env(o, "production");
    return p && p.head === rollback.commit && p.deployed === rollback.commit && p.failed.includes(broken) ? p : undefined;
  });
  t.say(`kept out: ${short(broken)} is recorded as failed (refs/cascade-sync/failed/production/${short(broken)}) and is never promoted again; production ${kept.blocked ? `now ${kept.next}` : "is back on the last healthy release"}`);
}

/** Waits for the sandbox commit after `base`, then for it in the remote; says both. */
async function commitAfter(t: TourContext, base: string): Promise<string> {
  const commit = await until(t, "the sandbox commit", (o) => {
    const c = o.status?.sandbox.lastCommit;
    return c && c.commit !== base && o.status?.sandbox.head === c.commit ? c : undefined;
  });
  t.say(`commit: the controller committed it to develop as ${short(commit.commit)} "${commit.message.split("\n")[0]}"`);
  const remote = await until(t, `${short(commit.commit)} in the demo remote`, async (o) => {
    const r = o.status?.remotes.find((x) => x.lastPush);
    const pushed = r?.lastPush?.commit;
    return pushed && (pushed === commit.commit || (await t.repo.isAncestor(commit.commit, pushed))) ? r : undefined;
  });
  t.say(`push: ${short(commit.commit)} pushed to ${remote.name} (${t.shown(t.layout.remote)}), develop is ${short(remote.lastPush!.commit)} there`);
  return commit.commit;
}

/** Waits for staging's gate on `commit`, then for staging to deploy it and call it healthy; says both. */
async function promote(t: TourContext, commit: string): Promise<void> {
  const gates = await until(t, `staging's gates on ${short(commit)}`, (o) => o.gates.get(commit));
  const failed = gates.filter((g) => !g.ok);
  t.say(`gate: staging ran ${gates.map((g) => `${g.name} (${g.ok ? "passed" : "FAILED"}: ${g.message})`).join(", ")} on ${short(commit)} in a clean export`);
  if (failed.length) throw new Error(`staging's gate failed on ${short(commit)}`);
  const staging = await until(t, `staging deploying ${short(commit)} and finding it healthy`, (o) => {
    const s = env(o, "staging");
    const deployed = o.history.some((h) => h.environment === "staging" && h.event === "deployed" && h.commit === commit);
    return deployed && s && runsHealthy(s, commit) ? s : undefined;
  });
  t.say(`staging: promoted ${short(commit)}, deployed to ${t.shown(join(t.layout.deploy.staging, "releases", commit))} and healthy (${checks(staging)})`);
}

/**
 * Waits for production to ask for an approval of `commit` (saying the command it shows), signs it
 * with the demo key, waits for the approval to be committed and for production to deploy `commit`;
 * with `healthy`, also for production to find it healthy.
 */
async function approveAndDeploy(t: TourContext, commit: string, healthy = true): Promise<void> {
  const waiting = await until(t, `production asking for an approval of ${short(commit)}`, (o) => {
    const p = env(o, "production");
    return p && p.candidate === commit && p.blocked && p.hint?.includes(`approve production ${commit}`) ? p : undefined;
  });
  t.say(`production waits for approval: ${waiting.next}; it says to run: ${waiting.hint}`);
  await pause(t);
  const ran = await t.approve("production", commit);
  t.say(`approve: the demo signs it with the key it made, as that command says: ${ran}`);
  // Read from develop itself: the approval counts, and is used, as soon as it is committed.
  const approvedIn = await until(t, `the approval of ${short(commit)} to be committed`, async (o) => {
    const head = o.status?.sandbox.head;
    const state = head ? await t.repo.fileAt(head, STATE_FILE) : null;
    return state?.toString("utf8").includes(commit) ? head : undefined;
  });
  t.say(`approval committed: the controller committed ${STATE_FILE} with the signed entry to develop as ${short(approvedIn!)}`);
  const promoted = await until(t, `production promoting ${short(commit)}`, (o) =>
    o.history.find((h) => h.environment === "production" && h.event === "promoted" && h.commit === commit));
  const where = t.shown(join(t.layout.deploy.production, "releases", commit));
  if (!healthy) {
    await until(t, `production deploying ${short(commit)}`, (o) => o.history.some((h) => h.environment === "production" && h.event === "deployed" && h.commit === commit) || undefined);
    t.say(`production: promoted ${short(commit)} (approved by ${promoted.signers?.join(", ") ?? "?"}) and deployed it to ${where}; its health checks run every second`);
    return;
  }
  const production = await until(t, `production deploying ${short(commit)} and finding it healthy`, (o) => {
    const p = env(o, "production");
    return p && runsHealthy(p, commit) ? p : undefined;
  });
  t.say(`production: promoted ${short(commit)} (approved by ${promoted.signers?.join(", ") ?? "?"}), deployed to ${where} and healthy (${checks(production)})`);
}

/** The command line that approves `commit` for `environment` with the demo key; `bin` is how cascade-sync is run. */
export function approveLine(t: Pick<TourContext, "shown" | "layout">, environment: string, commit: string, bin = "cascade-sync"): string {
  return `${bin} approve ${environment} ${commit} --key ${t.shown(t.layout.approverKey)} --config ${t.shown(join(t.layout.sandbox, "cascade-sync-config.yaml"))}`;
}

/**
 * Polls the controller's runtime files until `check` returns a value; throws when `what` has not
 * happened within STEP_TIMEOUT_MS, or TourAborted when the demo is stopped.
 */
async function until<T>(t: TourContext, what: string, check: (o: Observation) => T | undefined | false | Promise<T | undefined | false>): Promise<T> {
  const deadline = t.now() + STEP_TIMEOUT_MS;
  for (;;) {
    if (t.signal.aborted) throw new TourAborted();
    const found = await check(await observe(t.repo.gitdir));
    if (found) return found;
    if (t.now() > deadline) throw new Error(`${what} did not happen within ${STEP_TIMEOUT_MS / 1000}s`);
    await sleep(POLL_MS, t.signal);
  }
}

async function pause(t: TourContext): Promise<void> {
  await sleep(t.pauseMs, t.signal);
  if (t.signal.aborted) throw new TourAborted();
}

/** Resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

function env(o: Observation, name: string): EnvStatus | undefined {
  return o.status?.environments.find((e) => e.name === name);
}

function runsHealthy(e: EnvStatus | undefined, commit: string): boolean {
  return !!e && e.head === commit && e.deployed === commit && e.health?.phase === "healthy";
}

function checks(e: EnvStatus): string {
  return e.health?.checks.map((c) => `${c.name}: ${c.message}`).join(", ") || "no checks";
}

function short(commit: string): string {
  return commit.slice(0, 7);
}

/** `path` relative to `cwd` when it lies inside it, else absolute. */
export function shownPath(cwd: string, path: string): string {
  const rel = relative(cwd, path);
  return rel && !rel.startsWith("..") && !isAbsolute(rel) ? rel : path;
}
