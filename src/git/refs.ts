/**
 * Reading and updating git refs the way native git does (refs/files-backend.c, refs/packed-backend.c):
 * loose files and `packed-refs`, each update under `<ref>.lock` with compare-and-swap, and a reflog entry
 * in git's exact format. isomorphic-git writes refs with plain writes (no lock, no CAS, no reflog), so
 * every ref update in cascade-sync goes through here.
 *
 * Linked worktrees are handled: `HEAD` (and other per-worktree refs) live in `gitdir`, everything else in
 * the common directory named by `<gitdir>/commondir`.
 */
import { appendFile, mkdir, readFile, rmdir, stat, unlink } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { CascadeError, InternalError } from "../errors.js";
import { acquireLock, withLock, type Lock, type LockOptions } from "./lockfile.js";

/** Who made a ref update, for the reflog line. */
export interface RefCommitter {
  name: string;
  email: string;
  /** Seconds since the epoch. */
  timestamp: number;
  /**
   * Minutes, in the JS Date#getTimezoneOffset convention that isomorphic-git commit objects use: UTC+1 is
   * -60 and is written `+0100`; UTC-5 is 300, written `-0500`. 0 is `+0000`; -0 is `-0000` (git's "unknown
   * zone"), exactly as isomorphic-git formats it.
   */
  timezoneOffset: number;
}

/** Options of {@link updateRef}. */
export interface UpdateRefOptions extends LockOptions {
  /**
   * Compare-and-swap: the value the ref must have now. `null`: the ref must not exist (create only).
   * `undefined` (or absent): no check, overwrite whatever is there.
   */
  expectedOld?: string | null;
  /** Reflog message; whitespace runs are collapsed and trimmed like git's copy_reflog_msg. */
  message: string;
  committer: RefCommitter;
}

/**
 * The ref changed under us: its value is not what the caller expected (someone, e.g. a native git,
 * moved it meanwhile). Nothing was written. Transient (reason `RefConflict`): observe again and re-plan.
 */
export class RefConflictError extends CascadeError {
  constructor(
    readonly ref: string,
    /** What the caller expected; null = expected absent. */
    readonly expected: string | null,
    /** What the ref holds; null = absent. */
    readonly actual: string | null,
  ) {
    super(
      "Transient",
      "RefConflict",
      `${ref} moved meanwhile: expected ${expected ?? "(absent)"}, found ${actual ?? "(absent)"}; nothing was changed`,
      { hint: "another process updated the ref; cascade-sync looks again and re-plans" },
    );
  }
}

/**
 * A ref name git would refuse (see `git check-ref-format`), a short name where a full `refs/...` name is
 * required, or a name clashing with an existing ref as file vs directory (refs/heads/a vs refs/heads/a/b).
 * Stalled (reason `InvalidRefName` or `RefNameClash`): the name comes from config or code and must change.
 */
export class InvalidRefNameError extends CascadeError {
  constructor(
    readonly ref: string,
    problem: string,
    reason: "InvalidRefName" | "RefNameClash" = "InvalidRefName",
  ) {
    super("Stalled", reason, `invalid ref name ${JSON.stringify(ref)}: ${problem}`, {
      hint:
        reason === "RefNameClash"
          ? "rename or delete the clashing ref"
          : "use a full name such as refs/heads/develop that `git check-ref-format` accepts",
    });
  }
}

/**
 * A ref file holds something that is neither an object id nor `ref: <name>`, or symbolic refs loop.
 * Stalled (reason `RefCorrupt`): a person must repair the file.
 */
export class RefCorruptError extends CascadeError {
  constructor(
    readonly ref: string,
    readonly file: string,
    problem: string,
  ) {
    super("Stalled", "RefCorrupt", `ref ${ref} is broken (${file}): ${problem}`, {
      hint: `inspect ${file}; \`git fsck\` reports broken refs, and \`git update-ref\` can set it to a valid commit`,
    });
  }
}

const ZERO_OID = "0".repeat(40);
const OID_RE = /^[0-9a-f]{40}$/;
const MAX_SYMREF_DEPTH = 5;

/**
 * Why `name` is not a valid ref name by git's rules (refs.c check_refname_format, as `git check-ref-format`
 * without --allow-onelevel), or null when it is valid. It does not require the `refs/` prefix.
 */
export function checkRefFormat(name: string): string | null {
  if (name === "") return "empty";
  if (name === "@") return "is the single character @";
  if (name.endsWith("/")) return "ends with /";
  if (name.endsWith(".")) return "ends with .";
  if (name.includes("..")) return "contains ..";
  if (name.includes("@{")) return "contains @{";
  // eslint-disable-next-line no-control-regex
  const bad = /[\x00-\x20\x7f~^:?*[\\]/.exec(name);
  if (bad) return `contains ${JSON.stringify(bad[0])}`;
  for (const component of name.split("/")) {
    if (component === "") return "has an empty component (// or a leading /)";
    if (component.startsWith(".")) return `component ${JSON.stringify(component)} starts with .`;
    if (component.endsWith(".lock")) return `component ${JSON.stringify(component)} ends with .lock`;
  }
  return null;
}

/** Throws InvalidRefNameError unless `name` is a full, valid `refs/...` name. */
function assertFullRefName(name: string): void {
  if (!name.startsWith("refs/")) {
    throw new InvalidRefNameError(name, "not a full ref name; expected refs/heads/<branch> or another refs/... name");
  }
  const problem = checkRefFormat(name);
  if (problem !== null) throw new InvalidRefNameError(name, problem);
}

/** Names readRef accepts: full refs, and pseudo-refs like HEAD / ORIG_HEAD (upper case and _ only). */
function assertReadableName(name: string): void {
  if (/^[A-Z][A-Z_]*$/.test(name)) return;
  assertFullRefName(name);
}

function assertOid(what: string, oid: string): void {
  if (!OID_RE.test(oid)) throw new InternalError(`${what} is not a 40-hex object id: ${JSON.stringify(oid)}`);
}

/** Refs that belong to one worktree (refs.c is_per_worktree_ref / is_pseudoref_syntax). */
function isPerWorktree(name: string): boolean {
  return (
    !name.startsWith("refs/") ||
    name.startsWith("refs/bisect/") ||
    name.startsWith("refs/worktree/") ||
    name.startsWith("refs/rewritten/")
  );
}

const commonDirCache = new Map<string, string>();

/** The repository's common directory: `gitdir` itself, or what `<gitdir>/commondir` names (worktrees). */
async function commonDir(gitdir: string): Promise<string> {
  const cached = commonDirCache.get(gitdir);
  if (cached !== undefined) return cached;
  let dir = gitdir;
  try {
    const text = (await readFile(join(gitdir, "commondir"), "utf8")).trim();
    if (text !== "") dir = resolve(gitdir, text);
  } catch (err) {
    if (!isMissing(err)) throw err;
  }
  commonDirCache.set(gitdir, dir);
  return dir;
}

async function refBase(gitdir: string, name: string): Promise<string> {
  return isPerWorktree(name) ? gitdir : commonDir(gitdir);
}

function isMissing(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  // EISDIR: refs/heads/a is a directory (refs/heads/a/b exists); ENOTDIR: refs/heads/a is a file and we
  // asked for refs/heads/a/b. Either way there is no loose ref of that name.
  return code === "ENOENT" || code === "ENOTDIR" || code === "EISDIR";
}

type Loose = { kind: "oid"; oid: string } | { kind: "symref"; target: string } | null;

/**
 * Reads the loose ref file `<base>/<name>` without following symbolic refs. A malformed file is read a
 * second time after a moment before it counts as corrupt: isomorphic-git (fetch) still writes
 * refs/remotes/* with plain writes, so a reader can catch one half-written.
 */
async function readLoose(base: string, name: string, retry = true): Promise<Loose> {
  const file = join(base, name);
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    if (isMissing(err)) return null;
    throw err;
  }
  try {
    return parseLoose(name, file, text);
  } catch (err) {
    if (!retry || !(err instanceof RefCorruptError)) throw err;
    await new Promise((r) => setTimeout(r, 20));
    return readLoose(base, name, false);
  }
}

function parseLoose(name: string, file: string, text: string): Loose {
  if (text.startsWith("ref:")) {
    const target = text.slice(4).trim();
    if (checkRefFormat(target) !== null && !/^[A-Z][A-Z_]*$/.test(target)) {
      throw new RefCorruptError(name, file, `symbolic ref to an invalid name ${JSON.stringify(target)}`);
    }
    return { kind: "symref", target };
  }
  // git accepts the oid followed by anything that starts with whitespace (e.g. FETCH_HEAD's tail).
  const oid = text.slice(0, 40);
  if (OID_RE.test(oid) && (text.length === 40 || /\s/.test(text[40] ?? ""))) return { kind: "oid", oid };
  throw new RefCorruptError(name, file, `neither an object id nor "ref: <name>": ${JSON.stringify(text.slice(0, 60))}`);
}

/** One parsed line of packed-refs (and its `^` peeled line, if any), with the raw text to write back. */
interface PackedLine {
  name: string | null;
  oid: string | null;
  peeled: string | null;
  raw: string;
}

async function readPackedFile(common: string): Promise<string | null> {
  try {
    return await readFile(join(common, "packed-refs"), "utf8");
  } catch (err) {
    if (isMissing(err)) return null;
    throw err;
  }
}

/** Splits packed-refs into records: comments/header keep name null; `^` lines attach to the ref above. */
function parsePacked(text: string, file: string): PackedLine[] {
  const out: PackedLine[] = [];
  const lines = text.split("\n");
  if (lines[lines.length - 1] === "") lines.pop();
  for (const line of lines) {
    if (line.startsWith("^")) {
      const prev = out[out.length - 1];
      const peeled = line.slice(1, 41);
      if (!prev || prev.name === null || !OID_RE.test(peeled)) {
        throw new RefCorruptError("packed-refs", file, `stray peeled line ${JSON.stringify(line)}`);
      }
      prev.peeled = peeled;
      prev.raw += `${line}\n`;
      continue;
    }
    if (line.startsWith("#") || line.trim() === "") {
      out.push({ name: null, oid: null, peeled: null, raw: `${line}\n` });
      continue;
    }
    const oid = line.slice(0, 40);
    if (!OID_RE.test(oid) || line[40] !== " ") {
      throw new RefCorruptError("packed-refs", file, `unexpected line ${JSON.stringify(line.slice(0, 80))}`);
    }
    out.push({ name: line.slice(41), oid, peeled: null, raw: `${line}\n` });
  }
  return out;
}

/** A ref as stored in packed-refs. */
export interface PackedRef {
  oid: string;
  /** The object a tag ref peels to (`^` line), when git recorded it. */
  peeled: string | null;
}

/**
 * Every ref in `packed-refs` by full name. Returns an empty map when the file does not exist; throws
 * RefCorruptError when a line is malformed.
 */
export async function readPackedRefs(gitdir: string): Promise<Map<string, PackedRef>> {
  const common = await commonDir(gitdir);
  const text = await readPackedFile(common);
  const refs = new Map<string, PackedRef>();
  if (text === null) return refs;
  for (const line of parsePacked(text, join(common, "packed-refs"))) {
    if (line.name !== null && line.oid !== null) refs.set(line.name, { oid: line.oid, peeled: line.peeled });
  }
  return refs;
}

/** The ref's own value (no symref following): loose wins over packed, as in git. */
async function readOwnValue(gitdir: string, name: string): Promise<Loose> {
  const loose = await readLoose(await refBase(gitdir, name), name);
  if (loose !== null) return loose;
  if (isPerWorktree(name)) return null;
  const packed = (await readPackedRefs(gitdir)).get(name);
  return packed ? { kind: "oid", oid: packed.oid } : null;
}

/**
 * Resolves a ref to an object id: the loose file, else packed-refs, following `ref: ...` symbolic refs
 * up to 5 levels. `name` is a full name (refs/heads/develop) or a pseudo-ref (HEAD).
 *
 * Returns the 40-hex oid (for a tag, the tag object, not what it peels to), or null when the ref, or
 * the ref a symbolic ref points to (an unborn branch), does not exist. Throws InvalidRefNameError for a
 * name git would not accept, RefCorruptError for an unreadable ref file or a symref loop.
 */
export async function readRef(gitdir: string, name: string): Promise<string | null> {
  assertReadableName(name);
  let current = name;
  for (let depth = 0; depth <= MAX_SYMREF_DEPTH; depth++) {
    const value = await readOwnValue(gitdir, current);
    if (value === null) return null;
    if (value.kind === "oid") return value.oid;
    current = value.target;
  }
  throw new RefCorruptError(name, join(gitdir, name), `more than ${MAX_SYMREF_DEPTH} levels of symbolic refs`);
}

/**
 * The ref a symbolic ref points to, without resolving it further (`refs/heads/develop` for a HEAD
 * holding `ref: refs/heads/develop`).
 *
 * Returns null when the ref is not symbolic (a detached HEAD) or does not exist. Throws
 * InvalidRefNameError / RefCorruptError as readRef does.
 */
export async function readSymbolicRef(gitdir: string, name: string): Promise<string | null> {
  assertReadableName(name);
  const value = await readLoose(await refBase(gitdir, name), name);
  return value?.kind === "symref" ? value.target : null;
}

/** git's copy_reflog_msg: whitespace runs (space, tab, CR, LF) become one space; trimmed. */
function normalizeReflogMessage(msg: string): string {
  return msg.replace(/[ \t\r\n]+/g, " ").trim();
}

/** git's strbuf_addstr_without_crud, simplified: no <, > or newlines inside an ident part. */
function identPart(s: string): string {
  return s.replace(/[<>\n\r]/g, "").trim();
}

/**
 * Formats a timezone offset given in JS/isomorphic-git minutes (UTC+1 = -60) as git's `+hhmm` (`+0100`).
 * Returns e.g. `-0500` for 300. Throws InternalError when the offset is not a whole number of minutes
 * within ±99:59.
 */
export function formatTimezone(offsetMinutes: number): string {
  if (!Number.isInteger(offsetMinutes) || Math.abs(offsetMinutes) > 99 * 60 + 59) {
    throw new InternalError(`timezoneOffset must be whole minutes within ±99:59, got ${offsetMinutes}`);
  }
  // JS counts minutes *behind* UTC, git writes the offset *ahead of* UTC: the sign flips, and -0 stays
  // the "-0000" that isomorphic-git writes for it.
  const negative = offsetMinutes > 0 || Object.is(offsetMinutes, -0);
  const abs = Math.abs(offsetMinutes);
  const hh = String(Math.floor(abs / 60)).padStart(2, "0");
  const mm = String(abs % 60).padStart(2, "0");
  return `${negative ? "-" : "+"}${hh}${mm}`;
}

/**
 * One reflog line exactly as git writes it:
 * `<old> <new> <name> <<email>> <timestamp> <+hhmm>\t<message>\n` (old is 40 zeros for a creation).
 * Throws InternalError for a non-integer timestamp or a bad timezone.
 */
export function formatReflogLine(oldOid: string | null, newOid: string, committer: RefCommitter, message: string): string {
  if (!Number.isInteger(committer.timestamp) || committer.timestamp < 0) {
    throw new InternalError(`committer.timestamp must be whole seconds since the epoch, got ${committer.timestamp}`);
  }
  const ident = `${identPart(committer.name)} <${identPart(committer.email)}> ${committer.timestamp} ${formatTimezone(committer.timezoneOffset)}`;
  const msg = normalizeReflogMessage(message);
  // git omits the tab when there is no message.
  return `${oldOid ?? ZERO_OID} ${newOid} ${ident}${msg === "" ? "" : `\t${msg}`}\n`;
}

async function appendReflog(base: string, name: string, line: string): Promise<void> {
  const file = join(base, "logs", name);
  await mkdir(dirname(file), { recursive: true });
  // One write with O_APPEND, so concurrent appenders never interleave within a line.
  await appendFile(file, line, { mode: 0o666 });
}

/**
 * Makes sure `<base>/<name>` can become a file: creates its parent directories, removes an empty
 * directory left at its place by deleted refs (as git does), and refuses file/directory clashes with
 * loose or packed refs (refs/heads/a vs refs/heads/a/b).
 */
async function prepareRefPath(gitdir: string, base: string, name: string): Promise<void> {
  if (!isPerWorktree(name)) {
    for (const other of (await readPackedRefs(gitdir)).keys()) {
      if (other.startsWith(`${name}/`) || name.startsWith(`${other}/`)) {
        throw new InvalidRefNameError(name, `clashes with the existing ref ${other}`, "RefNameClash");
      }
    }
  }
  const file = join(base, name);
  try {
    await mkdir(dirname(file), { recursive: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "EEXIST" || code === "ENOTDIR") {
      throw new InvalidRefNameError(name, "a ref with the name of one of its parent directories exists", "RefNameClash");
    }
    throw err;
  }
  try {
    if ((await stat(file)).isDirectory()) await rmdir(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOTEMPTY" || code === "EEXIST") {
      throw new InvalidRefNameError(name, `refs exist below ${name}/`, "RefNameClash");
    }
    if (code !== "ENOENT") throw err;
  }
}

/** Removes now-empty directories above a deleted ref or reflog, stopping at `refs/<x>` (git does too). */
async function removeEmptyParents(base: string, name: string): Promise<void> {
  const parts = name.split("/");
  for (let n = parts.length - 1; n >= 3; n--) {
    try {
      await rmdir(join(base, ...parts.slice(0, n)));
    } catch {
      return;
    }
  }
}

/**
 * Sets the ref `name` to `newOid` following git's protocol: takes `<name>.lock`, reads the current value
 * (loose, else packed), checks it against `expectedOld`, appends the reflog line to `logs/<name>` (and to
 * `logs/HEAD` when HEAD points to this ref), then renames the lock over the ref. Like git, the reflog is
 * written while the lock is held, so a concurrent native git can never interleave its entries with ours.
 * When HEAD points to the ref, HEAD.lock is held for the HEAD reflog entry, as git does.
 *
 * Returns the previous value (null when the ref was created). When the ref already is `newOid`, nothing is
 * written and no reflog entry added (as in git). Throws InvalidRefNameError for a short or
 * invalid name, RefConflictError when the current value differs from `expectedOld` (nothing written),
 * LockBusyError when `<name>.lock` (or HEAD.lock) stays held past the timeout (nothing written),
 * RefCorruptError when the ref file is unreadable or is a symbolic ref.
 */
export async function updateRef(gitdir: string, name: string, newOid: string, opts: UpdateRefOptions): Promise<string | null> {
  assertFullRefName(name);
  assertOid("newOid", newOid);
  if (typeof opts.expectedOld === "string") assertOid("expectedOld", opts.expectedOld);
  const base = await refBase(gitdir, name);
  const file = join(base, name);
  await prepareRefPath(gitdir, base, name);
  // Reject a bad committer before taking any lock.
  formatReflogLine(null, newOid, opts.committer, opts.message);

  return withLock(
    file,
    async (lock) => {
      const current = await readOwnValue(gitdir, name);
      if (current?.kind === "symref") {
        throw new RefCorruptError(name, file, `is a symbolic ref to ${current.target}; update the target instead`);
      }
      const actual = current?.oid ?? null;
      if (opts.expectedOld !== undefined && opts.expectedOld !== actual) {
        throw new RefConflictError(name, opts.expectedOld, actual);
      }
      // git writes neither the ref nor a reflog entry when the ref already has the value.
      if (actual === newOid) return actual;
      const line = formatReflogLine(actual, newOid, opts.committer, opts.message);
      await lock.write(`${newOid}\n`);

      let headLock: Lock | null = null;
      try {
        if ((await readSymbolicRef(gitdir, "HEAD")) === name) {
          headLock = await acquireLock(join(gitdir, "HEAD"), opts);
          // HEAD may have been switched between our look and the lock.
          if ((await readSymbolicRef(gitdir, "HEAD")) !== name) {
            await headLock.rollback();
            headLock = null;
          }
        }
        await appendReflog(base, name, line);
        if (headLock) await appendReflog(gitdir, "HEAD", line);
        await lock.commit();
      } finally {
        // HEAD itself does not change: its lock only guarded the reflog entry.
        await headLock?.rollback();
      }
      return actual;
    },
    opts,
  );
}

/** Options of {@link deleteRef}. */
export interface DeleteRefOptions extends LockOptions {
  /** The value the ref must have now; null = must be absent (then this is a no-op); undefined = no check. */
  expectedOld?: string | null;
}

/**
 * Deletes the ref `name` as git does: under `<name>.lock`, checks `expectedOld`, rewrites packed-refs
 * without it (under `packed-refs.lock`) when it is packed, removes the loose file and its reflog.
 * Packed-refs is rewritten before the loose file goes, so no reader ever sees a stale packed value.
 *
 * Returns the value the ref had (null when it did not exist; deleting an absent ref is a no-op).
 * Throws InvalidRefNameError, RefConflictError (nothing changed), LockBusyError (nothing changed),
 * RefCorruptError as updateRef does.
 */
export async function deleteRef(gitdir: string, name: string, opts: DeleteRefOptions = {}): Promise<string | null> {
  assertFullRefName(name);
  if (typeof opts.expectedOld === "string") assertOid("expectedOld", opts.expectedOld);
  const base = await refBase(gitdir, name);
  const file = join(base, name);
  try {
    await mkdir(dirname(file), { recursive: true });
  } catch (err) {
    // A file where a parent directory should be: then no loose ref of this name can exist either.
    if ((err as NodeJS.ErrnoException).code !== "EEXIST" && (err as NodeJS.ErrnoException).code !== "ENOTDIR") throw err;
    return null;
  }

  return withLock(
    file,
    async () => {
      const loose = await readLoose(base, name);
      if (loose?.kind === "symref") {
        throw new RefCorruptError(name, file, `is a symbolic ref to ${loose.target}; refusing to delete it`);
      }
      const current = await readOwnValue(gitdir, name);
      const actual = current?.kind === "oid" ? current.oid : null;
      if (opts.expectedOld !== undefined && opts.expectedOld !== actual) {
        throw new RefConflictError(name, opts.expectedOld, actual);
      }
      if (actual === null) return null;

      if (!isPerWorktree(name)) {
        const common = await commonDir(gitdir);
        const packedFile = join(common, "packed-refs");
        await withLock(
          packedFile,
          async (packedLock) => {
            const text = await readPackedFile(common);
            if (text === null) return;
            const lines = parsePacked(text, packedFile);
            if (!lines.some((l) => l.name === name)) return; // rolled back by withLock: file unchanged
            await packedLock.write(lines.filter((l) => l.name !== name).map((l) => l.raw).join(""));
            await packedLock.commit();
          },
          opts,
        );
      }
      if (loose !== null) {
        await unlink(file);
        await removeEmptyParents(base, name);
      }
      try {
        await unlink(join(base, "logs", name));
        await removeEmptyParents(join(base, "logs"), name);
      } catch (err) {
        if (!isMissing(err)) throw err;
      }
      return actual;
    },
    opts,
  );
}

/** Options of {@link writeSymbolicRef}. */
export interface WriteSymbolicRefOptions extends LockOptions {
  /** With a committer, a reflog entry for `name` records the switch (like `git symbolic-ref -m`). */
  message?: string;
  committer?: RefCommitter;
}

/**
 * Points the symbolic ref `name` (normally `HEAD`) at `target` (a full `refs/...` name, which need not
 * exist yet: an unborn branch), writing `ref: <target>\n` under `<name>.lock`.
 *
 * Returns nothing. Throws InvalidRefNameError for a bad name or target, LockBusyError when the lock stays
 * held past the timeout (nothing written).
 */
export async function writeSymbolicRef(
  gitdir: string,
  name: string,
  target: string,
  opts: WriteSymbolicRefOptions = {},
): Promise<void> {
  if (name !== "HEAD") assertFullRefName(name);
  assertFullRefName(target);
  const base = await refBase(gitdir, name);
  const file = join(base, name);
  if (name !== "HEAD") await prepareRefPath(gitdir, base, name);
  await withLock(
    file,
    async (lock) => {
      const oldOid = opts.committer ? await readRef(gitdir, name) : null;
      await lock.write(`ref: ${target}\n`);
      if (opts.committer) {
        const newOid = await readRef(gitdir, target);
        // git logs a symref switch only when both ends resolve (create_symref_locked).
        if (newOid !== null) {
          await appendReflog(base, name, formatReflogLine(oldOid, newOid, opts.committer, opts.message ?? ""));
        }
      }
      await lock.commit();
    },
    opts,
  );
}
