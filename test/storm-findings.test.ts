import { afterEach, describe, expect, it } from 'vitest';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { cloneTo, commitFiles, git, makeBareRepo, showFile, statusPorcelain } from './helpers/git.js';
import { makeSandbox, run } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir } from './helpers/tmp.js';

// Focused reproductions of what the fault storm (test/storm.test.ts) found, one per finding, each
// small enough to run in the ordinary suite.

afterEach(async () => {
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
});
