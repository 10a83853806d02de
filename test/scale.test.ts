import { afterEach, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { mkdirSync, symlinkSync, writeFileSync, chmodSync } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import path from 'node:path';
import { fsckStrict, git, lsTree, statusPorcelain } from './helpers/git.js';
import { configText, run, startController, type RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

// Correctness at scale (issue 5): a big tree committed byte-exact, and a burst from another process
// big enough to overflow inotify's queue (16,384 events by default) with nothing lost. No timing
// assertions: the benchmark (npm run bench) measures speed. Sized to fit CI's budget.
const FILES = 20_000;
const REWRITTEN = 12_000;
const ADDED = 1_500;
const DELETED = 400;

let controllers: RunningController[] = [];
afterEach(async () => {
  for (const c of controllers) await c.stop();
  controllers = [];
  await cleanupTmpDirs();
});

/** File i's path: 25 files per folder, three levels deep, like a source tree. */
function rel(i: number): string {
  const leaf = Math.floor(i / 25);
  return `pkg${Math.floor(leaf / 100)}/mod${Math.floor(leaf / 10) % 10}/part${leaf % 10}/f${i}.txt`;
}

/** Contents of varied sizes: empty, small text, a few KB, and binary bytes. */
function content(i: number): Buffer {
  if (i % 997 === 0) return Buffer.alloc(0);
  if (i % 101 === 0) return Buffer.from(Array.from({ length: 4096 }, (_, k) => (i * 31 + k * 7) & 0xff));
  return Buffer.from(`file ${i}\n${'x'.repeat(i % 3000)}\n`);
}

describe('at scale', () => {
  it(`[slow] commits a ${FILES.toLocaleString('en')}-file tree byte-exact, then a burst of ${REWRITTEN.toLocaleString('en')} rewrites from another process with nothing lost`, async () => {
    const dir = await makeTmpDir('scale');
    const logFile = path.join(await makeTmpDir('logs'), 'cascade-sync.log');
    const folders = new Set<string>();
    for (let i = 0; i < FILES; i++) {
      const p = rel(i);
      const d = path.dirname(p);
      if (!folders.has(d)) mkdirSync(path.join(dir, d), { recursive: true }), folders.add(d);
      writeFileSync(path.join(dir, p), content(i));
    }
    chmodSync(path.join(dir, rel(1001)), 0o755);
    symlinkSync('f0.txt', path.join(dir, 'pkg0/mod0/part0/link'));
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), configText({ logFile, debounce: '1s', batchWindow: '10s' }));
    const init = await run(dir, ['init']);
    expect(init.code, init.stderr).toBe(0);
    expect(await statusPorcelain(dir)).toEqual([]);
    await fsckStrict(dir);
    expect((await lsTree(dir, 'develop')).length).toBe(FILES + 2);

    const c = await startController(dir);
    controllers.push(c);
    const before = await git(dir, 'rev-parse', 'develop');
    // Another process rewrites, adds (in new folders) and deletes files as fast as it can.
    const script = `
      const fs = require('fs'), path = require('path');
      const [dir, rewritten, added, deleted, files] = process.argv.slice(1);
      const rel = ${rel.toString()};
      for (let i = 0; i < +rewritten; i++) fs.writeFileSync(path.join(dir, rel(i * 2 % +files)), 'rewritten ' + i + '\\n');
      for (let i = 0; i < +added; i++) {
        const d = path.join(dir, 'new', 'n' + Math.floor(i / 50));
        if (i % 50 === 0) fs.mkdirSync(d, { recursive: true });
        fs.writeFileSync(path.join(d, 'a' + i + '.txt'), 'added ' + i + '\\n');
      }
      for (let i = 0; i < +deleted; i++) fs.rmSync(path.join(dir, rel(i * 2 + 1)));
    `;
    await promisify(execFile)(process.execPath, ['-e', script, dir, String(REWRITTEN), String(ADDED), String(DELETED), String(FILES)]);
    await waitFor(async () => (await git(dir, 'rev-parse', 'develop')) !== before || undefined, { what: 'the first commit of the burst', timeoutMs: 120_000 });
    // Nothing lost: the branch, the index and the working tree agree (native git as the oracle).
    await waitFor(async () => (await statusPorcelain(dir)).length === 0 || undefined, { what: 'every change of the burst committed', timeoutMs: 180_000, intervalMs: 1000 });
    const tree = new Map((await lsTree(dir, 'develop')).map((e) => [e.path, e]));
    expect(tree.size).toBe(FILES + 2 + ADDED - DELETED);
    expect(tree.get('new/n0/a0.txt')).toBeDefined();
    expect(tree.has(rel(1))).toBe(false);
    expect(await git(dir, 'show', `develop:${rel(10_000)}`)).toBe('rewritten 5000');
    expect(tree.get(rel(1001))?.mode).toBe('100755');
    expect(tree.get('pkg0/mod0/part0/link')?.mode).toBe('120000');
    // A burst bigger than one pass takes (2,500 paths) is a few commits, each bounded in size.
    const commits = (await git(dir, 'rev-list', `${before}..develop`)).split('\n').filter(Boolean);
    const sizes = await Promise.all(commits.map(async (c) => (await git(dir, 'diff-tree', '-r', '--name-only', '--no-commit-id', c)).split('\n').filter(Boolean).length));
    expect(commits.length, `changed paths per commit: ${sizes.join(', ')}`).toBeGreaterThanOrEqual(5);
    expect(commits.length, `changed paths per commit: ${sizes.join(', ')}`).toBeLessThanOrEqual(10);
    for (const n of sizes) expect(n).toBeLessThanOrEqual(2_500);
    // Every path of the burst is in one of them (rewrites wrap around after FILES / 2).
    expect(sizes.reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(Math.min(REWRITTEN, FILES / 2) + ADDED + DELETED);
    await fsckStrict(dir);
  }, 300_000);

  it('edits made while stopped, more than one pass takes, become commits of at most 2,500 paths each, with nothing lost', async () => {
    const dir = await makeTmpDir('scale-start');
    for (let i = 0; i < 3_000; i++) {
      if (i % 25 === 0) mkdirSync(path.join(dir, path.dirname(rel(i))), { recursive: true });
      writeFileSync(path.join(dir, rel(i)), `file ${i}\n`);
    }
    const logFile = path.join(await makeTmpDir('logs'), 'cascade-sync.log');
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), configText({ logFile }));
    const init = await run(dir, ['init']);
    expect(init.code, init.stderr).toBe(0);
    const before = await git(dir, 'rev-parse', 'develop');
    // While no controller runs: 3,000 files rewritten and 3,000 added, found by the start's whole-tree scan.
    for (let i = 0; i < 3_000; i++) writeFileSync(path.join(dir, rel(i)), `rewritten ${i}\n`);
    mkdirSync(path.join(dir, 'new'));
    for (let i = 0; i < 3_000; i++) writeFileSync(path.join(dir, 'new', `a${i}.txt`), `added ${i}\n`);
    controllers.push(await startController(dir));
    await waitFor(async () => (await statusPorcelain(dir)).length === 0 || undefined, { what: 'every edit committed', timeoutMs: 120_000, intervalMs: 500 });
    // Ready means what was edited while stopped is committed (all three passes), unless a pass failed
    // first (a lock held by git's own maintenance, say: the pass is retried, and status says why).
    const log = (await readFile(logFile, 'utf8')).split('\n').filter(Boolean).map((l) => JSON.parse(l));
    const beforeReady = log.slice(0, log.findIndex((l) => /^ready /.test(l.msg)));
    const failed = beforeReady.filter((l) => l.reconciler === 'sandbox' && l.level !== 'info' && l.level !== 'debug');
    if (!failed.length) expect(beforeReady.filter((l) => /^committed /.test(l.msg)).length).toBe(3);
    const commits = (await git(dir, 'rev-list', '--reverse', `${before}..develop`)).split('\n').filter(Boolean);
    const sizes = await Promise.all(commits.map(async (c) => (await git(dir, 'diff-tree', '-r', '--name-only', '--no-commit-id', c)).split('\n').filter(Boolean).length));
    expect(sizes).toEqual([2_500, 2_500, 1_000]);
    // The start says where its time went: every folder but .git watched, the passes of the first scan timed.
    const ready = log.find((l) => /^ready /.test(l.msg));
    const folders = (await readdir(dir, { recursive: true, withFileTypes: true })).filter((e) => e.isDirectory() && !path.relative(dir, path.join(e.parentPath, e.name)).split(path.sep).includes('.git'));
    expect(ready?.msg).toMatch(/^ready [\d.]+ s after the process started: loading and opening [\d.]+ s \(of which the encryption check [\d.]+ s\), watching \d+ folder\(s\) [\d.]+ s, the first whole-tree scan and its commits [\d.]+ s$/);
    expect(ready.folders).toBe(folders.length + 1);
    expect(ready.readyMs).toBeGreaterThanOrEqual(ready.openMs + ready.watchMs + ready.firstPassMs - 2);
    expect((await lsTree(dir, 'develop')).length).toBe(6_001);
    expect(await git(dir, 'show', `develop:${rel(2_999)}`)).toBe('rewritten 2999');
    expect(await git(dir, 'show', 'develop:new/a2999.txt')).toBe('added 2999');
    await fsckStrict(dir);
  }, 180_000);
});
