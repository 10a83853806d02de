import { constants } from "node:fs";
import { access, lstat } from "node:fs/promises";
import { join } from "node:path";
import { stalled, transient, type CascadeError } from "../errors.js";
import { packageRoot } from "../package-root.js";
import { Redactor } from "../redact.js";
import { classifyGitFailure, GitError, runGit, type GitRunOptions } from "./native/index.js";
import { branchRef, type Person, type Repo } from "./repo.js";

/** A remote as the transport needs it. */
export interface RemoteTarget {
  name: string;
  /** An http(s) URL, an ssh URL (`ssh://host/path` or scp-like `[user@]host:path`), or an absolute local path. */
  url: string;
  kind: "http" | "ssh" | "local";
  /** HTTP credentials, handed to git through our askpass helper (never on a command line); none: the user's credential helpers. */
  username?: string;
  password?: string;
  /** How long a fetch or push may go without a sign of progress before it counts as unreachable. */
  timeoutMs: number;
  /** Trust an ssh host key seen for the first time (`StrictHostKeyChecking=accept-new`); a changed key is refused regardless. */
  acceptNewHostKey?: boolean;
}

/** Options every transport call takes. */
export interface TransportOptions {
  /** Caps the remote's own timeout, and bounds the whole call (a stopping controller waits less). */
  timeoutMs?: number;
  /** Names the reflog entries of the tracking refs a fetch moves. */
  who: Person;
  /**
   * Push even when the remote's commit is not an ancestor (only for branches cascade-sync alone moves,
   * after it checked the remote's commit is one it moved away from). The push is a
   * `--force-with-lease`: it happens only while the remote still holds the commit the caller saw there.
   */
  force?: boolean;
  /**
   * With `force`: the commit the caller saw on the remote's branch (null: the branch must not exist).
   * Without it, the one {@link remoteBranchTips} or {@link fetchBranch} last saw there in this process,
   * else the one the remote holds just before the push.
   */
  expectedOld?: string | null;
  /** Hears how many objects a push has written so far, and of how many (from git's `--progress`). */
  onProgress?: (objects: number, total?: number) => void;
}

/**
 * What each remote's branches held when last looked at in this process (`url\0branch` -> commit or
 * null): the expected old value of a forced push whose caller gave none.
 */
const lastSeen = new Map<string, string | null>();

/** How soon a local remote whose folder is missing is looked at again (Stalled, but it may come back by itself). */
const LOCAL_REMOTE_PROBE_MS = 5_000;

/**
 * The remote's commit for each of `branches` (null when it has no such branch), read with one
 * `git ls-remote` without fetching objects. Errors are classified (see {@link remoteError}).
 */
export async function remoteBranchTips(repo: Repo, remote: RemoteTarget, branches: string[], opts: TransportOptions): Promise<Record<string, string | null>> {
  const out: Record<string, string | null> = {};
  for (const b of branches) out[b] = null;
  if (!branches.length) return out;
  try {
    const { stdout } = await runGit(["ls-remote", "--heads", "--", remote.url, ...branches.map(branchRef)], await gitOptions(repo, remote, opts));
    const wanted = new Map(branches.map((b) => [branchRef(b), b]));
    for (const line of stdout.toString("utf8").split("\n")) {
      const [oid, ref] = line.split("\t");
      const branch = ref === undefined ? undefined : wanted.get(ref);
      if (branch !== undefined && oid) out[branch] = oid;
    }
  } catch (err) {
    throw remoteError(remote, "list branches of", err);
  }
  for (const b of branches) lastSeen.set(seenKey(remote, b), out[b] ?? null);
  return out;
}

/**
 * Fetches `branch` from the remote into `refs/remotes/<name>/<branch>` with `git fetch` and returns
 * the remote's commit, or null when the remote has no such branch yet. Errors are classified (see
 * {@link remoteError}).
 */
export async function fetchBranch(repo: Repo, remote: RemoteTarget, branch: string, opts: TransportOptions): Promise<string | null> {
  const tracking = `refs/remotes/${remote.name}/${branch}`;
  const options = await gitOptions(repo, remote, opts);
  try {
    await mirrorRemoteConfig(repo, remote);
    // --no-write-fetch-head: FETCH_HEAD is the user's, and a pass needs only the tracking ref.
    // --progress: a long transfer keeps showing signs of life, so only a silent one hits the timeout.
    await runGit(["fetch", "--no-tags", "--no-write-fetch-head", "--progress", ...(await submoduleFetch(repo)), "--", remote.url, `+${branchRef(branch)}:${tracking}`], options);
  } catch (err) {
    if (err instanceof GitError && /couldn't find remote ref/.test(err.stderr)) {
      lastSeen.set(seenKey(remote, branch), null);
      return null;
    }
    throw remoteError(remote, "fetch", err);
  }
  // The tracking ref git just wrote names a commit; git's own error says otherwise.
  const tip = (await repo.ref(`${tracking}^{commit}`)) ?? (await runGit(["rev-parse", "--verify", "--end-of-options", `${tracking}^{commit}`], { gitDir: repo.gitdir, cwd: repo.gitdir })).stdout.toString("utf8").trim();
  lastSeen.set(seenKey(remote, branch), tip);
  return tip;
}

/**
 * git fetch's own submodule rule (fetch.recurseSubmodules, default on-demand) where the sandbox has
 * submodules (a `.gitmodules` file); none otherwise. Finding out reads the whole index, which costs a
 * fetch 77 ms at 100,000 files (23 ms without) on every pass, though with no `.gitmodules` there is
 * nothing registered to fetch into.
 */
async function submoduleFetch(repo: Repo): Promise<string[]> {
  return (await lstat(join(repo.dir, ".gitmodules")).then(() => true, () => false)) ? [] : ["--no-recurse-submodules"];
}

/**
 * Brings the objects of the remote's `branches` into the repository without writing any ref, the
 * remote's entry in .git/config or FETCH_HEAD (init reads a remote this way before it decides to adopt
 * it: a refusal then leaves refs and config as they were). Every branch must exist on the remote
 * (take them from remoteBranchTips). Errors are classified like fetchBranch's.
 */
export async function fetchObjects(repo: Repo, remote: RemoteTarget, branches: string[], opts: TransportOptions): Promise<void> {
  if (!branches.length) return;
  const options = await gitOptions(repo, remote, opts);
  try {
    await runGit(["fetch", "--no-tags", "--no-write-fetch-head", "--progress", ...(await submoduleFetch(repo)), "--", remote.url, ...branches.map(branchRef)], options);
  } catch (err) {
    throw remoteError(remote, "fetch", err);
  }
}

/**
 * Pushes the local commit `oid` to the remote's `branch` with `git push --porcelain`: as a
 * fast-forward, or with `force` as `--force-with-lease` against the commit the caller saw there.
 * Rejects with Transient `NonFastForward` when the remote moved on (fetch and merge, then push again),
 * Transient `RefConflict` when another push won a race for the ref, Stalled `PushRejected` when the
 * remote's hooks or configuration refuse it (with their message), Stalled `AuthFailed`/`HostKey*`
 * when credentials or ssh trust are missing, Transient `RemoteUnavailable` when it does not answer.
 */
export async function pushBranch(repo: Repo, remote: RemoteTarget, branch: string, oid: string, opts: TransportOptions): Promise<void> {
  const ref = branchRef(branch);
  try {
    const lease: string[] = [];
    if (opts.force) {
      const expected = opts.expectedOld !== undefined ? opts.expectedOld : await expectedTip(repo, remote, branch, opts);
      lease.push(`--force-with-lease=${ref}:${expected ?? ""}`);
    }
    const options = await gitOptions(repo, remote, opts);
    const args = ["push", "--porcelain", "--progress", ...lease, "--", remote.url, `${oid}:${ref}`];
    const { stdout, stderr } = await runGit(args, { ...options, ...(opts.onProgress ? { onStderr: progressReader(opts.onProgress) } : {}) });
    // git exits 0 for some refusals in porcelain mode: the status line ("!") is what counts.
    const text = stdout.toString("utf8");
    if (/^!/m.test(text)) throw classifyGitFailure({ args, exitCode: 0, stderr, stdout: text, redact: options.redact });
    lastSeen.set(seenKey(remote, branch), oid);
  } catch (err) {
    throw remoteError(remote, "push to", err);
  }
}

function seenKey(remote: RemoteTarget, branch: string): string {
  return `${remote.url}\0${branch}`;
}

/** The commit a forced push expects on the remote: the one last seen there, else what it holds now. */
async function expectedTip(repo: Repo, remote: RemoteTarget, branch: string, opts: TransportOptions): Promise<string | null> {
  const key = seenKey(remote, branch);
  if (lastSeen.has(key)) return lastSeen.get(key)!;
  return (await remoteBranchTips(repo, remote, [branch], opts))[branch] ?? null;
}

/** Reads `Writing objects:  45% (9/20)` progress lines as they come. */
function progressReader(onProgress: (objects: number, total?: number) => void): (text: string) => void {
  let pending = "";
  return (text) => {
    pending += text;
    const parts = pending.split(/[\r\n]/);
    pending = parts.pop() ?? "";
    for (const line of parts) {
      const m = /^Writing objects:\s+\d+% \((\d+)\/(\d+)\)/.exec(line);
      if (m) onProgress(Number(m[1]), Number(m[2]));
    }
  };
}

/**
 * How git runs for a remote operation: in the sandbox's repository, without prompts (the gateway's
 * environment, ssh in BatchMode), over the supported protocols only, killed as a process group when it shows no progress for the
 * remote's timeout (or when the caller's cap runs out), with the credentials the config gives
 * handed over through our askpass helper and every secret redacted from what it reports.
 */
async function gitOptions(repo: Repo, remote: RemoteTarget, opts: TransportOptions): Promise<GitRunOptions> {
  const redactor = new Redactor();
  redactor.add(remote.username);
  redactor.add(remote.password);
  return {
    gitDir: repo.gitdir,
    cwd: repo.gitdir,
    env: {
      GIT_COMMITTER_NAME: opts.who.name,
      GIT_COMMITTER_EMAIL: opts.who.email,
      // The transports cascade-sync supports, and no other: never `ext::` (runs a command), `fd::`, or a
      // remote helper named by a URL that arrived in a config committed elsewhere. insteadOf rewrites
      // between these still work.
      GIT_ALLOW_PROTOCOL: "file:http:https:ssh",
      ...(await credentialEnvironment(remote)),
    },
    remote: { acceptNewHostKey: remote.acceptNewHostKey === true },
    idleTimeoutMs: Math.min(remote.timeoutMs, opts.timeoutMs ?? Infinity),
    timeoutMs: opts.timeoutMs ?? 0,
    redact: (t) => redactor.redact(t),
  };
}

/** Where the askpass helper is: bin/ of the package, beside the command itself. */
export function askpassHelper(): string {
  return join(packageRoot(), "bin", "cascade-sync-askpass");
}

/**
 * The environment that hands the config's HTTP credentials to git: our askpass helper, which answers
 * git's questions from these variables (readable only by this user, in /proc/PID/environ), and
 * `GIT_CONFIG_*` entries that empty the credential helper list, so a helper's stored credentials
 * neither win over the config's nor get overwritten with them. Without credentials in the config
 * nothing is added: the user's credential helpers answer, or git fails without prompting.
 */
async function credentialEnvironment(remote: RemoteTarget): Promise<Record<string, string>> {
  if (remote.kind !== "http" || (!remote.username && !remote.password)) return {};
  const helper = askpassHelper();
  try {
    await access(helper, constants.X_OK);
  } catch {
    throw stalled("AskpassMissing", `cascade-sync's credential helper ${helper} is missing or not executable`, `reinstall cascade-sync, or run chmod 755 ${helper}`);
  }
  return {
    GIT_ASKPASS: helper,
    CASCADE_SYNC_ASKPASS_USERNAME: remote.username ?? "",
    CASCADE_SYNC_ASKPASS_PASSWORD: remote.password ?? "",
    GIT_CONFIG_COUNT: "1",
    GIT_CONFIG_KEY_0: "credential.helper",
    GIT_CONFIG_VALUE_0: "",
  };
}

/** Remotes mirrored into a repository's config by this process (`gitdir\0name\0url`): checked once, not on every pass. */
const mirrored = new Set<string>();

/**
 * Mirrors a configured remote into .git/config, so native `git fetch <name>` works too: the URL when it
 * differs, the usual fetch refspec when there is none (a user's own refspecs are left alone). Only a
 * convenience: a failure here never fails the fetch.
 */
async function mirrorRemoteConfig(repo: Repo, remote: RemoteTarget): Promise<void> {
  const key = `${repo.gitdir}\0${remote.name}\0${remote.url}`;
  if (mirrored.has(key)) return;
  const at = { gitDir: repo.gitdir, cwd: repo.gitdir };
  const values = async (name: string) => (await runGit(["config", "--get-all", name], { ...at, okExitCodes: [0, 1] })).stdout.toString("utf8").split("\n").filter(Boolean);
  try {
    const urls = await values(`remote.${remote.name}.url`);
    if (urls.length !== 1 || urls[0] !== remote.url) await runGit(["config", "--replace-all", `remote.${remote.name}.url`, remote.url], at);
    if (!(await values(`remote.${remote.name}.fetch`)).length) await runGit(["config", `remote.${remote.name}.fetch`, `+refs/heads/*:refs/remotes/${remote.name}/*`], at);
    mirrored.add(key);
  } catch {
    // A locked or odd .git/config: tried again on the next fetch.
  }
}

/**
 * The failure of a remote operation as one of our kinds, said about the remote rather than the git
 * command line: the gateway's classification (failure.ts), with a host-key hint that names the
 * remote's own ssh target (an alias resolves through ~/.ssh/config), a local remote's missing
 * repository with how to make it, and git killed for lack of progress as Transient `RemoteUnavailable`.
 */
export function remoteError(remote: RemoteTarget, op: string, err: unknown): CascadeError {
  if (!(err instanceof GitError)) {
    if ((err as CascadeError)?.kind) return err as CascadeError;
    return transient("RemoteUnavailable", `${op} remote ${remote.name}: ${(err as Error)?.message ?? String(err)}`, "retried with backoff", err);
  }
  const url = new Redactor().redact(remote.url);
  const where = `${op} remote ${remote.name} (${url})`;
  const said = err.message.startsWith(err.command) ? err.message.slice(err.command.length).replace(/^:\s*/, "") : err.message;
  let { kind, reason } = err;
  let message = `${where}: ${said}`;
  let hint = err.hint;
  let retryAfterMs: number | undefined;
  if (reason === "GitTimeout") {
    reason = "RemoteUnavailable";
    message = `${where}: remote unreachable: no answer within ${Math.round(remote.timeoutMs / 1000)}s`;
    hint = "retried with backoff; commits wait locally until it is back (remotes[].timeout sets how long to wait)";
  } else if (reason === "HostKeyUnknown") {
    const target = sshTarget(remote.url);
    hint = `run ssh -T ${target} once as the user running cascade-sync and check the fingerprint it shows, or opt in with remotes[].acceptNewHostKey: true (a changed key is still refused)`;
  } else if (reason === "HostKeyChanged") {
    hint = `${err.hint ?? ""}`.replace(/ssh -T \S+/, `ssh -T ${sshTarget(remote.url)}`);
  } else if (reason === "RemoteNotFound" && remote.kind === "local") {
    message = `${where}: ${remote.url} is not a git repository`;
    hint = `create it with \`git init --bare ${remote.url}\`, or fix remotes[].url`;
    // A folder renamed away and back, a disk mounted again: looked at again within seconds (one stat).
    retryAfterMs = LOCAL_REMOTE_PROBE_MS;
  }
  kind = reason === "RemoteUnavailable" ? "Transient" : kind;
  return new GitError(kind, reason, message, {
    command: err.command, exitCode: err.exitCode, stderr: err.stderr, ref: err.ref, lockPath: err.lockPath, host: err.host, hint, cause: err, retryAfterMs,
  });
}

/**
 * What to give `ssh -T` to reach the same server as an ssh remote URL: `[-p PORT ][user@]host` from
 * `ssh://[user@]host[:port]/path`, `[user@]host` (maybe an alias of ~/.ssh/config) from the scp-like
 * `[user@]host:path`.
 */
export function sshTarget(url: string): string {
  const full = /^(?:ssh|git\+ssh|ssh\+git):\/\/(?:([^@/]*)@)?(\[[^\]]+\]|[^:/]+)(?::(\d+))?/i.exec(url);
  if (full) {
    const host = full[2]!.replace(/^\[|\]$/g, "");
    return `${full[3] ? `-p ${full[3]} ` : ""}${full[1] ? `${full[1]}@` : ""}${host}`;
  }
  const scp = /^(?:([^@/:]*)@)?(\[[^\]]+\]|[^:/]+):/.exec(url);
  if (scp) return `${scp[1] ? `${scp[1]}@` : ""}${scp[2]!.replace(/^\[|\]$/g, "")}`;
  return "HOST";
}

/**
 * The remote's refs matching `pattern` (an `ls-remote` pattern such as `refs/cascade-sync/lease/*`),
 * full ref name -> object id, read without fetching. Errors are classified (see {@link remoteError}).
 */
export async function remoteRefs(repo: Repo, remote: RemoteTarget, pattern: string, opts: TransportOptions): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  try {
    const { stdout } = await runGit(["ls-remote", "--", remote.url, pattern], await gitOptions(repo, remote, opts));
    for (const line of stdout.toString("utf8").split("\n")) {
      const [oid, ref] = line.split("\t");
      if (oid && ref && /^[0-9a-f]{40,64}$/.test(oid)) out[ref] = oid;
    }
  } catch (err) {
    throw remoteError(remote, "list refs of", err);
  }
  return out;
}

/**
 * Fetches the remote's `ref` into the local ref `into` (forced: it mirrors whatever the remote holds).
 * Errors are classified (see {@link remoteError}).
 */
export async function fetchRef(repo: Repo, remote: RemoteTarget, ref: string, into: string, opts: TransportOptions): Promise<void> {
  try {
    await runGit(["fetch", "--no-tags", "--no-write-fetch-head", "--", remote.url, `+${ref}:${into}`], await gitOptions(repo, remote, opts));
  } catch (err) {
    throw remoteError(remote, "fetch", err);
  }
}

/** One compare-and-swap of {@link compareAndSwapRefs}: set `ref` to `oid` only while the remote holds `expected` (null: no such ref). */
export interface RefSwap {
  ref: string;
  oid: string;
  expected: string | null;
}

/**
 * Compare-and-swap of several refs on the remote in one `git push --porcelain` (one connection),
 * each with its own `--force-with-lease=REF:EXPECTED`, each judged on its own, or with `atomic` all
 * or none (`git push --atomic`: one ref refused leaves every ref as it was). Resolves each ref ->
 * true when it was set, false when the remote held something else, another push took its lock
 * (another writer won; that ref did not change), or (atomic) another ref of the push was refused.
 * Every other failure is thrown, classified like a branch push's (a hook refusing one ref: Stalled
 * `PushRejected`; a server without atomic pushes: its refusal).
 */
export async function compareAndSwapRefs(repo: Repo, remote: RemoteTarget, swaps: RefSwap[], opts: TransportOptions & { atomic?: boolean }): Promise<Record<string, boolean>> {
  const out: Record<string, boolean> = {};
  if (!swaps.length) return out;
  const options = await gitOptions(repo, remote, opts);
  const args = ["push", "--porcelain", ...(opts.atomic ? ["--atomic"] : []), ...swaps.map((w) => `--force-with-lease=${w.ref}:${w.expected ?? ""}`), "--", remote.url, ...swaps.map((w) => `${w.oid}:${w.ref}`)];
  try {
    // Exit 1: some refs were refused; the porcelain lines say which, and why.
    const { stdout, stderr } = await runGit(args, { ...options, okExitCodes: [0, 1] });
    const text = stdout.toString("utf8");
    // In an atomic push, the refs git did not even try are refused as "atomic push failure": the
    // line that says why (a lost race, a protected branch) is read first.
    const collateral = (line: string) => /\tatomic push fail/.test(line) || /\(atomic push fail/.test(line);
    const lines = text.split("\n");
    for (const line of [...lines.filter((l) => !collateral(l)), ...lines.filter(collateral)]) {
      const [flag, spec, summary = ""] = line.split("\t");
      const ref = spec?.split(":")[1];
      if (flag === undefined || ref === undefined || !swaps.some((w) => w.ref === ref)) continue;
      // A race: our expected value was stale here (`[rejected] (stale info)`), or the remote's ref
      // moved under its own update (`[remote rejected] (failed to update ref)`). Anything else the
      // remote rejected is its refusal (a protected branch answers `[remote rejected] (non-fast-forward)`).
      const refused = summary.startsWith("[remote rejected]") && !/failed to update ref|cannot lock ref|failed to lock|atomic push fail/.test(summary);
      if (flag !== "!") out[ref] = true;
      else if (!refused && /stale info|fetch first|non-fast-forward|failed to update ref|cannot lock ref|failed to lock|already exists|atomic push fail/.test(summary)) out[ref] = false;
      else throw classifyGitFailure({ args, exitCode: 1, stderr, stdout: line, redact: options.redact });
    }
    const unreported = swaps.filter((w) => out[w.ref] === undefined);
    if (unreported.length) throw classifyGitFailure({ args, exitCode: 1, stderr, stdout: text, redact: options.redact });
    return out;
  } catch (err) {
    throw remoteError(remote, "push to", err);
  }
}
