import { readFile } from "node:fs/promises";
import { isAbsolute, join } from "node:path";
import { GitError } from "./failure.js";
import { runGit, type GitRepo } from "./run.js";

/** What a repository's config says about its on-disk format. */
export interface RepositoryFormat {
  /** `core.repositoryformatversion` (0 when unset). */
  version: number;
  /** `extensions.objectFormat`: sha1 unless the repository says otherwise. */
  objectFormat: string;
  /** `extensions.refStorage`: files unless the repository says otherwise (reftable). */
  refStorage: string;
  /** Every `extensions.*` key (lower-cased, as git reports them) with its value. */
  extensions: Record<string, string>;
  /** Extensions cascade-sync does not know; a repository with any is refused by {@link unsupportedFormat}. */
  unknownExtensions: string[];
}

/**
 * Extensions whose meaning cascade-sync knows. objectformat and refstorage are read, and judged by
 * {@link unsupportedFormat}; the others change nothing the gateway relies on.
 */
const KNOWN_EXTENSIONS = new Set(["noop", "noop-v1", "preciousobjects", "partialclone", "worktreeconfig", "objectformat", "refstorage"]);

/**
 * Reads the format of the repository at `gitDir` (a `.git` folder or a bare repository; for a linked
 * worktree's gitdir, the common directory's config is read) with `git config --file`, which reads the
 * file as text and so also works where this git would refuse the repository (an extension it does not
 * know, a reftable repository on git < 2.45).
 */
export async function repositoryFormat(gitDir: string, repo: Omit<GitRepo, "gitDir" | "workTree"> = {}): Promise<RepositoryFormat> {
  const configFile = await commonConfigFile(gitDir);
  const { stdout } = await runGit(["config", "--file", configFile, "-z", "--get-regexp", "^(core\\.repositoryformatversion|extensions\\.)"], {
    ...repo, okExitCodes: [0, 1], timeoutMs: 30_000,
  });
  const values = new Map<string, string>();
  for (const record of stdout.toString("utf8").split("\0")) {
    if (!record) continue;
    const nl = record.indexOf("\n");
    values.set(nl < 0 ? record : record.slice(0, nl), nl < 0 ? "true" : record.slice(nl + 1));
  }
  const extensions: Record<string, string> = {};
  for (const [key, value] of values) if (key.startsWith("extensions.")) extensions[key.slice("extensions.".length)] = value;
  return {
    version: Number(values.get("core.repositoryformatversion") ?? 0),
    objectFormat: (extensions["objectformat"] ?? "sha1").toLowerCase(),
    refStorage: (extensions["refstorage"] ?? "files").toLowerCase(),
    extensions,
    unknownExtensions: Object.keys(extensions).filter((k) => !KNOWN_EXTENSIONS.has(k)),
  };
}

async function commonConfigFile(gitDir: string): Promise<string> {
  try {
    const common = (await readFile(join(gitDir, "commondir"), "utf8")).trim();
    return join(isAbsolute(common) ? common : join(gitDir, common), "config");
  } catch {
    return join(gitDir, "config");
  }
}

/** Which formats a caller accepts; the defaults are what the gateway supports. */
export interface FormatSupport {
  /** Default ["sha1", "sha256"]: the gateway's parsers take 40- and 64-digit object ids alike. */
  objectFormats?: readonly string[];
  /** Default ["files"]: reftable needs git 2.45 and its refs are not files a person can inspect. */
  refStorages?: readonly string[];
}

/**
 * Why the repository cannot be used, for a Stalled `RepositoryFormatUnsupported` message, or undefined
 * when it can.
 */
export function unsupportedFormat(format: RepositoryFormat, support: FormatSupport = {}): string | undefined {
  const objectFormats = support.objectFormats ?? ["sha1", "sha256"];
  const refStorages = support.refStorages ?? ["files"];
  if (format.version > 1) return `repository format version ${format.version} is newer than any git cascade-sync knows (0 or 1)`;
  if (!objectFormats.includes(format.objectFormat)) return `the repository uses object format ${format.objectFormat}; supported: ${objectFormats.join(", ")}`;
  if (!refStorages.includes(format.refStorage)) return `the repository stores refs as ${format.refStorage}; supported: ${refStorages.join(", ")}`;
  if (format.version >= 1 && format.unknownExtensions.length > 0) return `the repository uses extensions cascade-sync does not know: ${format.unknownExtensions.join(", ")}`;
  return undefined;
}

/**
 * Resolves with the repository's format when the gateway supports it; rejects with Stalled
 * `RepositoryFormatUnsupported` saying what the repository uses, so nothing is written to a repository
 * cascade-sync would misread.
 */
export async function requireSupportedFormat(gitDir: string, support: FormatSupport = {}, repo: Omit<GitRepo, "gitDir" | "workTree"> = {}): Promise<RepositoryFormat> {
  const format = await repositoryFormat(gitDir, repo);
  const why = unsupportedFormat(format, support);
  if (why) {
    throw new GitError("Stalled", "RepositoryFormatUnsupported", `${gitDir}: ${why}`, {
      command: "git config --file config", stderr: "",
      hint: "use a repository made with the default format (git init without --object-format or --ref-format), or clone this one into one",
    });
  }
  return format;
}
