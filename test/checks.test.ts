import { afterEach, describe, expect, it } from 'vitest';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { existsSync } from 'node:fs';
import { mkdir, readFile, realpath, symlink } from 'node:fs/promises';
import path from 'node:path';
import { runCommand } from '../src/pipeline/run-command.js';
import { runCheck, runHealthRound } from '../src/pipeline/checks.js';
import type { EnvironmentSpec } from '../src/config/types.js';
import { InternalError } from '../src/errors.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

const ENV = { PATH: process.env.PATH ?? '/usr/bin:/bin' };

/** pids started in the background by test commands, killed after each test whatever happened. */
const strays: number[] = [];
const servers: Server[] = [];

afterEach(async () => {
  for (const pid of strays.splice(0)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone: what the test wanted
    }
  }
  for (const server of servers.splice(0)) {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
  await cleanupTmpDirs();
});

/** True while `pid` runs; a zombie (exited, not yet reaped by a non-reaping pid 1) counts as gone. */
async function isAlive(pid: number): Promise<boolean> {
  if (existsSync('/proc/self/stat')) {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
    if (stat === '') return false;
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  }
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Waits for the pid file a test command writes and returns the pid, registered for cleanup. */
async function backgroundPid(file: string): Promise<number> {
  const pid = await waitFor(async () => Number((await readFile(file, 'utf8').catch(() => '')).trim()) || undefined, {
    what: `pid file ${file}`,
    timeoutMs: 5000,
  });
  strays.push(pid);
  return pid;
}

describe('runCommand', () => {
  it('runs with sh -c in cwd with exactly the given env and collects stdout and stderr', async () => {
    const dir = await makeTmpDir('cmd');
    const r = await runCommand('echo "out $FOO"; echo err >&2; pwd; echo "home=${HOME:-unset}"', {
      cwd: dir,
      env: { ...ENV, FOO: 'bar' },
      timeoutMs: 10_000,
    });
    expect(r).toMatchObject({ ok: true, exitCode: 0, signal: null, timedOut: false, aborted: false });
    expect(r.output).toContain('out bar\n');
    expect(r.output).toContain('err\n');
    expect(r.output).toContain(`${dir}\n`);
    expect(r.output).toContain('home=unset');
  });

  it('reports a non-zero exit as ok:false with the exit code', async () => {
    const dir = await makeTmpDir('cmd-exit');
    const r = await runCommand('echo failing; exit 3', { cwd: dir, env: ENV, timeoutMs: 10_000 });
    expect(r).toMatchObject({ ok: false, exitCode: 3, timedOut: false, aborted: false });
    expect(r.output).toBe('failing\n');
  });

  it('keeps only the last 64 KiB of output', async () => {
    const dir = await makeTmpDir('cmd-big');
    const r = await runCommand("echo START; head -c 300000 /dev/zero | tr '\\0' a; echo; echo END", { cwd: dir, env: ENV, timeoutMs: 10_000 });
    expect(r.ok).toBe(true);
    expect(Buffer.byteLength(r.output)).toBe(64 * 1024);
    expect(r.output.endsWith('aaa\nEND\n')).toBe(true);
    expect(r.output).not.toContain('START');
  });

  it('on timeout kills the whole process group, background children included', async () => {
    const dir = await makeTmpDir('cmd-timeout');
    const pidFile = path.join(dir, 'bg.pid');
    const r = await runCommand('sleep 30 & echo $! > bg.pid; sleep 30', { cwd: dir, env: ENV, timeoutMs: 300 });
    expect(r).toMatchObject({ ok: false, timedOut: true, aborted: false, exitCode: null, signal: 'SIGTERM' });
    expect(r.durationMs).toBeLessThan(5000);
    const bg = await backgroundPid(pidFile);
    await waitFor(async () => !(await isAlive(bg)), { what: `background sleep ${bg} to be killed`, timeoutMs: 3000 });
  });

  it('sends SIGKILL to the group after the grace period when SIGTERM is ignored', async () => {
    const dir = await makeTmpDir('cmd-kill');
    const pidFile = path.join(dir, 'bg.pid');
    // An ignored signal stays ignored across fork and exec, so the background sleep ignores TERM too.
    const r = await runCommand("trap '' TERM; sleep 30 & echo $! > bg.pid; wait", {
      cwd: dir,
      env: ENV,
      timeoutMs: 300,
      killGraceMs: 200,
    });
    expect(r).toMatchObject({ ok: false, timedOut: true, signal: 'SIGKILL' });
    const bg = await backgroundPid(pidFile);
    await waitFor(async () => !(await isAlive(bg)), { what: `background sleep ${bg} to be killed`, timeoutMs: 3000 });
  });

  it('stops the process group when the signal aborts, and does not start when already aborted', async () => {
    const dir = await makeTmpDir('cmd-abort');
    const controller = new AbortController();
    const running = runCommand('sleep 30 & echo $! > bg.pid; wait', { cwd: dir, env: ENV, timeoutMs: 60_000, signal: controller.signal });
    const bg = await backgroundPid(path.join(dir, 'bg.pid'));
    controller.abort();
    const r = await running;
    expect(r).toMatchObject({ ok: false, aborted: true, timedOut: false });
    await waitFor(async () => !(await isAlive(bg)), { what: `background sleep ${bg} to be killed`, timeoutMs: 3000 });

    const never = await runCommand('touch ran', { cwd: dir, env: ENV, timeoutMs: 10_000, signal: controller.signal });
    expect(never).toMatchObject({ ok: false, aborted: true, exitCode: null });
    expect(existsSync(path.join(dir, 'ran'))).toBe(false);
  });

  it('returns promptly after a normal exit even when a background process keeps the pipes open, and leaves it running', async () => {
    const dir = await makeTmpDir('cmd-daemon');
    const r = await runCommand('sleep 30 & echo $! > bg.pid; echo started', { cwd: dir, env: ENV, timeoutMs: 20_000 });
    expect(r).toMatchObject({ ok: true, exitCode: 0 });
    expect(r.output).toBe('started\n');
    expect(r.durationMs).toBeLessThan(5000);
    const bg = await backgroundPid(path.join(dir, 'bg.pid'));
    expect(await isAlive(bg)).toBe(true);
  });

  it('reports a spawn failure (missing cwd) as ok:false with the error, never a throw', async () => {
    const dir = await makeTmpDir('cmd-nocwd');
    const missing = path.join(dir, 'nope');
    const r = await runCommand('true', { cwd: missing, env: ENV, timeoutMs: 10_000 });
    expect(r).toMatchObject({ ok: false, exitCode: null, signal: null, timedOut: false });
    expect(r.output).toContain(missing);
  });
});

describe('runCheck: command', () => {
  it('passes on exit 0, in cwd with the env given', async () => {
    const dir = await makeTmpDir('check-ok');
    const r = await runCheck(
      { name: 'unit', command: `test "$X" = y && test "$(pwd)" = "${dir}"`, timeoutMs: 10_000 },
      { cwd: dir, env: { ...ENV, X: 'y' } },
    );
    expect(r.name).toBe('unit');
    expect(r.ok).toBe(true);
    expect(r.message).toMatch(/^exit 0 in \d+ms$/);
  });

  it('fails on exit 1 with the last output line as the message', async () => {
    const dir = await makeTmpDir('check-fail');
    const r = await runCheck(
      { name: 'lint', command: 'echo first; echo "  3 problems found  "; echo; exit 1', timeoutMs: 10_000 },
      { cwd: dir, env: ENV },
    );
    expect(r.ok).toBe(false);
    expect(r.message).toBe('exit 1: 3 problems found');
    expect(r.output).toContain('first\n');
  });

  it('fails with "timed out after" when the command runs too long', async () => {
    const dir = await makeTmpDir('check-slow');
    const r = await runCheck({ name: 'slow', command: 'sleep 30', timeoutMs: 250 }, { cwd: dir, env: ENV });
    expect(r.ok).toBe(false);
    expect(r.message).toBe('timed out after 250ms');
    expect(r.durationMs).toBeLessThan(5000);
  });

  it('rejects a spec with neither command nor http as an internal error', async () => {
    const dir = await makeTmpDir('check-none');
    await expect(runCheck({ name: 'empty', timeoutMs: 1000 }, { cwd: dir, env: ENV })).rejects.toBeInstanceOf(InternalError);
  });
});

describe('runCheck: http', () => {
  async function serve(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ base: string; connections: () => number }> {
    const server = createServer(handler);
    let connections = 0;
    server.on('connection', () => connections++);
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return { base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, connections: () => connections };
  }

  const routes = (req: IncomingMessage, res: ServerResponse) => {
    if (req.url === '/healthz') res.end('{"status":"ok","version":3}');
    else if (req.url === '/down') res.writeHead(503).end('maintenance');
    else if (req.url === '/hang') return; // never answers
    else res.writeHead(404).end();
  };

  it('passes when the status matches', async () => {
    const { base } = await serve(routes);
    const r = await runCheck({ name: 'web', http: { url: `${base}/healthz`, status: 200 }, timeoutMs: 5000 }, { cwd: '/', env: {} });
    expect(r.ok).toBe(true);
    expect(r.message).toMatch(/^HTTP 200 in \d+ms$/);
  });

  it('fails on a status mismatch, naming both statuses', async () => {
    const { base } = await serve(routes);
    const r = await runCheck({ name: 'web', http: { url: `${base}/down`, status: 200 }, timeoutMs: 5000 }, { cwd: '/', env: {} });
    expect(r.ok).toBe(false);
    expect(r.message).toMatch(/^HTTP 503 in \d+ms, expected 200$/);
    expect(r.output).toBe('maintenance');
  });

  it('checks that the body contains the expected text', async () => {
    const { base } = await serve(routes);
    const url = `${base}/healthz`;
    const hit = await runCheck({ name: 'web', http: { url, status: 200, body: '"status":"ok"' }, timeoutMs: 5000 }, { cwd: '/', env: {} });
    expect(hit.ok).toBe(true);
    const miss = await runCheck({ name: 'web', http: { url, status: 200, body: 'ready' }, timeoutMs: 5000 }, { cwd: '/', env: {} });
    expect(miss.ok).toBe(false);
    expect(miss.message).toBe('HTTP 200, body does not contain "ready"');
    expect(miss.output).toContain('"version":3');
  });

  it('times out on a server that never answers', async () => {
    const { base } = await serve(routes);
    const r = await runCheck({ name: 'web', http: { url: `${base}/hang`, status: 200 }, timeoutMs: 300 }, { cwd: '/', env: {} });
    expect(r.ok).toBe(false);
    expect(r.message).toBe('timed out after 300ms');
    expect(r.durationMs).toBeGreaterThanOrEqual(250);
    expect(r.durationMs).toBeLessThan(5000);
  });

  it('reports a refused connection', async () => {
    const { base } = await serve(routes);
    const port = new URL(base).port;
    const server = servers.pop()!;
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    const r = await runCheck({ name: 'web', http: { url: `${base}/healthz`, status: 200 }, timeoutMs: 5000 }, { cwd: '/', env: {} });
    expect(r.ok).toBe(false);
    expect(r.message).toBe(`connection refused by 127.0.0.1:${port}`);
  });

  it('uses a fresh connection for every check, so a restarted service is not misjudged by a stale socket', async () => {
    const { base, connections } = await serve(routes);
    for (let i = 0; i < 3; i++) {
      const r = await runCheck({ name: 'web', http: { url: `${base}/healthz`, status: 200 }, timeoutMs: 5000 }, { cwd: '/', env: {} });
      expect(r.ok).toBe(true);
    }
    expect(connections()).toBe(3);
  });

  it('reports "aborted" when the caller aborts', async () => {
    const { base } = await serve(routes);
    const controller = new AbortController();
    const running = runCheck({ name: 'web', http: { url: `${base}/hang`, status: 200 }, timeoutMs: 30_000 }, { cwd: '/', env: {}, signal: controller.signal });
    controller.abort();
    const r = await running;
    expect(r.ok).toBe(false);
    expect(r.message).toBe('aborted');
  });
});

describe('runHealthRound', () => {
  it('runs command checks in the live release (through current), with the CASCADE_* variables and what env names, and in the sandbox without a deploy', async () => {
    const root = await makeTmpDir('round');
    const commit = 'a'.repeat(40);
    await mkdir(path.join(root, 'deploy/releases', commit), { recursive: true });
    await symlink(`releases/${commit}`, path.join(root, 'deploy/current'));
    const sandbox = await makeTmpDir('round-sandbox');
    const env: EnvironmentSpec = {
      name: 'staging', branch: 'staging', from: 'develop', promotion: 'auto', gates: [], approvals: { required: 1, signers: [] }, windows: [],
      deploy: { directory: path.join(root, 'deploy'), keep: 5, selfHeal: true, hooks: {} },
      health: [{ name: 'where', command: 'test "$(pwd -P)" = "$WANT" && test "$CASCADE_ENVIRONMENT" = staging && test "$CASCADE_COMMIT" = "$(basename "$CASCADE_RELEASE_DIR")" && test -z "$OTHER"', timeoutMs: 10_000, env: [{ name: 'WANT' }] }],
      healthyAfter: 1, failureThreshold: 1, progressDeadlineMs: 60_000, rollback: { automatic: true },
    };
    const release = await realpath(path.join(root, 'deploy/releases', commit));
    expect(await runHealthRound(env, commit, sandbox, { ...ENV, WANT: release, OTHER: 'not named' })).toEqual([{ name: 'where', ok: true, message: expect.stringMatching(/^exit 0/) }]);
    expect((await runHealthRound(env, commit, sandbox, { ...ENV, WANT: sandbox }))[0]?.ok).toBe(false);
    const { deploy: _deploy, ...noDeploy } = env;
    const sandboxRound = await runHealthRound({ ...noDeploy, health: [{ name: 'where', command: 'test "$(pwd -P)" = "$WANT" && test -z "$CASCADE_COMMIT$CASCADE_RELEASE_DIR"', timeoutMs: 10_000, env: [{ name: 'WANT' }] }] }, null, sandbox, { ...ENV, WANT: await realpath(sandbox) });
    expect(sandboxRound[0]?.ok).toBe(true);
  });
});
