/**
 * Moments as people name them on the command line (`--since 4h`, `--at 2025-03-01T14:00`,
 * `--at 1a2b3c4`) and times as `history` shows them (local time with its offset).
 */
import { parseDuration } from "../duration.js";

/** A moment given as text: an absolute time in ms, or a commit-ish to resolve in the repository. */
export type Moment = { kind: "time"; ms: number } | { kind: "commit"; text: string };

/**
 * Reads `text` as a duration back from `now` (`4h`, `2d`, `1h30m`), a date-time (anything with a `-`
 * or `:` that Date understands; without a zone it is local time), or else as a commit (hex digits or a
 * ref name, resolved by the caller). Undefined when it is none of them.
 */
export function parseMoment(text: string, now: number): Moment | undefined {
  const t = text.trim();
  if (!t) return undefined;
  const d = parseDuration(t);
  if (d !== undefined) return { kind: "time", ms: now - d };
  if (/[-:]/.test(t) && !/^[0-9a-f]{4,64}$/i.test(t)) {
    // "2025-03-01 14:00" is local time to a person; Date reads the space form as local too.
    const ms = Date.parse(t);
    if (!Number.isNaN(ms)) return { kind: "time", ms };
  }
  if (/^[\w./^~-]+$/.test(t)) return { kind: "commit", text: t };
  return undefined;
}

/** `2025-03-01 14:05:09 +01:00`: local time (the process's TZ) with its offset, as `history` prints it. */
export function localTime(ms: number): string {
  const d = new Date(ms);
  const p = (n: number) => String(n).padStart(2, "0");
  const off = -d.getTimezoneOffset();
  const sign = off < 0 ? "-" : "+";
  const abs = Math.abs(off);
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())} ${sign}${p(Math.floor(abs / 60))}:${p(abs % 60)}`;
}

/** The UTC ISO form git's date options (`--since`, `--before`) read without guessing. */
export function gitDate(ms: number): string {
  return new Date(Math.floor(ms / 1000) * 1000).toISOString().replace(".000Z", "Z");
}
