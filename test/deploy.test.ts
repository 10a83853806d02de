import { afterEach, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, lstat, mkdir, readdir, readFile, readlink, rm, stat, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Repo } from '../src/git/repo.js';
import { CascadeError } from '../src/errors.js';
import { materializeTree, treeManifest, unsafeNameReason } from '../src/pipeline/materialize.js';
import { buildManifest } from '../src/security/manifest.js';
import {
  currentRelease,
  deployRelease,
  DeployHookError,
  listReleases,
  pruneReleases,
  releaseDir,
  switchCurrent,
  type DeployInput,
} from '../src/pipeline/deploy.js';
import { commitFiles, git, lsTree, runGit, showFile, makeTestRepo, type TestRepo } from './helpers/git.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

afterEach(async () => {
  await cleanupTmpDirs();
});

const ENV = { PATH: process.env.PATH ?? '/usr/bin:/bin' };

const makeRepo = (): Promise<TestRepo> => makeTestRepo('deploy-repo');

/** Runs git plumbing with stdin and returns trimmed stdout (hash-object, mktree). */
async function plumb(dir: string, args: string[], input: string | Buffer): Promise<string> {
  const r = await runGit({ cwd: dir, args, input });
  if (r.code !== 0) throw new Error(`git ${args.join(' ')}: ${r.stderr}`);
  return r.stdout.trim();
}

/** Builds a commit from a hand-written tree (git mktree accepts names git itself would never check out). */
async function craftCommit(dir: string, treeLines: string[]): Promise<string> {
  const tree = await plumb(dir, ['mktree'], treeLines.map((l) => `${l}\n`).join(''));
  return git(dir, 'commit-tree', tree, '-m', 'crafted');
}

/** Every path below `root` without following symlinks: "path" for files and links, "path/" for folders. */
async function listAll(root: string, prefix = ''): Promise<string[]> {
  const out: string[] = [];
  for (const name of (await readdir(path.join(root, prefix))).sort()) {
    const rel = prefix ? `${prefix}/${name}` : name;
    const st = await lstat(path.join(root, rel));
    if (st.isDirectory()) out.push(`${rel}/`, ...(await listAll(root, rel)));
    else out.push(rel);
  }
  return out;
}

/** Oracle: the folder holds exactly the commit's tree per `git ls-tree` and `git cat-file`, byte for byte. */
async function expectMatchesCommit(repoDir: string, commit: string, root: string): Promise<void> {
  const entries = await lsTree(repoDir, commit);
  const expected = new Set<string>();
  for (const e of entries) {
    const abs = path.join(root, e.path);
    const st = await lstat(abs);
    expected.add(e.mode === '160000' ? `${e.path}/` : e.path);
    for (let p = path.posix.dirname(e.path); p !== '.'; p = path.posix.dirname(p)) expected.add(`${p}/`);
    if (e.mode === '160000') {
      expect(st.isDirectory(), e.path).toBe(true);
      expect(await readdir(abs)).toEqual([]);
    } else if (e.mode === '120000') {
      expect(st.isSymbolicLink(), e.path).toBe(true);
      expect(await readlink(abs, { encoding: 'buffer' })).toEqual(await showFile(repoDir, commit, e.path));
    } else {
      expect(st.isFile(), e.path).toBe(true);
      expect((st.mode & 0o7777).toString(8), e.path).toBe(e.mode === '100755' ? '755' : '644');
      expect(await readFile(abs), e.path).toEqual(await showFile(repoDir, commit, e.path));
    }
  }
  expect(new Set(await listAll(root))).toEqual(expected);
}

function deployInput(directory: string, commit: string, extra: Partial<DeployInput> = {}): DeployInput {
  return { environment: 'staging', commit, deploy: { directory, keep: 5, hooks: {} }, env: ENV, ...extra };
}

describe('materializeTree', () => {
  it('writes the tree byte for byte: modes, symlinks as links, gitlinks as empty folders, no filters', async () => {
    const t = await makeRepo();
    await mkdir(path.join(t.dir, 'bin'), { recursive: true });
    await writeFile(path.join(t.dir, 'bin/run.sh'), '#!/bin/sh\necho run\n');
    await chmod(path.join(t.dir, 'bin/run.sh'), 0o755);
    await symlink('docs/guide.md', path.join(t.dir, 'link-to-guide'));
    await symlink('/etc/passwd', path.join(t.dir, 'absolute-link'));
    await symlink('../../outside', path.join(t.dir, 'dangling-up'));
    await t.commit({
      'README.md': '# site\n',
      'docs/guide.md': 'line one\r\nline two\n',
      'deep/a/b/c/d.txt': 'deep\n',
      'data/blob.bin': Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7) % 256)),
      'empty.txt': '',
      '.gitattributes': '*.txt eol=crlf\n*.md text\n',
    });
    await git(t.dir, 'update-index', '--add', '--cacheinfo', `160000,${'1'.repeat(40)},vendor/module`);
    await git(t.dir, 'commit', '--quiet', '-m', 'add a submodule');
    const commit = await git(t.dir, 'rev-parse', 'HEAD');

    const out = path.join(await makeTmpDir('mat-out'), 'release');
    // A strict umask must not change the modes written.
    const umask = process.umask(0o077);
    let counts;
    try {
      counts = await materializeTree(t.repo, commit, out);
    } finally {
      process.umask(umask);
    }
    await expectMatchesCommit(t.dir, commit, out);
    const entries = await lsTree(t.dir, commit);
    expect(counts).toMatchObject({ files: entries.length, linked: 0, written: entries.length });
    expect(await readlink(path.join(out, 'absolute-link'))).toBe('/etc/passwd');
    // The manifest it returns is what is on disk, and what the commit's tree alone says.
    expect(counts.manifest).toEqual(await buildManifest(out, commit));
    expect(counts.manifest).toEqual(await treeManifest(t.repo, commit));
  });

  it('refuses a folder that exists', async () => {
    const t = await makeRepo();
    const commit = await t.commit({ 'a.txt': 'a' });
    const out = await makeTmpDir('mat-exists');
    await expect(materializeTree(t.repo, commit, out)).rejects.toMatchObject({ code: 'EEXIST' });
  });

  describe('refuses unsafe trees before writing anything', () => {
    const cases: { name: string; tree: (dir: string, blob: string, outside: string) => Promise<string[]> }[] = [
      { name: 'a ".." entry', tree: async (_d, b) => [`100644 blob ${b}\t..`] },
      {
        name: 'a ".." folder holding a file',
        tree: async (d, b) => [`040000 tree ${await plumb(d, ['mktree'], `100644 blob ${b}\tescaped.txt\n`)}\t..`],
      },
      {
        name: 'a nested "." entry',
        tree: async (d, b) => [`100644 blob ${b}\tok.txt`, `040000 tree ${await plumb(d, ['mktree'], `100644 blob ${b}\t.\n`)}\tsub`],
      },
      { name: 'a .git folder', tree: async (d, b) => [`040000 tree ${await plumb(d, ['mktree'], `100644 blob ${b}\tconfig\n`)}\t.git`] },
      { name: 'a .GIT folder', tree: async (d, b) => [`040000 tree ${await plumb(d, ['mktree'], `100644 blob ${b}\tconfig\n`)}\t.GIT`] },
      { name: 'a ".git. " entry', tree: async (_d, b) => [`100644 blob ${b}\t.git. `] },
      { name: 'a git~1 entry', tree: async (_d, b) => [`100644 blob ${b}\tgit~1`] },
      {
        name: 'a nested .git folder',
        tree: async (d, b) => {
          const hooks = await plumb(d, ['mktree'], `100755 blob ${b}\tpost-checkout\n`);
          const dotgit = await plumb(d, ['mktree'], `040000 tree ${hooks}\thooks\n`);
          return [`040000 tree ${await plumb(d, ['mktree'], `040000 tree ${dotgit}\t.git\n`)}\tvendor`];
        },
      },
      {
        name: 'a symlink "a" to a folder outside followed by "a/x"',
        tree: async (d, b, outside) => {
          const target = await plumb(d, ['hash-object', '-w', '--stdin'], outside);
          const sub = await plumb(d, ['mktree'], `100644 blob ${b}\tx\n`);
          return [`120000 blob ${target}\ta`, `040000 tree ${sub}\ta`];
        },
      },
    ];

    for (const c of cases) {
      it(c.name, async () => {
        const t = await makeRepo();
        const parent = await makeTmpDir('mat-unsafe');
        const outside = await makeTmpDir('mat-outside');
        const blob = await plumb(t.dir, ['hash-object', '-w', '--stdin'], 'payload\n');
        const commit = await craftCommit(t.dir, await c.tree(t.dir, blob, outside));
        const out = path.join(parent, 'release');
        const err = await materializeTree(t.repo, commit, out).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(CascadeError);
        expect(err).toMatchObject({ kind: 'Stalled', reason: 'UnsafePath' });
        expect(existsSync(out)).toBe(false);
        expect(await readdir(parent)).toEqual([]);
        expect(await readdir(outside)).toEqual([]);
      });
    }
  });

  it('names unsafe path components the way git does (also those a tree reader might refuse first)', () => {
    const unsafe = ['', '.', '..', '.git', '.GIT', '.Git', '.git.', '.git ', '.git. . ', 'git~1', 'GIT~1', '.git~2', '.g\u200cit', '\ufeff.git', '.git::$INDEX_ALLOCATION', 'a/b', '..\u200d'];
    for (const name of unsafe) expect(unsafeNameReason(name), JSON.stringify(name)).toBeDefined();
    // A backslash separates only where git takes it for a separator (Windows); elsewhere git commits it.
    expect(unsafeNameReason('a\\b', 'win32')).toBeDefined();
    expect(unsafeNameReason('a\\b', 'linux')).toBeUndefined();
    const safe = ['.gitignore', '.github', '.gitmodules', 'git', 'git~0', 'a..b', '...', '.git-x', 'my.git', 'x.'];
    for (const name of safe) expect(unsafeNameReason(name), JSON.stringify(name)).toBeUndefined();
  });

  it('hard-links unchanged files from a previous release and writes changed ones', async () => {
    const t = await makeRepo();
    await writeFile(path.join(t.dir, 'tool.sh'), '#!/bin/sh\n');
    await chmod(path.join(t.dir, 'tool.sh'), 0o755);
    const a = await t.commit({ 'same.txt': 'same\n', 'lib/same.js': 'x = 1\n', 'changed.txt': 'v1\n', 'edited.txt': 'pristine\n' });
    await chmod(path.join(t.dir, 'tool.sh'), 0o644);
    const b = await t.commit({ 'changed.txt': 'v2\n', 'new.txt': 'new\n' });

    const parent = await makeTmpDir('mat-link');
    const r1 = path.join(parent, 'r1');
    const r2 = path.join(parent, 'r2');
    await materializeTree(t.repo, a, r1);
    // Edited in place in the old release (same inode): linking it would ship the edit.
    await writeFile(path.join(r1, 'edited.txt'), 'tampered\n');
    const counts = await materializeTree(t.repo, b, r2, { linkFrom: { dir: r1, files: await t.repo.flattenTree(await t.repo.commitTree(a)) } });

    await expectMatchesCommit(t.dir, b, r2);
    const ino = async (root: string, p: string) => (await stat(path.join(root, p))).ino;
    expect(await ino(r2, 'same.txt')).toBe(await ino(r1, 'same.txt'));
    expect(await ino(r2, 'lib/same.js')).toBe(await ino(r1, 'lib/same.js'));
    expect(await ino(r2, 'changed.txt')).not.toBe(await ino(r1, 'changed.txt'));
    expect(await ino(r2, 'edited.txt')).not.toBe(await ino(r1, 'edited.txt'));
    expect(await ino(r2, 'tool.sh')).not.toBe(await ino(r1, 'tool.sh')); // mode changed
    expect(counts).toMatchObject({ files: 6, linked: 2, written: 4 });
    expect(counts.manifest).toEqual(await buildManifest(r2, b));
  });
});

describe('deployRelease', () => {
  it('materializes releases/<commit>, points current at it relatively, and links from the current release', async () => {
    const t = await makeRepo();
    const a = await t.commit({ 'index.html': '<h1>a</h1>\n', 'static/app.js': 'app\n' });
    const b = await t.commit({ 'index.html': '<h1>b</h1>\n' });
    const directory = path.join(await makeTmpDir('deploy'), 'site');

    const first = await deployRelease(t.repo, deployInput(directory, a));
    expect(first).toMatchObject({ release: { commit: a, dir: path.join(directory, 'releases', a) }, previous: null, reused: false, linked: 0, written: 2 });
    expect(await readlink(path.join(directory, 'current'))).toBe(`releases/${a}`);
    expect(await currentRelease(directory)).toBe(a);
    await expectMatchesCommit(t.dir, a, path.join(directory, 'current'));

    const second = await deployRelease(t.repo, deployInput(directory, b));
    expect(second).toMatchObject({ previous: a, reused: false, linked: 1, written: 1 });
    expect(await readlink(path.join(directory, 'current'))).toBe(`releases/${b}`);
    expect(await readFile(path.join(directory, 'current/index.html'), 'utf8')).toBe('<h1>b</h1>\n');
    expect(await listReleases(directory)).toEqual([b, a]);
    expect((await readdir(path.join(directory, 'releases'))).filter((n) => n.startsWith('.tmp-'))).toEqual([]);
  });

  it('reuses an existing release without writing it again, and orders releases by deploy, not by folder age', async () => {
    const t = await makeRepo();
    const a = await t.commit({ 'f.txt': 'a' });
    const b = await t.commit({ 'f.txt': 'b' });
    const directory = await makeTmpDir('deploy-reuse');
    await deployRelease(t.repo, deployInput(directory, a));
    const inode = (await stat(path.join(directory, 'releases', a, 'f.txt'))).ino;
    await deployRelease(t.repo, deployInput(directory, b));

    const again = await deployRelease(t.repo, deployInput(directory, a));
    expect(again).toMatchObject({ reused: true, previous: b, linked: 0, written: 0 });
    expect((await stat(path.join(directory, 'releases', a, 'f.txt'))).ino).toBe(inode);
    expect(await currentRelease(directory)).toBe(a);
    expect(await listReleases(directory)).toEqual([a, b]);
  });

  it('prunes to keep releases, never a protected one or the current one', async () => {
    const t = await makeRepo();
    const commits: string[] = [];
    for (let i = 1; i <= 5; i++) commits.push(await t.commit({ 'v.txt': `${i}\n` }));
    const [c1, c2, c3, c4, c5] = commits as [string, string, string, string, string];
    const directory = await makeTmpDir('deploy-keep');
    const pruned: string[][] = [];
    for (const c of commits) {
      const r = await deployRelease(t.repo, { ...deployInput(directory, c), deploy: { directory, keep: 2, hooks: {} }, protect: [c1] });
      pruned.push(r.pruned);
    }
    expect(pruned).toEqual([[], [], [], [c2], [c3]]);
    expect(await listReleases(directory)).toEqual([c5, c4, c1]);
    const manifests = (cs: string[]) => cs.map((c) => `${c}.manifest.json`);
    expect((await readdir(path.join(directory, 'releases'))).sort()).toEqual([c1, c4, c5, ...manifests([c1, c4, c5]), '.deployed'].sort());

    // After a rollback to c4, keep 1 removes c5 but not the current c4 (nor the protected c1).
    await switchCurrent(directory, c4);
    expect(await pruneReleases(directory, 0, [c1])).toEqual([c5]);
    expect(await listReleases(directory)).toEqual([c4, c1]);
    expect((await readdir(path.join(directory, 'releases'))).sort()).toEqual([c1, c4, ...manifests([c1, c4]), '.deployed'].sort());
  });

  it('gives hooks the CASCADE_* variables and what hooks.env names of the caller env (nothing else), pre before and post after the switch', async () => {
    const t = await makeRepo();
    const a = await t.commit({ 'f.txt': 'a' });
    const b = await t.commit({ 'f.txt': 'b' });
    const directory = await makeTmpDir('deploy-hooks');
    const out = await makeTmpDir('deploy-hooks-out');
    await deployRelease(t.repo, deployInput(directory, a));

    const report = (stage: string) =>
      `env > "$OUT/${stage}.env"; pwd > "$OUT/${stage}.pwd"; readlink "$CASCADE_DEPLOY_DIR/current" > "$OUT/${stage}.current"; echo "${stage} says hi"`;
    const r = await deployRelease(
      t.repo,
      deployInput(directory, b, {
        env: { ...ENV, OUT: out, MARK: 'from-caller', UNNAMED: 'not-for-hooks' },
        deploy: { directory, keep: 5, hooks: { pre: report('pre'), post: report('post'), env: [{ name: 'OUT' }, { name: 'MARK' }] } },
      }),
    );
    const releaseB = path.join(directory, 'releases', b);
    for (const stage of ['pre', 'post']) {
      const env = await readFile(path.join(out, `${stage}.env`), 'utf8');
      expect(env).toContain('CASCADE_ENVIRONMENT=staging\n');
      expect(env).toContain(`CASCADE_COMMIT=${b}\n`);
      expect(env).toContain(`CASCADE_RELEASE_DIR=${releaseB}\n`);
      expect(env).toContain(`CASCADE_PREVIOUS_COMMIT=${a}\n`);
      expect(env).toContain('MARK=from-caller\n');
      expect(env).not.toContain('UNNAMED');
      expect(await readFile(path.join(out, `${stage}.pwd`), 'utf8')).toBe(`${releaseB}\n`);
    }
    expect(await readFile(path.join(out, 'pre.current'), 'utf8')).toBe(`releases/${a}\n`);
    expect(await readFile(path.join(out, 'post.current'), 'utf8')).toBe(`releases/${b}\n`);
    expect(r.hookOutput).toMatch(/--- hooks\.pre: exit 0 in \d+ms ---\npre says hi\n/);
    expect(r.hookOutput).toMatch(/--- hooks\.post: exit 0 in \d+ms ---\npost says hi\n/);
  });

  it('a failing pre hook leaves current unchanged; a failing post hook fails after the switch', async () => {
    const t = await makeRepo();
    const a = await t.commit({ 'f.txt': 'a' });
    const b = await t.commit({ 'f.txt': 'b' });
    const directory = await makeTmpDir('deploy-hookfail');
    await deployRelease(t.repo, deployInput(directory, a));

    const pre = await deployRelease(t.repo, deployInput(directory, b, { deploy: { directory, keep: 5, hooks: { pre: 'echo building; echo broken >&2; exit 3' } } })).catch((e: unknown) => e);
    expect(pre).toBeInstanceOf(DeployHookError);
    expect(pre).toMatchObject({ kind: 'Stalled', reason: 'DeployHookFailed', stage: 'pre', switched: false });
    expect((pre as Error).message).toContain('exit 3: broken');
    expect((pre as DeployHookError).result.output).toContain('building');
    expect(await readlink(path.join(directory, 'current'))).toBe(`releases/${a}`);

    const post = await deployRelease(t.repo, deployInput(directory, b, { deploy: { directory, keep: 5, hooks: { post: 'exit 1' } } })).catch((e: unknown) => e);
    expect(post).toMatchObject({ reason: 'DeployHookFailed', stage: 'post', switched: true, outcome: { previous: a, reused: true, release: { commit: b } } });
    expect(await readlink(path.join(directory, 'current'))).toBe(`releases/${b}`);
  });

  it('an abort during the pre hook kills it and leaves current unchanged', async () => {
    const t = await makeRepo();
    const a = await t.commit({ 'f.txt': 'a' });
    const b = await t.commit({ 'f.txt': 'b' });
    const directory = await makeTmpDir('deploy-abort');
    const out = await makeTmpDir('deploy-abort-out');
    await deployRelease(t.repo, deployInput(directory, a));
    const controller = new AbortController();
    const running = deployRelease(
      t.repo,
      deployInput(directory, b, { env: { ...ENV, OUT: out }, signal: controller.signal, deploy: { directory, keep: 5, hooks: { pre: 'touch "$OUT/started"; sleep 30', env: [{ name: 'OUT' }] } } }),
    );
    await waitFor(() => existsSync(path.join(out, 'started')), { what: 'the pre hook to start', timeoutMs: 10_000 });
    controller.abort();
    await expect(running).rejects.toMatchObject({ name: 'AbortError' });
    expect(await currentRelease(directory)).toBe(a);
  });

  it('refuses an unsafe tree without leaving a partial release, and ignores and cleans up what a crash left', async () => {
    const t = await makeRepo();
    const a = await t.commit({ 'f.txt': 'a' });
    const blob = await plumb(t.dir, ['hash-object', '-w', '--stdin'], 'x');
    const bad = await craftCommit(t.dir, [`100644 blob ${blob}\tfine.txt`, `040000 tree ${await plumb(t.dir, ['mktree'], `100644 blob ${blob}\tconfig\n`)}\t.git`]);
    const directory = await makeTmpDir('deploy-crash');
    await deployRelease(t.repo, deployInput(directory, a));

    await expect(deployRelease(t.repo, deployInput(directory, bad))).rejects.toMatchObject({ reason: 'UnsafePath' });
    expect(await currentRelease(directory)).toBe(a);
    expect(await readdir(path.join(directory, 'releases'))).toEqual(expect.not.arrayContaining([bad]));

    // What a crash mid-materialize or mid-switch leaves: a temporary release and a candidate link.
    const b = await t.commit({ 'f.txt': 'b' });
    await mkdir(path.join(directory, 'releases', `.tmp-${b}-0123456789ab`, 'half'), { recursive: true });
    await symlink(`releases/.tmp-${b}-0123456789ab`, path.join(directory, '.current-0123456789ab'));
    expect(await listReleases(directory)).toEqual([a]);
    await deployRelease(t.repo, deployInput(directory, b));
    expect((await readdir(path.join(directory, 'releases'))).sort()).toEqual([a, b, `${a}.manifest.json`, `${b}.manifest.json`, '.deployed'].sort());
    expect((await readdir(directory)).sort()).toEqual(['current', 'releases']);
    await expectMatchesCommit(t.dir, b, releaseDir(directory, b));
  });

  it('keeps current present at every instant while it is switched back and forth', async () => {
    const t = await makeRepo();
    const a = await t.commit({ 'f.txt': 'a' });
    const b = await t.commit({ 'f.txt': 'b' });
    const directory = await makeTmpDir('deploy-atomic');
    await deployRelease(t.repo, deployInput(directory, a));
    await deployRelease(t.repo, deployInput(directory, b));

    // A separate process, so the watcher really runs while the switch happens.
    const stopFile = path.join(directory, '..', `${path.basename(directory)}.stop`);
    const readyFile = `${stopFile}.ready`;
    const watcher = spawn(
      process.execPath,
      [
        '-e',
        `const fs = require('fs'); const [cur, stop, ready] = process.argv.slice(1); let n = 0, missing = 0;
         fs.writeFileSync(ready, '');
         while (!fs.existsSync(stop)) { try { fs.lstatSync(cur); } catch { missing++; } n++; }
         process.stdout.write(JSON.stringify({ n, missing }));`,
        path.join(directory, 'current'),
        stopFile,
        readyFile,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    let stdout = '';
    watcher.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    const exited = new Promise((resolve) => watcher.on('close', resolve));
    try {
      await waitFor(() => existsSync(readyFile), { what: 'the watcher to start', timeoutMs: 10_000 });
      for (let i = 0; i < 30; i++) {
        await switchCurrent(directory, i % 2 === 0 ? a : b);
        await deployRelease(t.repo, deployInput(directory, i % 2 === 0 ? b : a));
      }
    } finally {
      await writeFile(stopFile, '');
      await exited;
      await rm(stopFile, { force: true });
      await rm(readyFile, { force: true });
    }
    const seen = JSON.parse(stdout) as { n: number; missing: number };
    expect(seen.n).toBeGreaterThan(100);
    expect(seen.missing).toBe(0);
  });

  it('switchCurrent rolls back to an existing release and refuses a missing one', async () => {
    const t = await makeRepo();
    const a = await t.commit({ 'f.txt': 'a' });
    const b = await t.commit({ 'f.txt': 'b' });
    const c = await t.commit({ 'f.txt': 'c' });
    const directory = await makeTmpDir('deploy-switch');
    await deployRelease(t.repo, deployInput(directory, a));
    await deployRelease(t.repo, deployInput(directory, b));

    await switchCurrent(directory, a);
    expect(await readlink(path.join(directory, 'current'))).toBe(`releases/${a}`);
    expect(await listReleases(directory)).toEqual([a, b]);

    await expect(switchCurrent(directory, c)).rejects.toMatchObject({ kind: 'Stalled', reason: 'ReleaseMissing' });
    await mkdir(path.join(directory, 'releases', `.tmp-${c}-0123456789ab`));
    await expect(switchCurrent(directory, c)).rejects.toMatchObject({ reason: 'ReleaseMissing' });
    expect(await currentRelease(directory)).toBe(a);
  });

  it('current and the release list survive a lost or torn deploy log and odd current links', async () => {
    const t = await makeRepo();
    const a = await t.commit({ 'f.txt': 'a' });
    const b = await t.commit({ 'f.txt': 'b' });
    const directory = await makeTmpDir('deploy-log');
    expect(await currentRelease(directory)).toBeNull();
    expect(await listReleases(directory)).toEqual([]);
    await deployRelease(t.repo, deployInput(directory, a));
    await deployRelease(t.repo, deployInput(directory, b));

    await writeFile(path.join(directory, 'releases/.deployed'), `{"commit":"${b}"}\n{"commit":"${a}"}\n{"comm`);
    expect(await listReleases(directory)).toEqual([a, b]);
    await rm(path.join(directory, 'releases/.deployed'));
    expect((await listReleases(directory)).sort()).toEqual([a, b].sort());
    const c = await t.commit({ 'f.txt': 'c' });
    await deployRelease(t.repo, deployInput(directory, c));
    expect((await listReleases(directory))[0]).toBe(c);

    await rm(path.join(directory, 'current'));
    await symlink('/somewhere/else', path.join(directory, 'current'));
    expect(await currentRelease(directory)).toBeNull();
    await rm(path.join(directory, 'current'));
    await mkdir(path.join(directory, 'current'));
    await expect(currentRelease(directory)).rejects.toMatchObject({ kind: 'Stalled', reason: 'CurrentNotSymlink' });
    await expect(deployRelease(t.repo, deployInput(directory, a))).rejects.toMatchObject({ reason: 'CurrentNotSymlink' });
  });
});
