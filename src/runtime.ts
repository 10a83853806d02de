import { randomBytes } from "node:crypto";
import { mkdir, open, readFile, rename, rm, writeFile, chmod } from "node:fs/promises";
import { join } from "node:path";
import { stalled } from "./errors.js";

/** The controller's runtime folder inside .git (never committed, never watched). */
export function runtimeDir(gitdir: string): string {
  return join(gitdir, "cascade-sync");
}

/** Creates the runtime folder with mode 0700. */
export async function ensureRuntimeDir(gitdir: string): Promise<string> {
  const dir = runtimeDir(gitdir);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  return dir;
}

/** The last write queued per runtime file: writes of one file land in the order they were asked for. */
const writesInFlight = new Map<string, Promise<void>>();

/**
 * Writes a runtime file atomically with mode 0600. Two reconcilers may save the same file at once:
 * the writes are queued per file, so an older content can never replace a newer one.
 */
export function writeRuntimeFile(gitdir: string, name: string, data: string): Promise<void> {
  const target = join(runtimeDir(gitdir), name);
  const write = async () => {
    const dir = await ensureRuntimeDir(gitdir);
    const tmp = join(dir, `.${name}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`);
    await writeFile(tmp, data, { mode: 0o600 });
    await rename(tmp, target);
  };
  const next = (writesInFlight.get(target) ?? Promise.resolve()).then(write);
  const settled = next.catch(() => undefined);
  writesInFlight.set(target, settled);
  void settled.then(() => {
    if (writesInFlight.get(target) === settled) writesInFlight.delete(target);
  });
  return next;
}

/** Reads a runtime JSON file, or undefined when it is missing or unreadable. */
export async function readRuntimeJson<T>(gitdir: string, name: string): Promise<T | undefined> {
  try {
    return JSON.parse(await readFile(join(runtimeDir(gitdir), name), "utf8")) as T;
  } catch {
    return undefined;
  }
}

/** What the lock file says about the controller holding it. */
export interface LockInfo {
  pid: number;
  startedAt: string;
  /** The process's start time from /proc, to tell a reused pid from the real holder. */
  procStart?: string;
}

/** True when a process with this pid runs and (when known) started at `procStart`. */
export async function isAlive(info: LockInfo): Promise<boolean> {
  try {
    process.kill(info.pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EPERM") return false;
  }
  // A zombie (killed, not yet reaped by its parent) has exited: it holds nothing any more.
  if (await isZombie(info.pid)) return false;
  if (!info.procStart) return true;
  return (await procStartTime(info.pid)) === info.procStart;
}

async function isZombie(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) === "Z";
  } catch {
    return false;
  }
}

/** The start time of a process (field 22 of /proc/PID/stat), or undefined off Linux. */
export async function procStartTime(pid: number): Promise<string | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

/** Reads the controller lock; undefined when nobody holds it. */
export async function readLock(gitdir: string): Promise<LockInfo | undefined> {
  return readRuntimeJson<LockInfo>(gitdir, "lock");
}

/** The running controller's lock info, or undefined when none runs (a stale lock counts as none). */
export async function runningController(gitdir: string): Promise<LockInfo | undefined> {
  const info = await readLock(gitdir);
  return info && (await isAlive(info)) ? info : undefined;
}

/**
 * Takes the one-controller-per-sandbox lock. A lock whose process is gone (kill -9, a crash) is
 * stale and taken over. Throws Stalled `AlreadyRunning` naming the pid when a live controller holds it.
 * Returns a function that releases the lock, what was taken over, and the git lock files removed
 * (none: cascade-sync takes no git lock of its own, git takes and releases them).
 */
export async function takeControllerLock(gitdir: string, now: Date): Promise<{ release(): Promise<void>; tookOver?: LockInfo; removedLocks: string[] }> {
  const dir = await ensureRuntimeDir(gitdir);
  const file = join(dir, "lock");
  const mine: LockInfo = { pid: process.pid, startedAt: now.toISOString(), ...(await procInfo()) };
  let tookOver: LockInfo | undefined;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fh = await open(file, "wx", 0o600);
      await fh.writeFile(JSON.stringify(mine));
      await fh.close();
      // git takes and releases its own lock files; none are ours to recover here.
      const removedLocks: string[] = [];
      return {
        removedLocks, release: async () => {
        const cur = await readLock(gitdir);
        if (cur?.pid === process.pid) await rm(file, { force: true });
      }, ...(tookOver ? { tookOver } : {}) };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const holder = await readLock(gitdir);
      if (holder && (await isAlive(holder))) {
        throw stalled("AlreadyRunning", `cascade-sync is already running for this sandbox (pid ${holder.pid}, since ${holder.startedAt})`,
          "use `cascade-sync status` to see it, or `cascade-sync stop` to stop it");
      }
      tookOver = holder;
      // Stale: its process is gone. Remove it and race for a fresh one (O_EXCL decides the winner).
      await rm(file, { force: true });
    }
  }
  throw stalled("LockContended", "could not take the controller lock: another controller is starting at the same time", "try again");
}

async function procInfo(): Promise<{ procStart?: string }> {
  const s = await procStartTime(process.pid);
  return s ? { procStart: s } : {};
}
