import { lstat, readdir, readFile, readlink, unlink } from "node:fs/promises";
import { join, resolve, sep } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

/**
 * Lock files git leaves behind when it dies without running its cleanup (`kill -9`, a power cut, an OOM
 * kill). git creates every lock with O_EXCL and never takes one over: a left lock fails every later
 * command on that file ("Unable to create '...lock': File exists. Another git process seems to be
 * running in this repository ... remove the file manually to continue"), also the user's own git and
 * other people's pushes. This module does, once at start, what git's message asks a person to do,
 * and only when no git process can be holding the lock.
 */

/** A repository whose locks are looked at: its git directory, and its work tree when it has one. */
export interface LockedRepository {
  gitDir: string;
  workTree?: string;
}

/** What was decided for one lock file. */
export interface LockDecision {
  /** Absolute path of the lock file. */
  path: string;
  /** True when it was removed. */
  cleared: boolean;
  /** Why it was removed or kept, for the log. */
  why: string;
}

/** How {@link clearStaleGitLocks} judges a lock. */
export interface StaleLockOptions {
  /**
   * A lock younger than this is looked at once it is this old: a git that is about to release it
   * normally gets the time to do so. Default 2 s.
   */
  minAgeMs?: number;
  /**
   * Where /proc cannot be read (macOS, BSD), nobody can be seen holding a lock: one is removed only when
   * it is at least this old. Default one hour.
   */
  ageWithoutProcMs?: number;
  /** Where the process table lives; default /proc (tests and other mounts). */
  procRoot?: string;
}

/** Folders of a git directory where git keeps its locks (the ref and reflog trees are walked). */
const LOCK_TREES = ["refs", "logs"];
/** Folders whose own `*.lock` files count (commit-graph, multi-pack-index, maintenance). */
const LOCK_FOLDERS = ["", "objects", join("objects", "info"), join("objects", "pack")];

/**
 * Every `*.lock` file git may leave in `gitDir`: at its top (index.lock, HEAD.lock, packed-refs.lock,
 * config.lock, shallow.lock, ORIG_HEAD.lock, ...), under refs/ and logs/ (ref and reflog locks),
 * objects/maintenance.lock, the commit-graph and multi-pack-index locks, and the same for each linked
 * worktree (worktrees/NAME/index.lock). Missing folders are skipped.
 */
export async function gitLockFiles(gitDir: string): Promise<string[]> {
  const out: string[] = [];
  for (const f of LOCK_FOLDERS) out.push(...(await locksIn(join(gitDir, f))));
  for (const t of LOCK_TREES) out.push(...(await locksUnder(join(gitDir, t))));
  for (const w of await dirNames(join(gitDir, "worktrees"))) out.push(...(await locksIn(join(gitDir, "worktrees", w))));
  return out.sort();
}

/**
 * Removes the lock files of `repos` that no live process can be holding, and says for each lock found
 * what was done and why. A lock is kept when a live process has it open (/proc/PID/fd), or when a live
 * git process works in the repository (its working directory is inside the git directory or the work
 * tree, or its command line names the repository): git closes a ref lock's file after writing it and
 * keeps the lock while it finishes its transaction (its reference-transaction and receive-pack hooks
 * run then), so an open descriptor alone does not prove a lock is free. A git process whose working
 * directory cannot be read (another user's) counts as working here. A lock is removed only if it is
 * still the same file that was judged (same inode and time), so a lock taken meanwhile is never touched.
 * Never throws for a lock it cannot read or remove: that lock is reported as kept.
 */
export async function clearStaleGitLocks(repos: readonly LockedRepository[], opts: StaleLockOptions = {}): Promise<LockDecision[]> {
  const found: { repo: LockedRepository; path: string; ino: bigint; mtimeMs: number }[] = [];
  for (const repo of repos) {
    for (const path of await gitLockFiles(repo.gitDir)) {
      const st = await lstat(path, { bigint: true }).catch(() => null);
      if (st?.isFile()) found.push({ repo, path, ino: st.ino, mtimeMs: Number(st.mtimeMs) });
    }
  }
  if (found.length === 0) return [];
  const minAge = opts.minAgeMs ?? 2000;
  const youngest = Math.max(...found.map((l) => l.mtimeMs));
  const wait = youngest + minAge - Date.now();
  if (wait > 0) await sleep(Math.min(wait, minAge));
  const processes = await liveProcesses(opts.procRoot ?? "/proc");
  const decisions: LockDecision[] = [];
  for (const lock of found) {
    const why = processes
      ? holderOf(lock.path, lock.repo, processes)
      : Date.now() - lock.mtimeMs < (opts.ageWithoutProcMs ?? 3_600_000) ? "no process table to check who holds it, and it is less than an hour old" : undefined;
    if (why !== undefined) {
      decisions.push({ path: lock.path, cleared: false, why });
      continue;
    }
    decisions.push(await removeIfUnchanged(lock, processes ? "no live process holds it or works in this repository" : "it is more than an hour old"));
  }
  return decisions;
}

/** What is known of one live process. */
interface ProcessInfo {
  pid: number;
  /** The executable's name (/proc/PID/comm), e.g. `git`, `git-receive-pack`. */
  comm: string;
  /** Its command line's arguments; undefined when unreadable. */
  args: string[] | undefined;
  /** Its working directory; undefined when unreadable (another user's process). */
  cwd: string | undefined;
  /** The files it has open (resolved paths); empty when unreadable. */
  open: string[];
}

/** Every live process but this one, or undefined when there is no readable process table. */
async function liveProcesses(procRoot: string): Promise<ProcessInfo[] | undefined> {
  let names: string[];
  try {
    names = await readdir(procRoot);
    await lstat(join(procRoot, "self"));
  } catch {
    return undefined;
  }
  const out: ProcessInfo[] = [];
  for (const name of names) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    const info = await processInfo(join(procRoot, name), Number(name));
    if (info) out.push(info);
  }
  return out;
}

async function processInfo(dir: string, pid: number): Promise<ProcessInfo | undefined> {
  const stat = await readFile(join(dir, "stat"), "utf8").catch(() => undefined);
  // Gone meanwhile, or a zombie (exited, not yet reaped): it holds nothing.
  if (stat === undefined || stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) === "Z") return undefined;
  const comm = (await readFile(join(dir, "comm"), "utf8").catch(() => "")).trim();
  const args = await readFile(join(dir, "cmdline"), "utf8").then((s) => s.split("\0").filter((a) => a !== ""), () => undefined);
  const cwd = await readlink(join(dir, "cwd")).catch(() => undefined);
  const open: string[] = [];
  const fds = await readdir(join(dir, "fd")).catch(() => [] as string[]);
  for (const fd of fds) {
    const target = await readlink(join(dir, "fd", fd)).catch(() => undefined);
    if (target?.startsWith("/")) open.push(target);
  }
  return { pid, comm, args, cwd, open };
}

/** Why `lock` may still be held by a live process, or undefined when nothing can hold it. */
function holderOf(lock: string, repo: LockedRepository, processes: readonly ProcessInfo[]): string | undefined {
  const opener = processes.find((p) => p.open.includes(lock));
  if (opener) return `process ${opener.pid} (${opener.comm}) has it open`;
  const places = [repo.gitDir, ...(repo.workTree ? [repo.workTree] : [])].map((p) => resolve(p));
  for (const p of processes) {
    if (!isGit(p) || takesNoLocks(p)) continue;
    const named = p.args?.some((a) => places.some((place) => a.includes(place)));
    if (p.cwd === undefined) {
      // Another user's git: where it works is hidden; its command line may still show it is elsewhere.
      if (p.args === undefined || named) return `git process ${p.pid} (${p.comm}) of another user may work in this repository`;
      continue;
    }
    if (named || places.some((place) => inside(p.cwd!, place))) return `git process ${p.pid} (${p.args?.join(" ") ?? p.comm}) works in this repository`;
  }
  return undefined;
}

/** git itself and the programs it runs as its own parts (git-receive-pack, git-upload-pack, git-remote-https, git-lfs). */
function isGit(p: ProcessInfo): boolean {
  return p.comm === "git" || p.comm.startsWith("git-");
}

/**
 * Long-lived git processes that never take a lock: a reader (`cat-file --batch`, the controller's own
 * among them) or a daemon (fsmonitor, credential cache) would otherwise keep every lock forever.
 */
function takesNoLocks(p: ProcessInfo): boolean {
  return (p.args ?? []).some((a) => a === "cat-file" || a === "fsmonitor--daemon" || a === "credential-cache--daemon");
}

function inside(path: string, folder: string): boolean {
  return path === folder || path.startsWith(folder.endsWith(sep) ? folder : `${folder}${sep}`);
}

async function removeIfUnchanged(lock: { path: string; ino: bigint; mtimeMs: number }, why: string): Promise<LockDecision> {
  const now = await lstat(lock.path, { bigint: true }).catch(() => null);
  if (!now) return { path: lock.path, cleared: false, why: "it was released meanwhile" };
  if (now.ino !== lock.ino || Number(now.mtimeMs) !== lock.mtimeMs) return { path: lock.path, cleared: false, why: "it was taken again meanwhile" };
  try {
    await unlink(lock.path);
    return { path: lock.path, cleared: true, why: `${why} (left for ${Math.round((Date.now() - lock.mtimeMs) / 1000)} s)` };
  } catch (err) {
    return { path: lock.path, cleared: false, why: `cannot remove it: ${(err as Error).message}` };
  }
}

async function locksIn(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  return entries.filter((e) => e.isFile() && e.name.endsWith(".lock")).map((e) => join(dir, e.name));
}

async function locksUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  const out: string[] = [];
  for (const e of entries) {
    if (e.isDirectory()) out.push(...(await locksUnder(join(dir, e.name))));
    else if (e.isFile() && e.name.endsWith(".lock")) out.push(join(dir, e.name));
  }
  return out;
}

async function dirNames(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  return entries.filter((e) => e.isDirectory()).map((e) => e.name);
}

/**
 * The repository at a local remote's path: a bare repository (the path holds HEAD), or a work tree
 * with a `.git` folder. Undefined when the path holds neither (not created yet, or not reachable).
 */
export async function localRepositoryAt(path: string): Promise<LockedRepository | undefined> {
  const dotGit = await lstat(join(path, ".git")).catch(() => null);
  if (dotGit?.isDirectory()) return { gitDir: join(path, ".git"), workTree: path };
  const head = await lstat(join(path, "HEAD")).catch(() => null);
  return head ? { gitDir: path } : undefined;
}

/** Where {@link recoverGitLocks} reports. */
export interface LockLog {
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
}

/**
 * Clears what a crashed git left in the sandbox and in local remotes (see {@link clearStaleGitLocks})
 * and logs every lock found: a removed one at info, a kept one as a warning with git's own advice.
 * Resolves with the decisions; never rejects (a lock that cannot be judged is kept and logged).
 */
export async function recoverGitLocks(sandbox: LockedRepository, localRemotes: readonly string[], log: LockLog, opts: StaleLockOptions = {}): Promise<LockDecision[]> {
  const repos = [sandbox];
  for (const path of localRemotes) {
    const repo = await localRepositoryAt(path);
    if (repo) repos.push(repo);
  }
  let decisions: LockDecision[];
  try {
    decisions = await clearStaleGitLocks(repos, opts);
  } catch (err) {
    log.warn(`could not look for git locks left by a crash: ${(err as Error).message}`);
    return [];
  }
  for (const d of decisions) {
    if (d.cleared) log.info(`removed ${d.path}, left by a git that is no longer running: ${d.why}`, { lock: d.path });
    else log.warn(`kept ${d.path}: ${d.why}; git refuses to work on that file while it exists (remove it by hand once no git runs there)`, { lock: d.path });
  }
  return decisions;
}
