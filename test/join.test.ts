import { afterEach, describe, expect, it } from 'vitest';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { cloneTo, fsckStrict, git, makeBareRepo, revParse, statusPorcelain, tryRevParse } from './helpers/git.js';
import { run, startController, type RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';
import { envReport, live, pipelineConfig, sshKey, statusJson } from './helpers/pipeline.js';
import { refsOf, treeSnapshot } from './helpers/team.js';

let controllers: RunningController[] = [];
afterEach(async () => {
  for (const c of controllers) await c.stop();
  controllers = [];
  await cleanupTmpDirs();
});

describe('a second person joins a running pipeline', () => {
  it('git clone + init + start adopts staging and main where the remote has them: the remote and every deploy directory stay exactly as they were', async () => {
    const keys = await makeTmpDir('keys');
    const alice = await sshKey(keys, 'alice@example.com');
    const bare = path.join(await makeTmpDir('remote'), 'site.git');
    await makeBareRepo(bare, { initialBranch: 'develop' });
    const deployRoot = await makeTmpDir('deploy');
    const logFile = path.join(await makeTmpDir('logs'), 'first.log');

    // The first person's pipeline: production at an approved commit, staging and develop one commit ahead of it.
    const first = await makeTmpDir('first');
    await writeFile(path.join(first, 'app.txt'), 'v1\n');
    await writeFile(path.join(first, 'cascade-sync-config.yaml'), pipelineConfig({ url: bare, signers: [alice.pub], logFile, deployRoot }));
    expect((await run(first, ['init'])).code).toBe(0);
    const c1 = await revParse(first, 'main');
    const a = await startController(first);
    controllers.push(a);
    await writeFile(path.join(first, 'app.txt'), 'v2\n');
    const c2 = await waitFor(async () => {
      const s = await revParse(first, 'staging');
      return s !== c1 && (await live(path.join(deployRoot, 'staging'))) === s ? s : undefined;
    }, { what: 'staging to promote and deploy the edit', timeoutMs: 60_000 });
    const approve = await run(first, ['approve', 'production', '--key', alice.file, '--expires', '2h']);
    expect(approve.code, approve.stderr).toBe(0);
    await waitFor(async () => (await live(path.join(deployRoot, 'production'))) === c2 || undefined, { what: 'production to deploy the approved commit', timeoutMs: 60_000 });
    // The approval's own commit passes the gates and reaches staging; production stays at the approved one.
    const c3 = await waitFor(async () => {
      const s = await revParse(first, 'staging');
      return s !== c2 && s === (await revParse(first, 'develop')) && (await live(path.join(deployRoot, 'staging'))) === s ? s : undefined;
    }, { what: 'staging to take the approval commit', timeoutMs: 60_000 });
    await waitFor(async () => ((await tryRevParse(bare, 'main')) === c2 && (await tryRevParse(bare, 'staging')) === c3 && (await tryRevParse(bare, 'develop')) === c3) || undefined, { what: 'everything pushed', timeoutMs: 30_000 });
    await waitFor(async () => (await envReport(first, 'production'))?.health?.phase === 'healthy' || undefined, { what: 'production healthy' });
    // The first controller stops, so that whatever changes from here on is the newcomer's doing.
    await a.stop();
    controllers = [];
    const remoteBefore = await refsOf(bare);
    const deployBefore = await treeSnapshot(deployRoot);
    expect(deployBefore['production/current']).toBe(`link releases/${c2}`);

    // The second person: git clone, init, start.
    const second = path.join(await makeTmpDir('second'), 'site');
    await cloneTo(bare, second);
    const init = await run(second, ['init']);
    expect(init.code, init.stderr).toBe(0);
    expect(init.stdout).toContain(`adopted from remote origin (${bare}): staging -> ${c3.slice(0, 7)}, main -> ${c2.slice(0, 7)} (already there: develop -> ${c3.slice(0, 7)})`);
    expect(init.stdout).not.toMatch(/created branch/);
    expect(await revParse(second, 'main')).toBe(c2);
    expect(await revParse(second, 'staging')).toBe(c3);
    expect(await statusPorcelain(second)).toEqual([]);
    const b = await startController(second);
    controllers.push(b);

    // Settled: every environment observed (what is live is what the branch holds), and the remote fetched twice since.
    await waitFor(async () => {
      const prod = await envReport(second, 'production');
      const staging = await envReport(second, 'staging');
      return (prod?.deployed === c2 && prod.head === c2 && staging?.deployed === c3 && staging.head === c3) || undefined;
    }, { what: 'the newcomer to observe both environments as they are' });
    // The first fetch may still be under way when the environments are first observed.
    const fetched = await waitFor(async () => (await statusJson(second)).remotes[0]?.lastFetch?.at as string | undefined, { what: 'a first fetch' });
    await waitFor(async () => {
      const st = await statusJson(second);
      return (st.remotes[0]?.lastFetch?.at > fetched && !st.remotes[0].error) || undefined;
    }, { what: 'a further clean fetch' });
    await waitFor(async () => (await statusJson(second)).remotes[0]?.lastFetch?.at > fetched && (await envReport(second, 'production'))?.health?.phase === 'healthy' || undefined, { what: 'production healthy in the newcomer\'s view' });

    expect(await refsOf(bare)).toBe(remoteBefore);
    expect(await treeSnapshot(deployRoot)).toEqual(deployBefore);
    expect(await revParse(second, 'main')).toBe(c2);
    // The newcomer deployed nothing: its history has no deploy, promotion or rollback.
    const history = (await readFile(path.join(second, '.git/cascade-sync/history.jsonl'), 'utf8').catch(() => '')).trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
    expect(history.filter((h) => ['deployed', 'promoted', 'rolled-back'].includes(h.event))).toEqual([]);
    // Production waits for an approval once the newcomer has seen staging healthy too (its own health checks).
    await waitFor(async () => /waiting for approval of/.test((await envReport(second, 'production'))?.next ?? '') || undefined, { what: 'production waiting for an approval in the newcomer\'s view', timeoutMs: 60_000 });
    await fsckStrict(second);
    expect(await git(bare, 'rev-parse', 'main')).toBe(c2);
  }, 240_000);
});
