/**
 * `cascade-sync approve`: sign an approval with a local private key and append it to the sandbox's
 * state file. Signing happens in-process (sshsig.ts), so no ssh-keygen is needed; a passphrase-protected
 * key is never unlocked here: the error says how to sign it with `ssh-keygen -Y sign` instead.
 */
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import type { Approval } from "../generated/state.js";
import { CascadeError, InternalError, stalled } from "../errors.js";
import { appendListItem, appendToStateFile, signedEntryNode, signedEntryYaml } from "./state-append.js";
import {
  APPROVAL_NAMESPACE,
  approvalMessage,
  fingerprint,
  parsePrivateKey,
  publicKeyLine,
  signSshsig,
  verifySshsig,
  type SshPublicKey,
} from "./sshsig.js";
import { COMMIT_PATTERN, ENVIRONMENT_PATTERN, parseStateDocument, parseStateFile, STATE_FILE } from "./state.js";

/** What approveCommit signs, with which key, and where it writes. */
export interface ApproveOptions {
  /** The sandbox folder; the state file is `<sandboxDir>/cascade-sync-state.yaml`. */
  sandboxDir: string;
  environment: string;
  /** 40 lowercase hex digits. */
  commit: string;
  /** The private key file; a relative path is resolved against the process's working directory. */
  keyFile: string;
  /** How long the approval counts, from `now`; whole seconds are kept (rounded down). */
  expiresInMs: number;
  /** ms since the epoch. */
  now: number;
  /** principal; default: the key's comment, else an error asking for --signer */
  signer?: string;
}

/** What approveCommit wrote. */
export interface ApproveResult {
  /** The new entry as YAML (a one-item list, ready to paste under `approvals:`): what the CLI prints. */
  entryText: string;
  /** Absolute or sandbox-relative path of the state file, as `join(sandboxDir, STATE_FILE)`. */
  stateFile: string;
  /** One sentence for people: what was approved, by whom, until when. */
  message: string;
  /** The entry as written. */
  entry: Approval;
  /** The signing key's `SHA256:...` fingerprint. */
  fingerprint: string;
}

/** Key files bigger than this are not keys (an RSA 16384 OpenSSH key is about 13 KiB). */
const MAX_KEY_FILE_BYTES = 64 * 1024;
const ENTRY_KEYS = ["environment", "commit", "expires", "signer", "signature"] as const;

/**
 * Signs and appends; returns the entry as YAML text (what the CLI prints) and the state file path.
 * Creates the state file when it is missing; otherwise keeps its content and comments and appends the
 * entry to `approvals`, under the state file's `.lock` (git's lock-file protocol, so a concurrent
 * writer cannot lose it). Throws a Stalled CascadeError with reason:
 * - "BadCommit" / "BadEnvironment" / "BadExpiry" / "BadSigner": an argument has the wrong shape;
 * - "KeyUnreadable": the key file cannot be read or is not a private key;
 * - "KeyEncrypted": a passphrase protects the key; the hint holds the exact `ssh-keygen -Y sign` steps;
 * - "KeyUnsupported": a key type cascade-sync cannot sign with;
 * - "SignerRequired": no --signer and the key has no comment to take the principal from;
 * - "StateFileInvalid": the existing state file is not valid YAML or not shaped like one (it is never
 *   overwritten then).
 * A held lock throws the Transient LockBusyError; a signature that does not verify is an InternalError.
 */
export async function approveCommit(opts: ApproveOptions): Promise<ApproveResult> {
  checkArguments(opts);
  const expires = formatExpires(Math.floor((opts.now + opts.expiresInMs) / 1000) * 1000);
  const fields = { environment: opts.environment, commit: opts.commit, expires };
  const key = await loadSigningKey(opts, fields);
  const message = approvalMessage(fields);
  const signature = signSshsig(message, key.privateKey);
  // Checked before anything is written: a signature we cannot verify would be rejected forever.
  if (!verifySshsig(message, signature).ok) throw new InternalError(`a fresh ${key.privateKey.type} signature does not verify`);
  const entry: Approval = { ...fields, signer: key.signer, signature };
  const stateFile = join(opts.sandboxDir, STATE_FILE);
  await appendToStateFile(stateFile, (existing) => appendToStateText(existing, entry, stateFile));
  const fp = fingerprint(key.privateKey.publicBlob);
  return {
    entryText: signedEntryYaml(entry, ENTRY_KEYS),
    stateFile,
    message: `approved ${opts.commit} for ${opts.environment} as ${key.signer} (key ${fp}), valid until ${expires}; it counts once ${STATE_FILE} is committed`,
    entry,
    fingerprint: fp,
  };
}

/**
 * An RFC 3339 UTC time without milliseconds, as written in `expires` (`2026-11-25T18:00:00Z`):
 * milliseconds are dropped (rounded down). Throws a RangeError for a time outside Date's range.
 */
export function formatExpires(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
}

/**
 * What to do with a passphrase-protected key: the message file to write, the ssh-keygen command, and
 * the entry to add. Returned as text for an error hint; `signer` is a placeholder when unknown.
 */
export function sshKeygenSteps(fields: { environment: string; commit: string; expires: string }, keyFile: string, signer: string | undefined): string {
  const message = approvalMessage(fields);
  const messageFile = `approval-${fields.environment}-${fields.commit.slice(0, 12)}.txt`;
  const indent = (text: string, by: string) => text.split("\n").filter((l) => l !== "").map((l) => by + l).join("\n");
  return [
    `sign with ssh-keygen instead (it asks for the passphrase):`,
    `1. write the message file ${messageFile}: exactly these 4 lines, each ending in a newline:`,
    indent(message, "     "),
    `   for example: printf '${message.replace(/\n/g, "\\n")}' > ${messageFile}`,
    `2. ssh-keygen -Y sign -n ${APPROVAL_NAMESPACE} -f ${shellQuote(keyFile)} ${messageFile}`,
    `   (it writes the signature to ${messageFile}.sig)`,
    `3. append this entry under approvals: in ${STATE_FILE}, with the lines of ${messageFile}.sig as the signature:`,
    indent(
      [
        `- environment: ${fields.environment}`,
        `  commit: ${fields.commit}`,
        `  expires: ${fields.expires}`,
        `  signer: ${signer ?? "<your principal, as in approvals.signers>"}`,
        `  signature: |`,
        `    -----BEGIN SSH SIGNATURE-----`,
        `    ...`,
        `    -----END SSH SIGNATURE-----`,
      ].join("\n"),
      "     ",
    ),
    `4. commit ${STATE_FILE} (the controller commits sandbox edits with its next batch)`,
  ].join("\n");
}

// ---------------------------------------------------------------------------------------------

function checkArguments(opts: ApproveOptions): void {
  if (!COMMIT_PATTERN.test(opts.commit)) {
    throw stalled("BadCommit", `"${opts.commit}" is not a full commit hash (40 lowercase hex digits)`, "pass the full hash, e.g. from `git rev-parse <commit>`");
  }
  if (!ENVIRONMENT_PATTERN.test(opts.environment)) {
    throw stalled("BadEnvironment", `"${opts.environment}" is not an environment name (lowercase letters, digits and dashes, starting with a letter)`);
  }
  const until = opts.now + opts.expiresInMs;
  if (!Number.isFinite(opts.now) || !Number.isFinite(opts.expiresInMs) || opts.expiresInMs < 1000 || Math.abs(until) > 8.64e15) {
    throw stalled("BadExpiry", `an approval must stay valid for at least 1 second (got ${opts.expiresInMs} ms)`, "use --expires with a duration such as 24h");
  }
  if (opts.signer !== undefined) checkSigner(opts.signer, "--signer");
}

/** Principals end up in YAML and in allowed_signers matching: one line, no control characters. */
function checkSigner(signer: string, source: string): void {
  if (signer.trim() === "" || signer !== signer.trim() || /[\u0000-\u001f\u007f]/.test(signer)) {
    throw stalled("BadSigner", `${source} ${JSON.stringify(signer)} is not a principal (one line, no surrounding spaces)`, "pass --signer PRINCIPAL, the name in front of your key in approvals.signers");
  }
}

/** A private key ready to sign with, and the principal it signs as. */
export interface SigningKey {
  privateKey: Extract<ReturnType<typeof parsePrivateKey>, { ok: true }>["key"];
  signer: string;
}

/** Reads, parses and names the key; every failure is a CascadeError saying what to do. */
async function loadSigningKey(opts: ApproveOptions, fields: { environment: string; commit: string; expires: string }): Promise<SigningKey> {
  return loadKeyForSigning(opts.keyFile, opts.signer, (signer) => sshKeygenSteps(fields, opts.keyFile, signer));
}

/**
 * Reads, parses and names a signing key (the principal is `signer`, else the key's comment or its
 * .pub file's). Throws the Stalled errors of approveCommit: KeyUnreadable, KeyEncrypted (the hint is
 * `steps(signer)`, how to sign with ssh-keygen instead), KeyUnsupported, SignerRequired, BadSigner.
 * Also used by freeze and unfreeze.
 */
export async function loadKeyForSigning(keyFile: string, signerArg: string | undefined, steps: string | ((signer: string | undefined) => string)): Promise<SigningKey> {
  const opts = { keyFile, signer: signerArg };
  if (signerArg !== undefined) checkSigner(signerArg, "--signer");
  const text = await readKeyFile(opts.keyFile);
  const parsed = parsePrivateKey(text);
  if (!parsed.ok) {
    if (parsed.code === "encrypted") {
      const signer = opts.signer ?? (parsed.publicKey ? await pubFileComment(opts.keyFile, parsed.publicKey) : undefined);
      throw stalled(
        "KeyEncrypted",
        `${opts.keyFile}: ${parsed.message}; cascade-sync never asks for passphrases`,
        typeof steps === "string" ? steps : steps(signer),
      );
    }
    if (parsed.code === "unsupported") {
      throw stalled("KeyUnsupported", `${opts.keyFile}: ${parsed.message}`, "use an ed25519 key: ssh-keygen -t ed25519 -C you@example.com, and list its .pub line in approvals.signers");
    }
    throw stalled("KeyUnreadable", `${opts.keyFile}: ${parsed.message}`, "pass a private key file with --key (e.g. ~/.ssh/id_ed25519, not the .pub)");
  }
  const key = parsed.key;
  const signer = opts.signer ?? (key.comment.trim() || (await pubFileComment(opts.keyFile, { type: key.type, blob: key.publicBlob })));
  if (!signer) {
    throw stalled(
      "SignerRequired",
      `${opts.keyFile} has no comment to take the signer from`,
      `pass --signer PRINCIPAL, the name in front of this key in approvals.signers, e.g. a line "you@example.com ${publicKeyLine({ type: key.type, blob: key.publicBlob })}"`,
    );
  }
  checkSigner(signer, opts.signer !== undefined ? "--signer" : "the key's comment");
  return { privateKey: key, signer };
}

async function readKeyFile(file: string): Promise<string> {
  try {
    const st = await stat(file);
    // A FIFO or /dev/zero would block or never end; a real key file is small.
    if (!st.isFile()) throw stalled("KeyUnreadable", `${file} is not a regular file`, "pass a private key file with --key");
    if (st.size > MAX_KEY_FILE_BYTES) throw stalled("KeyUnreadable", `${file} is ${st.size} bytes, too big for a private key`, "pass a private key file with --key");
    return await readFile(file, "utf8");
  } catch (err) {
    if (err instanceof CascadeError) throw err;
    throw stalled("KeyUnreadable", `cannot read the key file ${file}: ${(err as Error).message}`, "pass a private key file with --key (e.g. ~/.ssh/id_ed25519)", err);
  }
}

/** The comment of `<keyFile>.pub` when that file holds the same key (ssh-keygen writes the comment there too). */
async function pubFileComment(keyFile: string, key: SshPublicKey): Promise<string | undefined> {
  const text = await readFile(`${keyFile}.pub`, "utf8").catch(() => "");
  const m = /^(\S+)\s+([A-Za-z0-9+/]+={0,2})\s+(.+)$/.exec(text.trim());
  if (!m || m[1] !== key.type || !Buffer.from(m[2]!, "base64").equals(key.blob)) return undefined;
  return m[3]!.trim() || undefined;
}

/**
 * The state file text with `entry` appended to `approvals` (created when missing), every other node
 * and comment kept. Throws StateFileInvalid when `existing` is not a valid state file to append to.
 */
function appendToStateText(existing: string, entry: Approval, stateFile: string): string {
  const parsed = parseStateDocument(existing, stateFile);
  if (!parsed.ok) {
    const where = parsed.problems.map((p) => `${p.file}:${p.line}:${p.col}: ${p.message}`).join("; ");
    throw stalled("StateFileInvalid", `${where}; the file was not changed`, `fix ${STATE_FILE} (or restore it with git checkout -- ${STATE_FILE}), then approve again`);
  }
  const invalid = (what: string) =>
    stalled("StateFileInvalid", `${stateFile}: ${what}; the file was not changed`, `fix ${STATE_FILE} by hand (it should look like "approvals:" followed by "- environment: ..." entries), then approve again`);
  const before = parseStateFile(existing, stateFile);
  if (before.problems.some((p) => p.path === "approvals")) throw invalid(before.problems.find((p) => p.path === "approvals")!.message);
  const { inKeyColumn } = appendListItem(parsed, { key: "approvals", item: (doc) => signedEntryNode(doc, entry, ENTRY_KEYS), invalid, notMapping: "the file is not a mapping with an approvals: list" });
  const text = parsed.doc.toString({ lineWidth: 0, indentSeq: !inKeyColumn });
  checkAppended(text, entry, before.entries.length, stateFile);
  return text;
}

/** Re-reads what is about to be written: the new entry must come back exactly, and nothing may be lost. */
function checkAppended(text: string, entry: Approval, entriesBefore: number, stateFile: string): void {
  const after = parseStateFile(text, stateFile);
  const last = after.entries[after.entries.length - 1];
  const same = last?.ok && ENTRY_KEYS.every((k) => last.approval[k] === entry[k]);
  if (!same || after.entries.length !== entriesBefore + 1) {
    throw new InternalError(`appending to ${stateFile} would not read back as ${entriesBefore + 1} entries ending in the new one`);
  }
}

function shellQuote(s: string): string {
  return /^[A-Za-z0-9@%+=:,./_~-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}
