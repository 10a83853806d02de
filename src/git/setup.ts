import { lstat, type BigIntStats } from "node:fs";
import { mkdir, readdir, readFile, readlink } from "node:fs/promises";
import { promisify } from "node:util";
import { join } from "node:path";
import { CascadeError } from "../errors.js";
import { blobOid, branchRef, type FileEntry, type Person, type Repo, type TreeDiff } from "./repo.js";
import { writeWorkFile } from "./commit.js";
import { RefConflictError } from "./native/failure.js";
import { runGit } from "./native/run.js";

const lstatBig = promisify(lstat) as unknown as (p: string, o: { bigint: true }) => Promise<BigIntStats>;

/**
 * Creates an empty repository with the installed git (`git init`), so it gets git's own defaults for
 * the platform (core.ignorecase, core.symlinks, core.filemode as git probes them): at `path` with its
 * `.git` (a work tree), or at `path` itself when `bare`. HEAD points at the unborn `defaultBranch`.
 * Rejects with the gateway's classified GitError (a folder it may not write, say).
 */
export async function createRepository(path: string, opts: { bare: boolean; defaultBranch: string }): Promise<void> {
  await mkdir(path, { recursive: true });
  await runGit(["init", "-q", ...(opts.bare ? ["--bare"] : []), "-b", opts.defaultBranch, "--", path], { cwd: path });
}

/**
 * A checkout was refused because it would have overwritten or deleted something that is not
 * recorded in the commit being left (a local edit, an untracked or ignored file, a folder in the
 * way, a submodule). Stalled (reason `CheckoutConflict`); nothing was changed. `paths` lists them.
 */
export class CheckoutConflictError extends CascadeError {
  constructor(
    readonly branch: string,
    readonly paths: string[],
  ) {
    super("Stalled", "CheckoutConflict", `checking out ${branch} would overwrite or delete ${paths.length} path(s) that are not as the current commit has them: ${preview(paths)}; nothing was changed`, {
      hint: "commit or move them away, then try again",
    });
  }
}

/**
 * Switches the work tree from commit `from` (null: an unborn HEAD) to `branch`, like `git checkout
 * branch` but stricter: every path the two commits differ in must be on disk exactly as `from`
 * records it as git sees it (or absent, where `from` has nothing), so that nothing the user has is
 * overwritten or deleted, ignored files included; an encrypted path is compared through `repo.policy`.
 * Paths the commits agree on are left alone (with any local edit). git writes the files and the
 * index (`git read-tree -m -u`: attributes, filters, symlinks and modes as git checks out), except
 * encrypted paths, which are written through `repo.policy` (decrypted, or left as ciphertext when
 * this sandbox's key cannot decrypt them); then HEAD points at the branch (`git symbolic-ref`, logged).
 *
 * Returns the paths written and deleted. Throws CheckoutConflictError (nothing changed) when a path
 * is not as `from` has it, RefConflictError when HEAD no longer resolves to `from`, Transient
 * `LockBusy` when the index is locked, Stalled `EncryptionKeyMissing` when an encrypted file cannot be
 * decrypted (nothing changed).
 */
export async function checkoutBranch(
  repo: Repo,
  opts: { from: string | null; branch: string; committer: Person; trustExecutableBit: boolean; message: string },
): Promise<{ written: string[]; deleted: string[] }> {
  const to = await repo.branchHead(opts.branch);
  if (!to) throw new CascadeError("Stalled", "BranchMissing", `branch ${opts.branch} does not exist; nothing was changed`);
  const head = await repo.ref("HEAD");
  if (head !== opts.from) throw new RefConflictError(`HEAD is at ${head ?? "nothing"}, not at ${opts.from ?? "nothing"}; nothing was changed`, { command: "checkout", stderr: "", ref: "HEAD" });
  const diff = await repo.diffTrees(opts.from ? await repo.commitTree(opts.from) : null, await repo.commitTree(to));
  const conflicts = await findConflicts(repo, diff, opts.trustExecutableBit);
  if (conflicts.length) throw new CheckoutConflictError(opts.branch, conflicts);
  // An encrypted file is written as git's smudge filter would: decrypted, or its ciphertext when this
  // sandbox cannot decrypt it (no key, another person's key), so a team's history never fails a checkout.
  const encrypted = diff.filter((d) => d.after && d.after.mode !== "120000" && repo.policy.isEncrypted(d.path));
  const plaintext = new Map<string, Buffer>();
  for (const d of encrypted) plaintext.set(d.path, repo.policy.toWorkTree(d.path, await repo.readBlob(d.after!.oid)));

  await runGit(["read-tree", "-m", "-u", ...(opts.from ? [opts.from] : []), to], repo.git);
  // git wrote the ciphertext (the filter is registered later by init): the file gets the plaintext,
  // which git's cascade-sync clean filter turns back into the same blob.
  for (const d of encrypted) await writeWorkFile(join(repo.dir, d.path), plaintext.get(d.path)!, d.after!.mode);
  await repo.setSymbolicRef("HEAD", branchRef(opts.branch), opts.message, opts.committer);
  return { written: diff.filter((d) => d.after).map((d) => d.path), deleted: diff.filter((d) => !d.after).map((d) => d.path) };
}

/** The paths of `diff` whose disk state is not what the checkout may replace (see checkoutBranch). */
async function findConflicts(repo: Repo, diff: TreeDiff[], trustExecutableBit: boolean): Promise<string[]> {
  const leaving = new Set(diff.filter((d) => d.before && !d.after).map((d) => d.path));
  const conflicts = new Set<string>();
  const compare: { path: string; expected: FileEntry }[] = [];
  for (const d of diff) {
    if (d.before?.mode === "160000" || d.after?.mode === "160000") {
      conflicts.add(d.path);
      continue;
    }
    const abs = join(repo.dir, d.path);
    const st = await lstatBig(abs, { bigint: true }).catch(() => null);
    if (st?.isDirectory()) {
      // A folder where a file arrives: only fine when everything in it is leaving anyway.
      if (!d.after || !(await filesUnder(abs, d.path)).every((p) => leaving.has(p))) conflicts.add(d.path);
    } else if (!d.before) {
      if (st) conflicts.add(d.path);
    } else if (!st || !(st.isFile() || st.isSymbolicLink()) || st.isSymbolicLink() !== (d.before.mode === "120000")) {
      conflicts.add(d.path);
    } else if (trustExecutableBit && st.isFile() && ((Number(st.mode) & 0o100) !== 0) !== (d.before.mode === "100755")) {
      conflicts.add(d.path);
    } else {
      compare.push({ path: d.path, expected: d.before });
    }
    if (!d.after) continue;
    // A file (or symlink) where a folder of an arriving path must be, and it is not leaving.
    const parts = d.path.split("/");
    for (let i = 1; i < parts.length; i++) {
      const prefix = parts.slice(0, i).join("/");
      const pst = await lstatBig(join(repo.dir, prefix), { bigint: true }).catch(() => null);
      if (pst && !pst.isDirectory() && !leaving.has(prefix)) conflicts.add(prefix);
      if (!pst || !pst.isDirectory()) break;
    }
  }
  const onDisk = await blobsOnDisk(repo, compare.map((c) => c.path));
  for (const c of compare) if (onDisk.get(c.path) !== c.expected.oid) conflicts.add(c.path);
  return [...conflicts].sort();
}

/**
 * The blob each file (or symlink) would be stored as now: what `git hash-object --stdin-paths` gives
 * (attributes and clean filters applied, as `git add` would), a symlink's target hashed as git hashes
 * it, an encrypted path's plaintext through the policy (deterministic with the key). A path that cannot
 * be read is left out.
 */
async function blobsOnDisk(repo: Repo, paths: string[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const plain: string[] = [];
  for (const p of paths) {
    const abs = join(repo.dir, p);
    const st = await lstatBig(abs, { bigint: true }).catch(() => null);
    if (!st) continue;
    if (st.isSymbolicLink() || (repo.policy.isEncrypted(p) && st.isFile())) {
      const content = await readContent(abs, st).catch(() => null);
      if (content === null) continue;
      out.set(p, blobOid(st.isSymbolicLink() ? content : repo.policy.blobContent(p, content)));
    } else if (/\n/.test(p)) {
      // hash-object reads paths line by line: such a name is hashed on its own.
      const { stdout } = await runGit(["hash-object", `--path=${p}`, "--stdin"], { ...repo.git, stdin: await readContent(abs, st) });
      out.set(p, stdout.toString("utf8").trim());
    } else plain.push(p);
  }
  if (plain.length) {
    const { stdout } = await runGit(["hash-object", "--stdin-paths"], { ...repo.git, stdin: `${plain.join("\n")}\n` });
    const oids = stdout.toString("utf8").split("\n");
    plain.forEach((p, i) => out.set(p, oids[i]!));
  }
  return out;
}

/** Every non-folder under `abs` (relative paths, prefixed with `rel/`), and `rel/` for an empty folder (never leaving). */
async function filesUnder(abs: string, rel: string): Promise<string[]> {
  const out: string[] = [];
  const entries = await readdir(abs, { withFileTypes: true });
  if (!entries.length) out.push(`${rel}/`);
  for (const e of entries) {
    if (e.isDirectory()) out.push(...(await filesUnder(join(abs, e.name), `${rel}/${e.name}`)));
    else out.push(`${rel}/${e.name}`);
  }
  return out;
}

function preview(paths: string[]): string {
  return paths.length > 10 ? `${paths.slice(0, 10).join(", ")} and ${paths.length - 10} more` : paths.join(", ");
}

/**
 * Writes the files of `commit` into a work tree that has no history yet (the adoption of a remote's
 * branch by init), never replacing or deleting anything already there: a path that exists on disk
 * (or whose folder is taken by a file) is left as it is and listed in `kept`, so that it is
 * committed on top as the sandbox's own content. Every encrypted path of the commit is decrypted
 * through `repo.policy` before anything is written (a missing key or a tampered blob changes nothing).
 * The index becomes the commit's tree (`git read-tree`), and git writes the other files
 * (`git checkout-index -u`: attributes, filters, symlinks and modes as git checks out); encrypted
 * ones are written through the policy (as the cascade-sync smudge filter would); submodules are not written.
 *
 * Returns the paths written and kept. Throws Stalled `EncryptionKeyMissing`/`EncryptedBlobTampered`
 * from the policy (nothing written), Transient `LockBusy` when the index is locked.
 */
export async function populateWorkTree(repo: Repo, commit: string): Promise<{ written: string[]; kept: string[] }> {
  const files = [...(await repo.flattenTree(await repo.commitTree(commit)))].filter(([, e]) => e.mode !== "160000");
  const isEncrypted = (path: string, e: FileEntry) => e.mode !== "120000" && repo.policy.isEncrypted(path);
  const plaintext = new Map<string, Buffer>();
  for (const [path, e] of files) if (isEncrypted(path, e)) plaintext.set(path, repo.policy.toWorkTree(path, await repo.readBlob(e.oid)));
  const written: string[] = [];
  const kept: string[] = [];
  for (const [path] of files) ((await occupied(repo.dir, path)) ? kept : written).push(path);
  await runGit(["read-tree", commit], repo.git);
  const byGit = written.filter((p) => !plaintext.has(p));
  if (byGit.length) await runGit(["checkout-index", "-u", "-z", "--stdin"], { ...repo.git, stdin: `${byGit.join("\0")}\0` });
  const mine = written.filter((p) => plaintext.has(p));
  for (const p of mine) await writeWorkFile(join(repo.dir, p), plaintext.get(p)!, files.find(([q]) => q === p)![1].mode);
  return { written, kept };
}

/** True when `rel` exists on disk, or one of its folders is something other than a folder. */
async function occupied(root: string, rel: string): Promise<boolean> {
  const parts = rel.split("/");
  for (let i = 1; i <= parts.length; i++) {
    const st = await lstatBig(join(root, ...parts.slice(0, i)), { bigint: true }).catch(() => null);
    if (!st) return false;
    if (i === parts.length || !st.isDirectory()) return true;
  }
  return false;
}

/** A file's blob content: its bytes, or a symlink's target; `st` is its lstat from just before. */
async function readContent(abs: string, st: { isSymbolicLink(): boolean }): Promise<Buffer> {
  return st.isSymbolicLink() ? readlink(abs, { encoding: "buffer" }) : readFile(abs);
}
