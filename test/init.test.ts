import { afterEach, describe, expect, it } from 'vitest';
import { mkdir, readFile, stat, writeFile, chmod } from 'node:fs/promises';
import path from 'node:path';
import { commitFiles, fsckStrict, git, logOneline, lsTree, revParse, statusPorcelain } from './helpers/git.js';
import { configText, run } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir } from './helpers/tmp.js';

afterEach(cleanupTmpDirs);

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
    // A key the config does not know is named, with the nearest valid one, and still changes nothing.
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), config.replace(/^sandbox:\n/m, 'sandbox:\n  debounse: 2s\n'));
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
    expect(await revParse(dir, 'staging')).toBe(await revParse(dir, 'develop'));
    expect(await statusPorcelain(dir)).toEqual([]);
    await fsckStrict(dir);
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
