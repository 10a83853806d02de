import { mkdir, rename, rm, symlink, writeFile, chmod } from "node:fs/promises";
import { dirname, join } from "node:path";
import { randomBytes } from "node:crypto";
import type { EntryMode, FileEntry } from "./repo.js";

/** What a sandbox commit recorded, per path. */
export interface CommittedPath {
  path: string;
  before?: FileEntry;
  after?: FileEntry;
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
