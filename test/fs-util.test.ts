import { mkdir, readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { writeFileDurably } from '../src/fs-util.js';
import { cleanupTmpDirs, makeTmpDir } from './helpers/tmp.js';

afterEach(cleanupTmpDirs);

describe('writeFileDurably (the journal of integrate.ts, release manifests)', () => {
  it('replaces a file with the new content in the given mode and leaves no temp file', async () => {
    const dir = await makeTmpDir('durable');
    const file = path.join(dir, 'x.json');
    await writeFileDurably(file, 'old\n');
    await writeFileDurably(file, Buffer.from('new\n'), { mode: 0o600 });
    expect(await readFile(file, 'utf8')).toBe('new\n');
    // The mode is the new file's: the second write made a new file, not an update of the old one.
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect(await readdir(dir)).toEqual(['x.json']);
  });

  it('creates the folder only when asked (makeFolder), and syncs it (syncFolder)', async () => {
    const dir = await makeTmpDir('durable');
    const file = path.join(dir, 'a', 'b', 'journal.json');
    await expect(writeFileDurably(file, 'x')).rejects.toMatchObject({ code: 'ENOENT' });
    await writeFileDurably(file, 'x', { makeFolder: true, syncFolder: true });
    expect(await readFile(file, 'utf8')).toBe('x');
    expect(await readdir(path.dirname(file))).toEqual(['journal.json']);
  });

  it('a write that cannot replace the file rejects with the file system\'s error and leaves the folder as it was', async () => {
    const dir = await makeTmpDir('durable');
    const target = path.join(dir, 'taken');
    await mkdir(path.join(target, 'inside'), { recursive: true });
    await expect(writeFileDurably(target, 'x', { syncFolder: true })).rejects.toMatchObject({ code: expect.stringMatching(/^(EISDIR|ENOTEMPTY|EEXIST)$/) });
    expect(await readdir(dir)).toEqual(['taken']);
    expect(await readdir(target)).toEqual(['inside']);
  });
});
