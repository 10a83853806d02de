import { afterEach, describe, expect, it } from 'vitest';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { logOneline, lsTree, statusPorcelain } from './helpers/git.js';
import { makeSandbox, startController, type RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, waitFor } from './helpers/tmp.js';

let controllers: RunningController[] = [];
afterEach(async () => {
  for (const c of controllers) await c.stop();
  controllers = [];
  await cleanupTmpDirs();
});

const treePaths = async (dir: string) => (await lsTree(dir, 'develop')).map((e) => e.path);

describe('a .gitignore edited while the controller runs', () => {
  it('applies at once: a newly ignored file stays out, a file no longer ignored is committed and its folder watched', async () => {
    const { dir } = await makeSandbox({ files: { '.gitignore': 'drafts/\n', 'drafts/old.md': 'draft', 'a.txt': 'a' } });
    controllers.push(await startController(dir));
    expect(await treePaths(dir)).not.toContain('drafts/old.md');

    // The top-level .gitignore gains a rule: the file it names is never committed, others are.
    await writeFile(path.join(dir, '.gitignore'), 'drafts/\nprivate.txt\n');
    await waitFor(async () => (await logOneline(dir, 'develop')).some((l) => l.includes('.gitignore')) || undefined, { what: 'the .gitignore edit to be committed' });
    await writeFile(path.join(dir, 'private.txt'), 'not for git');
    await writeFile(path.join(dir, 'kept.txt'), 'kept');
    await waitFor(async () => (await treePaths(dir)).includes('kept.txt') || undefined, { what: 'kept.txt to be committed' });
    expect(await treePaths(dir)).not.toContain('private.txt');

    // A rule removed: what it hid is committed, and later edits in that folder are seen by a watch
    // (the rescan interval is 10 minutes, so only the watch can bring them in time).
    await writeFile(path.join(dir, '.gitignore'), 'private.txt\n');
    await waitFor(async () => (await treePaths(dir)).includes('drafts/old.md') || undefined, { what: 'drafts/old.md to be committed once no longer ignored' });
    await mkdir(path.join(dir, 'drafts/deeper'), { recursive: true });
    await writeFile(path.join(dir, 'drafts/new.md'), 'new draft');
    await writeFile(path.join(dir, 'drafts/deeper/n.md'), 'deeper');
    await waitFor(async () => (await treePaths(dir)).includes('drafts/new.md') && (await treePaths(dir)).includes('drafts/deeper/n.md') || undefined, { what: 'edits in the no longer ignored folder to be committed' });
    await waitFor(async () => (await statusPorcelain(dir)).length === 0 || undefined, { what: 'git status to be clean (native git agrees)' });
  });

  it('applies a nested .gitignore edit to its own folder', async () => {
    const { dir } = await makeSandbox({ files: { 'sub/.gitignore': '*.log\n', 'sub/keep.txt': 'k', 'sub/trace.log': 'old log' } });
    controllers.push(await startController(dir));
    expect(await treePaths(dir)).not.toContain('sub/trace.log');
    await writeFile(path.join(dir, 'sub/.gitignore'), '*.bak\n');
    await waitFor(async () => (await treePaths(dir)).includes('sub/trace.log') || undefined, { what: 'sub/trace.log to be committed once no longer ignored' });
    await writeFile(path.join(dir, 'sub/x.bak'), 'backup');
    await writeFile(path.join(dir, 'sub/after.txt'), 'after');
    await waitFor(async () => (await treePaths(dir)).includes('sub/after.txt') || undefined, { what: 'sub/after.txt to be committed' });
    expect(await treePaths(dir)).not.toContain('sub/x.bak');
  });
});
