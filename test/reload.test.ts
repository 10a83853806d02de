import { afterEach, describe, expect, it } from 'vitest';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { git, gitOk, logOneline, lsTree, makeBareRepo, revParse, statusPorcelain, tryRevParse } from './helpers/git.js';
import { configText, makeSandbox, run, startController, type RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';
import { startGitHttpServer } from './helpers/git-http-server.js';

let controllers: RunningController[] = [];
afterEach(async () => {
  for (const c of controllers) await c.stop();
  controllers = [];
  await cleanupTmpDirs();
});

async function status(dir: string) {
  return JSON.parse(await readFile(path.join(dir, '.git/cascade-sync/status.json'), 'utf8'));
}

const DEFAULT_EXCLUDES = ['*.tmp', '.cache/', 'node_modules/', '*.pid', 'nohup.out', '.venv/', 'dist/', 'build/'];

describe('config hot reload', () => {
  it('applies a new exclusion and a new remote without a restart', async () => {
    const { dir, logFile } = await makeSandbox();
    const c = await startController(dir);
    controllers.push(c);
    const remote = path.join(await makeTmpDir('remote'), 'r.git');
    await makeBareRepo(remote, { initialBranch: 'develop' });
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), configText({ logFile, exclude: [...DEFAULT_EXCLUDES, '*.log'], remotes: [{ name: 'backup', url: remote }] }));
    await waitFor(() => c.stdout.text().includes('config reloaded') || undefined, { what: 'the reload' });
    // The new remote gets everything, including the config edit's own commit.
    await waitFor(async () => (await tryRevParse(remote, 'develop')) === (await revParse(dir, 'develop')) || undefined, { what: 'a push to the new remote' });
    await writeFile(path.join(dir, 'debug.log'), 'noise');
    await writeFile(path.join(dir, 'kept.txt'), 'kept');
    await waitFor(async () => (await lsTree(remote, 'develop')).some((e) => e.path === 'kept.txt') || undefined, { what: 'kept.txt in the new remote' });
    expect((await lsTree(dir, 'develop')).map((e) => e.path)).not.toContain('debug.log');
    expect(await readFile(path.join(dir, '.git/info/exclude'), 'utf8')).toContain('*.log');
    expect(await statusPorcelain(dir)).toEqual([]);
  });

  it('keeps the last good config when an edit does not validate, reports it, and recovers when fixed', async () => {
    // The good config differs from the defaults in ways a commit shows: a remote (the defaults have
    // none) and its own commit message template (the default is "sync: {summary}").
    const remote = path.join(await makeTmpDir('remote'), 'r.git');
    await makeBareRepo(remote, { initialBranch: 'develop' });
    const { dir, logFile } = await makeSandbox({ remotes: [{ name: 'backup', url: remote }] });
    const made = await readFile(path.join(dir, 'cascade-sync-config.yaml'), 'utf8');
    const good = made.replace(/^( {2}batchWindow: .*)$/m, '$1\n  commitMessage: "good: {summary}"');
    expect(good).not.toBe(made);
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), good);
    const c = await startController(dir);
    controllers.push(c);
    await waitFor(async () => (await tryRevParse(remote, 'develop')) === (await revParse(dir, 'develop')) || undefined, { what: 'the first push to the remote' });
    expect((await logOneline(dir, 'develop'))[0]).toBe('good: 1 modified (cascade-sync-config.yaml)');
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), good.replace('debounce: 300ms', 'debounce: soon').replace('version: 1', 'version: 1\nbogus: true'));
    await waitFor(async () => (await status(dir)).config.valid === false || undefined, { what: 'status to show the invalid config' });
    const st = await status(dir);
    expect(st.config.problems.length).toBe(2);
    expect(st.config.problems.join('\n')).toMatch(/cascade-sync-config\.yaml:\d+:\d+: sandbox\.debounce: /);
    expect(st.config.problems.join('\n')).toMatch(/unknown key "bogus"/);
    expect(await readFile(logFile, 'utf8')).toMatch(/notify config-invalid/);
    const cli = await run(dir, ['status']);
    expect(cli.stdout).toMatch(/config: +INVALID \(the controller keeps the last good config\)/);
    // Still syncing with the last good config, not the defaults: its template names the commit and
    // its remote receives it (with the defaults there would be no remote at all).
    await writeFile(path.join(dir, 'still.txt'), 'working');
    await waitFor(async () => (await lsTree(remote, 'develop')).some((e) => e.path === 'still.txt') || undefined, { what: 'still.txt in the last good config\'s remote', timeoutMs: 30_000 }).catch(async (e: Error) => {
      throw new Error(`${e.message}\nsandbox develop: ${(await logOneline(dir, 'develop')).slice(0, 4).join(' | ')}\n${c.stdout.text().slice(-3000)}`);
    });
    const subjects = await logOneline(remote, 'develop');
    expect(subjects.find((m) => m.includes('still.txt'))).toBe('good: 1 added (still.txt)');
    expect(subjects.some((m) => m.startsWith('sync: '))).toBe(false);
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), good);
    await waitFor(async () => (await status(dir)).config.valid === true || undefined, { what: 'the config to be valid again' });
    expect(c.stdout.text()).toMatch(/config reloaded \(valid again\)/);
  });
});

describe('wrong branch checked out', () => {
  it('stops committing and merging into another branch, says why, and resumes on checkout', async () => {
    const { url } = { url: path.join(await makeTmpDir('remote'), 'r.git') };
    await makeBareRepo(url, { initialBranch: 'develop' });
    const { dir } = await makeSandbox({ remotes: [{ name: 'origin', url }], files: { 'b.txt': 'b' } });
    const c = await startController(dir);
    controllers.push(c);
    await waitFor(async () => (await tryRevParse(url, 'develop')) === (await revParse(dir, 'develop')) || undefined, { what: 'the first push' });
    await git(dir, 'checkout', '-q', '-b', 'feature');
    // Someone pushes to develop; the sandbox has feature checked out: nothing may land in its files.
    const other = await makeTmpDir('other');
    await git(other, 'clone', '-q', '--branch', 'develop', url, '.');
    await writeFile(path.join(other, 'b.txt'), 'remote change');
    await git(other, 'commit', '-qam', 'remote change');
    await git(other, 'push', '-q', 'origin', 'develop');
    await writeFile(path.join(dir, 'on-feature.txt'), 'x');
    await waitFor(async () => {
      const st = await status(dir);
      return st.reconcilers.find((r: { name: string }) => r.name === 'remote:origin')?.lastError?.reason === 'WrongBranch' && st.reconcilers.find((r: { name: string }) => r.name === 'sandbox')?.lastError?.reason === 'WrongBranch' || undefined;
    }, { what: 'both reconcilers to report WrongBranch' });
    expect(await readFile(path.join(dir, 'b.txt'), 'utf8')).toBe('b');
    expect((await gitOk(dir, 'diff', '--cached', '--quiet')).code).toBe(0);
    expect((await logOneline(dir, 'feature'))[0]).not.toMatch(/sync:/);
    // Checking out develop again (no file changes) is noticed without a restart or a nudge.
    await git(dir, 'checkout', '-q', 'develop');
    await waitFor(async () => (await readFile(path.join(dir, 'b.txt'), 'utf8')) === 'remote change' || undefined, { what: 'the remote change after checkout', timeoutMs: 30_000 });
  });
});

describe('a reload while a pass is under way', () => {
  it('keeps that reconciler running afterwards (a push hanging during the reload is retried and lands)', async () => {
    const root = await makeTmpDir('remotes');
    await makeBareRepo(path.join(root, 'site.git'), { initialBranch: 'develop' });
    const server = await startGitHttpServer({ root });
    try {
      const url = server.url('site.git');
      const { dir, logFile } = await makeSandbox({ remotes: [{ name: 'origin', url, timeout: '3s' }] });
      const c = await startController(dir);
      controllers.push(c);
      const bare = path.join(root, 'site.git');
      await waitFor(async () => (await tryRevParse(bare, 'develop')) === (await revParse(dir, 'develop')) || undefined, { what: 'the first push' });
      // The remote hangs: the next push is in flight when the config is edited.
      await server.setMode('hang');
      await writeFile(path.join(dir, 'during.txt'), 'pushed while the config reloads');
      await waitFor(async () => (await lsTree(dir, 'develop')).some((e) => e.path === 'during.txt') || undefined, { what: 'the commit' });
      const config = await readFile(path.join(dir, 'cascade-sync-config.yaml'), 'utf8');
      await writeFile(path.join(dir, 'cascade-sync-config.yaml'), config.replace('retry: {', 'retry: { max: 1s,').replace(/max: 2s, /, ''));
      await waitFor(() => /config reloaded/.test(c.stdout.text()) || undefined, { what: 'the reload' });
      await server.setMode('ok');
      await waitFor(async () => (await tryRevParse(bare, 'develop')) === (await revParse(dir, 'develop')) || undefined, { what: 'the push after the reload', timeoutMs: 30_000 }).catch(async (e: Error) => {
        throw new Error(`${e.message}\n${(await readFile(logFile, 'utf8')).split('\n').filter((l) => l.includes('origin')).slice(-8).join('\n')}`);
      });
    } finally {
      await server.close();
    }
  }, 90_000);
});
