import { afterEach, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { EMPTY_TREE, Repo, type Person } from '../src/git/repo.js';
import { GitError, RefConflictError } from '../src/git/native/failure.js';
import { git, gitEnv, gitOk, makeTestRepo, plumb, rawTree, revParse, type TestRepo } from './helpers/git.js';
import { cleanupTmpDirs, waitFor } from './helpers/tmp.js';

const who: Person = { name: 'Ref Mover', email: 'mover@example.invalid', timestamp: 1_767_322_245, timezoneOffset: -60 };

let opened: Repo[] = [];
afterEach(async () => {
  for (const r of opened) await r.close();
  opened = [];
  await cleanupTmpDirs();
});

async function testRepo(): Promise<TestRepo> {
  const t = await makeTestRepo('cascade-repo-native-');
  opened.push(t.repo);
  return t;
}

async function blob(dir: string, content: string): Promise<string> {
  return plumb(dir, ['hash-object', '-w', '--stdin'], content);
}

async function fsckStrict(dir: string): Promise<void> {
  const r = await gitOk(dir, 'fsck', '--strict', '--no-dangling');
  expect(r.code, r.stdout + r.stderr).toBe(0);
}

describe('Repo writes objects through git, and git reads them back the same', () => {
  it('writeTree/writeCommit: modes, nested trees, a gitlink and names git accepts (\\, tab, newline, non-ASCII); readTree/readCommit/flattenTree agree with git', async () => {
    const { dir, repo } = await testRepo();
    const a = await blob(dir, 'a\n');
    const link = await blob(dir, 'target.txt');
    const sub = await repo.writeTree([{ mode: '100755', path: 'run.sh', oid: a }, { mode: '120000', path: 'link', oid: link }]);
    const gitlink = '0123456789abcdef0123456789abcdef01234567';
    const names = ['back\\slash.txt', 'tab\there', 'new\nline', 'naïve.txt', 'a', 'a.b'];
    const root = await repo.writeTree([
      ...names.map((name) => ({ mode: '100644' as const, path: name, oid: a })),
      { mode: '040000', path: 'dir', oid: sub },
      { mode: '160000', path: 'module', oid: gitlink },
    ]);
    // git sorts a folder as if its name ended in "/": "a", "a.b", "dir" ... as git's own mktree would.
    const listing = await git(dir, 'ls-tree', '-z', root);
    expect(listing.split('\0').filter(Boolean).map((l) => l.slice(l.indexOf('\t') + 1))).toEqual(['a', 'a.b', 'back\\slash.txt', 'dir', 'module', 'naïve.txt', 'new\nline', 'tab\there']);
    expect((await repo.readTree(root)).map((e) => `${e.mode} ${e.type} ${e.oid}\t${e.path}`).join('\0')).toBe(listing.replace(/\0$/, ''));

    const commit = await repo.writeCommit({ tree: root, parents: [], message: 'first\n\nbody line\n', author: who });
    expect(await git(dir, 'cat-file', '-p', commit)).toContain('author Ref Mover <mover@example.invalid> 1767322245 +0100');
    const read = await repo.readCommit(commit);
    expect(read).toEqual({ tree: root, parent: [], author: who, committer: who, message: 'first\n\nbody line\n', subject: 'first' });
    const second = await repo.writeCommit({ tree: EMPTY_TREE, parents: [commit], message: 'second\n', author: who, committer: { ...who, name: 'Other', timezoneOffset: 90 } });
    expect((await repo.readCommit(second)).subject).toBe('second');
    expect(await repo.commitParents(second)).toEqual([commit]);
    expect(await git(dir, 'log', '-1', '--format=%cn %cd', '--date=format:%z', second)).toBe('Other -0130');

    const flat = await repo.flattenTree(root);
    expect([...flat.keys()].sort()).toEqual([...names, 'dir/link', 'dir/run.sh', 'module'].sort());
    expect(flat.get('dir/run.sh')).toEqual({ mode: '100755', oid: a });
    expect(flat.get('module')).toEqual({ mode: '160000', oid: gitlink });
    // fileAt reads through the one reader; a name with a newline is found tree by tree.
    await repo.setRef('refs/heads/odd', commit, null, 'test', who);
    expect((await repo.fileAt(commit, 'new\nline'))?.toString()).toBe('a\n');
    expect((await repo.fileAt(commit, 'dir/run.sh'))?.toString()).toBe('a\n');
    expect(await repo.fileAt(commit, 'dir')).toBeNull();
    expect(await repo.fileAt(commit, 'module')).toBeNull();
    expect(await repo.fileAt(commit, 'nothing/here')).toBeNull();
    await fsckStrict(dir);
    // A tree git would not check out gives no file: a policy is never read from it.
    const hostile = await rawTree(dir, [{ mode: '100644', name: '.GIT', oid: a }, { mode: '100644', name: 'config.yaml', oid: a }]);
    const bad = await repo.writeCommit({ tree: hostile, parents: [], message: 'hostile\n', author: who });
    await expect(repo.fileAt(bad, 'config.yaml')).rejects.toMatchObject({ kind: 'Stalled', reason: 'UnsafeTree', message: expect.stringContaining('".GIT"') });
  });

  it('diffTrees is git diff-tree -r (type changes, a folder replaced by a file); mergeTreesOursWins keeps ours where both changed', async () => {
    const { dir, repo, commit } = await testRepo();
    const base = await commit({ 'keep.txt': 'k', 'both.txt': 'base', 'theirs.txt': 'base', 'd/x.txt': 'x', 'gone.txt': 'g' });
    await git(dir, 'rm', '-q', '-r', 'd', 'gone.txt');
    const ours = await commit({ 'both.txt': 'ours', 'd': 'now a file', 'new.txt': 'n' });
    await git(dir, 'checkout', '-q', base);
    const theirs = await commit({ 'both.txt': 'theirs', 'theirs.txt': 'theirs' });
    const [tb, to, tt] = [await repo.commitTree(base), await repo.commitTree(ours), await repo.commitTree(theirs)];

    const diff = await repo.diffTrees(tb, to);
    const native = (await git(dir, 'diff-tree', '-r', '--no-renames', '--name-status', tb, to)).split('\n').map((l) => l.split('\t').reverse().join(' '));
    expect(diff.map((d) => `${d.path} ${!d.before ? 'A' : !d.after ? 'D' : 'M'}`)).toEqual(native);
    const gone = diff.find((d) => d.path === 'd/x.txt')!;
    expect([gone.before?.mode, gone.after]).toEqual(['100644', undefined]);
    expect(await repo.diffTrees(null, tb)).toHaveLength(5);
    expect(await repo.diffTrees(tb, tb)).toEqual([]);

    const merged = await repo.mergeTreesOursWins(tb, to, tt);
    const files = await repo.flattenTree(merged);
    const content = async (p: string) => (await repo.readBlob(files.get(p)!.oid)).toString();
    expect(await content('both.txt')).toBe('ours');
    expect(await content('theirs.txt')).toBe('theirs');
    expect(await content('d')).toBe('now a file');
    expect(files.has('gone.txt')).toBe(false);
    expect(await repo.mergeBase(ours, theirs)).toBe(base);
    expect(await repo.isAncestor(base, ours)).toBe(true);
    expect(await repo.isAncestor(ours, theirs)).toBe(false);
    await fsckStrict(dir);
  });
});

describe('Repo moves refs with update-ref transactions', () => {
  it('compare-and-swap: a wrong expected value is RefConflictError (Transient RefConflict) and changes nothing; the reflog names who', async () => {
    const { dir, repo, commit } = await testRepo();
    const c1 = await commit({ 'a.txt': '1' });
    const c2 = await commit({ 'a.txt': '2' });
    await repo.setRef('refs/heads/develop', c1, null, 'create develop', who);
    expect(await repo.branchHead('develop')).toBe(c1);
    expect(await git(dir, 'reflog', '-1', '--format=%gs|%gn', 'refs/heads/develop')).toBe('create develop|Ref Mover');

    const stale = await repo.setRef('refs/heads/develop', c2, c2, 'stale', who).catch((e: unknown) => e);
    expect(stale).toBeInstanceOf(RefConflictError);
    expect(stale).toMatchObject({ kind: 'Transient', reason: 'RefConflict' });
    const exists = await repo.setRef('refs/heads/develop', c2, null, 'must not exist', who).catch((e: unknown) => e);
    expect(exists).toBeInstanceOf(RefConflictError);
    expect(await revParse(dir, 'develop')).toBe(c1);

    await repo.setRef('refs/heads/develop', c2, c1, 'move', who);
    expect(await revParse(dir, 'develop')).toBe(c2);
    // A ref lock a native git holds: Transient LockBusy, the ref untouched.
    await writeFile(path.join(dir, '.git/refs/heads/develop.lock'), '');
    const busy = await repo.setRef('refs/heads/develop', c1, c2, 'locked', who).catch((e: unknown) => e);
    expect(busy).toBeInstanceOf(GitError);
    expect(busy).toMatchObject({ kind: 'Transient', reason: 'LockBusy' });
    expect(await revParse(dir, 'develop')).toBe(c2);

    await repo.setRef('refs/cascade-sync/failed/production/a', c1, undefined, 'x', who);
    await repo.setRef('refs/cascade-sync/failed/production/b', c2, undefined, 'x', who);
    await repo.setRef('refs/cascade-sync/failed/productionx', c2, undefined, 'x', who);
    await git(dir, 'pack-refs', '--all');
    expect(await repo.listRefs('refs/cascade-sync/failed/production')).toEqual(['refs/cascade-sync/failed/production/a', 'refs/cascade-sync/failed/production/b']);
    await expect(repo.deleteRef('refs/cascade-sync/failed/production/a', c2)).rejects.toBeInstanceOf(RefConflictError);
    await repo.deleteRef('refs/cascade-sync/failed/production/a', c1);
    expect(await repo.ref('refs/cascade-sync/failed/production/a')).toBeNull();

    await repo.setSymbolicRef('HEAD', 'refs/heads/develop', 'checkout: moving to develop', who);
    expect(await repo.currentBranch()).toBe('develop');
    expect(await repo.ref('HEAD')).toBe(c2);
    await git(dir, 'checkout', '-q', '--detach', c1);
    expect(await repo.currentBranch()).toBeNull();
    expect(await repo.resolveCommit(c1.slice(0, 8))).toBe(c1);
    expect(await repo.resolveCommit('develop')).toBe(c2);
    expect(await repo.resolveCommit('ffff')).toBeNull();
    await fsckStrict(dir);
  });

  it('config: reads what git reads, writes only the repository\'s own config', async () => {
    const { dir, repo } = await testRepo();
    expect(await repo.getConfig('cascade.test')).toBeUndefined();
    await repo.setConfig('cascade.test', 'value with spaces');
    expect(await git(dir, 'config', '--local', 'cascade.test')).toBe('value with spaces');
    expect(await repo.getConfig('cascade.test')).toBe('value with spaces');
    await repo.setConfig('cascade.test', undefined);
    expect((await gitOk(dir, 'config', '--local', 'cascade.test')).code).toBe(1);
    await repo.setConfig('cascade.test', undefined);
  });
});

describe('the object reader', () => {
  it('verifyClosure pipelines every read of a tree through one reader and finds a missing blob', async () => {
    const { dir, repo, commit } = await testRepo();
    const files: Record<string, string> = {};
    for (let i = 0; i < 2000; i++) files[`f/${i % 40}/${i}.txt`] = `file ${i}\n`;
    const head = await commit(files);
    const t0 = performance.now();
    const ok = await repo.verifyClosure(head);
    console.log(`verifyClosure of 2000 files through one cat-file: ${Math.round(performance.now() - t0)} ms`);
    expect(ok).toEqual({ objects: 1 + 1 + 1 + 40 + 2000, problems: [] });
    const victim = await revParse(dir, `${head}:f/7/7.txt`);
    await git(dir, 'prune', '--expire=now'); // nothing to prune; objects are loose
    const { rm } = await import('node:fs/promises');
    await rm(path.join(dir, '.git/objects', victim.slice(0, 2), victim.slice(2)), { force: true });
    const bad = await repo.verifyClosure(head);
    expect(bad.problems).toEqual([`f/7/7.txt: object ${victim} cannot be read: object ${victim} is missing from the repository`]);
  });

  it('an idle reader does not keep a script alive: a process that reads and never closes the repository exits', async () => {
    const dist = path.resolve('dist/src/git/repo.js');
    expect(existsSync(dist), 'build first: npx tsc -p tsconfig.json').toBe(true);
    const { dir, commit } = await testRepo();
    const head = await commit({ 'a.txt': 'hello' });
    const script = `
      const { Repo } = await import(${JSON.stringify(pathToFileURL(dist).href)});
      const repo = await Repo.open(${JSON.stringify(dir)});
      console.log((await repo.fileAt(${JSON.stringify(head)}, 'a.txt')).toString());`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { env: gitEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    let code: number | null | undefined;
    child.on('close', (c) => (code = c));
    await waitFor(() => (code !== undefined ? true : undefined), { what: 'the script to exit on its own', timeoutMs: 20_000 }).finally(() => child.kill('SIGKILL'));
    expect([code, out.trim()]).toEqual([0, 'hello']);
  });
});
