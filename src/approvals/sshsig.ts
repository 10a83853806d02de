/**
 * OpenSSH SSHSIG signatures (PROTOCOL.sshsig), the format of `ssh-keygen -Y sign`, made and checked
 * with node:crypto alone so that no ssh-keygen is needed at run time. Also the allowed_signers line
 * format (ssh-keygen(1), ALLOWED SIGNERS) and unencrypted private keys (OpenSSH and PEM).
 *
 * Supported keys: ssh-ed25519, ecdsa-sha2-nistp256/384/521 and ssh-rsa (signing as rsa-sha2-512,
 * verifying rsa-sha2-256 and rsa-sha2-512; the SHA-1 "ssh-rsa" signature is refused, as ssh-keygen
 * refuses it). Certificates and security keys (sk-*) are not supported.
 */
import { createHash, createPrivateKey, createPublicKey, sign, verify, type JsonWebKey, type KeyObject } from "node:crypto";

/** The namespace every cascade-sync approval is signed in (`ssh-keygen -Y sign -n cascade-sync`). */
export const APPROVAL_NAMESPACE = "cascade-sync";

/** The first line of every approval message; the version lets a later format coexist. */
export const APPROVAL_MESSAGE_HEADER = "cascade-sync approval v1";

/** Armored signatures longer than this are refused before decoding (a real one is under 2 KiB). */
export const MAX_ARMORED_SIGNATURE_BYTES = 64 * 1024;

const MAGIC = Buffer.from("SSHSIG");
const SIG_VERSION = 1;
const BEGIN = "-----BEGIN SSH SIGNATURE-----";
const END = "-----END SSH SIGNATURE-----";
/** ssh-keygen wraps the armored base64 at 70 columns (sshbuf_dtob64 with wrap). */
const ARMOR_WIDTH = 70;
/** ssh-keygen's bounds on RSA moduli (SSH_RSA_MINIMUM_MODULUS_SIZE, SSH_RSA_MAXIMUM_MODULUS_SIZE). */
const RSA_MIN_BITS = 1024;
const RSA_MAX_BITS = 16384;

/**
 * The exact bytes an approval signs: four lines, each ending in "\n". `expires` is used exactly as
 * written in the state file, so that re-formatting the date would (rightly) break the signature.
 */
export function approvalMessage(fields: { environment: string; commit: string; expires: string }): string {
  return `${APPROVAL_MESSAGE_HEADER}\nenvironment: ${fields.environment}\ncommit: ${fields.commit}\nexpires: ${fields.expires}\n`;
}

/** A public key in SSH wire form: its type name and its blob (what a .pub file holds in base64). */
export interface SshPublicKey {
  type: string;
  blob: Buffer;
}

/** The result of verifySshsig: the signing key on success, otherwise a sentence saying what is wrong. */
export type VerifyResult = { ok: true; publicKey: SshPublicKey } | { ok: false; reason: string };

/**
 * Verifies an armored SSHSIG signature over `message` in `namespace`, as `ssh-keygen -Y verify`
 * (or `-Y check-novalidate`) does, but without deciding whether the key is trusted: the caller checks
 * the returned key against its allowed signers. Returns `{ ok: false, reason }` for anything that does
 * not verify (bad armor, wrong namespace, unsupported key, forged or altered signature); never throws.
 */
export function verifySshsig(message: Buffer | string, armored: string, namespace: string = APPROVAL_NAMESPACE): VerifyResult {
  try {
    const blob = dearmor(armored);
    if (typeof blob === "string") return { ok: false, reason: blob };
    const r = new WireReader(blob);
    if (!r.take(MAGIC.length).equals(MAGIC)) return { ok: false, reason: "not an SSH signature (the SSHSIG magic is missing)" };
    const version = r.u32();
    if (version !== SIG_VERSION) return { ok: false, reason: `unsupported SSHSIG version ${version}` };
    const publicBlob = r.string();
    const signedNamespace = r.text();
    r.string(); // reserved: ignored on read, and signed as empty (sshsig.c does the same)
    const hashAlg = r.text();
    const signature = r.string();
    if (!r.done()) return { ok: false, reason: "the signature has trailing data" };
    if (signedNamespace !== namespace) {
      return { ok: false, reason: `signed for namespace "${signedNamespace}", not "${namespace}"; sign with ssh-keygen -Y sign -n ${namespace}` };
    }
    if (hashAlg !== "sha256" && hashAlg !== "sha512") return { ok: false, reason: `unsupported hash algorithm "${hashAlg}"` };
    const key = publicKeyFromBlob(publicBlob);
    if ("error" in key) return { ok: false, reason: key.error };
    const sig = new WireReader(signature);
    const sigType = sig.text();
    const sigBytes = sig.string();
    if (!sig.done()) return { ok: false, reason: `unsupported signature layout for ${sigType}` };
    const data = signedData(message, namespace, hashAlg);
    const checked = key.algo.verify(data, sigType, sigBytes, key.object);
    if (checked !== true) return { ok: false, reason: checked === false ? "the signature does not match the message (altered or forged)" : checked };
    return { ok: true, publicKey: { type: key.type, blob: publicBlob } };
  } catch (err) {
    if (err instanceof WireError) return { ok: false, reason: `malformed signature: ${err.message}` };
    return { ok: false, reason: `malformed signature: ${(err as Error).message}` };
  }
}

/**
 * Signs `message` in `namespace` with a private key (PEM text, or one parsed by parsePrivateKey) and
 * returns the armored `-----BEGIN SSH SIGNATURE-----` block, byte-for-byte the shape `ssh-keygen -Y
 * sign` writes (sha512, 70-column lines, trailing newline). Throws a `PrivateKeyError` when the key
 * text cannot be used (encrypted, unsupported, malformed).
 */
export function signSshsig(message: Buffer | string, privateKey: string | SshPrivateKey, namespace: string = APPROVAL_NAMESPACE): string {
  let key: SshPrivateKey;
  if (typeof privateKey === "string") {
    const parsed = parsePrivateKey(privateKey);
    if (!parsed.ok) throw new PrivateKeyError(parsed.code, parsed.message);
    key = parsed.key;
  } else {
    key = privateKey;
  }
  const hashAlg = "sha512";
  const data = signedData(message, namespace, hashAlg);
  const signature = ALGOS[key.type]!.sign(data, key.object);
  const blob = Buffer.concat([MAGIC, u32(SIG_VERSION), wString(key.publicBlob), wString(namespace), wString(""), wString(hashAlg), wString(signature)]);
  const b64 = blob.toString("base64");
  const lines: string[] = [];
  for (let i = 0; i < b64.length; i += ARMOR_WIDTH) lines.push(b64.slice(i, i + ARMOR_WIDTH));
  return `${BEGIN}\n${lines.join("\n")}\n${END}\n`;
}

/** The SHA256 fingerprint of a public key blob, as ssh-keygen -l prints it (`SHA256:...`, no padding). */
export function fingerprint(blob: Buffer): string {
  return `SHA256:${createHash("sha256").update(blob).digest("base64").replace(/=+$/, "")}`;
}

/** A public key as one authorized_keys/allowed_signers style line: `type base64 [comment]`. */
export function publicKeyLine(key: SshPublicKey, comment?: string): string {
  return `${key.type} ${key.blob.toString("base64")}${comment ? ` ${comment}` : ""}`;
}

// ---------------------------------------------------------------------------------------------
// allowed_signers

/** Options of an allowed_signers line that cascade-sync understands. */
export interface AllowedSignerOptions {
  /** The key is a CA for certificates; cascade-sync does not accept certificates, so the line never matches. */
  certAuthority: boolean;
  /** `namespaces="..."`: comma-separated patterns the signature's namespace must match. */
  namespaces?: string;
  /** `valid-after=`: milliseconds since the epoch. */
  validAfter?: number;
  /** `valid-before=`: milliseconds since the epoch. */
  validBefore?: number;
}

/** One parsed allowed_signers line. */
export interface AllowedSigner {
  /** The principals field as written: one name or a comma-separated list of patterns (`*`, `?`, `!`). */
  principal: string;
  keyType: string;
  keyBlob: Buffer;
  options: AllowedSignerOptions;
  comment: string;
}

/**
 * Parses one allowed_signers line, `principals [options] key-type base64-key [comment]`, as
 * ssh-keygen(1) describes it: principals may be double-quoted, options are cert-authority,
 * namespaces="...", valid-after="..." and valid-before="..." (YYYYMMDD[HHMM[SS]][Z]; without Z the
 * local time). The key must be of a supported type and decode. Returns `{ error }` saying what is
 * wrong, also for blank and comment lines (callers skip those first, see isAllowedSignerContent).
 */
export function parseAllowedSigner(line: string): AllowedSigner | { error: string } {
  const s = line.trim();
  if (s === "" || s.startsWith("#")) return { error: "blank or comment line" };
  let pos = 0;
  let principal: string;
  if (s[0] === '"') {
    const close = s.indexOf('"', 1);
    if (close < 0) return { error: "unterminated quoted principals" };
    principal = s.slice(1, close);
    pos = close + 1;
  } else {
    const m = /^\S+/.exec(s)!;
    principal = m[0];
    pos = m[0].length;
  }
  if (principal === "") return { error: "empty principals" };
  let rest = s.slice(pos);
  if (!/^\s/.test(rest)) return { error: "expected whitespace after the principals" };
  rest = rest.trimStart();
  const options: AllowedSignerOptions = { certAuthority: false };
  if (!looksLikeKeyType(firstToken(rest))) {
    const opt = readOptionsToken(rest);
    if ("error" in opt) return opt;
    for (const o of opt.options) {
      const eq = o.indexOf("=");
      const name = (eq < 0 ? o : o.slice(0, eq)).toLowerCase();
      const raw = eq < 0 ? undefined : o.slice(eq + 1);
      const value = raw !== undefined && raw.startsWith('"') && raw.endsWith('"') && raw.length >= 2 ? raw.slice(1, -1) : raw;
      if (name === "cert-authority" && value === undefined) options.certAuthority = true;
      else if (name === "namespaces" && value !== undefined) options.namespaces = value;
      else if ((name === "valid-after" || name === "valid-before") && value !== undefined) {
        const t = parseSshTime(value);
        if (t === undefined) return { error: `bad ${name} time "${value}" (use YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS, optionally ending in Z)` };
        if (name === "valid-after") options.validAfter = t;
        else options.validBefore = t;
      } else return { error: `unknown or malformed option "${o}"` };
    }
    rest = opt.rest.trimStart();
  }
  const m = /^(\S+)\s+(\S+)(?:\s+(.*))?$/.exec(rest);
  if (!m) return { error: "expected a key type and a base64 key after the principals" };
  const keyType = m[1]!;
  const b64 = m[2]!;
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64)) return { error: "the key is not base64" };
  const keyBlob = Buffer.from(b64, "base64");
  if (keyBlob.toString("base64").replace(/=+$/, "") !== b64.replace(/=+$/, "")) return { error: "the key is not valid base64" };
  const key = publicKeyFromBlob(keyBlob);
  if ("error" in key) return { error: key.error };
  if (key.type !== keyType) return { error: `the line says ${keyType} but the key is ${key.type}` };
  return { principal, keyType, keyBlob, options, comment: m[3] ?? "" };
}

/** True when an allowed_signers line holds an entry (not blank, not a `#` comment). */
export function isAllowedSignerContent(line: string): boolean {
  const s = line.trim();
  return s !== "" && !s.startsWith("#");
}

/**
 * Whether `name` matches an OpenSSH pattern list (`a@x.com,*@y.com,!mallory@y.com`): any positive
 * pattern matches and no negated one does. `*` and `?` are wildcards; matching is case-sensitive,
 * as for allowed_signers principals.
 */
export function matchPatternList(name: string, list: string): boolean {
  let positive = false;
  for (const raw of list.split(",")) {
    const negated = raw.startsWith("!");
    const pattern = negated ? raw.slice(1) : raw;
    if (pattern === "") continue;
    if (wildcardMatch(name, pattern)) {
      if (negated) return false;
      positive = true;
    }
  }
  return positive;
}

/**
 * Whether an allowed_signers line lets `keyBlob` sign as `principal` in `namespace` at `now`. Returns
 * true, or a sentence saying why not (another principal or key, a cert-authority line, a namespaces
 * restriction, outside valid-after/valid-before).
 */
export function allowedSignerAccepts(signer: AllowedSigner, req: { principal: string; keyBlob: Buffer; namespace: string; now: number }): true | string {
  if (!matchPatternList(req.principal, signer.principal)) return `the line is for ${signer.principal}`;
  if (signer.options.certAuthority) return "cert-authority lines are not supported (certificates cannot sign approvals)";
  if (!signer.keyBlob.equals(req.keyBlob)) return `the line lists another key (${fingerprint(signer.keyBlob)})`;
  if (signer.options.namespaces !== undefined && !matchPatternList(req.namespace, signer.options.namespaces)) {
    return `the line allows only namespaces "${signer.options.namespaces}"`;
  }
  if (signer.options.validAfter !== undefined && req.now < signer.options.validAfter) {
    return `the key is valid only after ${new Date(signer.options.validAfter).toISOString()}`;
  }
  if (signer.options.validBefore !== undefined && req.now > signer.options.validBefore) {
    return `the key was valid only before ${new Date(signer.options.validBefore).toISOString()}`;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// private keys

/** A private key ready to sign: its SSH type, public blob, node KeyObject and comment ("" if none). */
export interface SshPrivateKey {
  type: string;
  publicBlob: Buffer;
  object: KeyObject;
  comment: string;
}

/** Why a private key cannot be used: a passphrase protects it, its type is unsupported, or it is not a key. */
export type PrivateKeyErrorCode = "encrypted" | "unsupported" | "malformed";

/** The result of parsePrivateKey; on failure `publicKey` is set when it could still be read (encrypted OpenSSH keys). */
export type ParsePrivateKeyResult =
  | { ok: true; key: SshPrivateKey }
  | { ok: false; code: PrivateKeyErrorCode; message: string; publicKey?: SshPublicKey };

/** Thrown by signSshsig when its key text cannot be used; `code` says why. */
export class PrivateKeyError extends Error {
  constructor(
    readonly code: PrivateKeyErrorCode,
    message: string,
  ) {
    super(message);
    this.name = "PrivateKeyError";
  }
}

/**
 * Reads a private key from an unencrypted OpenSSH key file (`-----BEGIN OPENSSH PRIVATE KEY-----`, as
 * `ssh-keygen -N ''` writes) or a PEM key node can read (PKCS#8 `BEGIN PRIVATE KEY`, or traditional
 * RSA/EC PEM). Returns `{ ok: false, code: "encrypted" }` for a passphrase-protected key (cascade-sync
 * never asks for passphrases), `"unsupported"` for other key types and `"malformed"` otherwise. Never throws.
 */
export function parsePrivateKey(text: string): ParsePrivateKeyResult {
  try {
    if (text.includes("-----BEGIN OPENSSH PRIVATE KEY-----")) return parseOpenSshPrivateKey(text);
    if (/^(ssh-|ecdsa-|sk-)\S+\s+[A-Za-z0-9+/=]+/.test(text.trim())) {
      return { ok: false, code: "malformed", message: "this is a public key; pass the private key file (the one without .pub)" };
    }
    if (text.includes("-----BEGIN ENCRYPTED PRIVATE KEY-----") || /Proc-Type:\s*4,ENCRYPTED/.test(text)) {
      return { ok: false, code: "encrypted", message: "the key is protected by a passphrase" };
    }
    if (!text.includes("-----BEGIN ")) return { ok: false, code: "malformed", message: "not a private key (no -----BEGIN ... PRIVATE KEY----- line)" };
    let object: KeyObject;
    try {
      object = createPrivateKey({ key: text, format: "pem" });
    } catch (err) {
      if ((err as { code?: string }).code === "ERR_MISSING_PASSPHRASE") return { ok: false, code: "encrypted", message: "the key is protected by a passphrase" };
      return { ok: false, code: "malformed", message: `cannot read the private key: ${(err as Error).message}` };
    }
    const pub = sshPublicFromKeyObject(object);
    if ("error" in pub) return { ok: false, code: "unsupported", message: pub.error };
    return { ok: true, key: { type: pub.type, publicBlob: pub.blob, object, comment: "" } };
  } catch (err) {
    if (err instanceof WireError) return { ok: false, code: "malformed", message: `malformed private key: ${err.message}` };
    return { ok: false, code: "malformed", message: `cannot read the private key: ${(err as Error).message}` };
  }
}

function parseOpenSshPrivateKey(text: string): ParsePrivateKeyResult {
  const m = /-----BEGIN OPENSSH PRIVATE KEY-----([\s\S]*?)-----END OPENSSH PRIVATE KEY-----/.exec(text);
  if (!m) return { ok: false, code: "malformed", message: "the OpenSSH private key has no END line" };
  const body = m[1]!.replace(/\s+/g, "");
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(body)) return { ok: false, code: "malformed", message: "the OpenSSH private key is not base64" };
  const r = new WireReader(Buffer.from(body, "base64"));
  const magic = Buffer.from("openssh-key-v1\0");
  if (!r.take(magic.length).equals(magic)) return { ok: false, code: "malformed", message: "not an openssh-key-v1 private key" };
  const cipher = r.text();
  const kdf = r.text();
  r.string(); // kdf options
  const count = r.u32();
  if (count !== 1) return { ok: false, code: "unsupported", message: `the file holds ${count} keys; use a file with one` };
  const publicBlob = r.string();
  const pubKey = publicKeyFromBlob(publicBlob);
  const publicKey = "error" in pubKey ? undefined : { type: pubKey.type, blob: publicBlob };
  if (cipher !== "none" || kdf !== "none") {
    return { ok: false, code: "encrypted", message: `the key is protected by a passphrase (cipher ${cipher})`, ...(publicKey ? { publicKey } : {}) };
  }
  const priv = new WireReader(r.string());
  if (priv.u32() !== priv.u32()) return { ok: false, code: "malformed", message: "the private key's check bytes differ (corrupt file)" };
  const type = priv.text();
  let object: KeyObject;
  if (type === "ssh-ed25519") {
    const pk = priv.string();
    const sk = priv.string();
    if (pk.length !== 32 || sk.length !== 64 || !sk.subarray(32).equals(pk)) return { ok: false, code: "malformed", message: "malformed ed25519 private key" };
    object = createPrivateKey({ key: { kty: "OKP", crv: "Ed25519", d: b64url(sk.subarray(0, 32)), x: b64url(pk) }, format: "jwk" });
  } else if (type.startsWith("ecdsa-sha2-")) {
    const curve = ECDSA_CURVES[type];
    const name = priv.text();
    const q = priv.string();
    const d = mpintValue(priv.string());
    if (!curve || name !== type.slice("ecdsa-sha2-".length)) return { ok: false, code: "unsupported", message: `unsupported key type ${type}` };
    const point = splitPoint(q, curve.size);
    if (!point) return { ok: false, code: "malformed", message: "malformed ecdsa public point" };
    object = createPrivateKey({ key: { kty: "EC", crv: curve.jwk, x: b64url(point.x), y: b64url(point.y), d: b64url(leftPad(d, curve.size)) }, format: "jwk" });
  } else if (type === "ssh-rsa") {
    const n = mpintValue(priv.string());
    const e = mpintValue(priv.string());
    const d = mpintValue(priv.string());
    const iqmp = mpintValue(priv.string());
    const p = mpintValue(priv.string());
    const q = mpintValue(priv.string());
    const big = (b: Buffer) => BigInt(`0x${b.toString("hex") || "0"}`);
    const unbig = (v: bigint) => {
      let h = v.toString(16);
      if (h.length % 2) h = `0${h}`;
      return Buffer.from(h, "hex");
    };
    const dp = unbig(big(d) % (big(p) - 1n));
    const dq = unbig(big(d) % (big(q) - 1n));
    object = createPrivateKey({
      key: { kty: "RSA", n: b64url(n), e: b64url(e), d: b64url(d), p: b64url(p), q: b64url(q), dp: b64url(dp), dq: b64url(dq), qi: b64url(iqmp) },
      format: "jwk",
    });
  } else {
    return {
      ok: false,
      code: "unsupported",
      message: `keys of type ${type} are not supported by cascade-sync${type.startsWith("sk-") ? " (a security key needs ssh-keygen)" : ""}`,
      ...(publicKey ? { publicKey } : {}),
    };
  }
  const comment = priv.text();
  const derived = sshPublicFromKeyObject(object);
  if ("error" in derived) return { ok: false, code: "unsupported", message: derived.error };
  // The public half is stored twice in the file; a mismatch means a corrupt or tampered key file.
  if (!derived.blob.equals(publicBlob)) return { ok: false, code: "malformed", message: "the private key does not match its public key (corrupt file)" };
  return { ok: true, key: { type, publicBlob, object, comment } };
}

// ---------------------------------------------------------------------------------------------
// key algorithms

interface Algo {
  /** true, false (does not verify), or a sentence for an unusable signature type. */
  verify(data: Buffer, sigType: string, sig: Buffer, key: KeyObject): boolean | string;
  /** The SSH signature blob (`string type, string bytes`). */
  sign(data: Buffer, key: KeyObject): Buffer;
}

const ECDSA_CURVES: Record<string, { jwk: string; size: number; hash: string }> = {
  "ecdsa-sha2-nistp256": { jwk: "P-256", size: 32, hash: "sha256" },
  "ecdsa-sha2-nistp384": { jwk: "P-384", size: 48, hash: "sha384" },
  "ecdsa-sha2-nistp521": { jwk: "P-521", size: 66, hash: "sha512" },
};

const ed25519: Algo = {
  verify(data, sigType, sig, key) {
    if (sigType !== "ssh-ed25519") return `a ${sigType} signature cannot come from an ssh-ed25519 key`;
    return sig.length === 64 && verify(null, data, key, sig);
  },
  sign(data, key) {
    return Buffer.concat([wString("ssh-ed25519"), wString(sign(null, data, key))]);
  },
};

const rsa: Algo = {
  verify(data, sigType, sig, key) {
    const hash = sigType === "rsa-sha2-512" ? "sha512" : sigType === "rsa-sha2-256" ? "sha256" : undefined;
    if (!hash) return `RSA signature type ${sigType} is not accepted (only rsa-sha2-256 and rsa-sha2-512)`;
    const bytes = Math.ceil((key.asymmetricKeyDetails?.modulusLength ?? 0) / 8);
    if (sig.length > bytes) return false;
    // OpenSSH accepts signatures shorter than the modulus (leading zero bytes dropped) and pads them.
    return verify(hash, data, key, leftPad(sig, bytes));
  },
  sign(data, key) {
    return Buffer.concat([wString("rsa-sha2-512"), wString(sign("sha512", data, key))]);
  },
};

function ecdsa(type: string): Algo {
  const curve = ECDSA_CURVES[type]!;
  return {
    verify(data, sigType, sig, key) {
      if (sigType !== type) return `a ${sigType} signature cannot come from an ${type} key`;
      const r = new WireReader(sig);
      const rr = mpintValue(r.string());
      const ss = mpintValue(r.string());
      if (!r.done() || rr.length > curve.size || ss.length > curve.size) return false;
      return verify(curve.hash, data, { key, dsaEncoding: "ieee-p1363" }, Buffer.concat([leftPad(rr, curve.size), leftPad(ss, curve.size)]));
    },
    sign(data, key) {
      const raw = sign(curve.hash, data, { key, dsaEncoding: "ieee-p1363" });
      const inner = Buffer.concat([wString(mpint(raw.subarray(0, curve.size))), wString(mpint(raw.subarray(curve.size)))]);
      return Buffer.concat([wString(type), wString(inner)]);
    },
  };
}

const ALGOS: Record<string, Algo> = {
  "ssh-ed25519": ed25519,
  "ssh-rsa": rsa,
  ...Object.fromEntries(Object.keys(ECDSA_CURVES).map((t) => [t, ecdsa(t)])),
};

/** Decodes a public key blob into a node KeyObject; `{ error }` for unsupported or malformed keys. */
function publicKeyFromBlob(blob: Buffer): { type: string; object: KeyObject; algo: Algo } | { error: string } {
  try {
    const r = new WireReader(blob);
    const type = r.text();
    let jwk: JsonWebKey;
    if (type === "ssh-ed25519") {
      const pk = r.string();
      if (pk.length !== 32) return { error: "malformed ssh-ed25519 key" };
      jwk = { kty: "OKP", crv: "Ed25519", x: b64url(pk) };
    } else if (ECDSA_CURVES[type]) {
      const curve = ECDSA_CURVES[type]!;
      if (r.text() !== type.slice("ecdsa-sha2-".length)) return { error: `malformed ${type} key (curve name)` };
      const point = splitPoint(r.string(), curve.size);
      if (!point) return { error: `malformed ${type} key (point)` };
      jwk = { kty: "EC", crv: curve.jwk, x: b64url(point.x), y: b64url(point.y) };
    } else if (type === "ssh-rsa") {
      const e = mpintValue(r.string());
      const n = mpintValue(r.string());
      const bits = n.length * 8 - Math.clz32(n[0] ?? 0) + 24;
      if (bits < RSA_MIN_BITS || bits > RSA_MAX_BITS) return { error: `RSA keys must have ${RSA_MIN_BITS} to ${RSA_MAX_BITS} bits, this one has ${bits}` };
      jwk = { kty: "RSA", n: b64url(n), e: b64url(e) };
    } else {
      return { error: `keys of type ${type} are not supported (use ssh-ed25519, ecdsa-sha2-nistp256/384/521 or ssh-rsa)` };
    }
    if (!r.done()) return { error: `malformed ${type} key (trailing data)` };
    return { type, object: createPublicKey({ key: jwk, format: "jwk" }), algo: ALGOS[type]! };
  } catch (err) {
    return { error: `malformed public key: ${(err as Error).message}` };
  }
}

/** The SSH public blob of a node key (private or public). */
function sshPublicFromKeyObject(object: KeyObject): SshPublicKey | { error: string } {
  const jwk = createPublicKey(object).export({ format: "jwk" });
  const buf = (s: string | undefined) => Buffer.from(s ?? "", "base64url");
  if (object.asymmetricKeyType === "ed25519") {
    return { type: "ssh-ed25519", blob: Buffer.concat([wString("ssh-ed25519"), wString(buf(jwk.x))]) };
  }
  if (object.asymmetricKeyType === "ec") {
    const entry = Object.entries(ECDSA_CURVES).find(([, c]) => c.jwk === jwk.crv);
    if (!entry) return { error: `ECDSA curve ${jwk.crv ?? "?"} is not supported (use P-256, P-384 or P-521)` };
    const [type, curve] = entry;
    const q = Buffer.concat([Buffer.from([4]), leftPad(buf(jwk.x), curve.size), leftPad(buf(jwk.y), curve.size)]);
    return { type, blob: Buffer.concat([wString(type), wString(type.slice("ecdsa-sha2-".length)), wString(q)]) };
  }
  if (object.asymmetricKeyType === "rsa") {
    return { type: "ssh-rsa", blob: Buffer.concat([wString("ssh-rsa"), wString(mpint(buf(jwk.e))), wString(mpint(buf(jwk.n)))]) };
  }
  return { error: `keys of type ${object.asymmetricKeyType ?? "unknown"} are not supported (use ed25519, ECDSA or RSA)` };
}

// ---------------------------------------------------------------------------------------------
// wire format helpers

/** What SSHSIG signs: the magic, namespace, empty reserved field, hash name and the message's hash. */
function signedData(message: Buffer | string, namespace: string, hashAlg: string): Buffer {
  const digest = createHash(hashAlg).update(typeof message === "string" ? Buffer.from(message, "utf8") : message).digest();
  return Buffer.concat([MAGIC, wString(namespace), wString(""), wString(hashAlg), wString(digest)]);
}

/** The blob inside an armored signature, or a sentence saying why there is none. */
function dearmor(armored: string): Buffer | string {
  if (Buffer.byteLength(armored, "utf8") > MAX_ARMORED_SIGNATURE_BYTES) return `the signature is larger than ${MAX_ARMORED_SIGNATURE_BYTES} bytes`;
  const text = armored.replace(/\r\n/g, "\n").trim();
  if (!text.startsWith(BEGIN)) return `the signature does not start with ${BEGIN}`;
  if (!text.endsWith(END)) return `the signature does not end with ${END}`;
  const body = text.slice(BEGIN.length, text.length - END.length).replace(/[ \t]*\n[ \t]*/g, "\n").trim();
  const joined = body.replace(/\n/g, "");
  if (joined === "" || !/^[A-Za-z0-9+/]+={0,2}$/.test(joined) || joined.length % 4 !== 0) return "the signature's body is not base64";
  return Buffer.from(joined, "base64");
}

class WireError extends Error {}

/** Reads SSH wire types (RFC 4251) with bounds checks; throws WireError past the end. */
class WireReader {
  private off = 0;
  constructor(private readonly buf: Buffer) {}
  take(n: number): Buffer {
    if (n < 0 || this.off + n > this.buf.length) throw new WireError("truncated data");
    const out = this.buf.subarray(this.off, this.off + n);
    this.off += n;
    return out;
  }
  u32(): number {
    return this.take(4).readUInt32BE(0);
  }
  string(): Buffer {
    return this.take(this.u32());
  }
  text(): string {
    const b = this.string();
    const s = b.toString("utf8");
    if (!Buffer.from(s, "utf8").equals(b)) throw new WireError("a name is not valid UTF-8");
    return s;
  }
  done(): boolean {
    return this.off === this.buf.length;
  }
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n, 0);
  return b;
}

function wString(v: Buffer | string): Buffer {
  const b = typeof v === "string" ? Buffer.from(v, "utf8") : v;
  return Buffer.concat([u32(b.length), b]);
}

/** An unsigned big-endian integer as an SSH mpint body: no leading zeros, plus one if the high bit is set. */
function mpint(unsigned: Buffer): Buffer {
  let i = 0;
  while (i < unsigned.length && unsigned[i] === 0) i++;
  const v = unsigned.subarray(i);
  return v.length > 0 && (v[0]! & 0x80) !== 0 ? Buffer.concat([Buffer.from([0]), v]) : v;
}

/** The unsigned magnitude of an mpint body (negative values are refused: no key field is negative). */
function mpintValue(b: Buffer): Buffer {
  if (b.length > 0 && (b[0]! & 0x80) !== 0) throw new WireError("negative integer");
  let i = 0;
  while (i < b.length && b[i] === 0) i++;
  return b.subarray(i);
}

function leftPad(b: Buffer, size: number): Buffer {
  return b.length >= size ? b : Buffer.concat([Buffer.alloc(size - b.length), b]);
}

function splitPoint(q: Buffer, size: number): { x: Buffer; y: Buffer } | undefined {
  if (q.length !== 1 + 2 * size || q[0] !== 4) return undefined;
  return { x: q.subarray(1, 1 + size), y: q.subarray(1 + size) };
}

function b64url(b: Buffer): string {
  return b.toString("base64url");
}

function firstToken(s: string): string {
  return /^\S*/.exec(s)![0];
}

function looksLikeKeyType(token: string): boolean {
  return /^(ssh-|ecdsa-sha2-|sk-|rsa-sha2-)/.test(token);
}

/** Splits the options field (comma-separated, values may be double-quoted with spaces) off `s`. */
function readOptionsToken(s: string): { options: string[]; rest: string } | { error: string } {
  let i = 0;
  let quoted = false;
  while (i < s.length && (quoted || !/\s/.test(s[i]!))) {
    if (s[i] === '"') quoted = !quoted;
    i++;
  }
  if (quoted) return { error: "unterminated quote in the options" };
  const field = s.slice(0, i);
  const options: string[] = [];
  let cur = "";
  quoted = false;
  for (const ch of field) {
    if (ch === '"') quoted = !quoted;
    if (ch === "," && !quoted) {
      options.push(cur);
      cur = "";
    } else cur += ch;
  }
  options.push(cur);
  if (options.some((o) => o === "")) return { error: "empty option" };
  return { options, rest: s.slice(i) };
}

/** OpenSSH's absolute time (YYYYMMDD[HHMM[SS]][Z]) in ms; without Z it is local time, as ssh-keygen reads it. */
function parseSshTime(s: string): number | undefined {
  const m = /^(\d{4})(\d{2})(\d{2})(?:(\d{2})(\d{2})(\d{2})?)?([Zz])?$/.exec(s);
  if (!m) return undefined;
  const [y, mo, d, h = 0, mi = 0, sec = 0] = m.slice(1, 7).map((v) => (v === undefined ? undefined : Number(v))) as number[];
  if (mo! < 1 || mo! > 12 || d! < 1 || d! > 31 || h > 23 || mi > 59 || sec > 59) return undefined;
  const t = m[7] ? Date.UTC(y!, mo! - 1, d!, h, mi, sec) : new Date(y!, mo! - 1, d!, h, mi, sec).getTime();
  return Number.isNaN(t) ? undefined : t;
}

function wildcardMatch(s: string, pattern: string): boolean {
  // Iterative glob with backtracking to the last '*': linear enough for short principals, no regex built from input.
  let si = 0;
  let pi = 0;
  let star = -1;
  let mark = 0;
  while (si < s.length) {
    if (pi < pattern.length && pattern[pi] === "*") {
      star = pi++;
      mark = si;
    } else if (pi < pattern.length && (pattern[pi] === "?" || pattern[pi] === s[si])) {
      si++;
      pi++;
    } else if (star >= 0) {
      pi = star + 1;
      si = ++mark;
    } else return false;
  }
  while (pi < pattern.length && pattern[pi] === "*") pi++;
  return pi === pattern.length;
}
