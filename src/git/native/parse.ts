/**
 * Parsers for git's `-z` output, in one place. Paths come out exactly as git has them (no quoting, no
 * escapes: `-z` turns both off), decoded as UTF-8. Object ids are taken as git prints them, 40 hex
 * digits in a sha1 repository and 64 in a sha256 one. A record that does not have the expected shape is
 * a bug in the caller's arguments (or a git that changed its format), reported as a
 * {@link GitOutputParseError}, which is an InternalError: a person cannot fix it by changing their setup.
 */
import { InternalError } from "../../errors.js";

/** git printed something a parser did not expect (a bug in cascade-sync, or a git whose format changed). */
export class GitOutputParseError extends InternalError {
  constructor(what: string, record: string) {
    super(`unexpected ${what} record from git: ${JSON.stringify(record.slice(0, 200))}`);
    this.name = "GitOutputParseError";
  }
}

/** Splits NUL-terminated records, dropping the empty one after the last NUL. */
export function splitNul(out: Buffer | string): string[] {
  const text = typeof out === "string" ? out : out.toString("utf8");
  const records = text.split("\0");
  if (records[records.length - 1] === "") records.pop();
  return records;
}

/** Splits the first `n` space-separated fields off `record`; the rest (which may hold spaces) is last. */
function fields(record: string, n: number, what: string): string[] {
  const out: string[] = [];
  let at = 0;
  for (let i = 0; i < n; i++) {
    const sp = record.indexOf(" ", at);
    if (sp < 0) throw new GitOutputParseError(what, record);
    out.push(record.slice(at, sp));
    at = sp + 1;
  }
  out.push(record.slice(at));
  return out;
}

// ---------------------------------------------------------------------------------------------------
// git status --porcelain=v2 -z [--branch] [--untracked-files=all] [--ignored]

/** A submodule's state as status reports it; undefined for an entry that is not a submodule. */
export interface SubmoduleState {
  /** The checked-out commit differs from the one recorded. */
  commitChanged: boolean;
  /** The submodule has modified tracked files. */
  trackedChanges: boolean;
  /** The submodule has untracked files. */
  untrackedChanges: boolean;
}

/** A changed tracked path (status `1`). */
export interface OrdinaryChange {
  kind: "ordinary";
  /** Index and work tree states, e.g. `.M`, `A.`, `D.`. */
  xy: string;
  submodule: SubmoduleState | undefined;
  modeHead: string;
  modeIndex: string;
  modeWorktree: string;
  oidHead: string;
  oidIndex: string;
  path: string;
}

/** A renamed or copied path (status `2`). */
export interface RenamedChange extends Omit<OrdinaryChange, "kind"> {
  kind: "renamed";
  /** R (renamed) or C (copied). */
  op: "R" | "C";
  /** Similarity in percent. */
  score: number;
  /** The path it came from. */
  originalPath: string;
}

/** An unmerged path (status `u`), with stages 1 (base), 2 (ours), 3 (theirs). */
export interface UnmergedChange {
  kind: "unmerged";
  /** DD, AU, UD, UA, DU, AA or UU. */
  xy: string;
  submodule: SubmoduleState | undefined;
  modes: [string, string, string];
  modeWorktree: string;
  oids: [string, string, string];
  path: string;
}

/** An untracked (`?`) or ignored (`!`) path. */
export interface OtherChange {
  kind: "untracked" | "ignored";
  path: string;
}

/** One entry of `git status --porcelain=v2 -z`. */
export type StatusEntry = OrdinaryChange | RenamedChange | UnmergedChange | OtherChange;

/** What `git status --porcelain=v2 -z` said. */
export interface StatusV2 {
  /** The `# key value` headers (with `--branch`: branch.oid, branch.head, branch.upstream, branch.ab). */
  headers: Record<string, string>;
  entries: StatusEntry[];
}

function submoduleState(field: string, record: string): SubmoduleState | undefined {
  if (field === "N...") return undefined;
  if (field.length !== 4 || field[0] !== "S") throw new GitOutputParseError("status submodule field", record);
  return { commitChanged: field[1] === "C", trackedChanges: field[2] === "M", untrackedChanges: field[3] === "U" };
}

/** Parses `git status --porcelain=v2 -z` output (any of `--branch`, `--untracked-files`, `--ignored`). */
export function parseStatusV2(out: Buffer | string): StatusV2 {
  const records = splitNul(out);
  const headers: Record<string, string> = {};
  const entries: StatusEntry[] = [];
  for (let i = 0; i < records.length; i++) {
    const r = records[i]!;
    switch (r[0]) {
      case "#": {
        const [key, value] = fields(r.slice(2), 1, "status header");
        headers[key!] = value!;
        break;
      }
      case "1": {
        const [, xy, sub, mH, mI, mW, hH, hI, path] = fields(r, 8, "status");
        entries.push({ kind: "ordinary", xy: xy!, submodule: submoduleState(sub!, r), modeHead: mH!, modeIndex: mI!, modeWorktree: mW!, oidHead: hH!, oidIndex: hI!, path: path! });
        break;
      }
      case "2": {
        const [, xy, sub, mH, mI, mW, hH, hI, xScore, path] = fields(r, 9, "status rename");
        const originalPath = records[++i];
        if (originalPath === undefined) throw new GitOutputParseError("status rename (no original path)", r);
        const op = xScore![0];
        if (op !== "R" && op !== "C") throw new GitOutputParseError("status rename", r);
        entries.push({
          kind: "renamed", xy: xy!, submodule: submoduleState(sub!, r), modeHead: mH!, modeIndex: mI!, modeWorktree: mW!, oidHead: hH!, oidIndex: hI!,
          op, score: Number(xScore!.slice(1)), path: path!, originalPath,
        });
        break;
      }
      case "u": {
        const [, xy, sub, m1, m2, m3, mW, h1, h2, h3, path] = fields(r, 10, "status unmerged");
        entries.push({ kind: "unmerged", xy: xy!, submodule: submoduleState(sub!, r), modes: [m1!, m2!, m3!], modeWorktree: mW!, oids: [h1!, h2!, h3!], path: path! });
        break;
      }
      case "?":
      case "!":
        if (r[1] !== " ") throw new GitOutputParseError("status", r);
        entries.push({ kind: r[0] === "?" ? "untracked" : "ignored", path: r.slice(2) });
        break;
      default:
        throw new GitOutputParseError("status", r);
    }
  }
  return { headers, entries };
}

// ---------------------------------------------------------------------------------------------------
// git ls-files -z -s (--stage)

/** One index entry as `git ls-files -s` shows it. */
export interface IndexEntry {
  mode: string;
  oid: string;
  /** 0 for a merged entry; 1-3 for the stages of a conflict. */
  stage: number;
  path: string;
}

/** Parses `git ls-files -z -s` (`<mode> <oid> <stage>\t<path>`). */
export function parseLsFilesStage(out: Buffer | string): IndexEntry[] {
  return splitNul(out).map(parseLsFilesStageRecord);
}

/** One record of `git ls-files -s -z` (without its NUL). */
export function parseLsFilesStageRecord(r: string): IndexEntry {
  const tab = r.indexOf("\t");
  if (tab < 0) throw new GitOutputParseError("ls-files -s", r);
  const [mode, oid, stage] = r.slice(0, tab).split(" ");
  if (!mode || !oid || stage === undefined) throw new GitOutputParseError("ls-files -s", r);
  return { mode, oid, stage: Number(stage), path: r.slice(tab + 1) };
}

// ---------------------------------------------------------------------------------------------------
// git ls-tree -z [-r] [-t] [-l]

/** One tree entry as `git ls-tree` shows it. */
export interface TreeEntry {
  mode: string;
  /** blob, tree or commit (a submodule). */
  type: string;
  oid: string;
  /** With `-l`: the blob's size; undefined for trees and submodules, and without `-l`. */
  size: number | undefined;
  path: string;
}

/** Parses `git ls-tree -z` (`<mode> <type> <oid>[ <size>]\t<path>`; with `-l` the size is space-padded). */
export function parseLsTree(out: Buffer | string): TreeEntry[] {
  return splitNul(out).map(parseLsTreeRecord);
}

/** One record of `git ls-tree -z` (without its NUL). */
export function parseLsTreeRecord(r: string): TreeEntry {
  const tab = r.indexOf("\t");
  if (tab < 0) throw new GitOutputParseError("ls-tree", r);
  const [mode, type, oid, size] = r.slice(0, tab).split(/ +/);
  if (!mode || !type || !oid) throw new GitOutputParseError("ls-tree", r);
  return { mode, type, oid, size: size === undefined || size === "-" ? undefined : Number(size), path: r.slice(tab + 1) };
}

// ---------------------------------------------------------------------------------------------------
// git diff-tree -z --raw -r [--no-commit-id] [-M] [-C]

/** One changed path as the raw diff format shows it. */
export interface RawDiffEntry {
  srcMode: string;
  dstMode: string;
  srcOid: string;
  dstOid: string;
  /** A (added), D (deleted), M (modified), T (type changed), R (renamed), C (copied), U (unmerged), X. */
  status: string;
  /** Similarity (R, C) or dissimilarity (M with -B) in percent. */
  score: number | undefined;
  /** The path (for R and C: the new path). */
  path: string;
  /** For R and C: the path it came from. */
  srcPath: string | undefined;
}

/** What `git diff-tree -z --raw` said. */
export interface RawDiff {
  /** The commit whose changes these are, when diff-tree was given one commit (and no `--no-commit-id`). */
  commit: string | undefined;
  entries: RawDiffEntry[];
}

/**
 * Parses `git diff-tree -z --raw -r` (also diff-index/diff-files raw output): for each change a
 * `:<srcmode> <dstmode> <srcoid> <dstoid> <status>[score]` record, then the path, then for renames and
 * copies the new path. Needs full object ids (diff-tree prints them unless `--abbrev` is given). A
 * combined diff (`::`, from -c) is not this format.
 */
export function parseRawDiff(out: Buffer | string): RawDiff {
  const records = splitNul(out);
  let commit: string | undefined;
  const entries: RawDiffEntry[] = [];
  for (let i = 0; i < records.length; i++) {
    const r = records[i]!;
    if (!r.startsWith(":") || r.startsWith("::")) {
      if (/^[0-9a-f]{40}([0-9a-f]{24})?$/.test(r) && entries.length === 0) {
        commit = r;
        continue;
      }
      throw new GitOutputParseError("raw diff", r);
    }
    const [srcMode, dstMode, srcOid, dstOid, statusScore] = r.slice(1).split(" ");
    if (!srcMode || !dstMode || !srcOid || !dstOid || !statusScore) throw new GitOutputParseError("raw diff", r);
    const status = statusScore[0]!;
    const path = records[++i];
    if (path === undefined) throw new GitOutputParseError("raw diff (no path)", r);
    let srcPath: string | undefined;
    let dst = path;
    if (status === "R" || status === "C") {
      srcPath = path;
      dst = records[++i] ?? "";
      if (!dst) throw new GitOutputParseError("raw diff (no new path)", r);
    }
    entries.push({ srcMode, dstMode, srcOid, dstOid, status, score: statusScore.length > 1 ? Number(statusScore.slice(1)) : undefined, path: dst, srcPath });
  }
  return { commit, entries };
}

// ---------------------------------------------------------------------------------------------------
// git for-each-ref --format=FOR_EACH_REF_FORMAT

/**
 * The format {@link parseForEachRef} reads: fields separated by NUL (for-each-ref expands `%00`), one ref
 * per line. A ref name can hold neither NUL nor newline (git check-ref-format), so the split is safe.
 */
export const FOR_EACH_REF_FORMAT = "%(refname)%00%(objectname)%00%(objecttype)%00%(symref)%00%(*objectname)";

/** One ref as for-each-ref lists it. */
export interface RefEntry {
  /** Full name, e.g. refs/heads/develop. */
  ref: string;
  oid: string;
  /** The type of the object the ref points at: commit, or tag for an annotated tag. */
  type: string;
  /** What a symbolic ref points at, else undefined. */
  symref: string | undefined;
  /** For an annotated tag, the object it tags (peeled once). */
  peeled: string | undefined;
}

/** Parses `git for-each-ref --format=` {@link FOR_EACH_REF_FORMAT}. */
export function parseForEachRef(out: Buffer | string): RefEntry[] {
  const text = typeof out === "string" ? out : out.toString("utf8");
  return text.split("\n").filter((l) => l.length > 0).map((line) => {
    const [ref, oid, type, symref, peeled] = line.split("\0");
    if (!ref || oid === undefined || type === undefined || symref === undefined || peeled === undefined) throw new GitOutputParseError("for-each-ref", line);
    return { ref, oid, type, symref: symref || undefined, peeled: peeled || undefined };
  });
}
