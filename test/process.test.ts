import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { access, mkdir, readdir, readFile, readlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fsckStrict, git, gitOk, logOneline, lsTree, makeBareRepo, revParse, showFile, statusPorcelain, tryRevParse } from './helpers/git.js';
import { buildDist, cli, exited, killStartedProcesses, spawnCli, startControllerProcess, type CliProcess } from './helpers/process.js';
import { makeSandbox, testEnv } from './helpers/sandbox.js';
import { envReport, live, pipelineConfig, sshKey } from './helpers/pipeline.js';
import { createServer, type Server } from 'node:http';
import { existsSync } from 'node:fs';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';
import { parse } from 'yaml';

const servers: Server[] = [];

// The bin runs the compiled code: `npm test` builds first; make sure a stale dist is not tested.
beforeAll(buildDist, 120_000);

afterEach(async () => {
  killStartedProcesses();
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
  await cleanupTmpDirs();
});

/** Starts `cascade-sync start` as a real process; resolves once it says it is ready. `out` is stdout and stderr interleaved, `stdout` the terminal output alone. */
function startProcess(dir: string): Promise<CliProcess> {
  return startControllerProcess(dir, { timeoutMs: 30_000 });
}

/** The full oid of the commit a successful `git commit` reported (`[develop 1a2b3c4] subject`). */
async function reportedCommit(dir: string, commitStdout: string): Promise<string> {
  const short = /^\[[^\]]*?([0-9a-f]{7,40})\]/m.exec(commitStdout)?.[1];
  if (!short) throw new Error(`no commit id in git commit's output: ${commitStdout}`);
  return revParse(dir, `${short}^{commit}`);
}

/** True when `oid` is reachable from `ref` (native `git merge-base --is-ancestor`). */
async function isAncestor(dir: string, oid: string, ref: string): Promise<boolean> {
  const r = await gitOk(dir, 'merge-base', '--is-ancestor', oid, ref);
  if (r.code > 1) throw new Error(`git merge-base --is-ancestor ${oid} ${ref}: ${r.stderr}`);
  return r.code === 0;
}

describe('the controller process', () => {
  it('runs one controller per sandbox: --detach returns once up, a second start names the pid, stop is graceful', async () => {
    const remote = path.join(await makeTmpDir('remote'), 'r.git');
    await makeBareRepo(remote, { initialBranch: 'develop' });
    const { dir } = await makeSandbox({ remotes: [{ name: 'origin', url: remote }], debounce: '1h', batchWindow: '2h' });
    const up = await cli(dir, ['start', '--detach']);
    expect(up.code, up.stderr).toBe(0);
    const pid = Number(/pid (\d+)/.exec(up.stdout)?.[1]);
    expect(pid).toBeGreaterThan(0);
    const second = await cli(dir, ['start']);
    expect(second.code).toBe(2);
    expect(second.stderr).toContain(`already running for this sandbox (pid ${pid}`);
    const st = JSON.parse((await cli(dir, ['status', '--json'])).stdout);
    expect(st.running).toBe(true);
    expect(st.pid).toBe(pid);
    expect(st.snapshot.sandbox.branch).toBe('develop');
    // A pending batch (debounce 1h) is committed and pushed by a graceful stop.
    await writeFile(path.join(dir, 'pending.txt'), 'do not lose me');
    await waitFor(async () => JSON.parse((await cli(dir, ['status', '--json'])).stdout).snapshot.sandbox.pendingPaths > 0 || undefined, { what: 'the edit to be pending' });
    const stop = await cli(dir, ['stop']);
    expect(stop.code, stop.stderr).toBe(0);
    expect((await showFile(dir, 'develop', 'pending.txt')).toString()).toBe('do not lose me');
    expect(await revParse(remote, 'develop')).toBe(await revParse(dir, 'develop'));
    const after = JSON.parse((await cli(dir, ['status', '--json'])).stdout);
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
    const indexLock = path.join(dir, '.git/index.lock');
    await waitFor(() => access(indexLock).then(() => true, () => undefined), { what: 'the batch to be under way', intervalMs: 2 });
    first.child.kill('SIGKILL');
    await exited(first.child);
    // The kill landed mid-batch: the 3000 files are not all on develop. The index lock is git's (the
    // controller's `git add` runs in its own process group): that git finishes and releases it.
    expect((await lsTree(dir, 'develop')).filter((e) => e.path.startsWith('many/')).length).toBeLessThan(3000);
    const second = await startProcess(dir);
    expect(second.out()).toContain('took over a stale lock');
    await waitFor(async () => (await lsTree(dir, 'develop')).filter((e) => e.path.startsWith('many/')).length === 3000 || undefined, { what: 'all 3000 files committed after the restart', timeoutMs: 60_000 }).catch((e: Error) => {
      throw new Error(`${e.message}\n--- controller output ---\n${second.out()}`);
    });
    await waitFor(async () => (await statusPorcelain(dir)).length === 0 || undefined, { what: 'a clean status' });
    for (let d = 0; d < 20; d++) expect((await showFile(dir, 'develop', `many/d${d}/f149.txt`)).toString()).toBe(`${d}/149`);
    // No stale lock is left: a native commit goes through (retried only while the live controller
    // briefly holds the lock; a lock left by the dead one would fail every attempt).
    let lastTry = '';
    const mine = await waitFor(async () => {
      const r = await gitOk(dir, 'commit', '--allow-empty', '-m', 'x');
      lastTry = r.stderr;
      return r.code === 0 ? reportedCommit(dir, r.stdout) : undefined;
    }, { what: 'a native git commit after the restart' }).catch((e: Error) => {
      throw new Error(`${e.message}\n${lastTry}\n--- controller output ---\n${second.out()}`);
    });
    second.child.kill('SIGTERM');
    expect(await exited(second.child)).toBe(0);
    expect(existsSync(indexLock)).toBe(false);
    expect(await isAncestor(dir, mine, 'develop')).toBe(true);
    expect((await gitOk(dir, 'commit', '--allow-empty', '-m', 'y')).code).toBe(0);
    await fsckStrict(dir);
  }, 150_000);

  it("survives the user's own git commit in the sandbox while running", async () => {
    const { dir } = await makeSandbox({ debounce: '300ms' });
    const { child, out } = await startProcess(dir);
    // The user's git may meet the controller's index.lock: git then fails, and the user retries (with
    // new content each time, so there is something to commit even if the controller took the last one).
    let attempt = 0;
    const mine = await waitFor(async () => {
      await writeFile(path.join(dir, 'mine.txt'), `committed by hand, attempt ${++attempt}`);
      if ((await gitOk(dir, 'add', 'mine.txt')).code !== 0) return undefined;
      const r = await gitOk(dir, 'commit', '-m', 'my own commit');
      return r.code === 0 ? reportedCommit(dir, r.stdout) : undefined;
    }, { what: 'the user commit' });
    expect(await git(dir, 'log', '-1', '--format=%s', mine)).toBe('my own commit');
    await writeFile(path.join(dir, 'after.txt'), 'then the controller again');
    await waitFor(async () => (await lsTree(dir, 'develop')).some((e) => e.path === 'after.txt') || undefined, { what: 'the next batch' });
    await waitFor(async () => (await statusPorcelain(dir)).length === 0 || undefined, { what: 'a clean status' });
    const why = `${await git(dir, 'log', '--oneline', '--graph', '-12', 'develop')}\n--- controller output ---\n${out().slice(-3000)}`;
    // The user's commit stays on develop, and the controller's later commits build on it in a line.
    expect(await isAncestor(dir, mine, 'develop'), why).toBe(true);
    expect((await git(dir, 'rev-list', '--first-parent', 'develop')).split('\n'), why).toContain(mine);
    const later = (await git(dir, 'log', '--format=%s', `${mine}..develop`)).split('\n');
    expect(later.length, why).toBeGreaterThanOrEqual(1);
    for (const subject of later) expect(subject, why).toMatch(/^sync: /);
    expect(later.some((subject) => subject.includes('after.txt')), why).toBe(true);
    expect((await showFile(dir, 'develop', 'mine.txt')).toString()).toBe(`committed by hand, attempt ${attempt}`);
    await fsckStrict(dir);
    child.kill('SIGTERM');
    expect(await exited(child)).toBe(0);
  });

  it("keeps every native commit a user makes while the controller commits a stream of edits", async () => {
    const { dir } = await makeSandbox({ debounce: '100ms', batchWindow: '400ms' });
    const { child, out } = await startProcess(dir);
    await mkdir(path.join(dir, 'stream'));
    await mkdir(path.join(dir, 'user'));
    // The controller's side: edits every 30 ms, so its batches (and their index.lock) keep coming.
    let streaming = true;
    let edits = 0;
    const stream = (async () => {
      while (streaming) {
        await writeFile(path.join(dir, `stream/s${edits % 4}.txt`), `edit ${edits}`);
        edits++;
        await new Promise((r) => setTimeout(r, 30));
      }
    })();
    // The user's side: add and commit a new file in a loop until the controller has committed in
    // between a few times. Every commit git reports as made must survive.
    const made: { n: number; oid: string }[] = [];
    const lockFailures: string[] = [];
    const movedFailures: string[] = [];
    const otherFailures: string[] = [];
    const deadline = Date.now() + 45_000;
    let n = 0;
    let syncSinceFirst = 0;
    try {
      for (; n < 12 || (syncSinceFirst < 3 && Date.now() < deadline); n++) {
        await writeFile(path.join(dir, `user/u${n}.txt`), `user ${n}`);
        const add = await gitOk(dir, 'add', `user/u${n}.txt`);
        const r = add.code === 0 ? await gitOk(dir, 'commit', '-m', `user commit ${n}`) : add;
        if (r.code === 0) made.push({ n, oid: await reportedCommit(dir, r.stdout) });
        // git's own locks: the index, or the branch's ref lock held by the controller's update-ref at that moment.
        else if (/index\.lock|develop\.lock': File exists/.test(r.stderr)) lockFailures.push(`${n}: ${r.stderr.trim()}`);
        // git's own compare-and-swap: the controller moved develop while this commit was being made.
        else if (/cannot lock ref 'HEAD': is at [0-9a-f]+ but expected/.test(r.stderr)) movedFailures.push(`${n}: ${r.stderr.trim()}`);
        else otherFailures.push(`${n}: ${(r.stderr || r.stdout).trim()}`);
        if (made[0]) syncSinceFirst = (await logOneline(dir, `${made[0].oid}..develop`)).filter((s) => s.startsWith('sync: ')).length;
        // A commit loop with no pause takes what the controller staged nearly every time (git commits the
        // whole index), so the controller's own commits would land only by luck: every other round the
        // user pauses for about one controller batch.
        if (n % 2) await new Promise((r) => setTimeout(r, 400));
      }
    } finally {
      streaming = false;
      await stream;
    }
    const lastEdit = edits - 1;
    await waitFor(async () => (await showFile(dir, 'develop', `stream/s${lastEdit % 4}.txt`)).toString() === `edit ${lastEdit}` || undefined, { what: 'the last stream edit committed' });
    await waitFor(async () => (await statusPorcelain(dir)).length === 0 || undefined, { what: 'a clean status', timeoutMs: 30_000 });
    const why = `made ${made.length} of ${n} user commits; ${lockFailures.length} failed on index.lock, ${movedFailures.length} on develop moving under them; other failures: ${otherFailures.join(' | ') || 'none'}; ${syncSinceFirst} controller commits since the first user commit\n${await git(dir, 'log', '--oneline', '-40', 'develop')}\n--- controller output ---\n${out().slice(-3000)}`;
    // The race was real: the controller committed after the user's first commit, several times.
    expect(made.length, why).toBeGreaterThanOrEqual(1);
    expect(syncSinceFirst, why).toBeGreaterThanOrEqual(3);
    // "nothing to commit" only if the controller committed the user's file first; anything else is a bug.
    for (const f of otherFailures) expect(f, why).toMatch(/nothing (added )?to commit|no changes added to commit/);
    for (const { n: i, oid } of made) {
      expect(await isAncestor(dir, oid, 'develop'), `user commit ${i} (${oid}) unreachable from develop\n${why}`).toBe(true);
      expect(await git(dir, 'log', '-1', '--format=%s', oid)).toBe(`user commit ${i}`);
    }
    // Nothing lost either way: every user file and the last of each stream file is on develop.
    const tree = new Map((await lsTree(dir, 'develop')).map((e) => [e.path, e]));
    for (let i = 0; i < n; i++) expect(tree.has(`user/u${i}.txt`), `user/u${i}.txt\n${why}`).toBe(true);
    for (let k = 0; k < 4 && k <= lastEdit; k++) {
      const last = lastEdit - ((lastEdit - k) % 4);
      expect((await showFile(dir, 'develop', `stream/s${k}.txt`)).toString()).toBe(`edit ${last}`);
    }
    await fsckStrict(dir);
    child.kill('SIGTERM');
    expect(await exited(child)).toBe(0);
  }, 120_000);

  it('logs human-readable lines to the terminal and JSON lines (time, level, msg) to the log file', async () => {
    const { dir, logFile } = await makeSandbox();
    const { child, stdout } = await startProcess(dir);
    await writeFile(path.join(dir, 'logged.txt'), 'x');
    await waitFor(async () => (await lsTree(dir, 'develop')).some((e) => e.path === 'logged.txt') || undefined, { what: 'the commit' });
    await waitFor(() => /committed [0-9a-f]{7} on develop: sync: 1 added \(logged\.txt\)/.test(stdout()) || undefined, { what: 'the commit in the terminal log' });
    child.kill('SIGTERM');
    expect(await exited(child)).toBe(0);
    const fileLines = (await readFile(logFile, 'utf8')).split('\n');
    expect(fileLines.pop()).toBe('');
    expect(fileLines.length).toBeGreaterThan(0);
    const levels = new Set(['debug', 'info', 'warn', 'error']);
    const records = fileLines.map((line, i) => {
      let r: { time?: unknown; level?: unknown; msg?: unknown };
      try {
        r = JSON.parse(line);
      } catch {
        throw new Error(`log file line ${i + 1} is not JSON: ${line}`);
      }
      expect(typeof r.time === 'string' && /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/.test(r.time) && !Number.isNaN(Date.parse(r.time)), `time of line ${i + 1}: ${line}`).toBe(true);
      expect(levels.has(r.level as string), `level of line ${i + 1}: ${line}`).toBe(true);
      expect(typeof r.msg === 'string' && r.msg !== '', `msg of line ${i + 1}: ${line}`).toBe(true);
      return r as { time: string; level: string; msg: string };
    });
    expect(records.some((r) => r.level === 'info' && /^committed [0-9a-f]{7} on develop: sync: 1 added \(logged\.txt\)$/.test(r.msg)), fileLines.join('\n')).toBe(true);
    // The terminal: "HH:MM:SS level message" log lines, plus the controller's own plain lines.
    const plain = [/^cascade-sync: /, /^scanning the sandbox: .* in \S+/, /^took over a stale lock /, /^removed .*, left behind by the crashed controller$/];
    const termLines = stdout().split('\n');
    expect(termLines.pop()).toBe('');
    const logLines = termLines.filter((l) => /^\d\d:\d\d:\d\d (debug|info |warn |error) \S/.test(l));
    for (const l of termLines) expect(logLines.includes(l) || plain.some((re) => re.test(l)), `terminal line: ${JSON.stringify(l)}\n${stdout()}`).toBe(true);
    expect(termLines).toContain('cascade-sync: ready');
    // The same events, in both: each terminal log line's message is in the file (the terminal shows fields after two spaces).
    const fileMsgs = new Set(records.map((r) => r.msg));
    for (const l of logLines) {
      const msg = l.slice(15).split('  ')[0]!;
      expect([...fileMsgs].some((m) => m === msg || m.startsWith(msg)), `terminal line not in the log file: ${l}`).toBe(true);
    }
  });

  it('reconcile runs one full pass: edits made while stopped are committed and pushed', async () => {
    const remote = path.join(await makeTmpDir('remote'), 'r.git');
    await makeBareRepo(remote, { initialBranch: 'develop' });
    const { dir } = await makeSandbox({ remotes: [{ name: 'origin', url: remote }] });
    await writeFile(path.join(dir, 'offline.txt'), 'edited while stopped');
    const r = await cli(dir, ['reconcile']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/sandbox: committed/);
    expect(r.stdout).toMatch(/remote:origin: pushed/);
    expect((await showFile(remote, 'develop', 'offline.txt')).toString()).toBe('edited while stopped');
    const again = await cli(dir, ['reconcile']);
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
    expect((await cli(dir, ['init'])).code).toBe(0);
    const c1 = await revParse(dir, 'develop');
    const { child, out } = await startProcess(dir);

    // deploy-staging with a controller running: it nudges it (SIGUSR1): the pending edit is committed, gated, promoted and deployed.
    await writeFile(path.join(dir, 'app.txt'), 'v2\n');
    await waitFor(async () => JSON.parse(await readFile(path.join(dir, '.git/cascade-sync/status.json'), 'utf8')).sandbox.pendingPaths > 0 || undefined, { what: 'the edit to be pending' });
    const staged = await cli(dir, ['deploy-staging']);
    expect(staged.code, staged.stdout + staged.stderr).toBe(0);
    expect(staged.stdout).toContain(`asked the running controller (pid ${child.pid})`);
    const c2 = await revParse(dir, 'develop');
    expect(c2).not.toBe(c1);
    expect(staged.stdout, await git(dir, 'log', '--stat', '--format=%h %s', 'develop')).toMatch(new RegExp(`promoted.*${c2.slice(0, 7)}`));
    expect(await revParse(dir, 'staging')).toBe(c2);
    expect(await live(path.join(deployRoot, 'staging'))).toBe(c2);
    await waitFor(async () => (await envReport(dir, 'staging'))?.health?.phase === 'healthy' || undefined, { what: 'staging healthy through its http check' });

    // approve, then deploy-production at once: the approval is not committed yet; the command waits for the commit and the promotion.
    const approve = await cli(dir, ['approve', 'production', '--key', alice.file]);
    expect(approve.code, approve.stderr).toBe(0);
    expect(approve.stdout).toContain(`commit: ${c2}`);
    const produced = await cli(dir, ['deploy-production']);
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
    const slowDeploy = await cli(dir, ['deploy-staging']);
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
    const again = await cli(dir, ['deploy-staging']);
    expect(again.code).toBe(1);
    expect(again.stdout).toContain(`${slow.slice(0, 7)} was rolled back`);
    expect(await revParse(dir, 'staging')).toBe(rollback.commit);
    child.kill('SIGTERM');
    expect(await exited(child)).toBe(0);
    await fsckStrict(dir);
  }, 150_000);
});

const SIGNER = 'demo-approver@cascade-sync.invalid';
/** A tour takes about a minute; on a busy machine give it plenty more. */
const TOUR_MS = 240_000;

interface Demo {
  child: ChildProcess;
  out: () => string;
}

/** `cascade-sync demo` as `npm start` runs it, with a scratch HOME and TMPDIR that must stay untouched. */
function startDemo(demoDir: string, home: string, tmp: string): Demo {
  return spawnCli(['demo'], { cwd: demoDir, env: testEnv({ CASCADE_DEMO_DIR: demoDir, HOME: home, TMPDIR: tmp }) });
}

async function until(demo: Demo, text: string | RegExp, timeoutMs = TOUR_MS): Promise<void> {
  const seen = () => (typeof text === 'string' ? demo.out().includes(text) : text.test(demo.out()));
  await waitFor(() => seen() || (demo.child.exitCode !== null ? Promise.reject(new Error('the demo exited')) : undefined), { what: `demo output ${text}`, timeoutMs, intervalMs: 200 }).catch((e: Error) => {
    throw new Error(`${e.message}\n--- demo output ---\n${demo.out()}`);
  });
}

/** Every file and folder under `dir`, for before/after comparisons. */
async function listTree(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true })).map(String).sort();
}

/**
 * The narration, step by step in order, and the real state behind each step: git refs in the demo
 * remote and the sandbox, release folders, the controller's history and gate results, and the
 * approval signatures checked by ssh-keygen. Returns the good and the broken commit.
 */
async function expectWholeTour(demoDir: string, out: string): Promise<{ good: string; broken: string }> {
  const lines = out.split('\n').filter((l) => l.startsWith('demo: '));
  expect(lines[0], out).toMatch(/^demo: status page: http:\/\/127\.0\.0\.1:\d+\/ /);
  const sandbox = path.join(demoDir, 'sandbox');
  const remote = path.join(demoDir, 'remote.git');
  const shorts = [...out.matchAll(/commit: the controller committed it to develop as ([0-9a-f]{7})/g)].map((m) => m[1]!);
  expect(shorts, out).toHaveLength(2);
  const good = await revParse(sandbox, shorts[0]!);
  const broken = await revParse(sandbox, shorts[1]!);
  const g = good.slice(0, 7);
  const b = broken.slice(0, 7);
  const steps = [
    /^demo: status page: /,
    /^demo: made .*sandbox .*committed to develop, staging and main.*remote .*remote\.git.*approval key .*keys\/approver \(ssh-keygen/,
    /^demo: start: develop, staging and production hold [0-9a-f]{7} .*deployed it and are healthy/,
    /^demo: edit: the demo changed .*index\.html/,
    new RegExp(`^demo: commit: the controller committed it to develop as ${g} "sync: 1 modified \\(index\\.html\\)"`),
    new RegExp(`^demo: push: ${g} pushed to origin`),
    new RegExp(`^demo: gate: staging ran test \\(passed: exit 0 .*\\) on ${g}`),
    new RegExp(`^demo: staging: promoted ${g}, deployed to .*releases/${good} and healthy \\(smoke: exit 0`),
    new RegExp(`^demo: production waits for approval: waiting for approval of ${g} .*it says to run: cascade-sync approve production ${good} --key `),
    new RegExp(`^demo: approve: the demo signs it .*: cascade-sync approve production ${good} --key .*keys/approver`),
    /^demo: approval committed: the controller committed cascade-sync-state\.yaml with the signed entry to develop as [0-9a-f]{7}/,
    new RegExp(`^demo: production: promoted ${g} \\(approved by ${SIGNER}\\), deployed to .*releases/${good} and healthy`),
    /^demo: edit: the demo misspells production\.url/,
    new RegExp(`^demo: commit: the controller committed it to develop as ${b} "sync: 1 modified \\(site\\.conf\\)"`),
    new RegExp(`^demo: push: ${b} pushed to origin`),
    new RegExp(`^demo: gate: staging ran test \\(passed: .*\\) on ${b}`),
    new RegExp(`^demo: staging: promoted ${b}, deployed to .* and healthy`),
    new RegExp(`^demo: production waits for approval: .*cascade-sync approve production ${broken} --key `),
    new RegExp(`^demo: approve: the demo signs it .*approve production ${broken} `),
    /^demo: approval committed: /,
    new RegExp(`^demo: production: promoted ${b} \\(approved by ${SIGNER}\\) and deployed it`),
    new RegExp(`^demo: rollback: production's health check failed \\(.*site\\.conf has no production\\.url\\); the controller switched production back to ${g} automatically`),
    new RegExp(`^demo: kept out: ${b} is recorded as failed .*never promoted again`),
    /^demo: the tour took \d+s\. The controller keeps running/,
  ];
  let at = 0;
  for (const step of steps) {
    const found = lines.findIndex((l, i) => i >= at && step.test(l));
    expect(found, `step ${step} in order in:\n${out}`).toBeGreaterThanOrEqual(0);
    at = found + 1;
  }

  // The demo remote: both commits on develop; production (main) rolled back to the good one, staging past both.
  for (const c of [good, broken]) expect((await gitOk(remote, 'merge-base', '--is-ancestor', c, 'develop')).code).toBe(0);
  expect((await gitOk(remote, 'merge-base', '--is-ancestor', broken, 'staging')).code).toBe(0);
  await waitFor(async () => (await revParse(remote, 'main')) === good, { what: 'the rollback of main pushed to the demo remote', timeoutMs: 30_000 });
  // The failed commit is kept out: recorded under its ref, production back on the good release.
  expect(await revParse(sandbox, `refs/cascade-sync/failed/production/${broken}`)).toBe(broken);
  expect(await revParse(sandbox, 'main')).toBe(good);
  // Release folders under demo/: the good release live in both environments' history, production's current is it.
  expect(path.basename(await readlink(path.join(demoDir, 'deploy/production/current')))).toBe(good);
  expect(await readFile(path.join(demoDir, 'deploy/production/releases', good, 'index.html'), 'utf8')).toMatch(/edited by the demo/);
  expect(await readFile(path.join(demoDir, 'deploy/production/releases', broken, 'site.conf'), 'utf8')).toMatch(/^production\.ulr=/m);
  expect(await readFile(path.join(demoDir, 'deploy/staging/releases', good, 'index.html'), 'utf8')).toMatch(/edited by the demo/);

  // The controller's own records.
  const history = (await readFile(path.join(sandbox, '.git/cascade-sync/history.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
  const has = (e: Record<string, unknown>) => history.some((h) => Object.entries(e).every(([k, v]) => JSON.stringify(h[k]) === JSON.stringify(v)));
  expect(has({ environment: 'staging', event: 'promoted', commit: good })).toBe(true);
  expect(has({ environment: 'staging', event: 'deployed', commit: broken })).toBe(true);
  expect(has({ environment: 'production', event: 'promoted', commit: good, signers: [SIGNER] })).toBe(true);
  expect(has({ environment: 'production', event: 'promoted', commit: broken, signers: [SIGNER] })).toBe(true);
  expect(has({ environment: 'production', event: 'rolled-back', commit: good, from: broken })).toBe(true);
  const gates = JSON.parse(await readFile(path.join(sandbox, '.git/cascade-sync/gates.json'), 'utf8')) as [string, { name: string; ok: boolean }][];
  expect(gates.filter(([k]) => k.startsWith(`${good}:`)).map(([, o]) => o)).toMatchObject([{ name: 'test', ok: true }]);

  // The approvals committed on develop verify with the real ssh-keygen against production's signers.
  const config = parse((await showFile(remote, 'main', 'cascade-sync-config.yaml')).toString());
  const signers = config.environments.production.approvals.signers as string[];
  expect(signers).toHaveLength(1);
  const state = parse((await showFile(remote, 'develop', 'cascade-sync-state.yaml')).toString());
  const approvals = state.approvals as { environment: string; commit: string; expires: string; signer: string; signature: string }[];
  expect(approvals.map((a) => a.commit)).toEqual([good, broken]);
  const work = await makeTmpDir('demo-verify');
  await writeFile(path.join(work, 'allowed_signers'), `${signers[0]}\n`);
  for (const a of approvals) {
    await writeFile(path.join(work, 'sig'), a.signature);
    const message = `cascade-sync approval v1\nenvironment: ${a.environment}\ncommit: ${a.commit}\nexpires: ${a.expires}\n`;
    const verified = await new Promise<number | null>((resolve) => {
      const p = spawn('ssh-keygen', ['-Y', 'verify', '-f', path.join(work, 'allowed_signers'), '-I', a.signer, '-n', 'cascade-sync', '-s', path.join(work, 'sig')], { stdio: ['pipe', 'ignore', 'ignore'] });
      p.on('exit', resolve);
      p.stdin!.end(message);
    });
    expect(verified, `ssh-keygen -Y verify of the approval of ${a.commit}`).toBe(0);
  }
  // The approval key was made under demo/ by ssh-keygen.
  expect(await readFile(path.join(demoDir, 'keys/approver'), 'utf8')).toMatch(/BEGIN OPENSSH PRIVATE KEY/);
  return { good, broken };
}

describe('the demo (npm start)', () => {
  it('tells the whole cascade from the controller itself, keeps running until Ctrl-C, and starts afresh after a finished tour and after kill -9', async () => {
    const demoDir = await makeTmpDir('demo');
    const home = await makeTmpDir('demo-home');
    const tmp = await makeTmpDir('demo-tmpdir');
    await mkdir(path.join(home, '.config'), { recursive: true });
    const homeBefore = await listTree(home);

    // 1. The whole tour.
    const first = startDemo(demoDir, home, tmp);
    await until(first, 'demo: the tour took');
    await expectWholeTour(demoDir, first.out());
    // The status page is served live on 127.0.0.1 at the address printed first.
    const url = /^demo: status page: (\S+)/m.exec(first.out())![1]!;
    const res = await fetch(new URL('api/status', url));
    expect(res.status).toBe(200);
    expect(((await res.json()) as { snapshot: { environments: { name: string }[] } }).snapshot.environments.map((e) => e.name)).toEqual(['staging', 'production']);
    // It keeps running for the person: an edit is followed, and Ctrl-C commits the pending batch, exit 0.
    await writeFile(path.join(demoDir, 'sandbox', 'mine.txt'), 'my own edit\n');
    await until(first, /demo: commit: develop [0-9a-f]{7} "sync: 1 added \(mine\.txt\)"/, 60_000);
    await writeFile(path.join(demoDir, 'sandbox', 'pending.txt'), 'written just before Ctrl-C\n');
    first.child.kill('SIGINT');
    expect(await exited(first.child)).toBe(0);
    expect(first.out()).toMatch(/demo: stopped\n$/);
    expect((await showFile(path.join(demoDir, 'remote.git'), 'develop', 'pending.txt')).toString()).toBe('written just before Ctrl-C\n');
    // Nothing outside the demo folder: no log, key or anything else in HOME, and no temporary exports outside it.
    expect(await listTree(home)).toEqual(homeBefore);
    expect(await listTree(tmp)).toEqual([]);
    await readFile(path.join(demoDir, 'cascade-sync.log'), 'utf8');
    await readFile(path.join(demoDir, 'demo.key'), 'utf8');

    // 2. A second start after the finished tour starts afresh; killed with -9 in the middle of it.
    const second = startDemo(demoDir, home, tmp);
    await until(second, /demo: made .*was replaced/);
    await until(second, 'demo: approve: the demo signs it');
    second.child.kill('SIGKILL');
    await exited(second.child);
    expect(second.out()).not.toMatch(/error|Error/);

    // 3. A third start after the kill tells the whole tour again, without errors.
    const third = startDemo(demoDir, home, tmp);
    await until(third, 'demo: the tour took');
    expect(third.out()).not.toMatch(/error|Error|the tour stopped/);
    const { good } = await expectWholeTour(demoDir, third.out());
    expect(await git(path.join(demoDir, 'sandbox'), 'cat-file', '-t', good)).toBe('commit');
    third.child.kill('SIGINT');
    expect(await exited(third.child)).toBe(0);
    expect(await listTree(home)).toEqual(homeBefore);
    expect(await listTree(tmp)).toEqual([]);
  }, 3 * TOUR_MS);
});
