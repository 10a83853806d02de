/**
 * Git locks a crashed git leaves behind (issue 14): cleared at the controller's start in the sandbox
 * and in local remotes when no live process can hold them; a lock a live process holds is kept.
 * Real git killed with -9 mid-transaction, real lock files, a real controller.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { copyFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { clearStaleGitLocks, gitLockFiles } from '../src/git/native/locks.js';
import { cloneTo, commitFiles, fsckStrict, git, gitEnv, gitOk, makeBareRepo, revParse, showFile } from './helpers/git.js';
import { makeSandbox, startController } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});
afterAll(cleanupTmpDirs);

/**
 * A native `git update-ref --stdin` that has prepared a transaction on `ref` (so it holds the ref's lock)
 * and waits for more input: a git in the middle of a write. Resolves once git said `prepare: ok`.
 */
async function gitHoldingRefLock(cwd: string, ref: string, newOid: string, oldOid: string): Promise<ChildProcess> {
  const child = spawn('git', ['update-ref', '--stdin'], { cwd, env: gitEnv(), stdio: ['pipe', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stdin!.write(`start\nupdate ${ref} ${newOid} ${oldOid}\nprepare\n`);
  await waitFor(() => out.includes('prepare: ok') || undefined, { what: 'git to prepare the ref transaction' });
  return child;
}

async function killHard(child: ChildProcess): Promise<void> {
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
}

/** The lock files a crashed git leaves (what git writes into them: the index copy, an oid, a symref). */
async function leaveCrashedLocks(gitDir: string, bare: boolean): Promise<string[]> {
  const head = await revParse(gitDir, 'HEAD');
  const locks: [string, string][] = [
    ['HEAD.lock', 'ref: refs/heads/develop\n'],
    ['packed-refs.lock', '# pack-refs with: peeled fully-peeled sorted \n'],
    ['config.lock', '[core]\n'],
    ['shallow.lock', ''],
    ['refs/heads/develop.lock', `${head}\n`],
  ];
  if (!bare) await copyFile(path.join(gitDir, 'index'), path.join(gitDir, 'index.lock'));
  for (const [name, content] of locks) await writeFile(path.join(gitDir, name), content);
  return gitLockFiles(gitDir);
}

describe('clearStaleGitLocks', () => {
  it('removes what a crashed git left (index, HEAD, ref, packed-refs, config, shallow locks) and git works again', async () => {
    const dir = await makeTmpDir('locks-work');
    await git(dir, 'init', '-q', '-b', 'develop');
    await commitFiles(dir, { 'a.txt': 'a\n' }, 'first');
    const gitDir = path.join(dir, '.git');
    const left = await leaveCrashedLocks(gitDir, false);
    expect(left.map((p) => path.relative(gitDir, p))).toEqual(['HEAD.lock', 'config.lock', 'index.lock', 'packed-refs.lock', 'refs/heads/develop.lock', 'shallow.lock']);
    // git refuses to work while they exist.
    await writeFile(path.join(dir, 'b.txt'), 'b\n');
    const refused = await gitOk(dir, 'add', 'b.txt');
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/index\.lock': File exists/);

    const decisions = await clearStaleGitLocks([{ gitDir, workTree: dir }], { minAgeMs: 0 });
    expect(decisions.map((d) => [path.relative(gitDir, d.path), d.cleared])).toEqual(left.map((p) => [path.relative(gitDir, p), true]));
    expect(await gitLockFiles(gitDir)).toEqual([]);
    await git(dir, 'add', 'b.txt');
    await git(dir, 'commit', '-q', '-m', 'second');
    await fsckStrict(dir);
  });

  it('keeps a lock a live git holds mid-transaction; after kill -9 of that git it is removed', async () => {
    const remote = await makeTmpDir('locks-remote');
    const first = (await makeBareRepo(remote, { withCommit: true }))!;
    const clone = await cloneTo(remote, path.join(await makeTmpDir('locks-clone'), 'c'));
    const second = await commitFiles(clone, { 'x.txt': 'x\n' }, 'second');
    await git(clone, 'push', '-q', 'origin', 'HEAD:refs/heads/other');
    const lock = path.join(remote, 'refs/heads/develop.lock');
    // HEAD names develop: git locks HEAD too, for its reflog.
    const both = [path.join(remote, 'HEAD.lock'), lock];

    const live = await gitHoldingRefLock(remote, 'refs/heads/develop', second, first);
    expect(await gitLockFiles(remote)).toEqual(both);
    const kept = await clearStaleGitLocks([{ gitDir: remote }], { minAgeMs: 0 });
    expect(kept).toEqual(both.map((p) => ({ path: p, cleared: false, why: expect.stringMatching(/git process \d+ \(git update-ref --stdin\) works in this repository/) })));
    expect(await gitLockFiles(remote)).toEqual(both);

    await killHard(live);
    // The dead git's lock blocks everybody's pushes.
    const blocked = await gitOk(clone, 'push', 'origin', 'HEAD:refs/heads/develop');
    expect(blocked.code).not.toBe(0);
    expect(blocked.stderr).toMatch(/develop\.lock/);
    const cleared = await clearStaleGitLocks([{ gitDir: remote }], { minAgeMs: 0 });
    expect(cleared).toEqual(both.map((p) => ({ path: p, cleared: true, why: expect.stringContaining('no live process holds it') })));
    await git(clone, 'push', '-q', 'origin', 'HEAD:refs/heads/develop');
    expect(await revParse(remote, 'develop')).toBe(second);
    await fsckStrict(remote);
  });

  it('keeps a lock another (non-git) process has open', async () => {
    const dir = await makeTmpDir('locks-open');
    await git(dir, 'init', '-q', '-b', 'develop');
    await commitFiles(dir, { 'a.txt': 'a\n' }, 'first');
    const lock = path.join(dir, '.git', 'index.lock');
    await writeFile(lock, '');
    const fd = openSync(lock, 'r');
    const holder = spawn('sleep', ['60'], { stdio: [fd, 'ignore', 'ignore'] });
    closeSync(fd);
    children.push(holder);
    await waitFor(() => holder.pid !== undefined || undefined, { what: 'the holder to start' });
    const decisions = await clearStaleGitLocks([{ gitDir: path.join(dir, '.git'), workTree: dir }], { minAgeMs: 0 });
    expect(decisions).toEqual([{ path: lock, cleared: false, why: expect.stringMatching(/process \d+ \(sleep\) has it open/) }]);
    expect(existsSync(lock)).toBe(true);
    await killHard(holder);
    expect((await clearStaleGitLocks([{ gitDir: path.join(dir, '.git'), workTree: dir }], { minAgeMs: 0 }))[0]?.cleared).toBe(true);
  });
});

describe('the controller at start', () => {
  it('clears the locks a git killed with -9 left in the sandbox and in its local remote: commits and pushes work, no lock is left', async () => {
    const remote = path.join(await makeTmpDir('locks-ctl-remote'), 'site.git');
    await makeBareRepo(remote);
    const { dir } = await makeSandbox({ remotes: [{ name: 'origin', url: remote }] });
    await git(dir, 'push', '-q', remote, 'develop');
    const head = await revParse(dir, 'develop');
    // A push killed mid-write: receive-pack's ref transaction prepared in the remote, then kill -9.
    const empty = await git(dir, 'commit-tree', '-p', head, '-m', 'never lands', `${head}^{tree}`);
    await git(dir, 'push', '-q', remote, `${empty}:refs/heads/scratch`);
    await killHard(await gitHoldingRefLock(remote, 'refs/heads/develop', empty, await revParse(remote, 'develop')));
    // And a commit killed mid-write in the sandbox.
    await killHard(await gitHoldingRefLock(dir, 'refs/heads/develop', empty, head));
    await copyFile(path.join(dir, '.git', 'index'), path.join(dir, '.git', 'index.lock'));
    expect((await gitLockFiles(path.join(dir, '.git'))).map((p) => path.basename(p))).toEqual(['HEAD.lock', 'index.lock', 'develop.lock']);
    expect(await gitLockFiles(remote)).toEqual([path.join(remote, 'HEAD.lock'), path.join(remote, 'refs/heads/develop.lock')]);

    const c = await startController(dir);
    try {
      await writeFile(path.join(dir, 'after-crash.txt'), 'committed and pushed\n');
      await waitFor(async () => (await gitOk(remote, 'show', 'develop:after-crash.txt')).stdout === 'committed and pushed\n' || undefined, { what: 'the edit to reach the remote', timeoutMs: 60_000 });
      expect(c.stdout.text()).toContain(`removed ${path.join(remote, 'refs/heads/develop.lock')}`);
      expect(c.stdout.text()).toContain(`removed ${path.join(dir, '.git', 'index.lock')}`);
    } finally {
      await c.stop();
    }
    expect(await gitLockFiles(path.join(dir, '.git'))).toEqual([]);
    expect(await gitLockFiles(remote)).toEqual([]);
    expect((await showFile(dir, 'develop', 'after-crash.txt')).toString()).toBe('committed and pushed\n');
    // Other people's native pushes work too.
    const other = await cloneTo(remote, path.join(await makeTmpDir('locks-other'), 'o'), '--branch', 'develop');
    await commitFiles(other, { 'theirs.txt': 'theirs\n' }, 'theirs');
    await git(other, 'push', '-q', 'origin', 'develop');
    await fsckStrict(remote);
    await fsckStrict(dir);
  }, 120_000);
});
