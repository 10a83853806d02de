import { afterEach, describe, expect, it } from 'vitest';
import { mkdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Repo } from '../src/git/repo.js';
import { statCacheEntry, type IndexEntry } from '../src/git/stat.js';
import { Worktree, type StatCache } from '../src/worktree.js';
import { Exclusions } from '../src/exclusions.js';
import { git, logOneline } from './helpers/git.js';
import { makeSandbox, startController, type RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, waitFor } from './helpers/tmp.js';

let controllers: RunningController[] = [];
afterEach(async () => {
  for (const c of controllers) await c.stop();
  controllers = [];
  await cleanupTmpDirs();
});

/** 5,000 files in 50 folders of 10 sub-folders: a tree where a whole-tree look would show. */
function files(): Record<string, string> {
  const out: Record<string, string> = {};
  for (let d = 0; d < 50; d++) for (let s = 0; s < 10; s++) for (let f = 0; f < 10; f++) out[`d${d}/s${s}/f${f}.txt`] = `file ${d}/${s}/${f}\n`;
  return out;
}

/** The index as the controller builds its stat cache: git lists the entries (`git ls-files -s`). */
async function statCache(repo: Repo): Promise<StatCache> {
  const st = await stat(path.join(repo.gitdir, 'index'), { bigint: true });
  const entries = new Map<string, IndexEntry>();
  for (const e of await repo.indexEntries()) if (e.stage === 0) entries.set(e.path, statCacheEntry(e.path, e.mode, e.oid));
  return { entries, mtime: { sec: Number(st.mtimeNs / 1_000_000_000n), nsec: Number(st.mtimeNs % 1_000_000_000n) } };
}

/** Loose objects in the repository (`git count-objects`). */
async function looseObjects(dir: string): Promise<number> {
  return Number(/^count: (\d+)$/m.exec(await git(dir, 'count-objects', '-v'))![1]);
}

describe('cost proportional to the change', () => {
  it('observes only the hinted paths, and a one-file commit writes one blob, the trees on its path and the commit', async () => {
    const { dir } = await makeSandbox({ files: files() });
    const repo = await Repo.open(dir);
    const wt = new Worktree(dir, repo, await Exclusions.load(dir, []), true);
    const headTree = await repo.commitTree((await repo.branchHead('develop'))!);
    await writeFile(path.join(dir, 'd7/s3/f4.txt'), 'changed\n');

    const hinted = await wt.observe(headTree, ['d7/s3/f4.txt'], await statCache(repo));
    expect(hinted.scanned).toBe(1);
    expect(hinted.changes.map((c) => c.path)).toEqual(['d7/s3/f4.txt']);
    // The same change seen by a whole-tree scan, which looks at every file.
    const full = await wt.observe(headTree, [''], await statCache(repo));
    expect(full.scanned).toBeGreaterThanOrEqual(5000);
    expect(full.changes.map((c) => c.path)).toEqual(['d7/s3/f4.txt']);

    controllers.push(await startController(dir));
    const before = (await logOneline(dir, 'develop')).length;
    const objects = await looseObjects(dir);
    await mkdir(path.join(dir, 'd9/s9'), { recursive: true });
    await writeFile(path.join(dir, 'd9/s9/f9.txt'), 'changed too\n');
    await waitFor(async () => (await logOneline(dir, 'develop')).length >= before + 1 || undefined, { what: 'the commit of d9/s9/f9.txt' });
    // 1 blob + the trees of d9/s9, d9 and the root + 1 commit: nothing else of the 5,000 files is rewritten.
    expect(await looseObjects(dir)).toBe(objects + 5);
  });
});
