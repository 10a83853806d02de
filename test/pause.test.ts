import { afterEach, describe, expect, it } from 'vitest';
import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { git, lsTree, makeBareRepo, revParse, tryRevParse } from './helpers/git.js';
import { configText, makeSandbox, run, startController, type RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';
import { withoutPushesWhenPaused, type RemoteAction } from '../reconcilers/remote.js';
import type { RemoteSpec } from '../src/config/types.js';

let controllers: RunningController[] = [];
afterEach(async () => {
  for (const c of controllers) await c.stop();
  controllers = [];
  await cleanupTmpDirs();
});

async function status(dir: string) {
  return JSON.parse(await readFile(path.join(dir, '.git/cascade-sync/status.json'), 'utf8'));
}

const CONFIG = 'cascade-sync-config.yaml';

/** The test config with `sandbox.paused: true`. */
function pauseSandbox(text: string): string {
  const out = text.replace(/^sandbox:\n/m, 'sandbox:\n  paused: true\n');
  expect(out).not.toBe(text);
  return out;
}

/** The test config with `paused: true` on the remote named `name`. */
function pauseRemote(text: string, name: string): string {
  const out = text.replace(new RegExp(`^(  - name: ${name}\\n    url: .*\\n)`, 'm'), '$1    paused: true\n');
  expect(out).not.toBe(text);
  return out;
}

/** Holds for `ms` that `fn` stays true (an absence can only be shown over a span of time). */
async function staysTrue(fn: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (!(await fn())) throw new Error(`no longer true: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('sandbox.paused', () => {
  it('stops committing while paused (edits wait, status says so) and commits everything as one batch when unpaused', async () => {
    const { dir, logFile } = await makeSandbox({ files: { 'keep.txt': 'old\n', 'gone.txt': 'bye\n' } });
    const c = await startController(dir);
    controllers.push(c);
    const plain = configText({ logFile });
    await writeFile(path.join(dir, CONFIG), pauseSandbox(plain));
    await waitFor(async () => (await status(dir)).sandbox.paused === true || undefined, { what: 'status to show the pause' });
    await writeFile(path.join(dir, 'a.txt'), 'a\n');
    await waitFor(async () => (await status(dir)).reconcilers.find((r: { name: string }) => r.name === 'sandbox')?.lastError?.reason === 'Paused' || undefined, { what: 'a paused sandbox pass' });
    const head0 = await revParse(dir, 'develop');
    expect((await lsTree(dir, head0)).map((e) => e.path)).not.toContain('a.txt');
    await writeFile(path.join(dir, 'b.txt'), 'b\n');
    await writeFile(path.join(dir, 'keep.txt'), 'new\n');
    await rm(path.join(dir, 'gone.txt'));
    await waitFor(async () => (await status(dir)).sandbox.pendingPaths >= 4 || undefined, { what: 'the edits to be pending' });
    // Longer than a debounce and a batch window: nothing is committed while paused.
    await staysTrue(async () => (await revParse(dir, 'develop')) === head0, 3_000, 'develop stays where it was while paused');

    const st = await status(dir);
    const rec = st.reconcilers.find((r: { name: string }) => r.name === 'sandbox');
    expect(rec.lastError).toMatchObject({ kind: 'Waiting', reason: 'Paused' });
    const text = await run(dir, ['status']);
    expect(text.stdout).toMatch(/PAUSED \(sandbox\.paused: true\): nothing is committed/);
    const json = JSON.parse((await run(dir, ['status', '--json'])).stdout);
    expect(JSON.stringify(json)).toMatch(/"paused":true/);
    const plan = await run(dir, ['plan']);
    expect(plan.stdout).toMatch(/sandbox: blocked: the sandbox is paused \(sandbox\.paused: true\)/);

    await writeFile(path.join(dir, CONFIG), plain);
    await waitFor(async () => (await revParse(dir, 'develop')) !== head0 || undefined, { what: 'the batch after unpausing', timeoutMs: 30_000 });
    await waitFor(async () => (await status(dir)).sandbox.pendingPaths === 0 || undefined, { what: 'nothing pending' });
    const commits = (await git(dir, 'rev-list', `${head0}..develop`)).trim().split('\n').filter(Boolean);
    expect(commits).toHaveLength(1);
    const changed = (await git(dir, 'diff', '--name-status', head0, 'develop')).trim().split('\n').sort();
    // The config went back to what head0 holds: the pause itself never reached a commit.
    expect(changed).toEqual(['A\ta.txt', 'A\tb.txt', 'D\tgone.txt', 'M\tkeep.txt'].sort());
    expect((await status(dir)).sandbox.paused).toBeUndefined();
    expect((await git(dir, 'status', '--porcelain')).trim()).toBe('');
  }, 90_000);
});

describe('remotes[].paused', () => {
  it('keeps committing but pushes nothing to a paused remote (fetching goes on), and pushes what waited when unpaused', async () => {
    const remote = path.join(await makeTmpDir('remote'), 'r.git');
    await makeBareRepo(remote, { initialBranch: 'develop' });
    const remotes = [{ name: 'origin', url: remote }];
    const { dir, logFile } = await makeSandbox({ remotes });
    const c = await startController(dir);
    controllers.push(c);
    await waitFor(async () => (await tryRevParse(remote, 'develop')) === (await revParse(dir, 'develop')) || undefined, { what: 'the first push' });
    const plain = configText({ logFile, remotes });
    await writeFile(path.join(dir, CONFIG), pauseRemote(plain, 'origin'));
    await waitFor(async () => (await status(dir)).remotes[0]?.paused === true || undefined, { what: 'status to show the paused remote' });
    // The config edit itself may have been pushed before the reload: the remote's tip from here on is the baseline.
    const before = await waitFor(async () => {
      const s = (await status(dir)).reconcilers.find((r: { name: string }) => r.name === 'remote:origin');
      return s?.lastSummary?.includes('paused') ? await tryRevParse(remote, 'develop') : undefined;
    }, { what: 'a paused remote pass' });
    await writeFile(path.join(dir, 'new.txt'), 'new\n');
    await waitFor(async () => (await lsTree(dir, 'develop')).some((e) => e.path === 'new.txt') || undefined, { what: 'new.txt committed locally' });
    const local = await revParse(dir, 'develop');
    await waitFor(async () => (await status(dir)).remotes[0]?.relation === 'ahead' || undefined, { what: 'the remote pass to see the local commits ahead' });
    await staysTrue(async () => (await tryRevParse(remote, 'develop')) === before, 2_500, 'the paused remote stays unchanged');
    expect((await lsTree(remote, 'develop')).map((e) => e.path)).not.toContain('new.txt');
    const st = await status(dir);
    const rec = st.reconcilers.find((r: { name: string }) => r.name === 'remote:origin');
    expect(rec.lastSummary).toMatch(/paused \(remotes\[\]\.paused: true\): not pushing; commits wait locally/);
    expect((await run(dir, ['status'])).stdout).toMatch(/remote origin: .*ahead, PAUSED \(remotes\[\]\.paused: true\): not pushing/);

    await writeFile(path.join(dir, CONFIG), plain);
    await waitFor(async () => {
      const theirs = await tryRevParse(remote, 'develop');
      return theirs && theirs === (await revParse(dir, 'develop')) && theirs !== local ? theirs : undefined;
    }, { what: 'the waiting commits pushed after unpausing', timeoutMs: 30_000 });
    expect((await lsTree(remote, 'develop')).map((e) => e.path)).toContain('new.txt');
    expect((await status(dir)).remotes[0]?.paused).toBeUndefined();
  }, 90_000);

  it('plans no push of any branch to a paused remote and keeps fetches and merges', () => {
    const spec = (paused: boolean): RemoteSpec => ({ name: 'origin', url: '/r.git', kind: 'local', timeoutMs: 1000, ...(paused ? { paused: true } : {}) });
    const actions: RemoteAction[] = [
      { type: 'merge', theirs: 'b'.repeat(40), base: null },
      { type: 'push', commit: '(merge)' },
      { type: 'push-environment', environment: 'staging', branch: 'staging', commit: 'c'.repeat(40), force: false, expected: null },
      { type: 'follow-environment', environment: 'production', branch: 'main', from: null, to: 'd'.repeat(40), keep: false },
    ];
    expect(withoutPushesWhenPaused(spec(false), actions)).toEqual(actions);
    expect(withoutPushesWhenPaused(spec(true), actions).map((a) => a.type)).toEqual(['merge', 'follow-environment']);
  });
});
