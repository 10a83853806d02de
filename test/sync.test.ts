import { afterEach, describe, expect, it } from 'vitest';
import { appendFile, chmod, link, mkdir, readFile, rename, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { fsckStrict, git, logOneline, lsTree, showFile, statusPorcelain } from './helpers/git.js';
import { makeSandbox, startController, type RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

let controllers: RunningController[] = [];
afterEach(async () => {
  for (const c of controllers) await c.stop();
  controllers = [];
  await cleanupTmpDirs();
});

async function start(dir: string): Promise<RunningController> {
  if (process.env.DEBUG_CTL) { const c = await startController(dir); controllers.push(c); const t = setInterval(() => {}, 1000); afterEach(() => { clearInterval(t); console.log(c.stdout.text()); }); return c; }
  const c = await startController(dir);
  controllers.push(c);
  return c;
}

/** Waits until develop has `n` more commits than `before` and returns the subjects, newest first. */
async function commitsAfter(dir: string, before: number, n = 1): Promise<string[]> {
  return waitFor(async () => {
    const log = await logOneline(dir, 'develop');
    return log.length >= before + n ? log : undefined;
  }, { what: `${n} new commit(s) on develop` });
}

/** Oracle: the commit's tree equals the working tree (git status clean) and fsck is clean. */
async function expectFaithful(dir: string): Promise<void> {
  await waitFor(async () => (await statusPorcelain(dir)).length === 0 || undefined, { what: 'git status --porcelain to be clean' });
  await fsckStrict(dir);
}

describe('sandbox -> develop', () => {
  it('commits a burst of edits as one commit with a descriptive message', async () => {
    const { dir } = await makeSandbox({ files: { 'src/app.ts': 'a', 'README.md': 'r', 'docs/intro.md': 'i' } });
    await start(dir);
    const before = (await logOneline(dir, 'develop')).length;
    await writeFile(path.join(dir, 'src/app.ts'), 'a2');
    await writeFile(path.join(dir, 'README.md'), 'r2');
    await writeFile(path.join(dir, 'new.txt'), 'n');
    const log = await commitsAfter(dir, before);
    expect(log[0]).toBe('sync: 2 modified, 1 added (README.md, src/app.ts, new.txt)');
    const body = await git(dir, 'log', '-1', '--format=%b', 'develop');
    expect(body.split('\n')).toEqual(['M README.md', 'M src/app.ts', 'A new.txt']);
    await expectFaithful(dir);
    // Quiet afterwards: no further commit for the same content.
    expect((await logOneline(dir, 'develop')).length).toBe(before + 1);
  });

  it('waits for debounce quiet, but cuts a never-quiet burst at batchWindow', async () => {
    const { dir } = await makeSandbox({ debounce: '1s', batchWindow: '3s' });
    await start(dir);
    const before = (await logOneline(dir, 'develop')).length;
    const t0 = Date.now();
    // Keep writing every 300 ms for 6 s: debounce never elapses, so only the window can cut batches.
    let i = 0;
    const writer = (async () => {
      while (Date.now() - t0 < 6000) {
        await writeFile(path.join(dir, 'busy.txt'), `edit ${i++}`);
        await new Promise((r) => setTimeout(r, 300));
      }
    })();
    const firstCommitAt = await waitFor(async () => ((await logOneline(dir, 'develop')).length > before ? Date.now() : undefined), { what: 'the first batch' });
    await writer;
    // The first batch came while edits kept coming, i.e. the window cut it, not the debounce.
    expect(firstCommitAt - t0).toBeLessThan(6000);
    await waitFor(async () => (await showFile(dir, 'develop', 'busy.txt')).toString() === `edit ${i - 1}` || undefined, { what: 'the last edit committed' });
    const n = (await logOneline(dir, 'develop')).length - before;
    // 6 s of edits with a 3 s window: two or three batches, never one per edit (20 edits).
    expect(n).toBeGreaterThanOrEqual(2);
    expect(n).toBeLessThanOrEqual(4);
    await expectFaithful(dir);
  });

  it('commits one edit after debounce of quiet, long before batchWindow', async () => {
    // The window (20 s) is far beyond the upper bound below: only the debounce can make this commit.
    const { dir } = await makeSandbox({ debounce: '500ms', batchWindow: '20s' });
    await start(dir);
    const before = (await logOneline(dir, 'develop')).length;
    const t0 = Date.now();
    await writeFile(path.join(dir, 'once.txt'), 'one edit');
    const landedAfter = await waitFor(async () => ((await logOneline(dir, 'develop')).length > before ? Date.now() - t0 : undefined), { what: 'the debounced commit', intervalMs: 20, timeoutMs: 30_000 });
    // The watcher event comes after t0 and the batch is due 500 ms after it: never earlier (margin for clock granularity).
    expect(landedAfter).toBeGreaterThanOrEqual(450);
    expect(landedAfter).toBeLessThan(8000);
    expect(await logOneline(dir, 'develop')).toHaveLength(before + 1);
    expect((await showFile(dir, 'develop', 'once.txt')).toString()).toBe('one edit');
    await expectFaithful(dir);
  });

  it('commits at the periodic rescan a change the watcher cannot see (a write through a hard link outside the sandbox)', async () => {
    const { dir } = await makeSandbox({ files: { 'linked.txt': 'line 1\n' }, rescan: '5s' });
    const outside = path.join(await makeTmpDir('outside'), 'linked.txt');
    // Same filesystem (both in the temp dir): one inode, two names. The sandbox folder's inotify
    // watch reports only writes made through its own entry, not through the other name.
    await link(path.join(dir, 'linked.txt'), outside);
    await start(dir);
    const before = (await logOneline(dir, 'develop')).length;
    await appendFile(outside, 'line 2, written through the outside name\n');
    expect(await readFile(path.join(dir, 'linked.txt'), 'utf8')).toBe('line 1\nline 2, written through the outside name\n');
    await waitFor(async () => (await showFile(dir, 'develop', 'linked.txt')).toString().includes('line 2') || undefined, { what: 'the rescan to commit the change', timeoutMs: 60_000 });
    const log = await logOneline(dir, 'develop');
    expect(log).toHaveLength(before + 1);
    expect(log[0]).toBe('sync: 1 modified (linked.txt)');
    await expectFaithful(dir);
  }, 90_000);

  it('commits a file named back\\slash.txt, its edit and its deletion, and keeps committing afterwards', async () => {
    const { dir } = await makeSandbox();
    await start(dir);
    const name = 'back\\slash.txt';
    let n = (await logOneline(dir, 'develop')).length;
    await writeFile(path.join(dir, name), 'one');
    await commitsAfter(dir, n);
    expect((await showFile(dir, 'develop', name)).toString()).toBe('one');
    n = (await logOneline(dir, 'develop')).length;
    await writeFile(path.join(dir, name), 'two');
    await commitsAfter(dir, n);
    expect((await showFile(dir, 'develop', name)).toString()).toBe('two');
    n = (await logOneline(dir, 'develop')).length;
    await rm(path.join(dir, name));
    await commitsAfter(dir, n);
    expect((await lsTree(dir, 'develop')).map((e) => e.path)).not.toContain(name);
    n = (await logOneline(dir, 'develop')).length;
    await writeFile(path.join(dir, 'later.txt'), 'still working');
    await commitsAfter(dir, n);
    expect((await showFile(dir, 'develop', 'later.txt')).toString()).toBe('still working');
    await expectFaithful(dir);
  });

  it('makes no commit for a touch that changes no content', async () => {
    const { dir } = await makeSandbox({ files: { 'a.txt': 'same' } });
    await start(dir);
    const before = await logOneline(dir, 'develop');
    const future = new Date(Date.now() + 5000);
    await utimes(path.join(dir, 'a.txt'), future, future);
    await writeFile(path.join(dir, 'a.txt'), 'same');
    // git finds the content unchanged (the index's stat data is only refreshed): a later edit is
    // committed alone, and the touched file is in no commit.
    await writeFile(path.join(dir, 'b.txt'), 'after the touch');
    await commitsAfter(dir, before.length);
    expect((await git(dir, 'log', '-1', '--format=%b', 'develop')).split('\n')).toEqual(['A b.txt']);
    expect((await logOneline(dir, 'develop')).length).toBe(before.length + 1);
    await expectFaithful(dir);
  });

  it('keeps content exactly: exec bit, symlink, binary, nested dirs, deletion, rename, case-only rename', async () => {
    const { dir } = await makeSandbox({ files: { 'old.txt': 'rename me', 'Readme.md': 'case', 'gone.txt': 'bye' } });
    await start(dir);
    const before = (await logOneline(dir, 'develop')).length;
    const binary = randomBytes(70_000);
    await mkdir(path.join(dir, 'a/b/c'), { recursive: true });
    await writeFile(path.join(dir, 'a/b/c/deep.bin'), binary);
    await writeFile(path.join(dir, 'run.sh'), '#!/bin/sh\necho hi\n');
    await chmod(path.join(dir, 'run.sh'), 0o755);
    await symlink('a/b/c/deep.bin', path.join(dir, 'link'));
    await rm(path.join(dir, 'gone.txt'));
    await rename(path.join(dir, 'old.txt'), path.join(dir, 'new.txt'));
    await rename(path.join(dir, 'Readme.md'), path.join(dir, 'README.md'));
    await commitsAfter(dir, before);
    await waitFor(async () => (await lsTree(dir, 'develop')).some((e) => e.path === 'README.md') || undefined, { what: 'all changes committed' });
    const tree = new Map((await lsTree(dir, 'develop')).map((e) => [e.path, e]));
    expect(tree.get('run.sh')?.mode).toBe('100755');
    expect(tree.get('link')?.mode).toBe('120000');
    expect((await showFile(dir, 'develop', 'link')).toString()).toBe('a/b/c/deep.bin');
    expect((await showFile(dir, 'develop', 'a/b/c/deep.bin')).equals(binary)).toBe(true);
    expect(tree.has('gone.txt')).toBe(false);
    expect(tree.has('old.txt')).toBe(false);
    expect((await showFile(dir, 'develop', 'new.txt')).toString()).toBe('rename me');
    expect(tree.has('Readme.md')).toBe(false);
    expect(tree.get('README.md')).toBeDefined();
    const subjects = (await logOneline(dir, 'develop')).slice(0, (await logOneline(dir, 'develop')).length - before).join('\n');
    expect(subjects).toMatch(/renamed/);
    await expectFaithful(dir);
    // An exec bit removed later is committed too (core.filemode=true).
    const n = (await logOneline(dir, 'develop')).length;
    await chmod(path.join(dir, 'run.sh'), 0o644);
    await commitsAfter(dir, n);
    expect((await lsTree(dir, 'develop')).find((e) => e.path === 'run.sh')?.mode).toBe('100644');
    await expectFaithful(dir);
  });

  it("handles editors' atomic saves and vim-style saves", async () => {
    // A debounce well above the few milliseconds the saves take, so both saves are one batch even on a loaded machine.
    const { dir } = await makeSandbox({ files: { 'doc.txt': 'v1\n', 'vim.txt': 'v1\n' }, debounce: '1s', batchWindow: '5s' });
    await start(dir);
    const before = (await logOneline(dir, 'develop')).length;
    // Atomic save: write a temp file, rename it over the original.
    await writeFile(path.join(dir, '.doc.txt.swx'), 'v2\n');
    await rename(path.join(dir, '.doc.txt.swx'), path.join(dir, 'doc.txt'));
    // vim (backupcopy=no): rename the original to a backup, write a new file, delete the backup; plus a 4913 probe.
    await writeFile(path.join(dir, '4913'), '');
    await rm(path.join(dir, '4913'));
    await rename(path.join(dir, 'vim.txt'), path.join(dir, 'vim.txt~'));
    await writeFile(path.join(dir, 'vim.txt'), 'v2\n');
    await rm(path.join(dir, 'vim.txt~'));
    await commitsAfter(dir, before);
    await waitFor(async () => (await showFile(dir, 'develop', 'vim.txt')).toString() === 'v2\n' || undefined, { what: 'vim save committed' });
    expect((await showFile(dir, 'develop', 'doc.txt')).toString()).toBe('v2\n');
    const paths = (await lsTree(dir, 'develop')).map((e) => e.path);
    expect(paths).not.toContain('.doc.txt.swx');
    expect(paths).not.toContain('vim.txt~');
    expect(paths).not.toContain('4913');
    await expectFaithful(dir);
    // Exactly one commit, two modifications: a batch that committed the original's deletion, the
    // temp file or the vim.txt~ backup (even if a later batch undid it) fails here.
    const log = await logOneline(dir, 'develop');
    expect(log.slice(0, log.length - before)).toEqual(['sync: 2 modified (doc.txt, vim.txt)']);
    expect((await git(dir, 'log', '-1', '--format=%b', 'develop')).split('\n')).toEqual(['M doc.txt', 'M vim.txt']);
  });

  it('never commits excluded paths: every default exclusion and .gitignore, and native git agrees', async () => {
    const { dir } = await makeSandbox({ files: { '.gitignore': 'secret.key\nlogs/\n' } });
    await start(dir);
    const before = (await logOneline(dir, 'develop')).length;
    const excluded = ['x.tmp', '.cache/c', 'node_modules/m/index.js', 'app.pid', 'nohup.out', '.venv/bin/python', 'dist/out.js', 'build/out.o', 'sub/node_modules/n.js', 'secret.key', 'logs/today.log'];
    for (const p of excluded) {
      await mkdir(path.dirname(path.join(dir, p)), { recursive: true });
      await writeFile(path.join(dir, p), 'excluded');
    }
    await writeFile(path.join(dir, 'kept.txt'), 'kept');
    await commitsAfter(dir, before);
    const paths = (await lsTree(dir, 'develop')).map((e) => e.path);
    expect(paths).toContain('kept.txt');
    for (const p of excluded) expect(paths).not.toContain(p);
    // .git/info/exclude carries the config's patterns, so native git status agrees: nothing untracked.
    await expectFaithful(dir);
    expect(await readFile(path.join(dir, '.git/info/exclude'), 'utf8')).toContain('node_modules/');
  });

  it("never commits its own log file when it lives inside the sandbox (no commit loop)", async () => {
    const { dir } = await makeSandbox();
    const config = await readFile(path.join(dir, 'cascade-sync-config.yaml'), 'utf8');
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), config.replace(/logging: \{ file: [^,]+,/, 'logging: { file: ./cascade-sync.log,'));
    await git(dir, 'commit', '-qam', 'log inside');
    await start(dir);
    const before = (await logOneline(dir, 'develop')).length;
    await writeFile(path.join(dir, 'a.txt'), 'a');
    await commitsAfter(dir, before);
    await writeFile(path.join(dir, 'b.txt'), 'b');
    await waitFor(async () => (await lsTree(dir, 'develop')).some((e) => e.path === 'b.txt') || undefined, { what: 'b.txt committed' });
    expect((await logOneline(dir, 'develop')).length).toBe(before + 2);
    expect((await lsTree(dir, 'develop')).map((e) => e.path)).not.toContain('cascade-sync.log');
    expect(await readFile(path.join(dir, 'cascade-sync.log'), 'utf8')).toMatch(/committed/);
    await expectFaithful(dir);
  });

  it('[slow] commits a burst of 10,000 files as one commit (or a few), then rescans for events inotify may have dropped', async () => {
    const { dir, logFile } = await makeSandbox({ debounce: '1s', batchWindow: '10s' });
    await start(dir);
    const before = (await logOneline(dir, 'develop')).length;
    for (let d = 0; d < 100; d++) {
      await mkdir(path.join(dir, `burst/d${d}`), { recursive: true });
      await Promise.all(Array.from({ length: 100 }, (_, f) => writeFile(path.join(dir, `burst/d${d}/f${f}.txt`), `file ${d}/${f}\n`)));
    }
    await waitFor(async () => (await lsTree(dir, 'develop')).filter((e) => e.path.startsWith('burst/')).length === 10_000 || undefined, { what: 'all 10,000 files committed', timeoutMs: 150_000 });
    const n = (await logOneline(dir, 'develop')).length - before;
    expect(n).toBeGreaterThanOrEqual(1);
    expect(n).toBeLessThanOrEqual(3);
    expect((await logOneline(dir, 'develop'))[0]).toMatch(/added/);
    await waitFor(async () => /a burst of \d+ changed paths: rescanning the whole sandbox/.test(await readFile(logFile, 'utf8')) || undefined, { what: 'the post-burst rescan' });
    await expectFaithful(dir);
  }, 240_000);
});
