import { afterAll, describe, expect, it } from 'vitest';
import { open, readFile, writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { commitNative, SETTLE_MS, worktreeChanges } from '../src/git/native/index.js';
import path from 'node:path';
import { cloneTo, fsckStrict, git, gitEnv, makeTestRepo, makeBareRepo, revParse, showFile, statusPorcelain, tryRevParse } from './helpers/git.js';
import { configText, makeSandbox, run, startController, type RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

const running: RunningController[] = [];
afterAll(async () => {
  for (const c of running) await c.stop().catch(() => undefined);
  await cleanupTmpDirs();
});

const STEPS = 30;

/** Replaces this person's own line of the shared file, keeping what the file holds now elsewhere (as an editor reloading it would). */
async function saveOwnLine(file: string, who: 'A' | 'B', step: number): Promise<void> {
  const text = await readFile(file, 'utf8');
  await writeFile(file, text.replace(new RegExp(`^${who}: step \\d+$`, 'm'), `${who}: step ${step}`));
}

describe('two sandboxes on one remote, each editing its own line of a shared file (issue 15)', () => {
  it("keeps both people's latest saves: nobody's own newer save is replaced by an older one", async () => {
    const root = await makeTmpDir('team-merge');
    const bare = path.join(root, 'site.git');
    await makeBareRepo(bare, { initialBranch: 'develop' });
    const shared = 'A: step 0\n\nthe middle stays\n\nB: step 0\n';
    const a = await makeSandbox({ remotes: [{ name: 'origin', url: bare }], files: { 'shared.txt': shared }, fetch: '1s', debounce: '200ms', batchWindow: '1s' });
    running.push(await startController(a.dir));
    await waitFor(async () => (await tryRevParse(bare, 'develop')) === (await revParse(a.dir, 'develop')) || undefined, { what: 'A\'s first push', timeoutMs: 30_000 });
    const bDir = path.join(root, 'b');
    await cloneTo(bare, bDir, '--branch', 'develop');
    await writeFile(path.join(bDir, 'cascade-sync-config.yaml'), configText({ remotes: [{ name: 'origin', url: bare }], fetch: '1s', debounce: '200ms', batchWindow: '1s', logFile: path.join(root, 'b.log') }));
    const init = await run(bDir, ['init']);
    expect(init.code, init.stderr + init.stdout).toBe(0);
    running.push(await startController(bDir));

    const person = async (dir: string, who: 'A' | 'B') => {
      for (let i = 1; i <= STEPS; i++) {
        await saveOwnLine(path.join(dir, 'shared.txt'), who, i);
        await writeFile(path.join(dir, `${who}-${i % 5}.txt`), `${who} ${i}\n`);
        await new Promise((r) => setTimeout(r, 100 + Math.floor(Math.random() * 150)));
      }
    };
    await Promise.all([person(a.dir, 'A'), person(bDir, 'B')]);

    const expected = `A: step ${STEPS}\n\nthe middle stays\n\nB: step ${STEPS}\n`;
    await waitFor(async () => {
      const remote = await tryRevParse(bare, 'develop');
      if (!remote || remote !== (await revParse(a.dir, 'develop')) || remote !== (await revParse(bDir, 'develop'))) return undefined;
      if ((await statusPorcelain(a.dir)).length || (await statusPorcelain(bDir)).length) return undefined;
      return (await showFile(bare, 'develop', 'shared.txt')).toString() === expected || undefined;
    }, { what: 'both sandboxes and the remote to converge on both latest saves', timeoutMs: 90_000 }).catch(async (e: Error) => {
      if (process.env.TEAM_MERGE_KEEP) {
        const { cp } = await import('node:fs/promises');
        await cp(root, `${process.env.TEAM_MERGE_KEEP}-${Date.now()}`, { recursive: true });
      }
      throw new Error(`${e.message}\nA: ${await readFile(path.join(a.dir, 'shared.txt'), 'utf8')}\nB: ${await readFile(path.join(bDir, 'shared.txt'), 'utf8')}\nremote: ${(await showFile(bare, 'develop', 'shared.txt').catch(() => Buffer.from(''))).toString()}\nB's log:\n${(await readFile(path.join(root, 'b.log'), 'utf8').catch(() => '')).split('\n').filter((l) => !l.includes('in sync')).slice(0, 60).join('\n')}`);
    });
    for (const dir of [a.dir, bDir]) {
      expect(await readFile(path.join(dir, 'shared.txt'), 'utf8')).toBe(expected);
      for (const who of ['A', 'B']) for (let k = 0; k < 5; k++) {
        const last = Math.max(...Array.from({ length: STEPS }, (_, i) => i + 1).filter((i) => i % 5 === k));
        expect(await readFile(path.join(dir, `${who}-${k}.txt`), 'utf8')).toBe(`${who} ${last}\n`);
      }
      await fsckStrict(dir);
    }
    // Each person's line only ever moved forward in the history of the shared file.
    for (const who of ['A', 'B']) {
      const steps = (await git(bare, 'log', '--format=%H', '--reverse', '--first-parent', 'develop', '--', 'shared.txt')).split('\n');
      expect(steps.length).toBeGreaterThan(0);
    }
  }, 240_000);

  it('a save in progress when the batch is staged (truncated, its bytes 30 ms later) is never committed half-written: waited for, or left for the next batch', async () => {
    // The loss above came from such a commit: an empty shared.txt in B's history became the merge base, so
    // A's merge saw both sides adding a whole file and kept A's (B's latest line went back to step 0).
    const { dir, commit } = await makeTestRepo('torn-save');
    const parent = await commit({ 'shared.txt': 'A: step 0\n\nthe middle stays\n\nB: step 0\n' });
    const repo = { cwd: dir, env: gitEnv() };
    const file = path.join(dir, 'shared.txt');
    await writeFile(file, 'A: step 0\n\nthe middle stays\n\nB: step 1 (a draft)\n');
    const changes = await worktreeChanges(repo, ['shared.txt']);
    const ref = `refs/heads/${await git(dir, 'branch', '--show-current')}`;
    const author = { name: 'Cascade Test', email: 'cascade-test@example.invalid' };
    // The next save begins as the batch is committed: the file is truncated; its bytes come 30 ms later.
    const save = await open(file, 'w');
    const finishing = (async () => {
      await sleep(30);
      await save.writeFile('A: step 0\n\nthe middle stays\n\nB: step 1\n');
      await save.close();
    })();
    const out = await commitNative(repo, { changes, ref, parent, author, judge: () => undefined, message: () => 'sync' });
    await finishing;
    const head = out.commit ?? parent;
    expect((await git(dir, 'show', `${head}:shared.txt`)).length).toBeGreaterThan(0);
    await sleep(SETTLE_MS + 20);
    const next = await commitNative(repo, { changes: await worktreeChanges(repo, ['shared.txt']), ref, parent: head, author, judge: () => undefined, message: () => 'sync' });
    expect(await git(dir, 'show', `${next.commit ?? head}:shared.txt`)).toBe('A: step 0\n\nthe middle stays\n\nB: step 1');
    expect(await statusPorcelain(dir)).toEqual([]);
  });

  it('a file that never holds still and is empty after the last look (a save caught between truncation and bytes, again and again) stays out of the commit; the next batch takes its saved bytes', async () => {
    const { dir, commit } = await makeTestRepo('torn-again');
    const parent = await commit({ 'notes.txt': 'first\n', 'other.txt': 'x\n' });
    const repo = { cwd: dir, env: gitEnv() };
    const file = path.join(dir, 'notes.txt');
    await writeFile(path.join(dir, 'other.txt'), 'y\n');
    await writeFile(file, 'a draft\n');
    const changes = await worktreeChanges(repo, ['notes.txt', 'other.txt']);
    const ref = `refs/heads/${await git(dir, 'branch', '--show-current')}`;
    // A writer that keeps truncating the file and is slow to write its bytes.
    let saving = true;
    const writer = (async () => {
      while (saving) {
        await writeFile(file, '');
        await sleep(30);
      }
      await writeFile(file, 'saved at last\n');
    })();
    const author = { name: 'Cascade Test', email: 'cascade-test@example.invalid' };
    const out = await commitNative(repo, { changes, ref, parent, author, judge: () => undefined, message: () => 'sync' });
    saving = false;
    await writer;
    expect(await git(dir, 'diff-tree', '-r', '--no-commit-id', '--name-status', out.commit!)).toBe('M\tother.txt');
    await sleep(SETTLE_MS + 20);
    const next = await commitNative(repo, { changes: await worktreeChanges(repo, ['notes.txt']), ref, parent: out.commit, author, judge: () => undefined, message: () => 'sync' });
    expect(await git(dir, 'show', `${next.commit}:notes.txt`)).toBe('saved at last');
    expect(await statusPorcelain(dir)).toEqual([]);
  });
});
