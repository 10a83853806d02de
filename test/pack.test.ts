import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { chmodSync, closeSync, existsSync, openSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, truncateSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { crc32, deflateSync, inflateSync } from "node:zlib";
import { afterAll, describe, expect, it } from "vitest";
import { PackError, PackStore, PackWriter, type ObjectType, type PackObject } from "../src/git/pack.js";
import { commitFiles, fsckStrict, git, gitEnv } from "./helpers/git.js";
import { cleanupTmpDirs, makeTmpDir } from "./helpers/tmp.js";

afterAll(cleanupTmpDirs);

/** Runs git with binary stdin/stdout (the helpers decode output as UTF-8). */
function gitBuffer(cwd: string, args: string[], input?: Buffer | string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = execFile("git", args, { cwd, env: gitEnv(), encoding: "buffer", maxBuffer: 1 << 30 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`git ${args.join(" ")} in ${cwd}: ${err.message}\n${stderr.toString()}`));
      else resolve(stdout);
    });
    child.stdin?.on("error", () => undefined);
    child.stdin?.end(input);
  });
}

/** Every object of the repository as native git reads it (`cat-file --batch-all-objects --batch`). */
async function allObjects(dir: string): Promise<Map<string, PackObject>> {
  const out = await gitBuffer(dir, ["cat-file", "--batch-all-objects", "--batch", "--unordered"]);
  const objects = new Map<string, PackObject>();
  for (let i = 0; i < out.length; ) {
    const nl = out.indexOf(10, i);
    const [oid, type, size] = out.toString("latin1", i, nl).split(" ");
    const start = nl + 1;
    const end = start + Number(size);
    objects.set(oid!, { type: type as ObjectType, content: Buffer.from(out.subarray(start, end)) });
    i = end + 1;
  }
  return objects;
}

/** The .pack files of a repository. */
function packFiles(dir: string): string[] {
  const packDir = join(dir, ".git", "objects", "pack");
  return readdirSync(packDir)
    .filter((n) => n.endsWith(".pack"))
    .map((n) => join(packDir, n));
}

/** `git verify-pack -v` of a pack: offset, type byte code and chain depth of each entry. */
async function entries(dir: string, pack: string): Promise<{ oid: string; offset: number; code: number; depth: number }[]> {
  const out = await git(dir, "verify-pack", "-v", pack.replace(/\.pack$/, ".idx"));
  const bytes = readFileSync(pack);
  const rows: { oid: string; offset: number; code: number; depth: number }[] = [];
  for (const line of out.split("\n")) {
    const m = /^([0-9a-f]{40}) (\w+) +\d+ \d+ (\d+)(?: (\d+) [0-9a-f]{40})?$/.exec(line);
    if (!m) continue;
    const offset = Number(m[3]);
    rows.push({ oid: m[1]!, offset, code: (bytes[offset]! >> 4) & 7, depth: Number(m[4] ?? 0) });
  }
  return rows;
}

function hashObject(type: string, content: Buffer): string {
  return createHash("sha1").update(`${type} ${content.length}\0`).update(content).digest("hex");
}

/**
 * Version `n` of a text of `lines` lines, each version changing one more line than the one before:
 * version n is closest to n - 1 and n + 1, so git chains their deltas.
 */
function version(seed: string, n: number, lines = 400): string {
  const out: string[] = [];
  for (let i = 0; i < lines; i++) out.push(`${seed} line ${i} stays the same for now`);
  for (let k = 1; k <= n; k++) out[(k * 7) % lines] = `${seed} line ${(k * 7) % lines} changed in version ${k}`;
  return `${out.join("\n")}\n`;
}

/**
 * A repository (work tree checked out) with `versions` commits of three slowly changing files, one
 * of them big and barely compressible, made in one `git fast-import`.
 */
async function historyRepo(prefix: string, versions: number): Promise<string> {
  const dir = await makeTmpDir(prefix);
  await git(dir, "init", "--quiet");
  const noise = randomBytes(450 * 1024).toString("base64");
  const parts: Buffer[] = [];
  const data = (text: string) => {
    const b = Buffer.from(text);
    parts.push(Buffer.from(`data ${b.length}\n`), b, Buffer.from("\n"));
  };
  for (let n = 0; n < versions; n++) {
    parts.push(Buffer.from(`commit refs/heads/main\nmark :${n + 1}\ncommitter A U Thor <a@example.com> ${1700000000 + n} +0000\n`));
    data(`version ${n}`);
    if (n > 0) parts.push(Buffer.from(`from :${n}\n`));
    const files: Record<string, string> = { "a.txt": version("a", n), "dir/b.txt": version("b", n, 900) };
    if (n % 8 === 0) files["big.txt"] = `${noise}\n${n}\n`;
    for (const [path, text] of Object.entries(files)) {
      parts.push(Buffer.from(`M 100644 inline ${path}\n`));
      data(text);
    }
  }
  await gitBuffer(dir, ["fast-import", "--quiet"], Buffer.concat(parts));
  await git(dir, "reset", "--hard", "--quiet");
  return dir;
}

/** Reads every object git lists with both read() and readAsync() and compares it with git's bytes. */
async function expectAllReadable(dir: string, store: PackStore): Promise<number> {
  const objects = await allObjects(dir);
  for (const [oid, expected] of objects) {
    const got = store.read(oid);
    expect(got?.type, oid).toBe(expected.type);
    expect(got!.content.equals(expected.content), `content of ${oid}`).toBe(true);
    const gotAsync = await store.readAsync(oid);
    expect(gotAsync!.content.equals(expected.content), `async content of ${oid}`).toBe(true);
  }
  return objects.size;
}

/** The pack's descriptors this process holds (Linux: /proc/self/fd). */
function openDescriptors(file: string): number {
  let n = 0;
  for (const fd of readdirSync("/proc/self/fd")) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`).startsWith(file)) n++;
    } catch {
      // closed meanwhile
    }
  }
  return n;
}

describe("PackWriter", () => {
  it("writes a pack and index that native git verifies and reads, the index byte for byte as index-pack's", async () => {
    const dir = await makeTmpDir("pack-write");
    await git(dir, "init", "--quiet");
    const blobs = [
      Buffer.alloc(0),
      Buffer.from("hello\n"),
      Buffer.from(version("small", 1, 10)),
      Buffer.from(version("medium", 2, 3000)),
      randomBytes(1536 * 1024),
      Buffer.from(version("large", 3, 60_000)),
    ];
    const writer = new PackWriter();
    const oids = blobs.map((b) => writer.add("blob", b));
    expect(writer.add("blob", Buffer.from("hello\n"))).toBe(oids[1]);
    const tree = Buffer.concat(
      oids
        .map((oid, i) => ({ name: `f${i}`, oid }))
        .map((e) => Buffer.concat([Buffer.from(`100644 ${e.name}\0`), Buffer.from(e.oid, "hex")])),
    );
    const treeOid = writer.add("tree", tree);
    const commit = Buffer.from(
      `tree ${treeOid}\nauthor A U Thor <a@example.com> 1700000000 +0000\ncommitter A U Thor <a@example.com> 1700000000 +0000\n\nbatch\n`,
    );
    const commitOid = writer.add("commit", commit);
    expect(writer.count).toBe(blobs.length + 2);
    expect(writer.get(oids[3]!)?.content.equals(blobs[3]!)).toBe(true);

    const name = await writer.write(join(dir, ".git"));
    expect(name).toMatch(/^pack-[0-9a-f]{40}$/);
    const packDir = join(dir, ".git", "objects", "pack");
    expect(readdirSync(packDir).sort()).toEqual([`${name}.idx`, `${name}.pack`]);
    for (const ext of [".idx", ".pack"]) expect(statSync(join(packDir, name + ext)).mode & 0o777).toBe(0o444);

    const verify = await git(dir, "verify-pack", "-v", join(packDir, `${name}.idx`));
    for (const oid of [...oids, treeOid, commitOid]) expect(verify).toContain(oid);
    await git(dir, "index-pack", "-o", join(dir, "git.idx"), join(packDir, `${name}.pack`));
    expect(readFileSync(join(dir, "git.idx")).equals(readFileSync(join(packDir, `${name}.idx`)))).toBe(true);

    await git(dir, "update-ref", "refs/heads/main", commitOid);
    await fsckStrict(dir);
    const objects = await allObjects(dir);
    expect(objects.size).toBe(blobs.length + 2);
    blobs.forEach((b, i) => expect(objects.get(oids[i]!)?.content.equals(b), `blob ${i}`).toBe(true));
    expect(objects.get(treeOid)?.content.equals(tree)).toBe(true);
    expect(objects.get(commitOid)?.content.equals(commit)).toBe(true);

    const store = new PackStore(join(dir, ".git"));
    try {
      expect(await expectAllReadable(dir, store)).toBe(blobs.length + 2);
    } finally {
      store.close();
    }
  });

  it("writes the 64-bit offset table as git index-pack --index-version=2,<offset> does, and reads through it", async () => {
    const dir = await makeTmpDir("pack-large");
    await git(dir, "init", "--quiet");
    const writer = new PackWriter({ largeOffsetsAbove: 0x100 });
    for (let i = 0; i < 40; i++) writer.add("blob", Buffer.from(version(`f${i}`, i, 20)));
    const name = await writer.write(join(dir, ".git"));
    const packDir = join(dir, ".git", "objects", "pack");
    const idx = readFileSync(join(packDir, `${name}.idx`));
    // More than the header, fan-out, 28 bytes per object and the checksums: the 64-bit table.
    expect(idx.length).toBeGreaterThan(8 + 1024 + 40 * 28 + 40);
    await git(dir, "index-pack", "--index-version=2,0x100", "-o", join(dir, "git.idx"), join(packDir, `${name}.pack`));
    expect(readFileSync(join(dir, "git.idx")).equals(idx)).toBe(true);
    await git(dir, "verify-pack", join(packDir, `${name}.idx`));

    const store = new PackStore(join(dir, ".git"));
    try {
      expect(await expectAllReadable(dir, store)).toBe(40);
    } finally {
      store.close();
    }
  });

  it("writes nothing for an empty batch", async () => {
    const dir = await makeTmpDir("pack-empty");
    await git(dir, "init", "--quiet");
    expect(await new PackWriter().write(join(dir, ".git"))).toBeNull();
    expect(readdirSync(join(dir, ".git", "objects", "pack"))).toEqual([]);
  });
});

describe("PackStore", () => {
  it("reads every object of a pack git made with long OFS_DELTA chains", async () => {
    const dir = await historyRepo("pack-ofs", 60);
    await git(dir, "repack", "-adf", "--depth=50", "--window=50");
    const [pack, ...more] = packFiles(dir);
    expect(more).toEqual([]);
    const rows = await entries(dir, pack!);
    expect(rows.some((r) => r.code === 6)).toBe(true);
    expect(rows.some((r) => r.code === 7)).toBe(false);
    expect(Math.max(...rows.map((r) => r.depth))).toBeGreaterThanOrEqual(20);
    expect(await git(dir, "count-objects")).toMatch(/^0 objects/);

    const store = new PackStore(join(dir, ".git"));
    const cold = new PackStore(join(dir, ".git"), { cacheBytes: 0 });
    try {
      expect(await expectAllReadable(dir, store)).toBe(rows.length);
      expect(await expectAllReadable(dir, cold)).toBe(rows.length);
      // All at once: reads interleave on the thread pool (big entries) and share the base cache.
      const objects = await allObjects(dir);
      const fresh = new PackStore(join(dir, ".git"));
      try {
        const got = await Promise.all([...objects.keys()].map((oid) => fresh.readAsync(oid)));
        [...objects.values()].forEach((o, i) => expect(got[i]?.content.equals(o.content)).toBe(true));
      } finally {
        fresh.close();
      }
      for (const r of rows) expect(store.has(r.oid)).toBe(true);
      expect(store.has("0".repeat(40))).toBe(false);
      expect(store.read("0".repeat(40))).toBeUndefined();
    } finally {
      store.close();
      cold.close();
    }
  });

  it("reads REF_DELTA entries (repack.useDeltaBaseOffset=false)", async () => {
    const dir = await historyRepo("pack-ref", 30);
    await git(dir, "-c", "repack.useDeltaBaseOffset=false", "repack", "-adf", "--depth=50", "--window=50");
    const [pack] = packFiles(dir);
    const rows = await entries(dir, pack!);
    expect(rows.some((r) => r.code === 7)).toBe(true);
    expect(rows.some((r) => r.code === 6)).toBe(false);
    const store = new PackStore(join(dir, ".git"));
    try {
      expect(await expectAllReadable(dir, store)).toBe(rows.length);
    } finally {
      store.close();
    }
  });

  it("resolves a REF_DELTA whose base is in another pack or loose (readBase)", async () => {
    const dir = await makeTmpDir("pack-thin");
    await git(dir, "init", "--quiet");
    const base = Buffer.from(version("base", 1, 200));
    const target = Buffer.concat([base.subarray(0, 1000), Buffer.from("inserted\n"), base.subarray(1000)]);
    const baseOid = (await gitBuffer(dir, ["hash-object", "-w", "--stdin"], base)).toString().trim();
    const targetOid = hashObject("blob", target);
    expect((await gitBuffer(dir, ["hash-object", "--stdin"], target)).toString().trim()).toBe(targetOid);
    writeThinPack(join(dir, ".git"), baseOid, base, targetOid, Buffer.from("inserted\n"));

    const without = new PackStore(join(dir, ".git"));
    try {
      expect(() => without.read(targetOid)).toThrow(/delta base .* is missing/);
    } finally {
      without.close();
    }
    const looseReads: string[] = [];
    const withLoose = new PackStore(join(dir, ".git"), {
      readBase: (oid) => {
        looseReads.push(oid);
        const raw = readFileSync(join(dir, ".git", "objects", oid.slice(0, 2), oid.slice(2)));
        const all = inflateSync(raw);
        return { type: "blob", content: all.subarray(all.indexOf(0) + 1) };
      },
    });
    try {
      expect(withLoose.read(targetOid)?.content.equals(target)).toBe(true);
      expect(looseReads).toEqual([baseOid]);
    } finally {
      withLoose.close();
    }
    // The base packed by git into a second pack (and its loose copy removed): found there without the callback.
    await gitBuffer(dir, ["pack-objects", "--quiet", join(dir, ".git", "objects", "pack", "pack")], `${baseOid}\n`);
    await git(dir, "prune-packed");
    expect(existsSync(join(dir, ".git", "objects", baseOid.slice(0, 2), baseOid.slice(2)))).toBe(false);
    const inPacks = new PackStore(join(dir, ".git"));
    try {
      expect(inPacks.read(targetOid)?.content.equals(target)).toBe(true);
    } finally {
      inPacks.close();
    }
  });

  it("finds objects in a pack a gc added and drops the packs it deleted", async () => {
    const dir = await historyRepo("pack-gc", 4);
    await git(dir, "repack", "-ad");
    const [first] = packFiles(dir);
    const store = new PackStore(join(dir, ".git"));
    try {
      const before = await allObjects(dir);
      const [oldOid] = before.keys();
      expect(store.read(oldOid!)).toBeDefined();
      expect(openDescriptors(first!)).toBe(1);

      const head = await commitFiles(dir, { "new.txt": "new file\n" }, "after the first pack");
      expect(store.read(head)).toBeUndefined();
      await git(dir, "repack", "-ad");
      expect(existsSync(first!)).toBe(false);
      expect(store.read(head)?.type).toBe("commit");
      expect(openDescriptors(first!)).toBe(0);
      expect(await expectAllReadable(dir, store)).toBe(before.size + 3);
    } finally {
      store.close();
    }
  });

  it("skips a pack whose file was deleted after it was listed", async () => {
    const dir = await historyRepo("pack-gone", 3);
    await git(dir, "repack", "-ad");
    const [first] = packFiles(dir);
    const store = new PackStore(join(dir, ".git"));
    try {
      const objects = await allObjects(dir);
      for (const oid of objects.keys()) expect(store.has(oid)).toBe(true);
      // A second pack of all objects (the first kept), then the first pack's .pack removed before
      // its .idx, as a gc deletes it.
      await commitFiles(dir, { "x.txt": "x\n" }, "more");
      await git(dir, "repack", "-a");
      rmSync(first!);
      expect(existsSync(first!.replace(/\.pack$/, ".idx"))).toBe(true);
      for (const [oid, expected] of objects) expect(store.read(oid)?.content.equals(expected.content), oid).toBe(true);
    } finally {
      store.close();
    }
  });

  it("throws PackError naming the pack and the object for damaged entries, and reads the rest", async () => {
    const dir = await makeTmpDir("pack-damage");
    await git(dir, "init", "--quiet");
    const writer = new PackWriter();
    const good = writer.add("blob", Buffer.from(version("good", 1, 100)));
    const flipped = writer.add("blob", Buffer.from(version("flipped", 2, 100)));
    // Two contents of the same size that deflate to the same size: one entry's bytes replaced by the other's.
    const aaa = Buffer.alloc(700, "a");
    const bbb = Buffer.alloc(700, "b");
    expect(deflateSync(aaa).length).toBe(deflateSync(bbb).length);
    const swapped = writer.add("blob", aaa);
    const name = await writer.write(join(dir, ".git"));
    const pack = join(dir, ".git", "objects", "pack", `${name}.pack`);
    const rows = new Map((await entries(dir, pack)).map((r) => [r.oid, r]));
    const bytes = readFileSync(pack);
    chmodSync(pack, 0o644);
    const fd = openSync(pack, "r+");
    try {
      // A byte in the middle of the deflated data (zlib or its adler32 check fails).
      const at = rows.get(flipped)!.offset + 40;
      writeSync(fd, Buffer.from([bytes[at]! ^ 0xff]), 0, 1, at);
      // Sound zlib data of the right size, whose content does not hash to the object's name.
      const d = deflateSync(bbb);
      const off = rows.get(swapped)!.offset;
      const head = bytes.indexOf(deflateSync(aaa), off);
      expect(head).toBeGreaterThan(off);
      writeSync(fd, d, 0, d.length, head);
    } finally {
      closeSync(fd);
    }

    const store = new PackStore(join(dir, ".git"));
    try {
      expect(store.read(good)).toBeDefined();
      const err = (() => {
        try {
          store.read(flipped);
        } catch (e) {
          return e;
        }
      })();
      expect(err).toBeInstanceOf(PackError);
      expect((err as PackError).message).toContain(pack);
      expect((err as PackError).message).toContain(flipped);
      expect(() => store.read(swapped)).toThrow(new RegExp(`${swapped}: its content hashes to ${hashObject("blob", bbb)}`));
      await expect(store.readAsync(flipped)).rejects.toBeInstanceOf(PackError);
      expect(store.read(good)).toBeDefined();

      // A sound copy in a pack written since: the store lists the folder again and reads that one.
      const again = new PackWriter();
      again.add("blob", Buffer.from(version("flipped", 2, 100)));
      await again.write(join(dir, ".git"));
      expect(store.read(flipped)?.content.toString()).toBe(version("flipped", 2, 100));
    } finally {
      store.close();
    }

    // A truncated pack no longer matches its index: every read from it is damage.
    truncateSync(pack, bytes.length - 30);
    const truncated = new PackStore(join(dir, ".git"));
    try {
      expect(() => truncated.read(good)).toThrow(PackError);
      expect(() => truncated.read(good)).toThrow(/checksum differs/);
    } finally {
      truncated.close();
    }
  });

  it("leaves packs with a version 1 index to the caller (undefined)", async () => {
    const dir = await historyRepo("pack-v1", 2);
    await git(dir, "repack", "-ad");
    const [pack] = packFiles(dir);
    const idx = pack!.replace(/\.pack$/, ".idx");
    const objects = await allObjects(dir);
    rmSync(idx, { force: true });
    await git(dir, "index-pack", "--index-version=1", "-o", idx, pack!);
    expect(readFileSync(idx).readUInt32BE(0)).not.toBe(0xff744f63);
    const store = new PackStore(join(dir, ".git"));
    try {
      for (const oid of objects.keys()) {
        expect(store.read(oid)).toBeUndefined();
        expect(store.has(oid)).toBeUndefined();
      }
    } finally {
      store.close();
    }
  });
});

/**
 * A one-object pack holding `targetOid` as a REF_DELTA on `baseOid` (insert `insert` after the
 * first 1000 bytes), which git itself never leaves in a repository (a thin pack), with its v2 index.
 */
function writeThinPack(gitdir: string, baseOid: string, base: Buffer, targetOid: string, insert: Buffer): void {
  const varint = (n: number) => {
    const out: number[] = [];
    do {
      out.push((n & 0x7f) | (n >= 0x80 ? 0x80 : 0));
      n = Math.floor(n / 128);
    } while (n > 0);
    return out;
  };
  const rest = base.length - 1000;
  const delta = Buffer.from([
    ...varint(base.length),
    ...varint(base.length + insert.length),
    0x80 | 0x10 | 0x20, 1000 & 0xff, 1000 >> 8, // copy offset 0, 1000 bytes
    insert.length, ...insert,
    0x80 | 0x01 | 0x02 | 0x10 | 0x20, 1000 & 0xff, 1000 >> 8, rest & 0xff, rest >> 8, // copy the rest
  ]);
  const size = delta.length;
  const header = [0x80 | (7 << 4) | (size & 15), ...varint(size >> 4)];
  const entry = Buffer.concat([Buffer.from(header), Buffer.from(baseOid, "hex"), deflateSync(delta)]);
  const head = Buffer.alloc(12);
  head.write("PACK");
  head.writeUInt32BE(2, 4);
  head.writeUInt32BE(1, 8);
  const body = Buffer.concat([head, entry]);
  const sum = createHash("sha1").update(body).digest();
  const idx = Buffer.alloc(8 + 1024 + 28 + 40);
  idx.writeUInt32BE(0xff744f63, 0);
  idx.writeUInt32BE(2, 4);
  const first = Buffer.from(targetOid, "hex")[0]!;
  for (let b = 0; b < 256; b++) idx.writeUInt32BE(b >= first ? 1 : 0, 8 + 4 * b);
  Buffer.from(targetOid, "hex").copy(idx, 1032);
  idx.writeUInt32BE(crc32(entry), 1052);
  idx.writeUInt32BE(12, 1056);
  sum.copy(idx, 1060);
  createHash("sha1").update(idx.subarray(0, 1080)).digest().copy(idx, 1080);
  const name = `pack-${sum.toString("hex")}`;
  const dir = join(gitdir, "objects", "pack");
  writeFileSync(join(dir, `${name}.pack`), Buffer.concat([body, sum]));
  writeFileSync(join(dir, `${name}.idx`), idx);
}
