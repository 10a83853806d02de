/**
 * Packs and loose objects stay bounded over many bursts (issue 14): the sandbox gets `git maintenance
 * run --auto` after commits (the controller commits with plumbing, which never runs it), and a local
 * bare remote gets git's own `gc --auto` from receive-pack after each push (receive.autogc), and its packs
 * rolled up geometrically at each of the sandbox's maintenance runs. Thresholds
 * are lowered through the repositories' own config (gc.auto, gc.autoPackLimit); git decides the rest.
 */
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { commitNative, worktreeChanges, type GitRepo } from '../src/git/native/index.js';
import { AutoMaintenance, runAutoMaintenance } from '../src/git/native/maintenance.js';
import { Repo } from '../src/git/repo.js';
import { pushBranch, type RemoteTarget } from '../src/git/transport.js';
import { fsckStrict, git, gitEnv, makeBareRepo, revParse } from './helpers/git.js';
import { makeSandbox, startController } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

afterAll(cleanupTmpDirs);

const BURSTS = 32;
/** Over receive-pack's unpackLimit (100 objects): each push is kept as a pack, as a real burst's would be. */
const FILES_PER_BURST = 120;
const quiet = { debug: () => undefined, info: () => undefined, warn: (m: string) => console.warn(m) };

/** `git count-objects -v` as numbers: loose objects (`count`) and `packs`. */
async function objects(gitDir: string): Promise<{ loose: number; packs: number }> {
  const out = await git(gitDir, 'count-objects', '-v');
  const field = (k: string) => Number(new RegExp(`^${k}: (\\d+)$`, 'm').exec(out)?.[1]);
  return { loose: field('count'), packs: field('packs') };
}

/** A work tree whose git runs with the tests' environment, with gc thresholds lowered. */
async function repoWithLowThresholds(prefix: string): Promise<{ dir: string; repo: GitRepo }> {
  const dir = await makeTmpDir(prefix);
  await git(dir, 'init', '-q', '-b', 'develop');
  await git(dir, 'config', 'gc.auto', '1');
  await git(dir, 'config', 'gc.autoPackLimit', '3');
  await git(dir, 'commit', '-q', '--allow-empty', '-m', 'start');
  return { dir, repo: { cwd: dir, gitDir: path.join(dir, '.git'), workTree: dir, env: gitEnv() } };
}

/** Writes burst `b` (new files and an edit of the previous burst's) and commits it with the native commit engine. */
async function burst(dir: string, repo: GitRepo, b: number): Promise<number> {
  await mkdir(path.join(dir, `b${b}`), { recursive: true });
  await Promise.all(Array.from({ length: FILES_PER_BURST }, (_, f) => writeFile(path.join(dir, `b${b}`, `f${f}.txt`), `burst ${b} file ${f}\n`)));
  if (b > 0) await writeFile(path.join(dir, `b${b - 1}`, 'f0.txt'), `edited in burst ${b}\n`);
  const changes = await worktreeChanges(repo);
  const out = await commitNative(repo, {
    changes, ref: 'refs/heads/develop', parent: await revParse(dir, 'develop'),
    judge: () => undefined,
    message: () => `burst ${b}\n`, author: { name: 'Cascade Test', email: 'cascade-test@example.invalid' },
  });
  expect(out.commit).not.toBeNull();
  return out.changes.length;
}

describe('sandbox maintenance', () => {
  it(`keeps loose objects and packs bounded over ${BURSTS} bursts of ${FILES_PER_BURST} files`, async () => {
    const { dir, repo } = await repoWithLowThresholds('maint-kept');
    let lock = Promise.resolve<unknown>(undefined);
    const gate = <T>(fn: () => Promise<T>): Promise<T> => {
      const run = lock.then(fn);
      lock = run.catch(() => undefined);
      return run;
    };
    const m = new AutoMaintenance(repo, gate, quiet, { everyCommits: 1, bigCommitPaths: 1000, periodMs: 3_600_000, firstAfterMs: 3_600_000 });
    const seen: { loose: number; packs: number }[] = [];
    for (let b = 0; b < BURSTS; b++) {
      m.committed(await gate(() => burst(dir, repo, b)));
      await m.idle();
      seen.push(await objects(dir));
    }
    await m.close();
    const total = Number(/^in-pack: (\d+)$/m.exec(await git(dir, 'count-objects', '-v'))?.[1]) + seen.at(-1)!.loose;
    const why = JSON.stringify({ total, seen });
    // Without maintenance all of them (over 3,800) would be loose: the native commit engine writes loose objects.
    expect(total, why).toBeGreaterThan(BURSTS * FILES_PER_BURST);
    // git packed them whenever its estimate passed gc.auto, and merged the packs whenever there were
    // more than gc.autoPackLimit (3).
    for (const s of seen) expect(s.packs, why).toBeLessThanOrEqual(4);
    expect(Math.max(...seen.map((s) => s.loose)), why).toBeLessThan(total / 2);
    expect(seen.at(-1)!.packs, why).toBeGreaterThanOrEqual(1);
    await fsckStrict(dir);
  }, 300_000);

  it('runs git maintenance in the foreground: a run with nothing due changes nothing, a due one is over when it resolves', async () => {
    const { dir, repo } = await repoWithLowThresholds('maint-once');
    // Native `git commit` runs auto maintenance itself: off while the packs are made.
    await git(dir, 'config', 'gc.auto', '0');
    for (let i = 0; i < 5; i++) {
      await writeFile(path.join(dir, `p${i}.txt`), `pack ${i}\n`);
      await git(dir, 'add', '-A');
      await git(dir, 'commit', '-q', '-m', `pack ${i}`);
      await git(dir, 'repack', '-q');
    }
    const before = await objects(dir);
    expect(before.packs).toBe(5);
    await runAutoMaintenance(repo);
    expect(await objects(dir)).toEqual(before);
    await git(dir, 'config', 'gc.auto', '1');
    await runAutoMaintenance(repo);
    // More packs than gc.autoPackLimit: merged, in the foreground (gc.pid gone by the time it resolved).
    expect((await objects(dir)).packs).toBeLessThanOrEqual(2);
    expect(existsSync(path.join(dir, '.git', 'gc.pid'))).toBe(false);
    await fsckStrict(dir);
  }, 120_000);

  it('the controller runs it after a big commit', async () => {
    const { dir } = await makeSandbox({ debounce: '200ms', batchWindow: '1s' });
    await git(dir, 'config', 'gc.auto', '1');
    const c = await startController(dir);
    try {
      await mkdir(path.join(dir, 'big'), { recursive: true });
      await Promise.all(Array.from({ length: 1200 }, (_, f) => writeFile(path.join(dir, 'big', `f${f}.txt`), `big ${f}\n`)));
      await waitFor(async () => (await git(dir, 'ls-tree', '-r', '--name-only', 'develop', 'big/')).split('\n').length === 1200 || undefined, { what: 'the burst to be committed', timeoutMs: 60_000 });
      const packed = await waitFor(async () => {
        const o = await objects(dir);
        return o.packs >= 1 && o.loose < 100 ? o : undefined;
      }, { what: 'git maintenance to pack the burst', timeoutMs: 60_000 });
      expect(packed.packs).toBeLessThanOrEqual(2);
    } finally {
      await c.stop();
    }
    await fsckStrict(dir);
  }, 120_000);
});

/**
 * A work repository and two local bare remotes (`watched`, `piled`, set up by `configure`), then
 * BURSTS commits of FILES_PER_BURST new files, each pushed to both with the transport; `afterPush`
 * runs after each push (given the work tree). Returns the work tree and the packs in `watched` after each push.
 */
async function pushBursts(prefix: string, configure: (bare: string, which: 'watched' | 'piled') => Promise<void>, afterPush: (work: string) => Promise<void> = async () => undefined) {
  const work = await makeTmpDir(`${prefix}-work`);
  await git(work, 'init', '-q', '-b', 'develop');
  const watched = path.join(await makeTmpDir(`${prefix}-remote`), 'watched.git');
  const piled = path.join(await makeTmpDir(`${prefix}-remote`), 'piled.git');
  for (const [bare, which] of [[watched, 'watched'], [piled, 'piled']] as const) {
    await makeBareRepo(bare);
    await configure(bare, which);
  }
  const repo = await Repo.open(work);
  const who = { name: 'Cascade Test', email: 'cascade-test@example.invalid', timestamp: 1_700_000_000, timezoneOffset: 0 };
  const target = (url: string): RemoteTarget => ({ name: 'origin', url, kind: 'local', timeoutMs: 60_000 });
  const env = gitEnv();
  for (const k of ['HOME', 'XDG_CONFIG_HOME', 'GIT_CONFIG_NOSYSTEM']) process.env[k] = env[k];
  const packs: number[] = [];
  for (let b = 0; b < BURSTS; b++) {
    await mkdir(path.join(work, `b${b}`), { recursive: true });
    await Promise.all(Array.from({ length: FILES_PER_BURST }, (_, f) => writeFile(path.join(work, `b${b}`, `f${f}.txt`), `burst ${b} file ${f}\n`)));
    await git(work, 'add', '-A');
    await git(work, 'commit', '-q', '-m', `burst ${b}`);
    const oid = await revParse(work, 'develop');
    for (const bare of [watched, piled]) await pushBranch(repo, target(bare), 'develop', oid, { who });
    packs.push((await objects(watched)).packs);
    await afterPush(work);
  }
  return { work, watched, piled, packs };
}

describe('a local bare remote', () => {
  it(`keeps its packs bounded over ${BURSTS} pushes through receive-pack (receive.autogc); without it they pile up`, async () => {
    const { work, watched: kept, piled, packs } = await pushBursts('maint', async (bare, which) => {
      await git(bare, 'config', 'gc.autoPackLimit', '3');
      if (which === 'piled') await git(bare, 'config', 'receive.autogc', 'false');
    });
    // receive-pack's gc runs detached (gc.autoDetach): wait for the last one.
    const end = await waitFor(async () => {
      const o = await objects(kept);
      return o.packs <= 4 && !existsSync(path.join(kept, 'gc.pid')) ? o : undefined;
    }, { what: 'the remote to be packed', timeoutMs: 60_000 });
    const why = JSON.stringify({ packs, end });
    expect((await objects(piled)).packs, why).toBe(BURSTS);
    expect(end.packs, why).toBeLessThanOrEqual(4);
    // Bounded all along, not only at the end (a push can land while a gc runs: one more pack then).
    for (const p of packs) expect(p, why).toBeLessThanOrEqual(6);
    expect(await revParse(kept, 'develop')).toBe(await revParse(work, 'develop'));
    await fsckStrict(kept);
  }, 300_000);

  it(`rolls up the packs our pushes leave there at each maintenance run, git's own gc off: a few packs, not one per push`, async () => {
    const every = 8;
    const never = 1e12;
    let m: AutoMaintenance | undefined;
    let rolledDir = '';
    const { work, watched: rolled, piled, packs } = await pushBursts('roll', async (bare, which) => {
      // Only our roll-up can merge packs here.
      await git(bare, 'config', 'receive.autogc', 'false');
      if (which === 'watched') rolledDir = bare;
    }, async (work) => {
      m ??= new AutoMaintenance({ cwd: work }, (fn) => fn(), quiet, { everyCommits: every, bigCommitPaths: never, periodMs: never, firstAfterMs: never }, async () => [{ gitDir: rolledDir, cwd: rolledDir }]);
      m.committed(1);
      await m.idle();
    }).finally(() => m?.close());
    const why = JSON.stringify(packs);
    expect((await objects(piled)).packs, why).toBe(BURSTS);
    // At most the pushes since the last run, and what the roll-up keeps (a pack or two).
    for (const p of packs) expect(p, why).toBeLessThanOrEqual(every + 2);
    expect((await objects(rolled)).packs, why).toBeLessThanOrEqual(5);
    expect(await revParse(rolled, 'develop')).toBe(await revParse(work, 'develop'));
    await fsckStrict(rolled);
  }, 300_000);
});
