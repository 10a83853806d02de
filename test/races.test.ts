/**
 * No stall outlives its cause (issue 15): a race on a ref (another push won, a ref moved between git's
 * look and its move, a ref lock held) is Transient, never Stalled `PushRejected`, over every transport:
 * local paths, smart HTTP through `git http-backend`, and ssh through the real OpenSSH client. Retry
 * timing for races is checked in the same place.
 */
import { chmod, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { classifyGitFailure, GitError } from '../src/git/native/index.js';
import { Repo } from '../src/git/repo.js';
import { fetchBranch, pushBranch, type RemoteTarget } from '../src/git/transport.js';
import { backoffDelay, fixableByCommit, FAST_RACE_RETRIES, retryDelay } from '../src/backoff.js';
import { startGitHttpServer, type GitHttpServer } from './helpers/git-http-server.js';
import { cloneTo, commitFiles, fsckStrict, git, revParse } from './helpers/git.js';
import { haveSshClient } from './helpers/ssh-server.js';
import { gitRejection, isolateProcessEnv, remoteAndClone, sshCommandFor, startSshRemoteHost, who, withEnv } from './helpers/transport.js';
import { cleanupTmpDirs, makeTmpDir } from './helpers/tmp.js';

const cleanups: (() => Promise<unknown> | unknown)[] = [];

beforeAll(isolateProcessEnv);
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
  await cleanupTmpDirs();
});

const race = (stderr: string, stdout = '') => classifyGitFailure({ args: ['push', '--porcelain', '--', 'URL', 'x:refs/heads/develop'], exitCode: 1, stderr, stdout });

describe('classification of what git says about a race', () => {
  const A = '1'.repeat(40);
  const B = '2'.repeat(40);
  it.each([
    ['another push moved the ref between look and move (receive-pack, porcelain)', `remote: error: cannot lock ref 'refs/heads/develop': is at ${A} but expected ${B}        \nerror: failed to push some refs to 'URL'`, `To URL\n!\tx:refs/heads/develop\t[remote rejected] (failed to update ref)\nDone\n`, 'RefConflict'],
    ['the remote said only "failed to update ref"', 'error: failed to push some refs to \'URL\'', `To URL\n!\tx:refs/heads/develop\t[remote rejected] (failed to update ref)\nDone\n`, 'RefConflict'],
    ['the remote could not lock the ref', 'error: failed to push some refs', `!\tx:refs/heads/develop\t[remote rejected] (failed to lock)\n`, 'RefConflict'],
    ['the remote named the lock as the reason', 'error: failed to push some refs', `!\tx:refs/heads/develop\t[remote rejected] (cannot lock ref 'refs/heads/develop': reference already exists)\n`, 'RefConflict'],
    ['a ref lock left on the remote', `remote: error: cannot lock ref 'refs/heads/develop': Unable to create '/srv/site.git/refs/heads/develop.lock': File exists.`, `!\tx:refs/heads/develop\t[remote rejected] (failed to update ref)\n`, 'LockBusy'],
    ['the remote moved on (fetch first)', 'hint: Updates were rejected because the remote contains work that you do not have locally.', `!\tx:refs/heads/develop\t[rejected] (fetch first)\n`, 'NonFastForward'],
    ['non-fast-forward', 'error: failed to push some refs', `!\tx:refs/heads/develop\t[rejected] (non-fast-forward)\n`, 'NonFastForward'],
    ['a lease that no longer holds', 'error: failed to push some refs', `!\tx:refs/heads/develop\t[rejected] (stale info)\n`, 'NonFastForward'],
    ['a local ref moved under a fetch', `error: cannot lock ref 'refs/remotes/origin/develop': is at ${A} but expected ${B}`, '', 'RefConflict'],
  ])('%s: Transient', (_what, stderr, stdout, reason) => {
    const err = race(stderr, stdout);
    expect([err.kind, err.reason]).toEqual(['Transient', reason]);
    expect(err.hint).toBeTruthy();
  });

  it.each([
    ['a hook refused', 'remote: develop is frozen', `!\tx:refs/heads/develop\t[remote rejected] (pre-receive hook declined)\n`],
    ['a hidden ref', '', `!\tx:refs/heads/develop\t[remote rejected] (deny updating a hidden ref)\n`],
    ['the branch is checked out there', '', `!\tx:refs/heads/develop\t[remote rejected] (branch is currently checked out)\n`],
  ])('%s: Stalled PushRejected (a person must act)', (_what, stderr, stdout) => {
    const err = race(stderr, stdout);
    expect([err.kind, err.reason]).toEqual(['Stalled', 'PushRejected']);
  });
});

describe('how soon a failed reconciler looks again', () => {
  const policy = { initialMs: 1000, factor: 2, maxMs: 300_000, jitter: 0 };
  it('retries a race within a few seconds, spread at random, for several rounds; other failures back off as configured', () => {
    for (let f = 1; f <= FAST_RACE_RETRIES; f++) {
      for (const r of [0, 0.5, 0.999]) {
        const d = retryDelay(policy, 'RefConflict', f, () => r);
        expect(d).toBeGreaterThanOrEqual(200);
        expect(d).toBeLessThanOrEqual(6_000);
      }
    }
    // Spread even with retry.jitter 0: three racers must not retry in step.
    expect(retryDelay(policy, 'NonFastForward', 2, () => 0)).not.toBe(retryDelay(policy, 'NonFastForward', 2, () => 0.9));
    // A race lost again and again is no race any more: the configured backoff, counted from there.
    expect(retryDelay(policy, 'RefConflict', FAST_RACE_RETRIES + 1, () => 0.5)).toBe(backoffDelay(policy, 1));
    expect(retryDelay(policy, 'RemoteUnavailable', 9, () => 0.5)).toBe(backoffDelay(policy, 9));
    expect(backoffDelay(policy, 9)).toBe(256_000);
  });

  it('a new local commit wakes a reconciler that failed for any reason but an unreachable or untrusting remote', () => {
    for (const r of ['RefConflict', 'NonFastForward', 'PushRejected', 'EnvironmentBranchMovedElsewhere', 'GateFailed', 'GitFailed']) expect(fixableByCommit(r), r).toBe(true);
    for (const r of ['RemoteUnavailable', 'AuthFailed', 'HostKeyUnknown', 'HostKeyChanged', 'RemoteNotFound']) expect(fixableByCommit(r), r).toBe(false);
  });
});

/** A bare remote with develop and a side commit, a clone with one more commit, and the side commit's id. */
async function remoteWithSideCommit(root: string): Promise<{ bare: string; work: string; repo: Repo; tip: string; side: string }> {
  const { bare, work, repo, tip } = await remoteAndClone(root, { 'mine.txt': 'mine\n' }, 'mine');
  const other = await cloneTo(bare, path.join(path.dirname(bare), 'other'), '--branch', 'develop');
  const side = await commitFiles(other, { 'other.txt': 'other\n' }, 'pushed by someone else');
  await git(other, 'push', '-q', 'origin', `${side}:refs/heads/side`);
  return { bare, work, repo, tip, side };
}

/**
 * A pre-receive hook that, once, moves develop to `side` itself (as another push landing between
 * receive-pack's look at the ref and its move would): receive-pack then fails to update the ref.
 */
async function raceOnce(bare: string, side: string): Promise<void> {
  const hook = path.join(bare, 'hooks', 'pre-receive');
  await writeFile(hook, [
    '#!/bin/sh',
    'cat >/dev/null',
    `[ -e "${bare}/raced" ] && exit 0`,
    `touch "${bare}/raced"`,
    // Outside the push's quarantine, as a second receive-pack would be.
    `env -u GIT_QUARANTINE_PATH -u GIT_OBJECT_DIRECTORY -u GIT_ALTERNATE_OBJECT_DIRECTORIES git --git-dir="${bare}" update-ref refs/heads/develop ${side}`,
    'exit 0',
    '',
  ].join('\n'));
  await chmod(hook, 0o755);
}

/** The race and the held lock on one transport, then the retry that lands. */
function racesOver(name: string, setup: () => Promise<{ root: string; remote: (bare: string) => RemoteTarget; env?: Record<string, string> }>) {
  describe(`a race on the remote's ref over ${name}`, () => {
    let root: string;
    let remote: (bare: string) => RemoteTarget;
    let env: Record<string, string> = {};
    beforeAll(async () => {
      ({ root, remote, env = {} } = await setup());
    });

    it('`[remote rejected] (failed to update ref)` after the ref moved under the push is Transient RefConflict; fetch, merge and push again land it', async () => {
      const { bare, work, repo, tip, side } = await remoteWithSideCommit(root);
      await raceOnce(bare, side);
      await withEnv(env, async () => {
        const err = await gitRejection(pushBranch(repo, remote(bare), 'develop', tip, { who }));
        expect([err.kind, err.reason], err.message).toEqual(['Transient', 'RefConflict']);
        expect(err.message).not.toMatch(/refused/);
        expect(await revParse(bare, 'develop')).toBe(side);
        expect(await fetchBranch(repo, remote(bare), 'develop', { who })).toBe(side);
        await git(work, 'merge', '-q', '--no-edit', 'refs/remotes/origin/develop');
        const merged = await revParse(work);
        await pushBranch(repo, remote(bare), 'develop', merged, { who });
        expect(await revParse(bare, 'develop')).toBe(merged);
      });
      await fsckStrict(bare);
    });

    it('a ref lock held on the remote is Transient LockBusy naming the lock; once it is gone the push lands', async () => {
      const { bare, repo, tip } = await remoteWithSideCommit(root);
      const lock = path.join(bare, 'refs', 'heads', 'develop.lock');
      await writeFile(lock, '');
      await withEnv(env, async () => {
        const err = await gitRejection(pushBranch(repo, remote(bare), 'develop', tip, { who }));
        expect([err.kind, err.reason], err.message).toEqual(['Transient', 'LockBusy']);
        expect(err.lockPath).toBe(lock);
        await import('node:fs/promises').then((fs) => fs.rm(lock));
        await pushBranch(repo, remote(bare), 'develop', tip, { who });
        expect(await revParse(bare, 'develop')).toBe(tip);
      });
    });

    it('four pushes racing at once: every failure is Transient, and all land after fetch, merge and push', async () => {
      const { bare } = await remoteWithSideCommit(root);
      const clones = await Promise.all([0, 1, 2, 3].map(async (i) => {
        const dir = await cloneTo(bare, path.join(path.dirname(bare), `racer-${i}`), '--branch', 'develop');
        const tip = await commitFiles(dir, { [`racer-${i}.txt`]: `${i}\n` }, `racer ${i}`);
        return { dir, tip, repo: await Repo.open(dir) };
      }));
      const failures: GitError[] = [];
      await withEnv(env, () => Promise.all(clones.map(async (c) => {
        for (let attempt = 0; attempt < 20; attempt++) {
          try {
            await pushBranch(c.repo, remote(bare), 'develop', await revParse(c.dir), { who });
            return;
          } catch (err) {
            if (!(err instanceof GitError)) throw err;
            failures.push(err);
            if (err.kind !== 'Transient') return;
            await fetchBranch(c.repo, remote(bare), 'develop', { who });
            await git(c.dir, 'merge', '-q', '--no-edit', 'refs/remotes/origin/develop');
          }
        }
      })));
      expect(failures.map((f) => `${f.kind} ${f.reason}`).filter((k) => !/^Transient (RefConflict|NonFastForward|LockBusy)$/.test(k)), failures.map((f) => f.message).join('\n')).toEqual([]);
      const final = await revParse(bare, 'develop');
      for (const c of clones) expect((await git(bare, 'merge-base', '--is-ancestor', c.tip, final).then(() => true, () => false))).toBe(true);
      await fsckStrict(bare);
    });
  });
}

racesOver('a local path', async () => ({ root: await makeTmpDir('races-local'), remote: (bare) => ({ name: 'origin', url: bare, kind: 'local', timeoutMs: 20_000 }) }));

racesOver('smart HTTP (git http-backend)', async () => {
  const root = await makeTmpDir('races-http');
  const server: GitHttpServer = await startGitHttpServer({ root });
  cleanups.push(() => server.close());
  return { root, remote: (bare) => ({ name: 'origin', url: server.url(path.relative(root, bare)), kind: 'http', timeoutMs: 20_000 }) };
});

const sshMissing = !(await haveSshClient());
if (!sshMissing) {
  racesOver('ssh (OpenSSH client)', async () => {
    const host = await startSshRemoteHost('races-ssh');
    const { server, root } = host;
    cleanups.push(() => server.close());
    const { command } = await sshCommandFor(host);
    return { root, remote: (bare) => ({ name: 'origin', url: server.url(bare), kind: 'ssh', timeoutMs: 20_000 }), env: { GIT_SSH_COMMAND: command } };
  });
} else {
  console.warn('races: no OpenSSH client (ssh) on this machine: the ssh race tests are skipped');
}
