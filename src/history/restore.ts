/**
 * Putting sandbox paths back as they were at a commit, as ordinary edits of the working folder (the
 * controller then commits them; history is never rewritten). The model is
 * `git restore --source=COMMIT --worktree --no-overlay -- PATH`: every file the commit has under PATH
 * is written as it was there, and every file committed now under PATH that the commit did not have is
 * removed. Untracked and ignored files are left alone, as git leaves them. Files are written by git
 * itself (attributes, eol, filters and LFS as a checkout applies them), except encrypted paths, which
 * are decrypted through the blob policy unless the repository has a git filter for them.
 */
import { mkdir, readdir, readFile, rename, rmdir, unlink, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { randomBytes } from "node:crypto";
import { parseLsTree, runGit, splitNul, worktreeChanges, type GitRepo, type TreeEntry } from "../git/native/index.js";
import { blobOid } from "../git/repo.js";
import type { BlobPolicy } from "../security/blob-policy.js";
import { stalled } from "../errors.js";

/** One file a restore changes. */
export interface RestoreChange {
  path: string;
  /** write: (re)create it as the commit had it; delete: the commit did not have it. */
  action: "write" | "delete";
  /** For write: the blob and mode to write, its size in git (ciphertext for an encrypted path). */
  oid?: string;
  mode?: string;
  size?: number;
  /** True when the file was changed since, false when it was deleted since (write) / created since (delete). */
  existsNow: boolean;
  /** Decrypted by cascade-sync (an encrypted path without a git filter for it). */
  decrypt: boolean;
  /** A security.encrypt path: ciphertext in git, written as plaintext (by git's filter or by cascade-sync). */
  encrypted: boolean;
}

/** What a restore of some paths to one commit would do. */
export interface RestorePlan {
  commit: string;
  head: string;
  changes: RestoreChange[];
  /** Asked paths that exist neither in the commit nor now. */
  unknown: string[];
}

const literal = (repo: GitRepo): GitRepo => ({ ...repo, env: { ...repo.env, GIT_LITERAL_PATHSPECS: "1" } });

/** Paths as pathspecs: the root ("." or "") means no pathspec. */
function pathspecs(paths: readonly string[]): string[] {
  return paths.some((p) => p === "" || p === ".") ? [] : [...paths];
}

/** The files (blobs, symlinks, submodules) of `commit` under `paths`, by path. */
export async function filesAt(repo: GitRepo, commit: string, paths: readonly string[]): Promise<Map<string, TreeEntry>> {
  const { stdout } = await runGit(["ls-tree", "-r", "-l", "-z", "--full-tree", commit, "--", ...pathspecs(paths)], literal(repo));
  return new Map(parseLsTree(stdout).map((e) => [e.path, e]));
}

/** True when `p` is one of `paths` or lies under one of them. */
function under(p: string, paths: readonly string[]): boolean {
  return paths.some((q) => q === "" || q === "." || p === q || p.startsWith(`${q}/`));
}

/**
 * Plans a restore of `paths` to `commit` against the branch head `head` (the committed state: the
 * caller has made sure nothing under `paths` is uncommitted). Refuses with Stalled
 * `EncryptionKeyMissing` when an encrypted file would have to be decrypted without a key.
 */
export async function planRestore(repo: GitRepo, policy: BlobPolicy, head: string, commit: string, paths: readonly string[]): Promise<RestorePlan> {
  const [then, now] = await Promise.all([filesAt(repo, commit, paths), filesAt(repo, head, paths)]);
  const changes: RestoreChange[] = [];
  for (const [p, e] of then) {
    if (e.type === "commit") continue; // a submodule's checkout is its own repository's business
    const cur = now.get(p);
    if (cur && cur.oid === e.oid && cur.mode === e.mode) continue;
    changes.push({ path: p, action: "write", oid: e.oid, mode: e.mode, ...(e.size !== undefined ? { size: e.size } : {}), existsNow: !!cur, decrypt: policy.isEncrypted(p), encrypted: policy.isEncrypted(p) });
  }
  for (const [p, e] of now) if (!then.has(p) && e.type !== "commit") changes.push({ path: p, action: "delete", existsNow: true, decrypt: false, encrypted: false });
  changes.sort((a, b) => (a.path < b.path ? -1 : 1));
  const filtered = await gitFilteredPaths(repo, changes.filter((c) => c.decrypt).map((c) => c.path));
  for (const c of changes) if (filtered.has(c.path)) c.decrypt = false;
  const noKey = changes.filter((c) => c.decrypt && policy.holdsBack(c.path));
  if (noKey.length) {
    throw stalled("EncryptionKeyMissing", `${noKey.map((c) => c.path).join(", ")} ${noKey.length === 1 ? "is" : "are"} stored encrypted and there is no encryption key to decrypt ${noKey.length === 1 ? "it" : "them"}`, "set security.key (or copy the key file `init` made from the machine that has it)");
  }
  const unknown = paths.filter((q) => q !== "" && q !== "." && ![...then.keys(), ...now.keys()].some((p) => under(p, [q])));
  return { commit, head, changes, unknown };
}

/**
 * Paths among `paths` that git itself converts when writing them out: a `filter` attribute naming a
 * driver with a smudge or process command configured (the encryption filter, when it is set up).
 */
async function gitFilteredPaths(repo: GitRepo, paths: readonly string[]): Promise<Set<string>> {
  if (!paths.length) return new Set();
  const { stdout } = await runGit(["check-attr", "-z", "--stdin", "filter"], { ...repo, stdin: paths.join("\0") + "\0", env: { ...repo.env } }).catch(() => ({ stdout: Buffer.alloc(0) }));
  const recs = splitNul(stdout);
  const drivers = new Map<string, string>();
  for (let i = 0; i + 2 < recs.length; i += 3) drivers.set(recs[i]!, recs[i + 2]!);
  const configured = new Set<string>();
  for (const d of new Set(drivers.values())) {
    if (d === "unspecified" || d === "unset" || d === "set") continue;
    const { stdout: v } = await runGit(["config", "--get-regexp", `^filter\\.${d.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\.(smudge|process)$`], { ...repo, okExitCodes: [0, 1] });
    if (v.length) configured.add(d);
  }
  return new Set([...drivers].filter(([, d]) => configured.has(d)).map(([p]) => p));
}

/**
 * Files under `paths` whose working copy differs from what is committed at the branch head: git
 * status (untracked included, ignored not), plus encrypted files, which git does not compare (their
 * index entries hold ciphertext), compared here by encrypting them again.
 */
export async function uncommittedUnder(repo: GitRepo, dir: string, policy: BlobPolicy, head: string, paths: readonly string[]): Promise<string[]> {
  const dirty = new Set<string>();
  for (const e of await worktreeChanges(repo, pathspecs(paths))) if (!(policy.isEncrypted(e.path) && e.kind !== "untracked")) dirty.add(e.path);
  for (const [p, e] of await filesAt(repo, head, paths)) {
    if (!policy.isEncrypted(p) || e.type !== "blob" || policy.holdsBack(p)) continue;
    const content = await readFile(join(dir, p)).catch(() => undefined);
    if (!content || blobOid(policy.blobContent(p, content)) !== e.oid) dirty.add(p);
  }
  return [...dirty].sort();
}

/**
 * Writes the plan into the working folder: deletions first (a file may give way to a folder), then
 * git writes the files it can (one `git restore` for all of them), then the encrypted ones are
 * decrypted and written here. Folders left empty by a deletion are removed, up to the restored path.
 */
export async function applyRestore(repo: GitRepo, dir: string, policy: BlobPolicy, plan: RestorePlan, paths: readonly string[]): Promise<void> {
  for (const c of plan.changes.filter((x) => x.action === "delete")) {
    await unlink(join(dir, c.path)).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== "ENOENT") throw e;
    });
    await pruneEmptyParents(dir, c.path, paths);
  }
  const byGit = plan.changes.filter((c) => c.action === "write" && !c.decrypt).map((c) => c.path);
  if (byGit.length) {
    await runGit(["restore", `--source=${plan.commit}`, "--worktree", "--no-overlay", "--pathspec-from-file=-", "--pathspec-file-nul"], { ...literal(repo), stdin: byGit.join("\0") + "\0" });
  }
  for (const c of plan.changes.filter((x) => x.action === "write" && x.decrypt)) {
    const { stdout } = await runGit(["cat-file", "blob", c.oid!], repo);
    const plaintext = policy.fromGit(c.path, stdout);
    await mkdir(dirname(join(dir, c.path)), { recursive: true });
    const tmp = join(dirname(join(dir, c.path)), `.cascade-restore-${randomBytes(4).toString("hex")}.tmp`);
    await writeFile(tmp, plaintext, { mode: c.mode === "100755" ? 0o755 : 0o644 });
    await rename(tmp, join(dir, c.path));
  }
}

async function pruneEmptyParents(dir: string, path: string, roots: readonly string[]): Promise<void> {
  let d = dirname(path);
  while (d !== "." && d !== "" && !roots.includes(d)) {
    const entries = await readdir(join(dir, d)).catch(() => undefined);
    if (!entries || entries.length) return;
    await rmdir(join(dir, d)).catch(() => undefined);
    d = dirname(d);
  }
}
