/**
 * The hinted paths that a batch must still name: a path below a hinted folder that is gone is left
 * out, since asking git about the folder (`git status -- FOLDER`) reports every deletion below it.
 * Deleting a folder of 5,000 files hints each file and then the folder; without this the batch was
 * cut into passes of a few thousand paths each and committed as three commits (issue 15), while the
 * folder alone is one small batch. A hinted folder that still exists keeps the paths below it (they
 * bound the size of a pass when a burst fills a new folder). `isGone` is asked once per hinted path
 * that has hinted paths below it. Insertion order is kept (the oldest hints go first).
 */
export function withoutPathsInGoneFolders(paths: Iterable<string>, isGone: (folder: string) => boolean): Set<string> {
  const all = paths instanceof Set ? (paths as Set<string>) : new Set(paths);
  const gone = new Map<string, boolean>();
  const out = new Set<string>();
  for (const p of all) {
    if (!insideGoneFolder(p, all, gone, isGone)) out.add(p);
  }
  return out;
}

/** True when a hinted folder above `p` is gone (each folder asked about once, memoized in `gone`). */
function insideGoneFolder(p: string, all: Set<string>, gone: Map<string, boolean>, isGone: (folder: string) => boolean): boolean {
  for (let i = p.indexOf("/"); i > 0; i = p.indexOf("/", i + 1)) {
    const folder = p.slice(0, i);
    if (!all.has(folder)) continue;
    let g = gone.get(folder);
    if (g === undefined) {
      g = isGone(folder);
      gone.set(folder, g);
    }
    if (g) return true;
  }
  return false;
}
