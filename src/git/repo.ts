import * as fs from "node:fs";
import { createHash, randomBytes } from "node:crypto";
import { mkdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { promisify } from "node:util";
import { deflate } from "node:zlib";
import { join, resolve } from "node:path";
import git from "isomorphic-git";
import { lockedFs } from "./locked-fs.js";
import { readRef, readSymbolicRef, updateRef } from "./refs.js";
import { BlobPolicy } from "../security/blob-policy.js";

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
  /** Minutes, JS convention: UTC+1 is -60 (as isomorphic-git and Date#getTimezoneOffset). */
  timezoneOffset: number;
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

/** Full ref name of a branch (always `refs/heads/...`: a short name would make isomorphic-git write .git/<name>). */
export function branchRef(branch: string): string {
  return `refs/heads/${branch}`;
}

/**
 * The one gateway to a repository's objects and refs. Everything in cascade-sync that touches git
 * goes through src/git/: objects through isomorphic-git, refs through refs.ts (lock files,
 * compare-and-swap, reflog), the index through index-file.ts.
 */
export class Repo {
  /** isomorphic-git's pack cache, shared by all reads of this repository. */
  readonly cache: object = {};
  /**
   * What files become in git and what blobs become outside it (security.encrypt, the key, the
   * secret scan), like git's clean and smudge filters: every write of a sandbox file as a blob and
   * every write of a blob as a file (sandbox, releases, gate exports) goes through it. The
   * controller sets it from the config in force; a plain repository stores content as it is.
   */
  policy: BlobPolicy = BlobPolicy.plain();

  private constructor(
    readonly dir: string,
    readonly gitdir: string,
  ) {}

  /** Opens the repository whose work tree is `dir`; throws ENOENT when `dir` has no .git. */
  static async open(dir: string): Promise<Repo> {
    const abs = resolve(dir);
    const dotgit = join(abs, ".git");
    const st = await stat(dotgit);
    if (st.isDirectory()) return new Repo(abs, dotgit);
    const text = await readFile(dotgit, "utf8");
    const m = /^gitdir:\s*(.+)$/m.exec(text);
    if (!m?.[1]) throw Object.assign(new Error(`${dotgit} is neither a directory nor a gitdir file`), { code: "ENOENT" });
    return new Repo(abs, resolve(abs, m[1].trim()));
  }

  /** Opens a bare repository (a remote given by path). */
  static bare(gitdir: string): Repo {
    return new Repo(gitdir, resolve(gitdir));
  }

  /** The branch HEAD points at, or null when HEAD is detached. */
  async currentBranch(): Promise<string | null> {
    const target = await readSymbolicRef(this.gitdir, "HEAD");
    return target?.startsWith("refs/heads/") ? target.slice("refs/heads/".length) : null;
  }

  /** The commit a branch points at, or null when the branch does not exist. */
  async branchHead(branch: string): Promise<string | null> {
    return readRef(this.gitdir, branchRef(branch));
  }

  /** Any ref's value (full name), or null. */
  async ref(name: string): Promise<string | null> {
    return readRef(this.gitdir, name);
  }

  /**
   * Moves a ref from `expectedOld` to `oid` under git's lock-file protocol and logs it in the reflog.
   * Throws RefConflictError when the ref moved meanwhile, LockBusyError when someone holds its lock.
   */
  async setRef(name: string, oid: string, expectedOld: string | null | undefined, message: string, who: Person): Promise<void> {
    await updateRef(this.gitdir, name, oid, { expectedOld, message, committer: who });
  }

  /** True when the object exists in this repository (loose or packed). */
  async hasObject(oid: string): Promise<boolean> {
    try {
      await fs.promises.access(join(this.gitdir, "objects", oid.slice(0, 2), oid.slice(2)));
      return true;
    } catch {
      try {
        await git.readObject({ fs, gitdir: this.gitdir, oid, format: "deflated", cache: this.cache });
        return true;
      } catch {
        return false;
      }
    }
  }

  /** Writes a blob and returns its oid. */
  async writeBlob(content: Buffer): Promise<string> {
    return this.writeLoose("blob", content);
  }

  /**
   * Writes a loose object as git does: deflated into a temp file in objects/, renamed into place
   * (so a reader never sees half an object), read-only. An object that exists is not written again.
   * zlib runs on libuv's thread pool, so parallel writes use both cores.
   */
  private async writeLoose(type: string, content: Buffer): Promise<string> {
    const header = Buffer.from(`${type} ${content.length}\0`);
    const oid = createHash("sha1").update(header).update(content).digest("hex");
    const dir = join(this.gitdir, "objects", oid.slice(0, 2));
    const file = join(dir, oid.slice(2));
    if (await fs.promises.access(file).then(() => true, () => false)) return oid;
    const data = await deflateAsync(Buffer.concat([header, content]));
    await mkdir(dir, { recursive: true });
    const tmp = join(dir, `tmp_obj_${randomBytes(6).toString("hex")}`);
    try {
      await writeFile(tmp, data, { mode: 0o444 });
      await rename(tmp, file);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    return oid;
  }

  /** Reads a blob's bytes; throws NotFoundError when it is missing. */
  async readBlob(oid: string): Promise<Buffer> {
    const { blob } = await git.readBlob({ fs, gitdir: this.gitdir, oid, cache: this.cache });
    return Buffer.from(blob);
  }

  /**
   * The bytes to write out of git for the entry at `path`: a regular file's blob through the policy
   * (decrypted when it is encrypted; throws Stalled when it cannot be), a symlink's target as it is.
   */
  async readContent(path: string, entry: { oid: string; mode: string }): Promise<Buffer> {
    const blob = await this.readBlob(entry.oid);
    return entry.mode === "120000" ? blob : this.policy.fromGit(path, blob);
  }

  /** Reads a commit's tree, parents, message, author and committer. */
  async readCommit(oid: string) {
    const { commit } = await git.readCommit({ fs, gitdir: this.gitdir, oid, cache: this.cache });
    return commit;
  }

  /** The entries of one tree object (not recursive). */
  async readTree(oid: string): Promise<{ mode: EntryMode; path: string; oid: string; type: string }[]> {
    if (oid === EMPTY_TREE) return [];
    const { tree } = await git.readTree({ fs, gitdir: this.gitdir, oid, cache: this.cache });
    return tree.map((e) => ({ mode: normalizeMode(e.mode), path: e.path, oid: e.oid, type: e.type }));
  }

  /**
   * Writes a tree from its entries and returns its oid. Entries are sorted in git's order (a
   * folder sorts as if its name ended in "/"); modes are written without a leading zero, as git does.
   */
  async writeTree(entries: { mode: EntryMode; path: string; oid: string }[]): Promise<string> {
    const key = (e: { mode: EntryMode; path: string }) => Buffer.from(e.mode === "040000" ? `${e.path}/` : e.path);
    const sorted = entries.map((e) => ({ e, k: key(e) })).sort((a, b) => Buffer.compare(a.k, b.k));
    const parts: Buffer[] = [];
    for (const { e } of sorted) parts.push(Buffer.from(`${e.mode.replace(/^0/, "")} ${e.path}\0`), Buffer.from(e.oid, "hex"));
    return this.writeLoose("tree", Buffer.concat(parts));
  }

  private async writeEmptyTree(): Promise<string> {
    return this.writeLoose("tree", Buffer.alloc(0));
  }

  /** Writes a commit and returns its oid (refs are not touched). */
  async writeCommit(c: { tree: string; parents: string[]; message: string; author: Person; committer?: Person }): Promise<string> {
    return git.writeCommit({
      fs: lockedFs,
      gitdir: this.gitdir,
      commit: { tree: c.tree, parent: c.parents, message: c.message, author: c.author, committer: c.committer ?? c.author },
    });
  }

  /**
   * Builds a new tree from `base` with `changes` applied (path -> entry, or null to delete), reading
   * and rewriting only the trees on the changed paths: the cost follows the change, not the repository.
   * Returns the root tree's oid (the empty tree when nothing is left).
   */
  async buildTree(base: string | null, changes: Map<string, FileEntry | null>): Promise<string> {
    const nested = new Map<string, Map<string, FileEntry | null>>();
    for (const [path, entry] of changes) {
      const slash = path.indexOf("/");
      const head = slash < 0 ? path : path.slice(0, slash);
      if (!nested.has(head)) nested.set(head, new Map());
      if (slash >= 0) nested.get(head)!.set(path.slice(slash + 1), entry);
      else nested.get(head)!.set("", entry);
    }
    const entries = new Map((base ? await this.readTree(base) : []).map((e) => [e.path, e]));
    for (const [name, sub] of nested) {
      const direct = sub.get("");
      sub.delete("");
      const existing = entries.get(name);
      if (sub.size === 0) {
        if (direct) entries.set(name, { path: name, mode: direct.mode, oid: direct.oid, type: "blob" });
        else entries.delete(name);
        continue;
      }
      // Files below `name`: it must be a directory now (a file of that name is replaced).
      const subBase = existing?.mode === "040000" ? existing.oid : null;
      const oid = await this.buildTree(subBase, sub);
      if (oid === EMPTY_TREE) entries.delete(name);
      else entries.set(name, { path: name, mode: "040000", oid, type: "tree" });
    }
    return this.writeTree([...entries.values()]);
  }

  /** The tree of a commit. */
  async commitTree(commit: string): Promise<string> {
    return (await this.readCommit(commit)).tree;
  }

  /** Every file below a tree as path -> entry (used for merges and full comparisons, not per batch). */
  async flattenTree(tree: string, prefix = "", out = new Map<string, FileEntry>()): Promise<Map<string, FileEntry>> {
    for (const e of await this.readTree(tree)) {
      const path = prefix + e.path;
      if (e.mode === "040000") await this.flattenTree(e.oid, `${path}/`, out);
      else out.set(path, { mode: e.mode, oid: e.oid });
    }
    return out;
  }

  /** Paths whose file entry differs between two trees, skipping identical subtrees. */
  async diffTrees(a: string | null, b: string | null, prefix = ""): Promise<TreeDiff[]> {
    if (a === b) return [];
    const ea = new Map((a ? await this.readTree(a) : []).map((e) => [e.path, e]));
    const eb = new Map((b ? await this.readTree(b) : []).map((e) => [e.path, e]));
    const out: TreeDiff[] = [];
    for (const name of new Set([...ea.keys(), ...eb.keys()])) {
      const x = ea.get(name);
      const y = eb.get(name);
      if (x && y && x.oid === y.oid && x.mode === y.mode) continue;
      const path = prefix + name;
      const xTree = x?.mode === "040000" ? x.oid : null;
      const yTree = y?.mode === "040000" ? y.oid : null;
      if (xTree || yTree) out.push(...(await this.diffTrees(xTree, yTree, `${path}/`)));
      const xFile = x && x.mode !== "040000" ? { mode: x.mode, oid: x.oid } : undefined;
      const yFile = y && y.mode !== "040000" ? { mode: y.mode, oid: y.oid } : undefined;
      if (xFile || yFile) out.push({ path, ...(xFile ? { before: xFile } : {}), ...(yFile ? { after: yFile } : {}) });
    }
    return out;
  }

  /**
   * Three-way merge of trees where `ours` wins every path changed on both sides (also modify/delete):
   * the sandbox's content is never replaced by a concurrent remote change, and the remote's commits
   * stay in history through the merge commit's parents. Returns the merged tree's oid.
   */
  async mergeTreesOursWins(base: string | null, ours: string, theirs: string): Promise<string> {
    return (await this.mergeTree(base, ours, theirs)) ?? this.writeEmptyTree();
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

  /** True when `ancestor` is `descendant` or one of its ancestors. */
  async isAncestor(ancestor: string, descendant: string): Promise<boolean> {
    if (ancestor === descendant) return true;
    return git.isDescendent({ fs, gitdir: this.gitdir, oid: descendant, ancestor, depth: -1, cache: this.cache });
  }

  /** The best common ancestor of two commits, or null when their histories are unrelated. */
  async mergeBase(a: string, b: string): Promise<string | null> {
    const bases = await git.findMergeBase({ fs, gitdir: this.gitdir, oids: [a, b], cache: this.cache });
    return (bases[0] as string | undefined) ?? null;
  }

  /** Reads an object's type and uncompressed content. */
  async readRaw(oid: string): Promise<{ type: string; object: Buffer }> {
    const o = await git.readObject({ fs, gitdir: this.gitdir, oid, format: "content", cache: this.cache });
    return { type: o.type, object: Buffer.from(o.object as Uint8Array) };
  }

  /** Writes an object from its type and content; returns its oid. */
  async writeRaw(type: string, object: Buffer): Promise<string> {
    return this.writeLoose(type, object);
  }

  /**
   * The full commit id for what a person typed: a branch name, a full id, or an abbreviated one
   * (at least 4 hex digits). Returns null when nothing matches or an abbreviation is ambiguous.
   */
  async resolveCommit(text: string): Promise<string | null> {
    const branch = await this.branchHead(text).catch(() => null);
    if (branch) return branch;
    if (!/^[0-9a-f]{4,40}$/.test(text)) return null;
    try {
      const oid = text.length === 40 ? text : await git.expandOid({ fs, gitdir: this.gitdir, oid: text, cache: this.cache });
      await this.readCommit(oid);
      return oid;
    } catch {
      return null;
    }
  }

  /** The content of the file at `path` in `commit`'s tree, or null when there is none (or it is not a file). */
  async fileAt(commit: string, path: string): Promise<Buffer | null> {
    let tree = await this.commitTree(commit);
    const parts = path.split("/");
    for (const [i, part] of parts.entries()) {
      const entry = (await this.readTree(tree)).find((e) => e.path === part);
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
      if (!(await check(tree, prefix || "root tree"))) return;
      for (const e of await this.readTree(tree)) {
        if (e.mode === "160000") continue;
        if (e.mode === "040000") await walk(e.oid, `${prefix}${e.path}/`);
        else if (!seen.has(e.oid)) {
          seen.add(e.oid);
          await check(e.oid, `${prefix}${e.path}`);
        }
      }
    };
    if (await check(commit, "commit")) await walk(await this.commitTree(commit), "");
    return { objects, problems };
  }

  /** Full names of the refs under `prefix` (e.g. `refs/cascade-sync/failed/`), loose and packed. */
  async listRefs(prefix: string): Promise<string[]> {
    const base = prefix.replace(/\/+$/, "");
    const names: string[] = await git.listRefs({ fs, gitdir: this.gitdir, filepath: base });
    return names.map((n) => `${base}/${n}`);
  }

  /** Reads a git config value of this repository (e.g. `user.name`). */
  async getConfig(path: string): Promise<string | undefined> {
    const v: unknown = await git.getConfig({ fs, gitdir: this.gitdir, path });
    return typeof v === "string" ? v : undefined;
  }

  /** Sets a git config value of this repository when it differs. */
  async setConfig(path: string, value: string | undefined): Promise<void> {
    if ((await this.getConfig(path)) === value) return;
    await git.setConfig({ fs: lockedFs, gitdir: this.gitdir, path, value });
  }
}

const deflateAsync = promisify(deflate);

function same(a: { mode: string; oid: string } | undefined, b: { mode: string; oid: string } | undefined): boolean {
  return a === b || (!!a && !!b && a.mode === b.mode && a.oid === b.oid);
}

function normalizeMode(mode: string): EntryMode {
  const m = mode.padStart(6, "0");
  return (m === "100664" ? "100644" : m) as EntryMode;
}
