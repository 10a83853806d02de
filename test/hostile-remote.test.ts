/**
 * A remote is hostile input: a commit pushed there by anyone is written into the sandbox only when
 * every path in it is safe. Each case crafts a tree with git plumbing in the bare remote, and checks
 * that the controller stalls the remote with UnsafePath, writes nothing (inside or outside the
 * sandbox), and keeps running.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { git, lsTree, makeBareRepo, plumb, rawTree, revParse, runGit } from './helpers/git.js';
import { makeSandbox, startController, type RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

let controller: RunningController | undefined;
afterEach(async () => {
  await controller?.stop();
  controller = undefined;
  await cleanupTmpDirs();
});

/** The entries of `commit`'s root tree, so a crafted tree keeps what the remote already holds. */
async function rootEntries(bare: string, commit: string): Promise<{ mode: string; name: string; oid: string }[]> {
  return (await git(bare, 'ls-tree', commit)).trim().split('\n').filter(Boolean).map((l) => {
    const [meta, name] = l.split('\t');
    const [mode, , oid] = meta!.split(' ');
    return { mode: mode === '040000' ? '40000' : mode!, name: name!, oid: oid! };
  });
}

async function status(dir: string) {
  return JSON.parse(await readFile(path.join(dir, '.git/cascade-sync/status.json'), 'utf8'));
}

async function setup(files: Record<string, string> = {}) {
  const bare = path.join(await makeTmpDir('remote'), 'site.git');
  await makeBareRepo(bare, { initialBranch: 'develop' });
  const outside = await makeTmpDir('outside');
  const { dir } = await makeSandbox({ remotes: [{ name: 'origin', url: bare }], debounce: '200ms', files: { 'index.html': 'hello\n', ...files } });
  controller = await startController(dir);
  const synced = await waitFor(async () => {
    const tip = (await runGit({ cwd: bare, args: ['rev-parse', '--verify', '-q', 'develop'] })).stdout.trim();
    return tip && tip === (await revParse(dir, 'develop')) ? tip : undefined;
  }, { what: 'develop pushed to the remote' });
  return { bare, dir, outside, synced };
}

/** Puts a commit of `tree` on top of the remote's develop, as a push from elsewhere would. */
async function pushCrafted(bare: string, tree: string, parent: string): Promise<string> {
  const commit = (await git(bare, 'commit-tree', tree, '-p', parent, '-m', 'crafted')).trim();
  await git(bare, 'update-ref', 'refs/heads/develop', commit);
  return commit;
}

async function expectRefused(dir: string, outside: string, before: string, sandboxFiles: string[]) {
  // A transient error (a push racing the crafted commit) may come first: wait for the refusal itself.
  const err = await waitFor(async () => {
    const e = (await status(dir)).reconcilers.find((r: { name: string }) => r.name === 'remote:origin')?.lastError;
    return e?.kind === 'Stalled' ? e : undefined;
  }, { what: 'the remote to stall', timeoutMs: 30_000 }).catch(async (x: Error) => {
    throw new Error(`${x.message}: ${JSON.stringify((await status(dir)).reconcilers.find((r: { name: string }) => r.name === 'remote:origin'))}`);
  });
  expect(err).toMatchObject({ kind: 'Stalled', reason: 'UnsafePath' });
  expect(await revParse(dir, 'develop')).toBe(before);
  expect((await readdir(dir)).sort()).toEqual(sandboxFiles);
  expect(await readdir(outside)).toEqual([]);
  expect(existsSync('/tmp/cascade-abs-escape')).toBe(false);
  // The controller goes on: a sandbox edit is still committed.
  await writeFile(path.join(dir, 'after.txt'), 'still running\n');
  await waitFor(async () => (await lsTree(dir, 'develop')).some((e) => e.path === 'after.txt') || undefined, { what: 'the next sandbox commit' });
}

describe('hostile remote commits, sandbox side', () => {
  const sub = (d: string, b: string, name = 'x') => plumb(d, ['mktree'], `100644 blob ${b}\t${name}\n`);
  const cases: { name: string; tree: (bare: string, blob: string, outside: string) => Promise<{ mode: string; name: string; oid: string }[]> }[] = [
    { name: '".." holding a file', tree: async (d, b) => [{ mode: '40000', name: '..', oid: await sub(d, b, 'escaped.txt') }] },
    { name: 'an absolute path', tree: async (_d, b) => [{ mode: '100644', name: '/tmp/cascade-abs-escape', oid: b }] },
    { name: '.git', tree: async (d, b) => [{ mode: '40000', name: '.git', oid: await sub(d, b, 'config') }] },
    { name: '".git " (trailing space)', tree: async (d, b) => [{ mode: '40000', name: '.git ', oid: await sub(d, b, 'config') }] },
    { name: 'GIT~1 (8.3 form)', tree: async (d, b) => [{ mode: '40000', name: 'GIT~1', oid: await sub(d, b, 'hooks') }] },
    {
      name: 'a symlink to a folder outside followed by a path through it',
      tree: async (d, b, outside) => [{ mode: '120000', name: 'a', oid: await plumb(d, ['hash-object', '-w', '--stdin'], outside) }, { mode: '40000', name: 'a', oid: await sub(d, b) }],
    },
  ];
  for (const c of cases) {
    it(`refuses ${c.name}: Stalled UnsafePath, nothing written, the controller keeps running`, async () => {
      const { bare, dir, outside, synced } = await setup();
      const files = (await readdir(dir)).sort();
      const blob = await plumb(bare, ['hash-object', '-w', '--stdin'], 'payload\n');
      const entries = [...(await rootEntries(bare, synced)), ...(await c.tree(bare, blob, outside))];
      await pushCrafted(bare, await rawTree(bare, entries), synced);
      await expectRefused(dir, outside, synced, files);
    }, 90_000);
  }

  it('refuses a remote commit that would write through a symlink of the sandbox', async () => {
    const outsideLink = await makeTmpDir('outside-link');
    const { bare, dir, outside, synced } = await setup();
    // The sandbox holds a committed symlink to a folder outside; the remote replaces it by a folder with a file in it.
    await symlink(outsideLink, path.join(dir, 'link'));
    const withLink = await waitFor(async () => ((await lsTree(dir, 'develop')).some((e) => e.path === 'link') ? revParse(dir, 'develop') : undefined), { what: 'the symlink committed' });
    await waitFor(async () => (await runGit({ cwd: bare, args: ['rev-parse', 'develop'] })).stdout.trim() === withLink || undefined, { what: 'the symlink pushed' });
    const files = (await readdir(dir)).sort();
    const blob = await plumb(bare, ['hash-object', '-w', '--stdin'], 'payload\n');
    const entries = (await rootEntries(bare, withLink)).filter((e) => e.name !== 'link');
    await pushCrafted(bare, await rawTree(bare, [...entries, { mode: '40000', name: 'link', oid: await sub(bare, blob, 'planted.txt') }]), withLink);
    await expectRefused(dir, outside, withLink, files);
    expect(await readdir(outsideLink)).toEqual([]);
    void synced;
  }, 90_000);
});
