/**
 * The secret scan: run on every batch before it is committed, and as the `security-scan` gate on every
 * promotion candidate. A finding names the file, line, column and rule, never the secret; its
 * fingerprint lets a person accept exactly that finding through `security.allow`.
 *
 * Each file costs two regular-expression passes over its text (one case-sensitive for token shapes,
 * one case-insensitive for `key = value` assignments), whatever the number of rules.
 */
import { createHash } from "node:crypto";
import { PathRules } from "../path-rules.js";


/** The stable ids of the scan's rules, used in status, `security.allow` advice and tests. */
export type ScanRule =
  | "private-key"
  | "aws-access-key-id"
  | "aws-secret-access-key"
  | "github-token"
  | "gitlab-token"
  | "slack-token"
  | "slack-webhook"
  | "generic-secret"
  | "file-too-large";

/** One thing the scan found. Holds no byte of the secret; safe to log, show and notify. */
export interface Finding {
  /** The file's path as passed to scanFile (posix, relative to the sandbox or tree root). */
  path: string;
  /** 1-based; 0 for findings about the whole file (file-too-large). */
  line: number;
  /** 1-based, in UTF-16 code units of the decoded line; absent for whole-file findings. */
  column?: number;
  rule: ScanRule;
  /** 16 hex characters of sha256(rule \0 path \0 secret): stable while the secret and path stay, and one-way. */
  fingerprint: string;
  message: string;
}

/** What scanFile needs. */
export interface ScanOptions {
  /** A file bigger than this gives one `file-too-large` finding and is not scanned further. */
  maxFileSizeBytes: number;
}

/** Git's rule (FIRST_FEW_BYTES in xdiff-interface.c): a NUL within the first 8000 bytes means binary. */
const BINARY_PROBE_BYTES = 8000;
/** Generic assignments: values shorter than this are not judged (too short to tell a secret from a word). */
const GENERIC_MIN_LENGTH = 16;
/**
 * Shannon entropy, in bits per character, from which a generic assignment's value counts as random.
 * English words and identifiers sit around 2.5-3.3; 16+ random alphanumerics sit at 3.8 and above.
 */
export const GENERIC_ENTROPY_THRESHOLD = 3.5;
/** A private key's body must start this close to its BEGIN line, or the line is only mentioned (docs, parsers). */
const PRIVATE_KEY_BODY_WINDOW = 400;

/** Token shapes (case-sensitive), one alternative per rule; group names map to rules below. */
const TOKENS = new RegExp(
  [
    String.raw`(?<pk>-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)`,
    String.raw`(?<akid>\b(?:AKIA|ASIA)[A-Z0-9]{16}\b)`,
    String.raw`(?<gh>\b(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,240})\b)`,
    String.raw`(?<gl>\bglpat-[A-Za-z0-9_.-]{20,})`,
    String.raw`(?<sxt>\bxox[baprs]-[0-9]{4,}-[A-Za-z0-9-]{8,})`,
    String.raw`(?<shook>https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/+-]{20,})`,
  ].join("|"),
  "g",
);
const TOKEN_RULES: Record<string, ScanRule> = {
  pk: "private-key",
  akid: "aws-access-key-id",
  gh: "github-token",
  gl: "gitlab-token",
  sxt: "slack-token",
  shook: "slack-webhook",
};

/**
 * `name = value` in .env, shell, YAML, JSON, TOML and code: a secret-like word in the key name, an
 * optional closing quote (JSON), a separator on the same line, and a quoted or bare value.
 */
const ASSIGNMENT = new RegExp(
  String.raw`(?:password|passwd|passphrase|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential)[A-Za-z0-9_.-]*["']?[ \t]*(?:=>|:=|=|:)[ \t]*` +
    String.raw`(?:"(?<dq>[^"\r\n]*)"|'(?<sq>[^'\r\n]*)'|(?<bare>[^\s"'\x60,;&)\]}]+))`,
  "gi",
);
const KEY_NAME_CHAR = /[A-Za-z0-9_.-]/;
const AWS_SECRET_KEY_NAME = /aws.?secret|secret.?access.?key/i;
const AWS_SECRET_VALUE = /^[A-Za-z0-9/+]{40}$/;
/** Values that stand for a secret kept elsewhere: ${VAR}, $VAR, {{ x }}, <your-token>, %(x)s, ... */
const PLACEHOLDER = /^\$|\$\{|\{\{|^<.*>$|^%\(|^\*+$|example|changeme|change_me|placeholder|your[_-]|xxxx|redacted|dummy|^(?:process\.env|os\.environ|env\.)/i;

/**
 * Scans one file's bytes. Returns the findings in the order they occur. A file over
 * `opts.maxFileSizeBytes` gives only `file-too-large`; a binary file (NUL in the first 8000 bytes)
 * is only size-checked. Never throws.
 */
export function scanFile(path: string, bytes: Uint8Array, opts: ScanOptions): Finding[] {
  const tooLarge = fileTooLarge(path, bytes.length, opts.maxFileSizeBytes);
  if (tooLarge) return [tooLarge];
  if (isBinary(bytes)) return [];
  const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString("utf8");
  return scanText(path, text);
}

/**
 * The `file-too-large` finding for a file of `size` bytes, or undefined when it fits. Lets a caller
 * check a file's size from stat before reading it.
 */
export function fileTooLarge(path: string, size: number, maxFileSizeBytes: number): Finding | undefined {
  if (size <= maxFileSizeBytes) return undefined;
  return {
    path,
    line: 0,
    rule: "file-too-large",
    fingerprint: fingerprintOf("file-too-large", path, ""),
    message: `${path} is ${formatBytes(size)}, over security.maxFileSize (${formatBytes(maxFileSizeBytes)}); it is not committed`,
  };
}

/** True when `bytes` holds a NUL within its first 8000 bytes, as git decides. */
export function isBinary(bytes: Uint8Array): boolean {
  return bytes.subarray(0, BINARY_PROBE_BYTES).includes(0);
}

/** Scans decoded text (see scanFile); exported for callers that already hold a string. */
export function scanText(path: string, text: string): Finding[] {
  const found: Array<{ index: number; rule: ScanRule; secret: string; message: string }> = [];
  const taken: Array<[number, number]> = [];

  for (const m of text.matchAll(TOKENS)) {
    const groups = m.groups!;
    const name = Object.keys(TOKEN_RULES).find((g) => groups[g] !== undefined)!;
    const rule = TOKEN_RULES[name]!;
    let secret = m[0];
    let end = m.index + m[0].length;
    if (rule === "private-key") {
      const body = privateKeyBody(text, end);
      if (body === undefined) continue;
      secret = body;
      end += body.length;
    } else if (isPlaceholderToken(rule, secret)) {
      continue;
    }
    found.push({ index: m.index, rule, secret, message: `found ${TOKEN_MESSAGES[rule]}` });
    taken.push([m.index, end]);
  }

  for (const m of text.matchAll(ASSIGNMENT)) {
    const g = m.groups!;
    const value = g.dq ?? g.sq ?? g.bare ?? "";
    const valueStart = m.index + m[0].length - value.length - (g.bare === undefined ? 1 : 0);
    if (taken.some(([a, b]) => valueStart < b && a < valueStart + value.length)) continue;
    const keyName = fullKeyName(text, m.index, m[0]);
    if (AWS_SECRET_KEY_NAME.test(keyName) && AWS_SECRET_VALUE.test(value) && !PLACEHOLDER.test(value)) {
      found.push({ index: valueStart, rule: "aws-secret-access-key", secret: value, message: `${keyName} is assigned what looks like an AWS secret access key` });
    } else if (looksRandom(value)) {
      found.push({ index: valueStart, rule: "generic-secret", secret: value, message: `${keyName} is assigned a high-entropy value that looks like a secret` });
    }
  }

  if (found.length === 0) return [];
  found.sort((a, b) => a.index - b.index);
  const lines = lineStarts(text);
  return found.map((f) => {
    const line = lineOf(lines, f.index);
    return { path, line, column: f.index - lines[line - 1]! + 1, rule: f.rule, fingerprint: fingerprintOf(f.rule, path, f.secret), message: `${f.message} (rule ${f.rule})` };
  });
}

/**
 * True when a generic assignment's value looks like a generated secret: at least 16 characters, no
 * whitespace, not a placeholder or URL or property path, both letters and digits, and Shannon
 * entropy of at least GENERIC_ENTROPY_THRESHOLD bits per character.
 */
export function looksRandom(value: string): boolean {
  if (value.length < GENERIC_MIN_LENGTH || /\s/.test(value)) return false;
  if (PLACEHOLDER.test(value) || value.includes("://")) return false;
  if (!/[0-9]/.test(value) || !/[A-Za-z]/.test(value)) return false;
  // A property path (config.v2.secretProvider), but not a JWT, whose dot-separated parts are long.
  if (/^[A-Za-z_$][\w$-]*(?:\.[A-Za-z_$][\w$-]*)+$/.test(value) && value.split(".").every((part) => part.length < 20)) return false;
  return shannonEntropy(value) >= GENERIC_ENTROPY_THRESHOLD;
}

/** Shannon entropy of `s` in bits per character (0 for ""). */
export function shannonEntropy(s: string): number {
  if (s.length === 0) return 0;
  const counts = new Map<string, number>();
  for (const ch of s) counts.set(ch, (counts.get(ch) ?? 0) + 1);
  let bits = 0;
  for (const n of counts.values()) {
    const p = n / s.length;
    bits -= p * Math.log2(p);
  }
  return bits;
}

/** The accepted findings of `security.allow`. */
export interface AllowList {
  /** True when `finding` is accepted: its fingerprint is listed, or (except file-too-large) its path matches a pattern. */
  allows(finding: Finding): boolean;
  /** The findings that are not accepted, in their order. */
  filter(findings: readonly Finding[]): Finding[];
}

/**
 * Builds the allow list of `security.allow`. An entry of exactly 16 hex characters is a finding's
 * fingerprint; anything else is a gitignore-style path pattern (write `/0123456789abcdef` for a file
 * with such a name). A path pattern accepts secret findings in matching files, not `file-too-large`:
 * size is not a false positive, so only that finding's fingerprint lets an oversized file through.
 */
export function makeAllowList(entries: readonly string[]): AllowList {
  const fingerprints = new Set<string>();
  const patterns: string[] = [];
  for (const raw of entries) {
    const e = raw.trim();
    if (/^[0-9a-f]{16}$/i.test(e)) fingerprints.add(e.toLowerCase());
    else if (e !== "") patterns.push(e);
  }
  const matcher = new PathRules(patterns);
  const pathAllowed = (path: string): boolean => {
    if (patterns.length === 0) return false;
    try {
      return matcher.matches(path.replace(/^\.\//, ""));
    } catch {
      return false; // `ignore` refuses absolute and ../ paths; such a path matches no pattern
    }
  };
  const allows = (f: Finding): boolean => fingerprints.has(f.fingerprint) || (f.rule !== "file-too-large" && pathAllowed(f.path));
  return { allows, filter: (findings) => findings.filter((f) => !allows(f)) };
}

/** 16 hex characters of sha256(rule \0 path \0 secret). */
export function fingerprintOf(rule: ScanRule, path: string, secret: string): string {
  return createHash("sha256").update(`${rule}\0${path}\0${secret}`).digest("hex").slice(0, 16);
}

const TOKEN_MESSAGES: Record<ScanRule, string> = {
  "private-key": "a private key block",
  "aws-access-key-id": "an AWS access key id",
  "aws-secret-access-key": "an AWS secret access key",
  "github-token": "a GitHub token",
  "gitlab-token": "a GitLab personal access token",
  "slack-token": "a Slack token",
  "slack-webhook": "a Slack incoming webhook URL",
  "generic-secret": "a high-entropy secret",
  "file-too-large": "a file over security.maxFileSize",
};

/**
 * The private key's body after its BEGIN line (up to the END line, or to the first base64 run), or
 * undefined when no key material follows within PRIVATE_KEY_BODY_WINDOW characters: a line that only
 * names the format (documentation, a parser's source) is not a key.
 */
function privateKeyBody(text: string, from: number): string | undefined {
  const window = text.slice(from, from + PRIVATE_KEY_BODY_WINDOW);
  const run = /[A-Za-z0-9+/]{40,}/.exec(window);
  if (!run) return undefined;
  const end = text.indexOf("-----END", from);
  // A real key is a few KiB; an END much further on belongs to something else.
  return end >= 0 && end - from <= 64 * 1024 ? text.slice(from, end) : window.slice(0, run.index + run[0].length);
}

/** Token-shaped text that is a documented example or a row of one character, not a credential. */
function isPlaceholderToken(rule: ScanRule, token: string): boolean {
  if (rule === "aws-access-key-id" && token.endsWith("EXAMPLE")) return true;
  const body = token.replace(/^(?:gh[pousr]_|github_pat_|glpat-|xox[baprs]-|https:\/\/hooks\.slack\.com\/\w+\/)/, "");
  return /x{8}|X{8}|0{8}|\*{4}/.test(body);
}

/** The whole key name around the secret-like word that matched (`DB_PASSWORD`, `aws_secret_access_key`). */
function fullKeyName(text: string, wordStart: number, match: string): string {
  let start = wordStart;
  while (start > 0 && start > wordStart - 64 && KEY_NAME_CHAR.test(text[start - 1]!)) start--;
  const rest = /^[A-Za-z0-9_.-]*/.exec(match)![0];
  return text.slice(start, wordStart) + rest;
}

function lineStarts(text: string): number[] {
  const starts = [0];
  for (let i = text.indexOf("\n"); i >= 0; i = text.indexOf("\n", i + 1)) starts.push(i + 1);
  return starts;
}

/** The 1-based line holding `index`, by binary search over line starts. */
function lineOf(starts: number[], index: number): number {
  let lo = 0;
  let hi = starts.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (starts[mid]! <= index) lo = mid;
    else hi = mid - 1;
  }
  return lo + 1;
}

function formatBytes(n: number): string {
  if (n >= 1024 * 1024 * 1024) return `${(n / 1024 ** 3).toFixed(1)} GB`;
  if (n >= 1024 * 1024) return `${(n / 1024 ** 2).toFixed(1)} MB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${n} B`;
}
