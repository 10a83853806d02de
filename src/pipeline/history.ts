import { appendFile, readFile } from "node:fs/promises";
import { join } from "node:path";
import { ensureRuntimeDir, runtimeDir } from "../runtime.js";

/** One line of .git/cascade-sync/history.jsonl: a promotion, a rollback or a rejected approval. */
export interface HistoryEntry {
  at: string;
  environment: string;
  event: "promoted" | "rolled-back" | "approval-rejected" | "deployed" | "gate-failed";
  commit: string;
  /** The commit the environment held before (promotions and rollbacks). */
  from?: string | null;
  /** Who signed (approvals that counted for a promotion, or the rejected entry's signer). */
  signers?: string[];
  result: string;
}

const HISTORY_FILE = "history.jsonl";

/** Appends one entry (the file is created 0600 in the runtime folder). */
export async function appendHistory(gitdir: string, entry: HistoryEntry): Promise<void> {
  await ensureRuntimeDir(gitdir);
  await appendFile(join(runtimeDir(gitdir), HISTORY_FILE), `${JSON.stringify(entry)}\n`, { mode: 0o600 });
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
