import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, lstat, mkdir, readdir, readFile, readlink, rename, rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { commitNative, runGit, worktreeChanges, type GitRepo, type NativeCommitOutcome } from '../src/git/native/index.js';
import { BlobPolicy, type HeldBack } from '../src/security/blob-policy.js';
import { EncryptionKey, isEncryptedBlob } from '../src/security/encrypt.js';
import { keepOutOfGit, setUpEncryptionFilter } from '../src/security/git-filter.js';
import { createKeyFile } from '../src/security/keyfile.js';
import { gatewayEnv, git } from './helpers/git.js';
import { cleanupTmpDirs, makeTmpDir } from './helpers/tmp.js';

/** The test HOME, identity and no system config, as additions over the gateway's own environment. */
const ENV = gatewayEnv();
const at = (dir: string): GitRepo => ({ cwd: dir, env: ENV });
const AUTHOR = { name: 'Cascade Test', email: 'cascade-test@example.invalid' };

afterAll(cleanupTmpDirs);

/** A new repository on `develop` with one empty commit, git's own defaults, and the replay's clean filter. */
async function newRepo(prefix: string): Promise<string> {
  const dir = await makeTmpDir(prefix);
  await git(dir, 'init', '--quiet', '-b', 'develop');
  // A custom clean filter: what is committed is the upper-cased file, as git's own `git add` stores it.
  await git(dir, 'config', 'filter.upper.clean', 'tr a-z A-Z');
  await git(dir, 'config', 'filter.upper.smudge', 'cat');
  await git(dir, 'commit', '--quiet', '--allow-empty', '-m', 'root');
  return dir;
}

/** Commits the sandbox's changes (all of them, or what git says changed under `hints`) through the native engine, nothing held. */
async function commitSandbox(dir: string, hints: string[] = []): Promise<NativeCommitOutcome<string>> {
  const changes = await worktreeChanges(at(dir), hints);
  const parent = (await git(dir, 'rev-parse', 'HEAD')).trim();
  return commitNative<string>(at(dir), {
    changes, ref: 'refs/heads/develop', parent, author: AUTHOR,
    judge: () => undefined,
    message: (changes) => `sync ${changes.length}\n`,
  });
}

/** Makes `dst`'s files equal to `src`'s (everything but the top `.git`); an embedded repository becomes a clone of `lib` at the same commit. */
async function mirror(src: string, dst: string, lib: string, top = true): Promise<void> {
  const skip = (n: string) => top && n === '.git';
  const want = (await readdir(src)).filter((n) => !skip(n));
  for (const n of await readdir(dst)) if (!skip(n) && !want.includes(n)) await rm(path.join(dst, n), { recursive: true, force: true });
  for (const n of want) {
    const s = path.join(src, n);
    const d = path.join(dst, n);
    const st = await lstat(s);
    const dt = await lstat(d).catch(() => null);
    if (st.isSymbolicLink()) {
      const target = await readlink(s);
      if (dt?.isSymbolicLink() && (await readlink(d)) === target) continue;
      await rm(d, { recursive: true, force: true });
      await symlink(target, d);
    } else if (st.isDirectory()) {
      if (dt && !dt.isDirectory()) await rm(d, { force: true });
      await mkdir(d, { recursive: true });
      if (existsSync(path.join(s, '.git'))) {
        const head = (await git(s, 'rev-parse', 'HEAD')).trim();
        if (!existsSync(path.join(d, '.git'))) {
          await rm(d, { recursive: true, force: true });
          await git(path.dirname(d), 'clone', '--quiet', lib, n);
        }
        await git(d, 'checkout', '--quiet', '--detach', head);
      } else await mirror(s, d, lib, false);
    } else {
      const content = await readFile(s);
      if (dt && !dt.isFile()) await rm(d, { recursive: true, force: true });
      const same = dt?.isFile() && (await readFile(d)).equals(content) && (dt.mode & 0o111) === (st.mode & 0o111);
      if (same) continue;
      await writeFile(d, content);
      await chmod(d, st.mode & 0o777);
    }
  }
}

/** A small deterministic random source, so a failing step can be found again. */
function seeded(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

const ODD = ['back\\slash.txt', 'quote"d.txt', "it's.txt", 'tab\there.txt', 'new\nline.txt', 'ünïcödé ñ.txt', 'sp ace.txt', 'x.S', 'star*.txt', ':(top)magic.txt'];
const DIRS = ['', 'src/', 'src/deep/', 'docs/', 'sp ace dir/', 'node_modules/pkg/', 'build/'];
const EXTS = ['.txt', '.bat', '.up', '.bin', '.md', '.log'];

/**
 * The scripted history: each step changes the source folder's files like a person or a tool would.
 * Fixed steps bring the rules git has and a home-made layer gets wrong; the others are random edits.
 */
function scriptedSteps(lib: string, count: number): ((dir: string) => Promise<void>)[] {
  const rnd = seeded(14);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  const text = (): string => {
    const eol = rnd() < 0.3 ? '\r\n' : '\n';
    return Array.from({ length: 1 + Math.floor(rnd() * 4) }, () => `line ${Math.floor(rnd() * 1000)} Mixed Case`).join(eol) + eol;
  };
  const content = (name: string): string | Buffer => (name.endsWith('.bin') ? Buffer.concat([randomBytesSeeded(rnd), Buffer.from([0, 1, 2])]) : text());
  const fixed = new Map<number, (dir: string) => Promise<void>>([
    [1, async (d) => writeFile(path.join(d, '.gitattributes'), '* text=auto\n*.bat eol=crlf\n*.up filter=upper\n*.bin binary\n')],
    [3, async (d) => {
      await writeFile(path.join(d, '.gitignore'), '*.log\n/node_modules/\n*.[aos]\n');
      await mkdir(path.join(d, 'build'), { recursive: true });
      await writeFile(path.join(d, 'build', '.gitignore'), '*\n!keep/\n!keep/**\n!.gitignore\n');
    }],
    [5, async (d) => {
      // Tracked before it is ignored: its edits and its deletion are still committed.
      await mkdir(path.join(d, 'logs'), { recursive: true });
      await writeFile(path.join(d, 'logs', 'tracked.txt'), 'first\n');
    }],
    [7, async (d) => writeFile(path.join(d, '.gitignore'), '*.log\n/node_modules/\n*.[aos]\nlogs/\n')],
    [9, async (d) => writeFile(path.join(d, 'logs', 'tracked.txt'), 'edited while ignored\n')],
    [11, async (d) => {
      await mkdir(path.join(d, 'src', 'node_modules', 'keepme'), { recursive: true });
      await writeFile(path.join(d, 'src', '.gitignore'), 'node_modules/\n!/node_modules/\n');
      await writeFile(path.join(d, 'src', 'node_modules', 'keepme', 'index.js'), 'module.exports = 1;\n');
    }],
    [13, async (d) => {
      await mkdir(path.join(d, 'tree', 'inner'), { recursive: true });
      await writeFile(path.join(d, 'tree', 'a.txt'), 'a\n');
      await writeFile(path.join(d, 'tree', 'inner', 'b.txt'), 'b\n');
    }],
    [15, async (d) => {
      // A folder replaced by a file of the same name in one step.
      await rm(path.join(d, 'tree'), { recursive: true });
      await writeFile(path.join(d, 'tree'), 'now a file\n');
    }],
    [17, async (d) => git(d, 'clone', '--quiet', lib, 'sub').then(() => undefined)],
    [19, async (d) => git(path.join(d, 'sub'), 'checkout', '--quiet', '--detach', 'HEAD~1').then(() => undefined)],
    [21, async (d) => {
      // The submodule is no longer checked out: its gitlink stays, nothing under it is deleted.
      await rm(path.join(d, 'sub'), { recursive: true, force: true });
      await mkdir(path.join(d, 'sub'));
    }],
    [23, async (d) => git(d, 'clone', '--quiet', lib, 'sub2').then(() => undefined)],
    [25, async (d) => symlinkFresh(path.join(d, 'link-to-src'), 'src')],
    [27, async (d) => writeFile(path.join(d, 'logs', 'tracked.txt'), 'edited again while ignored\n')],
    [29, async (d) => rm(path.join(d, 'logs', 'tracked.txt'))],
    [31, async (d) => rm(path.join(d, 'sub'), { recursive: true, force: true }).then(() => git(d, 'clone', '--quiet', lib, 'sub')).then(() => undefined)],
  ]);
  const steps: ((dir: string) => Promise<void>)[] = [];
  for (let i = 0; i < count; i++) {
    const f = fixed.get(i);
    if (f) {
      steps.push(f);
      continue;
    }
    steps.push(async (d) => {
      const files = await listFiles(d);
      const r = rnd();
      const name = rnd() < 0.3 ? pick(DIRS) + pick(ODD) : `${pick(DIRS)}f${Math.floor(rnd() * 40)}${pick(EXTS)}`;
      if (r < 0.5 || files.length < 5) {
        await mkdir(path.dirname(path.join(d, name)), { recursive: true });
        await rm(path.join(d, name), { recursive: true, force: true });
        await writeFile(path.join(d, name), content(name));
        if (rnd() < 0.2) await writeFile(path.join(d, `${pick(DIRS)}g${Math.floor(rnd() * 40)}.txt`), text()).catch(() => undefined);
      } else if (r < 0.65) {
        await rm(path.join(d, pick(files)), { force: true });
      } else if (r < 0.8) {
        const from = pick(files);
        await mkdir(path.dirname(path.join(d, name)), { recursive: true });
        await rm(path.join(d, name), { recursive: true, force: true });
        await rename(path.join(d, from), path.join(d, name));
      } else if (r < 0.92) {
        const f = path.join(d, pick(files));
        const st = await lstat(f);
        if (st.isFile()) await chmod(f, st.mode & 0o100 ? 0o644 : 0o755);
      } else {
        await mkdir(path.dirname(path.join(d, name)), { recursive: true });
        await rm(path.join(d, name), { recursive: true, force: true });
        await symlinkFresh(path.join(d, name), pick(files));
      }
    });
  }
  return steps;
}

function randomBytesSeeded(rnd: () => number): Buffer {
  return Buffer.from(Array.from({ length: 16 + Math.floor(rnd() * 32) }, () => Math.floor(rnd() * 256)));
}

async function symlinkFresh(at: string, target: string): Promise<void> {
  await rm(at, { recursive: true, force: true });
  await symlink(target, at);
}

/** Regular files and symlinks under `dir`, skipping `.git` folders and embedded repositories. */
async function listFiles(dir: string, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const n of await readdir(path.join(dir, rel))) {
    if (n === '.git') continue;
    const r = rel ? `${rel}/${n}` : n;
    const st = await lstat(path.join(dir, r));
    if (st.isDirectory()) {
      if (!existsSync(path.join(dir, r, '.git'))) out.push(...(await listFiles(dir, r)));
    } else out.push(r);
  }
  return out.filter((f) => !f.startsWith('sub') && !f.startsWith('logs/') && f !== '.gitattributes' && !f.endsWith('.gitignore'));
}

async function makeLib(): Promise<string> {
  const lib = await makeTmpDir('replay-lib');
  await git(lib, 'init', '--quiet', '-b', 'main');
  for (let i = 0; i < 3; i++) {
    await writeFile(path.join(lib, 'lib.txt'), `version ${i}\n`);
    await git(lib, 'add', '-A');
    await git(lib, 'commit', '--quiet', '-m', `lib ${i}`);
  }
  return lib;
}

/** What a fixed step must have committed (random steps may later change those paths again). */
const STEP_CHECKS = new Map<number, { path: string; entry: RegExp }>([
  [11, { path: 'src/node_modules/keepme/index.js', entry: /^100644 blob [0-9a-f]{40}\tsrc\/node_modules\/keepme\/index\.js$/ }],
  [15, { path: 'tree', entry: /^100644 blob [0-9a-f]{40}\ttree$/ }],
  [17, { path: 'sub', entry: /^160000 commit [0-9a-f]{40}\tsub$/ }],
  [21, { path: 'sub', entry: /^160000 commit [0-9a-f]{40}\tsub$/ }],
  [23, { path: 'sub2', entry: /^160000 commit [0-9a-f]{40}\tsub2$/ }],
  [25, { path: 'link-to-src', entry: /^120000 blob [0-9a-f]{40}\tlink-to-src$/ }],
]);

describe('the commit is git\'s: a replayed history', () => {
  it('[slow] commits at every step exactly the tree `git add -A` gives on the same files', async () => {
    const lib = await makeLib();
    const source = await newRepo('replay-src'); // the oracle: native git on the same files, same config
    const sandbox = await newRepo('replay-box');
    const steps = scriptedSteps(lib, 250);
    let commits = 0;
    for (let i = 0; i < steps.length; i++) {
      await steps[i]!(source);
      await git(source, 'add', '-A');
      await git(source, 'commit', '--quiet', '--allow-empty', '-m', `step ${i}`);
      const want = (await git(source, 'rev-parse', 'HEAD^{tree}')).trim();
      await mirror(source, sandbox, lib);
      const outcome = await commitSandbox(sandbox);
      if (outcome.commit) commits++;
      const got = (await git(sandbox, 'rev-parse', 'HEAD^{tree}')).trim();
      if (got !== want) {
        const diff = await git(sandbox, 'diff-tree', '-r', '--name-status', got, want);
        expect.fail(`step ${i}: the sandbox committed ${got}, git add -A gives ${want}:\n${diff}`);
      }
      expect(await git(sandbox, 'status', '--porcelain'), `step ${i}`).toBe('');
      const expectEntry = STEP_CHECKS.get(i);
      if (expectEntry) expect(await git(sandbox, 'ls-tree', 'HEAD', '--', expectEntry.path), `step ${i}`).toMatch(expectEntry.entry);
    }
    expect(commits).toBeGreaterThan(150);
    expect(await git(sandbox, 'ls-tree', '-r', 'HEAD')).not.toMatch(/logs\/tracked\.txt/);
    const log = await git(sandbox, 'log', '--format=', '--name-status', '--no-renames', '--', 'logs/tracked.txt');
    expect(log.trim().split('\n').filter(Boolean).map((l) => l[0])).toEqual(['D', 'M', 'M', 'A']);
    await git(sandbox, 'fsck', '--strict', '--no-progress');
  }, 600_000);

  it('commits only what git says changed under the hinted paths', async () => {
    const box = await newRepo('replay-hint');
    await writeFile(path.join(box, 'a.txt'), 'a\n');
    await mkdir(path.join(box, 'd'));
    await writeFile(path.join(box, 'd', 'b.txt'), 'b\n');
    const first = await commitSandbox(box, ['d']);
    expect(first.changes.map((c) => c.path)).toEqual(['d/b.txt']);
    expect(await git(box, 'status', '--porcelain')).toBe('?? a.txt');
  });

  it('commits a file named back\\slash.txt and keeps committing its edits and its deletion', async () => {
    const box = await newRepo('replay-bs');
    const name = 'back\\slash.txt';
    await writeFile(path.join(box, name), 'one\n');
    expect((await commitSandbox(box, [name])).changes).toMatchObject([{ path: name }]);
    await writeFile(path.join(box, name), 'two\n');
    const edit = await commitSandbox(box, [name]);
    expect(edit.changes).toMatchObject([{ path: name, before: {}, after: {} }]);
    await rm(path.join(box, name));
    const gone = await commitSandbox(box);
    expect(gone.changes).toEqual([{ path: name, before: expect.objectContaining({ mode: '100644' }) }]);
    await writeFile(path.join(box, 'later.txt'), 'still working\n');
    expect((await commitSandbox(box)).commit).not.toBeNull();
    expect(await git(box, 'ls-tree', '--name-only', 'HEAD')).toBe('later.txt');
  });

  it('never loses a native commit that raced it: the branch moves only from the head it holds, ours goes on top', async () => {
    const box = await newRepo('replay-race');
    const parent = (await git(box, 'rev-parse', 'HEAD')).trim();
    await writeFile(path.join(box, 'native.txt'), 'by hand\n');
    await git(box, 'add', 'native.txt');
    await git(box, 'commit', '--quiet', '-m', 'native');
    const native = (await git(box, 'rev-parse', 'HEAD')).trim();
    await writeFile(path.join(box, 'ours.txt'), 'ours\n');
    const out = await commitNative<string>(at(box), {
      changes: await worktreeChanges(at(box)), ref: 'refs/heads/develop', parent, author: AUTHOR,
      judge: () => undefined, message: () => 'ours\n',
    });
    // The ref move expecting the old head failed; what was staged is committed on top of the native commit.
    expect(out.changes.map((c) => c.path)).toEqual(['ours.txt']);
    expect((await git(box, 'rev-parse', 'HEAD')).trim()).toBe(out.commit);
    expect((await git(box, 'rev-parse', 'HEAD~1')).trim()).toBe(native);
  });
});

describe('the commit is git\'s: secrets and encrypted paths', () => {
  const KEY_BYTES = randomBytes(32);
  const KEY = EncryptionKey.fromBytes(KEY_BYTES);
  const settings = { encrypt: ['secrets/**', '.env'], maxFileSizeBytes: 1_000_000, allow: [] };
  const AWS = `aws_access_key_id = ${'AKIA'}Q3VZ7K2M9PLX4T8B\n`;

  /** A key file holding KEY, as `init` would make it (the git filter finds the key there). */
  async function keyFile(): Promise<string> {
    const file = path.join(await makeTmpDir('replay-key'), 'team.key');
    await createKeyFile(file, KEY_BYTES);
    return file;
  }

  /** Commits what git says changed the way the sandbox does: the cascade-sync filter registered, encrypted paths kept out when git could not filter them. */
  async function commitWith(box: string, policy: BlobPolicy): Promise<NativeCommitOutcome<HeldBack>> {
    const repo = { dir: box, gitdir: path.join(box, '.git') };
    await setUpEncryptionFilter(repo, { encrypt: settings.encrypt, policy });
    const changes = await worktreeChanges(at(box));
    return commitNative<HeldBack>(at(box), {
      changes, ref: 'refs/heads/develop', parent: (await git(box, 'rev-parse', 'HEAD')).trim(), author: AUTHOR,
      keepOut: keepOutOfGit(repo, policy),
      judge: (p, blob) => policy.judgeStaged(p, blob),
      message: () => 'sync\n',
    });
  }

  it('stores an encrypted path as ciphertext through git\'s cascade-sync filter (its plaintext never an object), and holds it back without a key', async () => {
    const box = await newRepo('replay-enc');
    const plaintext = 'DB_PASSWORD=hunter2-but-longer\n';
    await writeFile(path.join(box, '.env'), plaintext);
    await mkdir(path.join(box, 'secrets'));
    await writeFile(path.join(box, 'secrets', 'a.txt'), 'top secret\n');
    await writeFile(path.join(box, 'plain.txt'), 'hello\n');
    const out = await commitWith(box, new BlobPolicy(settings, KEY, await keyFile()));
    expect(out.held).toEqual([]);
    expect(out.changes.map((c) => c.path).sort()).toEqual(['.env', 'plain.txt', 'secrets/a.txt']);
    for (const p of ['.env', 'secrets/a.txt']) {
      const blob = (await runGit(['cat-file', 'blob', `HEAD:${p}`], at(box))).stdout;
      expect(isEncryptedBlob(blob)).toBe(true);
    }
    // The plaintext blob was never written: git's clean filter encrypted it before git stored anything.
    const oid = (await gitStdin(box, ['hash-object', '--no-filters', '--stdin'], plaintext)).trim();
    expect(await git(box, 'cat-file', '-e', oid).then(() => true, () => false)).toBe(false);

    // Without a key: held back, never staged, never committed.
    const box2 = await newRepo('replay-nokey');
    await writeFile(path.join(box2, '.env'), plaintext);
    await writeFile(path.join(box2, 'plain.txt'), 'hello\n');
    const out2 = await commitWith(box2, new BlobPolicy(settings, undefined));
    expect(out2.held.map((h) => [h.path, h.held.why])).toEqual([['.env', 'no-key']]);
    expect(await git(box2, 'ls-files')).toBe('plain.txt');
    const oid2 = (await gitStdin(box2, ['hash-object', '--no-filters', '--stdin'], plaintext)).trim();
    expect(await git(box2, 'cat-file', '-e', oid2).then(() => true, () => false)).toBe(false);
  });

  it('scans the exact staged bytes and un-stages a file with a finding (new: removed, tracked: HEAD\'s entry back)', async () => {
    const box = await newRepo('replay-scan');
    await writeFile(path.join(box, 'config.txt'), 'clean\n');
    await commitWith(box, new BlobPolicy(settings, KEY));
    const before = (await git(box, 'rev-parse', 'HEAD:config.txt')).trim();
    await writeFile(path.join(box, 'config.txt'), AWS);
    await writeFile(path.join(box, 'new.txt'), AWS);
    await writeFile(path.join(box, 'ok.txt'), 'fine\n');
    const out = await commitWith(box, new BlobPolicy(settings, KEY));
    expect(out.held.map((h) => [h.path, h.held.why]).sort()).toEqual([['config.txt', 'findings'], ['new.txt', 'findings']]);
    expect(out.changes.map((c) => c.path)).toEqual(['ok.txt']);
    expect(await git(box, 'ls-tree', '--name-only', 'HEAD')).toBe('config.txt\nok.txt');
    expect((await git(box, 'rev-parse', ':config.txt')).trim()).toBe(before);
    expect(await git(box, 'ls-files', 'new.txt')).toBe('');
  });
});

async function gitStdin(cwd: string, args: string[], input: string): Promise<string> {
  return (await runGit(args, { ...at(cwd), stdin: input })).stdout.toString('utf8');
}
