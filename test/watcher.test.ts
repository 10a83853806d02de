import { afterEach, describe, expect, it } from 'vitest';
import { chmod, mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { SandboxWatcher } from '../src/watcher.js';
import { Exclusions } from '../src/exclusions.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

// The watcher only hints paths (the reconciler re-observes them); what matters is that every change
// is hinted by its own path or by a folder above it, and that folders come and go from the watch.
let watchers: SandboxWatcher[] = [];
afterEach(async () => {
  for (const w of watchers) await w.close();
  watchers = [];
  await cleanupTmpDirs();
});

async function watched(files: Record<string, string> = {}, exclude: string[] = []) {
  const dir = await makeTmpDir('watch');
  await mkdir(path.join(dir, '.git'));
  for (const [p, c] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(dir, p)), { recursive: true });
    await writeFile(path.join(dir, p), c);
  }
  const exclusions = await Exclusions.load(dir, exclude);
  const hints: string[] = [];
  const missed: string[] = [];
  const w = new SandboxWatcher(dir, path.join(dir, '.git'), () => exclusions, {
    changed: (rel) => hints.push(rel),
    missedEvents: (why) => missed.push(why),
    headChanged: () => undefined,
  });
  watchers.push(w);
  await w.start();
  /** Waits until `rel` (or a folder above it) was hinted since the last reset. */
  const hinted = (rel: string) =>
    waitFor(() => hints.some((h) => h === rel || rel.startsWith(`${h}/`) || h === '') || undefined, { what: `a hint covering ${rel} (got ${hints.slice(-5).join(', ')})`, timeoutMs: 5000 });
  return { dir, hints, missed, w, hinted, reset: () => void (hints.length = 0) };
}

describe('SandboxWatcher (one watch per folder)', () => {
  it('watches every folder but excluded ones and .git, and hints changes, additions, deletions and metadata changes', async () => {
    const t = await watched({ 'a.txt': 'a', 'src/b.txt': 'b', 'src/deep/c.txt': 'c', 'node_modules/x/y.js': 'y' }, ['node_modules/']);
    expect(t.w.watchedFolders).toBe(3); // ., src, src/deep
    await writeFile(path.join(t.dir, 'src/deep/c.txt'), 'changed');
    await t.hinted('src/deep/c.txt');
    t.reset();
    await writeFile(path.join(t.dir, 'src/new.txt'), 'new');
    await t.hinted('src/new.txt');
    t.reset();
    await rm(path.join(t.dir, 'src/b.txt'));
    await t.hinted('src/b.txt');
    t.reset();
    await chmod(path.join(t.dir, 'a.txt'), 0o755);
    await t.hinted('a.txt');
    t.reset();
    await writeFile(path.join(t.dir, 'node_modules/x/z.js'), 'z');
    await writeFile(path.join(t.dir, '.git/index'), 'not ours');
    await writeFile(path.join(t.dir, 'a.txt'), 'sentinel');
    await t.hinted('a.txt');
    expect(t.hints.filter((h) => h.startsWith('node_modules/x') || h.startsWith('.git'))).toEqual([]);
    expect(t.missed).toEqual([]);
  });

  it('starts watching folders made after start (also ones filled before their watch existed) and stops for removed ones', async () => {
    const t = await watched({ 'a.txt': 'a' });
    await mkdir(path.join(t.dir, 'n1/n2/n3'), { recursive: true });
    await writeFile(path.join(t.dir, 'n1/n2/n3/early.txt'), 'written at once');
    await t.hinted('n1/n2/n3/early.txt');
    await waitFor(() => t.w.watchedFolders === 4 || undefined, { what: 'the new folders to be watched' });
    t.reset();
    await writeFile(path.join(t.dir, 'n1/n2/n3/late.txt'), 'later');
    await waitFor(() => t.hints.includes('n1/n2/n3/late.txt') || undefined, { what: 'the exact hint from the new folder\'s own watch' });
    t.reset();
    await rename(path.join(t.dir, 'n1'), path.join(t.dir, 'moved'));
    await t.hinted('n1');
    await t.hinted('moved/n2/n3/late.txt');
    await waitFor(() => t.w.watchedFolders === 4 || undefined, { what: 'the moved folders to be watched under their new name' });
    t.reset();
    await writeFile(path.join(t.dir, 'moved/n2/n3/after-move.txt'), 'x');
    // Covered under the new name: by the moved folder's own watch, or (when the write raced the new
    // watches) by the hint of the moved folder as a whole.
    await t.hinted('moved/n2/n3/after-move.txt');
    await rm(path.join(t.dir, 'moved'), { recursive: true });
    await waitFor(() => t.w.watchedFolders === 1 || undefined, { what: 'the removed folders to be unwatched' });
    expect(t.missed).toEqual([]);
  });
});

// Issue 15: an inotify watch follows the folder, not its name, and a deleted folder's watch goes
// quiet without an error. Each swap below is made with synchronous calls in one turn of the event
// loop (as `rm -r d && mkdir d` in a shell): the watcher sees its events only once it is complete.
describe('SandboxWatcher: a folder made again under its name is watched again at once', () => {
  /**
   * Once `folder` was hinted, writes each of `rels` and waits for a hint given after the write that
   * covers it: its own (from a watch) or its folder's (the folder being watched again as a whole).
   */
  async function laterWritesHinted(t: Awaited<ReturnType<typeof watched>>, folder: string, rels: string[]) {
    await waitFor(() => t.hints.includes(folder) || undefined, { what: `the swapped folder ${folder} hinted` });
    t.reset();
    for (const rel of rels) await writeFile(path.join(t.dir, rel), 'later');
    for (const rel of rels) await t.hinted(rel);
  }

  it('rm -r d && mkdir d, 20 times', async () => {
    const t = await watched({ 'd/seed.txt': 's', 'd/sub/x.txt': 'x' });
    for (let i = 0; i < 20; i++) {
      rmSync(path.join(t.dir, 'd'), { recursive: true });
      mkdirSync(path.join(t.dir, 'd/sub'), { recursive: true });
      await laterWritesHinted(t, 'd', [`d/late-${i}.txt`, `d/sub/late-${i}.txt`]);
    }
    await waitFor(() => t.w.watchedFolders === 3 || undefined, { what: 'one watch per folder (., d, d/sub), none left on the deleted ones' });
    expect(t.missed).toEqual([]);
  });

  it('mv d x && mkdir d: d and x each watched under their own name', async () => {
    const t = await watched({ 'd/a.txt': 'a' });
    renameSync(path.join(t.dir, 'd'), path.join(t.dir, 'x'));
    mkdirSync(path.join(t.dir, 'd'));
    await laterWritesHinted(t, 'd', ['d/late.txt']);
    t.reset();
    await writeFile(path.join(t.dir, 'x/late.txt'), 'later');
    await waitFor(() => t.hints.includes('x/late.txt') || undefined, { what: 'the exact hint x/late.txt' });
    expect(t.hints.filter((h) => h.startsWith('d/'))).toEqual([]);
  });

  it('folder -> file -> folder, and renamed away and back', async () => {
    const t = await watched({ 'd/a.txt': 'a' });
    rmSync(path.join(t.dir, 'd'), { recursive: true });
    writeFileSync(path.join(t.dir, 'd'), 'a file');
    rmSync(path.join(t.dir, 'd'));
    mkdirSync(path.join(t.dir, 'd'));
    await laterWritesHinted(t, 'd', ['d/late.txt']);
    renameSync(path.join(t.dir, 'd'), path.join(t.dir, 'away'));
    renameSync(path.join(t.dir, 'away'), path.join(t.dir, 'd'));
    t.reset();
    await laterWritesHinted(t, 'd', ['d/back.txt']);
    await waitFor(() => t.w.watchedFolders === 2 || undefined, { what: 'one watch per folder (., d)' });
  });
});

describe('SandboxWatcher.rewatch', () => {
  it('follows changed exclusions: a folder no longer ignored gets its watch, a newly ignored one loses it', async () => {
    const t = await watched({ '.gitignore': 'gen/\n', 'gen/g.txt': 'g', 'src/s.txt': 's' });
    expect(t.w.watchedFolders).toBe(2); // ., src
    const exclusions = (t.w as unknown as { exclusions: () => Exclusions }).exclusions();
    await writeFile(path.join(t.dir, '.gitignore'), 'src/\n');
    await exclusions.reload();
    await t.w.rewatch('');
    expect(t.w.watchedFolders).toBe(2); // ., gen
    t.reset();
    await writeFile(path.join(t.dir, 'src/s.txt'), 'ignored now');
    await writeFile(path.join(t.dir, 'gen/g.txt'), 'watched now');
    await waitFor(() => t.hints.includes('gen/g.txt') || undefined, { what: 'the exact hint from the newly watched folder' });
    expect(t.hints.filter((h) => h.startsWith('src/'))).toEqual([]);
  });
});
