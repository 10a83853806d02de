import * as fs from "node:fs";
import { createHash } from "node:crypto";
import { mkdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { promisify } from "node:util";
import { deflate, inflate, inflateSync } from "node:zlib";
import { join, resolve } from "node:path";
import git from "isomorphic-git";
import { lockedFs } from "./locked-fs.js";
import { readRef, readSymbolicRef, updateRef } from "./refs.js";
import { BlobPolicy } from "../security/blob-policy.js";
import { PackError, PackStore, PackWriter, type ObjectType, type PackObject, type StoredObject } from "./pack.js";
import { requireSupportedFormat } from "./native/format.js";

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
/**
 * Checks that the repository at `gitdir` is in a format this release reads: sha1 objects and refs as
 * files (the sandbox's objects are still read in process, and that reader knows sha1 only). Rejects
 * with Stalled `RepositoryFormatUnsupported` and a hint; nothing has been written then.
 */
export async function requireUsableRepository(gitdir: string): Promise<void> {
  await requireSupportedFormat(gitdir, { objectFormats: ["sha1"], refStorages: ["files"] });
}

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
  /** Parents of the commits read so far, for ancestry walks (a commit never changes). */
  private readonly parents = new Map<string, readonly string[]>();
  /** Packed objects, read one entry at a time (isomorphic-git would load whole packs into memory). */
  private readonly packs: PackStore;

  private constructor(
    readonly dir: string,
    readonly gitdir: string,
  ) {
    this.packs = new PackStore(gitdir, { readBase: (oid) => readLooseObject(gitdir, oid) });
  }

  /** Closes the pack files read so far (the repository may be used again after: they are opened again). */
  close(): void {
    this.packs.close();
  }

  /**
   * An object's type and content, read natively: loose, then packed. Undefined when neither has
   * it in a form read here (a version 1 pack index) or it is damaged: the caller then asks
   * isomorphic-git, which reports the damage as it always did.
   */
  private readNative(oid: string): PackObject | undefined {
    // Packs first: a lookup in memory, where a missing loose file costs an exception.
    try {
      const packed = this.packs.read(oid);
      if (packed) return packed;
    } catch (err) {
      if (!(err instanceof PackError)) throw err;
    }
    return readLooseObject(this.gitdir, oid);
  }

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
    // Synchronous: copyClosure asks this for every entry of every tree it sends, and a queued
    // access costs ten times as much as the syscall. Packs first (in memory), then the loose file.
    const packed = /^[0-9a-f]{40}$/.test(oid) ? this.packs.has(oid) : undefined;
    if (packed || fs.existsSync(this.loosePath(oid))) return true;
    if (packed === false) return false;
    try {
      await git.readObject({ fs, gitdir: this.gitdir, oid, format: "deflated", cache: this.cache });
      return true;
    } catch {
      return false;
    }
  }

  private loosePath(oid: string): string {
    return join(this.gitdir, "objects", oid.slice(0, 2), oid.slice(2));
  }

  /**
   * Writes an object's already deflated bytes (checked by the caller) under its name, unless it
   * exists (`absent`: the caller just found that it does not).
   */
  private async writeLooseBytes(oid: string, data: Buffer, absent = false): Promise<void> {
    const dir = join(this.gitdir, "objects", oid.slice(0, 2));
    const file = join(dir, oid.slice(2));
    if (!absent && fs.existsSync(file)) return;
    // A name no other writer uses: this process's id and a counter (cheaper than random bytes).
    const tmp = join(dir, `tmp_obj_${process.pid}_${++tempObjects}`);
    try {
      // The fan-out folder usually exists: create it only when the write says it does not.
      await writeFile(tmp, data, { mode: 0o444 }).catch(async (err: NodeJS.ErrnoException) => {
        if (err.code !== "ENOENT") throw err;
        await mkdir(dir, { recursive: true });
        await writeFile(tmp, data, { mode: 0o444 });
      });
      await rename(tmp, file);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
  }

  /**
   * A batch of new objects (`expected` of them, when known): written loose while few (as git does
   * below 100), else into packs of at most PACK_BYTES each, so a commit of 30,000 files writes a
   * few files instead of 30,000. Its objects are readable once `finish()` resolved.
   */
  batch(expected = 0): ObjectBatch {
    return new ObjectBatch(this, expected >= PACKED_FROM);
  }

  /**
   * Writes a loose object as git does: deflated into a temp file in objects/, renamed into place
   * (so a reader never sees half an object), read-only. An object that exists is not written again.
   * zlib runs on libuv's thread pool, so parallel writes use both cores.
   */
  private async writeLoose(type: string, content: Buffer): Promise<string> {
    const header = Buffer.from(`${type} ${content.length}\0`);
    const oid = createHash("sha1").update(header).update(content).digest("hex");
    const file = join(this.gitdir, "objects", oid.slice(0, 2), oid.slice(2));
    // existsSync: a missing object (the usual case here) costs no exception.
    if (fs.existsSync(file)) return oid;
    await this.writeLooseBytes(oid, await deflateAsync(Buffer.concat([header, content])), true);
    return oid;
  }

  /** Reads a blob's bytes; throws NotFoundError when it is missing. */
  async readBlob(oid: string): Promise<Buffer> {
    const native = this.readNative(oid);
    if (native?.type === "blob") return native.content;
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

  /**
   * The entries of one tree object (not recursive), in the tree's order. `oid` may also name a commit
   * or tag (its tree is read). Throws NotFoundError when the object is missing, UnsafeFilepathError
   * (isomorphic-git's) for a name git would refuse to check out (`..`, `.git`, a `/`, ...).
   */
  async readTree(oid: string): Promise<{ mode: EntryMode; path: string; oid: string; type: string }[]> {
    if (oid === EMPTY_TREE) return [];
    const native = this.readNative(oid);
    const parsed = native?.type === "tree" ? parseTree(native.content) : undefined;
    if (parsed) return parsed;
    const { tree } = await git.readTree({ fs, gitdir: this.gitdir, oid, cache: this.cache });
    return tree.map((e) => ({ mode: normalizeMode(e.mode), path: e.path, oid: e.oid, type: e.type }));
  }

  /**
   * Writes a tree from its entries and returns its oid. Entries are sorted in git's order (a
   * folder sorts as if its name ended in "/"); modes are written without a leading zero, as git does.
   */
  async writeTree(entries: { mode: EntryMode; path: string; oid: string }[], objects?: ObjectBatch): Promise<string> {
    const key = (e: { mode: EntryMode; path: string }) => Buffer.from(e.mode === "040000" ? `${e.path}/` : e.path);
    const sorted = entries.map((e) => ({ e, k: key(e) })).sort((a, b) => Buffer.compare(a.k, b.k));
    const parts: Buffer[] = [];
    for (const { e } of sorted) parts.push(Buffer.from(`${e.mode.replace(/^0/, "")} ${e.path}\0`), Buffer.from(e.oid, "hex"));
    return objects ? objects.add("tree", Buffer.concat(parts)) : this.writeLoose("tree", Buffer.concat(parts));
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
  async buildTree(base: string | null, changes: Map<string, FileEntry | null>, objects?: ObjectBatch): Promise<string> {
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
      const oid = await this.buildTree(subBase, sub, objects);
      if (oid === EMPTY_TREE) entries.delete(name);
      else entries.set(name, { path: name, mode: "040000", oid, type: "tree" });
    }
    return this.writeTree([...entries.values()], objects);
  }

  /** The tree of a commit. */
  async commitTree(commit: string): Promise<string> {
    const native = this.readNative(commit);
    if (native?.type === "commit" && native.content.toString("latin1", 0, 5) === "tree " && native.content[45] === 0x0a) {
      return native.content.toString("latin1", 5, 45);
    }
    return (await this.readCommit(commit)).tree;
  }

  /** The parents of a commit (remembered: a commit never changes). Throws NotFoundError when it is missing. */
  async commitParents(commit: string): Promise<readonly string[]> {
    let parents = this.parents.get(commit);
    if (!parents) {
      const native = this.readNative(commit);
      parents = native?.type === "commit" ? parentsOf(native.content) : (await this.readCommit(commit)).parent;
      // Bounded, so a walk through a huge history cannot keep it all in memory.
      if (this.parents.size >= 50_000) this.parents.clear();
      this.parents.set(commit, parents);
    }
    return parents;
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

  /**
   * True when `ancestor` is `descendant` or one of its ancestors: a breadth-first walk over parents
   * (as isomorphic-git's isDescendent, which a shallow repository still uses), reading loose commits
   * with native zlib and each commit only once per Repo. Throws NotFoundError for a missing commit.
   */
  async isAncestor(ancestor: string, descendant: string): Promise<boolean> {
    if (ancestor === descendant) return true;
    if (fs.existsSync(join(this.gitdir, "shallow"))) {
      return git.isDescendent({ fs, gitdir: this.gitdir, oid: descendant, ancestor, depth: -1, cache: this.cache });
    }
    const seen = new Set([descendant]);
    for (let frontier = [descendant]; frontier.length; ) {
      const next: string[] = [];
      for (const c of frontier) {
        for (const p of await this.commitParents(c)) {
          if (p === ancestor) return true;
          if (!seen.has(p)) {
            seen.add(p);
            next.push(p);
          }
        }
      }
      frontier = next;
    }
    return false;
  }

  /** The best common ancestor of two commits, or null when their histories are unrelated. */
  async mergeBase(a: string, b: string): Promise<string | null> {
    const bases = await git.findMergeBase({ fs, gitdir: this.gitdir, oids: [a, b], cache: this.cache });
    return (bases[0] as string | undefined) ?? null;
  }

  /** Reads an object's type and uncompressed content. */
  async readRaw(oid: string): Promise<{ type: string; object: Buffer }> {
    const native = this.readNative(oid);
    if (native) return { type: native.type, object: native.content };
    const o = await git.readObject({ fs, gitdir: this.gitdir, oid, format: "content", cache: this.cache });
    return { type: o.type, object: Buffer.from(o.object as Uint8Array) };
  }

  /**
   * An object's bytes as a pack here stores them whole, for copying into another pack as they are;
   * undefined when it is loose, a delta or damaged (readRaw() it then).
   */
  readStored(oid: string): StoredObject | undefined {
    return this.packs.readStored(oid);
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
const inflateAsync = promisify(inflate);
/** Batches of at least this many objects are written as packs (git's fetch.unpackLimit). */
const PACKED_FROM = 100;
/** A pack of a batch holds at most this many bytes of content (memory holds them until written). */
const PACK_BYTES = 32 * 1024 * 1024;

/** New objects written together: see Repo.batch(). */
export class ObjectBatch {
  private pack = new PackWriter();
  /** Packs being written, one after the other. */
  private written: Promise<unknown> = Promise.resolve();

  private added = 0;

  constructor(
    readonly repo: Repo,
    private packed: boolean,
  ) {}

  /**
   * Adds an object; resolves with its oid (loose: once written; packed: at once, written by
   * finish()). Objects land in the order they were added (a pack is written only after the
   * ones before it), so an object is never stored before what it names when added after it.
   */
  async add(type: ObjectType, content: Buffer): Promise<string> {
    if (!this.packing()) return this.repo.writeRaw(type, content);
    const oid = this.pack.add(type, content);
    await this.writeIfFull();
    return oid;
  }

  /** Adds object `oid` as another repository's pack stores it (Repo.readStored), as add() does. */
  async addStored(oid: string, stored: StoredObject): Promise<void> {
    if (!this.packing()) {
      const written = await this.repo.writeRaw(stored.type, await inflateAsync(stored.deflated));
      if (written !== oid) throw new Error(`object ${oid} read from a pack hashes to ${written}`);
      return;
    }
    this.pack.addStored(oid, stored);
    await this.writeIfFull();
  }

  /** Whether the object being added goes into a pack: from the PACKED_FROM-th object of the batch on. */
  private packing(): boolean {
    if (!this.packed && ++this.added >= PACKED_FROM) this.packed = true;
    return this.packed;
  }

  private async writeIfFull(): Promise<void> {
    if (this.pack.bytes < PACK_BYTES) return;
    const full = this.pack;
    this.pack = new PackWriter();
    this.written = this.written.then(() => full.write(this.repo.gitdir));
    await this.written;
  }

  /** Writes what is still pending; the batch's objects are readable once this resolved. */
  async finish(): Promise<void> {
    await this.written;
    if (this.pack.count) await this.pack.write(this.repo.gitdir);
  }
}

/** Temp files of loose objects written by this process so far (their names). */
let tempObjects = 0;

/**
 * A loose object's type and content, read with native zlib and checked against its name (as
 * isomorphic-git checks what it reads). Returns undefined when there is no such loose object (it may
 * be packed) or it is damaged: the caller then asks isomorphic-git, which reports the damage.
 * Synchronous: meant for commits and trees, a few hundred bytes each.
 */
function readLooseObject(gitdir: string, oid: string): PackObject | undefined {
  if (!/^[0-9a-f]{40}$/.test(oid)) return undefined;
  let raw: Buffer;
  try {
    raw = inflateSync(fs.readFileSync(join(gitdir, "objects", oid.slice(0, 2), oid.slice(2))));
  } catch {
    return undefined;
  }
  return parseLoose(raw, oid);
}

/** The type and content of an inflated loose object, when its header is sound and it hashes to `oid`. */
function parseLoose(raw: Buffer, oid: string): PackObject | undefined {
  const nul = raw.indexOf(0);
  const sp = raw.indexOf(0x20);
  if (nul < 0 || sp < 0 || sp > nul || raw.toString("latin1", sp + 1, nul) !== String(raw.length - nul - 1)) return undefined;
  if (createHash("sha1").update(raw).digest("hex") !== oid) return undefined;
  const type = raw.toString("latin1", 0, sp);
  if (type !== "blob" && type !== "tree" && type !== "commit" && type !== "tag") return undefined;
  return { type, content: raw.subarray(nul + 1) };
}

/** The `parent` lines of a commit's header. */
function parentsOf(content: Buffer): string[] {
  const parents: string[] = [];
  const headerEnd = content.indexOf("\n\n");
  const header = content.toString("utf8", 0, headerEnd < 0 ? content.length : headerEnd);
  for (const line of header.split("\n")) if (line.startsWith("parent ")) parents.push(line.slice(7, 47));
  return parents;
}

const TYPE_OF_MODE: Record<string, string> = { "040000": "tree", "100644": "blob", "100755": "blob", "120000": "blob", "160000": "commit" };

/**
 * A tree's entries parsed natively: isomorphic-git inflates in JavaScript (about 1 ms per tree),
 * which dominated buildTree, copyClosure and a full scan's tree reads. Returns undefined for
 * anything it does not handle alike (an unexpected mode, or a name isomorphic-git might refuse):
 * the caller asks isomorphic-git, which then gives the same answer or the same UnsafeFilepathError.
 */
function parseTree(raw: Buffer): { mode: EntryMode; path: string; oid: string; type: string }[] | undefined {
  const out: { mode: EntryMode; path: string; oid: string; type: string }[] = [];
  for (let i = 0; i < raw.length; ) {
    const sp = raw.indexOf(0x20, i);
    const end = raw.indexOf(0, sp);
    if (sp < 0 || end < 0 || end + 21 > raw.length) return undefined;
    let mode = raw.toString("latin1", i, sp);
    if (mode === "40000") mode = "040000";
    const type = TYPE_OF_MODE[mode];
    const path = raw.toString("utf8", sp + 1, end);
    if (!type || !plainName(path)) return undefined;
    out.push({ mode: mode as EntryMode, path, oid: raw.toString("hex", end + 1, end + 21), type });
    i = end + 21;
  }
  return out;
}

/**
 * Names isomorphic-git's tree parser certainly accepts: not empty, no separator or colon, none of the
 * invisible characters HFS+ ignores, valid UTF-8, and not `.`, `..`, `.git` or `git~N` in any spelling
 * (a superset of what it refuses, checked cheaply).
 */
function plainName(name: string): boolean {
  if (name === "" || /[\/\\:\uFFFD\u200C-\u200F\u202A-\u202E\u206A-\u206F\uFEFF]/.test(name)) return false;
  return !/^\.(git)?[. ]*$/i.test(name) && !/^\.?git~[1-9]/i.test(name);
}

function same(a: { mode: string; oid: string } | undefined, b: { mode: string; oid: string } | undefined): boolean {
  return a === b || (!!a && !!b && a.mode === b.mode && a.oid === b.oid);
}

function normalizeMode(mode: string): EntryMode {
  const m = mode.padStart(6, "0");
  return (m === "100664" ? "100644" : m) as EntryMode;
}
