import * as fs from "node:fs";
import { access, readdir } from "node:fs/promises";
import { join, resolve } from "node:path";
import git from "isomorphic-git";
import { lockedFs } from "./locked-fs.js";
import { stalled, transient, type CascadeError } from "../errors.js";
import { makeHttpClient } from "./http.js";
import { RefConflictError } from "./refs.js";
import { branchRef, Repo, type Person } from "./repo.js";
import type { ObjectType } from "./pack.js";

/** A remote as the transport needs it. */
export interface RemoteTarget {
  name: string;
  url: string;
  kind: "http" | "local";
  username?: string;
  password?: string;
  /** How long a request may go without an answer before it counts as unreachable. */
  timeoutMs: number;
}

/** Options every transport call takes. */
export interface TransportOptions {
  /** Caps the remote's own timeout (a stopping controller waits less). */
  timeoutMs?: number;
  who: Person;
  /** Push even when the remote's commit is not an ancestor (only for branches cascade-sync alone moves, after it checked the remote's commit is one it moved away from). */
  force?: boolean;
  /** Hears how many objects a push has sent so far (and of how many, when the remote protocol says). */
  onProgress?: (objects: number, total?: number) => void;
}

/**
 * The remote's commit for each of `branches` (null when it has no such branch), read in one request
 * without fetching objects. Errors are classified (see remoteError).
 */
export async function remoteBranchTips(repo: Repo, remote: RemoteTarget, branches: string[], opts: TransportOptions): Promise<Record<string, string | null>> {
  try {
    const out: Record<string, string | null> = {};
    if (remote.kind === "local") {
      const bare = await openLocalRemote(remote);
      for (const b of branches) out[b] = await bare.branchHead(b);
      return out;
    }
    const info = await git.getRemoteInfo({ ...(await httpArgs(repo, remote, opts)) });
    const heads = (info.refs as { heads?: Record<string, string> } | undefined)?.heads ?? {};
    for (const b of branches) out[b] = heads[b] ?? null;
    return out;
  } catch (err) {
    throw remoteError(remote, "list branches of", err);
  }
}

/**
 * Fetches `branch` from the remote into `refs/remotes/<name>/<branch>` and returns the remote's
 * commit, or null when the remote has no such branch yet. Errors are classified (see remoteError).
 */
export async function fetchBranch(repo: Repo, remote: RemoteTarget, branch: string, opts: TransportOptions): Promise<string | null> {
  try {
    if (remote.kind === "local") {
      const bare = await openLocalRemote(remote);
      const tip = await bare.branchHead(branch);
      if (!tip) return null;
      await copyClosure(bare, repo, tip);
      const tracking = `refs/remotes/${remote.name}/${branch}`;
      // Most passes find nothing new: a read is cheaper than a lock that changes nothing.
      if ((await repo.ref(tracking)) !== tip) await repo.setRef(tracking, tip, undefined, `fetch: from ${remote.name}`, opts.who);
      return tip;
    }
    const res = await git.fetch({ ...(await httpArgs(repo, remote, opts)), ref: branch, singleBranch: true, tags: false });
    return res.fetchHead ?? null;
  } catch (err) {
    if (isMissingBranch(err, branch)) return null;
    throw remoteError(remote, "fetch", err);
  }
}

/**
 * Pushes the local commit `oid` to the remote's `branch` as a fast-forward (never forced). Throws a
 * Transient `NonFastForward` when the remote moved on (fetch and merge, then push again), a Stalled
 * error when credentials or the remote's hooks refuse it, Transient when the remote is unreachable.
 */
export async function pushBranch(repo: Repo, remote: RemoteTarget, branch: string, oid: string, opts: TransportOptions): Promise<void> {
  try {
    if (remote.kind === "local") {
      const bare = await openLocalRemote(remote);
      const theirs = await bare.branchHead(branch);
      if (theirs && !opts.force && !(await repo.isAncestor(theirs, oid))) throw nonFastForward(remote, branch);
      await copyClosure(repo, bare, oid, opts.onProgress);
      await bare.setRef(branchRef(branch), oid, theirs, `push: cascade-sync from ${repo.dir}`, opts.who);
      return;
    }
    const onProgress = opts.onProgress;
    const res = await git.push({
      ...(await httpArgs(repo, remote, opts)), ref: branchRef(branch), remoteRef: branchRef(branch), force: opts.force === true,
      ...(onProgress ? { onProgress: (p: { loaded: number; total?: number }) => onProgress(p.loaded, p.total) } : {}),
    });
    if (!res.ok) throw stalled("PushRejected", `remote ${remote.name} refused the push of ${branch}: ${res.error ?? JSON.stringify(res.refs)}`, "the remote's hooks or branch protection refused it; see the remote's message");
  } catch (err) {
    if (err instanceof RefConflictError) throw nonFastForward(remote, branch);
    throw remoteError(remote, "push", err);
  }
}

function nonFastForward(remote: RemoteTarget, branch: string): CascadeError {
  return transient("NonFastForward", `${branch} on remote ${remote.name} has commits that are not here yet`, "they are fetched and merged before the next push");
}

/** What every isomorphic-git call to an HTTP remote takes: our fs, undici, the remote and its credentials. */
async function httpArgs(repo: Repo, remote: RemoteTarget, opts: TransportOptions) {
  await configureRemote(repo, remote);
  const timeoutMs = Math.min(remote.timeoutMs, opts.timeoutMs ?? Infinity);
  return { fs: lockedFs, http: makeHttpClient(timeoutMs), gitdir: repo.gitdir, url: remote.url, remote: remote.name, cache: repo.cache, ...auth(remote) };
}

function auth(remote: RemoteTarget) {
  if (!remote.username && !remote.password) return { onAuth: () => ({ cancel: true }) };
  return {
    onAuth: () => ({ username: remote.username ?? "", password: remote.password ?? "" }),
    // A second 401 means the credentials are wrong: stop instead of asking again.
    onAuthFailure: () => ({ cancel: true }),
  };
}

/** Mirrors a configured remote into .git/config so native `git fetch <name>` works too. */
async function configureRemote(repo: Repo, remote: RemoteTarget): Promise<void> {
  await repo.setConfig(`remote.${remote.name}.url`, remote.url);
  await repo.setConfig(`remote.${remote.name}.fetch`, `+refs/heads/*:refs/remotes/${remote.name}/*`);
}

/**
 * Local remotes opened so far, by absolute path, with the pack indexes they had then. Keeping the
 * Repo keeps isomorphic-git's cache of pack indexes (re-reading them on every push of a packed remote
 * cost more than the push) and the parents of commits already walked. Both are keyed by content
 * (pack names are their checksum, commits their id), so they cannot go stale; a repack (a new set of
 * packs) starts a new Repo, so packs deleted by it are not kept in memory.
 */
const localRemotes = new Map<string, { repo: Repo; packs: string }>();

async function openLocalRemote(remote: RemoteTarget): Promise<Repo> {
  const gitdir = resolve(remote.url);
  try {
    await access(join(gitdir, "objects"));
    await access(join(gitdir, "HEAD"));
  } catch {
    localRemotes.delete(gitdir);
    throw stalled("RemoteNotFound", `remote ${remote.name}: ${remote.url} is not a bare git repository`,
      `create it with \`git init --bare ${remote.url}\`, or fix remotes[].url`);
  }
  const packs = (await readdir(join(gitdir, "objects", "pack")).catch(() => [] as string[])).filter((n) => n.endsWith(".idx")).sort().join("\n");
  const known = localRemotes.get(gitdir);
  if (known?.packs === packs) return known.repo;
  // Its pack files stay open until closed (a pass still using it opens them again).
  known?.repo.close();
  const repo = Repo.bare(gitdir);
  localRemotes.set(gitdir, { repo, packs });
  return repo;
}

/**
 * Copies every object reachable from `tip` that `dst` lacks, children before parents (blobs, then
 * trees, then commits, oldest commit first), so that a crash midway never leaves an object in `dst`
 * whose closure is incomplete; the closure of an object `dst` already has is then complete.
 */
export async function copyClosure(src: Repo, dst: Repo, tip: string, onCopied?: (objects: number) => void): Promise<number> {
  let copied = 0;
  const done = new Set<string>();
  // Loose while few; past 100 objects the rest goes into packs (a 30,000-file commit: a few files).
  const batch = dst.batch();
  const copy = async (oid: string) => {
    // An object src packs whole goes over as its stored bytes (no inflating and deflating again).
    const stored = src.readStored(oid);
    if (stored) await batch.addStored(oid, stored);
    else {
      const { type, object } = await src.readRaw(oid);
      await batch.add(type as ObjectType, object);
    }
    done.add(oid);
    copied++;
    onCopied?.(copied);
  };
  /**
   * Copies tree `oid` and what it names that dst lacks. `basis`: the same folder's tree in a parent
   * commit dst holds (or gets in this copy), so dst holds all it names: the entries unchanged since
   * need no lookup (a 5,000-file commit in a 100,000-file tree then asks about its 5,000 changes,
   * not about every neighbour of them).
   */
  const copyTree = async (oid: string, basis?: string): Promise<void> => {
    if (done.has(oid) || (await dst.hasObject(oid))) return void done.add(oid);
    const before = basis ? new Map((await src.readTree(basis)).map((e) => [e.path, e])) : undefined;
    for (const e of await src.readTree(oid)) {
      const was = before?.get(e.path);
      if (was?.oid === e.oid && was.mode === e.mode) continue;
      if (e.mode === "040000") await copyTree(e.oid, was?.mode === "040000" ? was.oid : undefined);
      else if (e.mode !== "160000" && !done.has(e.oid) && !(await dst.hasObject(e.oid))) await copy(e.oid);
    }
    await copy(oid);
  };
  const stack: { oid: string; expanded: boolean }[] = [{ oid: tip, expanded: false }];
  while (stack.length) {
    const top = stack[stack.length - 1]!;
    if (done.has(top.oid)) { stack.pop(); continue; }
    if (!top.expanded) {
      if (await dst.hasObject(top.oid)) { done.add(top.oid); stack.pop(); continue; }
      top.expanded = true;
      for (const p of await src.commitParents(top.oid)) if (!done.has(p)) stack.push({ oid: p, expanded: false });
    } else {
      stack.pop();
      // Its parents are done by now: dst holds them, or they are in this copy.
      const [parent] = await src.commitParents(top.oid);
      await copyTree(await src.commitTree(top.oid), parent ? await src.commitTree(parent) : undefined);
      await copy(top.oid);
    }
  }
  await batch.finish();
  return copied;
}

function isMissingBranch(err: unknown, branch: string): boolean {
  const e = err as { code?: string; message?: string };
  return e?.code === "NotFoundError" && (e.message ?? "").includes(branch);
}

/** Classifies a remote operation's failure into Stalled (a person must act) or Transient (retry). */
export function remoteError(remote: RemoteTarget, op: string, err: unknown): CascadeError {
  if ((err as CascadeError)?.kind) return err as CascadeError;
  const e = err as { code?: string; message?: string; data?: { statusCode?: number; reason?: string; prettyDetails?: string }; cause?: { code?: string } };
  const where = `${op} ${remote.name} (${remote.url})`;
  const status = e?.data?.statusCode;
  if (e?.code === "UserCanceledError" || status === 401 || status === 403) {
    return stalled("AuthFailed", `${where}: the remote refused the credentials${status ? ` (HTTP ${status})` : ""}`,
      `set remotes[].username/password in the config (by default \${CASCADE_CLIENT_ID} and \${CASCADE_CLIENT_SECRET})`);
  }
  if (status === 404) return stalled("RemoteNotFound", `${where}: no repository at this URL (HTTP 404)`, "check remotes[].url");
  if (e?.code === "PushRejectedError") {
    return transient("NonFastForward", `${where}: the remote has commits that are not here yet`, "they are fetched and merged before the next push");
  }
  if (e?.code === "UnsafeFilepathError") {
    // A tree with "..", an absolute path or .git in it: hostile input, never written and never retried blindly.
    return stalled("UnsafePath", `${where}: the remote holds a commit whose tree has a path that cannot be written safely: ${e.message}`,
      "look at the remote's newest commits and remove or rename that entry there; nothing of it was written");
  }
  if (e?.code === "GitPushError") {
    return stalled("PushRejected", `${where}: the remote refused the push: ${e.data?.prettyDetails ?? e.message}`, "the remote's hooks or branch protection refused it");
  }
  const code = e?.code ?? e?.cause?.code;
  const why = status ? `HTTP ${status}` : code ?? e?.message ?? String(err);
  return transient("RemoteUnavailable", `${where}: remote unreachable: ${why}`, "retried with backoff; commits wait locally until it is back", err);
}
