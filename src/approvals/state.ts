/**
 * Reading `cascade-sync-state.yaml`: each approval entry comes out either well-formed or malformed
 * with what is wrong and where, so that one bad entry never hides the good ones. Whether a
 * well-formed entry counts (signature, signer, commit, expiry) is decided by evaluate.ts.
 */
import { isAlias, isMap, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node, type YAMLMap } from "yaml";
import type { Approval } from "../generated/state.js";
import type { ConfigProblem } from "../config/types.js";
import { nearest } from "../text.js";

/** The state file's name in a sandbox. */
export const STATE_FILE = "cascade-sync-state.yaml";
/** A state file larger than this is refused before parsing (about a thousand approvals). */
export const MAX_STATE_BYTES = 1024 * 1024;
/** An entry's armored signature may be at most this many bytes (a real one is well under 1 KiB). */
export const MAX_SIGNATURE_BYTES = 8192;
/**
 * At most this many levels of nesting, block or flow. The YAML composer recurses per level: about a
 * thousand levels (`- - - - ...` on one line, or `[[[[...`) overflow the stack, and after such an
 * overflow the next parse can abort the whole process (V8 "RegExpCompiler Allocation failed"), which no
 * catch stops. A state file needs five levels, so nesting is bounded before parsing.
 */
export const MAX_NESTING = 32;

/** An entry's signer may be at most this many characters (an e-mail address is at most 254). */
export const MAX_SIGNER_CHARS = 256;
/** An entry's environment name may be at most this many characters. */
export const MAX_ENVIRONMENT_CHARS = 100;
/**
 * A field value with a problem is kept for the summary (status, plan, history) only up to this many
 * characters, and quoted in messages only up to QUOTE_CHARS: a hostile file must not flood status.
 */
const MAX_KEPT_CHARS = 256;
const QUOTE_CHARS = 60;

/** Environment names, as in the config's `environments` keys. */
export const ENVIRONMENT_PATTERN = /^[a-z][a-z0-9-]*$/;
/** A full, lowercase commit hash. */
export const COMMIT_PATTERN = /^[0-9a-f]{40}$/;
const SIGNATURE_PATTERN = /^\s*-----BEGIN SSH SIGNATURE-----\s[\s\S]*-----END SSH SIGNATURE-----\s*$/;
const APPROVAL_KEYS = ["environment", "commit", "expires", "signer", "signature"] as const;
type ApprovalKey = (typeof APPROVAL_KEYS)[number];

/** Where an entry sits: the file, its index in `approvals`, and the 1-based line and column of its `-`. */
export interface EntryLocation {
  file: string;
  index: number;
  line: number;
  col: number;
}

/** One thing wrong with a malformed entry, at the field's position when there is one. */
export interface EntryFieldProblem {
  /** The field concerned, or "" for the entry as a whole. */
  field: string;
  line: number;
  col: number;
  message: string;
}

/**
 * One approval entry as read from the file. `ok: true` means every field is present and of the right
 * shape (not that it is valid); `ok: false` lists every problem and keeps the fields that could be read.
 */
export type ParsedEntry =
  | (EntryLocation & { ok: true; approval: Approval })
  | (EntryLocation & { ok: false; fields: Partial<Approval>; problems: EntryFieldProblem[] });

/** The result of parseStateFile; `problems` are about the file as a whole, not single entries. */
export interface StateFileParse {
  entries: ParsedEntry[];
  problems: ConfigProblem[];
}

/** A parsed state file that keeps comments and source positions (for reading, and for approve.ts to append to). */
export interface StateDocument {
  doc: Document;
  /** The 1-based line and column of a source offset. */
  pos: (offset: number | undefined) => { line: number; col: number };
}

/**
 * Parses state file text into a YAML Document (failsafe schema: every scalar is the string exactly as
 * written, so an all-digit commit or a date stays text), after checking the size and nesting limits.
 * Returns `{ ok: false, problems }` when the text is too big, nested too deeply or not valid YAML
 * (duplicate keys are not a YAML error here: readers decide what they mean). Never throws.
 */
export function parseStateDocument(text: string, file: string): ({ ok: true } & StateDocument) | { ok: false; problems: ConfigProblem[] } {
  const problem = (line: number, col: number, message: string, hint?: string): ConfigProblem => ({
    severity: "error",
    file,
    line,
    col,
    path: "",
    message,
    ...(hint ? { hint } : {}),
  });
  try {
    const limit = limitProblem(text);
    if (limit) return { ok: false, problems: [problem(limit.line, 1, limit.message, limit.hint)] };
    const lines = new LineCounter();
    const doc = parseDocument(text, { lineCounter: lines, schema: "failsafe", uniqueKeys: false, prettyErrors: false });
    const pos = (offset: number | undefined) => {
      const p = lines.linePos(offset ?? 0);
      return { line: p.line, col: p.col };
    };
    if (doc.errors.length) {
      return {
        ok: false,
        problems: doc.errors.map((e) => {
          const p = pos(e.pos[0]);
          return problem(p.line, p.col, e.message.split("\n")[0] ?? e.message, "fix the YAML syntax here; until then no approval in this file counts");
        }),
      };
    }
    return { ok: true, doc, pos };
  } catch (err) {
    // The YAML library is not supposed to throw on any input; if it does, the file approves nothing.
    return { ok: false, problems: [problem(1, 1, `cannot parse the state file: ${(err as Error).message}`)] };
  }
}

/**
 * Parses state file text. Returns every approval entry (well-formed or malformed with reasons and
 * positions) and file-level problems: size, nesting, YAML syntax, shape, unknown or repeated top-level
 * keys. A file with YAML syntax errors yields no entries at all (a broken file approves nothing); a
 * malformed entry never hides the well-formed ones. Never throws.
 */
export function parseStateFile(text: string, file: string): StateFileParse {
  const parsed = parseStateDocument(text, file);
  if (!parsed.ok) return { entries: [], problems: parsed.problems };
  const problems: ConfigProblem[] = [];
  const fileProblem = (line: number, col: number, path: string, message: string, hint?: string) =>
    problems.push({ severity: "error", file, line, col, path, message, ...(hint ? { hint } : {}) });
  return { entries: readEntries(parsed.doc, file, parsed.pos, fileProblem), problems };
}

/** Why the text is refused before parsing (too big, nested too deeply), with the line concerned. */
function limitProblem(text: string): { line: number; message: string; hint: string } | undefined {
  const bytes = Buffer.byteLength(text, "utf8");
  if (bytes > MAX_STATE_BYTES) {
    return { line: 1, message: `the file is ${bytes} bytes; a state file is at most ${MAX_STATE_BYTES} bytes`, hint: "remove old approvals" };
  }
  const flow = maxFlowDepth(text);
  if (flow.depth > MAX_NESTING) {
    return { line: flow.line, message: `"[" and "{" nest ${flow.depth} deep here; a state file nests at most ${MAX_NESTING} deep`, hint: "write entries as block mappings, as cascade-sync approve does" };
  }
  const block = maxBlockDepth(text);
  if (block.depth > MAX_NESTING) {
    return { line: block.line, message: `the entries nest more than ${MAX_NESTING} levels deep here`, hint: "write entries as block mappings, as cascade-sync approve does" };
  }
  return undefined;
}

/** The deepest `[`/`{` nesting and its line. Brackets in quotes and comments count too: an over-estimate is safe. */
function maxFlowDepth(text: string): { depth: number; line: number } {
  let depth = 0;
  let max = 0;
  let line = 1;
  let maxLine = 1;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x0a) line++;
    else if (c === 0x5b || c === 0x7b) {
      depth++;
      if (depth > max) [max, maxLine] = [depth, line];
    } else if ((c === 0x5d || c === 0x7d) && depth > 0) depth--;
  }
  return { depth: max, line: maxLine };
}

/**
 * An upper bound of the block nesting depth and the line where it is deepest: each line is one level
 * below the nearest earlier line indented less, plus one level per compact indicator (`- `, `? `,
 * `: `) it starts with. Over-estimates (block scalar lines count as a level); never under-estimates.
 */
function maxBlockDepth(text: string): { depth: number; line: number } {
  const stack: { indent: number; depth: number }[] = [];
  let max = 0;
  let maxLine = 1;
  let lineNo = 0;
  for (const line of text.split("\n")) {
    lineNo++;
    let i = 0;
    while (i < line.length && (line[i] === " " || line[i] === "\t")) i++;
    if (i === line.length || line[i] === "#" || line[i] === "\r") continue;
    const indent = i;
    while (stack.length && stack[stack.length - 1]!.indent >= indent) stack.pop();
    const depth = (stack[stack.length - 1]?.depth ?? 0) + 1 + compactIndicators(line, i, MAX_NESTING + 1);
    stack.push({ indent, depth });
    if (depth > max) [max, maxLine] = [depth, lineNo];
    if (max > MAX_NESTING) break;
  }
  return { depth: max, line: maxLine };
}

/** How many `-`, `?` and `:` indicators (with anchors and tags between them) start `line` at `i`, counting up to `cap`. */
function compactIndicators(line: string, i: number, cap: number): number {
  const blank = (j: number) => j >= line.length || line[j] === " " || line[j] === "\t" || line[j] === "\r";
  let n = 0;
  while (i < line.length && n < cap) {
    const c = line[i];
    if ((c === "-" || c === "?" || c === ":") && blank(i + 1)) {
      n++;
      i++;
    } else if (c === "&" || c === "!") {
      while (!blank(i)) i++;
    } else break;
    while (i < line.length && blank(i)) i++;
  }
  return n;
}

/**
 * True for a missing value or a plain scalar that YAML's core schema reads as null (``, `~`, `null`):
 * the failsafe schema keeps those as text, but `approvals: ~` means "no approvals", not a bad list.
 */
export function isEmptyNode(node: Node | null | undefined): boolean {
  if (node === null || node === undefined) return true;
  if (!isScalar(node)) return false;
  if (node.value === null) return true;
  return node.type === "PLAIN" && typeof node.value === "string" && ["", "~", "null", "Null", "NULL"].includes(node.value);
}

function readEntries(
  doc: Document,
  file: string,
  pos: (offset: number | undefined) => { line: number; col: number },
  fileProblem: (line: number, col: number, path: string, message: string, hint?: string) => void,
): ParsedEntry[] {
  const root = doc.contents;
  if (root === null || isEmptyNode(root)) return [];
  if (!isMap(root)) {
    const p = pos(root.range?.[0]);
    fileProblem(p.line, p.col, "", "the state file must be a YAML mapping with an `approvals:` list");
    return [];
  }
  let approvals: Node | null | undefined;
  const seen = new Set<string>();
  let repeated = false;
  for (const pair of root.items) {
    const key = isScalar(pair.key) ? String(pair.key.value) : undefined;
    const p = pos((pair.key as Node | null)?.range?.[0]);
    if (key !== undefined && seen.has(key)) {
      // Which of two lists is meant is anybody's guess, so neither approves anything.
      fileProblem(p.line, p.col, key.slice(0, QUOTE_CHARS), `${quote(key)} appears more than once`, "merge the lists into one");
      repeated ||= key === "approvals";
      continue;
    }
    if (key !== undefined) seen.add(key);
    if (key === "approvals") approvals = pair.value as Node | null;
    else if (key === "freezes") {
      const v = pair.value as Node | null;
      if (!isSeq(v) && !isEmptyNode(v)) fileProblem(p.line, p.col, "freezes", "must be a list");
    } else {
      const guess = key === undefined ? undefined : nearest(key, ["approvals", "freezes"]);
      fileProblem(p.line, p.col, key?.slice(0, QUOTE_CHARS) ?? "", `unknown key ${key === undefined ? "(not a plain name)" : quote(key)}`, guess ? `did you mean "${guess}"?` : "valid keys: approvals, freezes");
    }
  }
  if (repeated || approvals === undefined || approvals === null || isEmptyNode(approvals)) return [];
  if (!isSeq(approvals)) {
    const p = pos(approvals.range?.[0]);
    fileProblem(p.line, p.col, "approvals", "must be a list of entries", "start each entry with `- environment: ...`");
    return [];
  }
  return approvals.items.map((item, index) => readEntry(item as Node | null, index, file, pos));
}

function readEntry(item: Node | null, index: number, file: string, pos: (offset: number | undefined) => { line: number; col: number }): ParsedEntry {
  const at = pos(item?.range?.[0]);
  const loc: EntryLocation = { file, index, ...at };
  const problems: EntryFieldProblem[] = [];
  const fields: Partial<Approval> = {};
  if (!item || !isMap(item)) {
    return { ...loc, ok: false, fields, problems: [{ field: "", ...at, message: "the entry is not a mapping of environment, commit, expires, signer and signature" }] };
  }
  const seenKeys = new Set<string>();
  for (const pair of (item as YAMLMap).items) {
    const keyNode = pair.key as Node | null;
    const key = isScalar(keyNode) ? String(keyNode.value) : "";
    const kp = pos(keyNode?.range?.[0]);
    if (!(APPROVAL_KEYS as readonly string[]).includes(key)) {
      problems.push({ field: key.slice(0, QUOTE_CHARS), ...kp, message: `unknown key ${quote(key)} (an entry has environment, commit, expires, signer, signature)` });
      continue;
    }
    if (seenKeys.has(key)) {
      // A second `commit:` could smuggle in a value the reader of the first one never sees.
      problems.push({ field: key, ...kp, message: `"${key}" appears more than once in the entry` });
      delete fields[key as ApprovalKey];
      continue;
    }
    seenKeys.add(key);
    const value = pair.value as Node | null;
    const vp = value?.range ? pos(value.range[0]) : kp;
    if (isAlias(value)) problems.push({ field: key, ...vp, message: `${key}: aliases are not allowed in approvals` });
    else if (!isScalar(value) || typeof value.value !== "string") {
      if (value === null || (isScalar(value) && value.value === null)) problems.push({ field: key, ...vp, message: `${key} is empty` });
      else problems.push({ field: key, ...vp, message: `${key} must be a string` });
    } else {
      const problem = checkField(key as ApprovalKey, value.value);
      if (problem) problems.push({ field: key, ...vp, message: problem });
      // A field with a problem is still kept for the summary, unless it is a signature or long.
      if (!problem || (key !== "signature" && value.value.length <= MAX_KEPT_CHARS)) fields[key as ApprovalKey] = value.value;
    }
  }
  for (const key of APPROVAL_KEYS) {
    if (!(key in fields) && !problems.some((p) => p.field === key)) problems.push({ field: key, ...at, message: `missing required key "${key}"` });
  }
  if (problems.length) return { ...loc, ok: false, fields, problems };
  const approval: Approval = { environment: fields.environment!, commit: fields.commit!, expires: fields.expires!, signer: fields.signer!, signature: fields.signature! };
  return { ...loc, ok: true, approval };
}

/** The problem with one field's value, or undefined when it has the right shape. */
function checkField(key: ApprovalKey, value: string): string | undefined {
  switch (key) {
    case "environment":
      if (value.length > MAX_ENVIRONMENT_CHARS) return `environment is ${value.length} characters long; an environment name has at most ${MAX_ENVIRONMENT_CHARS}`;
      return ENVIRONMENT_PATTERN.test(value) ? undefined : `environment ${quote(value)} is not an environment name (lowercase letters, digits and dashes, starting with a letter)`;
    case "commit":
      if (COMMIT_PATTERN.test(value)) return undefined;
      if (/^[0-9a-fA-F]+$/.test(value)) {
        const what = value.length === 40 ? "has upper-case digits" : `has ${value.length} hex digits`;
        return `commit ${quote(value)} ${what}; write the full 40-digit lowercase hash (git rev-parse COMMIT prints it)`;
      }
      return `commit ${quote(value)} is not a full 40-digit lowercase hex commit hash`;
    case "expires":
      return parseExpires(value) !== undefined ? undefined : `expires ${quote(value)} is not an RFC 3339 date-time such as 2026-11-25T18:00:00Z`;
    case "signer":
      if (value.trim() === "") return "signer is empty";
      if (value.length > MAX_SIGNER_CHARS) return `signer is ${value.length} characters long; a signer has at most ${MAX_SIGNER_CHARS}`;
      return /[\u0000-\u001f\u007f]/.test(value) ? "signer contains control characters or line breaks" : undefined;
    case "signature": {
      const bytes = Buffer.byteLength(value, "utf8");
      if (bytes > MAX_SIGNATURE_BYTES) return `signature is ${bytes} bytes; at most ${MAX_SIGNATURE_BYTES} (8 KiB)`;
      return SIGNATURE_PATTERN.test(value) ? undefined : "signature is not an armored SSH signature (-----BEGIN SSH SIGNATURE----- ... -----END SSH SIGNATURE-----)";
    }
  }
}

/** `value` as a JSON string for a message, cut after QUOTE_CHARS characters. */
function quote(value: string): string {
  return value.length > QUOTE_CHARS ? `${JSON.stringify(value.slice(0, QUOTE_CHARS))}... (${value.length} characters)` : JSON.stringify(value);
}

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?(?:([Zz])|([+-])(\d{2}):(\d{2}))$/;

/**
 * Milliseconds since the epoch of an RFC 3339 date-time (`2026-11-25T18:00:00Z`, `...+02:00`,
 * fractions allowed; a time zone is required), or undefined when the text is not one or names an
 * impossible date such as February 30.
 */
export function parseExpires(text: string): number | undefined {
  const m = RFC3339.exec(text);
  if (!m) return undefined;
  const [y, mo, d, h, mi, s] = [1, 2, 3, 4, 5, 6].map((i) => Number(m[i]));
  const year = y!;
  const month = mo!;
  const leap = (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0;
  const days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1];
  if (days === undefined || d! < 1 || d! > days || h! > 23 || mi! > 59 || s! > 60) return undefined;
  let offsetMin = 0;
  if (!m[8]) {
    const oh = Number(m[10]);
    const om = Number(m[11]);
    if (oh > 23 || om > 59) return undefined;
    offsetMin = (m[9] === "-" ? -1 : 1) * (oh * 60 + om);
  }
  const ms = m[7] ? Number(`0${m[7]}`) * 1000 : 0;
  const date = new Date(Date.UTC(2000, month - 1, d!, h!, mi!, s!));
  date.setUTCFullYear(year, month - 1, d!); // Date.UTC maps years below 100 to 19xx
  return date.getTime() + Math.floor(ms) - offsetMin * 60_000;
}

/**
 * The entries of `working` (the working copy's state file) that `committed` (the file as committed on
 * the sandbox branch) does not hold, compared by their fields, each counted as often as it occurs.
 * These are the ones to report as "not committed".
 */
export function uncommittedOnly(working: readonly ParsedEntry[], committed: readonly ParsedEntry[]): ParsedEntry[] {
  const counts = new Map<string, number>();
  for (const e of committed) counts.set(identity(e), (counts.get(identity(e)) ?? 0) + 1);
  const out: ParsedEntry[] = [];
  for (const e of working) {
    const id = identity(e);
    const n = counts.get(id) ?? 0;
    if (n > 0) counts.set(id, n - 1);
    else out.push(e);
  }
  return out;
}

function identity(e: ParsedEntry): string {
  const f: Partial<Approval> = e.ok ? e.approval : e.fields;
  return JSON.stringify([e.ok, f.environment, f.commit, f.expires, f.signer, f.signature?.trim()]);
}
