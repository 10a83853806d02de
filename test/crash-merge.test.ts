import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { cloneTo, fsckStrict, git, makeBareRepo, revParse, showFile, statusPorcelain, tryRevParse } from './helpers/git.js';
import { buildDist, exited, killStartedProcesses, startControllerProcess } from './helpers/process.js';
import { makeSandbox } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

beforeAll(buildDist, 120_000);

afterEach(async () => {
  killStartedProcesses();
  await cleanupTmpDirs();
});

const FILES = 2500;
const name = (i: number) => `big/f${String(i).padStart(4, '0')}.txt`;
const content = (v: string, i: number) => `header\n\n${v} ${i}\n\nfooter\n`;

describe('crash-safe integration of remote commits (issue 15)', () => {
  it('kill -9 while a remote commit of thousands of files is being written: after a restart the remote\'s later edit survives, and so does a sandbox edit made in between', async () => {
    const root = await makeTmpDir('crash-merge');
    const bare = path.join(root, 'site.git');
    await makeBareRepo(bare, { initialBranch: 'develop' });
    const { dir } = await makeSandbox({ remotes: [{ name: 'origin', url: bare }], files: { 'a.txt': 'a\n' }, fetch: '1s' });
    const first = await startControllerProcess(dir);
    await waitFor(async () => (await tryRevParse(bare, 'develop')) === (await revParse(dir, 'develop')) || undefined, { what: 'the first push', timeoutMs: 30_000 });

    // Elsewhere: a commit of thousands of files, pushed.
    const other = path.join(root, 'other');
    await cloneTo(bare, other, '--branch', 'develop');
    await git(other, 'config', 'user.name', 'Other');
    await git(other, 'config', 'user.email', 'other@example.invalid');
    await mkdir(path.join(other, 'big'));
    for (let i = 0; i < FILES; i++) await writeFile(path.join(other, name(i)), content('v1', i));
    await git(other, 'add', '-A');
    await git(other, 'commit', '-qm', 'v1 of many files');
    await git(other, 'push', '-q', 'origin', 'develop');

    // Kill the controller the moment the first of them appears in the sandbox.
    await waitFor(async () => ((await readdir(path.join(dir, 'big')).catch(() => [])).length > 0) || undefined, { what: 'the first remote file in the sandbox', intervalMs: 1, timeoutMs: 60_000 });
    first.child.kill('SIGKILL');
    await exited(first.child);
    const writtenBeforeKill = (await readdir(path.join(dir, 'big')).catch(() => [])).filter((n) => n.endsWith('.txt'));
    expect(writtenBeforeKill.length).toBeGreaterThan(0);
    expect(writtenBeforeKill.length).toBeLessThan(FILES);

    // While the controller is down: the remote changes the same files again ...
    for (let i = 0; i < FILES; i++) await writeFile(path.join(other, name(i)), content('v2', i));
    await git(other, 'commit', '-qam', 'v2 of many files');
    await git(other, 'push', '-q', 'origin', 'develop');
    // ... and a person edits one of the files already written (on another line) and one of their own.
    const edited = path.join(dir, 'big', writtenBeforeKill.sort()[0]!);
    const mine = (await readFile(edited, 'utf8')).replace('header', 'header edited here');
    await writeFile(edited, mine);
    await writeFile(path.join(dir, 'mine.txt'), 'my own file\n');

    const second = await startControllerProcess(dir);
    const v2 = await revParse(other, 'HEAD');
    await waitFor(async () => {
      const head = await tryRevParse(bare, 'develop');
      if (!head || head !== (await revParse(dir, 'develop'))) return undefined;
      return (await git(dir, 'merge-base', '--is-ancestor', v2, head).then(() => true, () => false)) && (await statusPorcelain(dir)).length === 0;
    }, { what: 'the sandbox and the remote in step after the restart', timeoutMs: 90_000 }).catch((e: Error) => {
      throw new Error(`${e.message}\n--- controller output ---\n${second.out()}`);
    });

    const editedRel = `big/${path.basename(edited)}`;
    const editedIndex = Number(/f(\d+)/.exec(editedRel)![1]);
    // The remote's later edit survives everywhere, in every file (none went back to v1) ...
    for (let i = 0; i < FILES; i++) {
      const expected = i === editedIndex ? content('v2', i).replace('header', 'header edited here') : content('v2', i);
      expect(await readFile(path.join(dir, name(i)), 'utf8'), name(i)).toBe(expected);
      if (i % 250 === 0 || i === editedIndex) expect((await showFile(bare, 'develop', name(i))).toString(), name(i)).toBe(expected);
    }
    const bad = (await git(bare, 'grep', '-l', 'v1 ', 'develop', '--', 'big').catch(() => '')).trim();
    expect(bad).toBe('');
    // ... and so do the sandbox edits made in between (the edited file merged per hunk with v2).
    expect((await showFile(bare, 'develop', 'mine.txt')).toString()).toBe('my own file\n');
    expect(existsSync(path.join(dir, '.git', 'cascade-sync', 'integrating.json'))).toBe(false);
    second.child.kill('SIGTERM');
    expect(await exited(second.child)).toBe(0);
    await fsckStrict(dir);
    await fsckStrict(bare);
    expect(await statusPorcelain(dir)).toEqual([]);
  }, 240_000);
});
