import { afterEach, describe, expect, it } from 'vitest';
import { mkdir, readFile, readdir, stat, writeFile, chmod } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { commitFiles, fsckStrict, git, logOneline, lsTree, revParse, showFile, statusPorcelain } from './helpers/git.js';
import { configText, run } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir } from './helpers/tmp.js';
import { refsOf, teamRemote } from './helpers/team.js';
import { startGitHttpServer } from './helpers/git-http-server.js';

/** Servers to close after each test. */
let afterTest: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const close of afterTest) await close();
  afterTest = [];
  await cleanupTmpDirs();
});

describe('init', () => {
  it('makes a new folder a sandbox: repo, default config, develop/staging/main at one commit, develop checked out', async () => {
    const parent = await makeTmpDir('init');
    await mkdir(path.join(parent, 'site'));
    await writeFile(path.join(parent, 'site/index.html'), '<p>hi</p>');
    await writeFile(path.join(parent, 'site/run.sh'), '#!/bin/sh\n');
    await chmod(path.join(parent, 'site/run.sh'), 0o755);
    const r = await run(parent, ['init', 'site', '--remote', './remote.git']);
    expect(r.code, r.stderr).toBe(0);
    const dir = path.join(parent, 'site');
    // git's own defaults for this platform, as `git init` sets them: case-sensitive, real symlinks.
    for (const repo of [dir, path.join(parent, 'remote.git')]) {
      expect(await git(repo, 'config', '--get', 'core.ignorecase').catch(() => 'unset')).not.toMatch(/true/);
      expect(await git(repo, 'config', '--get', 'core.symlinks').catch(() => 'unset')).not.toMatch(/false/);
    }
    // The default config encrypts .env and friends: init made a key file outside the sandbox, mode 0600, and said where.
    const keyLine = /created the encryption key (\S+) \(mode 0600, outside the sandbox\)/.exec(r.stdout);
    expect(keyLine, r.stdout).not.toBeNull();
    expect(path.relative(dir, keyLine![1]!).startsWith('..')).toBe(true);
    expect((await stat(keyLine![1]!)).mode & 0o777).toBe(0o600);
    expect(r.stdout).toContain('back it up');
    const head = await revParse(dir, 'develop');
    expect(await revParse(dir, 'staging')).toBe(head);
    expect(await revParse(dir, 'main')).toBe(head);
    expect(await git(dir, 'symbolic-ref', 'HEAD')).toBe('refs/heads/develop');
    expect(await git(dir, 'config', 'core.filemode')).toBe('true');
    const paths = (await lsTree(dir, 'develop')).map((e) => `${e.mode} ${e.path}`);
    expect(paths).toEqual(expect.arrayContaining(['100644 cascade-sync-config.yaml', '100644 index.html', '100755 run.sh']));
    // The default config is the commented example, with the remote filled in (a local path: no credential lines).
    const config = await readFile(path.join(dir, 'cascade-sync-config.yaml'), 'utf8');
    expect(config).toContain('# cascade-sync configuration');
    expect(config).toContain(`url: ${JSON.stringify(path.join(parent, 'remote.git'))}`);
    expect(config).not.toContain('REMOTE_URL');
    expect((await run(dir, ['validate'])).code).toBe(0);
    // The local bare remote was created with HEAD on develop.
    expect(await git(path.join(parent, 'remote.git'), 'symbolic-ref', 'HEAD')).toBe('refs/heads/develop');
    expect(await statusPorcelain(dir)).toEqual([]);
    await fsckStrict(dir);
    expect((await stat(path.join(dir, '.git/cascade-sync'))).mode & 0o777).toBe(0o700);
  });

  it('takes an scp-like --remote (host:path, as GitHub shows git@github.com:owner/repo.git) for an ssh remote, never for a local folder to create', async () => {
    const dir = await makeTmpDir('init-scp');
    // The host does not exist: init says it could not read the remote and creates nothing for it.
    const r = await run(dir, ['init', '--remote', 'gitbox.invalid:/srv/site.git']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('could not read remote origin (gitbox.invalid:/srv/site.git)');
    expect(r.stdout).not.toContain('created the bare repository');
    expect((await readdir(dir)).sort()).toEqual(['.git', 'cascade-sync-config.yaml']);
    expect(await readFile(path.join(dir, 'cascade-sync-config.yaml'), 'utf8')).toContain('url: "gitbox.invalid:/srv/site.git"');
    expect((await git(dir, 'config', 'remote.origin.url')).trim()).toBe('gitbox.invalid:/srv/site.git');
  });

  it('is idempotent: a second init changes nothing and says so', async () => {
    const dir = await makeTmpDir('init');
    expect((await run(dir, ['init'])).code).toBe(0);
    const before = await git(dir, 'for-each-ref');
    const config = await readFile(path.join(dir, 'cascade-sync-config.yaml'), 'utf8');
    const again = await run(dir, ['init']);
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/already a cascade-sync sandbox; nothing changed/);
    expect(await git(dir, 'for-each-ref')).toBe(before);
    expect(await readFile(path.join(dir, 'cascade-sync-config.yaml'), 'utf8')).toBe(config);
    // An edit made since is current content: init commits it on develop (the branch checked out), once.
    const head = await revParse(dir, 'develop');
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), config.replace(/^sandbox:\n/m, 'sandbox:\n  debounse: 2s\n'));
    const committed = await run(dir, ['init']);
    expect(committed.stdout).toMatch(/committed the current content as [0-9a-f]{7} on develop \(1 file\(s\)\)/);
    expect(await git(dir, 'rev-parse', 'develop^')).toBe(head);
    expect((await showFile(dir, 'develop', 'cascade-sync-config.yaml')).toString()).toContain('debounse: 2s');
    expect(await revParse(dir, 'main')).toBe(head);
    expect(await statusPorcelain(dir)).toEqual([]);
    // A key the config does not know is named, with the nearest valid one, and still changes nothing.
    const warned = await run(dir, ['init']);
    expect(warned.stdout).toMatch(/nothing changed\n.*cascade-sync-config\.yaml:\d+:\d+: warning: sandbox\.debounse: unknown key/);
    expect(warned.stdout).toContain('did you mean "debounce"');
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), config);
    // Without --remote, the default config is sync-only and valid.
    expect(config).toMatch(/^remotes: \[\]/m);
  });

  it('adopts an existing repository, keeping its history and uncommitted work', async () => {
    const dir = await makeTmpDir('adopt');
    await git(dir, 'init', '-q', '-b', 'main');
    const first = await commitFiles(dir, { 'a.txt': 'a' }, 'history 1');
    await commitFiles(dir, { 'b.txt': 'b' }, 'history 2');
    await writeFile(path.join(dir, 'uncommitted.txt'), 'wip');
    const r = await run(dir, ['init']);
    expect(r.code, r.stderr).toBe(0);
    expect(await git(dir, 'symbolic-ref', 'HEAD')).toBe('refs/heads/develop');
    const log = await logOneline(dir, 'develop');
    expect(log.slice(-2)).toEqual(['history 2', 'history 1']);
    expect((await git(dir, 'merge-base', '--is-ancestor', first, 'develop').then(() => 0, () => 1))).toBe(0);
    const paths = (await lsTree(dir, 'develop')).map((e) => e.path);
    expect(paths).toEqual(expect.arrayContaining(['a.txt', 'b.txt', 'uncommitted.txt', 'cascade-sync-config.yaml']));
    // main (the existing production branch) is left where it was; staging is created at develop.
    expect(await logOneline(dir, 'main')).toEqual(['history 2', 'history 1']);
    expect(r.stdout).toMatch(/created branch\(es\) develop, staging at [0-9a-f]{7}/);
    expect(r.stdout).toMatch(/kept the existing branch\(es\) main \([0-9a-f]{7}\)/);
    expect(await revParse(dir, 'staging')).toBe(await revParse(dir, 'develop'));
    expect(await statusPorcelain(dir)).toEqual([]);
    await fsckStrict(dir);
  });

  it('adopts a repository with develop, staging and main where main is checked out: switches to develop (clean), commits the config there, keeps every branch', async () => {
    const { dir, develop, staging, main } = await threeBranchRepo();
    const r = await run(dir, ['init']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/checked out develop: it already existed and branch main had nothing uncommitted/);
    expect(r.stdout).toMatch(/committed the current content as [0-9a-f]{7} on develop/);
    expect(r.stdout).toContain(`kept the existing branch(es) staging (${staging.slice(0, 7)}), main (${main.slice(0, 7)})`);
    expect(await git(dir, 'symbolic-ref', 'HEAD')).toBe('refs/heads/develop');
    // develop moved forward from its own commit (history kept); staging and main did not move.
    await git(dir, 'merge-base', '--is-ancestor', develop, 'develop');
    expect(await git(dir, 'rev-parse', 'develop^')).toBe(develop);
    expect(await revParse(dir, 'staging')).toBe(staging);
    expect(await revParse(dir, 'main')).toBe(main);
    // develop's tree is develop's own files plus the config; nothing of main's tree was committed onto it.
    const tree = (await lsTree(dir, 'develop')).map((e) => `${e.mode} ${e.path}`).sort();
    expect(tree).toEqual(['100644 a.txt', '100644 cascade-sync-config.yaml', '100644 docs/dev-only.md', '100755 tools/run.sh'].sort());
    expect(await readFile(path.join(dir, 'docs/dev-only.md'), 'utf8')).toBe('develop work');
    await expect(stat(path.join(dir, 'main-only.txt'))).rejects.toThrow();
    expect((await stat(path.join(dir, 'tools/run.sh'))).mode & 0o111).not.toBe(0);
    expect(await statusPorcelain(dir)).toEqual([]);
    await fsckStrict(dir);
    expect(await git(dir, 'reflog', '-n', '2', '--format=%gs', 'HEAD')).toContain('checkout: moving from main to develop');
    const refs = await git(dir, 'for-each-ref');
    const again = await run(dir, ['init']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/already a cascade-sync sandbox; nothing changed/);
    expect(await git(dir, 'for-each-ref')).toBe(refs);
    // The audit's symptom: reconcile stalled with WrongBranch; now it runs clean.
    const rec = await run(dir, ['reconcile']);
    expect(rec.code, rec.stdout + rec.stderr).toBe(0);
    expect(rec.stdout + rec.stderr).not.toMatch(/WrongBranch|checked out/);
  });

  it('refuses, changing nothing, when develop exists and the checked-out main has uncommitted work; after `git checkout develop` init commits it there', async () => {
    const { dir, develop, main } = await threeBranchRepo();
    await writeFile(path.join(dir, 'a.txt'), 'edited on main, not committed');
    await writeFile(path.join(dir, 'draft.md'), 'new, untracked');
    const before = await snapshot(dir);
    const r = await run(dir, ['init']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/branch main is checked out, not the sandbox branch develop/);
    expect(r.stderr).toMatch(/a\.txt \(modified\)/);
    expect(r.stderr).toMatch(/draft\.md \(untracked\)/);
    expect(r.stderr).toMatch(/nothing was changed/);
    expect(r.stderr).toContain('hint: check out develop first: git checkout develop');
    expect(await snapshot(dir)).toEqual(before);

    // Following the hint: git carries the edit over (a.txt is the same on both branches), init commits it on develop.
    await git(dir, 'checkout', '-q', 'develop');
    const ok = await run(dir, ['init']);
    expect(ok.code, ok.stderr).toBe(0);
    expect(await git(dir, 'symbolic-ref', 'HEAD')).toBe('refs/heads/develop');
    expect(await git(dir, 'rev-parse', 'develop^')).toBe(develop);
    expect(await revParse(dir, 'main')).toBe(main);
    const paths = (await lsTree(dir, 'develop')).map((e) => e.path);
    expect(paths).toEqual(expect.arrayContaining(['a.txt', 'draft.md', 'cascade-sync-config.yaml', 'docs/dev-only.md', 'tools/run.sh']));
    expect(paths).not.toContain('main-only.txt');
    expect((await showFile(dir, 'develop', 'a.txt')).toString()).toBe('edited on main, not committed');
    expect(await statusPorcelain(dir)).toEqual([]);
    await fsckStrict(dir);
    expect((await run(dir, ['init'])).stdout).toMatch(/nothing changed/);
  });

  it('refuses to switch to develop over an ignored file that develop tracks (native git would overwrite it), changing nothing', async () => {
    const { dir } = await threeBranchRepo({ develop: { 'notes.log': 'develop notes' }, main: { '.gitignore': '*.log\n' } });
    await writeFile(path.join(dir, 'notes.log'), 'my own notes, ignored on main');
    const before = await snapshot(dir);
    const r = await run(dir, ['init']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/switching would overwrite or delete .*: notes\.log/);
    expect(r.stderr).toContain('git checkout develop');
    expect(await snapshot(dir)).toEqual(before);
    expect(await readFile(path.join(dir, 'notes.log'), 'utf8')).toBe('my own notes, ignored on main');
  });

  it('keeps an existing config as it is; --remote only adds a missing remote, keeping comments', async () => {
    const dir = await makeTmpDir('keep');
    const logFile = path.join(await makeTmpDir('logs'), 'x.log');
    const text = `# my own comment\n${configText({ logFile })}`;
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), text);
    expect((await run(dir, ['init'])).code).toBe(0);
    expect(await readFile(path.join(dir, 'cascade-sync-config.yaml'), 'utf8')).toBe(text);
    const remote = path.join(await makeTmpDir('r'), 'r.git');
    const added = await run(dir, ['init', '--remote', remote]);
    expect(added.stdout).toContain(`added remote ${remote}`);
    const now = await readFile(path.join(dir, 'cascade-sync-config.yaml'), 'utf8');
    expect(now).toContain('# my own comment');
    expect(now).toContain(remote);
    expect((await run(dir, ['validate'])).code).toBe(0);
    const again = await run(dir, ['init', '--remote', remote]);
    expect(again.stdout).toMatch(/nothing changed/);
    // The same local remote written relative to the config's folder is the same remote, not a second one.
    const relative = path.relative(dir, remote);
    const same = await run(dir, ['init', '--remote', relative]);
    expect(same.stdout).toMatch(/nothing changed/);
    expect((await readFile(path.join(dir, 'cascade-sync-config.yaml'), 'utf8')).match(/r\.git/g)).toHaveLength(1);
  });

  it('refuses to go on with an invalid existing config, with file:line:col', async () => {
    const dir = await makeTmpDir('bad');
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), 'version: 1\nsandbox:\n  debounce: later\n');
    const r = await run(dir, ['init']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cascade-sync-config\.yaml:3:13: sandbox\.debounce: /);
  });
});

/**
 * A repository as a team might have it before adopting cascade-sync: develop with work of its own
 * (a nested file, an executable), staging at develop, main behind with a file of its own, and main
 * checked out and clean. `extra` adds files to develop's and main's own commits.
 */
async function threeBranchRepo(extra: { develop?: Record<string, string>; main?: Record<string, string> } = {}) {
  const dir = await makeTmpDir('adopt3');
  await git(dir, 'init', '-q', '-b', 'develop');
  const first = await commitFiles(dir, { 'a.txt': 'a' }, 'history 1');
  await mkdir(path.join(dir, 'tools'));
  await writeFile(path.join(dir, 'tools/run.sh'), '#!/bin/sh\n', { mode: 0o755 });
  const develop = await commitFiles(dir, { 'docs/dev-only.md': 'develop work', ...extra.develop }, 'develop work');
  await git(dir, 'branch', 'staging');
  await git(dir, 'checkout', '-q', '-b', 'main', first);
  const main = await commitFiles(dir, { 'main-only.txt': 'production only', ...extra.main }, 'main hotfix');
  return { dir, develop, staging: await revParse(dir, 'staging'), main };
}

/** Everything init could change: refs, HEAD, the index, git status, every file outside .git, and our runtime folder. */
async function snapshot(dir: string) {
  const files: Record<string, string> = {};
  const walk = async (rel: string): Promise<void> => {
    for (const e of await readdir(path.join(dir, rel), { withFileTypes: true })) {
      const p = rel ? `${rel}/${e.name}` : e.name;
      if (p === '.git') continue;
      if (e.isDirectory()) await walk(p);
      else files[p] = await readFile(path.join(dir, p), 'utf8');
    }
  };
  await walk('');
  return {
    refs: await git(dir, 'for-each-ref'),
    head: await git(dir, 'symbolic-ref', 'HEAD'),
    index: createHash('sha256').update(await readFile(path.join(dir, '.git/index'))).digest('hex'),
    status: await statusPorcelain(dir),
    files,
    runtime: await stat(path.join(dir, '.git/cascade-sync')).then(() => true, () => false),
    config: await readFile(path.join(dir, '.git/config'), 'utf8'),
  };
}

describe('plan', () => {
  it('says what the controller would do and why, changing nothing', async () => {
    const remoteDir = await makeTmpDir('remote');
    const remote = path.join(remoteDir, 'r.git');
    const dir = await makeTmpDir('plan');
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), configText({ logFile: path.join(dir, '..', 'plan.log'), remotes: [{ name: 'origin', url: remote }] }));
    expect((await run(dir, ['init'])).code).toBe(0);
    await writeFile(path.join(dir, 'draft.md'), 'new');
    const head = await revParse(dir, 'develop');
    const r = await run(dir, ['plan']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/sandbox: would commit 1 path\(s\): 1 added \(draft\.md\)/);
    expect(r.stdout).toMatch(/remote:origin: would push [0-9a-f]{7} to origin/);
    const json = JSON.parse((await run(dir, ['plan', '--json'])).stdout);
    expect(json.find((p: { name: string }) => p.name === 'sandbox').actions).toHaveLength(1);
    // Nothing changed: no commit, nothing pushed, the edit still pending.
    expect(await revParse(dir, 'develop')).toBe(head);
    expect((await git(remote, 'for-each-ref')).trim()).toBe('');
    expect(await statusPorcelain(dir)).toEqual(['?? draft.md']);
  });
});

describe('init joins a pipeline that already exists on a remote', () => {
  it.each(['local', 'http'])('init DIR --remote URL on a %s remote with history adopts it: develop, staging and main where the remote has them, the team config and files; a sync then changes nothing on the remote', async (kind) => {
    const team = await teamRemote(kind === 'http' ? {
      serve: async (root) => {
        const server = await startGitHttpServer({ root });
        afterTest.push(() => server.close());
        return server.url('site.git');
      },
    } : {});
    const before = await refsOf(team.bare);
    const parent = await makeTmpDir('join');
    const r = await run(parent, ['init', 'joined', '--remote', team.url]);
    expect(r.code, r.stderr).toBe(0);
    const dir = path.join(parent, 'joined');
    expect(r.stdout).toContain(`adopted from remote origin (${team.url}): develop -> ${team.c3.slice(0, 7)}, staging -> ${team.c2.slice(0, 7)}, main -> ${team.c1.slice(0, 7)}`);
    expect(r.stdout).not.toMatch(/wrote the default config/);
    // Native git: each branch is exactly the remote's, no commit of its own, develop checked out and clean.
    expect(await revParse(dir, 'develop')).toBe(team.c3);
    expect(await revParse(dir, 'staging')).toBe(team.c2);
    expect(await revParse(dir, 'main')).toBe(team.c1);
    expect(await git(dir, 'symbolic-ref', 'HEAD')).toBe('refs/heads/develop');
    expect(await statusPorcelain(dir)).toEqual([]);
    // The team's config is the one in the sandbox, byte for byte; the files came with it.
    expect(await readFile(path.join(dir, 'cascade-sync-config.yaml'), 'utf8')).toBe(team.config);
    expect(await readFile(path.join(dir, 'app.txt'), 'utf8')).toBe('v3\n');
    expect(await readFile(path.join(dir, 'notes.md'), 'utf8')).toBe('more\n');
    await fsckStrict(dir);
    expect(await refsOf(team.bare)).toBe(before);
    // A full pass of the controller: nothing to push, nothing moved on the remote (the team's config stays there too).
    const rec = await run(dir, ['reconcile']);
    expect(rec.code, rec.stdout + rec.stderr).toBe(0);
    expect(await refsOf(team.bare)).toBe(before);
    expect((await showFile(team.bare, 'develop', 'cascade-sync-config.yaml')).toString()).toBe(team.config);
    // Idempotent.
    const again = await run(dir, ['init', '--remote', team.url]);
    expect(again.stdout).toMatch(/nothing changed/);
  });

  it('init --remote URL into a folder with files of its own: the remote files arrive, the own ones are kept and committed on top', async () => {
    const team = await teamRemote();
    const dir = await makeTmpDir('join-files');
    await writeFile(path.join(dir, 'app.txt'), 'my local version\n');
    await writeFile(path.join(dir, 'mine.txt'), 'mine\n');
    const r = await run(dir, ['init', '--remote', team.bare]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/kept 1 file\(s\) already here as they are \(app\.txt\)/);
    expect(await git(dir, 'rev-parse', 'develop^')).toBe(team.c3);
    expect((await showFile(dir, 'develop', 'app.txt')).toString()).toBe('my local version\n');
    expect((await showFile(dir, 'develop', 'mine.txt')).toString()).toBe('mine\n');
    // Nothing of the team's tree was deleted by the own commit.
    expect((await showFile(dir, 'develop', 'notes.md')).toString()).toBe('more\n');
    expect((await showFile(dir, 'develop', 'cascade-sync-config.yaml')).toString()).toBe(team.config);
    expect(await revParse(dir, 'main')).toBe(team.c1);
    expect(await statusPorcelain(dir)).toEqual([]);
  });

  it('refuses a remote whose history is unrelated to the repository (Stalled UnrelatedHistory, with a hint), changing nothing', async () => {
    const team = await teamRemote();
    const remoteBefore = await refsOf(team.bare);
    const dir = await makeTmpDir('own');
    await writeFile(path.join(dir, 'index.html'), '<p>my own site</p>\n');
    expect((await run(dir, ['init'])).code).toBe(0);
    await writeFile(path.join(dir, 'draft.md'), 'not committed yet\n');
    const before = await snapshot(dir);
    const r = await run(dir, ['init', '--remote', team.bare]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/UnrelatedHistory/);
    expect(r.stderr).toContain(`remote origin (${team.bare}) has history unrelated to this repository`);
    expect(r.stderr).toMatch(/nothing was changed/);
    expect(r.stderr).toContain(`hint: to join that pipeline, clone it and run init in the clone: git clone ${team.bare} DIR`);
    expect(await snapshot(dir)).toEqual(before);
    expect(await refsOf(team.bare)).toBe(remoteBefore);
    await fsckStrict(dir);
  });
});
