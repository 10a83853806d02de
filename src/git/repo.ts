import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { readFile, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { BlobPolicy } from "../security/blob-policy.js";
import { CatFileBatch, type GitObject } from "./native/cat-file.js";
import { GitError, objectMissing } from "./native/failure.js";
import { requireSupportedFormat } from "./native/format.js";
import { parseLsTree, splitNul } from "./native/parse.js";
import { diffTrees, commitTree as writeCommitObject, type GitIdentity } from "./native/plumbing.js";
import { forEachRef, updateRefs } from "./native/refs.js";
import { runGit, type GitRepo } from "./native/run.js";

/** A tree entry's mode as git writes it in trees. */
export type EntryMode = "100644" | "100755" | "120000" | "160000" | "040000";

/** One blob (or gitlink) at a path: what a tree holds for a file. */
export interface FileEntry {
  mode: EntryMode;
  oid: string;
}

/** Author or committer of a commit. */
export interface Person {
  name: string;
  email: string;
  /** Seconds since the epoch. */
  timestamp: number;
  /** Minutes, JS convention: UTC+1 is -60 (as Date#getTimezoneOffset). */
  timezoneOffset: number;
}

/** A commit as {@link Repo.readCommit} gives it. */
export interface CommitInfo {
  tree: string;
  parent: string[];
  author: Person;
  committer: Person;
  message: string;
  /** The message's first line. */
  subject: string;
}

/** One entry of a tree object (not recursive). */
export interface TreeItem {
  mode: EntryMode;
  path: string;
  oid: string;
  /** blob, tree or commit (a gitlink). */
  type: string;
}

/** A path whose entry differs between two trees; `before`/`after` undefined means absent. */
export interface TreeDiff {
  path: string;
  before?: FileEntry;
  after?: FileEntry;
}

/** The oid of git's empty tree. */
export const EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";

/** The blob id git gives `content`: sha1 of `blob <size>\0<content>`. */
export function blobOid(content: Buffer): string {
  return createHash("sha1").update(`blob ${content.length}\0`).update(content).digest("hex");
}

/** Full ref name of a branch (always `refs/heads/...`). */
export function branchRef(branch: string): string {
  return `refs/heads/${branch}`;
}

/**
 * A person as git takes it for an author, committer or reflog entry: the date as `@<seconds> +hhmm`.
 */
export function gitIdentity(who: Person): GitIdentity {
  const m = -who.timezoneOffset;
  const abs = Math.abs(m);
  const tz = `${m < 0 ? "-" : "+"}${String(Math.floor(abs / 60)).padStart(2, "0")}${String(abs % 60).padStart(2, "0")}`;
  return { name: who.name, email: who.email, date: `@${who.timestamp} ${tz}` };
}

/**
 * Checks that the repository at `gitdir` is in a format this release works with: sha1 objects (blob ids
 * of sandbox files are computed with sha1 to compare them) and refs as files. Rejects with Stalled
 * `RepositoryFormatUnsupported` and a hint; nothing has been written then.
 */
export async function requireUsableRepository(gitdir: string): Promise<void> {
  await requireSupportedFormat(gitdir, { objectFormats: ["sha1"], refStorages: ["files"] });
}

const HEX = /^[0-9a-f]{40}$/;

/**
 * One repository's objects, refs and config, all through the installed git (src/git/native/): objects
 * are read through one long-lived `git cat-file --batch` per Repo, trees written with `git mktree`,
 * commits with `git commit-tree`, refs moved with `git update-ref --stdin` transactions holding the
 * expected old value, history questions answered by `git merge-base`, trees compared by `git diff-tree`.
 * git takes its own locks, writes its own reflog and fsyncs as configured.
 */
export class Repo {
  /**
   * What files become in git and what blobs become outside it (security.encrypt, the key, the
   * secret scan), like git's clean and smudge filters: every write of a blob as a file (sandbox,
   * releases, gate exports) goes through it. The controller sets it from the config in force; a plain
   * repository stores content as it is.
   */
  policy: BlobPolicy = BlobPolicy.plain();
  /** Parents of the commits read so far, for ancestry questions (a commit never changes). */
  private readonly parents = new Map<string, readonly string[]>();
  private reader: CatFileBatch | undefined;
  /** Answers of merge-base questions so far: two commits' histories never change, so neither does the answer. */
  private readonly history = new Map<string, string | boolean | null>();

  private constructor(
    readonly dir: string,
    readonly gitdir: string,
    private readonly isBare: boolean,
  ) {}

  /** Opens the repository whose work tree is `dir`; throws ENOENT when `dir` has no .git. */
  static async open(dir: string): Promise<Repo> {
    const abs = resolve(dir);
    const dotgit = join(abs, ".git");
    const st = await stat(dotgit);
    if (st.isDirectory()) return new Repo(abs, dotgit, false);
    const text = await readFile(dotgit, "utf8");
    const m = /^gitdir:\s*(.+)$/m.exec(text);
    if (!m?.[1]) throw Object.assign(new Error(`${dotgit} is neither a directory nor a gitdir file`), { code: "ENOENT" });
    return new Repo(abs, resolve(abs, m[1].trim()), false);
  }

  /** Opens a bare repository (a remote given by path). */
  static bare(gitdir: string): Repo {
    return new Repo(resolve(gitdir), resolve(gitdir), true);
  }

  /** Where the gateway runs git for this repository: the git directory (and work tree) given, never discovered. */
  get git(): GitRepo {
    return this.isBare ? { cwd: this.gitdir, gitDir: this.gitdir } : { cwd: this.dir, gitDir: this.gitdir, workTree: this.dir };
  }

  /** Ends the object reader (started again by the next read); resolves once it has exited. */
  async close(): Promise<void> {
    const reader = this.reader;
    this.reader = undefined;
    await reader?.close();
  }

  private objects(): CatFileBatch {
    this.reader ??= new CatFileBatch(this.git);
    return this.reader;
  }

  /** The object `oid` names, or undefined when the repository does not have it. */
  private async readObject(oid: string): Promise<GitObject | undefined> {
    if (!HEX.test(oid)) throw new TypeError(`not an object id: ${JSON.stringify(oid)}`);
    return this.objects().read(oid);
  }

  /** The object `oid` names; rejects with Stalled `ObjectMissing` when there is none. */
  private async mustRead(oid: string, what: string): Promise<GitObject> {
    const obj = await this.readObject(oid);
    if (!obj) throw objectMissing(oid, what);
    return obj;
  }

  /** The branch HEAD points at, or null when HEAD is detached. */
  async currentBranch(): Promise<string | null> {
    const { stdout, exitCode } = await runGit(["symbolic-ref", "-q", "HEAD"], { ...this.git, okExitCodes: [0, 1] });
    const target = exitCode === 0 ? stdout.toString("utf8").trim() : "";
    return target.startsWith("refs/heads/") ? target.slice("refs/heads/".length) : null;
  }

  /** The commit a branch points at, or null when the branch does not exist. */
  async branchHead(branch: string): Promise<string | null> {
    return this.ref(branchRef(branch));
  }

  /**
   * Any ref's value (full name, or HEAD), or null when it does not exist (an unborn HEAD included).
   * Asked of the running `git cat-file` (git reads the ref from disk on every request, as `git
   * rev-parse` would: a ref another process moved is seen at once), which costs no process; only a
   * name it finds nothing for (no such ref, or one whose object this repository lacks) goes to `git
   * rev-parse --verify`, which tells the two apart.
   */
  async ref(name: string): Promise<string | null> {
    if (name !== "" && !/[\n\0]/.test(name)) {
      const obj = await this.objects().read(name);
      if (obj) return obj.oid;
    }
    const { stdout, exitCode } = await runGit(["rev-parse", "--verify", "--quiet", "--end-of-options", name], { ...this.git, okExitCodes: [0, 1] });
    return exitCode === 0 ? stdout.toString("utf8").trim() || null : null;
  }

  /**
   * Moves a ref from `expectedOld` to `oid` (`git update-ref --stdin`; null: the ref must not exist,
   * undefined: whatever it holds), with a reflog entry by `who`. Rejects with Transient `RefConflict`
   * (RefConflictError) when the ref moved meanwhile, Transient `LockBusy` when its lock is held.
   */
  async setRef(name: string, oid: string, expectedOld: string | null | undefined, message: string, who: Person): Promise<void> {
    await updateRefs(this.asCommitter(who), [{ ref: name, newOid: oid, expectedOld }], message);
  }

  /**
   * Deletes a ref if it still holds `expectedOld` (undefined: whatever it holds). Rejects as setRef does;
   * a ref already gone is no error when nothing was expected.
   */
  async deleteRef(name: string, expectedOld?: string): Promise<void> {
    await updateRefs(this.git, [{ ref: name, newOid: null, ...(expectedOld !== undefined ? { expectedOld } : {}) }], "cascade-sync: delete");
  }

  /** Points a symbolic ref (HEAD) at `target` (a full ref name) with `git symbolic-ref`, logged as `message` by `who`. */
  async setSymbolicRef(name: string, target: string, message: string, who: Person): Promise<void> {
    await runGit(["symbolic-ref", "-m", message, name, target], this.asCommitter(who));
  }

  /** This repository with `who` as git's committer (the reflog records it). */
  private asCommitter(who: Person): GitRepo {
    const id = gitIdentity(who);
    return { ...this.git, env: { GIT_COMMITTER_NAME: id.name, GIT_COMMITTER_EMAIL: id.email, GIT_COMMITTER_DATE: id.date } };
  }

  /** True when the object exists in this repository. */
  async hasObject(oid: string): Promise<boolean> {
    if (!HEX.test(oid)) return false;
    return (await this.readObject(oid)) !== undefined;
  }

  /** Reads a blob's bytes; rejects with Stalled `ObjectMissing` when it is missing or not a blob. */
  async readBlob(oid: string): Promise<Buffer> {
    const obj = await this.mustRead(oid, "blob");
    if (obj.type !== "blob") throw new GitError("Stalled", "ObjectMissing", `${oid} is a ${obj.type}, not a blob`, { command: "git cat-file --batch", stderr: "" });
    return obj.data;
  }

  /**
   * The bytes to write out of git for the entry at `path`: a regular file's blob through the policy
   * (decrypted when it is encrypted; throws Stalled when it cannot be), a symlink's target as it is.
   */
  async readContent(path: string, entry: { oid: string; mode: string }): Promise<Buffer> {
    const blob = await this.readBlob(entry.oid);
    return entry.mode === "120000" ? blob : this.policy.fromGit(path, blob);
  }

  /** Reads a commit's tree, parents, message, author and committer; rejects with `ObjectMissing` when it is not there. */
  async readCommit(oid: string): Promise<CommitInfo> {
    const obj = await this.mustRead(oid, "commit");
    if (obj.type !== "commit") throw new GitError("Stalled", "ObjectMissing", `${oid} is a ${obj.type}, not a commit`, { command: "git cat-file --batch", stderr: "" });
    const commit = commitFromObject(obj.data);
    this.rememberParents(oid, commit.parent);
    return commit;
  }

  /**
   * The entries of one tree object (not recursive), in the tree's order. `oid` may also name a commit
   * (its tree is read). Names are as git stores them: checking them is the writer's job (materialize.ts).
   * Rejects with `ObjectMissing` when the object is missing.
   */
  async readTree(oid: string): Promise<TreeItem[]> {
    if (oid === EMPTY_TREE) return [];
    let obj = await this.mustRead(oid, "tree");
    if (obj.type === "commit") obj = await this.mustRead(commitFromObject(obj.data).tree, "tree");
    if (obj.type !== "tree") throw new GitError("Stalled", "ObjectMissing", `${oid} is a ${obj.type}, not a tree`, { command: "git cat-file --batch", stderr: "" });
    return treeItems(obj.data, oid.length / 2);
  }

  /** Writes `content` as a blob exactly as given (`git hash-object -w --no-filters --stdin`) and returns its oid. */
  async writeBlob(content: Buffer): Promise<string> {
    const { stdout } = await runGit(["hash-object", "-w", "--no-filters", "--stdin"], { ...this.git, stdin: content });
    return stdout.toString("utf8").trim();
  }

  /**
   * Writes a tree from its entries (`git mktree -z`, which sorts them in git's order and checks that the
   * objects they name exist, gitlinks excepted) and returns its oid.
   */
  async writeTree(entries: { mode: EntryMode; path: string; oid: string }[]): Promise<string> {
    let input = "";
    for (const e of entries) {
      if (e.path === "" || /[\/\0]/.test(e.path)) throw new TypeError(`not a tree entry name: ${JSON.stringify(e.path)}`);
      input += `${e.mode} ${TYPE_OF_MODE[e.mode]} ${e.oid}\t${e.path}\0`;
    }
    const { stdout } = await runGit(["mktree", "-z"], { ...this.git, stdin: input });
    return stdout.toString("utf8").trim();
  }

  /** Writes a commit (`git commit-tree`) and returns its oid (refs are not touched). */
  async writeCommit(c: { tree: string; parents: string[]; message: string; author: Person; committer?: Person }): Promise<string> {
    return writeCommitObject(this.git, {
      tree: c.tree, parents: c.parents, message: c.message, author: gitIdentity(c.author), committer: gitIdentity(c.committer ?? c.author),
    });
  }

  /** The tree of a commit. */
  async commitTree(commit: string): Promise<string> {
    return (await this.readCommit(commit)).tree;
  }

  /** The parents of a commit (remembered: a commit never changes). Rejects with `ObjectMissing` when it is missing. */
  async commitParents(commit: string): Promise<readonly string[]> {
    return this.parents.get(commit) ?? (await this.readCommit(commit)).parent;
  }

  private rememberParents(commit: string, parents: readonly string[]): void {
    // Bounded, so a walk through a huge history cannot keep it all in memory.
    if (this.parents.size >= 50_000) this.parents.clear();
    this.parents.set(commit, parents);
  }

  /** Every file below a tree as path -> entry (`git ls-tree -r -z`; gitlinks included, folders not). */
  async flattenTree(tree: string): Promise<Map<string, FileEntry>> {
    const out = new Map<string, FileEntry>();
    if (tree === EMPTY_TREE) return out;
    const { stdout } = await runGit(["ls-tree", "-r", "-z", "--full-tree", "--end-of-options", tree], this.git);
    for (const e of parseLsTree(stdout)) out.set(e.path, { mode: normalizeMode(e.mode), oid: e.oid });
    return out;
  }

  /** Paths whose file entry differs between two trees (`git diff-tree -r -z`, no rename detection). */
  async diffTrees(a: string | null, b: string | null): Promise<TreeDiff[]> {
    if (a === b) return [];
    return (await diffTrees(this.git, a ?? EMPTY_TREE, b ?? EMPTY_TREE)).map((e) => ({
      path: e.path,
      ...(e.srcMode === "000000" ? {} : { before: { mode: normalizeMode(e.srcMode), oid: e.srcOid } }),
      ...(e.dstMode === "000000" ? {} : { after: { mode: normalizeMode(e.dstMode), oid: e.dstOid } }),
    }));
  }

  /**
   * Three-way merge of trees where `ours` wins every path changed on both sides (also modify/delete):
   * the sandbox's content is never replaced by a concurrent remote change, and the remote's commits
   * stay in history through the merge commit's parents. Returns the merged tree's oid.
   */
  async mergeTreesOursWins(base: string | null, ours: string, theirs: string): Promise<string> {
    return (await this.mergeTree(base, ours, theirs)) ?? this.writeTree([]);
  }

  private async mergeTree(base: string | null, ours: string | null, theirs: string | null): Promise<string | null> {
    if (ours === theirs) return ours;
    if (base === ours) return theirs;
    if (base === theirs) return ours;
    const read = async (t: string | null) => new Map((t ? await this.readTree(t) : []).map((e) => [e.path, e]));
    const [b, o, t] = await Promise.all([read(base), read(ours), read(theirs)]);
    const result: { mode: EntryMode; path: string; oid: string }[] = [];
    for (const name of new Set([...o.keys(), ...t.keys(), ...b.keys()])) {
      const eb = b.get(name);
      const eo = o.get(name);
      const et = t.get(name);
      let pick: { mode: EntryMode; oid: string } | undefined;
      if (same(eo, et)) pick = eo;
      else if (same(eb, eo)) pick = et;
      else if (same(eb, et)) pick = eo;
      else if (eo?.mode === "040000" && et?.mode === "040000") {
        const oid = await this.mergeTree(eb?.mode === "040000" ? eb.oid : null, eo.oid, et.oid);
        pick = oid && oid !== EMPTY_TREE ? { mode: "040000", oid } : undefined;
      } else pick = eo;
      if (pick) result.push({ mode: pick.mode, path: name, oid: pick.oid });
    }
    return result.length ? this.writeTree(result) : null;
  }

  /**
   * True when `ancestor` is `descendant` or one of its ancestors (`git merge-base --is-ancestor`, which
   * also knows shallow and grafted histories). Rejects when git cannot read one of them.
   */
  async isAncestor(ancestor: string, descendant: string): Promise<boolean> {
    if (ancestor === descendant) return true;
    return this.remembered(`is ${ancestor} ${descendant}`, async () => {
      const { exitCode } = await runGit(["merge-base", "--is-ancestor", "--end-of-options", ancestor, descendant], { ...this.git, okExitCodes: [0, 1] });
      return exitCode === 0;
    });
  }

  /** The best common ancestor of two commits (`git merge-base`), or null when their histories are unrelated. */
  async mergeBase(a: string, b: string): Promise<string | null> {
    return this.remembered(`base ${a} ${b}`, async () => {
      const { stdout, exitCode } = await runGit(["merge-base", "--end-of-options", a, b], { ...this.git, okExitCodes: [0, 1] });
      return exitCode === 0 ? stdout.toString("utf8").trim() || null : null;
    });
  }

  /**
   * The answer for two full commit ids, asked once: a loop over a branch's history then costs one git
   * process per new pair, not one per pass. Names that are not full ids (a branch), and answers in a
   * shallow repository, are never remembered.
   */
  private async remembered<T extends string | boolean | null>(key: string, ask: () => Promise<T>): Promise<T> {
    const [, a, b] = key.split(" ");
    // A shallow repository's answer may change when it is deepened.
    if (!HEX.test(a!) || !HEX.test(b!) || existsSync(join(this.gitdir, "shallow"))) return ask();
    if (this.history.has(key)) return this.history.get(key) as T;
    const answer = await ask();
    if (this.history.size >= 10_000) this.history.clear();
    this.history.set(key, answer);
    return answer;
  }

  /** Reads an object's type and content as stored; rejects with `ObjectMissing` when it is not there. */
  async readRaw(oid: string): Promise<{ type: string; object: Buffer }> {
    const obj = await this.mustRead(oid, "object");
    return { type: obj.type, object: obj.data };
  }

  /**
   * The full commit id for what a person typed: a branch name, a full id, or an abbreviated one
   * (at least 4 hex digits). Returns null when nothing matches or an abbreviation is ambiguous.
   */
  async resolveCommit(text: string): Promise<string | null> {
    const branch = await this.branchHead(text).catch(() => null);
    if (branch) return branch;
    if (!/^[0-9a-f]{4,40}$/.test(text)) return null;
    const { stdout, exitCode } = await runGit(["rev-parse", "--verify", "--quiet", "--end-of-options", `${text}^{commit}`], { ...this.git, okExitCodes: [0, 1, 128] });
    return exitCode === 0 ? stdout.toString("utf8").trim() || null : null;
  }

  /**
   * The content of the file at `path` in `commit`'s tree, or null when there is none (or it is not a
   * file). Read tree by tree from the root: a tree on the way that holds a name git refuses to check out
   * (`.git` in any spelling, `.`, `..`, a name twice) rejects with Stalled `UnsafeTree`, so nothing is
   * taken from a commit git itself would not check out.
   */
  async fileAt(commit: string, path: string): Promise<Buffer | null> {
    let tree = await this.commitTree(commit);
    const parts = path.split("/");
    for (const [i, part] of parts.entries()) {
      const entries = await this.readTree(tree);
      refuseUnsafeNames(tree, parts.slice(0, i).join("/"), entries);
      const entry = entries.find((e) => e.path === part);
      if (!entry) return null;
      if (i === parts.length - 1) return entry.type === "blob" ? this.readBlob(entry.oid) : null;
      if (entry.type !== "tree") return null;
      tree = entry.oid;
    }
    return null;
  }

  /**
   * Re-hashes every object reachable from `commit`'s tree (and the commit itself) and returns the
   * problems found: a missing object, or one whose content does not hash to its name (corruption).
   * Gitlinks are not followed (their commits live in another repository).
   */
  async verifyClosure(commit: string): Promise<{ objects: number; problems: string[] }> {
    const problems: string[] = [];
    let objects = 0;
    const seen = new Set<string>();
    const check = async (oid: string, what: string): Promise<{ type: string; object: Buffer } | null> => {
      objects++;
      try {
        const raw = await this.readRaw(oid);
        const actual = createHash("sha1").update(`${raw.type} ${raw.object.length}\0`).update(raw.object).digest("hex");
        if (actual !== oid) {
          problems.push(`${what}: object ${oid} is corrupt (its content hashes to ${actual})`);
          return null;
        }
        return raw;
      } catch (err) {
        problems.push(`${what}: object ${oid} cannot be read: ${(err as Error).message}`);
        return null;
      }
    };
    const walk = async (tree: string, prefix: string): Promise<void> => {
      if (seen.has(tree)) return;
      seen.add(tree);
      const raw = await check(tree, prefix || "root tree");
      if (!raw) return;
      const blobs: Promise<unknown>[] = [];
      for (const e of treeItems(raw.object, tree.length / 2)) {
        if (e.mode === "160000") continue;
        if (e.mode === "040000") await walk(e.oid, `${prefix}${e.path}/`);
        else if (!seen.has(e.oid)) {
          seen.add(e.oid);
          // Requests are pipelined through the one reader: asked together, answered in order.
          blobs.push(check(e.oid, `${prefix}${e.path}`));
        }
      }
      await Promise.all(blobs);
    };
    const top = await check(commit, "commit");
    if (top) {
      if (top.type !== "commit") problems.push(`commit: object ${commit} is a ${top.type}, not a commit`);
      else await walk(commitFromObject(top.object).tree, "");
    }
    return { objects, problems };
  }

  /** Full names of the refs under `prefix` (e.g. `refs/cascade-sync/failed/`), from `git for-each-ref`. */
  async listRefs(prefix: string): Promise<string[]> {
    const base = prefix.replace(/\/+$/, "");
    return (await forEachRef(this.git, [base])).map((r) => r.ref).filter((r) => r.startsWith(`${base}/`));
  }

  /** A git config value as git reads it for this repository (`git config --get`: local, global, system). */
  async getConfig(path: string): Promise<string | undefined> {
    return this.config(["--get", path]);
  }

  /** user.name and user.email as git reads them for this repository, in one `git config` (the last value of each wins, as `--get`'s). */
  async userIdentity(): Promise<{ name?: string; email?: string }> {
    const { stdout } = await runGit(["config", "-z", "--get-regexp", "^user\\.(name|email)$"], { ...this.git, okExitCodes: [0, 1] });
    const out: { name?: string; email?: string } = {};
    for (const item of splitNul(stdout)) {
      const nl = item.indexOf("\n");
      if (nl < 0) continue; // a key without "=" (a boolean true) is no name or address
      const key = item.slice(0, nl);
      if (key === "user.name") out.name = item.slice(nl + 1);
      else if (key === "user.email") out.email = item.slice(nl + 1);
    }
    return out;
  }

  /** Sets (or with undefined, unsets) a config value in this repository's own config when it differs there. */
  async setConfig(path: string, value: string | undefined): Promise<void> {
    if ((await this.config(["--local", "--get", path])) === value) return;
    if (value === undefined) await runGit(["config", "--local", "--unset-all", path], { ...this.git, okExitCodes: [0, 5] });
    else await runGit(["config", "--local", "--replace-all", path, value], this.git);
  }

  private async config(args: string[]): Promise<string | undefined> {
    const { stdout, exitCode } = await runGit(["config", ...args], { ...this.git, okExitCodes: [0, 1] });
    return exitCode === 0 ? stdout.toString("utf8").replace(/\n$/, "") : undefined;
  }
}

const TYPE_OF_MODE: Record<EntryMode, string> = { "040000": "tree", "100644": "blob", "100755": "blob", "120000": "blob", "160000": "commit" };

/** The mode git means by a mode as stored (`40000` for a folder; old trees may hold `100664`). */
function normalizeMode(mode: string): EntryMode {
  if (mode === "40000" || mode === "040000") return "040000";
  if (mode === "120000" || mode === "160000") return mode;
  return (parseInt(mode, 8) & 0o100) !== 0 ? "100755" : "100644";
}

/**
 * The entries of a tree object's content as `git cat-file --batch` gives it (`<mode> <name>\0<raw id>`
 * per entry, the id `idBytes` long).
 */
function treeItems(data: Buffer, idBytes: number): TreeItem[] {
  const out: TreeItem[] = [];
  for (let i = 0; i < data.length; ) {
    const sp = data.indexOf(0x20, i);
    const nul = data.indexOf(0, sp);
    if (sp < 0 || nul < 0 || nul + 1 + idBytes > data.length) throw new GitError("Stalled", "ObjectCorrupt", "a tree object is truncated", { command: "git cat-file --batch", stderr: "", hint: "run `git fsck` in the repository" });
    const mode = normalizeMode(data.toString("latin1", i, sp));
    out.push({ mode, path: data.toString("utf8", sp + 1, nul), oid: data.toString("hex", nul + 1, nul + 1 + idBytes), type: TYPE_OF_MODE[mode] });
    i = nul + 1 + idBytes;
  }
  return out;
}

/** A commit object's header fields and message. */
function commitFromObject(data: Buffer): CommitInfo {
  const end = data.indexOf("\n\n");
  const headerEnd = end < 0 ? data.length : end;
  const message = end < 0 ? "" : data.toString("utf8", end + 2);
  let tree = "";
  const parent: string[] = [];
  let author: Person | undefined;
  let committer: Person | undefined;
  // Each header line is decoded on its own: a parent kept in a cache then holds its line, not the
  // whole commit (V8's substrings keep the string they were cut from alive).
  for (let at = 0; at < headerEnd; ) {
    const nl = data.indexOf(10, at);
    const stop = nl < 0 || nl > headerEnd ? headerEnd : nl;
    const line = data.toString("utf8", at, stop);
    at = stop + 1;
    if (line.startsWith("tree ")) tree = line.slice(5);
    else if (line.startsWith("parent ")) parent.push(line.slice(7));
    else if (line.startsWith("author ")) author = personOf(line.slice(7));
    else if (line.startsWith("committer ")) committer = personOf(line.slice(10));
  }
  const nobody: Person = { name: "", email: "", timestamp: 0, timezoneOffset: 0 };
  return { tree, parent, author: author ?? nobody, committer: committer ?? author ?? nobody, message, subject: subjectOf(data, end) };
}

/** The message's first line, decoded on its own (a cache of subjects must not keep whole messages alive). */
function subjectOf(data: Buffer, headerEnd: number): string {
  if (headerEnd < 0) return "";
  const nl = data.indexOf(10, headerEnd + 2);
  return data.toString("utf8", headerEnd + 2, nl < 0 ? data.length : nl);
}

/** `Name <email> 1700000000 +0100` as a Person (timezoneOffset in JS minutes: +0100 is -60). */
function personOf(text: string): Person {
  const m = /^(.*?) ?<([^>]*)> (\d+) ([+-])(\d\d)(\d\d)$/.exec(text);
  if (!m) return { name: text, email: "", timestamp: 0, timezoneOffset: 0 };
  const minutes = Number(m[5]) * 60 + Number(m[6]);
  return { name: m[1]!, email: m[2]!, timestamp: Number(m[3]), timezoneOffset: m[4] === "-" ? minutes : -minutes };
}

/** Rejects with Stalled `UnsafeTree` naming every name in a tree that git's verify_path refuses, or that is there twice. */
function refuseUnsafeNames(tree: string, folder: string, entries: readonly TreeItem[]): void {
  const seen = new Set<string>();
  const refused: string[] = [];
  for (const e of entries) {
    if (refusedName(e.path)) refused.push(JSON.stringify(e.path));
    else if (seen.has(e.path)) refused.push(`${JSON.stringify(e.path)} twice`);
    seen.add(e.path);
  }
  if (!refused.length) return;
  throw new GitError("Stalled", "UnsafeTree", `tree ${tree} (${folder ? JSON.stringify(folder) : "the root folder"}) holds ${refused.join(", ")}: git refuses to check that out`, {
    command: "git cat-file --batch", stderr: "", hint: "the commit cannot be used; commit a fixed tree on top of it",
  });
}

/** Names git's verify_path refuses on some platform: empty, `.`, `..`, a separator, `.git` as HFS+ or NTFS may spell it. */
function refusedName(name: string): boolean {
  if (name === "" || /[\/\0]/.test(name)) return true;
  const hfs = name.replace(/[\u200C-\u200F\u202A-\u202E\u206A-\u206F\uFEFF]/g, "");
  if (hfs === "." || hfs === "..") return true;
  const ntfs = (hfs.split(":")[0] ?? "").toLowerCase().replace(/[. ]+$/, "");
  return ntfs === ".git" || /^\.?git~[1-9]$/.test(ntfs);
}

function same(a: { mode: string; oid: string } | undefined, b: { mode: string; oid: string } | undefined): boolean {
  return a === b || (!!a && !!b && a.mode === b.mode && a.oid === b.oid);
}
