import type { Clock } from "./clock.js";
import { formatDuration } from "./duration.js";

/** One piece of long work being reported: call `update` as it goes and `end` once. */
export interface ProgressTask {
  update(done: number, total?: number): void;
  /** Ends the task; the summary line says what was done (e.g. "12,000 files"). */
  end(result?: string): void;
}

/** Starts progress reports for long work (the first whole-sandbox scan, a remote's first push). */
export type ProgressReporter = (label: string, unit: string) => ProgressTask;

/** Reports nothing (commands that are not the long-running controller). */
export const noProgress: ProgressReporter = () => ({ update: () => undefined, end: () => undefined });

/** How often a TTY line is redrawn. */
const REDRAW_MS = 100;

/**
 * Progress on a terminal: on a TTY one line redrawn in place (`scanning the sandbox: 12,000/100,000
 * files, 8,400/s`) and replaced by the summary at the end; otherwise (a log file, a pipe, systemd)
 * only the single summary line (`scanning the sandbox: 100,000 files in 11.9s (8,400/s)`).
 */
export function terminalProgress(out: { write(s: string): unknown; isTTY?: boolean }, clock: Clock): ProgressReporter {
  return (label, unit) => {
    const started = clock.now();
    let drawnAt = 0;
    let done = 0;
    let total: number | undefined;
    let drawn = false;
    const rate = () => {
      const s = (clock.now() - started) / 1000;
      return s > 0 ? `${Math.round(done / s).toLocaleString("en-US")}/s` : "";
    };
    return {
      update(n, t) {
        done = n;
        total = t ?? total;
        if (!out.isTTY || clock.now() - drawnAt < REDRAW_MS) return;
        drawnAt = clock.now();
        drawn = true;
        const of = total !== undefined ? `/${total.toLocaleString("en-US")}` : "";
        out.write(`\r\x1b[2K${label}: ${done.toLocaleString("en-US")}${of} ${unit}${rate() ? `, ${rate()}` : ""}`);
      },
      end(result) {
        const took = clock.now() - started;
        const line = `${label}: ${result ?? `${done.toLocaleString("en-US")} ${unit}`} in ${formatDuration(took)}${took > 0 && done > 0 ? ` (${rate()})` : ""}`;
        out.write(`${drawn ? "\r\x1b[2K" : ""}${line}\n`);
      },
    };
  };
}
