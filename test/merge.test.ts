import { afterAll, describe, expect, it } from 'vitest';
import { rm, writeFile, mkdir, symlink } from 'node:fs/promises';
import path from 'node:path';
import { mergeWinning } from '../src/git/native/merge.js';
import { cleanupTmpDirs, makeTmpDir } from './helpers/tmp.js';
import { git, gitOk } from './helpers/git.js';

afterAll(cleanupTmpDirs);

type Files = Record<string, string | Buffer | { link: string } | { exec: string } | null>;

/** A repository with a base commit, `ours` and `theirs` branches made from it; resolves with the folder. */
async function scenario(base: Files, ours: Files, theirs: Files): Promise<string> {
  const dir = await makeTmpDir('merge-');
  await git(dir, 'init', '--quiet', '--initial-branch=base');
  await git(dir, 'config', 'user.name', 'T');
  await git(dir, 'config', 'user.email', 't@example.invalid');
  await write(dir, base);
  await git(dir, 'add', '-A');
  await git(dir, 'commit', '--quiet', '--allow-empty', '-m', 'base');
  for (const [branch, files] of [['ours', ours], ['theirs', theirs]] as const) {
    await git(dir, 'checkout', '--quiet', '-B', branch, 'base');
    await write(dir, files);
    await git(dir, 'add', '-A');
    await git(dir, 'commit', '--quiet', '--allow-empty', '-m', branch);
  }
  await git(dir, 'checkout', '--quiet', 'base');
  return dir;
}

async function write(dir: string, files: Files): Promise<void> {
  for (const [rel, content] of Object.entries(files)) {
    const abs = path.join(dir, rel);
    await rm(abs, { recursive: true, force: true });
    if (content === null) continue;
    await mkdir(path.dirname(abs), { recursive: true });
    if (typeof content === 'object' && 'link' in content) await symlink(content.link, abs);
    else if (typeof content === 'object' && 'exec' in content) await writeFile(abs, content.exec, { mode: 0o755 });
    else await writeFile(abs, content);
  }
}

/** The tree `git merge -X ours` makes in a scratch clone with `ours` checked out (the oracle). */
async function nativeOursTree(dir: string): Promise<{ tree: string; clean: boolean }> {
  const scratch = await makeTmpDir('merge-oracle-');
  await git(scratch, 'clone', '--quiet', '--no-checkout', dir, 'c');
  const c = path.join(scratch, 'c');
  await git(c, 'config', 'user.name', 'T');
  await git(c, 'config', 'user.email', 't@example.invalid');
  await git(c, 'checkout', '--quiet', '-B', 'ours', 'origin/ours');
  const r = await gitOk(c, 'merge', '--no-edit', '--quiet', '-X', 'ours', 'origin/theirs');
  return { tree: await git(c, 'write-tree').catch(() => ''), clean: r.code === 0 };
}

async function ours(dir: string) {
  return mergeWinning({ cwd: dir }, 'ours', 'theirs', { scratch: path.join(dir, '.git', 'cascade-sync') });
}

async function fileAt(dir: string, tree: string, p: string): Promise<string | undefined> {
  const r = await gitOk(dir, 'cat-file', 'blob', `${tree}:${p}`);
  return r.code === 0 ? r.stdout : undefined;
}

const lines = (n: number, edit: Record<number, string> = {}) => Array.from({ length: n }, (_, i) => edit[i] ?? `line ${i}`).join('\n') + '\n';

describe('mergeWinning: the sandbox wins per hunk, as git merge -X ours', () => {
  const textCases: { name: string; base: Files; ours: Files; theirs: Files }[] = [
    { name: 'edits to different parts of one file are both kept', base: { 'a.txt': lines(20) }, ours: { 'a.txt': lines(20, { 2: 'OURS' }) }, theirs: { 'a.txt': lines(20, { 15: 'THEIRS' }) } },
    { name: 'an overlapping hunk takes ours, a separate one takes theirs', base: { 'a.txt': lines(30) }, ours: { 'a.txt': lines(30, { 5: 'O5', 6: 'O6' }) }, theirs: { 'a.txt': lines(30, { 6: 'T6', 25: 'T25' }) } },
    { name: 'adjacent lines are one hunk: ours', base: { 'a.txt': lines(10) }, ours: { 'a.txt': lines(10, { 4: 'A' }) }, theirs: { 'a.txt': lines(10, { 5: 'B' }) } },
    { name: 'lines one apart are two hunks: both', base: { 'a.txt': lines(10) }, ours: { 'a.txt': lines(10, { 3: 'A' }) }, theirs: { 'a.txt': lines(10, { 5: 'B' }) } },
    { name: 'add/add of one name merges the two texts', base: {}, ours: { 'n.txt': 'one\ntwo\n' }, theirs: { 'n.txt': 'one\nthree\n' } },
    { name: 'a clean merge of different files', base: { 'x': 'x\n', 'y': 'y\n' }, ours: { 'x': 'x2\n' }, theirs: { 'y': 'y2\n', 'z/new': 'z\n' } },
    { name: 'a rename on one side, an edit on the other', base: { 'old.txt': lines(20) }, ours: { 'old.txt': null, 'new.txt': lines(20) }, theirs: { 'old.txt': lines(20, { 10: 'T' }) } },
    { name: 'the exec bit from one side, content from both', base: { 's.sh': lines(10) }, ours: { 's.sh': { exec: lines(10, { 1: 'O' }) } }, theirs: { 's.sh': lines(10, { 8: 'T' }) } },
    { name: 'no final newline, conflicting last line', base: { 'a': 'a\nb' }, ours: { 'a': 'a\nO' }, theirs: { 'a': 'a\nT' } },
  ];
  for (const c of textCases) {
    it(c.name, async () => {
      const dir = await scenario(c.base, c.ours, c.theirs);
      const got = await ours(dir);
      const oracle = await nativeOursTree(dir);
      expect(oracle.clean).toBe(true);
      expect(got.tree).toBe(oracle.tree);
    });
  }

  it('reports the files it merged per hunk', async () => {
    const dir = await scenario({ 'a.txt': lines(20) }, { 'a.txt': lines(20, { 2: 'O' }) }, { 'a.txt': lines(20, { 2: 'T', 15: 'T' }) });
    const got = await ours(dir);
    expect(got.settled).toEqual([{ path: 'a.txt', how: 'hunks' }]);
    expect(await fileAt(dir, got.tree, 'a.txt')).toBe(lines(20, { 2: 'O', 15: 'T' }));
  });

  it('a binary file changed on both sides: ours, whole', async () => {
    const dir = await scenario({ 'b.bin': Buffer.from([0, 1, 2, 3]) }, { 'b.bin': Buffer.from([0, 1, 9, 3]) }, { 'b.bin': Buffer.from([0, 7, 2, 3]) });
    const got = await ours(dir);
    expect(await git(dir, 'rev-parse', `${got.tree}:b.bin`)).toBe(await git(dir, 'rev-parse', 'ours:b.bin'));
    expect(got.settled).toEqual([{ path: 'b.bin', how: 'file' }]);
    expect((await nativeOursTree(dir)).tree).toBe(got.tree);
  });

  it('a symlink changed on both sides: ours', async () => {
    const dir = await scenario({ l: { link: 'a' } }, { l: { link: 'b' } }, { l: { link: 'c' } });
    const got = await ours(dir);
    expect(await git(dir, 'rev-parse', `${got.tree}:l`)).toBe(await git(dir, 'rev-parse', 'ours:l'));
  });

  it('modify/delete: the sandbox side wins per file, both ways', async () => {
    const dir = await scenario({ kept: lines(5), gone: lines(5) }, { kept: lines(5, { 1: 'O' }), gone: null }, { kept: null, gone: lines(5, { 1: 'T' }) });
    const got = await ours(dir);
    expect(await fileAt(dir, got.tree, 'kept')).toBe(lines(5, { 1: 'O' }));
    expect(await fileAt(dir, got.tree, 'gone')).toBeUndefined();
    expect(got.settled).toEqual([{ path: 'gone', how: 'file' }, { path: 'kept', how: 'file' }]);
  });

  it('a file/folder clash: the sandbox side stays, no name~branch copy is left', async () => {
    const dir = await scenario({ d: 'x\n', e: { link: 'x' } }, { d: 'ours\n', e: null, 'e/f': 'ours f\n' }, { d: null, 'd/x': 'theirs\n', e: { link: 'y' } });
    const got = await ours(dir);
    const names = (await git(dir, 'ls-tree', '-r', '--name-only', got.tree)).split('\n');
    expect(names.sort()).toEqual(['d', 'e/f']);
    expect(await fileAt(dir, got.tree, 'd')).toBe('ours\n');
  });

  it('per-file paths (encrypted) are never merged line by line', async () => {
    const dir = await scenario({ 'a.txt': lines(20) }, { 'a.txt': lines(20, { 2: 'O' }) }, { 'a.txt': lines(20, { 2: 'T', 15: 'T' }) });
    const got = await mergeWinning({ cwd: dir }, 'ours', 'theirs', { scratch: path.join(dir, '.git', 'cascade-sync'), perFile: (p) => p === 'a.txt' });
    expect(await fileAt(dir, got.tree, 'a.txt')).toBe(lines(20, { 2: 'O' }));
  });

  it('unrelated histories merge as two additions (ours wins an add/add)', async () => {
    const dir = await makeTmpDir('merge-unrelated-');
    await git(dir, 'init', '--quiet', '--initial-branch=ours');
    await git(dir, 'config', 'user.name', 'T');
    await git(dir, 'config', 'user.email', 't@example.invalid');
    await write(dir, { a: 'ours\n', o: 'o\n' });
    await git(dir, 'add', '-A');
    await git(dir, 'commit', '--quiet', '-m', 'o');
    await git(dir, 'checkout', '--quiet', '--orphan', 'theirs');
    await git(dir, 'rm', '-rq', '--cached', '.');
    await write(dir, { a: 'theirs\n', o: null, t: 't\n' });
    await git(dir, 'add', '-A');
    await git(dir, 'commit', '--quiet', '-m', 't');
    const got = await ours(dir);
    expect(await fileAt(dir, got.tree, 'a')).toBe('ours\n');
    expect(await fileAt(dir, got.tree, 't')).toBe('t\n');
    expect(await fileAt(dir, got.tree, 'o')).toBe('o\n');
  });

  it('leaves no scratch file and never touches the index or work tree', async () => {
    const dir = await scenario({ 'a.txt': lines(20) }, { 'a.txt': lines(20, { 2: 'O' }) }, { 'a.txt': lines(20, { 2: 'T' }) });
    const before = await git(dir, 'status', '--porcelain=v1', '-uall');
    await ours(dir);
    expect(await git(dir, 'status', '--porcelain=v1', '-uall')).toBe(before);
    expect(await git(dir, 'ls-files', '-o', '--', '.git/cascade-sync')).toBe('');
    const left = await gitOk(dir, 'ls-files');
    expect(left.code).toBe(0);
  });
});
