/**
 * A signed freeze ("stop the line", issue 16): `freezes:` entries of `cascade-sync-state.yaml`, signed
 * like approvals but with their own message and namespace, by a key of the environment's
 * `approvals.signers` as committed on the environment's own branch. While an unexpired freeze is
 * committed and no later lift is, nothing is promoted into the environment (rollback still works).
 * Reading (parseFreezes), judging (evaluateFreezes, pure), observing for a reconciler (observeFreeze),
 * the planner's decision (frozenDecision) and signing (signFreeze) live here, so that the environment
 * reconciler only calls in.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { isMap, isScalar, isSeq, type Node } from "yaml";
import type { Freeze } from "../generated/state.js";
import type { ConfigProblem, Config, EnvironmentSpec } from "../config/types.js";
import { CONFIG_FILE } from "../config/load.js";
import { InternalError, stalled } from "../errors.js";
import { appendListItem, appendToStateFile, signedEntryNode, signedEntryYaml } from "./state-append.js";
import type { Repo } from "../git/repo.js";
import { parseSigners } from "./evaluate.js";
import { allowedSignerAccepts, fingerprint, matchPatternList, signSshsig, verifySshsig } from "./sshsig.js";
import { ENVIRONMENT_PATTERN, isEmptyNode, MAX_SIGNATURE_BYTES, MAX_SIGNER_CHARS, parseExpires, parseStateDocument, STATE_FILE } from "./state.js";
import { formatExpires, loadKeyForSigning } from "./approve.js";

/** The namespace freezes and lifts are signed in (`ssh-keygen -Y sign -n cascade-sync-freeze`): an approval's signature never passes for one. */
export const FREEZE_NAMESPACE = "cascade-sync-freeze";
/** The first line of every freeze message; the version lets a later format coexist. */
export const FREEZE_MESSAGE_HEADER = "cascade-sync freeze v1";
/** A reason is one line of at most this many characters. */
export const MAX_REASON_CHARS = 500;
/** An entry signed further than this in the future is refused: its `at` would outrank every real lift or freeze. */
export const MAX_CLOCK_SKEW_MS = 10 * 60_000;

const KEYS = ["environment", "action", "reason", "at", "expires", "signer", "signature"] as const;
type Key = (typeof KEYS)[number];

/**
 * The exact bytes a freeze or lift signs: six lines, each ending in "\n". `reason`, `at` and `expires`
 * are used exactly as written (`reason:` with nothing after it when there is none, `expires: none`).
 */
export function freezeMessage(f: Pick<Freeze, "environment" | "action" | "reason" | "at" | "expires">): string {
  return `${FREEZE_MESSAGE_HEADER}\nenvironment: ${f.environment}\naction: ${f.action}\nreason: ${f.reason ?? ""}\nat: ${f.at}\nexpires: ${f.expires ?? "none"}\n`;
}

/** One `freezes:` entry as read: well-formed (`ok`) or with every problem; `line` is where its `-` is. */
export type ParsedFreeze = { line: number; file: string } & ({ ok: true; freeze: Freeze } | { ok: false; fields: Partial<Freeze>; problems: string[] });

/**
 * Reads the `freezes:` list of state file text. Returns its entries (a malformed one never hides the
 * others) and problems with the list as a whole; text that is not valid YAML yields no entries (the
 * approvals reader reports the file's own problems). Never throws.
 */
export function parseFreezes(text: string, file: string): { entries: ParsedFreeze[]; problems: ConfigProblem[] } {
  const parsed = parseStateDocument(text, file);
  if (!parsed.ok) return { entries: [], problems: parsed.problems };
  const root = parsed.doc.contents;
  if (!isMap(root)) return { entries: [], problems: [] };
  const pairs = root.items.filter((p) => isScalar(p.key) && p.key.value === "freezes");
  const list = pairs[0]?.value as Node | null | undefined;
  // A repeated key is reported by the approvals reader; which list is meant is anybody's guess, so none counts.
  if (pairs.length !== 1 || !isSeq(list) || isEmptyNode(list)) return { entries: [], problems: [] };
  return {
    entries: list.items.map((item) => {
      const line = parsed.pos((item as Node | null)?.range?.[0]).line;
      return { line, file, ...readFreeze(item as Node | null) };
    }),
    problems: [],
  };
}

function readFreeze(item: Node | null): { ok: true; freeze: Freeze } | { ok: false; fields: Partial<Freeze>; problems: string[] } {
  const fields: Partial<Record<Key, string>> = {};
  const problems: string[] = [];
  if (!isMap(item)) return { ok: false, fields: {}, problems: ["the entry is not a mapping of environment, action, reason, at, expires, signer and signature"] };
  for (const pair of item.items) {
    const key = isScalar(pair.key) ? String(pair.key.value) : "";
    if (!(KEYS as readonly string[]).includes(key)) {
      problems.push(`unknown key ${JSON.stringify(key.slice(0, 60))} (a freeze has ${KEYS.join(", ")})`);
      continue;
    }
    if (key in fields) {
      problems.push(`"${key}" appears more than once in the entry`);
      continue;
    }
    const v = pair.value as Node | null;
    if (!isScalar(v) || typeof v.value !== "string") {
      problems.push(`${key} must be a string`);
      continue;
    }
    const problem = fieldProblem(key as Key, v.value);
    if (problem) problems.push(problem);
    else fields[key as Key] = v.value;
  }
  for (const k of ["environment", "action", "at", "signer", "signature"] as const) if (!(k in fields) && !problems.some((p) => p.startsWith(k))) problems.push(`missing required key "${k}"`);
  if (fields.action === "freeze" && !fields.reason?.trim()) problems.push("a freeze needs a reason");
  const typed = fields as Partial<Freeze>;
  if (problems.length) return { ok: false, fields: typed, problems };
  return { ok: true, freeze: typed as Freeze };
}

function fieldProblem(key: Key, value: string): string | undefined {
  switch (key) {
    case "environment":
      return ENVIRONMENT_PATTERN.test(value) && value.length <= 100 ? undefined : `environment ${JSON.stringify(value.slice(0, 60))} is not an environment name`;
    case "action":
      return value === "freeze" || value === "lift" ? undefined : `action must be freeze or lift, not ${JSON.stringify(value.slice(0, 60))}`;
    case "reason":
      if (value.length > MAX_REASON_CHARS) return `reason is ${value.length} characters long; at most ${MAX_REASON_CHARS}`;
      return /[\u0000-\u001f\u007f]/.test(value) ? "reason must be one line without control characters" : undefined;
    case "at":
    case "expires":
      return parseExpires(value) !== undefined ? undefined : `${key} ${JSON.stringify(value.slice(0, 60))} is not an RFC 3339 date-time such as 2026-11-25T18:00:00Z`;
    case "signer":
      return value.trim() && value.length <= MAX_SIGNER_CHARS && !/[\u0000-\u001f\u007f]/.test(value) ? undefined : "signer must be one line of at most 256 characters";
    case "signature":
      return Buffer.byteLength(value) <= MAX_SIGNATURE_BYTES && /^\s*-----BEGIN SSH SIGNATURE-----\s[\s\S]*-----END SSH SIGNATURE-----\s*$/.test(value) ? undefined : "signature is not an armored SSH signature";
  }
}

/** Why a freeze or lift entry does not count; a stable code like an approval's. */
export type FreezeRejectReason = "malformed" | "bad-signature" | "unknown-signer" | "from-the-future" | "not-committed";

/** A freeze in force: who froze the environment, why, since when and until when (absent: until lifted). */
export interface ActiveFreeze {
  signer: string;
  reason: string;
  at: string;
  expires?: string;
  fingerprint: string;
  line: number;
}

/** An entry that does not count, with its reason code and a sentence saying what to do. */
export interface RejectedFreeze {
  line: number;
  file: string;
  action?: string;
  signer?: string;
  reason: FreezeRejectReason;
  message: string;
}

/** What status, plan and the page show about an environment's freezes. */
export interface FreezeReport {
  /** Freezes in force, newest first; promotion into the environment waits while there is one. */
  active: ActiveFreeze[];
  /** The newest valid lift, when one ended a freeze. */
  lifted?: { signer: string; at: string };
  /** Entries for this environment that do not count, with why. */
  rejected: RejectedFreeze[];
  /** Where the signers were read from (the config committed on the environment's branch). */
  signersFrom: string;
}

/** The inputs of evaluateFreezes. */
export interface FreezeInput {
  environment: string;
  /** allowed_signers lines of the environment's approvals.signers, as committed on its branch. */
  signers: string[];
  signersFrom: string;
  /** From the state file as committed on the sandbox branch. */
  committed: ParsedFreeze[];
  /** From the working copy's state file (entries only there are reported as not-committed). */
  working: ParsedFreeze[];
  /** ms since the epoch. */
  now: number;
}

/**
 * Pure. Judges every freeze and lift for `environment` (entries for other environments are ignored):
 * checks run in the order malformed, bad-signature, unknown-signer, from-the-future, and the first
 * failure is the reason. A freeze is in force when it counts, has not expired, and no counting lift
 * is later than it (a later `at`, or the same second and later in the file). Committed entries only; a working-copy-only entry is reported as
 * not-committed. Never throws.
 */
export function evaluateFreezes(input: FreezeInput): FreezeReport {
  const { signers } = parseSigners(input.signers);
  const rejected: RejectedFreeze[] = [];
  const freezes: (ActiveFreeze & { atMs: number; expiresMs?: number })[] = [];
  const lifts: { signer: string; at: string; atMs: number; line: number }[] = [];
  const mine = (e: ParsedFreeze) => (e.ok ? e.freeze.environment : e.fields.environment) === input.environment || (!e.ok && e.fields.environment === undefined);
  const judge = (e: ParsedFreeze): { freeze: Freeze; fingerprint: string } | RejectedFreeze => {
    const f: Partial<Freeze> = e.ok ? e.freeze : e.fields;
    const reject = (reason: FreezeRejectReason, message: string): RejectedFreeze => ({ line: e.line, file: e.file, ...(f.action ? { action: f.action } : {}), ...(f.signer ? { signer: f.signer } : {}), reason, message });
    if (!e.ok) return reject("malformed", e.problems.join("; "));
    const checked = verifySshsig(freezeMessage(e.freeze), e.freeze.signature, FREEZE_NAMESPACE);
    if (!checked.ok) return reject("bad-signature", `the signature is not valid for this entry: ${checked.reason}`);
    const fp = fingerprint(checked.publicKey.blob);
    const req = { principal: e.freeze.signer, keyBlob: checked.publicKey.blob, namespace: FREEZE_NAMESPACE, now: input.now };
    const refusals = signers.filter((s) => matchPatternList(e.freeze.signer, s.principal)).map((s) => allowedSignerAccepts(s, req)).filter((v) => v !== true);
    if (!signers.some((s) => allowedSignerAccepts(s, req) === true)) {
      const why = !signers.length ? `${input.environment} has no approvals.signers in ${input.signersFrom}: nobody can freeze it`
        : refusals.length ? `${e.freeze.signer} is in approvals.signers, but not with the key ${fp} (${refusals.join("; ")})`
          : `no line of approvals.signers (${input.signersFrom}) lists ${e.freeze.signer} with the key ${fp}`;
      return reject("unknown-signer", why);
    }
    if (parseExpires(e.freeze.at)! > input.now + MAX_CLOCK_SKEW_MS) return reject("from-the-future", `the entry is signed for ${e.freeze.at}, in the future; sign it again with a correct clock`);
    return { freeze: e.freeze, fingerprint: fp };
  };
  const committedIds = new Set(input.committed.map(identity));
  for (const e of input.committed.filter(mine)) {
    const v = judge(e);
    if ("reason" in v) {
      rejected.push(v);
      continue;
    }
    const f = v.freeze;
    const atMs = parseExpires(f.at)!;
    if (f.action === "lift") lifts.push({ signer: f.signer, at: f.at, atMs, line: e.line });
    else freezes.push({ signer: f.signer, reason: f.reason ?? "", at: f.at, ...(f.expires ? { expires: f.expires, expiresMs: parseExpires(f.expires)! } : {}), fingerprint: v.fingerprint, line: e.line, atMs });
  }
  for (const e of input.working.filter(mine).filter((w) => !committedIds.has(identity(w)))) {
    const v = judge(e);
    rejected.push("reason" in v ? v : { line: e.line, file: e.file, action: v.freeze.action, signer: v.freeze.signer, reason: "not-committed", message: `the ${v.freeze.action} is only in the working copy of ${STATE_FILE}; it counts once the file is committed on the sandbox branch (the controller commits it with its next batch)` });
  }
  // Times are to the second: of a lift and a freeze signed in the same second, the one written later
  // in the file (the commands append) is the later one.
  const byTime = (a: { atMs: number; line: number }, b: { atMs: number; line: number }) => a.atMs - b.atMs || a.line - b.line;
  const lastLift = lifts.sort((a, b) => byTime(b, a))[0];
  const lifted = (f: { atMs: number; line: number }) => !!lastLift && byTime(lastLift, f) > 0;
  const active = freezes
    .filter((f) => (f.expiresMs === undefined || input.now < f.expiresMs) && !lifted(f))
    .sort((a, b) => b.atMs - a.atMs)
    .map(({ atMs: _a, expiresMs: _e, ...f }) => f);
  const liftedSomething = lastLift && freezes.some(lifted);
  return { active, ...(liftedSomething ? { lifted: { signer: lastLift.signer, at: lastLift.at } } : {}), rejected, signersFrom: input.signersFrom };
}

function identity(e: ParsedFreeze): string {
  const f: Partial<Freeze> = e.ok ? e.freeze : e.fields;
  return JSON.stringify([e.ok, ...KEYS.map((k) => (k === "signature" ? f.signature?.trim() : f[k]))]);
}

/**
 * Reads the freezes that can count for `env`: entries committed on the sandbox branch (and the
 * working copy's extras, reported as not committed), judged against `env.approvals.signers`, which
 * the caller read from the config committed on the environment's own branch (issue 12), so that a
 * sandbox edit of the signers can neither freeze nor unfreeze.
 */
export async function observeFreeze(ctx: { repo: Repo; clock: { now(): number } }, desired: Config, env: EnvironmentSpec): Promise<FreezeReport> {
  const stateFile = join(desired.dir, STATE_FILE);
  const sandboxHead = await ctx.repo.branchHead(desired.sandbox.branch);
  const committedText = sandboxHead ? await ctx.repo.fileAt(sandboxHead, STATE_FILE) : null;
  const workingText = await readFile(stateFile, "utf8").catch(() => null);
  return evaluateFreezes({
    environment: env.name,
    signers: env.approvals.signers,
    signersFrom: `${CONFIG_FILE} on branch ${env.branch}`,
    committed: committedText ? parseFreezes(committedText.toString("utf8"), stateFile).entries : [],
    working: workingText !== null ? parseFreezes(workingText, stateFile).entries : [],
    now: ctx.clock.now(),
  });
}

/**
 * Pure. What the environment planner does about a freeze: nothing when none is in force; otherwise
 * promotion waits (reason `Frozen`), with a sentence naming who, why and until when, the command that
 * lifts it, and when to look again (at the expiry, at the latest after `fallbackMs`).
 */
export function frozenDecision(report: FreezeReport | undefined, envName: string, now: number, fallbackMs: number): { reason: "Frozen"; next: string; hint: string; requeueAfterMs: number } | undefined {
  const f = report?.active[0];
  if (!f) return undefined;
  const expiresMs = f.expires ? parseExpires(f.expires)! : undefined;
  const others = report!.active.length - 1;
  return {
    reason: "Frozen",
    next: `frozen: nothing is promoted into ${envName} ${f.expires ? `until ${f.expires}` : "until lifted"} (frozen by ${f.signer} at ${f.at}: ${f.reason})${others ? `; ${others} more freeze(s) in force` : ""}; rollback still works`,
    hint: `cascade-sync unfreeze ${envName} --key FILE`,
    requeueAfterMs: expiresMs === undefined ? fallbackMs : Math.max(0, Math.min(fallbackMs, expiresMs - now + 1)),
  };
}

/** What signFreeze signs, with which key, and where it writes. */
export interface FreezeOptions {
  sandboxDir: string;
  environment: string;
  action: "freeze" | "lift";
  reason?: string;
  /** A freeze ends by itself this long after `now`; absent: until lifted. */
  expiresInMs?: number;
  keyFile: string;
  signer?: string;
  /** ms since the epoch. */
  now: number;
}

/**
 * Signs a freeze or a lift with the key file and appends it to the state file's `freezes:` list (under
 * the file's lock, every other entry and comment kept). Returns the entry as YAML and a sentence for
 * people. Throws a Stalled CascadeError: BadReason (a freeze without a reason, or more than one line),
 * BadExpiry, and the key errors of approve (KeyUnreadable, KeyEncrypted, KeyUnsupported, SignerRequired,
 * BadSigner), StateFileInvalid when the state file cannot take the entry.
 */
export async function signFreeze(opts: FreezeOptions): Promise<{ entry: Freeze; entryText: string; stateFile: string; message: string }> {
  const reason = opts.reason?.trim() ?? "";
  if (opts.action === "freeze" && !reason) throw stalled("BadReason", "a freeze needs a reason", "pass --reason \"what happened\"");
  if (fieldProblem("reason", reason)) throw stalled("BadReason", fieldProblem("reason", reason)!, "pass --reason with one line of text");
  if (opts.expiresInMs !== undefined && !(opts.expiresInMs >= 1000)) throw stalled("BadExpiry", "a freeze must last at least 1 second", "use --expires with a duration such as 4h");
  const at = formatExpires(Math.floor(opts.now / 1000) * 1000);
  const fields = {
    environment: opts.environment, action: opts.action, ...(reason ? { reason } : {}), at,
    ...(opts.expiresInMs !== undefined ? { expires: formatExpires(Math.floor((opts.now + opts.expiresInMs) / 1000) * 1000) } : {}),
  };
  const key = await loadKeyForSigning(opts.keyFile, opts.signer, `ssh-keygen -Y sign -n ${FREEZE_NAMESPACE} -f ${opts.keyFile} MESSAGE, where MESSAGE holds exactly:\n${freezeMessage(fields)}`);
  const message = freezeMessage(fields);
  const signature = signSshsig(message, key.privateKey, FREEZE_NAMESPACE);
  if (!verifySshsig(message, signature, FREEZE_NAMESPACE).ok) throw new InternalError(`a fresh ${key.privateKey.type} signature does not verify`);
  const entry: Freeze = { ...fields, signer: key.signer, signature };
  const stateFile = join(opts.sandboxDir, STATE_FILE);
  await appendToStateFile(stateFile, (existing) => appendFreeze(existing, entry, stateFile));
  const what = opts.action === "freeze" ? `froze ${opts.environment} ${entry.expires ? `until ${entry.expires}` : "until lifted"}: ${reason}` : `lifted the freezes of ${opts.environment} signed before ${at}`;
  return { entry, entryText: signedEntryYaml(entry, KEYS), stateFile, message: `${what} (signed by ${key.signer}, key ${fingerprint(key.privateKey.publicBlob)}); it counts once ${STATE_FILE} is committed` };
}

/** The state text with `entry` appended to `freezes` (created when missing); throws StateFileInvalid when it cannot be. */
function appendFreeze(existing: string, entry: Freeze, stateFile: string): string {
  const parsed = parseStateDocument(existing, stateFile);
  const invalid = (what: string) => stalled("StateFileInvalid", `${stateFile}: ${what}; the file was not changed`, `fix ${STATE_FILE} (or restore it with git checkout -- ${STATE_FILE}), then sign again`);
  if (!parsed.ok) throw invalid(parsed.problems.map((p) => `${p.line}:${p.col}: ${p.message}`).join("; "));
  const before = parseFreezes(existing, stateFile).entries.length;
  appendListItem(parsed, { key: "freezes", item: (doc) => signedEntryNode(doc, entry, KEYS), invalid, notMapping: "the file is not a mapping" });
  const text = parsed.doc.toString({ lineWidth: 0 });
  const after = parseFreezes(text, stateFile).entries;
  const last = after[after.length - 1];
  if (after.length !== before + 1 || !last?.ok || last.freeze.signature !== entry.signature) throw new InternalError(`appending to ${stateFile} would not read back as the new freeze entry`);
  return text;
}
