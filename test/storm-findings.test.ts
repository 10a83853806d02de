import { afterEach, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { readFile, rename, rm, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { cloneTo, commitFiles, git, makeBareRepo, showFile, statusPorcelain } from './helpers/git.js';
import { makeSandbox, run, startController, type RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

// Focused reproductions of what the fault storm (test/storm.test.ts) found, one per finding, each
// small enough to run in the ordinary suite.

let controllers: RunningController[] = [];
afterEach(async () => {
  for (const c of controllers.splice(0)) await c.stop();
  await cleanupTmpDirs();
});

describe('storm findings (issue 15)', () => {
  it('a remote commit is integrated when the tree holds a file name with a backslash (not a separator outside Windows, as for git)', async () => {
    const root = await makeTmpDir('storm-backslash');
    const bare = path.join(root, 'site.git');
    await makeBareRepo(bare, { initialBranch: 'develop' });
    const { dir } = await makeSandbox({ remotes: [{ name: 'origin', url: bare }], files: { 'w/a\\b.txt': 'back slash\n', 'x\\y/in.txt': 'in a folder with a backslash\n' } });
    const first = await run(dir, ['reconcile']);
    expect(first.code, first.stderr + first.stdout).toBe(0);
    expect((await showFile(bare, 'develop', 'w/a\\b.txt')).toString()).toBe('back slash\n');

    const other = path.join(root, 'other');
    await cloneTo(bare, other, '--branch', 'develop');
    await commitFiles(other, { 'theirs.txt': 'from the remote\n' }, 'theirs');
    await git(other, 'push', '-q', 'origin', 'develop');
    await writeFile(path.join(dir, 'mine.txt'), 'mine\n');

    const second = await run(dir, ['reconcile']);
    expect(second.code, second.stderr + second.stdout).toBe(0);
    expect(await readFile(path.join(dir, 'theirs.txt'), 'utf8')).toBe('from the remote\n');
    expect(await git(dir, 'rev-parse', 'develop')).toBe(await git(bare, 'rev-parse', 'develop'));
    expect(await statusPorcelain(dir)).toEqual([]);
  });

  it('a start that finds an interrupted integration and the index locked by a live process waits for the lock instead of exiting', async () => {
    const { dir } = await makeSandbox({ files: { 'a.txt': 'v1\n' } });
    // The remote's commit, fetched but not yet written: a.txt v2 (made in a clone, fetched as objects).
    const root = await makeTmpDir('storm-resume');
    const other = path.join(root, 'other');
    await cloneTo(dir, other, '--branch', 'develop');
    const to = await commitFiles(other, { 'a.txt': 'v2\n' }, 'remote edit');
    await git(dir, 'fetch', '-q', other, 'develop');
    const from = await git(dir, 'rev-parse', 'develop');
    // A crash right after the journal was written (README: .git/cascade-sync/integrating.json).
    await writeFile(path.join(dir, '.git', 'cascade-sync', 'integrating.json'), `${JSON.stringify({ ref: 'refs/heads/develop', from, to, message: 'fast-forward: develop' })}\n`);
    // Another process holds the index lock open (as a person's `git commit` would): never cleared at start.
    const lock = path.join(dir, '.git', 'index.lock');
    const fd = openSync(lock, 'wx');
    const holder = spawn('sleep', ['60'], { stdio: ['ignore', fd, 'ignore'] });
    closeSync(fd);
    // Old enough that the start does not wait for it to go away by itself before judging it (kept: its holder lives).
    await utimes(lock, new Date(Date.now() - 60_000), new Date(Date.now() - 60_000));
    const starting = startController(dir);
    // The lock goes away a few seconds later, as a person's commit ends.
    await new Promise((r) => setTimeout(r, 5000));
    holder.kill('SIGKILL');
    await rm(lock, { force: true });
    const c = await starting;
    controllers.push(c);
    await waitFor(async () => !existsSync(path.join(dir, '.git', 'cascade-sync', 'integrating.json')) || undefined, { what: 'the interrupted integration finished' });
    expect(await git(dir, 'rev-parse', 'develop')).toBe(to);
    expect(await readFile(path.join(dir, 'a.txt'), 'utf8')).toBe('v2\n');
    await waitFor(async () => (await statusPorcelain(dir)).length === 0 || undefined, { what: 'a clean sandbox' });
    expect(await git(dir, 'rev-parse', 'develop')).toBe(to);
  });

  it('a local remote whose folder was renamed away and back is pushed to again within seconds, not after the minute a stall waits', async () => {
    const root = await makeTmpDir('storm-away');
    const bare = path.join(root, 'site.git');
    await makeBareRepo(bare, { initialBranch: 'develop' });
    const { dir, logFile } = await makeSandbox({ remotes: [{ name: 'origin', url: bare }], files: { 'a.txt': 'v1\n' } });
    const c = await startController(dir);
    controllers.push(c);
    await c.ready;
    await waitFor(async () => (await git(dir, 'rev-parse', 'develop')) === (await git(bare, 'rev-parse', 'develop').catch(() => '')) || undefined, { what: 'the first push' });
    await rename(bare, `${bare}.away`);
    await writeFile(path.join(dir, 'a.txt'), 'v2\n');
    await waitFor(async () => /RemoteNotFound/.test(await readFile(logFile, 'utf8')) || undefined, { what: 'the push to fail on the missing folder', timeoutMs: 30_000 });
    await rename(`${bare}.away`, bare);
    const back = Date.now();
    // The probe comes within 5 s (a stall's own probe would wait a minute); the margin is for a busy machine.
    await waitFor(async () => (await showFile(bare, 'develop', 'a.txt').catch(() => Buffer.from(''))).toString() === 'v2\n' || undefined, { what: 'the edit to reach the remote once its folder is back', timeoutMs: 30_000 });
    expect(Date.now() - back).toBeLessThan(30_000);
  });
});
