/**
 * Where the encryption key comes from (`security.key`) and where `init` puts a new one.
 *
 * `security.key` is either the key itself (32 bytes in base64, normally via ${CASCADE_ENCRYPTION_KEY})
 * or the path of a key file holding that base64 text. A new key file lives outside the sandbox, under
 * `${XDG_CONFIG_HOME:-$HOME/.config}/cascade-sync/keys/`, so that the key can never be synced with the
 * files it protects.
 */
import { createHash, randomBytes } from "node:crypto";
import { link, mkdir, open, rm, stat, writeFile } from "node:fs/promises";
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { CascadeError, stalled } from "../errors.js";
import { EncryptionKey, KEY_BYTES, keyHint } from "./encrypt.js";

/** A key file is a line of base64; anything bigger than this is not one and is not read further. */
const MAX_KEY_FILE_BYTES = 4096;
const BASE64 = /^[A-Za-z0-9+/_-]+={0,2}$/;
/** link(2) errors of file systems without hard links; there the key file is written in place, exclusively. */
const NO_HARD_LINKS = new Set(["EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS"]);

/** The environment variables key handling reads (passed in, never read from process.env). */
export type KeyEnv = Readonly<Record<string, string | undefined>>;

/** What loadEncryptionKey needs besides the spec. */
export interface LoadKeyOptions {
  /** Relative key file paths are resolved against this folder (normally the config file's). */
  baseDir: string;
  /** For `~/` in a key file path (HOME). */
  env: KeyEnv;
}

/**
 * The result of loadEncryptionKey. On success, `source` says whether the spec was the key itself or a
 * file (then `path` is its absolute path), and `warnings` holds sentences to log (a key file readable
 * by group or others). On failure, `error` is Stalled with one of the reasons `EncryptionKeyMissing`,
 * `EncryptionKeyInvalid`, `EncryptionKeyUnreadable`, `EncryptionKeyInsecure`; the message never holds
 * the key.
 */
export type LoadKeyResult =
  | { ok: true; key: EncryptionKey; source: "inline" | "file"; path?: string; warnings: string[] }
  | { ok: false; error: CascadeError };

/**
 * Loads the key named by `security.key`. A spec that is valid base64 of exactly 32 bytes is the key.
 * A spec starting with `/`, `./`, `../`, `~/` or a drive letter is a key file path; any other spec is
 * one when such a file exists, and otherwise a malformed key (reported without echoing it, since it
 * may be a mistyped key). The file must be a regular file holding base64 of 32 bytes (surrounding
 * whitespace ignored). A file writable by group or others is refused (`EncryptionKeyInsecure`: anyone
 * could swap in their own key); one readable by them loads with a warning. `undefined` or an empty
 * spec gives `EncryptionKeyMissing`: files matching security.encrypt are then held back.
 */
export async function loadEncryptionKey(spec: string | undefined, opts: LoadKeyOptions): Promise<LoadKeyResult> {
  const s = spec?.trim() ?? "";
  if (s === "") {
    return failure(stalled("EncryptionKeyMissing", "no encryption key is set (security.key), so files matching security.encrypt are held back", "run `cascade-sync init` to create a key file, or set security.key to ${CASCADE_ENCRYPTION_KEY}"));
  }
  const inline = decodeKey(s);
  if (inline) return { ok: true, key: EncryptionKey.fromBytes(inline), source: "inline", warnings: [] };
  const path = resolveKeyPath(s, opts);
  if (/^(?:\/|\.{1,2}[/\\]|~[/\\]|[A-Za-z]:[/\\])/.test(s) || (await exists(path))) return loadKeyFile(path);
  const what = BASE64.test(s) ? `base64 of ${Buffer.from(s, "base64").length} bytes` : "neither base64 nor the path of an existing file";
  return failure(stalled("EncryptionKeyInvalid", `security.key is ${what}; a key must be base64 of exactly ${KEY_BYTES} bytes`, `${keyHint()}; write a key file path starting with ./ or /`));
}

/**
 * Creates a new key file at `path`: 32 random bytes (or `key`, for `key import`) in base64 and a newline, mode 0600, parent folders
 * created with mode 0700. The file appears complete or not at all, and an existing file is never
 * overwritten (Stalled `EncryptionKeyFileExists`). Returns the loaded key.
 */
export async function createKeyFile(path: string, key?: Uint8Array): Promise<EncryptionKey> {
  const abs = resolve(path);
  const dir = dirname(abs);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const master = key ? Buffer.from(key) : randomBytes(KEY_BYTES);
  const tmp = join(dir, `.${basename(abs)}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`);
  const fh = await open(tmp, "wx", 0o600);
  try {
    await fh.writeFile(`${master.toString("base64")}\n`);
    await fh.chmod(0o600); // the umask can only remove bits, but be exact
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    // link(2) fails when the name exists: an exclusive create of a file that is already complete.
    await link(tmp, abs).catch(async (err: NodeJS.ErrnoException) => {
      if (!NO_HARD_LINKS.has(err.code ?? "")) throw err;
      await writeFile(abs, `${master.toString("base64")}\n`, { flag: "wx", mode: 0o600 });
    });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") {
      throw stalled("EncryptionKeyFileExists", `a key file already exists at ${abs}; cascade-sync never overwrites a key`, "use it as security.key, or move it away yourself if it is really unused");
    }
    throw err;
  } finally {
    await rm(tmp, { force: true });
  }
  return EncryptionKey.fromBytes(master);
}

/**
 * Where `init` puts the key of the sandbox at `sandboxDir`:
 * `${XDG_CONFIG_HOME:-$HOME/.config}/cascade-sync/keys/<folder name>-<16 hex of sha256(absolute path)>.key`.
 * Throws Stalled `EncryptionKeyNoHome` when neither XDG_CONFIG_HOME nor HOME is set (absolute), or when
 * that location would be inside the sandbox.
 */
export function defaultKeyFilePath(sandboxDir: string, env: KeyEnv): string {
  const sandbox = resolve(sandboxDir);
  const xdg = env.XDG_CONFIG_HOME;
  const home = env.HOME;
  const configHome = xdg && isAbsolute(xdg) ? xdg : home && isAbsolute(home) ? join(home, ".config") : undefined;
  const hint = "set security.key to a key file path outside the sandbox, or set HOME";
  if (!configHome) throw stalled("EncryptionKeyNoHome", "cannot choose a place for the key file: neither XDG_CONFIG_HOME nor HOME is set", hint);
  const id = createHash("sha256").update(sandbox).digest("hex").slice(0, 16);
  const name = basename(sandbox).replace(/[^A-Za-z0-9._-]/g, "_").replace(/^\.+/, "") || "sandbox";
  const path = join(configHome, "cascade-sync", "keys", `${name}-${id}.key`);
  const rel = relative(sandbox, path);
  if (rel === "" || (!rel.startsWith(`..${sep}`) && rel !== ".." && !isAbsolute(rel))) {
    throw stalled("EncryptionKeyNoHome", `the default key file location ${path} is inside the sandbox ${sandbox}`, hint);
  }
  return path;
}

async function loadKeyFile(path: string): Promise<LoadKeyResult> {
  const unreadable = (what: string, cause?: unknown) =>
    failure(stalled("EncryptionKeyUnreadable", `cannot read the key file ${path}: ${what}`, "check security.key; create a key with `cascade-sync init`", cause));
  let fh;
  try {
    fh = await open(path, "r");
  } catch (err) {
    return unreadable(describeErrno(err), err);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) return unreadable("it is not a regular file");
    const warnings: string[] = [];
    if (process.platform !== "win32") {
      const mode = (st.mode & 0o777).toString(8).padStart(3, "0");
      if (st.mode & 0o022) {
        return failure(stalled("EncryptionKeyInsecure", `the key file ${path} is writable by group or others (mode ${mode}), so anyone could swap in their own key`, `run: chmod 600 ${path}`));
      }
      if (st.mode & 0o044) warnings.push(`the key file ${path} is readable by group or others (mode ${mode}); run: chmod 600 ${path}`);
    }
    if (st.size > MAX_KEY_FILE_BYTES) return invalidFile(path, `it is ${st.size} bytes, far more than a key`);
    const text = (await fh.readFile("utf8")).trim();
    const bytes = decodeKey(text);
    if (!bytes) {
      const detail = BASE64.test(text) ? `it holds base64 of ${Buffer.from(text, "base64").length} bytes, not ${KEY_BYTES}` : "it does not hold one line of base64";
      return invalidFile(path, detail);
    }
    return { ok: true, key: EncryptionKey.fromBytes(bytes), source: "file", path, warnings };
  } catch (err) {
    return unreadable(describeErrno(err), err);
  } finally {
    await fh.close();
  }
}

/** The 32 key bytes of `text` when it is exactly base64 (standard or URL-safe) of 32 bytes. */
function decodeKey(text: string): Buffer | undefined {
  if (!BASE64.test(text)) return undefined;
  const bytes = Buffer.from(text, "base64");
  // Buffer.from skips what it cannot decode; re-encoding shows whether every character counted.
  const canonical = (b: string) => b.replace(/-/g, "+").replace(/_/g, "/").replace(/=+$/, "");
  if (bytes.length !== KEY_BYTES || bytes.toString("base64").replace(/=+$/, "") !== canonical(text)) return undefined;
  return bytes;
}

function resolveKeyPath(spec: string, opts: LoadKeyOptions): string {
  if (/^~[/\\]/.test(spec) && opts.env.HOME) return join(opts.env.HOME, spec.slice(2));
  return resolve(opts.baseDir, spec);
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

function invalidFile(path: string, detail: string): LoadKeyResult {
  return failure(stalled("EncryptionKeyInvalid", `the key file ${path} is not a key: ${detail}`, keyHint()));
}

function describeErrno(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === "ENOENT") return "it does not exist";
  if (code === "EACCES" || code === "EPERM") return "permission denied";
  if (code === "EISDIR") return "it is a folder";
  return (err as Error).message;
}

function failure(error: CascadeError): LoadKeyResult {
  return { ok: false, error };
}

/** What a sandbox's encryption needs from the config. */
export interface SandboxKeySettings {
  /** The sandbox folder (the default key file is named after it). */
  dir: string;
  /** The config file's folder (relative key file paths). */
  configDir: string;
  security: { encrypt: readonly string[]; key?: string };
}

/**
 * The key of a sandbox: `security.key` when set, else the default key file that `init` creates
 * (when it exists). `EncryptionKeyMissing` when neither: files matching security.encrypt are then
 * held back, never committed in plaintext.
 */
export async function sandboxKey(s: SandboxKeySettings, env: KeyEnv): Promise<LoadKeyResult> {
  if (s.security.key) return loadEncryptionKey(s.security.key, { baseDir: s.configDir, env });
  let fallback: string | undefined;
  try {
    fallback = defaultKeyFilePath(s.dir, env);
  } catch {
    fallback = undefined;
  }
  return loadEncryptionKey(fallback && (await exists(fallback)) ? fallback : undefined, { baseDir: s.configDir, env });
}

/**
 * For `init`: creates the default key file when the config encrypts paths, sets no `security.key`,
 * no default key file exists yet, and the repository's branches hold no encrypted file (whose key
 * would be the team's). Returns the new file's path, or undefined when nothing was made.
 */
export async function ensureDefaultKeyFile(s: SandboxKeySettings, env: KeyEnv): Promise<string | undefined> {
  if (!s.security.encrypt.length || s.security.key) return undefined;
  const path = defaultKeyFilePath(s.dir, env);
  if (await exists(path)) return undefined;
  // A clone of a team's history: its files are encrypted with the team's key, which a new key would
  // never read. init then says how to install that key instead (setUpEncryptionFilter).
  const { historyHasEncryptedFiles } = await import("./git-filter.js");
  if (await historyHasEncryptedFiles(s.dir, s.security.encrypt)) return undefined;
  await createKeyFile(path);
  return path;
}

/** The key as text to hand to a teammate (`key export`), or why there is none. */
export type ExportKeyResult = { ok: true; text: string; fingerprint: string; source: string } | { ok: false; error: CascadeError };

/**
 * The base64 text of this sandbox's key (`security.key` itself, or the key file's content), for
 * `cascade-sync key export`. Fails as {@link sandboxKey} does.
 */
export async function exportKeyText(s: SandboxKeySettings, env: KeyEnv): Promise<ExportKeyResult> {
  const loaded = await sandboxKey(s, env);
  if (!loaded.ok) return loaded;
  if (loaded.source === "file" && loaded.path) {
    const { readFile } = await import("node:fs/promises");
    return { ok: true, text: (await readFile(loaded.path, "utf8")).trim(), fingerprint: loaded.key.fingerprint, source: loaded.path };
  }
  return { ok: true, text: (s.security.key ?? "").trim(), fingerprint: loaded.key.fingerprint, source: "security.key" };
}

/** What `key import` did: the file written (or already holding that key), or why nothing was written. */
export type ImportKeyResult = { ok: true; path: string; fingerprint: string; created: boolean } | { ok: false; error: CascadeError };

/**
 * Installs a teammate's key (`cascade-sync key import`): `text` must be base64 of 32 bytes. It goes
 * to the key file security.key names, else to the default key file of this sandbox, created with
 * mode 0600. A key file holding another key is never overwritten (Stalled `EncryptionKeyFileExists`);
 * a security.key that is the key itself (e.g. ${CASCADE_ENCRYPTION_KEY}) cannot be imported into
 * (Stalled `EncryptionKeyInConfig`).
 */
export async function importKeyText(s: SandboxKeySettings, env: KeyEnv, text: string): Promise<ImportKeyResult> {
  const bytes = decodeKey(text.trim());
  if (!bytes) return { ok: false, error: stalled("EncryptionKeyInvalid", "the key to import is not base64 of 32 bytes", "paste exactly the line `cascade-sync key export` printed") };
  const key = EncryptionKey.fromBytes(bytes);
  const spec = s.security.key?.trim();
  let path: string;
  if (spec) {
    if (decodeKey(spec)) {
      return { ok: false, error: stalled("EncryptionKeyInConfig", "security.key holds the key itself (normally from ${CASCADE_ENCRYPTION_KEY}), so there is no key file to import into", "set that variable to the team's key where cascade-sync runs (and in the shell you run git from)") };
    }
    path = resolveKeyPath(spec, { baseDir: s.configDir, env });
  } else {
    path = defaultKeyFilePath(s.dir, env);
  }
  if (await exists(path)) {
    const have = await loadKeyFile(path);
    if (have.ok && have.key.fingerprint === key.fingerprint) return { ok: true, path, fingerprint: key.fingerprint, created: false };
    return { ok: false, error: stalled("EncryptionKeyFileExists", `a key file already exists at ${path}${have.ok ? ` (key ${have.key.fingerprint})` : ""}; cascade-sync never overwrites a key`,
      "if that key encrypted nothing anyone still needs, move the file away (keep a copy), then import again") };
  }
  await createKeyFile(path, bytes);
  return { ok: true, path, fingerprint: key.fingerprint, created: true };
}
