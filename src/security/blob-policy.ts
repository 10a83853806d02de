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
import { decryptBlob, isEncryptedBlob, type EncryptionKey } from "./encrypt.js";
import { cleanContent, smudgeContent, undecryptable } from "./filter-content.js";
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
  /** The branch holds this encrypted path in a form this key cannot decrypt (another person's key): never committed over. */
  | { why: "other-key"; path: string; message: string; hint: string }
  /** git staged an encrypted path without the cascade-sync filter (its attributes do not name it): never committed. */
  | { why: "unfiltered"; path: string; message: string }
  | { why: "findings"; path: string; findings: Finding[]; message: string };

/** A file's content as it goes into git, or why it is held back. */
export type ToGit = { ok: true; blob: Buffer; encrypted: boolean } | { ok: false; held: HeldBack };

export class BlobPolicy {
  private readonly encrypted: PathRules;
  private readonly allowList: AllowList;

  /**
   * `key` undefined: files matching `encrypt` are held back (there is no plaintext fallback).
   * `keyFile`: the absolute path the key was read from, when it came from a file (the git filter is
   * told where it is, so that git's filter process finds the very key the controller uses).
   */
  constructor(
    private readonly settings: BlobPolicySettings,
    private readonly key: EncryptionKey | undefined,
    readonly keyFile?: string,
  ) {
    this.encrypted = new PathRules(settings.encrypt);
    this.allowList = makeAllowList(settings.allow);
  }

  /** A policy that stores every file as it is (for tests and tools that never see secrets). */
  static plain(): BlobPolicy {
    return new BlobPolicy({ encrypt: [], maxFileSizeBytes: Number.MAX_SAFE_INTEGER, allow: [] }, undefined);
  }

  /** True when security.encrypt names any pattern (otherwise no path is ever encrypted). */
  get encryptsAnything(): boolean {
    return this.settings.encrypt.length > 0;
  }

  /** security.encrypt as this policy has it. */
  get encryptPatterns(): readonly string[] {
    return this.settings.encrypt;
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

  /** The key encrypted paths are stored with, or undefined (they are held back). */
  get encryptionKey(): EncryptionKey | undefined {
    return this.key;
  }

  /**
   * The bytes a regular file of `content` at `path` is hashed as when observing: what git's clean
   * filter stores (encrypted when it is stored encrypted; ciphertext as it is).
   */
  blobContent(path: string, content: Buffer): Buffer {
    if (!this.isEncrypted(path) || !this.key) return content;
    const r = cleanContent(this.key, path, content);
    return r.ok ? r.blob : content;
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
      // What git's clean filter stores: encrypted, or a file that already holds ciphertext as it is.
      const r = cleanContent(this.key, path, content);
      return r.ok ? { ok: true, blob: r.blob, encrypted: true } : { ok: false, held: { why: "no-key", path, message: r.error.message } };
    }
    const findings = this.allowList.filter(scanFile(path, content, { maxFileSizeBytes: this.settings.maxFileSizeBytes }));
    if (findings.length) {
      const first = findings[0]!;
      return { ok: false, held: { why: "findings", path, findings, message: `${path}${first.line ? `:${first.line}` : ""}: ${first.message}` } };
    }
    return { ok: true, blob: content, encrypted: false };
  }

  /**
   * Judges the exact blob git staged for the regular file `path`: undefined to commit it, or why it
   * stays out. An encrypted path's blob must be ciphertext (git ran the cascade-sync filter); any
   * other blob goes through the secret scan and the size rule.
   */
  judgeStaged(path: string, blob: Buffer): HeldBack | undefined {
    if (this.isEncrypted(path)) {
      if (isEncryptedBlob(blob)) return undefined;
      return { why: "unfiltered", path, message: `${path} matches security.encrypt but git staged it without the cascade-sync filter; it is not committed (run \`cascade-sync init\` to register the filter)` };
    }
    const r = this.toGit(path, blob);
    return r.ok ? undefined : r.held;
  }

  /**
   * Why the blob of `path` cannot be written out here, or undefined when it can: an encrypted blob
   * with no key, another person's key (`EncryptedWithAnotherKey`), or an unknown format version.
   */
  undecryptable(path: string, blob: Buffer): CascadeError | undefined {
    return undecryptable(this.key, path, blob);
  }

  /**
   * What git's smudge filter writes for the blob of the regular file `path` into a working folder
   * that has nothing there yet (a checkout): decrypted, or the ciphertext itself when this key cannot
   * decrypt it (as a native checkout writes it; clean gives the same blob back). Never throws.
   */
  toWorkTree(path: string, blob: Buffer): Buffer {
    return this.isEncrypted(path) || isEncryptedBlob(blob) ? smudgeContent(this.key, path, blob).content : blob;
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
    policy: new BlobPolicy(config.security, key, loaded?.ok && loaded.source === "file" ? loaded.path : undefined),
    ...(loaded && !loaded.ok ? { keyProblem: loaded.error } : {}),
    warnings: loaded?.ok ? loaded.warnings : [],
  };
}
