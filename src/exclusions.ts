import { readFile, writeFile, mkdir } from "node:fs/promises";
import { dirname, join, relative, sep } from "node:path";
import type { Config } from "./config/types.js";
import { PathRules } from "./path-rules.js";


/** Paths the controller never syncs nor watches, whatever the config says: git's own and ours. */
export function isInternalPath(rel: string): boolean {
  const parts = rel.split("/");
  const base = parts[parts.length - 1] ?? "";
  return parts.some((part) => part.toLowerCase() === ".git") || (base.startsWith(".cascade-sync-") && base.endsWith(".tmp"));
}

const MANAGED_BEGIN = "# BEGIN cascade-sync exclusions (managed by cascade-sync; edit sandbox.exclude instead)";
const MANAGED_END = "# END cascade-sync exclusions";

/**
 * Decides which sandbox paths are synced: the config's `sandbox.exclude` patterns plus every
 * .gitignore in the tree (each applying below its own folder, as in git), with gitignore semantics.
 * Nested .gitignore files are read on first use and cached until `reload()`.
 */
export class Exclusions {
  private root: PathRules;
  private readonly nested = new Map<string, PathRules | null>();

  private constructor(
    private readonly dir: string,
    readonly patterns: string[],
    rootGitignore: string,
  ) {
    this.root = new PathRules(patterns, rootGitignore);
  }

  /** Loads the exclusions of the sandbox at `dir` with the config's patterns. */
  static async load(dir: string, patterns: string[]): Promise<Exclusions> {
    return new Exclusions(dir, patterns, await readOptional(join(dir, ".gitignore")));
  }

  /** True when `rel` (posix, relative to the sandbox) is not synced; `isDir` for folders. */
  async isExcluded(rel: string, isDir = false): Promise<boolean> {
    const known = this.excludedIfKnown(rel, isDir);
    if (known !== undefined) return known;
    // Read the .gitignore files on the way that are not known yet, then decide.
    for (let i = rel.indexOf("/"); i >= 0; i = rel.indexOf("/", i + 1)) await this.nestedRules(rel.slice(0, i));
    return this.excludedIfKnown(rel, isDir)!;
  }

  /**
   * isExcluded() without waiting: undefined when a .gitignore on the way has not been read yet.
   * A full scan reads each folder's .gitignore before its entries, so it decides this way.
   */
  excludedIfKnown(rel: string, isDir = false): boolean | undefined {
    if (isInternalPath(rel)) return true;
    const suffix = isDir ? "/" : "";
    if (this.root.matches(rel + suffix)) return true;
    for (let i = rel.indexOf("/"); i >= 0; i = rel.indexOf("/", i + 1)) {
      const base = rel.slice(0, i);
      if (!this.nested.has(base)) return undefined;
      if (this.nested.get(base)?.matches(rel.slice(i + 1) + suffix)) return true;
    }
    return false;
  }

  /**
   * A synchronous first cut for the watcher: internal paths and the top-level rules only. It never
   * excludes more than isExcluded(), so nothing is missed; observation applies the full rules.
   */
  quickExcluded(rel: string, isDir = false): boolean {
    return isInternalPath(rel) || (rel !== "" && this.root.matches(isDir ? `${rel}/` : rel));
  }

  /** Reads the .gitignore files again (call when one changed): the top-level one now, nested ones on next use. */
  async reload(): Promise<void> {
    this.root = new PathRules(this.patterns, await readOptional(join(this.dir, ".gitignore")));
    this.nested.clear();
  }

  /**
   * Learns the .gitignore of folder `base` from a listing of it (`names`): read when it is listed,
   * known absent otherwise, without trying to open it.
   */
  async learnFolder(base: string, names: readonly string[]): Promise<void> {
    if (base === "" || this.nested.has(base)) return;
    if (!names.includes(".gitignore")) this.nested.set(base, null);
    else await this.nestedRules(base);
  }

  private async nestedRules(base: string): Promise<PathRules | null> {
    if (!this.nested.has(base)) {
      const text = await readOptional(join(this.dir, base, ".gitignore"));
      this.nested.set(base, text ? new PathRules(text) : null);
    }
    return this.nested.get(base) ?? null;
  }

  /**
   * Writes the config's patterns into .git/info/exclude inside a managed block, so that native
   * `git status` agrees with the controller. Lines outside the block are the user's and are kept.
   * Returns true when the file changed.
   */
  async writeInfoExclude(gitdir: string): Promise<boolean> {
    const file = join(gitdir, "info", "exclude");
    const old = await readOptional(file);
    const block = [MANAGED_BEGIN, ...this.patterns, MANAGED_END].join("\n");
    const start = old.indexOf(MANAGED_BEGIN);
    const end = old.indexOf(MANAGED_END);
    const next = start >= 0 && end > start
      ? old.slice(0, start) + block + old.slice(end + MANAGED_END.length)
      : `${old}${old && !old.endsWith("\n") ? "\n" : ""}${block}\n`;
    if (next === old) return false;
    await mkdir(dirname(file), { recursive: true });
    await writeFile(file, next);
    return true;
  }
}

async function readOptional(file: string): Promise<string> {
  try {
    return await readFile(file, "utf8");
  } catch {
    return "";
  }
}

/**
 * The exclusions a config asks for: `sandbox.exclude`, plus the controller's own files when they
 * live inside the sandbox (a log file there would otherwise commit itself after every line it
 * logs), with `security.encrypt` held back.
 */
export async function exclusionsFor(config: Config): Promise<Exclusions> {
  const own = [config.logging.file]
    .map((f) => relative(config.dir, f))
    .filter((r) => r !== "" && !r.startsWith("..") && !r.startsWith(sep))
    .map((r) => `/${r.split(sep).join("/")}`);
  return Exclusions.load(config.dir, [...config.sandbox.exclude, ...own]);
}
