import { afterEach, describe, expect, it } from 'vitest';
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { fsckStrict, git, logOneline, lsTree, statusPorcelain } from './helpers/git.js';
import { makeSandbox, startController, type RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, waitFor } from './helpers/tmp.js';

// Issue 15: a folder removed and made again at once (`rm -r d && mkdir d`, `mv d x && mkdir d`, a
// folder replaced by a file and back) must be watched again at once: a later write into it is
// committed within seconds, not at the next rescan (10 minutes here, so only the watch can do it).
// The swaps are made with synchronous calls in one turn of the event loop, as a shell's `&&` does:
// the controller (in this process) sees every event of a swap only after the swap is complete.

let controllers: RunningController[] = [];
afterEach(async () => {
  for (const c of controllers) await c.stop();
  controllers = [];
  await cleanupTmpDirs();
});

async function start(dir: string): Promise<RunningController> {
  const c = await startController(dir);
  controllers.push(c);
  return c;
}

/** A write into the sandbox must reach develop within this long (a commit takes well under a second on a quiet machine). */
const COMMIT_DEADLINE_MS = 10_000;

/** Waits until develop has `rel` with `content`. */
async function committed(dir: string, rel: string, content: string, timeoutMs = COMMIT_DEADLINE_MS): Promise<void> {
  await waitFor(async () => (await git(dir, 'show', `develop:${rel}`).catch(() => undefined)) === content || undefined, { what: `${rel} committed with "${content}"`, timeoutMs });
}

/** Oracle: develop's tree equals the working tree (git status clean) and fsck is clean. */
async function expectFaithful(dir: string): Promise<void> {
  await waitFor(async () => (await statusPorcelain(dir)).length === 0 || undefined, { what: 'git status --porcelain to be clean' });
  await fsckStrict(dir);
}

describe('every folder watched, always', () => {
  it('rm -r d && mkdir d, 20 times: a write into d a moment later is committed within seconds (no rescan), and at a graceful stop', async () => {
    const { dir } = await makeSandbox({ files: { 'd/seed.txt': 'seed' }, rescan: '10m' });
    const c = await start(dir);
    const d = path.join(dir, 'd');
    for (let i = 0; i < 20; i++) {
      rmSync(d, { recursive: true });
      mkdirSync(d);
      writeFileSync(path.join(d, `early-${i}.txt`), `early ${i}`);
      await committed(dir, `d/early-${i}.txt`, `early ${i}`);
      // Written after the swap was seen and committed: only a watch on the new folder reports it.
      writeFileSync(path.join(d, `late-${i}.txt`), `late ${i}`);
      await committed(dir, `d/late-${i}.txt`, `late ${i}`);
    }
    expect((await lsTree(dir, 'develop')).filter((e) => e.path.startsWith('d/')).map((e) => e.path)).toEqual(['d/early-19.txt', 'd/late-19.txt']);
    await expectFaithful(dir);
    // Once more, then a graceful stop right after the write: the stop commits it.
    rmSync(d, { recursive: true });
    mkdirSync(d);
    writeFileSync(path.join(d, 'early.txt'), 'early');
    await committed(dir, 'd/early.txt', 'early');
    writeFileSync(path.join(d, 'before-stop.txt'), 'written just before the stop');
    controllers = [];
    expect(await c.stop()).toBe(0);
    expect(await git(dir, 'show', 'develop:d/before-stop.txt')).toBe('written just before the stop');
    await expectFaithful(dir);
  }, 240_000);

  it('mv d x && mkdir d: later writes into d and into x are committed under their own names', async () => {
    const { dir } = await makeSandbox({ files: { 'd/a.txt': 'a', 'd/sub/b.txt': 'b' }, rescan: '10m' });
    await start(dir);
    renameSync(path.join(dir, 'd'), path.join(dir, 'x'));
    mkdirSync(path.join(dir, 'd'));
    writeFileSync(path.join(dir, 'd/new.txt'), 'new');
    await committed(dir, 'd/new.txt', 'new');
    await committed(dir, 'x/sub/b.txt', 'b');
    writeFileSync(path.join(dir, 'd/late.txt'), 'late in d');
    writeFileSync(path.join(dir, 'x/sub/late.txt'), 'late in x');
    await committed(dir, 'd/late.txt', 'late in d');
    await committed(dir, 'x/sub/late.txt', 'late in x');
    expect((await lsTree(dir, 'develop')).map((e) => e.path).filter((p) => /^[dx]\//.test(p)).sort()).toEqual(['d/late.txt', 'd/new.txt', 'x/a.txt', 'x/sub/b.txt', 'x/sub/late.txt']);
    await expectFaithful(dir);
  }, 120_000);

  it('folder -> file -> folder (and renamed away and back): a later write into the folder is committed', async () => {
    const { dir } = await makeSandbox({ files: { 'd/a.txt': 'a', 'd/sub/b.txt': 'b' }, rescan: '10m' });
    await start(dir);
    const d = path.join(dir, 'd');
    rmSync(d, { recursive: true });
    writeFileSync(d, 'a file for a moment');
    rmSync(d);
    mkdirSync(path.join(d, 'sub'), { recursive: true });
    writeFileSync(path.join(d, 'sub/again.txt'), 'again');
    await committed(dir, 'd/sub/again.txt', 'again');
    writeFileSync(path.join(d, 'late.txt'), 'late');
    writeFileSync(path.join(d, 'sub/late.txt'), 'late in sub');
    await committed(dir, 'd/late.txt', 'late');
    await committed(dir, 'd/sub/late.txt', 'late in sub');
    // Renamed away and straight back: the same folder under its name, still watched.
    renameSync(d, path.join(dir, 'away'));
    renameSync(path.join(dir, 'away'), d);
    writeFileSync(path.join(d, 'sub/back.txt'), 'back');
    await committed(dir, 'd/sub/back.txt', 'back');
    await waitFor(async () => (await statusPorcelain(dir)).length === 0 || undefined, { what: 'everything committed' });
    writeFileSync(path.join(d, 'sub/later.txt'), 'later');
    await committed(dir, 'd/sub/later.txt', 'later');
    expect((await lsTree(dir, 'develop')).map((e) => e.path).filter((p) => p.startsWith('d')).sort()).toEqual(['d/late.txt', 'd/sub/again.txt', 'd/sub/back.txt', 'd/sub/late.txt', 'd/sub/later.txt']);
    await expectFaithful(dir);
  }, 120_000);
});

/** The name-status lines of `git diff-tree -r --no-renames` for one commit: what it really changes. */
async function diffTree(dir: string, commit: string): Promise<string[]> {
  const out = await git(dir, 'diff-tree', '-r', '--no-commit-id', '--no-renames', '--name-status', commit);
  return out.split('\n').filter(Boolean).map((l) => l.replace('\t', ' '));
}

/** What a commit message claims: the subject's counts and the body's lines, renames split back into D and A. */
async function claims(dir: string, commit: string): Promise<{ counts: Record<string, number>; lines: string[] }> {
  const subject = await git(dir, 'log', '-1', '--format=%s', commit);
  const counts: Record<string, number> = {};
  for (const m of subject.matchAll(/(\d+) (modified|added|deleted|renamed)/g)) counts[m[2]!] = Number(m[1]);
  const body = (await git(dir, 'log', '-1', '--format=%b', commit)).split('\n').filter(Boolean);
  const lines = body.flatMap((l) => {
    const r = /^R (.*) -> (.*)$/.exec(l);
    return r ? [`D ${r[1]}`, `A ${r[2]}`] : [l];
  });
  return { counts, lines };
}

describe('truthful messages', () => {
  it('[slow] deleting a 5,000-file folder is one commit whose message lists each path once, with the counts git diff-tree gives', async () => {
    const files: Record<string, string> = { 'keep.txt': 'keep' };
    for (let i = 0; i < 5000; i++) files[`big/sub${i % 50}/f${i}.txt`] = `file ${i}\n`;
    // The default batching (3 s of quiet, 10 s at most): the deletion takes a few seconds on a busy machine.
    const { dir } = await makeSandbox({ files, debounce: '3s', batchWindow: '10s', rescan: '10m' });
    await start(dir);
    const before = (await logOneline(dir, 'develop')).length;
    await rm(path.join(dir, 'big'), { recursive: true });
    await waitFor(async () => (await lsTree(dir, 'develop')).every((e) => !e.path.startsWith('big/')) || undefined, { what: 'the folder\'s deletion committed', timeoutMs: 60_000 });
    await expectFaithful(dir);
    const commits = (await git(dir, 'rev-list', `develop~${(await logOneline(dir, 'develop')).length - before}..develop`)).split('\n').filter(Boolean);
    let deleted = 0;
    for (const commit of commits) {
      const real = await diffTree(dir, commit);
      const { counts, lines } = await claims(dir, commit);
      expect(new Set(lines).size).toBe(lines.length);
      expect([...lines].sort()).toEqual([...real].sort());
      const byStatus = (s: string) => real.filter((l) => l.startsWith(`${s} `)).length;
      expect((counts.deleted ?? 0) + (counts.renamed ?? 0)).toBe(byStatus('D'));
      expect((counts.added ?? 0) + (counts.renamed ?? 0)).toBe(byStatus('A'));
      expect(counts.modified ?? 0).toBe(byStatus('M') + byStatus('T'));
      deleted += byStatus('D');
    }
    expect(deleted).toBe(5000);
    expect(commits).toHaveLength(1);
    expect(await git(dir, 'log', '-1', '--format=%s', 'develop')).toBe('sync: 5000 deleted (big/sub0/f0.txt, big/sub0/f100.txt, big/sub0/f1000.txt, +4997 more)');
  }, 180_000);
});
