import { randomBytes } from "node:crypto";
import { hostname, userInfo } from "node:os";
import type { Config, RemoteSpec } from "../config/types.js";
import { CascadeError, transient } from "../errors.js";
import { compareAndSwapRefs, fetchRef, remoteRefs } from "../git/transport.js";
import { branchRef } from "../git/repo.js";
import type { Plan, ReconcileContext, Reconciler, Result } from "../reconcile.js";

/**
 * One promoter per environment (issue 15). In a team whose controllers share one config and one
 * remote, only the controller holding an environment's lease acts on it (gates, promotion, deploy,
 * health, rollback); the others follow its branch. The lease is a ref on the first remote,
 * `refs/cascade-sync/lease/<environment>`, pointing at a tiny parentless commit whose `lease.json`
 * names the holder and how long the lease lasts. It is only ever moved by compare-and-swap (`git push
 * --force-with-lease=REF:EXPECTED`), so of two controllers racing for it exactly one wins.
 *
 * Expiry is judged on each controller's own clock, never by comparing clocks (machines' clocks
 * differ): another controller takes over once it has seen the same lease commit unchanged for the
 * lease's own `ttlMs`. The holder renews every third of it and acts only within two thirds of it
 * after the start of its last successful renewal, so it has stopped acting before anyone can take
 * over, even if its pushes stop getting through.
 */

/** Where an environment's lease lives on the first remote. */
export function leaseRef(environment: string): string {
  return `refs/cascade-sync/lease/${environment}`;
}

/** Where a lease commit fetched from the remote is kept here (so its object is not garbage-collected while read). */
function trackingRef(environment: string): string {
  return `refs/cascade-sync/leases/${environment}`;
}

/** Who holds (or wants) a lease. */
export interface LeaseHolder {
  /** The sandbox's own id (git config `cascade-sync.id` in its .git/config): one controller per sandbox. */
  id: string;
  /** The machine's name: its hostname, or CASCADE_SYNC_HOSTNAME. What `runsOn` lists. */
  host: string;
  user: string;
  pid: number;
}

/** What the lease commit's `lease.json` holds. */
export interface LeaseRecord {
  version: 1;
  environment: string;
  holder: LeaseHolder;
  /** When the holder first took the lease, and last renewed it (the holder's clock; shown, never compared). */
  acquiredAt: string;
  renewedAt: string;
  /** renewedAt + ttlMs on the holder's clock: what status shows as "until". */
  expiresAt: string;
  /** How long the lease lasts without renewal; every controller judges expiry by this value, not its own setting. */
  ttlMs: number;
  /** Set when the holder let it go (a graceful stop): anyone may take it at once. */
  released?: boolean;
  /** The environment as the holder last saw it, shown by the controllers that follow. */
  state?: LeaseState;
}

/** The holder's view of its environment, carried in the lease for the others to show. */
export interface LeaseState {
  head: string | null;
  deployed: string | null;
  health?: string;
  next?: string;
  /**
   * The holder's newest healthy commits and the commits it rolled back: a controller that takes the
   * lease over (or holds the next environment) knows what was proven and never promotes a rolled-back
   * commit again. At most 10 each.
   */
  healthy?: string[];
  failed?: string[];
}

/** What this controller knows of one environment's lease between passes. */
export interface LeaseEntry {
  /** The lease commit last seen on the remote (null: no lease ref). */
  oid: string | null;
  record: LeaseRecord | null;
  /** This controller's clock when it first saw `oid` (expiry is measured from here). */
  seenAt: number;
  /** Set while this controller holds the lease: when its last successful renewal started. */
  renewedAt?: number;
  /** When this controller took it (kept across renewals). */
  acquiredAt?: string;
  /** Why the lease could not be read or written, when it could not. */
  problem?: string;
}

/**
 * What the controllers of one sandbox share about leases: who this controller is, and what it saw
 * of each environment's lease. Lives as long as the controller (leases are remote facts, read again
 * on every pass).
 */
export class LeaseBook {
  readonly entries = new Map<string, LeaseEntry>();
  /** The remote the leases live on (the first one), while there is one. */
  remote: string | undefined;
  ttlMs = 60_000;
  /** The lease pushes under way, one after the other (see {@link LeaseBook.serialize}). */
  private pushes: Promise<unknown> = Promise.resolve();

  constructor(
    /** This machine and user, as runsOn and status name them; `id` is filled from the sandbox's git config. */
    readonly me: Omit<LeaseHolder, "id"> & { id?: string },
  ) {}

  /**
   * Runs `fn` while no other lease push of this controller runs: the lease reconciler's renewals and
   * an environment branch's fenced push (which renews the lease too) each expect the lease commit the
   * other may just have replaced; one after the other, each expects the one the book holds.
   */
  serialize<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.pushes.then(fn, fn);
    this.pushes = run.catch(() => undefined);
    return run;
  }
}

/** This machine and user: the host is CASCADE_SYNC_HOSTNAME when set (containers often get random hostnames). */
export function localHolder(env: NodeJS.ProcessEnv): Omit<LeaseHolder, "id"> {
  let user = env.USER ?? env.USERNAME ?? "unknown";
  try {
    user = userInfo().username;
  } catch {
    // No passwd entry (some containers): the environment's USER.
  }
  return { host: env.CASCADE_SYNC_HOSTNAME?.trim() || hostname(), user, pid: process.pid };
}

/** How an environment's lease stands for this controller, as the environment reconciler and status see it. */
export interface LeaseView {
  /**
   * `held`: this controller holds it and may act; `other`: another controller holds it (follow);
   * `free`: nobody holds it (or it expired), this controller takes it on its next lease pass;
   * `excluded`: this machine is not in the environment's runsOn; `unknown`: not read yet, or unreadable.
   */
  state: "held" | "other" | "free" | "excluded" | "unknown";
  /** This controller's machine name. */
  me: string;
  holder?: LeaseHolder;
  /** When the lease runs out (the holder's clock, from lease.json). */
  until?: string;
  /** The holder's last word on the environment (others only). */
  holderState?: LeaseState;
  runsOn?: string[];
  problem?: string;
}

/** The part of the lease term within which the holder acts (the rest is its safety margin). */
const ACT_FRACTION = 2 / 3;
/** The part of the lease term after which the holder renews. */
const RENEW_FRACTION = 1 / 3;

/**
 * Pure. The view of environment `name`'s lease at `now` for this controller: undefined when no lease is
 * needed (no remote: a single controller).
 */
export function leaseView(book: LeaseBook | undefined, name: string, now: number, runsOn?: string[]): LeaseView | undefined {
  if (!book?.remote) return undefined;
  const me = book.me.host;
  const e = book.entries.get(name);
  const base = { me, ...(runsOn ? { runsOn } : {}) };
  if (holds(e, now)) return { ...base, state: "held", holder: e!.record!.holder, until: e!.record!.expiresAt };
  if (runsOn && !runsOn.includes(me)) {
    const live = e?.record && !e.record.released && !expired(e, now) ? e.record : undefined;
    return { ...base, state: "excluded", ...(live ? { holder: live.holder, until: live.expiresAt, ...(live.state ? { holderState: live.state } : {}) } : {}) };
  }
  if (!e) return { ...base, state: "unknown" };
  if (e.problem && !e.record) return { ...base, state: "unknown", problem: e.problem };
  const r = e.record;
  if (!r || r.released || expired(e, now) || isMe(book, r.holder)) return { ...base, state: "free", ...(e.problem ? { problem: e.problem } : {}) };
  return { ...base, state: "other", holder: r.holder, until: r.expiresAt, ...(r.state ? { holderState: r.state } : {}), ...(e.problem ? { problem: e.problem } : {}) };
}

/** True when this controller may act on `name` now: no lease needed, or it holds the lease. */
export function mayAct(book: LeaseBook | undefined, name: string, now: number): boolean {
  const v = leaseView(book, name, now);
  return !v || v.state === "held";
}

/**
 * What this controller does with environment `name`'s branches on the remotes: `act` (no lease needed,
 * or held here: push its promotions), `follow` (another controller holds it, or this machine may not:
 * the local branch follows the remote's), `wait` (not read yet, or free and about to be taken here:
 * neither push nor follow, so a restart never moves back a branch it promoted before stopping).
 */
export function leaseRole(book: LeaseBook | undefined, name: string, now: number): "act" | "follow" | "wait" {
  const v = leaseView(book, name, now);
  if (!v || v.state === "held") return "act";
  if (v.state === "other") return "follow";
  if (v.state === "excluded") return "follow";
  return "wait";
}

/** True when the lease has been seen unchanged for its whole term (on this controller's clock). */
function expired(e: LeaseEntry, now: number): boolean {
  return !!e.record && now >= e.seenAt + e.record.ttlMs;
}

function isMe(book: LeaseBook, h: LeaseHolder): boolean {
  return !!book.me.id && h.id === book.me.id && h.host === book.me.host;
}

/** One line naming a holder, for status and logs. */
export function describeHolder(h: LeaseHolder): string {
  return `${h.user}@${h.host} (pid ${h.pid}, sandbox ${h.id.slice(0, 8)})`;
}

/** What the lease reconciler saw of one environment's lease. */
export interface LeaseObservation {
  name: string;
  oid: string | null;
  record: LeaseRecord | null;
  /** The lease commit could not be read or is not a lease (a hostile or broken ref): treated as held until it expires. */
  problem?: string;
  /** runsOn of the policy in force (the config committed on the environment's branch); undefined: any machine. */
  runsOn?: string[];
  /** False when the environment has no policy in force: nothing to act on, so the lease is not taken. */
  hasPolicy: boolean;
  /**
   * Held here, and the commits this controller proved healthy or rolled back differ from what the lease
   * tells the others: renewed at once, so the next environment's holder (which promotes only what
   * is proven here, and an approval only of such a commit) learns it within a fetch interval.
   */
  proofChanged?: boolean;
}

export interface LeasesObserved {
  remote: RemoteSpec | null;
  now: number;
  me: LeaseHolder;
  ttlMs: number;
  envs: LeaseObservation[];
  /** What this controller knew before this pass (copied: plan is pure). */
  known: Record<string, LeaseEntry>;
  /** Set while stopping (or after a one-shot pass): every held lease is released, none taken. */
  releasing: boolean;
  /** Why the remote's leases could not be read (the remote did not answer): nothing is taken or renewed. */
  unreachable?: { reason: string; message: string };
}

export type LeaseAction =
  | { type: "take" | "renew"; environment: string; expected: string | null; acquiredAt?: string }
  | { type: "release"; environment: string; expected: string }
  | { type: "note"; environment: string; entry: LeaseEntry };

/** Reads the runsOn and whether there is a policy in force, for one environment (supplied by the environment reconciler's module). */
export type PolicyReader = (ctx: ReconcileContext, desired: Config, environment: string) => Promise<{ ok: boolean; runsOn?: string[] }>;

/**
 * The lease reconciler: reads every environment's lease on the first remote, takes the free ones
 * this machine may hold (runsOn), renews its own every third of the term, lets go of those it may
 * no longer hold, and remembers when it first saw each lease (for expiry). Apply wakes the
 * environments when what this controller holds changes.
 */
export function leaseReconciler(readPolicy: PolicyReader): Reconciler<LeasesObserved, LeaseAction> & { release(ctx: ReconcileContext, desired: Config): Promise<void> } {
  const r: Reconciler<LeasesObserved, LeaseAction> & { release(ctx: ReconcileContext, desired: Config): Promise<void> } = {
    name: "leases",

    async observe(ctx, desired) {
      return observeLeases(ctx, desired, readPolicy, false);
    },

    plan(_desired, o) {
      return planLeases(o);
    },

    async apply(ctx, desired, plan, o): Promise<Result> {
      const book = ctx.pipeline!.leases!;
      const done: string[] = [];
      let failed: unknown;
      let wake = false;
      await book.serialize(async () => {
        const actions = unchangedSince(book, o, plan.actions);
        const old = new Map(book.entries);
        noteLeases(book, actions);
        // Every lease move of the pass in one push: one slow connection never makes another renewal late.
        await applyLeaseMoves(ctx, o, movesOf(actions)).then((d) => done.push(...d), (err: unknown) => void (failed = err ?? new Error("lease push failed")));
        wake = environmentsToWake(old, book.entries, o.now, ctx.clock.now());
      });
      const now = ctx.clock.now();
      // Gaining or losing a lease (also one that lapsed here while its renewal was on its way, when an
      // environment's pass may have seen it not held and gone to sleep), or news of what another holder
      // proved, changes what the environments may do: they look again now, not at their next timer.
      if (wake) ctx.branchMoved();
      if (failed !== undefined) throw failed;
      if (plan.blocked) throw new CascadeError("Waiting", plan.blocked.reason, plan.blocked.message, { retryAfterMs: plan.requeueAfterMs ?? o.ttlMs * RENEW_FRACTION, ...(plan.blocked.hint ? { hint: plan.blocked.hint } : {}) });
      // A renewal is due a third of the term after the previous one *began*, however long this pass took.
      let requeue = Math.min(plan.requeueAfterMs ?? Infinity, desired.intervals.fetchMs, o.ttlMs * RENEW_FRACTION);
      for (const e of book.entries.values()) if (e.renewedAt !== undefined && e.record) requeue = Math.min(requeue, Math.max(0, e.renewedAt + e.record.ttlMs * RENEW_FRACTION - now));
      return { requeueAfterMs: requeue, summary: done.join(", ") || describeLeases(book, now) };
    },

    describe(a) {
      switch (a.type) {
        case "take": return `take the lease of ${a.environment} (${leaseRef(a.environment)})`;
        case "renew": return `renew the lease of ${a.environment}`;
        case "release": return `release the lease of ${a.environment}`;
        case "note": return `note the lease of ${a.environment}`;
      }
    },

    /** Releases every lease this controller holds (a graceful stop, or the end of a one-shot pass); errors are logged, never thrown. */
    async release(ctx, desired) {
      const book = ctx.pipeline?.leases;
      if (!book?.remote || !heldNames(book, ctx.clock.now()).length) return;
      try {
        const o = await observeLeases(ctx, desired, readPolicy, true);
        const plan = planLeases(o);
        await book.serialize(async () => {
          const actions = unchangedSince(book, o, plan.actions);
          noteLeases(book, actions);
          await applyLeaseMoves(ctx, o, movesOf(actions));
        });
      } catch (err) {
        ctx.log.warn(`could not release the leases (they expire on their own): ${err instanceof Error ? err.message : String(err)}`);
      }
    },
  };
  return r;
}

/**
 * For `plan` only (a controller that never applies): records in `book` what applying the lease plan
 * would lead to, so that the environments' plans show what this controller would do once it holds
 * (or renews) a lease, and whom it would follow otherwise. Nothing is written anywhere else.
 */
export function assumeLeasePlan(book: LeaseBook, o: LeasesObserved, plan: Plan<LeaseAction>): void {
  for (const a of plan.actions) {
    if (a.type === "note") book.entries.set(a.environment, a.entry);
    else if (a.type === "take" || a.type === "renew") {
      const at = new Date(o.now).toISOString();
      const record: LeaseRecord = { version: 1, environment: a.environment, holder: o.me, acquiredAt: at, renewedAt: at, expiresAt: new Date(o.now + o.ttlMs).toISOString(), ttlMs: o.ttlMs };
      book.entries.set(a.environment, { oid: null, record, seenAt: o.now, renewedAt: o.now });
    }
  }
}

/**
 * The lease actions of a pass for the environments whose entry in `book` is still what the pass
 * observed: a fenced push of an environment branch (pushUnderLease) may have renewed a lease
 * meanwhile, and noting the older lease commit, or renewing it, would take that renewal for a loss.
 * The next pass reads those leases again.
 */
function unchangedSince(book: LeaseBook, o: LeasesObserved, actions: LeaseAction[]): LeaseAction[] {
  const changed = (env: string) => {
    const now = book.entries.get(env);
    const then = o.known[env];
    return (now?.oid ?? null) !== (then?.oid ?? null) || now?.renewedAt !== then?.renewedAt;
  };
  return actions.filter((a) => !changed(a.environment));
}

/**
 * True when the environments should look again after a lease pass that turned `before` into `after`
 * between `from` (when the pass observed) and `to` (now): a lease held here now that was not held at
 * some moment of the pass (taken, or lapsed while its renewal was pushed), one held before and not
 * now, or another holder's lease whose record of healthy or rolled-back commits changed (a follower
 * adopts it; the next environment's candidates depend on it).
 */
export function environmentsToWake(before: ReadonlyMap<string, LeaseEntry>, after: ReadonlyMap<string, LeaseEntry>, from: number, to: number): boolean {
  for (const [name, e] of after) {
    const b = before.get(name);
    const held = holds(e, to);
    if (held !== holds(b, from) || (held && !holds(b, to))) return true;
    if (e.renewedAt === undefined && proofOf(b?.record?.state) !== proofOf(e.record?.state)) return true;
  }
  for (const [name, b] of before) if (!after.has(name) && holds(b, from)) return true;
  return false;
}

/** True when `e` is a lease this controller holds and may act on at `now` (within two thirds of the term after its last renewal began). */
function holds(e: LeaseEntry | undefined, now: number): boolean {
  return e?.renewedAt !== undefined && !!e.record && now < e.renewedAt + e.record.ttlMs * ACT_FRACTION;
}

/** Records what the pass saw of each lease (the plan's `note` actions). */
function noteLeases(book: LeaseBook, actions: LeaseAction[]): void {
  for (const a of actions) if (a.type === "note") book.entries.set(a.environment, a.entry);
}

function movesOf(actions: LeaseAction[]): Exclude<LeaseAction, { type: "note" }>[] {
  return actions.filter((a): a is Exclude<LeaseAction, { type: "note" }> => a.type !== "note");
}

function heldNames(book: LeaseBook, now: number): string[] {
  return [...book.entries.keys()].filter((n) => leaseView(book, n, now)?.state === "held");
}

/** Every environment's lease as one line (the reconciler's summary). */
function describeLeases(book: LeaseBook, now: number): string {
  return [...book.entries.keys()].map((n) => {
    const v = leaseView(book, n, now)!;
    return v.state === "held" ? `${n}: held here` : v.state === "other" ? `${n}: held by ${describeHolder(v.holder!)}` : `${n}: ${v.state}`;
  }).join(", ");
}

/**
 * The sandbox's id, kept in its .git/config (a clone gets its own). Read-only: a new one is made in
 * memory and written only when a lease is first taken (`plan` changes nothing).
 */
async function sandboxId(ctx: ReconcileContext): Promise<string> {
  const book = ctx.pipeline!.leases!;
  if (book.me.id) return book.me.id;
  const id = (await ctx.repo.getConfig(ID_KEY)) ?? randomBytes(8).toString("hex");
  book.me.id = id;
  return id;
}

/** Where the sandbox's id is kept: its restarted controller resumes its own leases at once. */
const ID_KEY = "cascade-sync.id";

/** Reads every environment's lease from the first remote (ls-remote, and a fetch of a lease commit not here yet). */
async function observeLeases(ctx: ReconcileContext, desired: Config, readPolicy: PolicyReader, releasing: boolean): Promise<LeasesObserved> {
  const book = ctx.pipeline!.leases!;
  const remote = desired.remotes[0] ?? null;
  book.remote = remote?.name;
  book.ttlMs = desired.intervals.leaseMs;
  const me: LeaseHolder = { ...book.me, id: await sandboxId(ctx) };
  const known = Object.fromEntries([...book.entries].map(([k, v]) => [k, { ...v }]));
  const base = { remote, now: ctx.clock.now(), me, ttlMs: desired.intervals.leaseMs, known, releasing };
  if (!remote) return { ...base, envs: [] };
  const who = await ctx.who();
  const cap = ctx.timeoutCapMs !== undefined ? { timeoutMs: ctx.timeoutCapMs } : {};
  let refs: Record<string, string>;
  try {
    refs = await remoteRefs(ctx.repo, remote, "refs/cascade-sync/lease/*", { ...cap, who });
  } catch (err) {
    // A value, not a failure to back off from: the leases are read again within a third of the term once it answers.
    const e = err instanceof CascadeError ? err : undefined;
    return { ...base, envs: [], unreachable: { reason: e?.reason ?? "RemoteUnavailable", message: err instanceof Error ? err.message : String(err) } };
  }
  const envs: LeaseObservation[] = [];
  for (const name of Object.keys(desired.environments)) {
    const policy = await readPolicy(ctx, desired, name);
    let oid = refs[leaseRef(name)] ?? null;
    let record: LeaseRecord | null = null;
    let problem: string | undefined;
    if (oid && known[name]?.oid === oid && known[name]!.record) record = known[name]!.record;
    else if (oid) {
      try {
        if (!(await ctx.repo.hasObject(oid))) {
          await fetchRef(ctx.repo, remote, leaseRef(name), trackingRef(name), { ...cap, who });
          // Renewed between ls-remote and the fetch: what was fetched is the newer lease, and what a compare-and-swap must expect.
          oid = (await ctx.repo.ref(trackingRef(name))) ?? oid;
        }
        record = parseLeaseRecord(await ctx.repo.fileAt(oid, "lease.json"), name);
        if (!record) problem = `${leaseRef(name)} on ${remote.name} (${oid.slice(0, 7)}) is not a cascade-sync lease`;
      } catch (err) {
        problem = `cannot read ${leaseRef(name)} on ${remote.name}: ${err instanceof Error ? err.message : String(err)}`;
      }
    }
    const proofChanged = !!record && record.holder.id === me.id && record.holder.host === me.host && proofOf(record.state) !== proofOf(holderState(ctx, name));
    envs.push({ name, oid, record, ...(problem ? { problem } : {}), ...(policy.runsOn ? { runsOn: policy.runsOn } : {}), hasPolicy: policy.ok, ...(proofChanged ? { proofChanged } : {}) });
  }
  // The clock is read after the transfers: an observation is as old as its end.
  return { ...base, now: ctx.clock.now(), envs };
}

/** The healthy and rolled-back commits a lease state carries, comparable as one string. */
function proofOf(state: LeaseState | undefined): string {
  return JSON.stringify([state?.healthy ?? [], state?.failed ?? []]);
}

/**
 * Parses a lease commit's lease.json; null when it is not a lease of `environment` (the ref is
 * hostile input: anyone who can push may write it).
 */
export function parseLeaseRecord(text: Buffer | null, environment: string): LeaseRecord | null {
  if (!text || text.length > 16_384) return null;
  let v: unknown;
  try {
    v = JSON.parse(text.toString("utf8"));
  } catch {
    return null;
  }
  const r = v as Partial<LeaseRecord> | null;
  const h = r?.holder as Partial<LeaseHolder> | undefined;
  if (!r || r.version !== 1 || r.environment !== environment || !h) return null;
  if (typeof h.id !== "string" || typeof h.host !== "string" || typeof h.user !== "string" || typeof h.pid !== "number") return null;
  if (typeof r.ttlMs !== "number" || !Number.isFinite(r.ttlMs) || r.ttlMs <= 0) return null;
  if (typeof r.expiresAt !== "string" || typeof r.renewedAt !== "string" || typeof r.acquiredAt !== "string") return null;
  // A lease claiming to last for days would lock the team out after its holder died: capped at an hour.
  const ttlMs = Math.min(r.ttlMs, 3_600_000);
  const s = r.state;
  const state = s && typeof s === "object" ? {
    head: typeof s.head === "string" ? s.head : null,
    deployed: typeof s.deployed === "string" ? s.deployed : null,
    ...(typeof s.health === "string" ? { health: s.health.slice(0, 200) } : {}),
    ...(typeof s.next === "string" ? { next: s.next.slice(0, 300) } : {}),
    ...(commitList(s.healthy) ? { healthy: commitList(s.healthy)! } : {}),
    ...(commitList(s.failed) ? { failed: commitList(s.failed)! } : {}),
  } : undefined;
  return {
    version: 1, environment, holder: { id: h.id.slice(0, 64), host: h.host.slice(0, 255), user: h.user.slice(0, 64), pid: h.pid },
    acquiredAt: r.acquiredAt, renewedAt: r.renewedAt, expiresAt: r.expiresAt, ttlMs, ...(r.released === true ? { released: true } : {}), ...(state ? { state } : {}),
  };
}

/** At most 10 full commit ids from a lease's list; undefined when it is not a list. */
function commitList(v: unknown): string[] | undefined {
  if (!Array.isArray(v)) return undefined;
  return v.filter((c): c is string => typeof c === "string" && /^[0-9a-f]{40}([0-9a-f]{24})?$/.test(c)).slice(-10);
}

/**
 * Pure. For each environment: note what was seen (and since when), then take a lease that is free
 * or expired when this machine may hold it and the environment has a policy in force, renew one
 * held here once a third of its term has passed, release one held here that this machine may no
 * longer hold (runsOn) or when releasing. The soonest renewal or expiry sets when to look again.
 */
export function planLeases(o: LeasesObserved): Plan<LeaseAction> & { requeueAfterMs: number } {
  const actions: LeaseAction[] = [];
  let next = Infinity;
  const poll = o.ttlMs * RENEW_FRACTION;
  if (o.unreachable) {
    // What was known stays (a lease held here lapses on its own clock); each entry says why it is not current.
    for (const [environment, entry] of Object.entries(o.known)) actions.push({ type: "note", environment, entry: { ...entry, problem: o.unreachable.message } });
    return {
      actions, requeueAfterMs: poll,
      blocked: { reason: o.unreachable.reason, message: `the leases on the first remote cannot be read: ${o.unreachable.message}`, hint: "no environment is acted on without its lease; looked at again within a third of intervals.lease" },
    };
  }
  const mine = (r: LeaseRecord | null) => !!r && r.holder.id === o.me.id && r.holder.host === o.me.host;
  for (const e of o.envs) {
    const prev = o.known[e.name];
    const entry: LeaseEntry = {
      oid: e.oid, record: e.record,
      seenAt: prev && prev.oid === e.oid ? prev.seenAt : o.now,
      ...(prev?.oid === e.oid && prev.renewedAt !== undefined && mine(e.record) ? { renewedAt: prev.renewedAt, ...(prev.acquiredAt ? { acquiredAt: prev.acquiredAt } : {}) } : {}),
      ...(e.problem ? { problem: e.problem } : {}),
    };
    actions.push({ type: "note", environment: e.name, entry });
    const allowed = !e.runsOn || e.runsOn.includes(o.me.host);
    const live = !!e.record && !e.record.released;
    if (live && mine(e.record)) {
      if (o.releasing || !allowed) {
        actions.push({ type: "release", environment: e.name, expected: e.oid! });
        continue;
      }
      // Held here: renew once a third has passed (at once when this process does not know when it renewed: a restart).
      const due = entry.renewedAt === undefined || e.proofChanged ? o.now : entry.renewedAt + e.record!.ttlMs * RENEW_FRACTION;
      if (o.now >= due) {
        actions.push({ type: "renew", environment: e.name, expected: e.oid, acquiredAt: e.record!.acquiredAt });
        next = Math.min(next, poll);
      } else next = Math.min(next, due - o.now);
      continue;
    }
    if (o.releasing || !allowed || !e.hasPolicy) {
      next = Math.min(next, poll);
      continue;
    }
    // Unreadable, or another's: judged by its own term from when this controller first saw it.
    const term = e.record?.ttlMs ?? o.ttlMs;
    const free = !e.oid || (e.record?.released ?? false) || o.now >= entry.seenAt + term;
    if (free) {
      actions.push({ type: "take", environment: e.name, expected: e.oid });
      next = Math.min(next, poll);
    } else next = Math.min(next, poll, Math.max(0, entry.seenAt + term - o.now));
  }
  return { actions, requeueAfterMs: Number.isFinite(next) ? Math.max(0, Math.round(next)) : poll };
}

/**
 * The lease moves (take, renew, release) of one pass: each lease commit is written here, then all of
 * them are pushed in one `git push` (one connection), each as its own compare-and-swap; what this
 * controller holds is recorded from each result. Returns what was done.
 */
async function applyLeaseMoves(ctx: ReconcileContext, o: LeasesObserved, moves: Exclude<LeaseAction, { type: "note" }>[]): Promise<string[]> {
  if (!moves.length) return [];
  const book = ctx.pipeline!.leases!;
  const remote = o.remote!;
  if ((await ctx.repo.getConfig(ID_KEY)) !== o.me.id) await ctx.repo.setConfig(ID_KEY, o.me.id);
  // Measured before anything is pushed: nobody can have seen these leases earlier than that.
  const now = ctx.clock.now();
  const at = new Date(now).toISOString();
  const prepared: { a: (typeof moves)[number]; record: LeaseRecord; oid: string }[] = [];
  for (const a of moves) {
    const record: LeaseRecord = {
      version: 1, environment: a.environment, holder: o.me,
      acquiredAt: a.type === "renew" && a.acquiredAt ? a.acquiredAt : at, renewedAt: at,
      expiresAt: new Date(a.type === "release" ? now : now + o.ttlMs).toISOString(), ttlMs: o.ttlMs,
      ...(a.type === "release" ? { released: true } : { state: holderState(ctx, a.environment) }),
    };
    prepared.push({ a, record, oid: await writeLeaseCommit(ctx, record) });
  }
  const who = await ctx.who();
  const cap = ctx.timeoutCapMs !== undefined ? { timeoutMs: ctx.timeoutCapMs } : {};
  let won: Record<string, boolean>;
  try {
    won = await compareAndSwapRefs(ctx.repo, remote, prepared.map((p) => ({ ref: leaseRef(p.a.environment), oid: p.oid, expected: p.a.expected })), { ...cap, who });
  } catch (err) {
    for (const { a } of prepared) {
      const prev = book.entries.get(a.environment);
      if (prev) book.entries.set(a.environment, { ...prev, problem: err instanceof Error ? err.message : String(err) });
    }
    throw err;
  }
  const done: string[] = [];
  for (const { a, record, oid } of prepared) {
    const prev = book.entries.get(a.environment);
    if (!won[leaseRef(a.environment)]) {
      // Another controller moved it first: forget our claim; the next pass reads who won.
      if (prev) book.entries.set(a.environment, { oid: prev.oid, record: prev.record, seenAt: prev.seenAt });
      ctx.log.info(`${a.environment}: another controller moved the lease first; following it`, { environment: a.environment });
      done.push(`${a.environment}: lease taken by another controller`);
    } else if (a.type === "release") {
      book.entries.set(a.environment, { oid, record, seenAt: now });
      ctx.log.info(`${a.environment}: lease released`, { environment: a.environment });
      done.push(`${a.environment}: lease released`);
    } else {
      book.entries.set(a.environment, { oid, record, seenAt: now, renewedAt: now, acquiredAt: record.acquiredAt });
      if (a.type === "take") {
        ctx.log.info(`${a.environment}: took the lease (${leaseRef(a.environment)} on ${remote.name}); this controller acts on ${a.environment} now`, { environment: a.environment, holder: record.holder });
        done.push(`${a.environment}: lease taken`);
      }
    }
  }
  return done;
}

/** The environment as this controller last reported it, for the others to show. */
function holderState(ctx: ReconcileContext, environment: string): LeaseState {
  const r = ctx.pipeline!.reports[environment];
  const rec = ctx.pipeline!.store.get(environment);
  return {
    healthy: rec.healthy.slice(-10),
    failed: Object.keys(rec.failed).slice(-10),
    head: r?.head ?? null,
    deployed: r?.deployed ?? null,
    ...(r?.health ? { health: `${r.health.phase}: ${r.health.description}`.slice(0, 200) } : {}),
    // Only the controller's own words: a gate's failure message (command output) stays local.
    ...(r?.next ? { next: (r.next.startsWith("blocked: gate ") ? r.next.replace(/ failed on (\S+):.*$/, " failed on $1") : r.next).slice(0, 300) } : {}),
  };
}

/** Writes the lease commit: one `lease.json`, no parent (a lease has no history worth keeping). */
async function writeLeaseCommit(ctx: ReconcileContext, record: LeaseRecord): Promise<string> {
  const blob = await ctx.repo.writeBlob(Buffer.from(`${JSON.stringify(record, null, 2)}\n`));
  const tree = await ctx.repo.writeTree([{ mode: "100644", path: "lease.json", oid: blob }]);
  const who = await ctx.who();
  const what = record.released ? "released" : `held by ${record.holder.user}@${record.holder.host} until ${record.expiresAt}`;
  return ctx.repo.writeCommit({ tree, parents: [], message: `cascade-sync lease: ${record.environment} ${what}\n`, author: who });
}

/**
 * Fencing (issue 15): pushes environment `environment`'s branch to the lease's remote only while this
 * controller still holds the lease there. One `git push --atomic` moves the branch (expecting the
 * commit observe saw there, null: none) and renews the lease (expecting the lease commit this
 * controller holds): a holder whose lease ran out or was taken over while it promoted or deployed
 * moves nothing, however late its push comes. A success is also a renewal (recorded in the book).
 * Throws Transient `LeaseLost` when the lease is not this controller's any more (it stops acting and
 * follows the holder), Transient `EnvironmentBranchMoved` when only the branch moved meanwhile (a
 * race: looked at again), and the push's own classified errors otherwise (nothing moved then either).
 */
export async function pushUnderLease(ctx: ReconcileContext, remote: RemoteSpec, environment: string, push: { branch: string; commit: string; expected: string | null }): Promise<void> {
  const book = ctx.pipeline!.leases!;
  const lost = (why: string) => transient("LeaseLost", `${push.branch} ${push.commit.slice(0, 7)} was not pushed to ${remote.name}: ${why}; nothing moved there`,
    `nothing to do: this controller follows ${environment}'s lease holder now (what it promoted here stays reachable under refs/cascade-sync/replaced/${environment}/ once its branch follows)`);
  await book.serialize(async () => {
    // Measured before the push: nobody can have seen the renewed lease earlier than that.
    const now = ctx.clock.now();
    const entry = book.entries.get(environment);
    if (leaseView(book, environment, now)?.state !== "held" || !entry?.oid || !entry.record || !book.me.id) throw lost(`this controller no longer holds ${environment}'s lease (${leaseRef(environment)})`);
    const at = new Date(now).toISOString();
    const record: LeaseRecord = {
      version: 1, environment, holder: { ...book.me, id: book.me.id }, acquiredAt: entry.record.acquiredAt, renewedAt: at,
      expiresAt: new Date(now + book.ttlMs).toISOString(), ttlMs: book.ttlMs, state: holderState(ctx, environment),
    };
    const oid = await writeLeaseCommit(ctx, record);
    const who = await ctx.who();
    const cap = ctx.timeoutCapMs !== undefined ? { timeoutMs: ctx.timeoutCapMs } : {};
    const won = await compareAndSwapRefs(ctx.repo, remote, [
      { ref: leaseRef(environment), oid, expected: entry.oid },
      { ref: branchRef(push.branch), oid: push.commit, expected: push.expected },
    ], { ...cap, who, atomic: true });
    if (won[leaseRef(environment)] && won[branchRef(push.branch)]) {
      book.entries.set(environment, { oid, record, seenAt: now, renewedAt: now, acquiredAt: record.acquiredAt });
      return;
    }
    // Refused as a whole: which of the two was stale decides whether this controller still holds the lease.
    const holds = (await remoteRefs(ctx.repo, remote, leaseRef(environment), { ...cap, who }))[leaseRef(environment)] === entry.oid;
    if (holds) throw transient("EnvironmentBranchMoved", `${push.branch} on ${remote.name} moved while it was being judged; looking again`);
    // What was held here is not any more: act no longer, and let the next lease pass read who holds it.
    book.entries.set(environment, { oid: entry.oid, record: entry.record, seenAt: entry.seenAt, problem: `${leaseRef(environment)} on ${remote.name} moved away from the lease commit held here` });
    ctx.log.warn(`${environment}: the lease was lost (${leaseRef(environment)} on ${remote.name} moved); ${push.branch} ${push.commit.slice(0, 7)} was not pushed`, { environment, commit: push.commit });
    ctx.branchMoved();
    throw lost(`${environment}'s lease (${leaseRef(environment)}) moved to another controller (taken over, or it ran out while this one was busy)`);
  });
}
