import { appendFile, readFile } from "node:fs/promises";
import { join } from "node:path";
import { ensureRuntimeDir, runtimeDir } from "../runtime.js";

/** One line of .git/cascade-sync/history.jsonl: a promotion, a rollback or a rejected approval. */
export interface HistoryEntry {
  at: string;
  environment: string;
  event: "promoted" | "rolled-back" | "approval-rejected" | "deployed" | "gate-failed" | "drift-detected" | "release-repaired";
  commit: string;
  /** The commit the environment held before (promotions and rollbacks). */
  from?: string | null;
  /** Who signed (approvals that counted for a promotion, or the rejected entry's signer). */
  signers?: string[];
  result: string;
}

const HISTORY_FILE = "history.jsonl";

const RECENT = 20;

/**
 * history.jsonl as the controller keeps it: each entry appended to the file (created 0600) and to a
 * short in-memory list, so that status, written after every pass, never re-reads the growing file.
 */
export class HistoryLog {
  private constructor(
    private readonly gitdir: string,
    private readonly entries: HistoryEntry[],
    private readonly onAppend: (entry: HistoryEntry) => void,
  ) {}

  /** Opens the log with its last entries; `onAppend` hears of each entry appended from now on (metrics). */
  static async open(gitdir: string, onAppend: (entry: HistoryEntry) => void = () => undefined): Promise<HistoryLog> {
    return new HistoryLog(gitdir, await readHistory(gitdir, RECENT), onAppend);
  }

  /** Appends one entry to the file and to the recent list. */
  async append(entry: HistoryEntry): Promise<void> {
    await ensureRuntimeDir(this.gitdir);
    await appendFile(join(runtimeDir(this.gitdir), HISTORY_FILE), `${JSON.stringify(entry)}\n`, { mode: 0o600 });
    this.entries.push(entry);
    this.onAppend(entry);
    if (this.entries.length > RECENT) this.entries.splice(0, this.entries.length - RECENT);
  }

  /** The most recent entries, oldest first. */
  recent(): HistoryEntry[] {
    return [...this.entries];
  }
}

/** The last `limit` entries, oldest first; a torn last line (a crash mid-append) is skipped. */
export async function readHistory(gitdir: string, limit = 20): Promise<HistoryEntry[]> {
  const text = await readFile(join(runtimeDir(gitdir), HISTORY_FILE), "utf8").catch(() => "");
  const out: HistoryEntry[] = [];
  for (const line of text.split("\n").slice(-limit - 1)) {
    if (!line.trim()) continue;
    try {
      out.push(JSON.parse(line) as HistoryEntry);
    } catch {
      // A partial line from a crash: the entries before it are intact.
    }
  }
  return out.slice(-limit);
}
