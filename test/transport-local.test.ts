import { execFile } from "node:child_process";
import { readdirSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Repo } from "../src/git/repo.js";
import { fetchBranch, pushBranch, type RemoteTarget } from "../src/git/transport.js";
import { cloneTo, commitFiles, fsckStrict, git, gitEnv, makeBareRepo, revParse } from "./helpers/git.js";
import { cleanupTmpDirs, makeTmpDir } from "./helpers/tmp.js";

afterAll(cleanupTmpDirs);
// The transport runs git with the process's environment: the tests' isolated HOME, no system config.
beforeAll(() => {
  const env = gitEnv();
  for (const k of ["HOME", "XDG_CONFIG_HOME", "GIT_CONFIG_NOSYSTEM", "GIT_CEILING_DIRECTORIES"]) process.env[k] = env[k];
});

const who = { name: "Cascade Test", email: "cascade-test@example.invalid", timestamp: 1_700_000_000, timezoneOffset: 0 };

/** A bare remote and a clone of it with one commit pushed, and the transport's view of the remote. */
async function setup(): Promise<{ bare: string; work: string; repo: Repo; target: RemoteTarget }> {
  const root = await makeTmpDir("cascade-transport-");
  const bare = join(root, "remote.git");
  await makeBareRepo(bare, { withCommit: true });
  const work = await cloneTo(bare, join(root, "work"), "--branch", "develop");
  await commitFiles(work, { "a/one.txt": "one\n", "a/b/two.txt": "two\n", "three.txt": "three\n" }, "files");
  await git(work, "push", "-q", "origin", "develop");
  return { bare, work, repo: await Repo.open(work), target: { name: "origin", url: bare, kind: "local", timeoutMs: 10_000 } };
}

/** Loose object ids in a repository's objects folder. */
function looseObjects(gitdir: string): string[] {
  const out: string[] = [];
  for (const dir of readdirSync(join(gitdir, "objects"))) {
    if (!/^[0-9a-f]{2}$/.test(dir)) continue;
    for (const f of readdirSync(join(gitdir, "objects", dir))) out.push(dir + f);
  }
  return out.sort();
}

/** Objects reachable from `to` and not from `from`, by native git. */
async function newObjects(cwd: string, from: string, to: string): Promise<string[]> {
  const out = await git(cwd, "rev-list", "--objects", to, `^${from}`);
  return out.split("\n").filter(Boolean).map((l) => l.slice(0, 40)).sort();
}

function sh(cwd: string, cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => execFile(cmd, args, { cwd, env: gitEnv() }, (err) => (err ? reject(err) : resolve())));
}

describe("pushing to a local bare remote through git-receive-pack", () => {
  it("sends only what a packed remote lacks, across repacks, and git fsck agrees", async () => {
    const { bare, work, repo, target } = await setup();
    await git(bare, "gc", "-q");
    expect(looseObjects(bare)).toEqual([]);

    const before = await revParse(work);
    const first = await commitFiles(work, { "a/b/two.txt": "two, changed\n", "four.txt": "four\n" }, "second");
    await pushBranch(repo, target, "develop", first, { who });
    expect(await revParse(bare, "develop")).toBe(first);
    // Exactly the new commit, its new trees and blobs: nothing the pack already holds.
    expect(looseObjects(bare)).toEqual(await newObjects(work, before, first));
    await fsckStrict(bare);

    // A repack between two pushes (the pack set changes under the cached remote).
    await git(bare, "gc", "-q");
    const second = await commitFiles(work, { "a/one.txt": "one, changed\n" }, "third");
    await pushBranch(repo, target, "develop", second, { who });
    expect(await revParse(bare, "develop")).toBe(second);
    expect(looseObjects(bare)).toEqual(await newObjects(work, first, second));
    await fsckStrict(bare);
  });

  it("sends several commits at once: folders become files, files folders, a change undone", async () => {
    const { bare, work, repo, target } = await setup();
    await git(bare, "gc", "-q");
    const before = await revParse(work);
    const rm = (p: string) => git(work, "rm", "-rq", p);
    // 1: a file becomes a folder, a folder a file, a file changes.
    await rm("three.txt");
    await rm("a/b");
    await commitFiles(work, { "three.txt/inside.txt": "now a folder\n", "a/b": "now a file\n", "a/one.txt": "one, v2\n" }, "swap");
    // 2: the change undone (its blob is one the remote holds), a new deep folder beside unchanged ones.
    const tip = await commitFiles(work, { "a/one.txt": "one\n", "a/c/d/e.txt": "deep\n" }, "undo");
    await pushBranch(repo, target, "develop", tip, { who });
    expect(await revParse(bare, "develop")).toBe(tip);
    // Exactly what native git says the remote lacked, and a remote git finds complete.
    expect(looseObjects(bare)).toEqual(await newObjects(work, before, tip));
    await fsckStrict(bare);
    expect(await git(bare, "ls-tree", "-r", "--name-only", "develop")).toBe(await git(work, "ls-tree", "-r", "--name-only", "develop"));
  });

  it("refuses to push from a damaged pack: the remote keeps its branch and git fsck finds it complete", async () => {
    const { bare, work, repo, target } = await setup();
    const packsOf = (gitdir: string) => readdirSync(join(gitdir, "objects", "pack")).filter((n) => n.endsWith(".pack"));
    // Whole objects (no deltas): the victim's bytes in the pack are its own.
    const repackWhole = () => git(work, "-c", "pack.compression=1", "repack", "-q", "-a", "-d", "-f", "--window=0", "--depth=0");
    const text = (i: number) => `line ${i}\n`.repeat(200);
    const before = await revParse(bare, "develop");
    const damaged: Record<string, string> = {};
    for (let i = 0; i < 120; i++) damaged[`bad/f${i}.txt`] = text(2000 + i);
    const tip = await commitFiles(work, damaged, "damaged");
    await repackWhole();
    const pack = join(work, ".git", "objects", "pack", packsOf(join(work, ".git"))[0]!);
    const victim = (await git(work, "rev-parse", "HEAD:bad/f99.txt")).trim();
    const line = (await git(work, "verify-pack", "-v", pack)).split("\n").find((l) => l.startsWith(victim))!;
    const [, , , inPack, offset] = line.split(/\s+/).map(Number);
    const bytes = await readFile(pack);
    const at = offset! + Math.floor(inPack! / 2);
    bytes[at] = bytes[at]! ^ 0xff;
    await sh(work, "chmod", ["u+w", pack]);
    await writeFile(pack, bytes);
    await expect(pushBranch(repo, target, "develop", tip, { who })).rejects.toThrow();
    expect(await revParse(bare, "develop")).toBe(before);
    await fsckStrict(bare);
  });

  it("refuses a push that is not a fast-forward, and fetches without moving an unchanged tracking ref", async () => {
    const { bare, work, repo, target } = await setup();
    const other = await cloneTo(bare, join(work, "..", "other"), "--branch", "develop");
    const theirs = await commitFiles(other, { "theirs.txt": "theirs\n" }, "theirs");
    await git(other, "push", "-q", "origin", "develop");
    const ours = await commitFiles(work, { "ours.txt": "ours\n" }, "ours");
    await expect(pushBranch(repo, target, "develop", ours, { who })).rejects.toMatchObject({ reason: "NonFastForward" });
    expect(await revParse(bare, "develop")).toBe(theirs);

    expect(await fetchBranch(repo, target, "develop", { who })).toBe(theirs);
    expect(await revParse(work, "refs/remotes/origin/develop")).toBe(theirs);
    const reflog = await readFile(join(work, ".git", "logs", "refs", "remotes", "origin", "develop"), "utf8");
    expect(await fetchBranch(repo, target, "develop", { who })).toBe(theirs);
    expect(await readFile(join(work, ".git", "logs", "refs", "remotes", "origin", "develop"), "utf8")).toBe(reflog);
    await fsckStrict(work);
  });
});

describe("Repo reads objects through git cat-file", () => {
  it("isAncestor agrees with git merge-base --is-ancestor over merges and packed history", async () => {
    const { work, repo } = await setup();
    const base = await revParse(work);
    await git(work, "checkout", "-q", "-b", "side");
    const side = await commitFiles(work, { "side.txt": "side\n" }, "side");
    await git(work, "checkout", "-q", "develop");
    const main1 = await commitFiles(work, { "main.txt": "main\n" }, "main");
    await git(work, "gc", "-q"); // what follows is loose, what came before is packed
    await git(work, "merge", "-q", "--no-edit", "side");
    const merge = await revParse(work);
    const after = await commitFiles(work, { "after.txt": "after\n" }, "after");
    const root = (await git(work, "rev-list", "--max-parents=0", "HEAD")).trim();
    const all = [root, base, side, main1, merge, after];
    for (const a of all) {
      for (const d of all) {
        const native = (await execCode(work, ["merge-base", "--is-ancestor", a, d])) === 0;
        expect([a, d, await repo.isAncestor(a, d)]).toEqual([a, d, native]);
      }
    }
    expect(await repo.commitTree(after)).toBe(await revParse(work, `${after}^{tree}`));
    expect(await repo.commitParents(merge)).toEqual([main1, side]);
  });

  it("readTree gives every entry as git ls-tree does, names git accepts but a checkout refuses included (materialize refuses those)", async () => {
    const { work, repo } = await setup();
    const blob = await revParse(work, "HEAD:three.txt");
    const entry = (name: string) => Buffer.concat([Buffer.from(`100644 ${name}\0`), Buffer.from(blob, "hex")]);
    const odd = await gitStdin(work, ["hash-object", "-t", "tree", "-w", "--literally", "--stdin"], Buffer.concat([entry(".git"), entry("back\\slash.txt"), entry("tab\tname")]));
    expect((await repo.readTree(odd)).map((e) => e.path)).toEqual([".git", "back\\slash.txt", "tab\tname"]);

    const tree = await revParse(work, "HEAD^{tree}");
    const entries = await repo.readTree(tree);
    expect(entries.map((e) => `${e.mode} ${e.type} ${e.oid}\t${e.path}`).join("\n")).toBe(await git(work, "ls-tree", tree));
    // A commit's id reads its tree; a missing object is Stalled ObjectMissing.
    expect(await repo.readTree(await revParse(work))).toEqual(entries);
    await expect(repo.readTree("0123456789012345678901234567890123456789")).rejects.toMatchObject({ kind: "Stalled", reason: "ObjectMissing" });
    await repo.close();
  });
});

function execCode(cwd: string, args: string[]): Promise<number> {
  return new Promise((resolve) => execFile("git", args, { cwd, env: gitEnv() }, (err) => resolve(err ? ((err as { code?: number }).code ?? 1) : 0)));
}

function gitStdin(cwd: string, args: string[], input: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile("git", args, { cwd, env: gitEnv() }, (err, stdout) => (err ? reject(err) : resolve(stdout.trim())));
    child.stdin!.end(input);
  });
}
