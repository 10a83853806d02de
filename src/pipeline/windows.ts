import { CronExpressionParser, type CronExpression } from "cron-parser";
import type { WindowSpec } from "../config/types.js";
import { stalled } from "../errors.js";

/** Whether promotion may happen now, why, and when that changes. */
export interface WindowState {
  open: boolean;
  /** One line for status and plan, e.g. `inside allow window 0 9 * * 1-5 (Europe/Berlin) until 2026-11-25T17:00:00+01:00`. */
  reason: string;
  /** When closed: the earliest instant (ms) at which the state becomes open; absent when it never does (within ~5 years). */
  nextOpenAt?: number;
  /** When open: the earliest instant (ms) at which the state becomes closed; absent when it never does (no windows). */
  closesAt?: number;
}

const QUARTER = 900_000;
const HOUR = 3_600_000;
const DAY = 24 * HOUR;
/**
 * Wall-clock and instant order agree for occurrences more than this far apart: a DST shift (at most
 * two hours anywhere) can reorder only occurrences closer than that.
 */
const MARGIN = 3 * HOUR;
/** How far ahead the state sweep looks; far enough for `0 0 29 2 *`. */
const HORIZON = 5 * 366 * DAY;
const MAX_SWEEP_STEPS = 2_000;
/** Occurrences one window's answer may look at (`* * * * *` with a long duration is the costly case). */
const MAX_OCCURRENCES = 2_000;
/** Occurrences one windowState call may look at in total; beyond it the next flip is reported as unknown. */
const BUDGET = 20_000;

/**
 * The promotion window state at `now` (ms since the epoch), a pure function of its arguments.
 *
 * A window is open at t when some occurrence start s of its schedule satisfies s <= t < s + duration.
 * Deny beats allow; when allow windows exist promotion happens only inside one; no windows means
 * always open. `nextOpenAt` (when closed) and `closesAt` (when open) are the next instants at which the
 * combined answer flips, considering deny windows starting and ending and allow windows starting and
 * ending, so the caller can requeue exactly then.
 *
 * Occurrences are local wall-clock times in the window's IANA time zone (cron-parser matches the
 * fields on a DST-free clock; the mapping to instants is done here, so the answer never depends on
 * where an iteration started). Around DST:
 * - a start in the spring-forward gap (02:30 in Europe/Berlin on 2026-03-29) happens at the same wall
 *   time plus the gap length, i.e. at 03:30 CEST (01:30Z), once; a 02:00 start happens at 03:00 CEST;
 * - a start in the repeated fall-back hour (02:30 on 2026-10-25) happens once, at the first (summer
 *   time) instance, 02:30 CEST (00:30Z);
 * - a duration is elapsed time, so an 8h window across a transition ends 8 real hours after it opened.
 * This is what cron-parser's own time-zone iteration yields when started before the transition day.
 *
 * Throws a Stalled CascadeError with reason `InvalidWindow` when a schedule does not parse or a time
 * zone is unknown (config validation reports both earlier, so this means a config bypassed it).
 */
export function windowState(windows: WindowSpec[], now: number): WindowState {
  if (windows.length === 0) return { open: true, reason: "no windows configured: always open" };
  const compiled = windows.map(compile);
  const budget = { left: BUDGET };
  const here = evaluate(compiled, now, budget);
  const flip = nextFlip(compiled, now, here.open, budget);
  if (here.open) {
    return { open: true, reason: openReason(compiled, here, flip), ...(flip ? { closesAt: flip.at } : {}) };
  }
  return { open: false, reason: closedReason(compiled, here, flip), ...(flip ? { nextOpenAt: flip.at } : {}) };
}

/** A window with its parsed schedule (iterated on the wall clock as if it were UTC). */
interface Compiled {
  spec: WindowSpec;
  zone: Zone;
  label: string;
}

/** One window's state at an instant. */
type Single = { open: true; until: number } | { open: false; nextStart: number | undefined };

interface Combined {
  open: boolean;
  states: Single[];
}

function compile(spec: WindowSpec): Compiled {
  let zone: Zone;
  try {
    zone = zoneFor(spec.timezone);
  } catch (err) {
    throw stalled("InvalidWindow", `window time zone "${spec.timezone}" is unknown`, 'use an IANA name such as "Europe/Berlin" or "UTC"', err);
  }
  const fields = spec.schedule.trim().split(/\s+/);
  try {
    if (fields.length !== 5) throw new Error("expected 5 fields: minute hour day-of-month month day-of-week");
    CronExpressionParser.parse(spec.schedule, { tz: "UTC" });
  } catch (err) {
    throw stalled("InvalidWindow", `window schedule "${spec.schedule}" does not parse: ${(err as Error).message}`, 'e.g. "0 9 * * 1-5" for 09:00 on weekdays', err);
  }
  return { spec, zone, label: `${spec.kind} window ${spec.schedule} (${spec.timezone})` };
}

/** Counts cron iterations so that a pathological schedule cannot make windowState spin. */
interface Budget {
  left: number;
}

function evaluate(ws: Compiled[], t: number, budget: Budget): Combined {
  const states = ws.map((w) => single(w, t, budget));
  const denied = ws.some((w, i) => w.spec.kind === "deny" && states[i]!.open);
  const allows = ws.filter((w) => w.spec.kind === "allow");
  const allowed = allows.length === 0 || ws.some((w, i) => w.spec.kind === "allow" && states[i]!.open);
  return { open: !denied && allowed, states };
}

/**
 * Sweeps forward over every window's next transition until the combined answer differs from `open`.
 * Each step moves strictly forward (an open window's `until` and a closed one's `nextStart` lie after
 * the instant they were computed at), so the sweep ends.
 */
function nextFlip(ws: Compiled[], from: number, open: boolean, budget: Budget): { at: number; by: Compiled } | undefined {
  let states = ws.map((w) => single(w, from, budget));
  for (let n = 0; n < MAX_SWEEP_STEPS && budget.left > 0; n++) {
    let at: number | undefined;
    let by: Compiled | undefined;
    states.forEach((s, i) => {
      const c = s.open ? s.until : s.nextStart;
      if (c !== undefined && (at === undefined || c < at)) {
        at = c;
        by = ws[i];
      }
    });
    if (at === undefined || by === undefined || at - from > HORIZON) return undefined;
    const there = evaluate(ws, at, budget);
    if (there.open !== open) return { at, by };
    states = there.states;
  }
  return undefined;
}

function single(w: Compiled, t: number, budget: Budget): Single {
  const d = w.spec.durationMs;
  if (d <= 0) return { open: false, nextStart: undefined };
  const s = latestStartAtOrBefore(w, t, budget);
  if (s !== undefined && t < s + d) return { open: true, until: coveredUntil(w, s, budget) };
  return { open: false, nextStart: firstStartAfter(w, t, budget) };
}

/** The latest occurrence start <= t, or undefined when the schedule never fired before t. */
function latestStartAtOrBefore(w: Compiled, t: number, budget: Budget): number | undefined {
  const it = iterator(w, w.zone.wall(t) + MARGIN + 1);
  let best: number | undefined;
  let bestWall = 0;
  for (let i = 0; i < MAX_OCCURRENCES; i++) {
    const wall = step(it, "prev", budget);
    if (wall === undefined) break;
    if (best !== undefined && wall < bestWall - MARGIN) break;
    const s = w.zone.instant(wall);
    if (s <= t && (best === undefined || s > best)) {
      best = s;
      bestWall = wall;
    }
  }
  return best;
}

/** The earliest occurrence start > t, or undefined when there is none. */
function firstStartAfter(w: Compiled, t: number, budget: Budget): number | undefined {
  const it = iterator(w, w.zone.wall(t) - MARGIN - 1);
  let best: number | undefined;
  let bestWall = 0;
  for (let i = 0; i < MAX_OCCURRENCES; i++) {
    const wall = step(it, "next", budget);
    if (wall === undefined) break;
    if (best !== undefined && wall > bestWall + MARGIN) break;
    const s = w.zone.instant(wall);
    if (s > t && (best === undefined || s < best)) {
      best = s;
      bestWall = wall;
    }
  }
  return best;
}

/**
 * The end of the stretch during which the window stays open without a break, given that an occurrence
 * started at `s`: later occurrences starting at or before the current end extend it (`0 * * * *` with a
 * 2h duration never closes). Capped, so the answer may be early for a window that is always open, which
 * only makes the caller look again sooner.
 */
function coveredUntil(w: Compiled, s: number, budget: Budget): number {
  const d = w.spec.durationMs;
  let end = s + d;
  const it = iterator(w, w.zone.wall(s) - MARGIN - 1);
  for (let i = 0; i < MAX_OCCURRENCES; i++) {
    const wall = step(it, "next", budget);
    if (wall === undefined || wall > w.zone.wall(end) + MARGIN) break;
    const start = w.zone.instant(wall);
    if (start <= end && start + d > end) end = start + d;
  }
  return end;
}

function iterator(w: Compiled, wallMs: number): CronExpression {
  return CronExpressionParser.parse(w.spec.schedule, { tz: "UTC", currentDate: new Date(wallMs) });
}

/** The next/previous matching wall time (ms, wall clock read as UTC), or undefined when there is none. */
function step(it: CronExpression, dir: "next" | "prev", budget: Budget): number | undefined {
  budget.left--;
  try {
    return (dir === "next" ? it.next() : it.prev()).getTime();
  } catch {
    // cron-parser throws when it runs out of matches (e.g. `0 0 30 2 *`) or hits its loop limit.
    return undefined;
  }
}

function openReason(ws: Compiled[], here: Combined, flip: { at: number; by: Compiled } | undefined): string {
  let best: { w: Compiled; until: number } | undefined;
  ws.forEach((w, i) => {
    const s = here.states[i]!;
    if (w.spec.kind === "allow" && s.open && (!best || s.until > best.until)) best = { w, until: s.until };
  });
  if (best) {
    const cut = flip && flip.at < best.until ? `; closes earlier, ${flip.by.zone.format(flip.at)}, when ${flip.by.label} starts` : "";
    return `inside ${best.w.label} until ${best.w.zone.format(best.until)}${cut}`;
  }
  return `outside every deny window${flip ? `; ${flip.by.label} starts ${flip.by.zone.format(flip.at)}` : ""}`;
}

function closedReason(ws: Compiled[], here: Combined, flip: { at: number; by: Compiled } | undefined): string {
  let deny: { w: Compiled; until: number } | undefined;
  ws.forEach((w, i) => {
    const s = here.states[i]!;
    if (w.spec.kind === "deny" && s.open && (!deny || s.until > deny.until)) deny = { w, until: s.until };
  });
  if (deny) {
    const then = flip ? `; opens ${flip.by.zone.format(flip.at)}` : "; no opening found within the look-ahead";
    return `inside ${deny.w.label} until ${deny.w.zone.format(deny.until)}${flip && flip.at === deny.until ? "" : then}`;
  }
  const next = flip ? `; next opening ${flip.by.zone.format(flip.at)}` : "; no opening found within the look-ahead";
  return `outside every allow window${next}`;
}

/**
 * An IANA time zone: conversions between instants and wall-clock times (wall times are ms since the
 * epoch as if the wall clock were UTC).
 */
class Zone {
  private readonly fmt: Intl.DateTimeFormat;

  constructor(readonly name: string) {
    this.fmt = new Intl.DateTimeFormat("en-US", {
      timeZone: name,
      hourCycle: "h23",
      year: "numeric",
      month: "2-digit",
      day: "2-digit",
      hour: "2-digit",
      minute: "2-digit",
      second: "2-digit",
    });
  }

  /** Offsets by quarter hour: every transition in the tz database since 1970 falls on a quarter hour (UTC). */
  private readonly offsets = new Map<number, number>();

  /** The wall-clock time at instant t. */
  wall(t: number): number {
    return t + this.offset(t);
  }

  /** UTC offset (ms, east positive) in effect at instant t. */
  offset(t: number): number {
    const bucket = Math.floor(t / QUARTER);
    let off = this.offsets.get(bucket);
    if (off === undefined) {
      const start = bucket * QUARTER;
      const p: Record<string, number> = {};
      for (const part of this.fmt.formatToParts(new Date(start))) if (part.type !== "literal") p[part.type] = Number(part.value);
      off = Date.UTC(p.year!, p.month! - 1, p.day!, p.hour!, p.minute!, p.second!) - start;
      if (this.offsets.size > 50_000) this.offsets.clear();
      this.offsets.set(bucket, off);
    }
    return off;
  }

  /**
   * The instant a wall-clock time happens. A time in a fall-back overlap happens at its first (earlier)
   * instance; a time in a spring-forward gap is read with the offset before the gap, i.e. moved
   * forward by the gap's length (02:30 -> 03:30). Assumes at most one transition within a day, true
   * of every zone in the tz database.
   */
  instant(wall: number): number {
    const before = this.offset(wall - DAY);
    const after = this.offset(wall + DAY);
    const candidates = [wall - before, wall - after].filter((t) => this.wall(t) === wall);
    if (candidates.length > 0) return Math.min(...candidates);
    return wall - before;
  }

  /** ISO 8601 with this zone's offset, e.g. `2026-11-25T17:00:00+01:00`. */
  format(t: number): string {
    const wall = this.wall(t);
    const off = Math.round((wall - t) / 60_000);
    const sign = off < 0 ? "-" : "+";
    const hh = String(Math.floor(Math.abs(off) / 60)).padStart(2, "0");
    const mm = String(Math.abs(off) % 60).padStart(2, "0");
    const iso = new Date(wall).toISOString();
    const base = wall % 1000 === 0 ? iso.slice(0, 19) : iso.slice(0, 23);
    return `${base}${sign}${hh}:${mm}`;
  }
}

/**
 * Formats instant `t` as ISO 8601 with the UTC offset of IANA zone `timezone` in effect then, e.g.
 * `2026-11-25T17:00:00+01:00`; for messages about windows. Throws RangeError for an unknown zone.
 */
export function formatInZone(t: number, timezone: string): string {
  return zoneFor(timezone).format(t);
}

const zones = new Map<string, Zone>();

/** Zones are cached: building an Intl.DateTimeFormat is costly, and offsets never change for an instant. */
function zoneFor(name: string): Zone {
  let z = zones.get(name);
  if (!z) {
    z = new Zone(name);
    zones.set(name, z);
  }
  return z;
}
