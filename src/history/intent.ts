/**
 * How `restore` tells the controller what its edits are: a small file per restore under
 * `.git/cascade-sync/restores/` (the paths asked for, the moment, the commit, the files it changes).
 * The sandbox reconciler waits while one is still being written out, gives the batch holding its files
 * the message `restore: <paths> as of <time> (<commit>)`, and removes it once all of them are committed.
 */
import { randomBytes } from "node:crypto";
import { mkdir, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { runtimeDir } from "../runtime.js";

/** One restore, as its intent file holds it. */
export interface RestoreIntent {
  id: string;
  /** The paths as asked for, relative to the sandbox root ("." for all of it). */
  paths: string[];
  /** The moment as shown to the person (local time of the restore command). */
  at: string;
  /** The sandbox commit restored from. */
  commit: string;
  /** The files it writes or deletes, still to be committed. */
  changes: string[];
  /** `writing` until every file is written: the controller does not commit a half-written restore. */
  state: "writing" | "ready";
  pid: number;
  /** ms since the epoch. */
  createdAt: number;
}

/** A restore still being written is waited for at most this long (its command may have died). */
export const WRITING_GRACE_MS = 2 * 60_000;
/** An intent whose files never got committed (put back by hand meanwhile) is forgotten after this long. */
const FORGET_AFTER_MS = 24 * 3_600_000;

/** The folder of intent files. */
export function intentDir(gitdir: string): string {
  return join(runtimeDir(gitdir), "restores");
}

/** Writes (or replaces) an intent file atomically. */
export async function writeIntent(gitdir: string, intent: RestoreIntent): Promise<void> {
  const dir = intentDir(gitdir);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = join(dir, `.${intent.id}.${randomBytes(4).toString("hex")}.tmp`);
  await writeFile(tmp, JSON.stringify(intent), { mode: 0o600 });
  await rename(tmp, join(dir, `${intent.id}.json`));
}

/** Removes an intent file (gone already is fine). */
export async function removeIntent(gitdir: string, id: string): Promise<void> {
  await rm(join(intentDir(gitdir), `${id}.json`), { force: true });
}

/** A fresh id for an intent: sortable by time. */
export function newIntentId(now: number): string {
  return `${now.toString(36)}-${randomBytes(3).toString("hex")}`;
}

/** The intent files present, oldest first; unreadable ones (half a write, by hand) are skipped. */
export async function readIntents(gitdir: string): Promise<RestoreIntent[]> {
  const names = await readdir(intentDir(gitdir)).catch(() => [] as string[]);
  const out: RestoreIntent[] = [];
  for (const n of names.filter((x) => x.endsWith(".json")).sort()) {
    try {
      const i = JSON.parse(await readFile(join(intentDir(gitdir), n), "utf8")) as RestoreIntent;
      if (Array.isArray(i.paths) && Array.isArray(i.changes) && typeof i.commit === "string") out.push(i);
    } catch {
      // Not ours to judge: an intent that cannot be read only loses its message.
    }
  }
  return out;
}

/** The restore still writing its files (the batch waits for it), if any. */
export function restoreInProgress(intents: readonly RestoreIntent[], now: number): RestoreIntent | undefined {
  return intents.find((i) => i.state === "writing" && now - i.createdAt < WRITING_GRACE_MS);
}

/** `restore: <paths> as of <time> (<commit>)`: the subject of a restore's batch. */
export function restoreSubject(i: Pick<RestoreIntent, "paths" | "at" | "commit">): string {
  return `restore: ${i.paths.join(", ")} as of ${i.at} (${i.commit.slice(0, 7)})`;
}

/**
 * The commit message for a batch of `committed` paths when it holds a restore's files: the restore's
 * subject, the commit restored from, then `body` (the batch's file list). Undefined for any other batch.
 */
export function restoreMessage(intents: readonly RestoreIntent[], committed: readonly string[], body: string): string | undefined {
  const set = new Set(committed);
  const mine = intents.filter((i) => i.changes.some((p) => set.has(p)));
  if (!mine.length) return undefined;
  const subject = mine.map(restoreSubject).join("; ");
  return `${subject}\n\n${mine.map((i) => `restored from ${i.commit}`).join("\n")}\n\n${body}\n`;
}

/**
 * After a commit of `committed` paths: each intent loses the files now committed and is removed when
 * none is left (or when it is too old to matter).
 */
export async function settleIntents(gitdir: string, intents: readonly RestoreIntent[], committed: readonly string[], now: number): Promise<void> {
  const set = new Set(committed);
  for (const i of intents) {
    const left = i.changes.filter((p) => !set.has(p));
    if (!left.length || now - i.createdAt > FORGET_AFTER_MS) await removeIntent(gitdir, i.id);
    else if (left.length !== i.changes.length) await writeIntent(gitdir, { ...i, changes: left });
  }
}
