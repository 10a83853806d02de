/**
 * Deciding which approval entries count. Pure: the caller reads the state files, the signers and the
 * commit graph; this module only judges. Every entry that does not count gets exactly one reason, so
 * that `status` and `plan` can say what to fix.
 */
import { createHash } from "node:crypto";
import type { Approval } from "../generated/state.js";
import { nearest } from "../text.js";
import {
  allowedSignerAccepts,
  APPROVAL_NAMESPACE,
  approvalMessage,
  fingerprint,
  isAllowedSignerContent,
  matchPatternList,
  parseAllowedSigner,
  verifySshsig,
  type AllowedSigner,
} from "./sshsig.js";
import { parseExpires, uncommittedOnly, type ParsedEntry } from "./state.js";

/** Why an entry does not count; a stable code for status, history and tests. */
export type RejectReason =
  | "bad-signature"
  | "unknown-signer"
  | "expired"
  | "wrong-commit"
  | "wrong-environment"
  | "not-committed"
  | "duplicate-signer"
  | "malformed";

/** An entry that counts (or, in `used`, counted for a commit the environment already has). */
export interface ValidApproval {
  environment: string;
  commit: string;
  signer: string;
  /** As written in the entry (and signed). */
  expires: string;
  /** `expires` in ms since the epoch: when this approval stops counting (for requeueing). Always set by evaluateApprovals. */
  expiresAt?: number;
  /** The signing key's `SHA256:...` fingerprint, as `ssh-keygen -l` prints it. */
  fingerprint: string;
  /** sha256 hex of the entry's signature text, identifies this entry */
  id: string;
  line: number;
}

/** An entry that does not count, with its reason code and a sentence saying what to do. */
export interface RejectedApproval {
  environment?: string;
  commit?: string;
  signer?: string;
  line: number;
  /** The file the entry was read from (the working copy's for not-committed entries). Always set by evaluateApprovals. */
  file?: string;
  reason: RejectReason;
  message: string;
  /** The signing key's fingerprint, when the signature could be read. */
  fingerprint?: string;
}

/** A line of `approvals.signers` that cannot be used, and why; the other lines still work. */
export interface SignerProblem {
  /** 0-based index in the signers list. */
  index: number;
  message: string;
}

/** The verdict on every entry for one environment. */
export interface ApprovalEvaluation {
  valid: ValidApproval[];
  rejected: RejectedApproval[];
  /** entries for commits the environment already has (used earlier), neither valid nor rejected */
  used: ValidApproval[];
  /** Unusable signers lines (a config problem; such a line approves nothing). Always set by evaluateApprovals. */
  signerProblems?: SignerProblem[];
}

/** The inputs of evaluateApprovals. */
export interface EvaluateInput {
  environment: string;
  /** Every environment with `promotion: approval`. */
  approvalEnvironments: string[];
  /** allowed_signers lines as in the config committed on the environment's branch */
  signers: string[];
  /** from the state file as committed on the sandbox branch */
  committed: ParsedEntry[];
  /** from the state file in the working folder (uncommitted extras are rejected as not-committed) */
  working: ParsedEntry[];
  classifyCommit: (commit: string) => "eligible" | "promoted" | "unknown";
  /** ms since epoch */
  now: number;
}

/**
 * Pure. Evaluates every entry for `environment` (entries naming other approval environments are ignored;
 * entries naming an environment not in `approvalEnvironments` are rejected as wrong-environment).
 * `classifyCommit(c)` says whether commit c is "eligible" (reachable from the from-branch and not yet in
 * the environment), "promoted" (already in the environment: counts as used, not rejected), or "unknown"
 * (rejected as wrong-commit: not on the from-branch). Duplicate-signer: among otherwise-valid entries for
 * the same commit, only the first per signer identity counts; a copy of an entry (the same signature
 * and signer, byte-identical or re-indented) is rejected as duplicate-signer with a message naming the
 * original.
 *
 * A signer identity is both the principal and the key: the same principal twice, or the same key under
 * two principals, counts once. Entries whose environment cannot be attributed to another approval
 * environment (malformed, or naming no approval environment) are reported by every environment's
 * evaluation; a caller merging several evaluations can tell them apart by `file` and `line`.
 * Checks run in this order and the first failure is the reason: malformed, wrong-environment,
 * bad-signature, unknown-signer, wrong-commit, expired, not-committed, duplicate-signer. Entries for
 * promoted commits skip the expiry check (they counted when they were used). Never throws.
 */
export function evaluateApprovals(input: EvaluateInput): ApprovalEvaluation {
  const { signers, problems: signerProblems } = parseSigners(input.signers);
  const ctx: JudgeContext = { ...input, trusted: signers };
  const others = new Set(input.approvalEnvironments.filter((e) => e !== input.environment));
  const mine = (e: ParsedEntry) => {
    const env = e.ok ? e.approval.environment : e.fields.environment;
    return env === undefined || !others.has(env);
  };
  const out: ApprovalEvaluation = { valid: [], rejected: [], used: [], signerProblems };
  const counted = new Map<string, ValidApproval[]>();
  for (const entry of input.committed.filter(mine)) {
    const verdict = judge(entry, ctx);
    if ("reason" in verdict) {
      out.rejected.push(verdict);
      continue;
    }
    const earlier = counted.get(verdict.approval.commit) ?? [];
    const dup = duplicateOf(verdict.approval, earlier);
    if (dup) {
      out.rejected.push(duplicateRejection(entry, verdict.approval, dup));
      continue;
    }
    counted.set(verdict.approval.commit, [...earlier, verdict.approval]);
    (verdict.used ? out.used : out.valid).push(verdict.approval);
  }
  for (const entry of uncommittedOnly(input.working, input.committed).filter(mine)) {
    const verdict = judge(entry, ctx);
    out.rejected.push("reason" in verdict ? verdict : notCommitted(entry, verdict.approval));
  }
  return out;
}

/**
 * Valid approvals per commit (distinct signers), for deciding promotion. Returns a map from commit to
 * its approvals in entry order; an approval whose principal or key already appears for that commit is
 * left out, so the list length is the number of distinct signers even for a concatenated input.
 */
export function approvalsByCommit(valid: ValidApproval[]): Map<string, ValidApproval[]> {
  const byCommit = new Map<string, ValidApproval[]>();
  for (const a of valid) {
    const list = byCommit.get(a.commit) ?? [];
    if (!duplicateOf(a, list)) list.push(a);
    byCommit.set(a.commit, list);
  }
  return byCommit;
}

/**
 * Parses `approvals.signers` (allowed_signers lines). Returns the usable lines and, for each unusable
 * one, its index and what is wrong; blank and `#` comment lines are skipped silently. Never throws.
 */
export function parseSigners(lines: string[]): { signers: AllowedSigner[]; problems: SignerProblem[] } {
  const signers: AllowedSigner[] = [];
  const problems: SignerProblem[] = [];
  lines.forEach((line, index) => {
    if (!isAllowedSignerContent(line)) return;
    const parsed = parseAllowedSigner(line);
    if ("error" in parsed) problems.push({ index, message: `signers[${index}]: ${parsed.error}` });
    else signers.push(parsed);
  });
  return { signers, problems };
}

/**
 * The sha256 hex that identifies an entry: of its signature text with surrounding whitespace trimmed
 * and CRLF line ends made LF, so that re-indenting or re-chomping the YAML block keeps the identity.
 */
export function approvalId(signature: string): string {
  return createHash("sha256").update(signature.replace(/\r\n/g, "\n").trim()).digest("hex");
}

// ---------------------------------------------------------------------------------------------

interface JudgeContext extends EvaluateInput {
  trusted: AllowedSigner[];
}

/** An entry that passed every check but duplicates and commit status; `used` for a promoted commit. */
type Judged = { approval: ValidApproval; used: boolean };

/** Runs the checks of one entry in order; the first failure is the verdict. */
function judge(entry: ParsedEntry, ctx: JudgeContext): Judged | RejectedApproval {
  if (!entry.ok) return reject(entry, "malformed", malformedMessage(entry));
  const a = entry.approval;
  if (a.environment !== ctx.environment && !ctx.approvalEnvironments.includes(a.environment)) {
    return reject(entry, "wrong-environment", wrongEnvironmentMessage(a.environment, ctx));
  }
  const checked = verifySshsig(approvalMessage(a), a.signature, APPROVAL_NAMESPACE);
  if (!checked.ok) return reject(entry, "bad-signature", `the signature is not valid for this entry: ${checked.reason}`);
  const fp = fingerprint(checked.publicKey.blob);
  const trust = trustProblem(a.signer, checked.publicKey.blob, ctx);
  if (trust) return reject(entry, "unknown-signer", trust, fp);
  const commitClass = ctx.classifyCommit(a.commit);
  if (commitClass === "unknown") {
    return reject(entry, "wrong-commit", `commit ${a.commit} is not on the branch ${ctx.environment} is promoted from (a typo, or a commit that was never pushed there); approve a commit of that branch`, fp);
  }
  const expiresAt = parseExpires(a.expires)!; // a well-formed entry has a valid date (state.ts checks)
  const approval: ValidApproval = { environment: a.environment, commit: a.commit, signer: a.signer, expires: a.expires, expiresAt, fingerprint: fp, id: approvalId(a.signature), line: entry.line };
  if (commitClass === "promoted") return { approval, used: true };
  if (ctx.now > expiresAt) {
    return reject(entry, "expired", `the approval expired at ${a.expires}; sign a new one: cascade-sync approve ${a.environment} ${a.commit} --key FILE`, fp);
  }
  return { approval, used: false };
}

/**
 * Why no signers line lets `blob` sign as `principal`, or undefined when one does. Says whether the
 * principal is listed with other keys or the key under other principals, so a person can tell a typo
 * from a stranger.
 */
function trustProblem(principal: string, blob: Buffer, ctx: JudgeContext): string | undefined {
  const req = { principal, keyBlob: blob, namespace: APPROVAL_NAMESPACE, now: ctx.now };
  const refusals: string[] = [];
  for (const s of ctx.trusted) {
    const verdict = allowedSignerAccepts(s, req);
    if (verdict === true) return undefined;
    if (matchPatternList(principal, s.principal)) refusals.push(verdict);
  }
  const fp = fingerprint(blob);
  const keyOwners = ctx.trusted.filter((s) => s.keyBlob.equals(blob)).map((s) => s.principal);
  const why: string[] = [];
  if (refusals.length) why.push(`${principal} is in approvals.signers, but not with this signature's key ${fp} (${refusals.join("; ")})`);
  if (keyOwners.length) why.push(`the key ${fp} is listed in approvals.signers for ${keyOwners.join(", ")}, not for ${principal}; set signer to the listed principal`);
  if (why.length) return why.join("; ");
  return `no line of approvals.signers (as committed on ${ctx.environment}'s branch) lists ${principal} with the key ${fp}`;
}

/** The first counted approval for the same commit that is a copy of `a`, else one with the same principal or the same key. */
function duplicateOf(a: ValidApproval, earlier: ValidApproval[]): ValidApproval | undefined {
  return earlier.find((e) => isCopy(e, a)) ?? earlier.find((e) => e.signer === a.signer || e.fingerprint === a.fingerprint);
}

/**
 * Whether two counted entries are the same entry: the same signature and signer. A valid signature
 * fixes environment, commit and expires; the signer is not signed (and ed25519 signatures are
 * deterministic), so the same signature under another principal is another entry.
 */
function isCopy(a: ValidApproval, b: ValidApproval): boolean {
  return a.id === b.id && a.signer === b.signer;
}

function duplicateRejection(entry: ParsedEntry, a: ValidApproval, first: ValidApproval): RejectedApproval {
  if (isCopy(first, a)) {
    // The same entry twice (as a merge or a paste leaves it): it counts once.
    return reject(entry, "duplicate-signer", `the entry is a copy of the one at line ${first.line} (the same signature); it counts once: remove the copy`, a.fingerprint);
  }
  const same = first.signer === a.signer ? `${a.signer} already approved` : `the key ${a.fingerprint} already approved (as ${first.signer})`;
  return reject(entry, "duplicate-signer", `${same} commit ${a.commit} at line ${first.line}; each signer counts once`, a.fingerprint);
}

function notCommitted(entry: ParsedEntry, a: ValidApproval): RejectedApproval {
  return reject(
    entry,
    "not-committed",
    `the entry is only in the working copy of the state file; it counts once cascade-sync-state.yaml is committed on the sandbox branch`,
    a.fingerprint,
  );
}

function malformedMessage(entry: Extract<ParsedEntry, { ok: false }>): string {
  return entry.problems.map((p) => `${p.line}:${p.col}: ${p.message}`).join("; ");
}

function wrongEnvironmentMessage(env: string, ctx: JudgeContext): string {
  const approvers = [...new Set([ctx.environment, ...ctx.approvalEnvironments])];
  const guess = nearest(env, approvers);
  return `the entry is for environment "${env}", which does not take approvals (environments with promotion: approval: ${approvers.join(", ")})${guess ? `; did you mean ${guess}?` : ""}`;
}

function reject(entry: ParsedEntry, reason: RejectReason, message: string, fp?: string): RejectedApproval {
  const f: Partial<Approval> = entry.ok ? entry.approval : entry.fields;
  return {
    ...(f.environment !== undefined ? { environment: f.environment } : {}),
    ...(f.commit !== undefined ? { commit: f.commit } : {}),
    ...(f.signer !== undefined ? { signer: f.signer } : {}),
    line: entry.line,
    file: entry.file,
    reason,
    message,
    ...(fp ? { fingerprint: fp } : {}),
  };
}
