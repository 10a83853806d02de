import { mkdir, rename, rm, symlink, writeFile, chmod } from "node:fs/promises";
import { dirname, join } from "node:path";
import { randomBytes } from "node:crypto";
import type { EntryMode, FileEntry, Repo, TreeDiff } from "./repo.js";
import { updateIndexInfo, type IndexInfo } from "./native/plumbing.js";
import { runGit } from "./native/run.js";

/** What a sandbox commit recorded, per path. */
export interface CommittedPath {
  path: string;
  before?: FileEntry;
  after?: FileEntry;
}

/**
 * Brings the working tree from `from` to the merged result: writes every changed path whose working
 * file still holds exactly what `isUntouched` says it had, atomically (temp file + rename), and
 * sets its index entry with `git update-index --index-info` (git takes the index lock). A path being
 * edited (not untouched) is left as it is and returned, so that the next batch commits the sandbox's
 * version. Never deletes or overwrites an edit. `finalize` (moving the branch) runs after the files
 * are written and before the index is; if it throws, the index is left as it was. Blobs come out
 * through `repo.policy` (encrypted ones decrypted); the encrypted paths are all decrypted before anything
 * is written, so a tampered blob or a missing key stops the whole change, not half of it.
 */
export async function applyToWorktree(
  repo: Repo,
  diff: TreeDiff[],
  isUntouched: (path: string, expected: FileEntry | undefined) => Promise<boolean>,
  finalize: () => Promise<void>,
): Promise<{ written: string[]; skipped: string[] }> {
  const written: string[] = [];
  const skipped: string[] = [];
  for (const d of diff) if (d.after && repo.policy.isEncrypted(d.path)) await repo.readContent(d.path, d.after);
  const entries: IndexInfo[] = [];
  for (const d of diff) {
    if (!(await isUntouched(d.path, d.before))) {
      skipped.push(d.path);
      continue;
    }
    const abs = join(repo.dir, d.path);
    if (!d.after) {
      await rm(abs, { force: true });
      entries.push({ mode: "0", oid: "0".repeat(40), path: d.path });
    } else {
      await writeWorkFile(abs, await repo.readContent(d.path, d.after), d.after.mode);
      entries.push({ mode: d.after.mode, oid: d.after.oid, path: d.path });
    }
    written.push(d.path);
  }
  await finalize();
  // The index entries name what was written (git re-reads the stat data at its next look); an
  // encrypted file holds plaintext while its blob is ciphertext, so native git must trust its entry.
  await updateIndexInfo(repo.git, entries);
  const encrypted = entries.filter((e) => e.mode !== "0" && e.mode !== "120000" && repo.policy.isEncrypted(e.path)).map((e) => e.path);
  if (encrypted.length) await runGit(["update-index", "-z", "--assume-unchanged", "--stdin"], { ...repo.git, stdin: `${encrypted.join("\0")}\0` });
  return { written, skipped };
}

/** Writes a file (or symlink) atomically: a temp file beside it, then rename over the old one. */
export async function writeWorkFile(abs: string, content: Buffer, mode: EntryMode): Promise<void> {
  await mkdir(dirname(abs), { recursive: true });
  const tmp = join(dirname(abs), `.cascade-sync-${randomBytes(6).toString("hex")}.tmp`);
  if (mode === "120000") await symlink(content.toString(), tmp);
  else {
    await writeFile(tmp, content);
    await chmod(tmp, mode === "100755" ? 0o755 : 0o644);
  }
  try {
    await rename(tmp, abs);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}
