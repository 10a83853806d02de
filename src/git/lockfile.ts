/**
 * git's lock-file protocol, so that cascade-sync and a native `git` running in the same repository
 * never overwrite each other's update of a ref, `packed-refs` or the index.
 *
 * To change `<path>`, a writer creates `<path>.lock` with O_CREAT|O_EXCL (whoever creates it owns the
 * update), writes the complete new content into it, and renames it over `<path>` (atomic on POSIX), or
 * unlinks it to give up. Readers never see a half-written file, and a second writer fails to create the
 * lock instead of losing the first writer's update. This mirrors git's lockfile.c / tempfile.c.
 */
import * as fs from "node:fs";
import { open, rename, unlink, type FileHandle } from "node:fs/promises";
import { sep } from "node:path";
import { CascadeError, InternalError } from "../errors.js";

/** Options of {@link acquireLock} and {@link withLock}. */
export interface LockOptions {
  /**
   * How long to keep retrying while another process holds the lock, in ms. Default 2000; 0 means a single
   * attempt. (git itself waits 100 ms for a ref lock and 1000 ms for packed-refs by default.)
   */
  timeoutMs?: number;
  /** First pause between attempts, in ms; it grows up to 4x with jitter like git's backoff. Default 25. */
  retryMs?: number;
}

/**
 * Thrown by {@link acquireLock} when `<path>.lock` still exists after the timeout: another git process
 * is updating the file, or one crashed and left its lock behind. Transient (reason `LockBusy`): the loop
 * retries with backoff; a person must act only if it never goes away.
 */
export class LockBusyError extends CascadeError {
  /** The file we wanted to update (the argument of acquireLock). */
  readonly path: string;
  /** The lock file that is held: `<path>.lock`. */
  readonly lockPath: string;

  constructor(path: string, waitedMs: number) {
    const lockPath = `${path}.lock`;
    super(
      "Transient",
      "LockBusy",
      `Unable to lock ${path}: ${lockPath} exists (waited ${waitedMs} ms). Another git process seems to be ` +
        `running in this repository (e.g. an editor or a script running git), or a git process crashed ` +
        `and left the lock file behind.`,
      {
        hint: `If no git process is running, remove ${lockPath} and cascade-sync will continue on its own.`,
      },
    );
    this.path = path;
    this.lockPath = lockPath;
  }
}

/**
 * An acquired `<path>.lock`. Write the complete new content, then either `commit()` (it replaces `path`)
 * or `rollback()` (it disappears, `path` is untouched). After either, the lock is released and further
 * writes throw.
 */
export interface Lock {
  /** The file this lock protects. */
  readonly path: string;
  /** The lock file itself: `<path>.lock`. */
  readonly lockPath: string;
  /** True once the lock was released, by commit or rollback. */
  readonly released: boolean;
  /** True once commit() renamed the lock file over `path`. */
  readonly committed: boolean;
  /** Appends `data` (strings as UTF-8) to the lock file. */
  write(data: Buffer | string): Promise<void>;
  /** Discards everything written so far (truncates the lock file), keeping the lock. */
  reset(): Promise<void>;
  /** lstat of the lock file as written so far (bigint, for nanosecond mtimes). */
  stat(): Promise<fs.BigIntStats>;
  /**
   * fsyncs the lock file, closes it and renames it over `path`. If this throws, the lock is still held
   * and rollback() removes it (withLock does that for you).
   */
  commit(): Promise<void>;
  /** Closes and unlinks the lock file; `path` stays as it was. A no-op once released. */
  rollback(): Promise<void>;
}

const DEFAULT_TIMEOUT_MS = 2000;
const DEFAULT_RETRY_MS = 25;

/**
 * Creates `<path>.lock` exclusively (mode 0666 minus the umask, as git does), retrying until
 * `timeoutMs` has passed. The directory of `path` must exist.
 *
 * Returns the held {@link Lock}. Throws {@link LockBusyError} when the lock file still exists after the
 * timeout; any other error (ENOENT for a missing directory, EACCES, ...) is thrown as is, at once.
 * Prefer {@link withLock}, which cannot leak the lock.
 */
export async function acquireLock(path: string, opts: LockOptions = {}): Promise<Lock> {
  const timeoutMs = Math.max(0, opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  const retryMs = Math.max(1, opts.retryMs ?? DEFAULT_RETRY_MS);
  const lockPath = `${path}.lock`;
  const start = Date.now();
  let attempt = 0;
  for (;;) {
    try {
      // "wx" = O_WRONLY|O_CREAT|O_EXCL; the kernel applies the umask to 0o666 like git's open().
      // Journal the intent first: a kill between the create and the journal entry would otherwise
      // leave a lock file nobody can prove was ours.
      const since = Date.now();
      track(lockPath, null, since);
      let handle: FileHandle;
      try {
        handle = await open(lockPath, "wx", 0o666);
      } catch (err) {
        untrack(lockPath);
        throw err;
      }
      return new HeldLock(path, lockPath, handle, Number((await handle.stat()).ino), since);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
    const waited = Date.now() - start;
    if (waited >= timeoutMs) throw new LockBusyError(path, waited);
    // Backoff with jitter, as git's lock_file_timeout(), so two waiters do not retry in lockstep.
    attempt++;
    const base = retryMs * Math.min(4, attempt);
    const pause = Math.min(timeoutMs - waited, base / 2 + Math.random() * base);
    await new Promise((r) => setTimeout(r, Math.max(1, pause)));
  }
}

/**
 * Runs `fn` while holding `<path>.lock`. If `fn` commits the lock, its change lands; if `fn` throws, or
 * returns without committing, the lock is rolled back so it can never leak.
 *
 * Returns what `fn` returns. Throws {@link LockBusyError} when the lock cannot be acquired (fn does not
 * run), or whatever `fn` throws (after the rollback).
 */
export async function withLock<T>(path: string, fn: (lock: Lock) => Promise<T>, opts: LockOptions = {}): Promise<T> {
  const lock = await acquireLock(path, opts);
  try {
    return await fn(lock);
  } finally {
    if (!lock.released) await lock.rollback();
  }
}

/**
 * Lock files held (or about to be created) by this process: path -> inode (null until created) and
 * when creation started. Removed on exit like git's tempfile cleanup (a crash cannot).
 */
const held = new Map<string, { ino: number | null; since: number }>();
let exitHookInstalled = false;
/** Journals by repository: gitdir -> journal file (one per controller running in this process). */
const journals = new Map<string, string>();

/** What the lock journal records: which lock files a process held, by inode. */
interface LockJournal {
  pid: number;
  locks: { path: string; ino: number | null; since: number }[];
}

/**
 * Records every lock this process holds under `gitdir` in `file` (rewritten on each acquire and
 * release), so that after a crash (kill -9) the next controller can remove exactly the lock files
 * the dead one left, and never a lock a native git holds. See {@link recoverStaleLocks}.
 */
export function enableLockJournal(gitdir: string, file: string): void {
  journals.set(gitdir.endsWith(sep) ? gitdir : gitdir + sep, file);
  writeJournals();
}

/** Stops journaling locks under `gitdir` (the controller released the sandbox). */
export function disableLockJournal(gitdir: string): void {
  journals.delete(gitdir.endsWith(sep) ? gitdir : gitdir + sep);
}

/** Rewrites the journals of the repositories `changed` (a lock path) belongs to, or all of them. */
function writeJournals(changed?: string): void {
  for (const [prefix, file] of journals) {
    // A lock in another repository (a local remote's ref) changes nothing this journal records.
    if (changed !== undefined && !changed.startsWith(prefix)) continue;
    const data: LockJournal = { pid: process.pid, locks: [...held].filter(([p]) => p.startsWith(prefix)).map(([path, h]) => ({ path, ...h })) };
    const tmp = `${file}.${process.pid}.tmp`;
    try {
      fs.writeFileSync(tmp, JSON.stringify(data), { mode: 0o600 });
      fs.renameSync(tmp, file);
    } catch {
      // The sandbox is gone (or read-only): a journal is a recovery aid, never a reason to fail.
    }
  }
}

/**
 * Removes the lock files that a dead process recorded in the journal `file` and left behind. A
 * lock it had created is recognized by its inode; one it was creating when it died (journaled
 * before the create, so a kill in between cannot hide it) only when the file appeared within
 * PENDING_WINDOW_MS of that moment. A lock created since by someone else stays. `isAlive(pid)`
 * decides whether the recorder is gone. Returns the lock files removed.
 */
export async function recoverStaleLocks(file: string, isAlive: (pid: number) => Promise<boolean>): Promise<string[]> {
  let journal: LockJournal;
  try {
    journal = JSON.parse(await fs.promises.readFile(file, "utf8")) as LockJournal;
  } catch {
    return [];
  }
  if (journal.pid === process.pid || (await isAlive(journal.pid))) return [];
  const removed: string[] = [];
  for (const l of journal.locks) {
    const st = await fs.promises.lstat(l.path, { bigint: true }).catch(() => null);
    if (!st) continue;
    const created = Number(st.birthtimeMs || st.ctimeMs);
    const ours = l.ino !== null
      ? Number(st.ino) === l.ino
      : created >= l.since - COARSE_CLOCK_MS && created <= l.since + PENDING_WINDOW_MS;
    if (ours) {
      await unlink(l.path).catch(() => undefined);
      removed.push(l.path);
    }
  }
  return removed;
}

/** How soon after its journaled intent a lock file must appear to count as the dead process's. */
const PENDING_WINDOW_MS = 1000;
/** File timestamps come from the kernel's coarse clock, which can trail Date.now() by a tick (up to 10 ms). */
const COARSE_CLOCK_MS = 20;

function track(lockPath: string, ino: number | null, since: number): void {
  held.set(lockPath, { ino, since });
  writeJournals(lockPath);
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on("exit", () => {
      for (const p of held.keys()) {
        try {
          fs.unlinkSync(p);
        } catch {
          // already gone, nothing to clean
        }
      }
    });
  }
}

function untrack(lockPath: string): void {
  held.delete(lockPath);
  writeJournals(lockPath);
}

class HeldLock implements Lock {
  private handle: FileHandle | null;
  private position = 0;
  private state: "held" | "committed" | "rolledBack" = "held";

  constructor(
    readonly path: string,
    readonly lockPath: string,
    handle: FileHandle,
    ino: number,
    since: number,
  ) {
    this.handle = handle;
    track(lockPath, ino, since);
  }

  get released(): boolean {
    return this.state !== "held";
  }

  get committed(): boolean {
    return this.state === "committed";
  }

  private open(): FileHandle {
    if (this.state !== "held" || this.handle === null) {
      throw new InternalError(`lock ${this.lockPath} used after it was ${this.state === "committed" ? "committed" : "released"}`);
    }
    return this.handle;
  }

  async write(data: Buffer | string): Promise<void> {
    const handle = this.open();
    const buf = typeof data === "string" ? Buffer.from(data, "utf8") : data;
    let done = 0;
    while (done < buf.length) {
      const { bytesWritten } = await handle.write(buf, done, buf.length - done, this.position);
      done += bytesWritten;
      this.position += bytesWritten;
    }
  }

  async reset(): Promise<void> {
    await this.open().truncate(0);
    this.position = 0;
  }

  async stat(): Promise<fs.BigIntStats> {
    return this.open().stat({ bigint: true });
  }

  async commit(): Promise<void> {
    const handle = this.open();
    await handle.sync();
    await handle.close();
    this.handle = null;
    // From here the lock file is complete; if the rename fails the lock is still ours and rollback()
    // (which tolerates the closed handle) removes it.
    await rename(this.lockPath, this.path);
    this.state = "committed";
    untrack(this.lockPath);
  }

  async rollback(): Promise<void> {
    if (this.state !== "held") return;
    this.state = "rolledBack";
    const handle = this.handle;
    this.handle = null;
    try {
      await handle?.close();
    } finally {
      untrack(this.lockPath);
      try {
        await unlink(this.lockPath);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      }
    }
  }
}
