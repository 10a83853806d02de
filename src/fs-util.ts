/**
 * Writing one of our own small files (a journal, a manifest) so that a crash or a power loss leaves the
 * old content or the new one, never part of either. Files in the sandbox are written elsewhere
 * (src/git/commit.ts): those are the user's, with git's modes.
 */
import { randomBytes } from "node:crypto";
import { mkdir, open, rename, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";

/** How {@link writeFileDurably} writes. */
export interface DurableWriteOptions {
  /** The new file's permission bits (the umask still applies). Default 0o666, as for any new file. */
  mode?: number;
  /** Creates the parent folder first (recursively). Default false: a missing folder rejects with ENOENT. */
  makeFolder?: boolean;
  /**
   * Also fsyncs the folder after the rename, so the new name itself survives a power loss, not only
   * the bytes. Default false (the rename is atomic, and durable once the file system flushes it).
   */
  syncFolder?: boolean;
}

/**
 * Replaces `file` with `data`: a temp file beside it (`.<name>.<pid>.<random>.tmp`, created
 * exclusively with `mode`), written and fsynced, then renamed over `file`. Readers see the old file or
 * the new one, and once this resolves the new content is on disk. Rejects with the file system's error;
 * the temp file is removed again unless the failure came after the rename (the folder's fsync).
 */
export async function writeFileDurably(file: string, data: string | Buffer, opts: DurableWriteOptions = {}): Promise<void> {
  const folder = dirname(file);
  if (opts.makeFolder) await mkdir(folder, { recursive: true });
  // Unique per write, so two writers never share a temp file; the name tells whose it was if one is left behind.
  const tmp = join(folder, `.${basename(file)}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`);
  try {
    const fh = await open(tmp, "wx", opts.mode ?? 0o666);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  if (opts.syncFolder) await syncFolder(folder);
}

/** fsyncs a folder, so that a rename in it is on disk. Rejects when the file system cannot. */
async function syncFolder(folder: string): Promise<void> {
  const fh = await open(folder, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
