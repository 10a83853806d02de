import { afterEach, describe, expect, it } from 'vitest';
import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { cloneTo, commitFiles, fsckStrict, git, gitOk, logOneline, makeBareRepo, revParse, showFile, statusPorcelain, tryRevParse } from './helpers/git.js';
import { startGitHttpServer, type GitHttpServer } from './helpers/git-http-server.js';
import { makeSandbox, run, startController, testEnv, type RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

let controllers: RunningController[] = [];
let servers: GitHttpServer[] = [];
afterEach(async () => {
  for (const c of controllers) await c.stop();
  for (const s of servers) await s.close();
  controllers = [];
  servers = [];
  await cleanupTmpDirs();
});

const USER = 'ci-bot';
const PASS = 's3cret-Passw0rd-xyz';

async function httpRemote(opts: { auth?: boolean } = {}) {
  const root = await makeTmpDir('remotes');
  await makeBareRepo(path.join(root, 'site.git'), { initialBranch: 'develop' });
  const server = await startGitHttpServer({ root, ...(opts.auth === false ? {} : { username: USER, password: PASS }) });
  servers.push(server);
  return { server, bare: path.join(root, 'site.git'), url: server.url('site.git') };
}

async function start(dir: string, env = testEnv({ CASCADE_CLIENT_ID: USER, CASCADE_CLIENT_SECRET: PASS })) {
  const c = await startController(dir, env);
  controllers.push(c);
  return c;
}

async function status(dir: string) {
  return JSON.parse(await readFile(path.join(dir, '.git/cascade-sync/status.json'), 'utf8'));
}

async function remoteHas(bare: string, file: string, content: string): Promise<boolean> {
  const r = await gitOk(bare, 'show', `develop:${file}`);
  return r.code === 0 && r.stdout === content;
}

describe('develop <-> remotes', () => {
  it('pushes each commit to a smart-HTTP remote with basic auth from ${CASCADE_CLIENT_ID}/${CASCADE_CLIENT_SECRET}, never showing them', async () => {
    const { url, bare } = await httpRemote();
    const { dir, logFile } = await makeSandbox({ remotes: [{ name: 'origin', url }] });
    const c = await start(dir);
    await writeFile(path.join(dir, 'page.html'), '<h1>hi</h1>\n');
    await waitFor(() => remoteHas(bare, 'page.html', '<h1>hi</h1>\n'), { what: 'the commit in the remote' });
    expect(await revParse(bare, 'develop')).toBe(await revParse(dir, 'develop'));
    await fsckStrict(bare);
    await waitFor(async () => (await status(dir)).remotes[0].lastPush?.commit === (await revParse(dir, 'develop')) || undefined, { what: 'status to show the push' });
    const st = await run(dir, ['status', '--json'], testEnv({ CASCADE_CLIENT_ID: USER, CASCADE_CLIENT_SECRET: PASS }));
    for (const text of [await readFile(logFile, 'utf8'), c.stdout.text(), st.stdout, await readFile(path.join(dir, '.git/cascade-sync/status.json'), 'utf8')]) {
      expect(text).not.toContain(PASS);
      expect(text).not.toContain(USER);
    }
  });

  it('keeps committing through an outage and delivers everything when the remote is back', async () => {
    const { url, bare, server } = await httpRemote();
    const { dir } = await makeSandbox({ remotes: [{ name: 'origin', url }] });
    await start(dir);
    await waitFor(async () => (await tryRevParse(bare, 'develop')) === (await revParse(dir, 'develop')) || undefined, { what: 'the first push' });
    await server.setMode('down-503');
    await writeFile(path.join(dir, 'one.txt'), '1');
    await waitFor(async () => (await logOneline(dir, 'develop'))[0]?.includes('one.txt') || undefined, { what: 'commit one' });
    await waitFor(async () => (await status(dir)).remotes[0].error?.reason === 'RemoteUnavailable' || undefined, { what: 'status to report the outage' });
    await server.setMode('refuse');
    await writeFile(path.join(dir, 'two.txt'), '2');
    await waitFor(async () => (await logOneline(dir, 'develop'))[0]?.includes('two.txt') || undefined, { what: 'commit two' });
    expect(await remoteHas(bare, 'one.txt', '1')).toBe(false);
    await server.setMode('ok');
    await waitFor(async () => (await tryRevParse(bare, 'develop')) === (await revParse(dir, 'develop')) || undefined, { what: 'everything pushed after recovery', timeoutMs: 30_000 });
    expect(await remoteHas(bare, 'one.txt', '1')).toBe(true);
    expect(await remoteHas(bare, 'two.txt', '2')).toBe(true);
    await waitFor(async () => !(await status(dir)).remotes[0].error || undefined, { what: 'the error to clear' });
    await fsckStrict(bare);
  });

  it('treats a remote that hangs past remotes[].timeout as unreachable, and delivers once it answers', async () => {
    const { url, bare, server } = await httpRemote({ auth: false });
    const { dir } = await makeSandbox({ remotes: [{ name: 'origin', url, timeout: '1s' }] });
    await server.setMode('hang');
    await start(dir, testEnv());
    await writeFile(path.join(dir, 'during-hang.txt'), 'waiting');
    await waitFor(async () => (await logOneline(dir, 'develop'))[0]?.includes('during-hang.txt') || undefined, { what: 'the local commit while the remote hangs' });
    await waitFor(async () => (await status(dir)).remotes[0].error?.reason === 'RemoteUnavailable' || undefined, { what: 'the timeout to be reported' });
    await server.setMode('ok');
    await waitFor(() => remoteHas(bare, 'during-hang.txt', 'waiting'), { what: 'the commit in the remote after the hang', timeoutMs: 30_000 });
  });

  it('reports refused credentials as Stalled AuthFailed, without a retry storm', async () => {
    const { url, server } = await httpRemote();
    const { dir } = await makeSandbox({ remotes: [{ name: 'origin', url }] });
    await start(dir, testEnv({ CASCADE_CLIENT_ID: USER, CASCADE_CLIENT_SECRET: 'wrong-password' }));
    await waitFor(async () => (await status(dir)).remotes[0].error?.reason === 'AuthFailed' || undefined, { what: 'AuthFailed in status' });
    const st = await status(dir);
    const rc = st.reconcilers.find((r: { name: string }) => r.name === 'remote:origin');
    expect(rc.conditions.find((c: { type: string }) => c.type === 'Stalled')?.status).toBe(true);
    expect(rc.lastError.hint).toMatch(/CASCADE_CLIENT_ID/);
    // Stalled: the next attempt is at least a minute away, not a backoff loop.
    expect(Date.parse(rc.nextRunAt) - Date.now()).toBeGreaterThan(30_000);
    const text = await run(dir, ['status'], testEnv());
    expect(text.stdout).toMatch(/STALLED \(AuthFailed/);
    expect(text.stdout).not.toContain('wrong-password');
    const requests = server.requests.length;
    await writeFile(path.join(dir, 'x.txt'), 'x');
    await waitFor(async () => (await logOneline(dir, 'develop'))[0]?.includes('x.txt') || undefined, { what: 'a local commit while stalled' });
    // A new commit does not hammer a remote that refused our credentials.
    expect(server.requests.length - requests).toBeLessThanOrEqual(4);
  });

  it("reports a push refused by the remote's hook as Stalled PushRejected with the remote's message", async () => {
    const { url, bare } = await httpRemote({ auth: false });
    await writeFile(path.join(bare, 'hooks/pre-receive'), '#!/bin/sh\necho "develop is protected by policy" >&2\nexit 1\n', { mode: 0o755 });
    const { dir } = await makeSandbox({ remotes: [{ name: 'origin', url }] });
    await start(dir);
    await waitFor(async () => (await status(dir)).remotes[0].error?.reason === 'PushRejected' || undefined, { what: 'PushRejected in status' });
    const rc = (await status(dir)).reconcilers.find((r: { name: string }) => r.name === 'remote:origin');
    expect(rc.conditions.find((c: { type: string }) => c.type === 'Stalled')?.status).toBe(true);
    expect(rc.lastError.message).toMatch(/refused the push/);
    expect(await tryRevParse(bare, 'develop')).toBeUndefined();
  });

  it('brings commits pushed elsewhere into the sandbox files', async () => {
    const { url, bare } = await httpRemote({ auth: false });
    const { dir } = await makeSandbox({ remotes: [{ name: 'origin', url }], files: { 'a.txt': 'a\n' } });
    await start(dir);
    await waitFor(async () => (await tryRevParse(bare, 'develop')) === (await revParse(dir, 'develop')) || undefined, { what: 'the first push' });
    const other = await makeTmpDir('other');
    await cloneTo(url, other, '--branch', 'develop');
    const theirs = await commitFiles(other, { 'from-elsewhere.txt': 'hello\n', 'a.txt': 'a changed elsewhere\n' }, 'elsewhere');
    await git(other, 'push', 'origin', 'develop');
    await waitFor(async () => (await readFile(path.join(dir, 'from-elsewhere.txt'), 'utf8').catch(() => '')) === 'hello\n' || undefined, { what: 'the remote file in the sandbox' });
    expect(await readFile(path.join(dir, 'a.txt'), 'utf8')).toBe('a changed elsewhere\n');
    // Files are written first, the branch moves last (a crash in between never commits a revert).
    await waitFor(async () => (await revParse(dir, 'develop')) === theirs || undefined, { what: 'develop fast-forwarded to the remote commit' });
    await waitFor(async () => (await statusPorcelain(dir)).length === 0 || undefined, { what: 'a clean status' });
    await fsckStrict(dir);
  });

  it('merges concurrent changes with the sandbox winning text and modify/delete conflicts, keeping the remote commit', async () => {
    const { url, bare } = await httpRemote({ auth: false });
    const { dir } = await makeSandbox({ remotes: [{ name: 'origin', url }], files: { 'both.txt': 'base\n', 'del-here.txt': 'base\n', 'del-there.txt': 'base\n', 'only-there.txt': 'base\n' }, fetch: '1h' });
    // First sync without the controller's fetch loop interfering: one reconcile pass.
    expect((await run(dir, ['reconcile'])).code).toBe(0);
    const other = await makeTmpDir('other');
    await cloneTo(url, other, '--branch', 'develop');
    await writeFile(path.join(other, 'both.txt'), 'theirs\n');
    await writeFile(path.join(other, 'del-here.txt'), 'theirs modified\n');
    await rm(path.join(other, 'del-there.txt'));
    await writeFile(path.join(other, 'only-there.txt'), 'theirs\n');
    await git(other, 'add', '-A');
    await git(other, 'commit', '-m', 'their change');
    await git(other, 'push', 'origin', 'develop');
    const theirs = await revParse(other, 'HEAD');
    // Meanwhile in the sandbox: the same file changed, one deleted here, one modified here.
    await writeFile(path.join(dir, 'both.txt'), 'ours\n');
    await rm(path.join(dir, 'del-here.txt'));
    await writeFile(path.join(dir, 'del-there.txt'), 'ours modified\n');
    const r = await run(dir, ['reconcile']);
    expect(r.code, r.stderr + r.stdout).toBe(0);
    const head = await revParse(dir, 'develop');
    expect(await revParse(bare, 'develop')).toBe(head);
    expect((await gitOk(dir, 'merge-base', '--is-ancestor', theirs, head)).code).toBe(0);
    expect((await showFile(dir, head, 'both.txt')).toString()).toBe('ours\n');
    expect((await gitOk(dir, 'cat-file', '-e', `${head}:del-here.txt`)).code).not.toBe(0);
    expect((await showFile(dir, head, 'del-there.txt')).toString()).toBe('ours modified\n');
    expect((await showFile(dir, head, 'only-there.txt')).toString()).toBe('theirs\n');
    expect(await readFile(path.join(dir, 'only-there.txt'), 'utf8')).toBe('theirs\n');
    expect(await readFile(path.join(dir, 'both.txt'), 'utf8')).toBe('ours\n');
    expect(await statusPorcelain(dir)).toEqual([]);
    await fsckStrict(dir);
    await fsckStrict(bare);
  });

  it('never overwrites a file being edited when remote commits arrive', async () => {
    const { url, bare } = await httpRemote({ auth: false });
    const { dir } = await makeSandbox({ remotes: [{ name: 'origin', url }], files: { 'draft.txt': 'v1\n' }, debounce: '6s', batchWindow: '12s', fetch: '1s' });
    await start(dir);
    await waitFor(async () => (await tryRevParse(bare, 'develop')) === (await revParse(dir, 'develop')) || undefined, { what: 'the first push' });
    // The user is typing (not yet committed: debounce 6 s) ...
    await writeFile(path.join(dir, 'draft.txt'), 'my unsaved thoughts\n');
    // ... while someone else pushes a change to the same file and another file.
    const other = await makeTmpDir('other');
    await cloneTo(url, other, '--branch', 'develop');
    const theirs = await commitFiles(other, { 'draft.txt': 'their version\n', 'note.txt': 'note\n' }, 'their edit');
    await git(other, 'push', 'origin', 'develop');
    await waitFor(async () => (await readFile(path.join(dir, 'note.txt'), 'utf8').catch(() => '')) === 'note\n' || undefined, { what: 'the merge to reach the sandbox' });
    expect(await readFile(path.join(dir, 'draft.txt'), 'utf8')).toBe('my unsaved thoughts\n');
    // The edit is then committed on top, and everything reaches the remote.
    await waitFor(() => remoteHas(bare, 'draft.txt', 'my unsaved thoughts\n'), { what: 'the edit in the remote' });
    expect((await gitOk(bare, 'merge-base', '--is-ancestor', theirs, 'develop')).code).toBe(0);
    await fsckStrict(dir);
  });

  it('keeps pushing to a healthy remote while another is down', async () => {
    const good = await makeTmpDir('good');
    await makeBareRepo(path.join(good, 'r.git'), { initialBranch: 'develop' });
    const { url: badUrl, server } = await httpRemote({ auth: false });
    await server.setMode('down-503');
    const { dir } = await makeSandbox({ remotes: [{ name: 'down', url: badUrl }, { name: 'local', url: path.join(good, 'r.git') }] });
    await start(dir);
    await writeFile(path.join(dir, 'f.txt'), 'x');
    await waitFor(() => remoteHas(path.join(good, 'r.git'), 'f.txt', 'x'), { what: 'the push to the healthy local remote' });
    const st = await status(dir);
    expect(st.remotes.find((r: { name: string }) => r.name === 'down').error.reason).toBe('RemoteUnavailable');
    expect(st.remotes.find((r: { name: string }) => r.name === 'local').error).toBeUndefined();
  });
});
