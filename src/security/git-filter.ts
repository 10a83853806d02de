/**
 * `security.encrypt` as a git filter driver: the sandbox's `.git/config` names the `cascade-sync`
 * filter process (and a textconv for readable diffs), `.git/info/attributes` gives each encrypt
 * pattern `filter=cascade-sync diff=cascade-sync`, and from then on git itself encrypts what it
 * stores and decrypts what it writes, in every command, native ones included. This module writes
 * and keeps that registration, moves sandboxes of the assume-unchanged era onto it, and finds the
 * encrypted blobs this sandbox's key cannot read (another person's key).
 */
import { lstat, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { CatFileBatch, diffTrees, indexAsIn, parseLsFilesStageRecord, parseLsTreeRecord, runGit, runGitRecords, splitNul, type GitRepo, type IndexEntry } from "../git/native/index.js";
import { packageRoot } from "../package-root.js";
import { readRuntimeJson, writeRuntimeFile } from "../runtime.js";
import type { BlobPolicy, HeldBack } from "./blob-policy.js";
import { isEncryptedBlob, type EncryptionKey } from "./encrypt.js";
import { TEAM_KEY_HINT, undecryptable } from "./filter-content.js";

/** The filter (and diff) driver's name in `.git/config` and in attributes. */
export const FILTER_DRIVER = "cascade-sync";

const MANAGED_BEGIN = "# cascade-sync: security.encrypt (managed by cascade-sync; edit security.encrypt instead)";
const MANAGED_END = "# end of cascade-sync";

/** A sandbox as the registration sees it: its work tree and its git directory. */
export interface FilterRepo {
  dir: string;
  gitdir: string;
}

/** Quotes one word for the shell git runs a filter command with. */
function shellQuote(s: string): string {
  return /^[A-Za-z0-9_./:=@%+-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * The command git runs for `sub` (`filter-process` or `filter-textconv`): this Node and this install's
 * bin/cascade-sync.js, both absolute, so that it works from any shell and any PATH. `keyFile` is the
 * key file the controller uses: the filter falls back to it when the config alone names no key
 * (git may run with another HOME than the one that found the default key file).
 */
export function filterCommand(sub: "filter-process" | "filter-textconv", binPath = join(packageRoot(), "bin", "cascade-sync.js"), keyFile?: string): string {
  return [process.execPath, binPath, sub, ...(keyFile ? ["--key-file", keyFile] : [])].map(shellQuote).join(" ");
}

/**
 * The `.git/info/attributes` lines for gitignore-style encrypt patterns. gitattributes differs in two
 * ways: a folder pattern (`secrets/`) does not reach the files inside (it becomes `secrets/**`), and
 * there is no `!` negation (it becomes the pattern with the attributes unset, which a later line may do).
 */
export function attributeLines(patterns: readonly string[]): string[] {
  const out: string[] = [];
  for (const raw of patterns) {
    let p = raw.trim();
    if (p === "" || p.startsWith("#")) continue;
    const negated = p.startsWith("!");
    if (negated) p = p.slice(1);
    if (p.endsWith("/")) {
      // A folder pattern: without another slash it matches such a folder at any depth.
      const core = p.slice(0, -1);
      p = core.includes("/") ? `${core}/**` : `**/${core}/**`;
    }
    // Whitespace ends a pattern in attributes; git reads C-quoted patterns.
    const pattern = /[\s"\\]/.test(p) ? `"${p.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\t/g, "\\t")}"` : p;
    out.push(negated ? `${pattern} !filter !diff` : `${pattern} filter=${FILTER_DRIVER} diff=${FILTER_DRIVER}`);
  }
  return out;
}

/**
 * Writes the managed block of `.git/info/attributes` for `patterns` (removed when there are none),
 * keeping every other line. Resolves true when the file changed.
 */
export async function writeInfoAttributes(gitdir: string, patterns: readonly string[]): Promise<boolean> {
  const file = join(gitdir, "info", "attributes");
  const old = await readFile(file, "utf8").catch(() => "");
  const lines = attributeLines(patterns);
  const block = lines.length ? [MANAGED_BEGIN, ...lines, MANAGED_END].join("\n") : "";
  const start = old.indexOf(MANAGED_BEGIN);
  const end = old.indexOf(MANAGED_END);
  let next: string;
  if (start >= 0 && end > start) {
    const after = old.slice(end + MANAGED_END.length).replace(/^\n/, "");
    next = old.slice(0, start) + (block ? `${block}\n` : "") + after;
  } else {
    next = block ? `${old}${old && !old.endsWith("\n") ? "\n" : ""}${block}\n` : old;
  }
  if (next === old) return false;
  await mkdir(dirname(file), { recursive: true });
  await writeFile(file, next);
  return true;
}

function gitRepo(repo: FilterRepo): GitRepo {
  return { cwd: repo.dir, gitDir: repo.gitdir, workTree: repo.dir };
}

async function localConfig(repo: FilterRepo, key: string): Promise<string | undefined> {
  const r = await runGit(["config", "--local", "--get", key], { ...gitRepo(repo), okExitCodes: [0, 1] });
  return r.exitCode === 0 ? r.stdout.toString("utf8").trim() : undefined;
}

async function setLocalConfig(repo: FilterRepo, key: string, value: string): Promise<boolean> {
  if ((await localConfig(repo, key)) === value) return false;
  await runGit(["config", "--local", key, value], gitRepo(repo));
  return true;
}

/** What {@link setUpEncryptionFilter} needs: the security settings in force and the policy (with its key) built from them. */
export interface EncryptionSetup {
  encrypt: readonly string[];
  /** The policy in force; its key (or none) decides what can be decrypted. */
  policy: BlobPolicy;
  /** The bin script git should run (default: this install's bin/cascade-sync.js). */
  binPath?: string;
}

/**
 * Registers the `cascade-sync` filter in the sandbox (for `init`, and at `start` for sandboxes made
 * before it existed) and returns sentences for a person:
 * - `.git/config`: `filter.cascade-sync.process` (this install's absolute command), `.required=true`
 *   (git fails a command rather than store a file unfiltered), `diff.cascade-sync.textconv`;
 * - `.git/info/attributes`: one line per security.encrypt pattern (kept in step when it changes);
 * - index entries of encrypted paths marked assume-unchanged (the former workaround) are unmarked;
 * - tracked encrypted files that hold their own committed ciphertext (a clone made before the
 *   filter was registered, or a key installed since) are checked out again, now decrypted;
 * - when the branches hold encrypted files this sandbox cannot decrypt (no key, another key), says
 *   so and how to install the team's key.
 */
export async function setUpEncryptionFilter(repo: FilterRepo, s: EncryptionSetup): Promise<string[]> {
  const lines: string[] = [];
  const bin = s.binPath;
  let changed = await setLocalConfig(repo, `filter.${FILTER_DRIVER}.process`, filterCommand("filter-process", bin, s.policy.keyFile));
  changed = (await setLocalConfig(repo, `filter.${FILTER_DRIVER}.required`, "true")) || changed;
  changed = (await setLocalConfig(repo, `diff.${FILTER_DRIVER}.textconv`, filterCommand("filter-textconv", bin, s.policy.keyFile))) || changed;
  changed = (await writeInfoAttributes(repo.gitdir, s.encrypt)) || changed;
  if (changed && s.encrypt.length) lines.push(`registered the cascade-sync git filter for security.encrypt (${s.encrypt.join(", ")}) in .git/config and .git/info/attributes`);
  if (!s.encrypt.length) return lines;
  const tracked: IndexEntry[] = [];
  // git lists only the entries its attributes give the filter (pathspec magic `attr:`): a whole
  // index matched here path by path cost 0.3 s of CPU at 100,000 files.
  await runGitRecords(["ls-files", "-s", "-z", "--", `:(attr:filter=${FILTER_DRIVER})`], gitRepo(repo), (r) => {
    const e = parseLsFilesStageRecord(r);
    if (e.stage === 0 && e.mode !== "120000" && e.mode !== "160000" && s.policy.isEncrypted(e.path)) tracked.push(e);
  });
  const unmarked = await unmarkAssumeUnchanged(repo, new Set(tracked.map((e) => e.path)));
  if (unmarked.length) lines.push(`${unmarked.length} encrypted file(s) are no longer marked assume-unchanged in the index: git's filter keeps them as ciphertext now`);
  const key = s.policy.encryptionKey;
  if (key) {
    const refreshed = await decryptCheckedOutCiphertext(repo, tracked, key);
    if (refreshed.length) lines.push(`decrypted ${refreshed.length} file(s) that held their ciphertext: ${refreshed.join(", ")}`);
  }
  const unreadable = await undecryptableInBranches(repo, s.policy, key);
  if (unreadable.length) {
    const shown = unreadable.slice(0, 5).join(", ") + (unreadable.length > 5 ? `, +${unreadable.length - 5} more` : "");
    const why = key ? `do not decrypt with this sandbox's key (${key.fingerprint}): they were encrypted with another key` : "are stored encrypted and this sandbox has no key";
    lines.push(`this repository's history has encrypted files that ${why}: ${shown}`);
    lines.push(`  they are held (not written, never committed over) until the key is here; ${TEAM_KEY_HINT}`);
  }
  return lines;
}

/** Clears assume-unchanged from the index entries of `paths` that have it; returns those paths. */
async function unmarkAssumeUnchanged(repo: FilterRepo, paths: ReadonlySet<string>): Promise<string[]> {
  if (!paths.size) return [];
  // `ls-files -v` shows an assume-unchanged entry with a lowercase tag.
  const marked: string[] = [];
  await runGitRecords(["ls-files", "-v", "-z"], gitRepo(repo), (r) => {
    if (/^[a-z] /.test(r) && paths.has(r.slice(2))) marked.push(r.slice(2));
  });
  if (marked.length) await runGit(["update-index", "-z", "--no-assume-unchanged", "--stdin"], { ...gitRepo(repo), stdin: `${marked.join("\0")}\0` });
  return marked;
}

/**
 * Checks out again (through the filter, so decrypted) each tracked encrypted file whose working file
 * is byte for byte its index blob, a ciphertext this key decrypts: nothing of the person's is
 * replaced, since the file is exactly what git already has.
 */
async function decryptCheckedOutCiphertext(repo: FilterRepo, tracked: readonly { path: string; oid: string }[], key: EncryptionKey): Promise<string[]> {
  const candidates: { path: string; oid: string }[] = [];
  for (const e of tracked) {
    const head = await readHead(join(repo.dir, e.path), 17);
    if (head && isEncryptedBlob(head)) candidates.push(e);
  }
  if (!candidates.length) return [];
  // hash-object reads one path per line: a name holding a newline is left as it is.
  const named = candidates.filter((c) => !c.path.includes("\n"));
  const hashed = await runGit(["hash-object", "--no-filters", "--stdin-paths"], { ...gitRepo(repo), stdin: named.map((c) => `${c.path}\n`).join("") }).catch(() => null);
  const hashes = hashed ? hashed.stdout.toString("utf8").split("\n") : [];
  const same = named.filter((c, i) => hashes[i] === c.oid);
  const readable: string[] = [];
  const reader = new CatFileBatch(gitRepo(repo));
  try {
    for (const c of same) {
      const obj = await reader.read(c.oid);
      if (obj && !undecryptable(key, c.path, obj.data)) readable.push(c.path);
    }
  } finally {
    await reader.close();
  }
  if (readable.length) {
    // git skips an entry whose file looks up to date by its stat data: the file (byte for byte the
    // blob, so nothing is lost) goes first, then git writes it again through the filter.
    for (const p of readable) await rm(join(repo.dir, p), { force: true });
    await runGit(["checkout-index", "-u", "-f", "-z", "--stdin"], { ...gitRepo(repo), stdin: `${readable.join("\0")}\0` });
  }
  return readable;
}

async function readHead(abs: string, bytes: number): Promise<Buffer | undefined> {
  const { open } = await import("node:fs/promises");
  const fh = await open(abs, "r").catch(() => undefined);
  if (!fh) return undefined;
  try {
    const buf = Buffer.alloc(bytes);
    const { bytesRead } = await fh.read(buf, 0, bytes, 0);
    return buf.subarray(0, bytesRead);
  } catch {
    return undefined;
  } finally {
    await fh.close();
  }
}

/** The encrypted paths in the trees of the local and remote-tracking branches whose blob this key cannot decrypt, sorted. */
export async function undecryptableInBranches(repo: FilterRepo, policy: BlobPolicy, key: EncryptionKey | undefined): Promise<string[]> {
  if (!policy.encryptsAnything) return [];
  const tips = new Set((await runGit(["for-each-ref", "--format=%(objectname)", "refs/heads", "refs/remotes"], gitRepo(repo))).stdout.toString("utf8").split("\n").filter(Boolean));
  const entries = new Map<string, { path: string; oid: string }>();
  for (const tip of tips) for (const e of await encryptedEntries(repo, policy, tip)) entries.set(`${e.path}\0${e.oid}`, e);
  return [...new Set(await undecryptableEntries(repo, key, [...entries.values()]))].sort();
}

/**
 * The encrypted paths of `treeish` (all of them, or those among `paths`) whose blob this key cannot
 * decrypt: another person's key, or no key at all. Such a path is held: nothing is written for it
 * and the sandbox never commits over it.
 */
export async function undecryptableInTree(repo: FilterRepo, policy: BlobPolicy, key: EncryptionKey | undefined, treeish: string, paths?: readonly string[]): Promise<string[]> {
  if ((paths && paths.length === 0) || !policy.encryptsAnything) return [];
  return undecryptableEntries(repo, key, await encryptedEntries(repo, policy, treeish, paths));
}

/**
 * The encrypted files (blobs, not symlinks) of `treeish`, or of those among `paths`. The whole tree's
 * list is filtered as it comes, never held (about 100 MB at a million files), and the last one is kept
 * per policy: the next tree's is what a diff of the two trees changes in it, not another listing (one
 * is a second at 100,000 files on a cold cache, several at a million; every full scan asks).
 */
async function encryptedEntries(repo: FilterRepo, policy: BlobPolicy, treeish: string, paths?: readonly string[]): Promise<{ path: string; oid: string }[]> {
  if (!paths) return [...(await wholeTreeListing(repo, policy, treeish))].map(([path, oid]) => ({ path, oid }));
  const entries: { path: string; oid: string }[] = [];
  await listEncrypted(repo, policy, treeish, paths, (path, oid) => entries.push({ path, oid }));
  return entries;
}

/**
 * The encrypted files of `treeish` (path -> blob). The last few whole-tree listings are kept, in
 * memory and in the runtime folder for the next run (with the security.encrypt they were made
 * with): a tree listed before is answered from them (the branches at start often share a few
 * trees), another is derived from the most recent one with `git diff-tree` (which reads only the
 * folders that differ), else listed with `git ls-tree -r`. A listing whose tree git no longer has
 * is not derived from. The sandbox's own commits keep the newest listing in step ({@link followCommit}).
 */
async function wholeTreeListing(repo: FilterRepo, policy: BlobPolicy, treeish: string): Promise<Map<string, string>> {
  const kept = await keptFor(repo, policy);
  const known = kept.listings.find((l) => l.treeish === treeish);
  if (known) {
    await keepListing(repo, policy, kept, known);
    return known.entries;
  }
  const last = kept.listings[0];
  const diff = last ? await diffTrees(gitRepo(repo), last.treeish, treeish).catch(() => undefined) : undefined;
  let entries = diff && withChanges(last!.entries, policy, diff.map((d) => ({ path: d.path, after: d.dstMode === "000000" ? undefined : { mode: d.dstMode, oid: d.dstOid } })));
  if (!entries) {
    const listed = new Map<string, string>();
    if ((await listEncrypted(repo, policy, treeish, undefined, (path, oid) => listed.set(path, oid))) !== 0) return listed;
    entries = listed;
  }
  await keepListing(repo, policy, kept, { treeish, entries });
  return entries;
}

/**
 * Keeps the listings in step with a commit the sandbox made on `parent`: when the parent's listing
 * is kept, the commit's is that listing with what the commit changed (known already: no git runs),
 * kept as the most recent in place of the parent's. The next full scan and the next start then find
 * the head listed, instead of a `diff-tree` that, after a burst of commits, reads every folder.
 */
export async function followCommit(repo: FilterRepo, policy: BlobPolicy, parent: string | null, commit: string, changes: readonly ListingChange[]): Promise<void> {
  const kept = await keptFor(repo, policy);
  const from = kept.listings.find((l) => l.treeish === parent);
  if (!from) return;
  await keepListing(repo, policy, kept, { treeish: commit, entries: withChanges(from.entries, policy, changes) }, from.treeish);
}

/** A path as a tree records it after a change: its mode and blob, or no `after` when it is gone. */
interface ListingChange {
  path: string;
  after?: { mode: string; oid: string };
}

/** `entries` with `changes` applied: an encrypted path is listed while it is a blob (not a symlink or submodule). */
function withChanges(entries: ReadonlyMap<string, string>, policy: BlobPolicy, changes: readonly ListingChange[]): Map<string, string> {
  const out = new Map(entries);
  for (const ch of changes) {
    if (!policy.isEncrypted(ch.path)) continue;
    if (!ch.after || ch.after.mode === "120000" || ch.after.mode === "160000") out.delete(ch.path);
    else out.set(ch.path, ch.after.oid);
  }
  return out;
}

/** This policy's kept listings, read from the runtime folder the first time. */
async function keptFor(repo: FilterRepo, policy: BlobPolicy): Promise<KeptListings> {
  let kept = keptListings.get(policy);
  if (kept?.gitdir !== repo.gitdir) {
    kept = { gitdir: repo.gitdir, listings: await savedListings(repo, policy) };
    keptListings.set(policy, kept);
  }
  return kept;
}

/** Keeps `listing` as the most recent (dropping `replaces`' when given), in memory and in the runtime folder. */
async function keepListing(repo: FilterRepo, policy: BlobPolicy, kept: KeptListings, listing: Listing, replaces?: string): Promise<void> {
  if (kept.listings[0]?.treeish === listing.treeish && !replaces) return;
  kept.listings = [listing, ...kept.listings.filter((l) => l.treeish !== listing.treeish && l.treeish !== replaces)].slice(0, KEPT_LISTINGS);
  const saved = { encrypt: policy.encryptPatterns, listings: kept.listings.map((l) => ({ treeish: l.treeish, entries: [...l.entries] })) };
  await writeRuntimeFile(repo.gitdir, LISTING_FILE, JSON.stringify(saved)).catch(() => undefined);
}

/** `git ls-tree -r` of `treeish` (or of `paths` in it), handing over each encrypted blob; git's exit code (128: no such tree). */
async function listEncrypted(repo: FilterRepo, policy: BlobPolicy, treeish: string, paths: readonly string[] | undefined, found: (path: string, oid: string) => void): Promise<number> {
  const args = ["ls-tree", "-r", "-z", "--full-tree", treeish, ...(paths ? ["--", ...paths] : [])];
  const { exitCode } = await runGitRecords(args, { ...gitRepo(repo), env: { GIT_LITERAL_PATHSPECS: "1" }, okExitCodes: [0, 128] }, (r) => {
    const e = parseLsTreeRecord(r);
    if (e.type === "blob" && e.mode !== "120000" && policy.isEncrypted(e.path)) found(e.path, e.oid);
  });
  return exitCode;
}

/** The listings the last run kept, when they were made with the same security.encrypt; the most recent first. */
async function savedListings(repo: FilterRepo, policy: BlobPolicy): Promise<Listing[]> {
  const saved = await readRuntimeJson<{ encrypt?: unknown; listings?: unknown }>(repo.gitdir, LISTING_FILE);
  if (!saved || JSON.stringify(saved.encrypt) !== JSON.stringify(policy.encryptPatterns) || !Array.isArray(saved.listings)) return [];
  const out: Listing[] = [];
  for (const l of saved.listings as { treeish?: unknown; entries?: unknown }[]) {
    if (typeof l?.treeish !== "string" || !Array.isArray(l.entries)) continue;
    const entries = new Map<string, string>();
    for (const e of l.entries) if (Array.isArray(e) && typeof e[0] === "string" && typeof e[1] === "string") entries.set(e[0], e[1]);
    out.push({ treeish: l.treeish, entries });
  }
  return out.slice(0, KEPT_LISTINGS);
}

interface Listing {
  treeish: string;
  entries: Map<string, string>;
}

interface KeptListings {
  gitdir: string;
  listings: Listing[];
}

/** The last whole-tree lists of encrypted files, per policy (a config reload makes a new one), the most recent first. */
const keptListings = new WeakMap<BlobPolicy, KeptListings>();
/** How many listings are kept: a sandbox's branches (develop, staging, main and their remote copies) hold a few trees. */
const KEPT_LISTINGS = 4;
/** Where the listings are kept between runs (the runtime folder: .git/cascade-sync). */
const LISTING_FILE = "encrypted-files.json";

/** The paths among `entries` whose blob this key cannot decrypt. */
async function undecryptableEntries(repo: FilterRepo, key: EncryptionKey | undefined, entries: readonly { path: string; oid: string }[]): Promise<string[]> {
  if (!entries.length) return [];
  const reader = new CatFileBatch(gitRepo(repo));
  const out: string[] = [];
  try {
    for (const e of entries) {
      const obj = await reader.read(e.oid);
      if (obj && undecryptable(key, e.path, obj.data)) out.push(e.path);
    }
  } finally {
    await reader.close();
  }
  return out;
}

/**
 * Those of `paths` whose attributes do not run the cascade-sync filter (`git check-attr filter`): git
 * would store such a file as it is, so an encrypted path among them must never be staged.
 */
export async function pathsWithoutFilter(repo: FilterRepo, paths: readonly string[]): Promise<string[]> {
  if (!paths.length) return [];
  const { stdout } = await runGit(["check-attr", "-z", "--stdin", "filter"], { ...gitRepo(repo), stdin: `${paths.join("\0")}\0` });
  const f = splitNul(stdout);
  const out: string[] = [];
  for (let i = 0; i + 2 < f.length; i += 3) if (f[i + 2] !== FILTER_DRIVER) out.push(f[i]!);
  return out;
}

/**
 * True when a branch (local or remote-tracking) of the repository at `dir` holds an encrypted
 * blob at a path matching `encrypt`; false also when `dir` is no repository.
 */
export async function historyHasEncryptedFiles(dir: string, encrypt: readonly string[]): Promise<boolean> {
  if (!encrypt.length) return false;
  const { BlobPolicy } = await import("./blob-policy.js");
  const noKey = new BlobPolicy({ encrypt, maxFileSizeBytes: Number.MAX_SAFE_INTEGER, allow: [] }, undefined);
  const top = await runGit(["rev-parse", "--show-toplevel", "--absolute-git-dir"], { cwd: dir }).catch(() => null);
  if (!top) return false;
  const [workTree, gitdir] = top.stdout.toString("utf8").trim().split("\n");
  if (!workTree || !gitdir) return false;
  return (await undecryptableInBranches({ dir: workTree, gitdir }, noKey, undefined)).length > 0;
}

/**
 * What the native commit must keep away from git for a batch (NativeCommit.keepOut): an encrypted
 * file without a key (the filter would refuse it; its deletion goes through), and one whose attributes would not run the
 * cascade-sync filter (git would store its plaintext as an object). Folders (embedded repositories,
 * ending in `/`) are never encrypted files.
 */
export function keepOutOfGit(repo: FilterRepo, policy: BlobPolicy): (paths: readonly string[]) => Promise<Map<string, HeldBack>> {
  return async (paths) => {
    const out = new Map<string, HeldBack>();
    const encrypted = paths.filter((p) => !p.endsWith("/") && policy.isEncrypted(p));
    for (const p of encrypted) {
      // A deletion reveals nothing and needs no key; a file that is there does.
      const there = await lstat(join(repo.dir, p)).then(() => true, () => false);
      if (policy.holdsBack(p) && there) out.set(p, { why: "no-key", path: p, message: `${p} matches security.encrypt and there is no encryption key; it is never committed in plaintext` });
    }
    for (const p of await pathsWithoutFilter(repo, encrypted.filter((p) => !out.has(p)))) {
      out.set(p, { why: "unfiltered", path: p, message: `${p} matches security.encrypt but its attributes do not run the cascade-sync filter; it is not committed (run \`cascade-sync init\` to register the filter)` });
    }
    return out;
  };
}

/**
 * Sets the index entries of `paths` to what `treeish` holds (removed where it holds nothing), without
 * touching the files: a held path (no key, another person's key) must go into the next commit exactly
 * as committed, since git writes the whole index as the commit's tree.
 */
export async function indexAsCommitted(repo: FilterRepo, treeish: string, paths: readonly string[]): Promise<void> {
  await indexAsIn(gitRepo(repo), treeish, paths);
}

/**
 * Of `paths` (staged differently from `head`, not by the sandbox's batch: a merge left the file alone),
 * the encrypted ones this sandbox cannot commit (no key, or `head` holds them encrypted with another
 * key): since a commit records the whole index, they must go back to `head`'s entries.
 */
export async function heldInIndex(repo: FilterRepo, policy: BlobPolicy, head: string, paths: readonly string[]): Promise<string[]> {
  const encrypted = paths.filter((p) => policy.isEncrypted(p));
  if (!encrypted.length) return [];
  if (!policy.encryptionKey) return encrypted;
  return undecryptableInTree(repo, policy, policy.encryptionKey, head, encrypted);
}
