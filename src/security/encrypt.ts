/**
 * Deterministic authenticated encryption for files stored in git (`security.encrypt`).
 *
 * AES-256-GCM with a synthetic IV: the nonce is an HMAC of the plaintext, so the same key and the same
 * plaintext always give byte-identical blobs, and an unchanged secret never makes a new commit. The
 * price, accepted by design, is that equal plaintexts are visibly equal; nothing else leaks. A nonce
 * repeats only for equal plaintexts (or by a 96-bit HMAC collision), which is GCM's one hard rule.
 *
 * Blob layout, version 1 (all lengths in bytes):
 *   magic "CASCADE-SYNC-ENC" (16) | version 0x01 (1) | nonce (12) | ciphertext (= plaintext length) | GCM tag (16)
 * The 17-byte header is GCM's additional authenticated data.
 */
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, timingSafeEqual } from "node:crypto";
import { inspect } from "node:util";
import { stalled, type CascadeError } from "../errors.js";

/** The first bytes of every encrypted blob. */
export const ENCRYPTED_MAGIC: Buffer = Buffer.from("CASCADE-SYNC-ENC", "ascii");
/** The blob format version this build writes (and the only one it reads). */
export const ENCRYPTED_FORMAT_VERSION = 1;
/** Length of a master key and of each derived subkey. */
export const KEY_BYTES = 32;

const HEADER_BYTES = ENCRYPTED_MAGIC.length + 1;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
/** The smallest possible blob: an encrypted empty file. */
const MIN_BLOB_BYTES = HEADER_BYTES + NONCE_BYTES + TAG_BYTES;
const HEADER_V1 = Buffer.concat([ENCRYPTED_MAGIC, Buffer.from([ENCRYPTED_FORMAT_VERSION])]);

/** The subkeys of each loaded key, kept out of the object so that nothing outside this module reaches them. */
const SUBKEYS = new WeakMap<EncryptionKey, { enc: Buffer; nonce: Buffer }>();

/**
 * A loaded encryption key: a handle on the two subkeys derived from the 32-byte master key, and a
 * fingerprint that names the key in status and logs. The master key itself is not kept, and printing
 * the object (console.log, JSON.stringify, util.inspect) shows only the fingerprint.
 */
export class EncryptionKey {
  /** 16 hex characters naming this key; derived one-way, safe to show. */
  readonly fingerprint: string;

  private constructor(master: Uint8Array) {
    SUBKEYS.set(this, { enc: derive(master, "cascade-sync v1 aes-256-gcm key"), nonce: derive(master, "cascade-sync v1 synthetic-iv key") });
    this.fingerprint = derive(master, "cascade-sync v1 key fingerprint").toString("hex").slice(0, 16);
  }

  /** Derives the subkeys of a 32-byte master key. Throws a Stalled `EncryptionKeyInvalid` for any other length. */
  static fromBytes(master: Uint8Array): EncryptionKey {
    if (master.length !== KEY_BYTES) {
      throw stalled("EncryptionKeyInvalid", `an encryption key must be ${KEY_BYTES} bytes, got ${master.length}`, keyHint());
    }
    return new EncryptionKey(master);
  }

  toJSON(): string {
    return `EncryptionKey(${this.fingerprint})`;
  }

  [inspect.custom](): string {
    return this.toJSON();
  }
}

/** How a key is passed to encryptBlob/decryptBlob: loaded, or the 32 raw bytes. */
export type KeyInput = EncryptionKey | Uint8Array;

/** The reason codes of a blob that cannot be decrypted. */
export type DecryptFailureReason = "NotEncrypted" | "EncryptedBlobUnknownVersion" | "EncryptedBlobTampered";

/** The result of decryptBlob: the whole plaintext, or a Stalled error whose reason says why not (never partial plaintext). */
export type DecryptResult = { ok: true; plaintext: Buffer } | { ok: false; reason: DecryptFailureReason; error: CascadeError };

/** True when `bytes` starts with the encrypted-blob magic (of any version). Says nothing about validity. */
export function isEncryptedBlob(bytes: Uint8Array): boolean {
  return bytes.length >= HEADER_BYTES && Buffer.from(bytes.buffer, bytes.byteOffset, ENCRYPTED_MAGIC.length).equals(ENCRYPTED_MAGIC);
}

/**
 * Encrypts `plaintext` into a version-1 blob. Deterministic: the same key and plaintext always give
 * the same bytes, whatever the file's path. Throws `EncryptionKeyInvalid` only for a raw key that is
 * not 32 bytes.
 */
export function encryptBlob(key: KeyInput, plaintext: Uint8Array): Buffer {
  const k = asKey(key);
  const nonce = syntheticNonce(k, plaintext);
  const cipher = createCipheriv("aes-256-gcm", subkeys(k).enc, nonce, { authTagLength: TAG_BYTES });
  cipher.setAAD(HEADER_V1);
  const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return Buffer.concat([HEADER_V1, nonce, body, cipher.getAuthTag()]);
}

/**
 * Decrypts a blob written by encryptBlob. Returns `{ ok: false }` with reason `NotEncrypted` (no magic
 * header), `EncryptedBlobUnknownVersion` (a format this build cannot read), or `EncryptedBlobTampered`
 * (truncated, altered, or made with another key: GCM's tag and the synthetic nonce are both checked).
 * `label` (usually the file's path) names the blob in the error message. Never throws for bad input.
 */
export function decryptBlob(key: KeyInput, blob: Uint8Array, label = "the blob"): DecryptResult {
  const k = asKey(key);
  const buf = Buffer.from(blob.buffer, blob.byteOffset, blob.length);
  if (!isEncryptedBlob(buf)) {
    return fail("NotEncrypted", `${label} is not an encrypted cascade-sync blob`, "the file matches security.encrypt but was committed in plaintext; re-save it so that cascade-sync encrypts it");
  }
  const version = buf[ENCRYPTED_MAGIC.length]!;
  if (version !== ENCRYPTED_FORMAT_VERSION) {
    return fail("EncryptedBlobUnknownVersion", `${label} is encrypted in format version ${version}; this cascade-sync reads version ${ENCRYPTED_FORMAT_VERSION}`, "upgrade cascade-sync on this machine");
  }
  const tampered = () =>
    fail(
      "EncryptedBlobTampered",
      `${label} does not decrypt: it was altered, truncated, or encrypted with another key (this key is ${k.fingerprint})`,
      "check that security.key is the key the other machines use; if it is, restore the file from a known-good commit",
    );
  if (buf.length < MIN_BLOB_BYTES) return tampered();
  const nonce = buf.subarray(HEADER_BYTES, HEADER_BYTES + NONCE_BYTES);
  const body = buf.subarray(HEADER_BYTES + NONCE_BYTES, buf.length - TAG_BYTES);
  const tag = buf.subarray(buf.length - TAG_BYTES);
  let plaintext: Buffer;
  try {
    const decipher = createDecipheriv("aes-256-gcm", subkeys(k).enc, nonce, { authTagLength: TAG_BYTES });
    decipher.setAAD(buf.subarray(0, HEADER_BYTES));
    decipher.setAuthTag(tag);
    // Nothing is returned before final() has checked the tag, so no unauthenticated byte ever escapes.
    plaintext = Buffer.concat([decipher.update(body), decipher.final()]);
  } catch {
    return tampered();
  }
  // A valid tag with a nonce that is not the plaintext's HMAC was not made by encryptBlob.
  if (!timingSafeEqual(syntheticNonce(k, plaintext), nonce)) return tampered();
  return { ok: true, plaintext };
}

function syntheticNonce(key: EncryptionKey, plaintext: Uint8Array): Buffer {
  return createHmac("sha256", subkeys(key).nonce).update(plaintext).digest().subarray(0, NONCE_BYTES);
}

function derive(master: Uint8Array, info: string): Buffer {
  // The master key is already uniformly random, so HKDF's salt adds nothing; the info string separates the subkeys.
  return Buffer.from(hkdfSync("sha256", master, Buffer.alloc(0), info, KEY_BYTES));
}

function subkeys(key: EncryptionKey): { enc: Buffer; nonce: Buffer } {
  return SUBKEYS.get(key)!;
}

function asKey(key: KeyInput): EncryptionKey {
  return key instanceof EncryptionKey ? key : EncryptionKey.fromBytes(key);
}

function fail(reason: DecryptFailureReason, message: string, hint: string): DecryptResult {
  return { ok: false, reason, error: stalled(reason, message, hint) };
}

/** The hint shown with every key-format problem. */
export function keyHint(): string {
  return "security.key must be 32 random bytes in base64 (make one with `openssl rand -base64 32`), or the path of a file holding that";
}
