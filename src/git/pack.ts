import * as fs from "node:fs";
import { createHash, randomBytes } from "node:crypto";
import { mkdir, open, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { constants as zlibConstants, crc32, deflate, deflateSync, inflate, inflateSync } from "node:zlib";

/**
 * Git packfiles without isomorphic-git (Documentation/gitformat-pack.txt): `PackStore` reads single
 * objects from the packs of a repository with positioned reads, never loading a whole pack, and
 * `PackWriter` writes a batch of new objects as one pack and its v2 index instead of one loose file
 * per object.
 */

/** The four object types a repository holds. */
export type ObjectType = "commit" | "tree" | "blob" | "tag";

/** An object's type and uncompressed content. */
export interface PackObject {
  type: ObjectType;
  content: Buffer;
}

/** An object as a pack stores it whole: its type, its size, and its deflated content. */
export interface StoredObject {
  type: ObjectType;
  size: number;
  deflated: Buffer;
}

/**
 * A packed object that cannot be read because the pack is damaged: bad zlib data, a truncated entry,
 * a broken delta, a content that does not hash to its name, a pack that does not match its index.
 * `pack` is the .pack file, `oid` the object asked for.
 */
export class PackError extends Error {
  constructor(
    readonly pack: string,
    readonly oid: string,
    readonly reason: string,
    cause?: unknown,
  ) {
    super(`pack ${pack}: object ${oid}: ${reason}`, cause === undefined ? undefined : { cause });
    this.name = "PackError";
  }
}

/** How a PackStore finds REF_DELTA bases outside the packs, and how much it caches. */
export interface PackStoreOptions {
  /**
   * The base of a REF_DELTA that no pack of the repository holds (a loose object), or undefined when
   * there is none. Without it such a delta is reported as damage (a missing base).
   */
  readBase?: (oid: string) => PackObject | undefined;
  /** Bytes of resolved delta bases kept for the next read of the same chain. Default 16 MiB. */
  cacheBytes?: number;
}

const TYPES: readonly (ObjectType | undefined)[] = [undefined, "commit", "tree", "blob", "tag"];
const OFS_DELTA = 6;
const REF_DELTA = 7;
/** Longer chains are damage (a cycle of REF_DELTAs); git's own limit for --depth is 4095. */
const MAX_CHAIN = 10_000;
/** Deeper nesting of REF_DELTA bases found in other packs is damage (packs referring to each other). */
const MAX_NESTING = 64;
/** Entries up to this size are read and inflated synchronously also by readAsync: a trip to the thread pool costs more. */
const SYNC_LIMIT = 256 * 1024;
const IDX_HEADER = 8 + 256 * 4;

const inflateAsync = promisify(inflate);
const deflateAsync = promisify(deflate);
const readAsync = promisify(fs.read);

/** One pack and its index, as PackStore knows it. */
interface Pack {
  /** Distinguishes packs in the base cache's keys. */
  readonly id: number;
  /** The .pack file. */
  readonly path: string;
  /** The whole v2 .idx: ids, crc32s, offsets (about 28 bytes per object). */
  readonly idx: Buffer;
  readonly count: number;
  readonly offsets32: number;
  readonly offsets64: number;
  readonly large: number;
  /** Open descriptor of the .pack, from the first read until it is retired. */
  fd?: number;
  /** Size of the .pack (its entries end 20 bytes before, where the trailer starts). */
  size: number;
  /** The entries' offsets, sorted: an entry ends where the next one starts. Built at the first read. */
  ends?: Float64Array;
  /** Why the .pack cannot be used (it does not match its index), once found. */
  damaged?: string;
  /** The .pack was gone when it was opened (a gc deleting it); listing again checks it. */
  gone: boolean;
  /** Asynchronous reads in flight: a retired pack's descriptor is closed when they are done. */
  users: number;
  retired: boolean;
}

/** An I/O step of a read, performed synchronously by read() and asynchronously by readAsync(). */
type Io = { op: "read"; pack: Pack; position: number; length: number } | { op: "inflate"; data: Buffer; size: number };
type Steps<T> = Generator<Io, T, Buffer>;

/** Damage found while reading an entry; PackStore turns it into a PackError naming the pack and object. */
class Damage extends Error {}
/** The .pack file disappeared (a gc deleted it): skip it and list the folder again. */
class Gone extends Error {
  constructor(readonly pack: Pack) {
    super(`${pack.path} is gone`);
  }
}

let packIds = 0;

/**
 * Reads objects from a repository's packs (objects/pack/pack-*.idx, version 2) with positioned reads
 * of single entries: memory holds the indexes (about 36 bytes per object) and a bounded cache of
 * delta bases, never a pack. Packs come and go (a `git gc` adds one and deletes others): the folder
 * is listed again whenever an object is not found in the packs known, and a pack whose file is gone
 * is dropped. Descriptors of the packs read stay open until `close()` or until a listing finds the
 * pack deleted (on Linux an open pack stays readable after a gc deletes it).
 *
 * A pack whose index is version 1 or unreadable is skipped: `read` answers undefined and `has`
 * undefined for what the other packs lack, so the caller falls back to isomorphic-git for it.
 * Damage is thrown as PackError (after trying every other pack that holds the object).
 */
export class PackStore {
  private packs: Pack[] = [];
  /** Index files that cannot be read here (version 1, damaged), by name: a pack's name never changes content. */
  private unreadable = new Set<string>();
  private listed = false;
  /** The pack folder's identity and mtime at the last listing, and when that was. */
  private stamp = "";
  private listedAt = 0;
  private readonly cache: BaseCache;
  private readonly readBase: ((oid: string) => PackObject | undefined) | undefined;
  private readonly dir: string;

  constructor(
    readonly gitdir: string,
    opts: PackStoreOptions = {},
  ) {
    this.dir = join(gitdir, "objects", "pack");
    this.cache = new BaseCache(opts.cacheBytes ?? 16 * 1024 * 1024);
    this.readBase = opts.readBase;
  }

  /**
   * Whether a pack holds `oid`: true or false, or undefined when no readable pack has it but some
   * pack's index could not be read (the caller asks isomorphic-git then). Lists the folder again
   * before answering false. Throws the file system's error when the folder or an index cannot be
   * read (EMFILE, EIO).
   */
  has(oid: string): boolean | undefined {
    const key = oidKey(oid);
    if (!key) return false;
    if (!this.listed) this.refresh();
    if (this.packs.some((p) => !p.gone && find(p, key) >= 0)) return true;
    if (!this.refreshIfChanged()) return this.unreadable.size ? undefined : false;
    if (this.packs.some((p) => !p.gone && find(p, key) >= 0)) return true;
    return this.unreadable.size ? undefined : false;
  }

  /**
   * The object `oid` from the packs, checked (its content hashes to `oid`); undefined when no
   * readable pack holds it (it may be loose, in a version-1 pack, or missing). Synchronous: meant for
   * commits, trees and small blobs; readAsync keeps big entries off the event loop. The content may
   * be shared with later reads: do not modify it. Throws PackError when every pack holding the
   * object is damaged there; other I/O errors (EMFILE, EIO) are thrown as they are.
   */
  read(oid: string): PackObject | undefined {
    const key = oidKey(oid);
    if (!key) return undefined;
    let first: PackError | undefined;
    for (const [pack, pos] of this.holders(key)) {
      try {
        return this.runSync(this.resolve(pack, pos, oid, 0));
      } catch (err) {
        first ??= this.classify(err, pack, oid);
      }
    }
    if (first) throw first;
    return undefined;
  }

  /** As read(), with big entries read and inflated on libuv's thread pool. */
  async readAsync(oid: string): Promise<PackObject | undefined> {
    const key = oidKey(oid);
    if (!key) return undefined;
    let first: PackError | undefined;
    for (const [pack, pos] of this.holders(key)) {
      try {
        return await this.runAsync(this.resolve(pack, pos, oid, 0));
      } catch (err) {
        first ??= this.classify(err, pack, oid);
      }
    }
    if (first) throw first;
    return undefined;
  }

  /**
   * The stored bytes of `oid` when a pack holds it whole (not as a delta) and the entry's CRC-32
   * matches the pack's index: what a copy into another pack takes as it is, instead of inflating and
   * deflating it again. Undefined otherwise (read() it then; read() also reports damage). Throws
   * the file system's error (EMFILE, EIO) as read() does.
   */
  readStored(oid: string): StoredObject | undefined {
    const key = oidKey(oid);
    if (!key) return undefined;
    for (const [pack, pos] of this.holders(key)) {
      try {
        return this.runSync(this.storedAt(pack, pos));
      } catch (err) {
        if (this.classify(err, pack, oid)) return undefined;
      }
    }
    return undefined;
  }

  /**
   * The packs holding `key` with its position in each: the packs known, then the ones a new listing
   * finds (a damaged copy may have a sound one in a pack a gc just wrote).
   */
  private *holders(key: Buffer): Generator<[Pack, number]> {
    if (!this.listed) this.refresh();
    const tried = new Set<Pack>();
    for (let pass = 0; pass < 2; pass++) {
      if (pass === 1 && !this.refreshIfChanged()) return;
      for (const pack of [...this.packs]) {
        if (tried.has(pack) || pack.gone) continue;
        const pos = find(pack, key);
        if (pos < 0) continue;
        tried.add(pack);
        yield [pack, pos];
      }
    }
  }

  /**
   * Lists objects/pack again: new packs are indexed, packs whose .idx is gone are dropped (their
   * descriptors closed). Done by itself whenever an object is not found; call it after a gc to free
   * the deleted packs' disk space sooner.
   */
  /**
   * Lists the folder again when it may have changed since the last listing (its mtime moved, or a
   * second passed, for file systems with coarse clocks); true when it did. A miss then costs a stat,
   * not a listing: copying 30,000 new objects asks about each of them.
   */
  private refreshIfChanged(): boolean {
    if (this.stamp === this.folderStamp() && Date.now() - this.listedAt < 1000) return false;
    this.refresh();
    return true;
  }

  private folderStamp(): string {
    const st = fs.statSync(this.dir, { bigint: true, throwIfNoEntry: false });
    return st ? `${st.ino}:${st.mtimeNs}` : "none";
  }

  refresh(): void {
    this.listed = true;
    // Taken before listing: a pack added while listing moves the mtime past this stamp.
    this.stamp = this.folderStamp();
    this.listedAt = Date.now();
    let names: string[];
    try {
      names = fs.readdirSync(this.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      names = [];
    }
    const known = new Map(this.packs.map((p) => [p.path, p]));
    const added: Pack[] = [];
    const kept: Pack[] = [];
    const unreadable = new Set<string>();
    for (const name of names) {
      if (!name.startsWith("pack-") || !name.endsWith(".idx")) continue;
      if (this.unreadable.has(name)) {
        unreadable.add(name);
        continue;
      }
      const path = join(this.dir, `${name.slice(0, -4)}.pack`);
      const pack = known.get(path);
      if (pack) {
        known.delete(path);
        if (pack.gone && fs.existsSync(path)) pack.gone = false;
        kept.push(pack);
        continue;
      }
      const loaded = loadIndex(join(this.dir, name), path);
      if (loaded === "gone") continue;
      if (loaded === "unreadable") unreadable.add(name);
      else added.push(loaded);
    }
    for (const pack of known.values()) retire(pack);
    this.unreadable = unreadable;
    // Newest first: recent objects are looked up most.
    this.packs = [...added, ...kept];
  }

  /** Closes the packs' descriptors (reads in flight finish first); the store may be used again after. */
  close(): void {
    for (const pack of this.packs) retire(pack);
    this.packs = [];
    this.listed = false;
    this.cache.clear();
  }

  /** A PackError for damage, undefined for a pack that is gone (it is skipped); rethrows anything else. */
  private classify(err: unknown, pack: Pack, oid: string): PackError | undefined {
    if (err instanceof Gone) {
      err.pack.gone = true;
      return undefined;
    }
    if (err instanceof PackError) return err;
    if (err instanceof Damage) return new PackError(pack.path, oid, err.message, err.cause);
    throw err;
  }

  /** The checked object at position `pos` of `pack`'s index. */
  private *resolve(pack: Pack, pos: number, oid: string, nesting: number): Steps<PackObject> {
    const obj = yield* this.objectAt(pack, offsetAt(pack, pos), nesting);
    const actual = createHash("sha1").update(`${obj.type} ${obj.content.length}\0`).update(obj.content).digest("hex");
    if (actual !== oid) throw new PackError(pack.path, oid, `its content hashes to ${actual}`);
    return obj;
  }

  /** The object whose entry starts at `offset`, its delta chain applied (not checked against a name). */
  private *objectAt(pack: Pack, offset: number, nesting: number): Steps<PackObject> {
    const deltas: Buffer[] = [];
    const chain: number[] = [];
    let at = offset;
    let base: PackObject;
    let fromPack = true;
    for (;;) {
      const cached = this.cache.get(pack.id, at);
      if (cached) {
        // The object asked for was itself cached as a base: the caller gets its own copy.
        base = at === offset ? { type: cached.type, content: Buffer.from(cached.content) } : cached;
        fromPack = false;
        break;
      }
      const entry = yield* this.entryAt(pack, at);
      if (entry.type !== undefined) {
        base = { type: entry.type, content: entry.data };
        break;
      }
      if (chain.length >= MAX_CHAIN) throw new Damage(`delta chain longer than ${MAX_CHAIN}`);
      deltas.push(entry.data);
      chain.push(at);
      if (entry.baseOffset !== undefined) {
        at = entry.baseOffset;
        continue;
      }
      const baseOid = entry.baseOid!;
      const pos = find(pack, Buffer.from(baseOid, "hex"));
      if (pos >= 0) {
        at = offsetAt(pack, pos);
        continue;
      }
      base = yield* this.external(baseOid, nesting + 1);
      fromPack = false;
      break;
    }
    if (deltas.length && fromPack) this.cache.set(pack.id, at, base);
    for (let i = deltas.length - 1; i >= 0; i--) {
      base = { type: base.type, content: applyDelta(base.content, deltas[i]!) };
      // Intermediate results are bases of the next step: a read of a neighbour in the chain starts there.
      if (i > 0) this.cache.set(pack.id, chain[i]!, base);
    }
    return base;
  }

  /** The base of a REF_DELTA that its own pack lacks: another pack, else the caller's readBase. */
  private *external(oid: string, nesting: number): Steps<PackObject> {
    if (nesting > MAX_NESTING) throw new Damage(`REF_DELTA bases nest deeper than ${MAX_NESTING} packs`);
    const key = Buffer.from(oid, "hex");
    for (const other of this.packs) {
      const pos = other.gone ? -1 : find(other, key);
      if (pos < 0) continue;
      try {
        return yield* this.resolve(other, pos, oid, nesting);
      } catch (err) {
        if (err instanceof Gone) err.pack.gone = true;
        else if (err instanceof Damage) throw new PackError(other.path, oid, err.message, err.cause);
        else throw err;
      }
    }
    const loose = this.readBase?.(oid);
    if (loose) return loose;
    throw new Damage(`delta base ${oid} is missing`);
  }

  /** The whole entry at position `pos` when it holds an object (not a delta) and its CRC-32 matches. */
  private *storedAt(pack: Pack, pos: number): Steps<StoredObject | undefined> {
    this.open(pack);
    const offset = offsetAt(pack, pos);
    const buf = yield { op: "read", pack, position: offset, length: entryEnd(pack, offset) - offset };
    if (crc32(buf) !== pack.idx.readUInt32BE(IDX_HEADER + pack.count * 20 + pos * 4)) return undefined;
    const { code, size, at } = readEntryHeader(buf, offset);
    const type = TYPES[code];
    return type ? { type, size, deflated: buf.subarray(at) } : undefined;
  }

  /** One entry: its type (undefined for a delta), inflated data, and a delta's base. */
  private *entryAt(pack: Pack, offset: number): Steps<{ type: ObjectType | undefined; data: Buffer; baseOffset?: number; baseOid?: string }> {
    this.open(pack);
    const end = entryEnd(pack, offset);
    const buf = yield { op: "read", pack, position: offset, length: end - offset };
    const { code, size, at } = readEntryHeader(buf, offset);
    let i = at;
    const byte = () => {
      if (i >= buf.length) throw new Damage(`entry at ${offset} is truncated`);
      return buf[i++]!;
    };
    let baseOffset: number | undefined;
    let baseOid: string | undefined;
    if (code === OFS_DELTA) {
      let c = byte();
      let back = c & 0x7f;
      while (c & 0x80) {
        c = byte();
        back = (back + 1) * 128 + (c & 0x7f);
      }
      baseOffset = offset - back;
      if (back <= 0 || baseOffset < 12) throw new Damage(`entry at ${offset} names a delta base outside the pack`);
    } else if (code === REF_DELTA) {
      if (i + 20 > buf.length) throw new Damage(`entry at ${offset} is truncated`);
      baseOid = buf.toString("hex", i, i + 20);
      i += 20;
    } else if (!TYPES[code]) {
      throw new Damage(`entry at ${offset} has the unknown type ${code}`);
    }
    const data = yield { op: "inflate", data: buf.subarray(i), size };
    return { type: TYPES[code], data, ...(baseOffset !== undefined ? { baseOffset } : {}), ...(baseOid ? { baseOid } : {}) };
  }

  /** Opens the .pack at its first read and checks that it is the pack its index describes. */
  private open(pack: Pack): void {
    if (pack.damaged) throw new Damage(pack.damaged);
    if (pack.fd !== undefined) return;
    let fd: number;
    try {
      fd = fs.openSync(pack.path, "r");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") throw new Gone(pack);
      throw err;
    }
    try {
      const size = fs.fstatSync(fd).size;
      const head = Buffer.alloc(12);
      const tail = Buffer.alloc(20);
      const problem =
        size < 32 || readFull(fd, head, 0) < 12 || readFull(fd, tail, size - 20) < 20
          ? "the pack is truncated"
          : head.toString("latin1", 0, 4) !== "PACK" || ![2, 3].includes(head.readUInt32BE(4))
            ? "the pack's header is not a version 2 or 3 pack header"
            : head.readUInt32BE(8) !== pack.count
              ? `the pack holds ${head.readUInt32BE(8)} objects, its index ${pack.count}`
              : !tail.equals(pack.idx.subarray(pack.idx.length - 40, pack.idx.length - 20))
                ? "the pack's checksum differs from the one its index names"
                : undefined;
      if (problem) {
        pack.damaged = problem;
        throw new Damage(problem);
      }
      pack.size = size;
      pack.fd = fd;
    } finally {
      if (pack.fd !== fd) fs.closeSync(fd);
    }
  }

  private runSync<T>(steps: Steps<T>): T {
    let r = steps.next();
    while (!r.done) r = steps.next(r.value.op === "read" ? readSync(r.value.pack, r.value.position, r.value.length) : inflateChecked(r.value.data, r.value.size));
    return r.value;
  }

  private async runAsync<T>(steps: Steps<T>): Promise<T> {
    // The packs this read uses stay open until it is done, also when a listing drops them meanwhile.
    const held = new Set<Pack>();
    try {
      let r = steps.next();
      while (!r.done) r = steps.next(await this.stepAsync(r.value, held));
      return r.value;
    } finally {
      for (const pack of held) {
        pack.users--;
        if (pack.retired) retire(pack);
      }
    }
  }

  private async stepAsync(io: Io, held: Set<Pack>): Promise<Buffer> {
    let out: Buffer;
    if (io.op === "read") {
      if (!held.has(io.pack)) {
        held.add(io.pack);
        io.pack.users++;
      }
      if (io.length <= SYNC_LIMIT) return readSync(io.pack, io.position, io.length);
      out = Buffer.allocUnsafe(io.length);
      for (let got = 0; got < io.length; ) {
        const { bytesRead } = await readAsync(io.pack.fd!, out, got, io.length - got, io.position + got);
        if (bytesRead === 0) throw new Damage(`entry at ${io.position} is truncated`);
        got += bytesRead;
      }
      return out;
    }
    if (io.data.length <= SYNC_LIMIT) return inflateChecked(io.data, io.size);
    try {
      out = await inflateAsync(io.data, inflateOptions(io.size));
    } catch (err) {
      throw new Damage(`bad zlib data (${(err as Error).message})`, { cause: err });
    }
    if (out.length !== io.size) throw new Damage(`inflated to ${out.length} bytes, the entry says ${io.size}`);
    return out;
  }
}

/** The 20 bytes of a full hex object id, or undefined for anything else. */
function oidKey(oid: string): Buffer | undefined {
  return /^[0-9a-f]{40}$/.test(oid) ? Buffer.from(oid, "hex") : undefined;
}

/**
 * Reads and checks a v2 pack index (its own checksum, the fan-out, the sizes of its tables):
 * "unreadable" for version 1 or damage (the caller falls back), "gone" when it vanished meanwhile.
 * Other errors reading it (EMFILE, EIO) are thrown.
 */
function loadIndex(file: string, packPath: string): Pack | "unreadable" | "gone" {
  let idx: Buffer;
  try {
    idx = fs.readFileSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return "gone";
    throw err;
  }
  if (idx.length < IDX_HEADER + 40 || idx.readUInt32BE(0) !== 0xff744f63 || idx.readUInt32BE(4) !== 2) return "unreadable";
  const count = idx.readUInt32BE(IDX_HEADER - 4);
  const offsets32 = IDX_HEADER + count * 24;
  const offsets64 = offsets32 + count * 4;
  const rest = idx.length - 40 - offsets64;
  if (rest < 0 || rest % 8 !== 0) return "unreadable";
  for (let b = 1, prev = idx.readUInt32BE(8); b < 256; b++) {
    const n = idx.readUInt32BE(8 + 4 * b);
    if (n < prev) return "unreadable";
    prev = n;
  }
  const sum = createHash("sha1").update(idx.subarray(0, idx.length - 20)).digest();
  if (!sum.equals(idx.subarray(idx.length - 20))) return "unreadable";
  return { id: ++packIds, path: packPath, idx, count, offsets32, offsets64, large: rest / 8, size: 0, gone: false, users: 0, retired: false };
}

/** The position of `key` in the pack's sorted ids, or -1. */
function find(pack: Pack, key: Buffer): number {
  const idx = pack.idx;
  const first = key[0]!;
  let lo = first === 0 ? 0 : idx.readUInt32BE(8 + 4 * (first - 1));
  let hi = idx.readUInt32BE(8 + 4 * first);
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const c = compareId(key, idx, IDX_HEADER + mid * 20);
    if (c === 0) return mid;
    if (c < 0) hi = mid;
    else lo = mid + 1;
  }
  return -1;
}

/**
 * Compares the 20-byte id `key` with the one at `at` in `idx` (<0, 0, >0), four bytes at a time: a
 * native Buffer#compare per step cost more in the call than in the comparing, with every object
 * looked up in every pack.
 */
function compareId(key: Buffer, idx: Buffer, at: number): number {
  for (let k = 0; k < 20; k += 4) {
    const a = key.readUInt32BE(k);
    const b = idx.readUInt32BE(at + k);
    if (a !== b) return a < b ? -1 : 1;
  }
  return 0;
}

/** The pack offset of the object at position `pos` (through the 64-bit table for packs over 2 GiB). */
function offsetAt(pack: Pack, pos: number): number {
  const small = pack.idx.readUInt32BE(pack.offsets32 + pos * 4);
  if (!(small & 0x80000000)) return small;
  const n = small & 0x7fffffff;
  if (n >= pack.large) throw new Damage(`the index names large offset ${n} of ${pack.large}`);
  const big = pack.idx.readBigUInt64BE(pack.offsets64 + n * 8);
  if (big > BigInt(Number.MAX_SAFE_INTEGER)) throw new Damage(`the index names offset ${big}`);
  return Number(big);
}

/** Where the entry starting at `offset` ends: the next entry's offset, or the trailer for the last. */
function entryEnd(pack: Pack, offset: number): number {
  if (!pack.ends) {
    const ends = new Float64Array(pack.count);
    for (let i = 0; i < pack.count; i++) ends[i] = offsetAt(pack, i);
    ends.sort();
    if (pack.count && (ends[0]! < 12 || ends[pack.count - 1]! >= pack.size - 20)) {
      throw new Damage("the index names offsets outside the pack");
    }
    pack.ends = ends;
  }
  const ends = pack.ends;
  let lo = 0;
  let hi = ends.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (ends[mid]! < offset) lo = mid + 1;
    else hi = mid;
  }
  if (ends[lo] !== offset) throw new Damage(`no entry starts at offset ${offset}`);
  return lo + 1 < ends.length ? ends[lo + 1]! : pack.size - 20;
}

function readFull(fd: number, buf: Buffer, position: number): number {
  let got = 0;
  while (got < buf.length) {
    const n = fs.readSync(fd, buf, got, buf.length - got, position + got);
    if (n === 0) break;
    got += n;
  }
  return got;
}

function readSync(pack: Pack, position: number, length: number): Buffer {
  const buf = Buffer.allocUnsafe(length);
  if (readFull(pack.fd!, buf, position) < length) throw new Damage(`entry at ${position} is truncated`);
  return buf;
}

/**
 * Output limited to the size the entry announces, in one buffer of that size: zlib's default 16 KiB
 * chunks would keep 16 KiB alive behind every small object a caller or the cache holds.
 */
function inflateOptions(size: number): { maxOutputLength: number; chunkSize: number } {
  return { maxOutputLength: Math.max(size, 1), chunkSize: Math.max(64, size + 1) };
}

/** Inflates exactly `size` bytes (more is damage, and is not inflated: a lying length cannot fill memory). */
function inflateChecked(data: Buffer, size: number): Buffer {
  let out: Buffer;
  try {
    out = inflateSync(data, inflateOptions(size));
  } catch (err) {
    throw new Damage(`bad zlib data (${(err as Error).message})`, { cause: err });
  }
  if (out.length !== size) throw new Damage(`inflated to ${out.length} bytes, the entry says ${size}`);
  return out;
}

/** Marks a pack dropped and closes its descriptor once no asynchronous read uses it. */
function retire(pack: Pack): void {
  pack.retired = true;
  if (pack.users === 0 && pack.fd !== undefined) {
    const fd = pack.fd;
    pack.fd = undefined;
    fs.closeSync(fd);
  }
}

/**
 * Applies a git delta (a varint source size, a varint target size, then copy and insert
 * instructions) to `base`. Throws Damage when the sizes or an instruction do not fit.
 */
function applyDelta(base: Buffer, delta: Buffer): Buffer {
  let i = 0;
  const varint = (): number => {
    let n = 0;
    let c: number;
    let shift = 0;
    do {
      if (i >= delta.length || shift > 49) throw new Damage("the delta's header is truncated");
      c = delta[i++]!;
      n += (c & 0x7f) * 2 ** shift;
      shift += 7;
    } while (c & 0x80);
    return n;
  };
  const sourceSize = varint();
  if (sourceSize !== base.length) throw new Damage(`the delta expects a base of ${sourceSize} bytes, the base has ${base.length}`);
  const targetSize = varint();
  const out = Buffer.allocUnsafe(targetSize);
  let o = 0;
  while (i < delta.length) {
    const cmd = delta[i++]!;
    if (cmd & 0x80) {
      if (i + popcount(cmd & 0x7f) > delta.length) throw new Damage("a delta copy instruction is truncated");
      let off = 0;
      let len = 0;
      if (cmd & 0x01) off = delta[i++]!;
      if (cmd & 0x02) off |= delta[i++]! << 8;
      if (cmd & 0x04) off |= delta[i++]! << 16;
      if (cmd & 0x08) off += delta[i++]! * 2 ** 24;
      if (cmd & 0x10) len = delta[i++]!;
      if (cmd & 0x20) len |= delta[i++]! << 8;
      if (cmd & 0x40) len |= delta[i++]! << 16;
      if (len === 0) len = 0x10000;
      if (off + len > base.length || o + len > targetSize) throw new Damage("a delta copy instruction reaches outside its base or target");
      base.copy(out, o, off, off + len);
      o += len;
    } else if (cmd) {
      if (i + cmd > delta.length || o + cmd > targetSize) throw new Damage("a delta insert instruction is truncated or too long");
      delta.copy(out, o, i, i + cmd);
      i += cmd;
      o += cmd;
    } else {
      throw new Damage("the delta holds the reserved instruction 0");
    }
  }
  if (o !== targetSize) throw new Damage(`the delta makes ${o} bytes, its header says ${targetSize}`);
  return out;
}

function popcount(n: number): number {
  let c = 0;
  for (; n; n &= n - 1) c++;
  return c;
}

/** Recently resolved delta bases, least recently used dropped first, bounded in bytes. */
class BaseCache {
  private readonly map = new Map<string, PackObject>();
  private bytes = 0;

  constructor(private readonly limit: number) {}

  get(pack: number, offset: number): PackObject | undefined {
    const key = `${pack}:${offset}`;
    const hit = this.map.get(key);
    if (hit) {
      this.map.delete(key);
      this.map.set(key, hit);
    }
    return hit;
  }

  set(pack: number, offset: number, obj: PackObject): void {
    // One base may not push out everything else.
    if (obj.content.length > this.limit / 4) return;
    const key = `${pack}:${offset}`;
    const old = this.map.get(key);
    if (old) {
      this.bytes -= old.content.length;
      this.map.delete(key);
    }
    this.map.set(key, obj);
    this.bytes += obj.content.length;
    for (const [k, v] of this.map) {
      if (this.bytes <= this.limit) break;
      this.map.delete(k);
      this.bytes -= v.content.length;
    }
  }

  clear(): void {
    this.map.clear();
    this.bytes = 0;
  }
}

/** How a PackWriter compresses, and the index layout tests force. */
export interface PackWriterOptions {
  /** zlib level; default zlib's default (6), as git's pack.compression. */
  level?: number;
  /** Objects deflated at once on libuv's thread pool. Default 4 (the pool's size). */
  concurrency?: number;
  /**
   * Offsets above this go to the index's 64-bit table, as `git index-pack --index-version=2,<offset>`
   * does: for tests, which cannot cheaply write a pack over 2 GiB. Default 0x7fffffff.
   */
  largeOffsetsAbove?: number;
}

/** One object of a batch: its content until deflated, then only the deflated bytes. */
interface Pending {
  oid: string;
  type: ObjectType;
  size: number;
  content?: Buffer;
  deflated?: Buffer;
  /** Where its entry starts in the pack, and the crc32 of the entry (set by write()). */
  offset: number;
  crc: number;
}

/** Objects up to this size are deflated synchronously by PackWriter.add(). */
const SYNC_DEFLATE = 8 * 1024;

/** Temp files of packs written by this process so far (their names). */
let tempPacks = 0;

/**
 * Collects new objects and writes them as one pack and its v2 index, as `git index-pack` would:
 * one file pair instead of a loose file per object. Objects are deflated as they are added: small
 * ones at once, bigger ones in the background (`concurrency` at a time on libuv's thread pool).
 * Memory holds the deflated batch and the contents still waiting, so the caller bounds a batch by
 * `bytes` or `count`. Deduplicates within the batch only: the caller skips objects the repository
 * has.
 */
export class PackWriter {
  private readonly objects = new Map<string, Pending>();
  private readonly queue: Pending[] = [];
  private running = 0;
  private total = 0;
  private failure: Error | undefined;
  private idle: (() => void)[] = [];
  private written = false;
  private readonly level: number;
  private readonly concurrency: number;
  private readonly largeOffsetsAbove: number;

  constructor(opts: PackWriterOptions = {}) {
    this.level = opts.level ?? zlibConstants.Z_DEFAULT_COMPRESSION;
    this.concurrency = Math.max(1, opts.concurrency ?? 4);
    this.largeOffsetsAbove = Math.min(opts.largeOffsetsAbove ?? 0x7fffffff, 0x7fffffff);
  }

  /** Adds an object (the buffer must not change until write() resolves) and returns its oid. */
  add(type: ObjectType, content: Buffer): string {
    if (this.written) throw new Error("PackWriter: add() after write()");
    if (!TYPES.includes(type)) throw new Error(`PackWriter: unknown object type ${String(type)}`);
    const oid = createHash("sha1").update(`${type} ${content.length}\0`).update(content).digest("hex");
    if (this.objects.has(oid)) return oid;
    const obj: Pending = { oid, type, size: content.length, content, offset: 0, crc: 0 };
    this.objects.set(oid, obj);
    this.total += content.length;
    this.queue.push(obj);
    this.pump();
    return oid;
  }

  /**
   * Adds an object as another pack stores it (readStored), without deflating it again; `oid` must
   * be its name (readStored checked the bytes against their pack's index).
   */
  addStored(oid: string, stored: StoredObject): void {
    if (this.written) throw new Error("PackWriter: addStored() after write()");
    if (this.objects.has(oid)) return;
    this.objects.set(oid, { oid, type: stored.type, size: stored.size, deflated: stored.deflated, offset: 0, crc: 0 });
    this.total += stored.size;
  }

  /** Whether the batch holds `oid`. */
  has(oid: string): boolean {
    return this.objects.has(oid);
  }

  /** An object of the batch (for reads before the batch is written), or undefined. */
  get(oid: string): PackObject | undefined {
    const obj = this.objects.get(oid);
    if (!obj) return undefined;
    return { type: obj.type, content: obj.content ?? inflateSync(obj.deflated!) };
  }

  /** Objects in the batch. */
  get count(): number {
    return this.objects.size;
  }

  /** Uncompressed bytes of the objects in the batch. */
  get bytes(): number {
    return this.total;
  }

  /**
   * Writes the batch to `gitdir`'s objects/pack: the pack to a temp file renamed to
   * pack-<checksum>.pack, then its index the same way (readers look for the .idx, so they never see
   * a pack without its objects), both read-only. Resolves with the pack's name (`pack-<checksum>`),
   * or null for an empty batch. The writer is spent afterwards. Rejects with the deflate or file
   * system error; temp files are removed then.
   */
  async write(gitdir: string): Promise<string | null> {
    this.written = true;
    while (this.running || this.queue.length) await new Promise<void>((resolve) => this.idle.push(resolve));
    if (this.failure) throw this.failure;
    const objects = [...this.objects.values()];
    if (!objects.length) return null;
    const dir = join(gitdir, "objects", "pack");
    await mkdir(dir, { recursive: true });
    const tag = `${process.pid}_${++tempPacks}_${randomBytes(4).toString("hex")}`;
    const tmpPack = join(dir, `tmp_pack_${tag}`);
    const tmpIdx = join(dir, `tmp_idx_${tag}`);
    try {
      const sum = createHash("sha1");
      const file = await open(tmpPack, "wx", 0o444);
      let checksum: Buffer;
      try {
        const header = Buffer.alloc(12);
        header.write("PACK", 0, "latin1");
        header.writeUInt32BE(2, 4);
        header.writeUInt32BE(objects.length, 8);
        let parts: Buffer[] = [header];
        let partBytes = header.length;
        let position = header.length;
        const flush = async () => {
          const chunk = Buffer.concat(parts, partBytes);
          sum.update(chunk);
          await writeAll(file, chunk);
          parts = [];
          partBytes = 0;
        };
        for (const obj of objects) {
          const head = entryHeader(TYPES.indexOf(obj.type), obj.size);
          const deflated = obj.deflated!;
          obj.offset = position;
          obj.crc = crc32(deflated, crc32(head));
          parts.push(head, deflated);
          partBytes += head.length + deflated.length;
          position += head.length + deflated.length;
          // About 1 MiB per write: a few syscalls for a whole batch.
          if (partBytes >= 1 << 20) await flush();
        }
        await flush();
        checksum = sum.digest();
        await writeAll(file, checksum);
      } finally {
        await file.close();
      }
      const name = `pack-${checksum.toString("hex")}`;
      await rename(tmpPack, join(dir, `${name}.pack`));
      await writeFile(tmpIdx, buildIndex([...this.objects.keys()].sort().map((oid) => this.objects.get(oid)!), checksum, this.largeOffsetsAbove), { mode: 0o444, flag: "wx" });
      await rename(tmpIdx, join(dir, `${name}.idx`));
      return name;
    } catch (err) {
      await Promise.all([rm(tmpPack, { force: true }), rm(tmpIdx, { force: true })]);
      throw err;
    }
  }

  private pump(): void {
    while (this.running < this.concurrency && this.queue.length) {
      const obj = this.queue.shift()!;
      const content = obj.content!;
      // Small objects (most trees and files): deflating here costs less than a trip to the pool
      // (measured: 30,000 objects of 1.5 KB in 2.2 s instead of 3.4-4.3 s), and blocks under a
      // quarter of a millisecond each.
      if (content.length <= SYNC_DEFLATE) {
        obj.deflated = compact(deflateSync(content, { level: this.level }));
        obj.content = undefined;
        continue;
      }
      this.running++;
      deflateAsync(content, { level: this.level })
        .then(
          (d) => {
            obj.deflated = compact(d);
            obj.content = undefined;
          },
          (err: Error) => {
            this.failure ??= err;
          },
        )
        .finally(() => {
          this.running--;
          this.pump();
          if (!this.running && !this.queue.length) for (const resolve of this.idle.splice(0)) resolve();
        });
    }
    if (!this.running && !this.queue.length) for (const resolve of this.idle.splice(0)) resolve();
  }
}

/**
 * The bytes of `b` in a buffer of their own when `b` is a small view of a bigger allocation (zlib
 * returns slices of 16 KiB chunks): the batch holds thousands of them.
 */
function compact(b: Buffer): Buffer {
  return b.buffer.byteLength > b.length + 1024 ? Buffer.from(b) : b;
}

/** Reads the header of the entry (starting at pack `offset`) at the start of `buf`: type code, size, where the data starts. */
function readEntryHeader(buf: Buffer, offset: number): { code: number; size: number; at: number } {
  let at = 0;
  const byte = () => {
    if (at >= buf.length) throw new Damage(`entry at ${offset} is truncated`);
    return buf[at++]!;
  };
  let c = byte();
  const code = (c >> 4) & 7;
  let size = c & 15;
  for (let shift = 4; c & 0x80; shift += 7) {
    if (shift > 49) throw new Damage(`entry at ${offset} has an oversized length`);
    c = byte();
    size += (c & 0x7f) * 2 ** shift;
  }
  return { code, size, at };
}

/** A pack entry's header: type in bits 4-6 of the first byte, then the size as a little-endian varint. */
function entryHeader(type: number, size: number): Buffer {
  const bytes: number[] = [];
  let c = (type << 4) | (size % 16);
  let rest = Math.floor(size / 16);
  while (rest > 0) {
    bytes.push(c | 0x80);
    c = rest % 128;
    rest = Math.floor(rest / 128);
  }
  bytes.push(c);
  return Buffer.from(bytes);
}

/**
 * A v2 index of `sorted` (by id: hex order is byte order): fan-out, ids, crc32s, 31-bit offsets
 * (with the 64-bit table for offsets above `largeAbove`), the pack's checksum, its own checksum.
 */
function buildIndex(sorted: Pending[], packChecksum: Buffer, largeAbove: number): Buffer {
  const n = sorted.length;
  const large = sorted.filter((o) => o.offset > largeAbove).length;
  const idx = Buffer.alloc(IDX_HEADER + n * 28 + large * 8 + 40);
  idx.writeUInt32BE(0xff744f63, 0);
  idx.writeUInt32BE(2, 4);
  const crcAt = IDX_HEADER + n * 20;
  const offAt = crcAt + n * 4;
  const bigAt = offAt + n * 4;
  let nextLarge = 0;
  let byte = 0;
  for (const [pos, obj] of sorted.entries()) {
    // fanout[b]: how many ids start with a byte <= b.
    for (const first = parseInt(obj.oid.slice(0, 2), 16); byte < first; byte++) idx.writeUInt32BE(pos, 8 + 4 * byte);
    idx.write(obj.oid, IDX_HEADER + pos * 20, "hex");
    idx.writeUInt32BE(obj.crc, crcAt + pos * 4);
    if (obj.offset <= largeAbove) idx.writeUInt32BE(obj.offset, offAt + pos * 4);
    else {
      idx.writeUInt32BE((0x80000000 | nextLarge) >>> 0, offAt + pos * 4);
      idx.writeBigUInt64BE(BigInt(obj.offset), bigAt + nextLarge * 8);
      nextLarge++;
    }
  }
  for (; byte < 256; byte++) idx.writeUInt32BE(n, 8 + 4 * byte);
  const end = bigAt + large * 8;
  packChecksum.copy(idx, end);
  createHash("sha1").update(idx.subarray(0, end + 20)).digest().copy(idx, end + 20);
  return idx;
}

async function writeAll(file: fs.promises.FileHandle, data: Buffer): Promise<void> {
  for (let done = 0; done < data.length; ) {
    const { bytesWritten } = await file.write(data, done, data.length - done);
    done += bytesWritten;
  }
}
