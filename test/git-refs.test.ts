import { gitFixed } from "./helpers/git.js";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { acquireLock, LockBusyError, withLock } from "../src/git/lockfile.js";
import {
  checkRefFormat,
  deleteRef,
  formatTimezone,
  InvalidRefNameError,
  readPackedRefs,
  readRef,
  readSymbolicRef,
  RefConflictError,
  RefCorruptError,
  updateRef,
  writeSymbolicRef,
  type RefCommitter,
} from "../src/git/refs.js";

const run = gitFixed;
async function git(cwd: string, ...args: string[]): Promise<string> {
  return (await run(cwd, args)).stdout;
}

let root = "";
let repo = "";
let gitdir = "";
let c1 = "";
let c2 = "";
let c3 = "";

const bot: RefCommitter = { name: "Cascade Bot", email: "bot@example.com", timestamp: 1700000000, timezoneOffset: -60 };

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "cascade-refs-"));
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

let n = 0;
beforeEach(async () => {
  repo = join(root, `repo${n++}`);
  await mkdir(repo);
  await git(repo, "init", "-q", "-b", "develop");
  for (const msg of ["one", "two", "three"]) await git(repo, "commit", "-q", "--allow-empty", "-m", msg);
  gitdir = join(repo, ".git");
  [c3, c2, c1] = (await git(repo, "rev-list", "develop")).trim().split("\n") as [string, string, string];
});

async function fsckClean(): Promise<void> {
  const r = await run(repo, ["fsck", "--strict", "--no-progress"], true);
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
}

describe("lockfile", () => {
  it("commits atomically and leaves no lock behind", async () => {
    const target = join(root, "target-commit");
    await writeFile(target, "old\n");
    const lock = await acquireLock(target);
    await lock.write("new ");
    await lock.write(Buffer.from("content\n"));
    expect(await readFile(target, "utf8")).toBe("old\n");
    await lock.commit();
    expect(await readFile(target, "utf8")).toBe("new content\n");
    expect(existsSync(`${target}.lock`)).toBe(false);
    await expect(lock.write("x")).rejects.toThrow(/used after/);
  });

  it("withLock rolls back when fn throws and when fn returns without committing", async () => {
    const target = join(root, "target-with");
    await writeFile(target, "old\n");
    await expect(
      withLock(target, async (lock) => {
        await lock.write("half");
        throw new Error("boom");
      }),
    ).rejects.toThrow("boom");
    expect(existsSync(`${target}.lock`)).toBe(false);
    expect(await withLock(target, async (lock) => (await lock.write("forgotten"), 42))).toBe(42);
    expect(existsSync(`${target}.lock`)).toBe(false);
    expect(await readFile(target, "utf8")).toBe("old\n");
  });

  it("throws LockBusyError naming the held lock after the timeout", async () => {
    const target = join(root, "target-busy");
    await writeFile(`${target}.lock`, "someone else");
    const started = Date.now();
    const err = await acquireLock(target, { timeoutMs: 150 }).catch((e: unknown) => e);
    expect(Date.now() - started).toBeGreaterThanOrEqual(140);
    expect(err).toBeInstanceOf(LockBusyError);
    const busy = err as LockBusyError;
    expect(busy.path).toBe(target);
    expect(busy.lockPath).toBe(`${target}.lock`);
    expect(busy.kind).toBe("Transient");
    expect(busy.message).toContain(`${target}.lock`);
    expect(busy.message).toMatch(/another git process/i);
    expect(busy.message).toMatch(/crashed/);
    expect(busy.hint).toMatch(/remove .*target-busy\.lock/);
    expect(await readFile(`${target}.lock`, "utf8")).toBe("someone else");
    // timeoutMs 0: exactly one attempt.
    await expect(acquireLock(target, { timeoutMs: 0 })).rejects.toBeInstanceOf(LockBusyError);
  });

  it("gets the lock as soon as the other holder releases it", async () => {
    const target = join(root, "target-wait");
    const first = await acquireLock(target);
    setTimeout(() => void first.rollback(), 50);
    const second = await acquireLock(target, { timeoutMs: 2000 });
    await second.write("second\n");
    await second.commit();
    expect(await readFile(target, "utf8")).toBe("second\n");
  });
});

describe("timezone", () => {
  it("maps the JS/isomorphic-git offset convention to git's +hhmm", () => {
    expect(formatTimezone(-60)).toBe("+0100");
    expect(formatTimezone(300)).toBe("-0500");
    expect(formatTimezone(-330)).toBe("+0530");
    expect(formatTimezone(0)).toBe("+0000");
    expect(formatTimezone(-0)).toBe("-0000");
  });
});

describe("readRef / readSymbolicRef", () => {
  it("resolves HEAD through the symref and reads loose refs", async () => {
    expect(await readRef(gitdir, "HEAD")).toBe(c3);
    expect(await readRef(gitdir, "refs/heads/develop")).toBe(c3);
    expect(await readSymbolicRef(gitdir, "HEAD")).toBe("refs/heads/develop");
    expect(await readRef(gitdir, "refs/heads/nope")).toBeNull();
  });

  it("returns null for a detached HEAD's symref and the commit for the ref", async () => {
    await git(repo, "checkout", "-q", "--detach", c2);
    expect(await readSymbolicRef(gitdir, "HEAD")).toBeNull();
    expect(await readRef(gitdir, "HEAD")).toBe(c2);
  });

  it("reads packed refs, including annotated tags with peeled lines", async () => {
    await git(repo, "tag", "-a", "-m", "release", "v1", c2);
    await git(repo, "branch", "old", c1);
    await git(repo, "pack-refs", "--all");
    expect(existsSync(join(gitdir, "refs/heads/old"))).toBe(false);
    const packedText = await readFile(join(gitdir, "packed-refs"), "utf8");
    expect(packedText).toMatch(/^\^[0-9a-f]{40}$/m);
    const tagOid = (await git(repo, "rev-parse", "refs/tags/v1")).trim();
    expect(await readRef(gitdir, "refs/heads/old")).toBe(c1);
    expect(await readRef(gitdir, "refs/tags/v1")).toBe(tagOid);
    expect(await readRef(gitdir, "HEAD")).toBe(c3);
    expect((await readPackedRefs(gitdir)).get("refs/tags/v1")).toEqual({ oid: tagOid, peeled: c2 });
  });

  it("reports a ref file holding garbage as RefCorruptError", async () => {
    await writeFile(join(gitdir, "refs/heads/bad"), "garbage\n");
    await expect(readRef(gitdir, "refs/heads/bad")).rejects.toBeInstanceOf(RefCorruptError);
    await expect(readRef(gitdir, "refs/heads/bad")).rejects.toMatchObject({ kind: "Stalled", reason: "RefCorrupt" });
  });

  it("follows chains of symbolic refs and treats an unborn branch as absent", async () => {
    await writeFile(join(gitdir, "refs/heads/alias"), "ref: refs/heads/develop\n");
    await writeFile(join(gitdir, "refs/heads/alias2"), "ref: refs/heads/alias\n");
    expect(await readRef(gitdir, "refs/heads/alias2")).toBe(c3);
    await writeSymbolicRef(gitdir, "HEAD", "refs/heads/unborn");
    expect(await readRef(gitdir, "HEAD")).toBeNull();
  });
});

describe("updateRef", () => {
  it("creates and advances a branch, with reflog entries git reads back", async () => {
    await updateRef(gitdir, "refs/heads/feature", c1, { expectedOld: null, message: "sync: create", committer: bot });
    expect((await git(repo, "rev-parse", "feature")).trim()).toBe(c1);
    const prev = await updateRef(gitdir, "refs/heads/feature", c2, {
      expectedOld: c1,
      message: "sync: two\n  files changed",
      committer: { ...bot, timestamp: 1700000100, timezoneOffset: 300 },
    });
    expect(prev).toBe(c1);
    expect((await git(repo, "rev-parse", "refs/heads/feature")).trim()).toBe(c2);
    expect(await readFile(join(gitdir, "refs/heads/feature"), "utf8")).toBe(`${c2}\n`);

    expect(await readFile(join(gitdir, "logs/refs/heads/feature"), "utf8")).toBe(
      `${"0".repeat(40)} ${c1} Cascade Bot <bot@example.com> 1700000000 +0100\tsync: create\n` +
        `${c1} ${c2} Cascade Bot <bot@example.com> 1700000100 -0500\tsync: two files changed\n`,
    );
    expect(await git(repo, "reflog", "show", "--format=%H %gs", "feature")).toBe(`${c2} sync: two files changed\n${c1} sync: create\n`);
    expect(await git(repo, "log", "-g", "--date=raw", "--format=%H|%gd|%gn|%ge|%gs", "refs/heads/feature")).toBe(
      `${c2}|feature@{1700000100 -0500}|Cascade Bot|bot@example.com|sync: two files changed\n` +
        `${c1}|feature@{1700000000 +0100}|Cascade Bot|bot@example.com|sync: create\n`,
    );
    expect(existsSync(join(gitdir, "refs/heads/feature.lock"))).toBe(false);
    // setting the value it already has writes nothing, like git
    expect(await updateRef(gitdir, "refs/heads/feature", c2, { expectedOld: c2, message: "again", committer: bot })).toBe(c2);
    expect((await git(repo, "reflog", "show", "--format=%gs", "feature")).split("\n")[0]).toBe("sync: two files changed");
    await fsckClean();
  });

  it("also logs to HEAD when HEAD points at the ref, as git does", async () => {
    const before = await readFile(join(gitdir, "logs/HEAD"), "utf8");
    await updateRef(gitdir, "refs/heads/develop", c1, { expectedOld: c3, message: "rewind", committer: bot });
    const line = `${c3} ${c1} Cascade Bot <bot@example.com> 1700000000 +0100\trewind\n`;
    expect(await readFile(join(gitdir, "logs/HEAD"), "utf8")).toBe(before + line);
    expect((await git(repo, "reflog", "show", "--format=%H %gs", "HEAD")).split("\n")[0]).toBe(`${c1} rewind`);
    expect((await git(repo, "reflog", "show", "--format=%H %gs", "develop")).split("\n")[0]).toBe(`${c1} rewind`);
    expect(existsSync(join(gitdir, "HEAD.lock"))).toBe(false);
    expect(await readSymbolicRef(gitdir, "HEAD")).toBe("refs/heads/develop");
    await fsckClean();
  });

  it("refuses a wrong expectedOld with RefConflictError and changes nothing", async () => {
    const log = await readFile(join(gitdir, "logs/refs/heads/develop"), "utf8");
    const err = await updateRef(gitdir, "refs/heads/develop", c1, { expectedOld: c2, message: "x", committer: bot }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(RefConflictError);
    expect(err).toMatchObject({ ref: "refs/heads/develop", expected: c2, actual: c3, kind: "Transient", reason: "RefConflict" });
    await expect(updateRef(gitdir, "refs/heads/develop", c1, { expectedOld: null, message: "x", committer: bot })).rejects.toMatchObject({
      expected: null,
      actual: c3,
    });
    await expect(updateRef(gitdir, "refs/heads/new", c1, { expectedOld: c3, message: "x", committer: bot })).rejects.toMatchObject({
      expected: c3,
      actual: null,
    });
    expect((await git(repo, "rev-parse", "develop")).trim()).toBe(c3);
    expect(await readFile(join(gitdir, "logs/refs/heads/develop"), "utf8")).toBe(log);
    expect(existsSync(join(gitdir, "refs/heads/develop.lock"))).toBe(false);
    expect(existsSync(join(gitdir, "refs/heads/new"))).toBe(false);
  });

  it("lets exactly one of two racing compare-and-swaps win", async () => {
    const results = await Promise.allSettled([
      updateRef(gitdir, "refs/heads/develop", c1, { expectedOld: c3, message: "a", committer: bot }),
      updateRef(gitdir, "refs/heads/develop", c2, { expectedOld: c3, message: "b", committer: bot }),
    ]);
    const won = results.filter((r) => r.status === "fulfilled");
    const lost = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
    expect(won).toHaveLength(1);
    expect(lost).toHaveLength(1);
    expect(lost[0]!.reason).toBeInstanceOf(RefConflictError);
    expect((await git(repo, "reflog", "show", "--format=%gs", "develop")).split("\n").filter((l) => l === "a" || l === "b")).toHaveLength(1);
  });

  it("waits for a lock held by another git, then throws LockBusyError leaving both files as they were", async () => {
    const lockFile = join(gitdir, "refs/heads/develop.lock");
    await writeFile(lockFile, `${c1}\n`);
    const err = await updateRef(gitdir, "refs/heads/develop", c2, {
      expectedOld: c3,
      message: "x",
      committer: bot,
      timeoutMs: 200,
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LockBusyError);
    expect((err as LockBusyError).message).toContain(lockFile);
    expect(await readFile(lockFile, "utf8")).toBe(`${c1}\n`);
    expect(await readFile(join(gitdir, "refs/heads/develop"), "utf8")).toBe(`${c3}\n`);
    // and native git agrees that the lock is held
    const r = await run(repo, ["update-ref", "refs/heads/develop", c2], true);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/develop\.lock/);
  });

  it("makes native git wait on our lock", async () => {
    await withLock(join(gitdir, "refs/heads/develop"), async () => {
      const r = await run(repo, ["update-ref", "refs/heads/develop", c1], true);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/File exists|Unable to create/);
    });
    expect((await git(repo, "rev-parse", "develop")).trim()).toBe(c3);
  });

  it("updates a packed ref: the loose file then wins, as in git", async () => {
    await git(repo, "branch", "packed", c1);
    await git(repo, "pack-refs", "--all");
    expect(existsSync(join(gitdir, "refs/heads/packed"))).toBe(false);
    await expect(updateRef(gitdir, "refs/heads/packed", c3, { expectedOld: c2, message: "x", committer: bot })).rejects.toMatchObject({
      actual: c1,
    });
    await updateRef(gitdir, "refs/heads/packed", c2, { expectedOld: c1, message: "advance packed", committer: bot });
    expect(await readFile(join(gitdir, "refs/heads/packed"), "utf8")).toBe(`${c2}\n`);
    expect((await readPackedRefs(gitdir)).get("refs/heads/packed")?.oid).toBe(c1);
    expect((await git(repo, "rev-parse", "packed")).trim()).toBe(c2);
    expect(await readRef(gitdir, "refs/heads/packed")).toBe(c2);
    expect((await git(repo, "reflog", "show", "--format=%H %gs", "packed")).split("\n")[0]).toBe(`${c2} advance packed`);
    await fsckClean();
  });

  it("rejects short and invalid names exactly where git check-ref-format does", async () => {
    await expect(updateRef(gitdir, "main", c1, { message: "x", committer: bot })).rejects.toBeInstanceOf(InvalidRefNameError);
    await expect(updateRef(gitdir, "heads/main", c1, { message: "x", committer: bot })).rejects.toBeInstanceOf(InvalidRefNameError);
    await expect(updateRef(gitdir, "HEAD", c1, { message: "x", committer: bot })).rejects.toBeInstanceOf(InvalidRefNameError);
    expect(existsSync(join(gitdir, "main"))).toBe(false);
    expect(existsSync(join(gitdir, "heads/main"))).toBe(false);

    const names = [
      "refs/heads/ok",
      "refs/heads/feature/x-1_2",
      "refs/heads/ünïcode",
      "refs/heads/a..b",
      "refs/heads/a b",
      "refs/heads/.hidden",
      "refs/heads/x/.hidden",
      "refs/heads/x.lock",
      "refs/heads/x.lock/y",
      "refs/heads/x/",
      "refs/heads/x.",
      "refs/heads/a@{1}",
      "refs/heads/a@b",
      "refs/heads/@",
      "refs/heads/a~1",
      "refs/heads/a^",
      "refs/heads/a:b",
      "refs/heads/a?",
      "refs/heads/a*",
      "refs/heads/a[",
      "refs/heads/a\\b",
      "refs/heads/a\x01b",
      "refs/heads/a\x7f",
      "refs/heads/a\tb",
      "refs//heads",
      "refs/heads//x",
    ];
    for (const name of names) {
      const gitSays = (await run(repo, ["check-ref-format", name], true)).code === 0;
      expect({ name, valid: checkRefFormat(name) === null }).toEqual({ name, valid: gitSays });
      if (!gitSays) {
        await expect(updateRef(gitdir, name, c1, { message: "x", committer: bot })).rejects.toBeInstanceOf(InvalidRefNameError);
      }
    }
  });

  it("refuses a file/directory clash with an existing ref", async () => {
    await expect(updateRef(gitdir, "refs/heads/develop/sub", c1, { message: "x", committer: bot })).rejects.toMatchObject({
      reason: "RefNameClash",
    });
    await updateRef(gitdir, "refs/heads/team/one", c1, { message: "x", committer: bot });
    await expect(updateRef(gitdir, "refs/heads/team", c1, { message: "x", committer: bot })).rejects.toMatchObject({
      reason: "RefNameClash",
    });
    // once the ref below is gone, its empty directory no longer blocks the name
    await deleteRef(gitdir, "refs/heads/team/one");
    await updateRef(gitdir, "refs/heads/team", c1, { message: "x", committer: bot });
    expect((await git(repo, "rev-parse", "team")).trim()).toBe(c1);
    await fsckClean();
  });
});

describe("deleteRef", () => {
  it("deletes a packed ref from packed-refs and a loose+packed ref from both", async () => {
    await git(repo, "branch", "gone", c1);
    await git(repo, "branch", "both", c1);
    await git(repo, "tag", "-a", "-m", "t", "keep-tag", c2);
    await git(repo, "pack-refs", "--all");
    await git(repo, "update-ref", "refs/heads/both", c2);
    expect(existsSync(join(gitdir, "refs/heads/both"))).toBe(true);

    await expect(deleteRef(gitdir, "refs/heads/gone", { expectedOld: c2 })).rejects.toBeInstanceOf(RefConflictError);
    expect(await deleteRef(gitdir, "refs/heads/gone", { expectedOld: c1 })).toBe(c1);
    expect(await readFile(join(gitdir, "packed-refs"), "utf8")).not.toContain("refs/heads/gone");
    expect(await readRef(gitdir, "refs/heads/gone")).toBeNull();
    expect((await run(repo, ["rev-parse", "--verify", "-q", "refs/heads/gone"], true)).code).not.toBe(0);
    expect(existsSync(join(gitdir, "logs/refs/heads/gone"))).toBe(false);

    expect(await deleteRef(gitdir, "refs/heads/both", { expectedOld: c2 })).toBe(c2);
    expect(existsSync(join(gitdir, "refs/heads/both"))).toBe(false);
    expect(await readRef(gitdir, "refs/heads/both")).toBeNull();
    expect(await git(repo, "show-ref")).not.toMatch(/refs\/heads\/(both|gone)/);
    // the peeled line of the tag survives the rewrite
    expect((await readPackedRefs(gitdir)).get("refs/tags/keep-tag")?.peeled).toBe(c2);
    expect(existsSync(join(gitdir, "packed-refs.lock"))).toBe(false);
    expect(await deleteRef(gitdir, "refs/heads/never")).toBeNull();
    await fsckClean();
  });
});

describe("writeSymbolicRef", () => {
  it("points HEAD at a branch under HEAD.lock", async () => {
    await git(repo, "branch", "staging", c2);
    await writeSymbolicRef(gitdir, "HEAD", "refs/heads/staging", { message: "switch", committer: bot });
    expect((await git(repo, "symbolic-ref", "HEAD")).trim()).toBe("refs/heads/staging");
    expect(await readFile(join(gitdir, "HEAD"), "utf8")).toBe("ref: refs/heads/staging\n");
    expect((await git(repo, "reflog", "show", "--format=%H %gs", "HEAD")).split("\n")[0]).toBe(`${c2} switch`);
    await expect(writeSymbolicRef(gitdir, "HEAD", "staging")).rejects.toBeInstanceOf(InvalidRefNameError);
    await writeFile(join(gitdir, "HEAD.lock"), "");
    await expect(writeSymbolicRef(gitdir, "HEAD", "refs/heads/develop", { timeoutMs: 50 })).rejects.toBeInstanceOf(LockBusyError);
    expect(await readSymbolicRef(gitdir, "HEAD")).toBe("refs/heads/staging");
  });
});
