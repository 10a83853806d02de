import { appendFileSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";
import type { Clock } from "./clock.js";
import type { Redactor } from "./redact.js";

export type LogLevel = "debug" | "info" | "warn" | "error";
const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

/** Where log lines go: a terminal stream (human-readable) and a file (JSON lines). */
export interface LogSinks {
  terminal?: { write(text: string): unknown };
  file?: string;
}

/**
 * A logger that writes human-readable lines to the terminal and JSON lines to the log file, with
 * every secret redacted first. Writing never throws: a log file that cannot be written is reported
 * once on the terminal and then skipped, because losing a log line must not stop a sync.
 */
export class Logger {
  private fileBroken = false;
  constructor(
    private sinks: LogSinks,
    private level: LogLevel,
    private readonly redactor: Redactor,
    private readonly clock: Clock,
  ) {
    if (sinks.file) this.prepareFile(sinks.file);
  }

  /** Switches the log file and level (the terminal stays), e.g. after a config reload. */
  reconfigure(file: string | undefined, level: LogLevel): void {
    if (file && file !== this.sinks.file) this.prepareFile(file);
    this.sinks = { ...this.sinks, file };
    this.level = level;
    this.fileBroken = false;
  }

  debug(msg: string, fields?: Record<string, unknown>): void { this.log("debug", msg, fields); }
  info(msg: string, fields?: Record<string, unknown>): void { this.log("info", msg, fields); }
  warn(msg: string, fields?: Record<string, unknown>): void { this.log("warn", msg, fields); }
  error(msg: string, fields?: Record<string, unknown>): void { this.log("error", msg, fields); }

  private log(level: LogLevel, msg: string, fields: Record<string, unknown> = {}): void {
    if (RANK[level] < RANK[this.level]) return;
    const at = new Date(this.clock.now());
    const time = at.toISOString();
    const text = this.redactor.redact(msg);
    const safe = this.redactor.redactValue(fields);
    if (this.sinks.terminal) {
      const extra = Object.entries(safe)
        .filter(([, v]) => v !== undefined)
        .map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`)
        .join(" ");
      // The terminal shows the local time of day (the log file keeps UTC with the date).
      this.sinks.terminal.write(`${localTime(at)} ${level.padEnd(5)} ${text}${extra ? `  ${extra}` : ""}\n`);
    }
    if (this.sinks.file && !this.fileBroken) {
      try {
        appendFileSync(this.sinks.file, JSON.stringify({ time, level, msg: text, ...safe }) + "\n", { mode: 0o600 });
      } catch (err) {
        this.fileBroken = true;
        this.sinks.terminal?.write(`cannot write log file ${this.sinks.file}: ${(err as Error).message}\n`);
      }
    }
  }

  private prepareFile(file: string): void {
    try {
      mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    } catch {
      // Reported on the first write.
    }
  }
}

/** hh:mm:ss in the machine's time zone. */
function localTime(d: Date): string {
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, "0")).join(":");
}
