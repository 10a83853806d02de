import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startGitHttpServer, type GitHttpServer } from './helpers/git-http-server.js';
import {
  cloneTo,
  commitFiles,
  fsckStrict,
  git,
  gitOk,
  logOneline,
  lsRemote,
  lsTree,
  makeBareRepo,
  revParse,
  runGit,
  showFile,
  statusPorcelain,
  tryRevParse,
} from './helpers/git.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

const USER = 'alice';
const PASS = 'p@ss:word/1'; // characters that need URL-encoding, as real tokens often have

/** Resolves with the errno of a raw TCP connect to 127.0.0.1:port, or 'connected'. */
function probeConnect(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

describe('tmp helpers', () => {
  afterAll(cleanupTmpDirs);

  it('waitFor resolves with the first truthy value and tolerates throws before it', async () => {
    let calls = 0;
    const value = await waitFor(
      () => {
        calls += 1;
        if (calls < 3) throw new Error(`not yet ${calls}`);
        return calls === 3 ? false : { calls };
      },
      { what: 'the fourth call', intervalMs: 1 },
    );
    expect(value).toEqual({ calls: 4 });
  });

  it('waitFor times out naming what it waited for and the last error', async () => {
    await expect(
      waitFor(
        async () => {
          throw new Error('remote still empty');
        },
        { what: 'the push', timeoutMs: 100, intervalMs: 10 },
      ),
    ).rejects.toThrow(/^timed out after 100ms waiting for the push; last error: remote still empty$/);
  });

  it('waitFor does not wait for an attempt that outlives the deadline', async () => {
    const started = Date.now();
    await expect(waitFor(() => new Promise<boolean>(() => undefined), { what: 'never', timeoutMs: 100 })).rejects.toThrow(
      'timed out after 100ms waiting for never',
    );
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it('makeTmpDir creates distinct dirs that cleanupTmpDirs removes', async () => {
    const a = await makeTmpDir('x');
    const b = await makeTmpDir('x');
    expect(a).not.toBe(b);
    await writeFile(path.join(a, 'f'), 'data');
    await cleanupTmpDirs();
    await expect(readFile(path.join(a, 'f'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

describe('git helpers', () => {
  afterAll(cleanupTmpDirs);

  it('makeBareRepo withCommit: HEAD names develop, which holds one README commit, and fsck is clean', async () => {
    const bare = path.join(await makeTmpDir('bare'), 'r.git');
    const oid = await makeBareRepo(bare, { withCommit: true });
    expect(await git(bare, 'rev-parse', '--is-bare-repository')).toBe('true');
    expect(await git(bare, 'symbolic-ref', 'HEAD')).toBe('refs/heads/develop');
    expect(await revParse(bare, 'develop')).toBe(oid);
    expect(await logOneline(bare, 'develop')).toEqual(['initial commit']);
    const tree = await lsTree(bare, 'develop');
    expect(tree).toEqual([{ mode: '100644', type: 'blob', oid: expect.stringMatching(/^[0-9a-f]{40}$/), path: 'README.md' }]);
    expect((await showFile(bare, 'develop', 'README.md')).toString()).toBe('# test repository\n');
    await fsckStrict(bare);
  });

  it('makeBareRepo without a commit leaves HEAD unborn on the chosen branch', async () => {
    const bare = path.join(await makeTmpDir('bare'), 'empty.git');
    expect(await makeBareRepo(bare, { initialBranch: 'main' })).toBeUndefined();
    expect(await git(bare, 'symbolic-ref', 'HEAD')).toBe('refs/heads/main');
    expect(await tryRevParse(bare, 'HEAD')).toBeUndefined();
    await fsckStrict(bare); // only "notice:" lines for an unborn HEAD
  });

  it('fsckStrict rejects a repository with a missing object', async () => {
    const bare = path.join(await makeTmpDir('bare'), 'broken.git');
    await makeBareRepo(bare, { withCommit: true });
    const [entry] = await lsTree(bare, 'develop');
    const objectFile = path.join(bare, 'objects', entry!.oid.slice(0, 2), entry!.oid.slice(2));
    await writeFile(objectFile, 'garbage');
    await expect(fsckStrict(bare)).rejects.toThrow(/fsck found problems/);
  });

  it('git rejects with stderr, gitOk reports the exit code, statusPorcelain lists untracked files', async () => {
    const dir = await makeTmpDir('work');
    await expect(git(dir, 'rev-parse', 'HEAD')).rejects.toThrow(/not a git repository/);
    await git(dir, 'init', '--quiet');
    const failed = await gitOk(dir, 'rev-parse', '--verify', 'nope');
    expect(failed.code).not.toBe(0);
    expect(failed.stderr).toMatch(/fatal/);
    await writeFile(path.join(dir, 'a.txt'), 'a');
    expect(await statusPorcelain(dir)).toEqual(['?? a.txt']);
    await commitFiles(dir, { 'sub/b.txt': 'b' }, 'add files');
    expect(await statusPorcelain(dir)).toEqual([]);
    expect(await git(dir, 'log', '-1', '--format=%an <%ae>')).toBe('Cascade Test <cascade-test@example.invalid>');
  });
});

describe('git http server with basic auth', () => {
  let root: string;
  let server: GitHttpServer;

  beforeAll(async () => {
    root = await makeTmpDir('remotes');
    server = await startGitHttpServer({ root, username: USER, password: PASS });
    await makeBareRepo(path.join(root, 'app.git'), { withCommit: true });
  });
  afterAll(async () => {
    await server?.close();
    await cleanupTmpDirs();
  });

  it('clones with credentials in the URL, then pushes a commit that native git sees in the bare repo', async () => {
    const work = await cloneTo(server.authUrl('app.git'), path.join(await makeTmpDir('clone'), 'app'));
    expect(await git(work, 'branch', '--show-current')).toBe('develop');
    expect(await logOneline(work)).toEqual(['initial commit']);

    const oid = await commitFiles(work, { 'config/app.yaml': 'replicas: 2\n' }, 'scale app');
    await git(work, 'push', '--quiet', 'origin', 'develop');

    const bare = path.join(root, 'app.git');
    expect(await revParse(bare, 'develop')).toBe(oid);
    expect(await logOneline(bare, 'develop')).toEqual(['scale app', 'initial commit']);
    await fsckStrict(bare);

    const push = server.requests.find((r) => r.method === 'POST' && r.path === '/app.git/git-receive-pack');
    expect(push).toMatchObject({ status: 200, user: USER });
  });

  it('pushes 2 MB of random data (a chunked POST above http.postBuffer) intact', async () => {
    const work = await cloneTo(server.authUrl('app.git'), path.join(await makeTmpDir('clone'), 'app'));
    const blob = randomBytes(2 * 1024 * 1024);
    server.requests.length = 0;
    await commitFiles(work, { 'assets/blob.bin': blob }, 'add big blob');
    await git(work, 'push', '--quiet', 'origin', 'develop');

    const bare = path.join(root, 'app.git');
    expect(await logOneline(bare, 'develop')).toEqual(['add big blob', 'scale app', 'initial commit']);
    expect((await showFile(bare, 'develop', 'assets/blob.bin')).equals(blob)).toBe(true);
    await fsckStrict(bare);
    const pushes = server.requests.filter((r) => r.method === 'POST' && r.path.endsWith('/git-receive-pack'));
    expect(pushes.some((r) => r.chunked && r.status === 200)).toBe(true);
  });

  it('serves gzip-encoded fetch requests (large negotiation bodies)', async () => {
    const bare = path.join(root, 'many.git');
    await makeBareRepo(bare, { withCommit: true });
    // 60 distinct root commits on 60 branches: a clone then sends 60 "want" lines (> 1 KiB), which git gzips.
    const stream = Array.from(
      { length: 60 },
      (_, i) => `commit refs/heads/b${i}\ncommitter T <t@example.invalid> ${1_700_000_000 + i} +0000\ndata 3\nb${i}\n\n`,
    ).join('');
    const imported = await runGit({ cwd: bare, args: ['fast-import', '--quiet'], input: stream });
    expect(imported.stderr).toBe('');
    expect(imported.code).toBe(0);

    server.requests.length = 0;
    const work = await cloneTo(server.authUrl('many.git'), path.join(await makeTmpDir('clone'), 'many'));
    expect(await tryRevParse(work, 'origin/b59')).toBe(await revParse(bare, 'b59'));
    await fsckStrict(work);
    const gzipped = server.requests.filter((r) => r.contentEncoding === 'gzip');
    expect(gzipped.length).toBeGreaterThan(0);
    expect(gzipped.every((r) => r.status === 200)).toBe(true);
  });

  it('answers 401 with a Basic challenge without credentials or with a wrong password', async () => {
    const parent = await makeTmpDir('clone');
    server.requests.length = 0;
    const anonymous = await gitOk(parent, 'clone', server.url('app.git'), 'anon');
    expect(anonymous.code).not.toBe(0);
    // GIT_TERMINAL_PROMPT=0: git gives up instead of prompting after the 401.
    expect(anonymous.stderr).toMatch(/could not read Username|Authentication failed/);
    expect(server.requests[0]).toMatchObject({ method: 'GET', path: '/app.git/info/refs', status: 401, user: undefined });

    const wrong = server.url('app.git').replace('http://', `http://${USER}:nope@`);
    const denied = await gitOk(parent, 'clone', wrong, 'denied');
    expect(denied.code).not.toBe(0);
    expect(denied.stderr).toMatch(/Authentication failed/);

    const res = await fetch(`${server.url('app.git')}/info/refs?service=git-upload-pack`);
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toBe('Basic realm="git"');
  });

  it('passes http-backend errors through (unknown repository -> 404)', async () => {
    const result = await gitOk(root, 'ls-remote', server.authUrl('missing.git'));
    expect(result.code).not.toBe(0);
    expect(result.stderr).toMatch(/not found/);
    expect(server.requests.at(-1)).toMatchObject({ path: '/missing.git/info/refs', status: 404 });
  });
});

describe('git http server fault injection', () => {
  let root: string;
  let server: GitHttpServer;
  const others: GitHttpServer[] = [];

  beforeAll(async () => {
    root = await makeTmpDir('remotes');
    await makeBareRepo(path.join(root, 'app.git'), { withCommit: true });
    server = await startGitHttpServer({ root });
  });
  afterEach(async () => {
    await Promise.all(others.splice(0).map((s) => s.close()));
  });
  afterAll(async () => {
    await server?.close();
    await cleanupTmpDirs();
  });

  it('down-503, refuse, unauthorized, and back to ok on the same port', async () => {
    const url = server.url('app.git');
    const port = server.port;
    expect((await lsRemote(root, url)).get('refs/heads/develop')).toMatch(/^[0-9a-f]{40}$/);

    await server.setMode('down-503');
    const down = await gitOk(root, 'ls-remote', url);
    expect(down.code).not.toBe(0);
    expect(down.stderr).toMatch(/503/);
    expect(server.requests.at(-1)).toMatchObject({ status: 503, fault: 'down-503' });

    await server.setMode('refuse');
    expect(await probeConnect(port)).toBe('ECONNREFUSED');
    const refused = await gitOk(root, 'ls-remote', url);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/Connection refused|Couldn't connect to server/);

    await server.setMode('unauthorized'); // listens again, but rejects everyone
    const unauthorized = await gitOk(root, 'ls-remote', url.replace('http://', 'http://a:b@'));
    expect(unauthorized.code).not.toBe(0);
    expect(unauthorized.stderr).toMatch(/Authentication failed/);

    await server.setMode('refuse');
    await server.setMode('ok');
    expect(server.port).toBe(port);
    expect(server.url('app.git')).toBe(url);
    const refs = await waitFor(() => lsRemote(root, url), { what: 'ls-remote to succeed again after refuse -> ok' });
    expect(refs.has('refs/heads/develop')).toBe(true);
  });

  it('a per-request failWith can fail only pushes', async () => {
    const flaky = await startGitHttpServer({
      root,
      failWith: (r) => (r.service === 'git-receive-pack' ? 'down-503' : undefined),
    });
    others.push(flaky);
    const work = await cloneTo(flaky.url('app.git'), path.join(await makeTmpDir('clone'), 'app'));
    await commitFiles(work, { 'a.txt': 'a' }, 'will not land');
    const push = await gitOk(work, 'push', 'origin', 'develop');
    expect(push.code).not.toBe(0);
    expect(push.stderr).toMatch(/503/);
    expect(await logOneline(path.join(root, 'app.git'), 'develop')).toEqual(['initial commit']);
  });

  it("failWith: 'refuse' starts refused on a reserved port", async () => {
    const late = await startGitHttpServer({ root, failWith: 'refuse' });
    others.push(late);
    expect(late.mode).toBe('refuse');
    expect(await probeConnect(late.port)).toBe('ECONNREFUSED');
    await late.setMode('ok');
    expect((await lsRemote(root, late.url('app.git'))).has('HEAD')).toBe(true);
  });

  it('hang keeps the request open, and close() ends it so the client fails and close resolves', async () => {
    const hanging = await startGitHttpServer({ root, failWith: 'hang' });
    others.push(hanging);
    const started = Date.now();
    const pending = gitOk(root, 'ls-remote', hanging.url('app.git'));
    await waitFor(() => hanging.requests.find((r) => r.fault === 'hang'), { what: 'the hung request to arrive' });
    await hanging.close();
    const result = await pending;
    expect(result.code).not.toBe(0);
    expect(result.stderr).toMatch(/Empty reply from server|unable to access|Recv failure/);
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(hanging.requests.find((r) => r.fault === 'hang')?.status).toBe(0);
  });
});
