import { PathRules } from "../path-rules.js";
import type { Config } from "../config/types.js";
import { mapLimit } from "../concurrency.js";
import type { Repo } from "../git/repo.js";
import { makeAllowList, scanFile, type Finding } from "./scan.js";

/** The part of the config the secret scan follows. */
export type ScanSettings = Pick<Config["security"], "encrypt" | "maxFileSizeBytes" | "allow">;

/**
 * Scans every file of `commit`'s tree as the `security-scan` gate does: each blob through
 * `scanFile`, except symlinks, submodules and paths matching `security.encrypt` (they are stored
 * encrypted, never in plaintext), and drops the findings `security.allow` accepts. Returns the
 * findings, sorted by path.
 */
export async function scanCommit(repo: Repo, commit: string, settings: ScanSettings): Promise<Finding[]> {
  const encrypted = new PathRules(settings.encrypt);
  const allow = makeAllowList(settings.allow);
  const files = [...(await repo.flattenTree(await repo.commitTree(commit))).entries()]
    .filter(([path, e]) => (e.mode === "100644" || e.mode === "100755") && !encrypted.matches(path))
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const found = await mapLimit(files, 8, async ([path, e]) => allow.filter(scanFile(path, await repo.readBlob(e.oid), { maxFileSizeBytes: settings.maxFileSizeBytes })));
  return found.flat();
}

/** One line per finding for a person: where, which rule, and the fingerprint to allow it (never the secret). */
export function describeFinding(f: Finding): string {
  return `${f.path}${f.line ? `:${f.line}` : ""}: ${f.rule} (fingerprint ${f.fingerprint})`;
}
