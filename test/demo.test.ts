import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readdir, readFile, readlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parse } from 'yaml';
import { git, gitOk, revParse, showFile } from './helpers/git.js';
import { testEnv } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

const exec = promisify(execFile);
const BIN = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'bin', 'cascade-sync.js');
const SIGNER = 'demo-approver@cascade-sync.invalid';
/** A tour takes about a minute; on a busy machine give it plenty more. */
const TOUR_MS = 240_000;
const children: ChildProcess[] = [];

beforeAll(async () => {
  // The bin runs the compiled code: make sure a stale dist is not tested.
  await exec('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: path.join(path.dirname(BIN), '..') });
}, 120_000);

afterEach(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  children.length = 0;
  await cleanupTmpDirs();
});

interface Demo {
  child: ChildProcess;
  out: () => string;
}

/** `cascade-sync demo` as `npm start` runs it, with a scratch HOME and TMPDIR that must stay untouched. */
function startDemo(demoDir: string, home: string, tmp: string): Demo {
  const child = spawn(process.execPath, [BIN, 'demo'], { cwd: demoDir, env: testEnv({ CASCADE_DEMO_DIR: demoDir, HOME: home, TMPDIR: tmp }), stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  return { child, out: () => out };
}

async function until(demo: Demo, text: string | RegExp, timeoutMs = TOUR_MS): Promise<void> {
  const seen = () => (typeof text === 'string' ? demo.out().includes(text) : text.test(demo.out()));
  await waitFor(() => seen() || (demo.child.exitCode !== null ? Promise.reject(new Error('the demo exited')) : undefined), { what: `demo output ${text}`, timeoutMs, intervalMs: 200 }).catch((e: Error) => {
    throw new Error(`${e.message}\n--- demo output ---\n${demo.out()}`);
  });
}

function exited(child: ChildProcess): Promise<number | null> {
  return child.exitCode !== null ? Promise.resolve(child.exitCode) : new Promise((r) => child.once('exit', (code) => r(code)));
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
    new RegExp(`^demo: approval committed: .*signed by ${SIGNER}`),
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
