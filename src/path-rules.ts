/**
 * gitignore-style path patterns (the `ignore` library), with memory that does not grow with the tree.
 *
 * The library remembers its answer for every path it was asked and every folder above it, for as long
 * as the matcher lives: a controller that watches 100,000 files would keep an object and a string per
 * file (about 12 MB, and as many objects for every garbage collection to walk). PathRules starts a
 * fresh matcher after answering REMEMBERED_ANSWERS paths; the folders on the way, asked most often,
 * are remembered again within a few lookups.
 */
import ignoreModule from "ignore";

type Ignore = { add(p: string | readonly string[]): Ignore; ignores(p: string): boolean };
const ignore = ignoreModule as unknown as () => Ignore;

/** Paths answered by one matcher before it is replaced by a fresh one. */
const REMEMBERED_ANSWERS = 10_000;

export class PathRules {
  private matcher: Ignore;
  private answered = 0;
  /** The patterns, in the order given (gitignore: a later `!pattern` re-includes). */
  private readonly patterns: string[];

  /** `patterns`: gitignore lines (several may come in one string, e.g. a .gitignore file's text). */
  constructor(...patterns: (string | readonly string[])[]) {
    this.patterns = patterns.flatMap((p) => (typeof p === "string" ? p.split(/\r?\n/) : [...p]));
    this.matcher = this.compile();
  }

  /**
   * Whether the patterns match `path` (posix, relative; a trailing `/` marks a folder). Throws what
   * the library throws for a path that is not relative (absolute, `./` or `../`).
   */
  matches(path: string): boolean {
    if (++this.answered > REMEMBERED_ANSWERS) {
      this.matcher = this.compile();
      this.answered = 1;
    }
    return this.matcher.ignores(path);
  }

  private compile(): Ignore {
    return ignore().add(this.patterns);
  }
}
