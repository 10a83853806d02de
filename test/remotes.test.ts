import { afterEach, describe, expect, it } from 'vitest';
import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { cloneTo, commitFiles, fsckStrict, git, gitOk, logOneline, makeBareRepo, revParse, showFile, statusPorcelain, tryRevParse } from './helpers/git.js';
import { startGitHttpServer, type GitHttpServer } from './helpers/git-http-server.js';
import { gaps, startTimedGitHttpServer } from './helpers/remote-timing.js';
import { makeSandbox, run, startController, testEnv, type RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';
import { refsOf, teamRemote } from './helpers/team.js';
import { planEnvironmentBranch, type EnvironmentBranchFacts } from '../reconcilers/remote.js';

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
/** A wrong password, distinctive enough that any occurrence in output is a leak. */
const BAD_PASS = 'wr0ng-Passw0rd-q7#z';

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

interface ReconcilerStatus {
  name: string;
  failures: number;
  running: boolean;
  lastError?: { reason: string };
}

function reconciler(st: { reconcilers: ReconcilerStatus[] }, name: string): ReconcilerStatus {
  const r = st.reconcilers.find((x) => x.name === name);
  if (!r) throw new Error(`no reconciler ${name} in status: ${st.reconcilers.map((x) => x.name).join(', ')}`);
  return r;
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
    const { dir, logFile } = await makeSandbox({ remotes: [{ name: 'origin', url }] });
    const c = await start(dir, testEnv({ CASCADE_CLIENT_ID: USER, CASCADE_CLIENT_SECRET: BAD_PASS }));
    await waitFor(async () => (await status(dir)).remotes[0].error?.reason === 'AuthFailed' || undefined, { what: 'AuthFailed in status' });
    const st = await status(dir);
    const rc = st.reconcilers.find((r: { name: string }) => r.name === 'remote:origin');
    expect(rc.conditions.find((c: { type: string }) => c.type === 'Stalled')?.status).toBe(true);
    expect(rc.lastError.hint).toMatch(/CASCADE_CLIENT_ID/);
    // Stalled: the next attempt is at least a minute away, not a backoff loop.
    expect(Date.parse(rc.nextRunAt) - Date.now()).toBeGreaterThan(30_000);
    const text = await run(dir, ['status'], testEnv());
    expect(text.stdout).toMatch(/STALLED \(AuthFailed/);
    expect(text.stdout).not.toContain(BAD_PASS);
    const requests = server.requests.length;
    await writeFile(path.join(dir, 'x.txt'), 'x');
    await waitFor(async () => (await logOneline(dir, 'develop'))[0]?.includes('x.txt') || undefined, { what: 'a local commit while stalled' });
    // A new commit does not hammer a remote that refused our credentials.
    expect(server.requests.length - requests).toBeLessThanOrEqual(4);
    // The refused password never shows: not in the log file, status.json, `status --json` or the terminal.
    await waitFor(async () => (await readFile(logFile, 'utf8')).includes('AuthFailed') || undefined, { what: 'AuthFailed in the log file' });
    const json = await run(dir, ['status', '--json'], testEnv({ CASCADE_CLIENT_ID: USER, CASCADE_CLIENT_SECRET: BAD_PASS }));
    expect(JSON.parse(json.stdout).snapshot.remotes[0].error.reason).toBe('AuthFailed');
    const basic = Buffer.from(`${USER}:${BAD_PASS}`).toString('base64');
    const texts = { log: await readFile(logFile, 'utf8'), statusFile: await readFile(path.join(dir, '.git/cascade-sync/status.json'), 'utf8'), statusJson: json.stdout + json.stderr, terminal: c.stdout.text() };
    for (const [where, t] of Object.entries(texts)) {
      expect(t, where).not.toContain(BAD_PASS);
      expect(t, where).not.toContain(encodeURIComponent(BAD_PASS));
      expect(t, where).not.toContain(basic);
    }
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
    const { dir, logFile } = await makeSandbox({ remotes: [{ name: 'origin', url }], files: { 'draft.txt': 'v1\n' }, debounce: '6s', batchWindow: '12s', fetch: '1s' });
    await start(dir);
    await waitFor(async () => (await tryRevParse(bare, 'develop')) === (await revParse(dir, 'develop')) || undefined, { what: 'the first push' });
    // Someone else changes the same file and another one (prepared first, so that only the push
    // falls inside the 6 s debounce and the remote commit arrives while the edit is uncommitted) ...
    const other = await makeTmpDir('other');
    await cloneTo(url, other, '--branch', 'develop');
    const theirs = await commitFiles(other, { 'draft.txt': 'their version\n', 'note.txt': 'note\n' }, 'their edit');
    // ... while the user is typing (not yet committed: debounce 6 s).
    await writeFile(path.join(dir, 'draft.txt'), 'my unsaved thoughts\n');
    await git(other, 'push', 'origin', 'develop');
    await waitFor(async () => (await readFile(path.join(dir, 'note.txt'), 'utf8').catch(() => '')) === 'note\n' || undefined, { what: 'the merge to reach the sandbox' });
    expect(await readFile(path.join(dir, 'draft.txt'), 'utf8')).toBe('my unsaved thoughts\n');
    // The edited file was deliberately left alone: its edit is committed first, then merged with the remote's commit.
    const lines = async () => (await readFile(logFile, 'utf8')).split('\n').filter(Boolean).map((l) => JSON.parse(l) as { msg: string; commit?: string });
    await waitFor(async () => (await lines()).find((l) => /1 file\(s\) the remote changed are being edited here \(draft\.txt\): committing them before merging/.test(l.msg)), { what: 'the log to say draft.txt is committed before merging' });
    await waitFor(async () => (await lines()).find((l) => new RegExp(`^merge: ${theirs.slice(0, 7)} into develop`).test(l.msg)), { what: 'the merge of the remote commit', timeoutMs: 40_000 });
    // The edit is then committed on top, and everything reaches the remote.
    await waitFor(() => remoteHas(bare, 'draft.txt', 'my unsaved thoughts\n'), { what: 'the edit in the remote', timeoutMs: 40_000 });
    expect((await gitOk(bare, 'merge-base', '--is-ancestor', theirs, 'develop')).code).toBe(0);
    await fsckStrict(dir);
  });

  it('backs off a failing remote geometrically up to retry.max, counts the failures in status, and starts short again after a success', async () => {
    const root = await makeTmpDir('remotes');
    await makeBareRepo(path.join(root, 'site.git'), { initialBranch: 'develop' });
    const timed = await startTimedGitHttpServer({ root });
    servers.push(timed.server);
    const bare = path.join(root, 'site.git');
    const { dir } = await makeSandbox({ remotes: [{ name: 'origin', url: timed.server.url('site.git') }] });
    // The expectations below are computed from exactly this policy.
    expect(await readFile(path.join(dir, 'cascade-sync-config.yaml'), 'utf8')).toContain('retry: { initial: 200ms, factor: 2, max: 2s, jitter: 0 }');
    await start(dir, testEnv());
    await waitFor(async () => (await tryRevParse(bare, 'develop')) === (await revParse(dir, 'develop')) || undefined, { what: 'the first push' });
    await waitFor(async () => reconciler(await status(dir), 'remote:origin').failures === 0 || undefined, { what: 'a healthy remote reconciler' });

    /** Arrival times of the requests answered with the fault: one per attempt, since each pass stops at its first failed request. */
    const failedAt = () => timed.arrivals.filter((a) => a.fault !== undefined).map((a) => a.at);
    const context = () => JSON.stringify({ gaps: gaps(failedAt()), arrivals: timed.arrivals.map((a) => `${a.at} ${a.method} ${a.path} ${a.fault ?? 'served'}`) }, null, 1);

    // Outage 1: long enough to reach the 2 s cap (200, 400, 800, 1600, then 2000 ms waits).
    timed.arrivals.length = 0;
    timed.setFault('down-503');
    const seen: number[] = [];
    const ATTEMPTS = 10;
    await waitFor(async () => {
      const f = reconciler(await status(dir), 'remote:origin').failures;
      seen.push(f);
      return (failedAt().length >= ATTEMPTS && f >= ATTEMPTS - 1) || undefined;
    }, { what: `${ATTEMPTS} failed attempts while the remote answers 503`, timeoutMs: 60_000, intervalMs: 100 }).catch((err: Error) => {
      throw new Error(`${err.message}; failures seen in status.json: ${seen.join(',')}; ${context()}`);
    });
    const times = failedAt();
    const g = gaps(times);
    const expected = g.map((_, i) => Math.min(2000, 200 * 2 ** i));
    // Never earlier than the backoff (50 ms for clock granularity); upper bounds are generous for a loaded machine.
    g.forEach((gap, i) => expect(gap, `gap ${i}, expected ~${expected[i]} ms: ${context()}`).toBeGreaterThanOrEqual(expected[i]! - 50));
    expect(Math.max(g[0]!, g[1]!), `the first gaps are short: ${context()}`).toBeLessThan(1500);
    expect(Math.max(g[0]!, g[1]!), `the first gaps are below the later ones: ${context()}`).toBeLessThan(Math.min(...g.slice(4)));
    // Once at the cap, it stays there: a broken cap would give 3.2 s, 6.4 s, 12.8 s ...
    for (const gap of g.slice(4)) expect(gap, `a gap at the cap: ${context()}`).toBeLessThan(6000);
    // No retry storm: at the cap, 6 s hold at most 4 attempts.
    const last = times[times.length - 1]!;
    expect(times.filter((t) => t > last - 6000).length, context()).toBeLessThanOrEqual(4);
    // status: the failure count only grew while the remote was down, one per attempt.
    expect(seen, `failures seen in status.json: ${seen.join(',')}`).toEqual([...seen].sort((a, b) => a - b));
    expect(seen.some((f) => f > 0 && f < ATTEMPTS - 1), `failures seen in status.json: ${seen.join(',')}`).toBe(true);
    const during = JSON.parse((await run(dir, ['status', '--json'], testEnv())).stdout);
    const duringRc = reconciler(during.snapshot, 'remote:origin');
    expect(duringRc.failures).toBeGreaterThanOrEqual(ATTEMPTS - 1);
    expect(duringRc.failures).toBeLessThanOrEqual(failedAt().length);
    expect(duringRc.lastError?.reason).toBe('RemoteUnavailable');

    // Recovery: the count resets to 0 after a success.
    timed.setFault(undefined);
    await waitFor(async () => {
      const rc = reconciler(await status(dir), 'remote:origin');
      return (rc.failures === 0 && rc.lastError === undefined) || undefined;
    }, { what: 'the failure count to reset after recovery', timeoutMs: 30_000 });
    const after = JSON.parse((await run(dir, ['status', '--json'], testEnv())).stdout);
    expect(reconciler(after.snapshot, 'remote:origin').failures).toBe(0);
    expect(after.snapshot.remotes[0].error).toBeUndefined();

    // Outage 2: the backoff starts from `initial` again, not from the cap where outage 1 ended.
    timed.arrivals.length = 0;
    timed.setFault('down-503');
    await waitFor(() => failedAt().length >= 3 || undefined, { what: '3 failed attempts in the second outage', timeoutMs: 30_000 }).catch((err: Error) => {
      throw new Error(`${err.message}; ${context()}`);
    });
    const g2 = gaps(failedAt());
    expect(g2[0]!, context()).toBeGreaterThanOrEqual(150);
    expect(g2[1]!, context()).toBeGreaterThanOrEqual(350);
    expect(Math.max(g2[0]!, g2[1]!), `short gaps again after the reset: ${context()}`).toBeLessThan(1500);
  }, 120_000);

  it('pushes to a healthy local remote while another remote hangs, long before the hang times out, and stops without waiting it out', async () => {
    const good = await makeTmpDir('good');
    const localBare = path.join(good, 'r.git');
    await makeBareRepo(localBare, { initialBranch: 'develop' });
    const { url: hungUrl, server } = await httpRemote({ auth: false });
    await server.setMode('hang');
    // The hanging remote comes first: pushing one remote after the other would wait 30 s for it.
    const { dir } = await makeSandbox({ remotes: [{ name: 'hung', url: hungUrl, timeout: '120s' }, { name: 'local', url: localBare }] });
    try {
      const c = await start(dir);
      await waitFor(() => server.requests.some((r) => r.fault === 'hang') || undefined, { what: 'a request to hang on the hung remote' });
      await writeFile(path.join(dir, 'f.txt'), 'x');
      const written = Date.now();
      await waitFor(() => remoteHas(localBare, 'f.txt', 'x'), { what: 'the push to the healthy local remote, well within the 30 s timeout of the hung one', timeoutMs: 10_000 });
      const head = await revParse(dir, 'develop');
      expect(await revParse(localBare, 'develop')).toBe(head);
      await waitFor(async () => (await status(dir)).remotes.find((r: { name: string }) => r.name === 'local').lastPush?.commit === head || undefined, { what: 'status to show the local push', timeoutMs: 10_000 });
      // The hung remote's pass is still under way (not given up on and retried): the push really was concurrent.
      const st = await status(dir);
      expect(reconciler(st, 'remote:hung').running, JSON.stringify(st.reconcilers)).toBe(true);
      expect(st.remotes.find((r: { name: string }) => r.name === 'hung').error).toBeUndefined();
      expect(Date.now() - written).toBeLessThan(30_000);
      expect(server.requests.every((r) => r.fault === 'hang' && r.status === 0)).toBe(true);
      // Stopping does not wait out the hung remote's 120 s timeout: it gives up on it after 10 s.
      const stopping = Date.now();
      expect(await c.stop()).toBe(0);
      expect(Date.now() - stopping, c.stdout.text()).toBeLessThan(40_000);
      expect(c.stdout.text()).toMatch(/stopping without waiting longer for remote:hung/);
    } finally {
      // Frees the hung request, so that stopping the controller does not wait out the 30 s timeout.
      await server.close();
    }
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

describe('environment branches <-> remotes', () => {
  it.each(['local', 'http'])('never moves an environment branch on a %s remote to a commit not promoted here: an unpromoted local main follows the remote back, a missing staging is fetched, a staging behind follows', async (kind) => {
    const team = await teamRemote(kind === 'http' ? {
      serve: async (root) => {
        const server = await startGitHttpServer({ root });
        servers.push(server);
        return server.url('site.git');
      },
    } : {});
    const dir = await makeTmpDir('clone');
    await cloneTo(team.url, dir);
    const init = await run(dir, ['init']);
    expect(init.code, init.stderr).toBe(0);
    // The unsafe states a sandbox can be in (made with native git, as an older init or a person would):
    // main moved ahead to the develop head, which no promotion put there, and staging missing.
    await git(dir, 'branch', '-f', 'main', team.c3);
    await git(dir, 'branch', '-D', 'staging');
    const remoteBefore = await refsOf(team.bare);
    const c = await start(dir, testEnv());

    await waitFor(async () => (await tryRevParse(dir, 'staging')) === team.c2 || undefined, { what: 'staging fetched from the remote' });
    await waitFor(async () => (await tryRevParse(dir, 'main')) === team.c1 || undefined, { what: 'main to follow the remote back to its commit' });
    // The local commit is kept reachable, and nothing moved on the remote.
    expect(await revParse(dir, `refs/cascade-sync/replaced/production/${team.c3}`)).toBe(team.c3);
    expect(await refsOf(team.bare)).toBe(remoteBefore);
    expect(await git(dir, 'reflog', '-n', '1', '--format=%gs', 'main')).toBe(`fetch: follow origin's main at ${team.c1.slice(0, 7)}`);

    // The remote's staging moves on (another controller promoted): the local one follows, it is not reported as foreign.
    const other = await makeTmpDir('other');
    await cloneTo(team.bare, other, '--branch', 'develop');
    await git(other, 'push', '-q', 'origin', `${team.c3}:refs/heads/staging`);
    await waitFor(async () => (await tryRevParse(dir, 'staging')) === team.c3 || undefined, { what: 'staging to follow the remote forward' });
    // A few more fetch passes: still nothing pushed, no error.
    const seen = (await status(dir)).remotes[0].lastFetch.at;
    await waitFor(async () => {
      const st = await status(dir);
      return (st.remotes[0].lastFetch.at > seen && reconciler(st, 'remote:origin').failures === 0 && !st.remotes[0].error) || undefined;
    }, { what: 'another clean fetch pass' });
    expect(await tryRevParse(team.bare, 'main')).toBe(team.c1);
    expect(await tryRevParse(team.bare, 'staging')).toBe(team.c3);
    expect(c.stdout.text()).not.toMatch(/EnvironmentBranchMovedElsewhere/);
    await fsckStrict(dir);
  }, 90_000);

  it('plans each environment branch by the rule: push only what was promoted here, follow the first remote, force only over a commit moved away from', () => {
    const a = 'a'.repeat(40);
    const b = 'b'.repeat(40);
    const base = { environment: 'production', branch: 'main', remoteName: 'origin', primary: true, checkedOut: false, sandboxBranch: 'develop', ahead: false, contained: false, promotedHere: false, remoteMovedAway: false };
    const table: { name: string; facts: Partial<EnvironmentBranchFacts>; action: string; keep?: boolean; reason?: string }[] = [
      { name: 'both missing', facts: { local: null, remote: null }, action: 'none' },
      { name: 'in step', facts: { local: a, remote: a }, action: 'none' },
      { name: 'the remote lacks it: created there', facts: { local: a, remote: null }, action: 'push' },
      { name: 'missing here: fetched from the first remote', facts: { local: null, remote: b }, action: 'follow' },
      { name: 'missing here, second remote: left alone', facts: { local: null, remote: b, primary: false }, action: 'none' },
      { name: 'ahead, promoted here: fast-forward push', facts: { local: a, remote: b, ahead: true, promotedHere: true }, action: 'push' },
      { name: 'ahead, never promoted here: follows the remote back', facts: { local: a, remote: b, ahead: true }, action: 'follow', keep: true },
      { name: 'ahead, never promoted here, second remote: not pushed', facts: { local: a, remote: b, ahead: true, primary: false }, action: 'none' },
      { name: 'behind: follows', facts: { local: a, remote: b, contained: true, promotedHere: true }, action: 'follow' },
      { name: 'diverged: follows, keeping the local commit', facts: { local: a, remote: b, promotedHere: true }, action: 'follow', keep: true },
      { name: 'diverged, second remote: blocked', facts: { local: a, remote: b, primary: false }, action: 'blocked', reason: 'EnvironmentBranchMovedElsewhere' },
      { name: 'rolled back here: forced over the failed commit', facts: { local: a, remote: b, contained: true, promotedHere: true, remoteMovedAway: true }, action: 'force' },
      { name: 'remote at a failed commit, local never promoted: blocked', facts: { local: a, remote: b, contained: true, remoteMovedAway: true }, action: 'blocked', reason: 'EnvironmentBranchConflict' },
      { name: 'checked out: never moved under the user', facts: { local: a, remote: b, contained: true, checkedOut: true }, action: 'blocked', reason: 'WrongBranch' },
    ];
    for (const row of table) {
      const got = planEnvironmentBranch({ ...base, local: null, remote: null, ...row.facts });
      expect({ name: row.name, action: got.action, keep: got.keep === true, reason: got.reason }).toEqual({ name: row.name, action: row.action, keep: row.keep === true, reason: row.reason });
    }
  });
});
