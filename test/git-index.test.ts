import { gitFixed } from "./helpers/git.js";
import { appendFile, chmod, lstat, mkdir, mkdtemp, readFile, rm, symlink, unlink, utimes, writeFile } from "node:fs/promises";
import { createHash } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { LockBusyError } from "../src/git/lockfile.js";
import {
  comparePaths,
  CorruptIndexError,
  entryFromStat,
  isStatClean,
  parseIndex,
  readIndex,
  UnsupportedIndexError,
  updateIndex,
  writeIndex,
  type GitIndex,
  type IndexEntry,
} from "../src/git/index-file.js";

const run = gitFixed;
async function git(cwd: string, ...args: string[]): Promise<string> {
  return (await run(cwd, args)).stdout;
}

let root = "";
let repo = "";
let gitdir = "";
let n = 0;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "cascade-index-"));
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/**
 * Past times, so that entries git or we write are never racily clean (deterministic stat checks). Each
 * write gets its own second: git built without USE_NSEC compares whole seconds only and would miss a
 * same-size edit that kept the mtime.
 */
const PAST = new Date("2024-01-02T03:04:05.678Z");
let tick = 0;
function past(): Date {
  return new Date(PAST.getTime() + 1000 * ++tick);
}

async function put(rel: string, content: string, opts: { exec?: boolean; past?: boolean } = {}): Promise<void> {
  const file = join(repo, rel);
  await mkdir(join(file, ".."), { recursive: true });
  await writeFile(file, content);
  if (opts.exec) await chmod(file, 0o755);
  if (opts.past ?? true) {
    const t = past();
    await utimes(file, t, t);
  }
}

beforeEach(async () => {
  repo = join(root, `repo${n++}`);
  await mkdir(repo);
  await git(repo, "init", "-q", "-b", "develop");
  gitdir = join(repo, ".git");
  await put("a.txt", "alpha\n");
  await put("dir/b.txt", "bravo\n");
  await put("dir/sub/c.txt", "charlie\n");
  await put("run.sh", "#!/bin/sh\necho hi\n", { exec: true });
  await put("ünïcödé 😀.txt", "unicode\n");
  await put("d.txt", "delta\n");
  await symlink("a.txt", join(repo, "link"));
  await git(repo, "add", "-A");
  await git(repo, "commit", "-q", "-m", "initial");
});

/** `git ls-files -s` as "mode oid stage\tpath" lines. */
async function lsFiles(): Promise<string[]> {
  const out = await git(repo, "ls-files", "-s", "-z");
  return out.split("\0").filter((l) => l !== "");
}

function ours(index: GitIndex): string[] {
  const all = [...index.entries.values(), ...index.conflicts];
  all.sort((a, b) => comparePaths(a.path, b.path) || a.flags.stage - b.flags.stage);
  return all.map((e) => `${e.mode.toString(8)} ${e.oid} ${e.flags.stage}\t${e.path}`);
}

async function hashObject(rel: string): Promise<string> {
  return (await git(repo, "hash-object", "-w", "--", rel)).trim();
}

async function status(): Promise<string[]> {
  return (await git(repo, "status", "--porcelain=v1", "-z")).split("\0").filter((l) => l !== "");
}

async function fsckClean(): Promise<void> {
  const r = await run(repo, ["fsck", "--strict", "--no-progress"], true);
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
}

async function versionOnDisk(): Promise<number> {
  return (await readFile(join(gitdir, "index"))).readUInt32BE(4);
}

describe("readIndex", () => {
  it("returns an empty index when there is no index file", async () => {
    await rm(join(gitdir, "index"));
    const index = await readIndex(gitdir);
    expect(index.entries.size).toBe(0);
    expect(index.mtime).toBeNull();
  });

  it("reads a v2 index written by git: same paths, oids, modes and stat data", async () => {
    const index = await readIndex(gitdir);
    expect(index.version).toBe(2);
    expect(ours(index)).toEqual(await lsFiles());
    expect(index.entries.get("run.sh")?.mode).toBe(0o100755);
    expect(index.entries.get("link")?.mode).toBe(0o120000);
    expect(index.extensions.map((x) => x.signature)).toContain("TREE");
    for (const entry of index.entries.values()) {
      const st = await lstat(join(repo, entry.path), { bigint: true });
      expect(entryFromStat(entry.path, st, entry.oid, entry.mode)).toEqual(entry);
      expect(entryFromStat(entry.path, st, entry.oid)).toEqual(entry); // mode derived from the stat
      expect(isStatClean(entry, st, index.mtime)).toBe(true);
    }
  });

  it("reads a v3 index with an intent-to-add entry", async () => {
    await put("new.txt", "new\n");
    await git(repo, "add", "-N", "new.txt");
    const index = await readIndex(gitdir);
    expect(index.version).toBe(3);
    expect(index.entries.get("new.txt")?.flags).toMatchObject({ intentToAdd: true, extended: true, stage: 0 });
    expect(ours(index)).toEqual(await lsFiles());
  });

  it("reads a v4 (prefix-compressed) index", async () => {
    for (let i = 0; i < 30; i++) await put(`deep/nested/path/number-${i}/file-${i}.txt`, `${i}\n`);
    await git(repo, "add", "-A");
    await git(repo, "update-index", "--index-version", "4");
    expect(await versionOnDisk()).toBe(4);
    const index = await readIndex(gitdir);
    expect(index.version).toBe(4);
    expect(ours(index)).toEqual(await lsFiles());
  });

  it("reads merge conflicts (stages 1-3) into conflicts", async () => {
    await git(repo, "checkout", "-q", "-b", "other");
    await put("a.txt", "other\n");
    await git(repo, "commit", "-q", "-am", "other");
    await git(repo, "checkout", "-q", "develop");
    await put("a.txt", "mine\n");
    await git(repo, "commit", "-q", "-am", "mine");
    await run(repo, ["merge", "-q", "other"], true);
    const index = await readIndex(gitdir);
    expect(index.conflicts.map((c) => `${c.flags.stage} ${c.path}`)).toEqual(["1 a.txt", "2 a.txt", "3 a.txt"]);
    expect(index.entries.has("a.txt")).toBe(false);
    expect(ours(index)).toEqual(await lsFiles());
  });

  it("detects a corrupted checksum", async () => {
    const file = join(gitdir, "index");
    const buf = await readFile(file);
    buf[40] = buf[40]! ^ 0xff; // inside the first entry's data
    await writeFile(file, buf);
    const err = await readIndex(gitdir).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CorruptIndexError);
    expect((err as Error).message).toMatch(/checksum/);
    expect((err as CorruptIndexError).hint).toMatch(/git reset/);
  });

  it("refuses an index whose entries are out of order or listed twice, with a hint that rebuilds it", async () => {
    const file = join(gitdir, "index");
    const good = await readFile(file);
    // a.txt and d.txt: the first two entries, 72 bytes each (62 fixed + 5-byte name + padding).
    expect(good.toString("latin1", 12 + 62, 12 + 67)).toBe("a.txt");
    expect(good.toString("latin1", 84 + 62, 84 + 67)).toBe("d.txt");
    const cases: [string, Buffer, RegExp][] = [
      ["out of order", Buffer.concat([good.subarray(0, 12), good.subarray(84, 156), good.subarray(12, 84), good.subarray(156)]), /"d\.txt" is out of order|"a\.txt" is out of order/],
      ["listed twice", Buffer.concat([good.subarray(0, 12), good.subarray(12, 84), good.subarray(12, 84), good.subarray(156)]), /"a\.txt" is listed twice/],
    ];
    for (const [what, bad, message] of cases) {
      createHash("sha1").update(bad.subarray(0, bad.length - 20)).digest().copy(bad, bad.length - 20);
      await writeFile(file, bad);
      // git 2.39 reads it without complaint but finds entries by binary search, so its answers about
      // such an index are wrong (`git status` calls a listed-twice a.txt added and d.txt deleted).
      const err = await readIndex(gitdir).catch((e: unknown) => e);
      expect(err, what).toBeInstanceOf(CorruptIndexError);
      expect((err as Error).message, what).toMatch(message);
      // The hint's command rebuilds a good index.
      expect((err as CorruptIndexError).hint).toContain("rm");
      await unlink(file);
      await git(repo, "reset", "-q");
      expect(ours(await readIndex(gitdir)), what).toEqual(await lsFiles());
      expect(await status(), what).toEqual([]);
    }
  });

  it("refuses a path that is not valid UTF-8, naming it", async () => {
    const file = join(gitdir, "index");
    const buf = await readFile(file);
    // The last entry's name starts with "ü" (0xC3 0xBC); 0xFF keeps the order and is never UTF-8.
    const at = buf.indexOf(Buffer.from("ünïcödé"));
    expect(at).toBeGreaterThan(0);
    buf[at] = 0xff;
    createHash("sha1").update(buf.subarray(0, buf.length - 20)).digest().copy(buf, buf.length - 20);
    await writeFile(file, buf);
    const err = await readIndex(gitdir).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnsupportedIndexError);
    expect((err as Error).message).toMatch(/nïcödé 😀\.txt" is not valid UTF-8/);
    expect((err as UnsupportedIndexError).hint).toMatch(/git mv/);
  });

  it("refuses a split index with the command that converts it", async () => {
    await git(repo, "update-index", "--split-index");
    const err = await readIndex(gitdir).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnsupportedIndexError);
    expect(`${(err as Error).message} ${(err as UnsupportedIndexError).hint}`).toContain("git update-index --no-split-index");
    await git(repo, "update-index", "--no-split-index");
    expect(ours(await readIndex(gitdir))).toEqual(await lsFiles());
  });
});

describe("writeIndex", () => {
  it("round-trips git's index: status clean, ls-files identical, fsck clean", async () => {
    const before = await lsFiles();
    const index = await readIndex(gitdir);
    const result = await writeIndex(gitdir, index);
    expect(result.version).toBe(2);
    expect(result.smudged).toEqual([]);
    expect(await lsFiles()).toEqual(before);
    expect(await status()).toEqual([]);
    expect(await git(repo, "diff-files")).toBe("");
    // TREE was dropped (policy): git still sees the same tree
    expect((await readIndex(gitdir)).extensions).toEqual([]);
    expect((await git(repo, "write-tree")).trim()).toBe((await git(repo, "rev-parse", "HEAD^{tree}")).trim());
    await fsckClean();
  });

  it("writes added, changed and removed entries that git agrees with", async () => {
    await put("dir/b.txt", "bravo, changed\n");
    await put("dir/new file.txt", "fresh\n");
    await put("run.sh", "#!/bin/sh\necho changed\n", { exec: true });
    await unlink(join(repo, "d.txt"));
    const changes = new Map<string, string>();
    for (const p of ["dir/b.txt", "dir/new file.txt", "run.sh"]) changes.set(p, await hashObject(p));

    const result = await updateIndex(gitdir, async (index) => {
      for (const [p, oid] of changes) index.entries.set(p, entryFromStat(p, await lstat(join(repo, p), { bigint: true }), oid));
      index.entries.delete("d.txt");
    });
    expect(result.smudged).toEqual([]);
    expect((await status()).sort()).toEqual(["A  dir/new file.txt", "D  d.txt", "M  dir/b.txt", "M  run.sh"]);
    expect(await git(repo, "diff-files")).toBe("");
    const listed = await lsFiles();
    expect(listed).toContain(`100644 ${changes.get("dir/new file.txt")} 0\tdir/new file.txt`);
    expect(listed).toContain(`100755 ${changes.get("run.sh")} 0\trun.sh`);
    expect(listed.some((l) => l.endsWith("\td.txt"))).toBe(false);
    expect(ours(await readIndex(gitdir))).toEqual(listed);
    await fsckClean();
    // and git can commit exactly that
    await git(repo, "commit", "-q", "-m", "ours");
    expect(await status()).toEqual([]);
    await fsckClean();
  });

  it("smudges racily clean entries so git re-checks them", async () => {
    await put("a.txt", "alpha, now\n", { past: false });
    const future = new Date(Date.now() + 3600_000);
    await utimes(join(repo, "a.txt"), future, future); // certainly not older than the index we write
    const oid = await hashObject("a.txt");
    const st = await lstat(join(repo, "a.txt"), { bigint: true });
    const result = await updateIndex(gitdir, (index) => {
      index.entries.set("a.txt", entryFromStat("a.txt", st, oid));
    });
    expect(result.smudged).toEqual(["a.txt"]);
    const index = await readIndex(gitdir);
    expect(index.mtime).toEqual(result.mtime);
    expect(index.entries.get("a.txt")?.size).toBe(0);
    expect(isStatClean(index.entries.get("a.txt")!, st, index.mtime)).toBe(false);
    // git sees a possible change without refreshing, and no change once it looked at the content
    expect(await git(repo, "diff-files", "--name-only")).toBe("a.txt\n");
    expect(await status()).toEqual(["M  a.txt"]);
    expect(await git(repo, "diff-files")).toBe("");
  });

  it("keeps v3 for intent-to-add entries and v4 when the index was v4", async () => {
    await put("new.txt", "new\n");
    await git(repo, "add", "-N", "new.txt");
    await writeIndex(gitdir, await readIndex(gitdir));
    expect(await versionOnDisk()).toBe(3);
    expect(await status()).toEqual([" A new.txt"]);

    await git(repo, "update-index", "--index-version", "4");
    const before = await lsFiles();
    const index = await readIndex(gitdir);
    await put("dir/sub/zz.txt", "zz\n");
    index.entries.set("dir/sub/zz.txt", entryFromStat("dir/sub/zz.txt", await lstat(join(repo, "dir/sub/zz.txt"), { bigint: true }), await hashObject("dir/sub/zz.txt")));
    await writeIndex(gitdir, index);
    expect(await versionOnDisk()).toBe(4);
    const after = await lsFiles();
    expect(after.filter((l) => !l.endsWith("\tdir/sub/zz.txt"))).toEqual(before);
    expect(await status()).toEqual([" A new.txt", "A  dir/sub/zz.txt"].sort((a, b) => comparePaths(a.slice(3), b.slice(3))));
    // git lists an intent-to-add entry as an unstaged addition, and nothing else
    expect(await git(repo, "diff-files", "--name-status")).toBe("A\tnew.txt\n");
    await fsckClean();
  });

  it("preserves conflicts and REUC, and resolves a conflict when given a stage-0 entry", async () => {
    await git(repo, "checkout", "-q", "-b", "other");
    await put("a.txt", "other\n");
    await put("d.txt", "other d\n");
    await git(repo, "commit", "-q", "-am", "other");
    await git(repo, "checkout", "-q", "develop");
    await put("a.txt", "mine\n");
    await put("d.txt", "mine d\n");
    await git(repo, "commit", "-q", "-am", "mine");
    await run(repo, ["merge", "-q", "other"], true);
    await put("d.txt", "resolved d\n");
    await git(repo, "add", "d.txt"); // records resolve-undo (REUC)
    const reuc = await git(repo, "ls-files", "--resolve-undo");
    expect(reuc).toContain("d.txt");

    const before = await lsFiles();
    await writeIndex(gitdir, await readIndex(gitdir));
    expect(await lsFiles()).toEqual(before);
    expect(await git(repo, "ls-files", "--resolve-undo")).toBe(reuc);
    expect(await status()).toContain("UU a.txt");

    await put("a.txt", "resolved\n");
    const oid = await hashObject("a.txt");
    const st = await lstat(join(repo, "a.txt"), { bigint: true });
    await updateIndex(gitdir, (index) => {
      index.entries.set("a.txt", entryFromStat("a.txt", st, oid));
    });
    expect(await git(repo, "ls-files", "-u")).toBe("");
    expect(await status()).toEqual(["M  a.txt", "M  d.txt"]);
    await git(repo, "commit", "-q", "--no-edit");
    await fsckClean();
  });

  it("sorts paths by UTF-8 bytes like git (surrogates after U+E000..U+FFFF, / after -)", async () => {
    const names = ["b", "b-", "b/x", "b-\uE000", "b-\u{1F600}", "b-\uFFFD", "b-z", "B"];
    for (const p of names) await put(p === "b" ? "bfile" : p, p);
    await rm(join(repo, "bfile"));
    const index = await readIndex(gitdir);
    const emptyOid = (await run(repo, ["hash-object", "-w", "--stdin"], false, "")).stdout.trim();
    for (const p of names) {
      if (p === "b") continue;
      index.entries.set(p, entryFromStat(p, await lstat(join(repo, p), { bigint: true }), emptyOid));
    }
    await writeIndex(gitdir, index);
    // git finds entries by binary search: it must list them in our order, and so must a lookup find them.
    expect(ours(await readIndex(gitdir))).toEqual(await lsFiles());
    const reread = parseIndex(await readFile(join(gitdir, "index")));
    for (const p of names) expect(reread.entries.get(p)?.path, p).toBe(p === "b" ? undefined : p);
    for (const p of ["b-\uE001", "b-\u{1F601}", "b/", "b-\uFFFE", "c"]) expect(reread.entries.has(p), p).toBe(false);
    const bytewise = [...names.filter((p) => p !== "b")].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
    expect([...names.filter((p) => p !== "b")].sort(comparePaths)).toEqual(bytewise);
  });

  it("fails with LockBusyError while a native git holds index.lock, leaving the index alone", async () => {
    const before = await readFile(join(gitdir, "index"));
    await writeFile(join(gitdir, "index.lock"), "busy");
    const index = await readIndex(gitdir);
    index.entries.delete("a.txt");
    await expect(writeIndex(gitdir, index, { timeoutMs: 100 })).rejects.toBeInstanceOf(LockBusyError);
    expect(await readFile(join(gitdir, "index"))).toEqual(before);
    expect(await readFile(join(gitdir, "index.lock"), "utf8")).toBe("busy");
  });

  it("isStatClean notices content, mode and mtime changes", async () => {
    const index = await readIndex(gitdir);
    const entry = index.entries.get("dir/b.txt")!;
    const file = join(repo, "dir/b.txt");
    expect(isStatClean(entry, await lstat(file, { bigint: true }), index.mtime)).toBe(true);
    expect(isStatClean(entry, await lstat(file, { bigint: true }), null)).toBe(false);
    const { atime, mtime } = await lstat(file);
    await utimes(file, atime, new Date(mtime.getTime() + 1));
    expect(isStatClean(entry, await lstat(file, { bigint: true }), index.mtime)).toBe(false);
    await utimes(file, atime, mtime);
    await chmod(file, 0o755);
    expect(isStatClean(entry, await lstat(file, { bigint: true }), index.mtime)).toBe(false);
    await chmod(file, 0o644);
    await appendFile(file, "more\n");
    await utimes(file, atime, mtime);
    expect(isStatClean(entry, await lstat(file, { bigint: true }), index.mtime)).toBe(false);
  });

  it("rejects entries git would refuse", async () => {
    const index = await readIndex(gitdir);
    const base = index.entries.get("a.txt")!;
    for (const path of ["", "/abs", "a//b", "dir/", ".git/config", "x/.GIT/y", "x/../y", "./x"]) {
      const bad = new Map(index.entries);
      bad.set(path, { ...base, path });
      await expect(writeIndex(gitdir, { ...index, entries: bad })).rejects.toThrow(/invalid path/);
    }
    expect(ours(await readIndex(gitdir))).toEqual(await lsFiles());
  });
});

describe("writing only what changed (the previous file patched)", () => {
  /**
   * The index file on disk must be byte for byte what a full serialization of the same content gives,
   * and a fresh parse of it must equal what readIndex hands out from its snapshot.
   */
  async function expectSameAsFullWrite(): Promise<void> {
    const bytes = await readFile(join(gitdir, "index"));
    const now = await readIndex(gitdir);
    expect({ ...parseIndex(bytes), entries: new Map(parseIndex(bytes).entries) }).toEqual({ ...now, mtime: null, entries: new Map(now.entries) });
    const scratch = join(root, `full${n++}`);
    await mkdir(scratch);
    // A plain Map is never patched: this is the full serialization.
    await writeIndex(scratch, { ...now, entries: new Map(now.entries), conflicts: [...now.conflicts], extensions: [...now.extensions] });
    expect((await readFile(join(scratch, "index"))).equals(bytes)).toBe(true);
  }

  async function stage(...paths: string[]): Promise<void> {
    await updateIndex(gitdir, async (index) => {
      for (const p of paths) index.entries.set(p, entryFromStat(p, await lstat(join(repo, p), { bigint: true }), await hashObject(p)));
    });
  }

  it("rewrites changed entries in place; git agrees, and the bytes equal a full write", async () => {
    await writeIndex(gitdir, await readIndex(gitdir)); // drops git's TREE: from here on writes can patch
    const before = await readIndex(gitdir);
    await put("dir/b.txt", "bravo, changed and longer\n");
    await put("run.sh", "#!/bin/sh\necho changed\n", { exec: true });
    await stage("dir/b.txt", "run.sh");
    expect((await status()).sort()).toEqual(["M  dir/b.txt", "M  run.sh"]);
    expect(await git(repo, "diff-files")).toBe("");
    expect(ours(await readIndex(gitdir))).toEqual(await lsFiles());
    await expectSameAsFullWrite();
    // An index read before keeps what it read (snapshots are shared, never changed).
    expect(before.entries.get("dir/b.txt")?.oid).toBe((await git(repo, "rev-parse", "HEAD:dir/b.txt")).trim());
    // Patching again, on top of a patch, and then committing what it staged.
    await put("a.txt", "alpha, changed\n");
    await stage("a.txt");
    expect((await status()).sort()).toEqual(["M  a.txt", "M  dir/b.txt", "M  run.sh"]);
    await expectSameAsFullWrite();
    await fsckClean();
    await git(repo, "commit", "-q", "-m", "ours");
    expect(await status()).toEqual([]);
  });

  it("smudges a racily clean entry it patches", async () => {
    await writeIndex(gitdir, await readIndex(gitdir));
    await put("a.txt", "alpha, now\n", { past: false });
    const future = new Date(Date.now() + 3600_000);
    await utimes(join(repo, "a.txt"), future, future);
    const st = await lstat(join(repo, "a.txt"), { bigint: true });
    const oid = await hashObject("a.txt");
    const result = await updateIndex(gitdir, (index) => void index.entries.set("a.txt", entryFromStat("a.txt", st, oid)));
    expect(result.smudged).toEqual(["a.txt"]);
    const index = await readIndex(gitdir);
    expect(index.entries.get("a.txt")?.size).toBe(0);
    expect(parseIndex(await readFile(join(gitdir, "index"))).entries.get("a.txt")?.size).toBe(0);
    expect(isStatClean(index.entries.get("a.txt")!, st, index.mtime)).toBe(false);
    await expectSameAsFullWrite();
    expect(await git(repo, "diff-files", "--name-only")).toBe("a.txt\n");
    expect(await status()).toEqual(["M  a.txt"]);
  });

  it("patches v4 and v3 (skip-worktree) indexes, keeping their version", async () => {
    await git(repo, "update-index", "--skip-worktree", "d.txt");
    await writeIndex(gitdir, await readIndex(gitdir));
    expect(await versionOnDisk()).toBe(3);
    await put("a.txt", "alpha, in v3\n");
    await stage("a.txt");
    expect(await versionOnDisk()).toBe(3);
    expect(await git(repo, "ls-files", "-v", "d.txt", "a.txt")).toBe("H a.txt\nS d.txt\n");
    await expectSameAsFullWrite();

    await git(repo, "update-index", "--no-skip-worktree", "d.txt");
    await git(repo, "update-index", "--index-version", "4");
    await writeIndex(gitdir, await readIndex(gitdir));
    await put("dir/sub/c.txt", "charlie, in v4\n");
    await stage("dir/sub/c.txt");
    expect(await versionOnDisk()).toBe(4);
    expect((await status()).sort()).toEqual(["M  a.txt", "M  dir/sub/c.txt"]);
    expect(ours(await readIndex(gitdir))).toEqual(await lsFiles());
    await expectSameAsFullWrite();
    await fsckClean();
  });

  it("adds and removals, and a file changed by git meanwhile, get a full write", async () => {
    await writeIndex(gitdir, await readIndex(gitdir));
    await put("new.txt", "new\n");
    await unlink(join(repo, "d.txt"));
    await updateIndex(gitdir, async (index) => {
      index.entries.set("new.txt", entryFromStat("new.txt", await lstat(join(repo, "new.txt"), { bigint: true }), await hashObject("new.txt")));
      index.entries.delete("d.txt");
    });
    expect((await status()).sort()).toEqual(["A  new.txt", "D  d.txt"]);
    await expectSameAsFullWrite();
    // Native git rewrites the index between our read and our write: ours must not patch git's bytes.
    const stale = await readIndex(gitdir);
    await put("a.txt", "alpha by git\n");
    await git(repo, "add", "a.txt");
    await put("dir/b.txt", "bravo, ours\n");
    stale.entries.set("dir/b.txt", entryFromStat("dir/b.txt", await lstat(join(repo, "dir/b.txt"), { bigint: true }), await hashObject("dir/b.txt")));
    await writeIndex(gitdir, stale);
    // Last writer wins, as between two gits; what matters is a consistent file.
    expect((await status()).sort()).toEqual(["A  new.txt", "D  d.txt", "M  dir/b.txt", " M a.txt"].sort());
    expect(ours(await readIndex(gitdir))).toEqual(await lsFiles());
    await expectSameAsFullWrite();
  });
});

describe("100k entries", () => {
  function synthetic(count: number, version: 2 | 4): GitIndex {
    const entries = new Map<string, IndexEntry>();
    const conflicts: IndexEntry[] = [];
    const paths: string[] = [`long/${"x".repeat(5000)}`, "ünï/😀/\uE000.txt"];
    for (let i = 0; paths.length < count; i++) paths.push(`dir${i % 97}/sub-${i % 13}/file-${i}.txt`);
    paths.forEach((path, i) => {
      const entry: IndexEntry = {
        path,
        mode: i % 11 === 0 ? 0o100755 : i % 17 === 0 ? 0o120000 : 0o100644,
        oid: (i.toString(16).padStart(8, "0") + "0123456789abcdef").repeat(2).slice(0, 40),
        size: (i * 7919) >>> 0,
        ctimeSec: 1_700_000_000 + i,
        ctimeNsec: (i * 1_234_567) % 1_000_000_000,
        mtimeSec: 1_600_000_000 + i,
        mtimeNsec: (i * 7_654_321) % 1_000_000_000,
        dev: 2049,
        ino: 4_000_000_000 + i,
        uid: 1000,
        gid: 1000,
        flags: {
          assumeValid: i % 1000 === 5,
          extended: i % 5000 === 7,
          stage: 0,
          skipWorktree: i % 5000 === 7,
          intentToAdd: false,
        },
      };
      if (i === 3) {
        for (const stage of [1, 2, 3] as const) conflicts.push({ ...entry, flags: { ...entry.flags, stage } });
      } else {
        entries.set(path, entry);
      }
    });
    return { version, entries, conflicts, extensions: [], mtime: null };
  }

  for (const version of [2, 4] as const) {
    it(`round-trips a 100,000-entry v${version} index that git can read`, async () => {
      const x = synthetic(100_000, version);
      const result = await writeIndex(gitdir, x);
      expect(result.version).toBe(version === 4 ? 4 : 3); // skipWorktree entries need v3 extended flags
      expect(result.smudged).toEqual([]);
      const y = await readIndex(gitdir);
      expect(y.version).toBe(result.version);
      expect(y.mtime).toEqual(result.mtime);
      expect(y.conflicts).toEqual(x.conflicts);
      expect(y.entries.size).toBe(x.entries.size);
      expect([...y.entries.values()].sort((a, b) => comparePaths(a.path, b.path))).toEqual(
        [...x.entries.values()].sort((a, b) => comparePaths(a.path, b.path)),
      );
      // readIndex's entries are a copy-on-write view (a Map in behaviour); compare their content.
      expect({ ...y, entries: new Map(y.entries) }).toEqual(x);
      // native git reads the same index (and dies if it were unsorted or its checksum wrong)
      const listed = await lsFiles();
      expect(listed).toHaveLength(100_002);
      expect(listed).toEqual(ours(y));
    }, 120_000);
  }
});
