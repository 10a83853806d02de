/**
 * What the `cascade-sync` git filter does to one file: clean (working file -> blob) and smudge
 * (blob -> working file) for the paths under `security.encrypt`. Pure functions of the key and the
 * bytes, shared by the filter process git runs, textconv, and the controller's own comparisons, so
 * that git and cascade-sync always agree on which blob a file gives.
 */
import { stalled, type CascadeError } from "../errors.js";
import { decryptBlob, encryptBlob, isEncryptedBlob, type EncryptionKey } from "./encrypt.js";

/** What clean made of a working file: the blob to store, or why nothing may be stored (never plaintext). */
export type CleanResult = { ok: true; blob: Buffer } | { ok: false; error: CascadeError };

/** What smudge made of a blob: the bytes to write, and the problem when they are the blob itself (not decryptable here). */
export interface SmudgeResult {
  content: Buffer;
  problem?: CascadeError;
}

/** The hint every "no key / another key" message carries: how a person installs the team's key. */
export const TEAM_KEY_HINT =
  "install the team's key: on a machine that has it run `cascade-sync key export`, then here `cascade-sync key import` (paste it), or set security.key to ${CASCADE_ENCRYPTION_KEY}";

/**
 * Clean: the blob git stores for `content`, the working file of an encrypted path. Deterministic
 * (the same key and plaintext give the same blob, so `git status` stays clean). Content that already
 * is an encrypted blob (a file smudge could not decrypt, or written by hand from a blob) is stored as
 * it is, never encrypted twice. Without a key, plaintext is refused (Stalled `EncryptionKeyMissing`):
 * git then fails the command rather than store it.
 */
export function cleanContent(key: EncryptionKey | undefined, path: string, content: Buffer): CleanResult {
  if (isEncryptedBlob(content)) return { ok: true, blob: content };
  if (!key) {
    return { ok: false, error: stalled("EncryptionKeyMissing", `${path} matches security.encrypt and this sandbox has no encryption key, so it is not stored (never in plaintext)`, TEAM_KEY_HINT) };
  }
  return { ok: true, blob: encryptBlob(key, content) };
}

/**
 * Smudge: the bytes to write for the blob of an encrypted path. A blob that is not encrypted (committed
 * before the path was encrypted) comes out as it is. An encrypted blob this key cannot decrypt (no key,
 * another person's key, tampered) also comes out as it is, ciphertext, with the problem: a native
 * checkout must not fail half-way, clean gives the same blob back, and nothing plaintext is ever made up.
 */
export function smudgeContent(key: EncryptionKey | undefined, path: string, blob: Buffer): SmudgeResult {
  const problem = undecryptable(key, path, blob);
  if (problem) return { content: blob, problem };
  if (!isEncryptedBlob(blob)) return { content: blob };
  const r = decryptBlob(key!, blob, path);
  return r.ok ? { content: r.plaintext } : { content: blob, problem: r.error };
}

/**
 * Why the blob of an encrypted path cannot be written out decrypted here, or undefined when it can
 * (decrypts with `key`, or is not encrypted at all). Reasons: `EncryptionKeyMissing`,
 * `EncryptedWithAnotherKey` (authenticates with no key of ours: another person's key, or altered),
 * `EncryptedBlobUnknownVersion`.
 */
export function undecryptable(key: EncryptionKey | undefined, path: string, blob: Buffer): CascadeError | undefined {
  if (!isEncryptedBlob(blob)) return undefined;
  if (!key) return stalled("EncryptionKeyMissing", `${path} is stored encrypted and this sandbox has no encryption key`, TEAM_KEY_HINT);
  const r = decryptBlob(key, blob, path);
  if (r.ok) return undefined;
  if (r.reason === "EncryptedBlobTampered") {
    return stalled("EncryptedWithAnotherKey", `${path} does not decrypt with this sandbox's key (${key.fingerprint}): it was encrypted with another key (or altered)`, TEAM_KEY_HINT);
  }
  return r.error;
}
