/**
 * Embedded repositories (nested folders with their own .git) as git treats them (issue 14): each is
 * committed as a gitlink, never half its files; one without a commit (which git cannot record) does not
 * block the rest of the batch; and `status` names every one whose content does not travel with the
 * sandbox, with a hint. Real nested repositories, a real upstream for the submodules, a real controller.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { cloneTo, commitFiles, fsckStrict, git, lsTree, makeBareRepo } from './helpers/git.js';
import { makeSandbox, run, startController } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

afterAll(cleanupTmpDirs);

async function nestedRepo(dir: string, files: Record<string, string>, commit: boolean): Promise<void> {
  await mkdir(dir, { recursive: true });
  await git(dir, 'init', '-q', '-b', 'main');
  if (commit) await commitFiles(dir, files, 'nested');
  else for (const [p, c] of Object.entries(files)) await writeFile(path.join(dir, p), c);
}

describe('embedded repositories', () => {
  it('are committed as gitlinks, one without a commit blocks nothing, and status names each one that is not synced', async () => {
    const upstream = path.join(await makeTmpDir('embedded-upstream'), 'lib.git');
    await makeBareRepo(upstream, { initialBranch: 'main', withCommit: true });
    const { dir } = await makeSandbox({ debounce: '200ms', batchWindow: '1s' });
    // nocommit: git init, files, no commit. dirty: a commit, then an edit. nourl: clean, but no URL anywhere.
    await nestedRepo(path.join(dir, 'nocommit'), { 'a.txt': 'a\n' }, false);
    await nestedRepo(path.join(dir, 'dirty'), { 'a.txt': 'a\n' }, true);
    await writeFile(path.join(dir, 'dirty', 'a.txt'), 'edited, not committed\n');
    await nestedRepo(path.join(dir, 'nourl'), { 'a.txt': 'a\n' }, true);
    // pushed: a submodule with a URL, at a commit its remote has (synced). unpushed: a local commit only.
    await cloneTo(upstream, path.join(dir, 'pushed'));
    await cloneTo(upstream, path.join(dir, 'unpushed'));
    await commitFiles(path.join(dir, 'unpushed'), { 'local.txt': 'not pushed\n' }, 'local only');
    await writeFile(path.join(dir, '.gitmodules'), ['pushed', 'unpushed'].map((n) => `[submodule "${n}"]\n\tpath = ${n}\n\turl = ${upstream}\n`).join(''));
    await writeFile(path.join(dir, 'plain.txt'), 'an ordinary file in the same batch\n');

    const c = await startController(dir);
    let status: { code: number; stdout: string; stderr: string };
    try {
      const tree = await waitFor(async () => {
        const t = await lsTree(dir, 'develop');
        return t.some((e) => e.path === 'plain.txt') ? t : undefined;
      }, { what: 'the batch to be committed', timeoutMs: 60_000 });
      // A gitlink each (never the nested files), nothing for the repository git cannot record.
      const links = tree.filter((e) => e.mode === '160000').map((e) => e.path).sort();
      expect(links).toEqual(['dirty', 'nourl', 'pushed', 'unpushed']);
      expect(tree.filter((e) => /^(dirty|nourl|pushed|unpushed|nocommit)\//.test(e.path))).toEqual([]);
      expect(tree.some((e) => e.path === '.gitmodules')).toBe(true);
      status = await waitFor(async () => {
        const r = await run(dir, ['status']);
        return r.stdout.includes('not synced: unpushed/') ? r : undefined;
      }, { what: 'status to name the embedded repositories', timeoutMs: 30_000 });
    } finally {
      await c.stop();
    }
    const text = status.stdout;
    expect(text).toMatch(/not synced: nocommit\/ \(a repository of its own, not recorded\): it has no commit yet.*\n\s+hint: commit in it \(git -C nocommit commit\), or add nocommit\/ to sandbox.exclude/);
    expect(text).toMatch(/not synced: dirty\/ \(a repository of its own, recorded only as a gitlink to [0-9a-f]{7}\): 1 change\(s\) in its work tree are not in its commit.*it has no URL in .gitmodules/);
    expect(text).toMatch(/not synced: nourl\/ .*: it has no URL in .gitmodules, so a clone of the sandbox gets an empty folder\n\s+hint: make it a submodule with a URL \(git submodule add URL nourl\) or add nourl\/ to sandbox.exclude/);
    expect(text).toMatch(/not synced: unpushed\/ .*: its commit [0-9a-f]{7} is on none of its remote branches.*\n\s+hint: push its commit \(git -C unpushed push\)/);
    expect(text).not.toMatch(/not synced: pushed\//);
    const json = JSON.parse((await run(dir, ['status', '--json'])).stdout);
    const reasons = Object.fromEntries(json.snapshot.sandbox.embedded.map((e: { path: string; problems: { reason: string }[] }) => [e.path, e.problems.map((p) => p.reason)]));
    expect(reasons).toEqual({ dirty: ['Uncommitted', 'NoUrl'], nocommit: ['NoCommit'], nourl: ['NoUrl'], unpushed: ['NotOnAnyRemote'] });
    await fsckStrict(dir);
  }, 120_000);
});
