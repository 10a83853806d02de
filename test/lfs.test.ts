/**
 * git-lfs (issue 14): a path under `filter=lfs` is committed by the controller as the LFS pointer,
 * exactly as native `git add` records it, and its content goes to .git/lfs/objects; a push to a local
 * remote carries the objects through git-lfs's pre-push hook, so a clone checks the content out.
 * Skipped, saying so, where git-lfs is not installed (CI installs Debian's git-lfs).
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { fsckStrict, git, gitEnv, makeBareRepo, runGit } from './helpers/git.js';
import { makeSandbox, run } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir } from './helpers/tmp.js';

afterAll(cleanupTmpDirs);

function lfsVersion(): string | undefined {
  try {
    return execFileSync('git', ['lfs', 'version'], { env: gitEnv(), encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return undefined;
  }
}

const LFS = lfsVersion();
const title = LFS ? `git-lfs (${LFS})` : 'git-lfs: SKIPPED, git-lfs is not installed here (CI installs Debian\'s git-lfs; locally: apt install git-lfs)';

/** The tree `git add -A && git write-tree` records for the sandbox's files now, in a scratch index. */
async function nativeTree(dir: string): Promise<string> {
  const env = { GIT_INDEX_FILE: path.join(dir, '.git', 'oracle-index') };
  for (const args of [['read-tree', '--empty'], ['add', '-A'], ['write-tree']]) {
    const r = await runGit({ cwd: dir, args, env });
    if (r.code !== 0) throw new Error(`git ${args.join(' ')}: ${r.stderr}`);
    if (args[0] === 'write-tree') return r.stdout.trim();
  }
  throw new Error('unreachable');
}

describe.skipIf(!LFS)(title, () => {
  it('commits an LFS-tracked file as the pointer native git add records, keeps the object in .git/lfs, and a push carries it to a local remote', async () => {
    const remote = path.join(await makeTmpDir('lfs-remote'), 'site.git');
    await makeBareRepo(remote);
    const { dir } = await makeSandbox({ remotes: [{ name: 'origin', url: remote }] });
    // What `git lfs install` does for one repository: the filter in .git/config, the pre-push hook.
    await git(dir, 'lfs', 'install', '--local');
    await writeFile(path.join(dir, '.gitattributes'), '*.bin filter=lfs diff=lfs merge=lfs -text\nassets/** filter=lfs diff=lfs merge=lfs -text\n');
    const big = randomBytes(200_000);
    await writeFile(path.join(dir, 'big.bin'), big);
    await mkdir(path.join(dir, 'assets'), { recursive: true });
    await writeFile(path.join(dir, 'assets', 'logo.svg'), '<svg xmlns="http://www.w3.org/2000/svg"/>\n');
    await writeFile(path.join(dir, 'notes.txt'), 'an ordinary file\n');

    const r = await run(dir, ['reconcile']);
    expect(r.code, `${r.stdout}${r.stderr}`).toBe(0);
    const committed = await git(dir, 'rev-parse', 'develop^{tree}');
    expect(committed).toBe(await nativeTree(dir));

    const sha = createHash('sha256').update(big).digest('hex');
    const pointer = await git(dir, 'cat-file', 'blob', 'develop:big.bin');
    expect(pointer).toBe(`version https://git-lfs.github.com/spec/v1\noid sha256:${sha}\nsize ${big.length}`);
    expect((await git(dir, 'cat-file', 'blob', 'develop:assets/logo.svg'))).toMatch(/^version https:\/\/git-lfs\.github\.com\/spec\/v1\n/);
    expect(await git(dir, 'cat-file', 'blob', 'develop:notes.txt')).toBe('an ordinary file');
    expect(existsSync(path.join(dir, '.git', 'lfs', 'objects', sha.slice(0, 2), sha.slice(2, 4), sha))).toBe(true);
    expect(await git(dir, 'status', '--porcelain')).toBe('');

    // The push ran git-lfs's pre-push hook: the object is in the remote's own LFS store, and a clone
    // with git-lfs set up gets the content, not the pointer.
    expect(await git(remote, 'rev-parse', 'develop')).toBe(await git(dir, 'rev-parse', 'develop'));
    expect(existsSync(path.join(remote, 'lfs', 'objects', sha.slice(0, 2), sha.slice(2, 4), sha))).toBe(true);
    const clone = path.join(await makeTmpDir('lfs-clone'), 'c');
    const lfsFilter = ['-c', 'filter.lfs.process=git-lfs filter-process', '-c', 'filter.lfs.required=true', '-c', 'filter.lfs.clean=git-lfs clean -- %f', '-c', 'filter.lfs.smudge=git-lfs smudge -- %f'];
    const cloned = await runGit({ cwd: path.dirname(clone), args: [...lfsFilter, 'clone', '-q', '--branch', 'develop', remote, clone] });
    expect(cloned.code, cloned.stderr).toBe(0);
    expect((await readFile(path.join(clone, 'big.bin'))).equals(big)).toBe(true);
    await fsckStrict(dir);
    await fsckStrict(remote);
  }, 120_000);

  it('a local remote added to the config later gets the LFS objects too (the controller registers it as a git remote, where git-lfs finds its endpoint)', async () => {
    const { dir } = await makeSandbox();
    await git(dir, 'lfs', 'install', '--local');
    await writeFile(path.join(dir, '.gitattributes'), '*.bin filter=lfs diff=lfs merge=lfs -text\n');
    const big = randomBytes(50_000);
    await writeFile(path.join(dir, 'big.bin'), big);
    const backup = path.join(await makeTmpDir('lfs-backup'), 'backup.git');
    await makeBareRepo(backup);
    const config = await readFile(path.join(dir, 'cascade-sync-config.yaml'), 'utf8');
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), config.replace('remotes: []', `remotes:\n  - name: backup\n    url: ${JSON.stringify(backup)}`));
    const pushed = await run(dir, ['reconcile']);
    expect(pushed.code, `${pushed.stdout}${pushed.stderr}`).toBe(0);
    expect(await git(dir, 'config', '--get', 'remote.backup.url')).toBe(backup);
    const sha = createHash('sha256').update(big).digest('hex');
    expect(existsSync(path.join(backup, 'lfs', 'objects', sha.slice(0, 2), sha.slice(2, 4), sha))).toBe(true);
    expect(await git(backup, 'rev-parse', 'develop')).toBe(await git(dir, 'rev-parse', 'develop'));
  }, 120_000);
});
