import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { access, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { fsckStrict, git, gitOk, logOneline, lsTree, makeBareRepo, revParse, showFile, statusPorcelain, tryRevParse } from './helpers/git.js';
import { makeSandbox, testEnv } from './helpers/sandbox.js';
import { envReport, live, pipelineConfig, sshKey } from './helpers/pipeline.js';
import { createServer, type Server } from 'node:http';
import { existsSync } from 'node:fs';
import { defaultKeyFilePath } from '../src/security/keyfile.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

const BIN = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'bin', 'cascade-sync.js');
const children: ChildProcess[] = [];
const servers: Server[] = [];

beforeAll(async () => {
  // The bin runs the compiled code: `npm test` builds first; make sure a stale dist is not tested.
  await promisify(execFile)('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: path.join(path.dirname(BIN), '..') });
}, 120_000);

afterEach(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  children.length = 0;
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
  await cleanupTmpDirs();
});

function cli(cwd: string, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { cwd, env: testEnv() }, (err, stdout, stderr) => {
      const signal = (err as { signal?: string } | null)?.signal;
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr: signal ? `${stderr}(killed by ${signal})` : stderr });
    });
  });
}

/** Starts `cascade-sync start` as a real process; resolves once it says it is ready. */
async function startProcess(dir: string): Promise<{ child: ChildProcess; out: () => string }> {
  const child = spawn(process.execPath, [BIN, 'start'], { cwd: dir, env: testEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  await waitFor(() => out.includes('cascade-sync: ready') || (child.exitCode !== null ? Promise.reject(new Error(out)) : undefined), { what: 'the controller process to be ready', timeoutMs: 30_000 }).catch((e: Error) => {
    throw new Error(`${e.message}\n--- controller output ---\n${out}`);
  });
  return { child, out: () => out };
}

function exited(child: ChildProcess): Promise<number | null> {
  return child.exitCode !== null ? Promise.resolve(child.exitCode) : new Promise((r) => child.once('exit', (code) => r(code)));
}

describe('the controller process', () => {
  it('runs one controller per sandbox: --detach returns once up, a second start names the pid, stop is graceful', async () => {
    const remote = path.join(await makeTmpDir('remote'), 'r.git');
    await makeBareRepo(remote, { initialBranch: 'develop' });
    const { dir } = await makeSandbox({ remotes: [{ name: 'origin', url: remote }], debounce: '1h', batchWindow: '2h' });
    const up = await cli(dir, 'start', '--detach');
    expect(up.code, up.stderr).toBe(0);
    const pid = Number(/pid (\d+)/.exec(up.stdout)?.[1]);
    expect(pid).toBeGreaterThan(0);
    const second = await cli(dir, 'start');
    expect(second.code).toBe(2);
    expect(second.stderr).toContain(`already running for this sandbox (pid ${pid}`);
    const st = JSON.parse((await cli(dir, 'status', '--json')).stdout);
    expect(st.running).toBe(true);
    expect(st.pid).toBe(pid);
    expect(st.snapshot.sandbox.branch).toBe('develop');
    // A pending batch (debounce 1h) is committed and pushed by a graceful stop.
    await writeFile(path.join(dir, 'pending.txt'), 'do not lose me');
    await waitFor(async () => JSON.parse((await cli(dir, 'status', '--json')).stdout).snapshot.sandbox.pendingPaths > 0 || undefined, { what: 'the edit to be pending' });
    const stop = await cli(dir, 'stop');
    expect(stop.code, stop.stderr).toBe(0);
    expect((await showFile(dir, 'develop', 'pending.txt')).toString()).toBe('do not lose me');
    expect(await revParse(remote, 'develop')).toBe(await revParse(dir, 'develop'));
    const after = JSON.parse((await cli(dir, 'status', '--json')).stdout);
    expect(after.running).toBe(false);
    await fsckStrict(dir);
  });

  it('commits the pending batch on SIGTERM', async () => {
    const { dir } = await makeSandbox({ debounce: '1h', batchWindow: '2h' });
    const { child } = await startProcess(dir);
    await writeFile(path.join(dir, 'on-term.txt'), 'x');
    await waitFor(async () => JSON.parse(await readFile(path.join(dir, '.git/cascade-sync/status.json'), 'utf8')).sandbox.pendingPaths > 0 || undefined, { what: 'the edit to be pending' });
    child.kill('SIGTERM');
    expect(await exited(child)).toBe(0);
    expect((await showFile(dir, 'develop', 'on-term.txt')).toString()).toBe('x');
  });

  it('loses nothing when killed with -9 during a batch: restart takes over the lock and commits it all', async () => {
    const { dir } = await makeSandbox({ debounce: '200ms', batchWindow: '1s' });
    const first = await startProcess(dir);
    for (let d = 0; d < 20; d++) {
      await mkdir(path.join(dir, `many/d${d}`), { recursive: true });
      await Promise.all(Array.from({ length: 150 }, (_, f) => writeFile(path.join(dir, `many/d${d}/f${f}.txt`), `${d}/${f}`)));
    }
    // Kill while the batch holds the index lock, i.e. in the middle of writing the commit.
    await waitFor(() => access(path.join(dir, '.git/index.lock')).then(() => true, () => undefined), { what: 'the batch to be under way', intervalMs: 2 });
    first.child.kill('SIGKILL');
    await exited(first.child);
    const second = await startProcess(dir);
    expect(second.out()).toContain('took over a stale lock');
    await waitFor(async () => (await lsTree(dir, 'develop')).filter((e) => e.path.startsWith('many/')).length === 3000 || undefined, { what: 'all 3000 files committed after the restart', timeoutMs: 60_000 }).catch((e: Error) => {
      throw new Error(`${e.message}\n--- controller output ---\n${second.out()}`);
    });
    await waitFor(async () => (await statusPorcelain(dir)).length === 0 || undefined, { what: 'a clean status' });
    await fsckStrict(dir);
    second.child.kill('SIGTERM');
    await exited(second.child);
  }, 150_000);

  it("survives the user's own git commit in the sandbox while running", async () => {
    const { dir } = await makeSandbox({ debounce: '300ms' });
    const { child } = await startProcess(dir);
    await writeFile(path.join(dir, 'mine.txt'), 'committed by hand');
    // The user's git may meet the controller's index.lock: git then fails, and the user retries.
    await waitFor(async () => (await gitOk(dir, 'add', 'mine.txt')).code === 0 && (await gitOk(dir, 'commit', '-m', 'my own commit')).code === 0 || (await logOneline(dir, 'develop')).some((s) => s.includes('mine.txt')) || undefined, { what: 'the user commit' });
    await writeFile(path.join(dir, 'after.txt'), 'then the controller again');
    await waitFor(async () => (await lsTree(dir, 'develop')).some((e) => e.path === 'after.txt') || undefined, { what: 'the next batch' });
    const tree = new Map((await lsTree(dir, 'develop')).map((e) => [e.path, e]));
    expect(tree.has('mine.txt')).toBe(true);
    await waitFor(async () => (await statusPorcelain(dir)).length === 0 || undefined, { what: 'a clean status' });
    await fsckStrict(dir);
    child.kill('SIGTERM');
    await exited(child);
  });

  it('reconcile runs one full pass: edits made while stopped are committed and pushed', async () => {
    const remote = path.join(await makeTmpDir('remote'), 'r.git');
    await makeBareRepo(remote, { initialBranch: 'develop' });
    const { dir } = await makeSandbox({ remotes: [{ name: 'origin', url: remote }] });
    await writeFile(path.join(dir, 'offline.txt'), 'edited while stopped');
    const r = await cli(dir, 'reconcile');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/sandbox: committed/);
    expect(r.stdout).toMatch(/remote:origin: pushed/);
    expect((await showFile(remote, 'develop', 'offline.txt')).toString()).toBe('edited while stopped');
    const again = await cli(dir, 'reconcile');
    expect(again.stdout).toMatch(/sandbox: no changes/);
    expect(await tryRevParse(remote, 'develop')).toBe(await revParse(dir, 'develop'));
  });
});

describe('the pipeline under a running controller process', () => {
  it('deploy-* nudges the running controller and waits for the outcome; an approval just written is committed, then promoted; an http health check that never passes rolls staging back at the progress deadline', async () => {
    const dir = await makeTmpDir('sandbox');
    const deployRoot = await makeTmpDir('deploy');
    const logFile = path.join(await makeTmpDir('logs'), 'cascade-sync.log');
    const alice = await sshKey(await makeTmpDir('keys'), 'alice@example.com');
    // The "web server" of the staging release: 200 with the release's app.txt, 503 while it says SLOW.
    const web = createServer(async (req, res) => {
      const body = await readFile(path.join(deployRoot, 'staging/current/app.txt'), 'utf8').catch(() => '');
      res.writeHead(body.includes('SLOW') ? 503 : 200).end(body);
    });
    await new Promise<void>((r) => web.listen(0, '127.0.0.1', r));
    servers.push(web);
    const healthUrl = `http://127.0.0.1:${(web.address() as { port: number }).port}/healthz`;
    const stagingExtra = [
      '    health:',
      `      - { name: web, http: { url: ${JSON.stringify(healthUrl)}, status: 200, body: v }, timeout: 5s }`,
      '    healthyAfter: 1',
      '    failureThreshold: 100',
      '    progressDeadline: 4s',
      '    rollback: { automatic: true }',
    ].join('\n');
    await writeFile(path.join(dir, 'app.txt'), 'v1\n');
    // A long debounce: edits are committed only when a command nudges the controller, so each step below is deterministic.
    const sandbox = '{ debounce: 1h, batchWindow: 2h }';
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), pipelineConfig({ signers: [alice.pub], logFile, deployRoot, stagingExtra, sandbox }));
    expect((await cli(dir, 'init')).code).toBe(0);
    const c1 = await revParse(dir, 'develop');
    const { child, out } = await startProcess(dir);

    // deploy-staging with a controller running: it nudges it (SIGUSR1): the pending edit is committed, gated, promoted and deployed.
    await writeFile(path.join(dir, 'app.txt'), 'v2\n');
    await waitFor(async () => JSON.parse(await readFile(path.join(dir, '.git/cascade-sync/status.json'), 'utf8')).sandbox.pendingPaths > 0 || undefined, { what: 'the edit to be pending' });
    const staged = await cli(dir, 'deploy-staging');
    expect(staged.code, staged.stdout + staged.stderr).toBe(0);
    expect(staged.stdout).toContain(`asked the running controller (pid ${child.pid})`);
    const c2 = await revParse(dir, 'develop');
    expect(c2).not.toBe(c1);
    expect(staged.stdout, await git(dir, 'log', '--stat', '--format=%h %s', 'develop')).toMatch(new RegExp(`promoted.*${c2.slice(0, 7)}`));
    expect(await revParse(dir, 'staging')).toBe(c2);
    expect(await live(path.join(deployRoot, 'staging'))).toBe(c2);
    await waitFor(async () => (await envReport(dir, 'staging'))?.health?.phase === 'healthy' || undefined, { what: 'staging healthy through its http check' });

    // approve, then deploy-production at once: the approval is not committed yet; the command waits for the commit and the promotion.
    const approve = await cli(dir, 'approve', 'production', '--key', alice.file);
    expect(approve.code, approve.stderr).toBe(0);
    expect(approve.stdout).toContain(`commit: ${c2}`);
    const produced = await cli(dir, 'deploy-production');
    expect(produced.code, produced.stdout + produced.stderr).toBe(0);
    expect(produced.stdout).toMatch(new RegExp(`promoted.*${c2.slice(0, 7)}`));
    expect(await revParse(dir, 'main')).toBe(c2);
    expect(await live(path.join(deployRoot, 'production'))).toBe(c2);

    // A release whose http check keeps failing (below failureThreshold) is rolled back when the progress deadline passes.
    const healthyStaging = await waitFor(async () => {
      const r = await envReport(dir, 'staging');
      return r?.health?.phase === 'healthy' && r.head === r.deployed && r.head === (await revParse(dir, 'develop')) ? r.head as string : undefined;
    }, { what: 'staging at the approval commit, healthy', timeoutMs: 30_000 });
    await writeFile(path.join(dir, 'app.txt'), 'v3 SLOW\n');
    await waitFor(async () => JSON.parse(await readFile(path.join(dir, '.git/cascade-sync/status.json'), 'utf8')).sandbox.pendingPaths > 0 || undefined, { what: 'the slow edit to be pending' });
    const slowDeploy = await cli(dir, 'deploy-staging');
    expect(slowDeploy.code, slowDeploy.stdout + slowDeploy.stderr).toBe(0);
    const slow = await revParse(dir, 'develop');
    expect(await live(path.join(deployRoot, 'staging')), `${slowDeploy.stdout}\n${await git(dir, 'log', '--oneline', '--all', '--decorate')}`).toBe(slow);
    // The failed ref is written first in the rollback, the history entry last: wait for the history.
    await waitFor(async () => (await readFile(path.join(dir, '.git/cascade-sync/history.jsonl'), 'utf8')).includes('"event":"rolled-back"') || undefined, { what: 'staging rolled back at the progress deadline', timeoutMs: 40_000 }).catch(async (e: Error) => {
      throw new Error(`${e.message}\n${JSON.stringify(await envReport(dir, 'staging'))}\n${out().slice(-3000)}`);
    });
    const historyText = await readFile(path.join(dir, '.git/cascade-sync/history.jsonl'), 'utf8');
    const history = historyText.trim().split('\n').map((l) => JSON.parse(l));
    const rollback = history.find((h) => h.event === 'rolled-back' && h.environment === 'staging');
    const why = `healthy ${healthyStaging}, slow ${slow}\n${historyText}\n${await git(dir, 'log', '--oneline', '--all')}`;
    expect(rollback, why).toMatchObject({ from: slow });
    expect(rollback.result).toMatch(/progress deadline/);
    // Back on a release that had become healthy (the branch and the live release agree); the history names it.
    expect([healthyStaging, c2], why).toContain(rollback.commit);
    expect(await revParse(dir, 'staging'), why).toBe(rollback.commit);
    expect(await tryRevParse(dir, `refs/cascade-sync/failed/staging/${slow}`)).toBe(slow);
    expect(await live(path.join(deployRoot, 'staging'))).toBe(rollback.commit);
    // The failed commit is not promoted again, and deploy-staging says so.
    const again = await cli(dir, 'deploy-staging');
    expect(again.code).toBe(1);
    expect(again.stdout).toContain(`${slow.slice(0, 7)} was rolled back`);
    expect(await revParse(dir, 'staging')).toBe(rollback.commit);
    child.kill('SIGTERM');
    expect(await exited(child)).toBe(0);
    await fsckStrict(dir);
  }, 150_000);
});

describe('the demo (npm start)', () => {
  it('shows a change flowing from the demo sandbox to its local remote', async () => {
    const demoDir = await makeTmpDir('demo');
    const child = spawn(process.execPath, [BIN, 'demo'], { cwd: demoDir, env: testEnv({ CASCADE_DEMO_DIR: demoDir }), stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (out += d));
    await waitFor(() => out.includes('the change is in the remote') || undefined, { what: 'the demo change in the remote', timeoutMs: 40_000 });
    const remote = path.join(demoDir, 'remote.git');
    expect((await showFile(remote, 'develop', 'hello.txt')).toString()).toMatch(/hello from the cascade-sync demo/);
    await access(path.join(demoDir, 'cascade-sync.log'));
    // Nothing outside the demo folder: its encryption key is there too, not in ~/.config.
    await access(path.join(demoDir, 'demo.key'));
    expect(existsSync(defaultKeyFilePath(path.join(demoDir, 'sandbox'), testEnv()))).toBe(false);
    child.kill('SIGINT');
    expect(await exited(child)).toBe(0);
    expect(await git(remote, 'log', '--oneline', 'develop')).toMatch(/sync: 1 added \(hello\.txt\)/);
  });
});
