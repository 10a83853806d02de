/**
 * A plain lock for replacing one file of ours (the state file) safely: `<path>.lock` created with
 * O_EXCL, the complete new content written into it, fsynced and renamed over `<path>`. A second writer
 * fails to create the lock instead of losing the first writer's update, and a reader never sees half a
 * file. git's own files (index, refs) are never written this way: git writes them.
 */
import { open, rename, unlink, type FileHandle } from "node:fs/promises";
import { CascadeError } from "../errors.js";

/**
 * `<path>.lock` still existed after the wait: another writer is updating the file, or one crashed and
 * left the lock behind. Transient (reason `LockBusy`).
 */
export class LockBusyError extends CascadeError {
  /** The lock file that is held: `<path>.lock`. */
  readonly lockPath: string;

  constructor(
    readonly path: string,
    waitedMs: number,
  ) {
    const lockPath = `${path}.lock`;
    super("Transient", "LockBusy", `Unable to lock ${path}: ${lockPath} exists (waited ${waitedMs} ms); another process is writing it, or one crashed and left the lock behind`, {
      hint: `If no cascade-sync command is running, remove ${lockPath} and try again.`,
    });
    this.lockPath = lockPath;
  }
}

/** A held `<path>.lock`: write the new content, then commit() (it replaces `path`). */
export interface FileLock {
  write(data: string | Buffer): Promise<void>;
  /** fsyncs the lock file and renames it over `path`. */
  commit(): Promise<void>;
}

/**
 * Runs `fn` while holding `<path>.lock` (waiting up to `timeoutMs`, default 2 s). If `fn` does not
 * commit, or throws, the lock file is removed and `path` stays as it was. Returns what `fn` returns;
 * throws {@link LockBusyError} when the lock cannot be taken (fn does not run), or what `fn` throws.
 */
export async function withLock<T>(path: string, fn: (lock: FileLock) => Promise<T>, opts: { timeoutMs?: number } = {}): Promise<T> {
  const lockPath = `${path}.lock`;
  const handle = await createExclusive(path, lockPath, opts.timeoutMs ?? 2000);
  let state: "held" | "committed" = "held";
  const lock: FileLock = {
    async write(data) {
      await handle.write(typeof data === "string" ? Buffer.from(data, "utf8") : data);
    },
    async commit() {
      await handle.sync();
      await handle.close();
      await rename(lockPath, path);
      state = "committed";
    },
  };
  try {
    return await fn(lock);
  } finally {
    if (state === "held") {
      await handle.close().catch(() => undefined);
      await unlink(lockPath).catch(() => undefined);
    }
  }
}

async function createExclusive(path: string, lockPath: string, timeoutMs: number): Promise<FileHandle> {
  const start = Date.now();
  for (let attempt = 1; ; attempt++) {
    try {
      return await open(lockPath, "wx", 0o666);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
    const waited = Date.now() - start;
    if (waited >= timeoutMs) throw new LockBusyError(path, waited);
    // Backoff with jitter, so two waiters do not retry in lockstep.
    const base = 25 * Math.min(4, attempt);
    await new Promise((r) => setTimeout(r, Math.max(1, Math.min(timeoutMs - waited, base / 2 + Math.random() * base))));
  }
}
