/**
 * What may go into git for a file of the sandbox, and how a blob from git comes back out: the one
 * place where `security.encrypt`, the encryption key, the secret scan and `security.maxFileSize`
 * meet. Every path that writes a blob from the sandbox (the batch commit, `init`) and every path that
 * writes a blob out of git (merging remote commits into the sandbox, releases, gate exports) goes
 * through a BlobPolicy, so there is no second way for a plaintext secret to leave or for ciphertext
 * to land in a working folder.
 */
import { PathRules } from "../path-rules.js";
import type { CascadeError } from "../errors.js";
import { stalled } from "../errors.js";
import { decryptBlob, encryptBlob, isEncryptedBlob, type EncryptionKey } from "./encrypt.js";
import { fileTooLarge, makeAllowList, scanFile, type AllowList, type Finding } from "./scan.js";
import { sandboxKey, type KeyEnv } from "./keyfile.js";
import { dirname } from "node:path";

/** The security settings a policy follows (from the config in force). */
export interface BlobPolicySettings {
  encrypt: readonly string[];
  maxFileSizeBytes: number;
  allow: readonly string[];
}

/** Why a file stays out of git for now. */
export type HeldBack =
  | { why: "no-key"; path: string; message: string }
  | { why: "ciphertext"; path: string; message: string }
  | { why: "findings"; path: string; findings: Finding[]; message: string };

/** A file's content as it goes into git, or why it is held back. */
export type ToGit = { ok: true; blob: Buffer; encrypted: boolean } | { ok: false; held: HeldBack };

export class BlobPolicy {
  private readonly encrypted: PathRules;
  private readonly allowList: AllowList;

  /** `key` undefined: files matching `encrypt` are held back (there is no plaintext fallback). */
  constructor(
    private readonly settings: BlobPolicySettings,
    private readonly key: EncryptionKey | undefined,
  ) {
    this.encrypted = new PathRules(settings.encrypt);
    this.allowList = makeAllowList(settings.allow);
  }

  /** A policy that stores every file as it is (for tests and tools that never see secrets). */
  static plain(): BlobPolicy {
    return new BlobPolicy({ encrypt: [], maxFileSizeBytes: Number.MAX_SAFE_INTEGER, allow: [] }, undefined);
  }

  /** True when `path` is stored encrypted (it matches security.encrypt). */
  isEncrypted(path: string): boolean {
    return this.settings.encrypt.length > 0 && this.encrypted.matches(path);
  }

  /** True when `path` must be stored encrypted and there is no key: it is held back, never committed. */
  holdsBack(path: string): boolean {
    return !this.key && this.isEncrypted(path);
  }

  /** What the policy depends on, to tell whether a reload changed it (then the whole sandbox is looked at again). */
  get identity(): string {
    return JSON.stringify([this.settings.encrypt, this.settings.maxFileSizeBytes, this.settings.allow, this.key?.fingerprint ?? null]);
  }

  /** The bytes a regular file of `content` at `path` is hashed as when observing: what toGit stores (encrypted when it is stored encrypted). */
  blobContent(path: string, content: Buffer): Buffer {
    return this.isEncrypted(path) && this.key ? encryptBlob(this.key, content) : content;
  }

  /** True when a file of `size` bytes at `path` is held back for its size alone (checked before reading it). */
  tooLarge(path: string, size: number): HeldBack | undefined {
    if (this.isEncrypted(path)) return undefined;
    const f = fileTooLarge(path, size, this.settings.maxFileSizeBytes);
    return f && !this.allowList.allows(f) ? { why: "findings", path, findings: [f], message: f.message } : undefined;
  }

  /**
   * The blob to store for the regular file `path` holding `content`: encrypted when the path matches
   * security.encrypt (held back without a key), else the content itself once the secret scan finds
   * nothing that security.allow does not accept.
   */
  toGit(path: string, content: Buffer): ToGit {
    if (this.isEncrypted(path)) {
      if (!this.key) {
        return { ok: false, held: { why: "no-key", path, message: `${path} matches security.encrypt and there is no encryption key; it is never committed in plaintext` } };
      }
      if (isEncryptedBlob(content)) {
        // Ciphertext in the working file (a native `git checkout` or `git stash` wrote the blob out): never encrypt it twice.
        return { ok: false, held: { why: "ciphertext", path, message: `${path} holds cascade-sync ciphertext, not its plaintext (written by a native git command?); it is not committed. Put the plaintext back (e.g. from a release or another sandbox)` } };
      }
      return { ok: true, blob: encryptBlob(this.key, content), encrypted: true };
    }
    const findings = this.allowList.filter(scanFile(path, content, { maxFileSizeBytes: this.settings.maxFileSizeBytes }));
    if (findings.length) {
      const first = findings[0]!;
      return { ok: false, held: { why: "findings", path, findings, message: `${path}${first.line ? `:${first.line}` : ""}: ${first.message}` } };
    }
    return { ok: true, blob: content, encrypted: false };
  }

  /**
   * The content to write out of git for the blob of `path`: decrypted when it is an encrypted blob.
   * Throws the Stalled error of a blob that cannot be decrypted (tampered, unknown version, no key or
   * a different key): nothing is written for it, ever.
   */
  fromGit(path: string, blob: Buffer): Buffer {
    if (!isEncryptedBlob(blob)) return blob;
    if (!this.key) throw noKey(path);
    const r = decryptBlob(this.key, blob, path);
    if (!r.ok) throw r.error;
    return r.plaintext;
  }
}

function noKey(path: string): CascadeError {
  return stalled("EncryptionKeyMissing", `${path} is stored encrypted and there is no encryption key to decrypt it`, "set security.key (or run `cascade-sync init` on the machine that has the key file and copy it here)");
}

/** The policy for a config, with the key it found (or why there is none). */
export interface LoadedPolicy {
  policy: BlobPolicy;
  /** Why encrypted paths are held back: no key set, or a key that cannot be used. */
  keyProblem?: CascadeError;
  /** Sentences to log (e.g. a key file readable by others). */
  warnings: string[];
}

/**
 * Builds the policy of the config in force: its security settings and the sandbox's key
 * (`security.key`, else the key file `init` made). Without a usable key the policy holds encrypted
 * paths back; it never falls back to plaintext.
 */
export async function loadBlobPolicy(config: { dir: string; file: string; security: BlobPolicySettings & { key?: string } }, env: KeyEnv): Promise<LoadedPolicy> {
  const loaded = config.security.encrypt.length ? await sandboxKey({ dir: config.dir, configDir: dirname(config.file), security: config.security }, env) : undefined;
  const key = loaded?.ok ? loaded.key : undefined;
  return {
    policy: new BlobPolicy(config.security, key),
    ...(loaded && !loaded.ok ? { keyProblem: loaded.error } : {}),
    warnings: loaded?.ok ? loaded.warnings : [],
  };
}
