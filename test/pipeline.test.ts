import { afterEach, describe, expect, it } from 'vitest';
import { appendFile, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fsckStrict, git, gitOk, makeBareRepo, revParse, tryRevParse } from './helpers/git.js';
import { startGitHttpServer, type GitHttpServer } from './helpers/git-http-server.js';
import { run, startController, type RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';
import { webhookReceiver, envReport, live, pipelineConfig, signedEntry, sshKey } from './helpers/pipeline.js';

let controllers: RunningController[] = [];
let closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of controllers) await c.stop();
  for (const close of closers) await close();
  controllers = [];
  closers = [];
  await cleanupTmpDirs();
});

async function httpRemote(): Promise<{ bare: string; url: string; server: GitHttpServer }> {
  const root = await makeTmpDir('remotes');
  const bare = path.join(root, 'site.git');
  await makeBareRepo(bare, { initialBranch: 'develop' });
  const server: GitHttpServer = await startGitHttpServer({ root });
  closers.push(() => server.close());
  return { bare, url: server.url('site.git'), server };
}

describe('the promotion pipeline, end to end', () => {
  it('edit -> develop -> gates -> staging deployed; production waits for a valid signed approval, then deploys; a failing release rolls back', async () => {
    const keys = await makeTmpDir('keys');
    const alice = await sshKey(keys, 'alice@example.com');
    const bob = await sshKey(keys, 'bob@example.com');
    const { bare, url } = await httpRemote();
    const hook = await webhookReceiver((close) => closers.push(close));
    const dir = await makeTmpDir('sandbox');
    const deployRoot = await makeTmpDir('deploy');
    const logFile = path.join(await makeTmpDir('logs'), 'cascade-sync.log');
    const opts = { url, signers: [alice.pub], hook: hook.url, logFile, deployRoot };
    await writeFile(path.join(dir, 'app.txt'), 'v1\n');
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), pipelineConfig(opts));
    const init = await run(dir, ['init']);
    expect(init.code, init.stderr).toBe(0);
    const c1 = await revParse(dir, 'main');
    controllers.push(await startController(dir));

    // Every environment deploys what its branch holds: the init commit, at first.
    await waitFor(async () => (await live(path.join(deployRoot, 'production'))) === c1 || undefined, { what: 'production to deploy the init commit' });

    // An edit flows to develop, passes the gates, and staging moves to it and deploys it.
    await writeFile(path.join(dir, 'app.txt'), 'v2\n');
    const c2 = await waitFor(async () => {
      const head = await revParse(dir, 'develop');
      return head !== c1 ? head : undefined;
    }, { what: 'the edit on develop' });
    await waitFor(async () => (await live(path.join(deployRoot, 'staging'))) === c2 || undefined, { what: 'staging to deploy the edit', timeoutMs: 60_000 }).catch(async (e: Error) => {
      throw new Error(`${e.message}\nstaging: ${JSON.stringify(await envReport(dir, 'staging'))}\n${(await readFile(logFile, 'utf8')).split('\n').filter((l) => l.includes('staging')).slice(-12).join('\n')}`);
    });
    expect(await revParse(dir, 'staging')).toBe(c2);
    expect(await readFile(path.join(deployRoot, 'staging/current/app.txt'), 'utf8')).toBe('v2\n');
    await waitFor(async () => (await tryRevParse(bare, 'staging')) === c2 || undefined, { what: 'staging pushed to the remote' });

    // Production waits for an approval, says so with the exact command, and notifies once.
    const waiting = await waitFor(async () => {
      const r = await envReport(dir, 'production');
      return r?.next?.startsWith('waiting for approval') ? r : undefined;
    }, { what: 'production to wait for approval' });
    expect(waiting.hint).toBe(`cascade-sync approve production ${c2} --key ~/.ssh/id_ed25519`);
    await waitFor(() => hook.events.find((e) => e.event === 'approval-needed' && e.message.includes(c2.slice(0, 7))), { what: 'the approval-needed webhook' });
    expect(await revParse(dir, 'main')).toBe(c1);

    // Bad entries, each rejected with its reason; a signers edit in the sandbox cannot approve itself.
    const future = new Date(Date.now() + 3_600_000).toISOString().replace(/\.\d+Z$/, 'Z');
    const past = new Date(Date.now() - 3_600_000).toISOString().replace(/\.\d+Z$/, 'Z');
    const unknownCommit = 'f'.repeat(40);
    const entries = [
      await signedEntry(alice.file, { environment: 'production', commit: c2, expires: future, signer: 'alice@example.com', signFor: { commit: c1 } }), // forged: signed for another commit
      await signedEntry(alice.file, { environment: 'production', commit: c2, expires: past, signer: 'alice@example.com' }), // expired
      await signedEntry(alice.file, { environment: 'production', commit: unknownCommit, expires: future, signer: 'alice@example.com' }), // wrong commit
      await signedEntry(bob.file, { environment: 'production', commit: c2, expires: future, signer: 'bob@example.com' }), // untrusted signer
    ];
    await writeFile(path.join(dir, 'cascade-sync-state.yaml'), `approvals:\n${entries.join('')}`);
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), pipelineConfig({ ...opts, signers: [alice.pub, bob.pub] }));
    const rejected = await waitFor(async () => {
      const r = await envReport(dir, 'production');
      const reasons = (r?.approvals?.rejected ?? []).map((x: { reason: string }) => x.reason).sort();
      return reasons.length === 4 ? reasons : undefined;
    }, { what: 'four rejected approvals in status', timeoutMs: 60_000 });
    expect(rejected).toEqual(['bad-signature', 'expired', 'unknown-signer', 'wrong-commit']);
    // The signers edit is committed on develop, and even promoted to staging; production trusts only its own branch.
    await waitFor(async () => (await revParse(dir, 'staging')) !== c2 || undefined, { what: 'the signers edit on staging', timeoutMs: 60_000 });
    const c2b = await revParse(dir, 'staging');
    const plan = await run(dir, ['plan']);
    expect(plan.stdout).toContain('unknown-signer');
    expect(await revParse(dir, 'main')).toBe(c1);

    // A valid approval made with the real ssh-keygen for the commit staging now holds: production moves to exactly it.
    await appendFile(path.join(dir, 'cascade-sync-state.yaml'), await signedEntry(alice.file, { environment: 'production', commit: c2b, expires: future, signer: 'alice@example.com' }));
    await waitFor(async () => (await live(path.join(deployRoot, 'production'))) === c2b || undefined, { what: 'production to deploy the approved commit', timeoutMs: 60_000 }).catch(async (e: Error) => {
      throw new Error(`${e.message}\nc2b ${c2b}\nproduction: ${JSON.stringify(await envReport(dir, 'production'))}\n${(await readFile(logFile, 'utf8')).split('\n').filter((l) => l.includes('production')).slice(-15).join('\n')}`);
    });
    expect(await revParse(dir, 'main')).toBe(c2b);
    await waitFor(async () => (await envReport(dir, 'production'))?.health?.phase === 'healthy' || undefined, { what: 'production healthy' });
    await waitFor(async () => (await tryRevParse(bare, 'main')) === c2b || undefined, { what: 'main pushed to the remote' });

    // A release that fails its health checks is rolled back: current and main go back, the failed commit stays reachable and is not promoted again.
    await writeFile(path.join(dir, 'app.txt'), 'v3 BROKEN\n');
    const c3 = await waitFor(async () => {
      const s = await revParse(dir, 'staging');
      return s !== c2b && (await gitOk(dir, 'show', `${s}:app.txt`)).stdout === 'v3 BROKEN\n' ? s : undefined;
    }, { what: 'the broken commit on staging', timeoutMs: 60_000 });
    const approve = await run(dir, ['approve', 'production', '--key', alice.file, '--expires', '1h']);
    expect(approve.code, approve.stderr).toBe(0);
    expect(approve.stdout).toContain(`commit: ${c3}`);
    await waitFor(() => hook.events.find((e) => e.event === 'rolled-back'), { what: 'the rolled-back webhook', timeoutMs: 40_000 }).catch(async (e) => {
      const log = (await readFile(logFile, 'utf8')).split('\n').filter((l) => l.includes('production')).slice(-15).join('\n');
      throw new Error(`${(e as Error).message}\nproduction: ${JSON.stringify(await envReport(dir, 'production'))}\nstaging: ${(await envReport(dir, 'staging'))?.next}\nc3 ${c3}\n${approve.stdout}\n${log}`);
    });
    expect(await live(path.join(deployRoot, 'production'))).toBe(c2b);
    expect(await revParse(dir, 'main')).toBe(c2b);
    expect(await revParse(dir, `refs/cascade-sync/failed/production/${c3}`)).toBe(c3);
    await waitFor(async () => (await tryRevParse(bare, 'main')) === c2b || undefined, { what: 'the rollback pushed to the remote' });
    // Several health rounds later it is still not promoted again. (Staging may have moved on to the
    // commit that holds the approval; production then waits for approval of that one instead.)
    const after = await waitFor(async () => {
      const r = await envReport(dir, 'production');
      // (The report of the rollback pass itself still shows what it saw before acting: wait for the next one.)
      return r?.failed?.includes(c3) && r.deployed === c2b ? r : undefined;
    }, { what: 'production to list the rolled-back commit as failed', timeoutMs: 20_000 }).catch(async (e) => {
      throw new Error(`${(e as Error).message}: ${JSON.stringify(await envReport(dir, 'production'))}`);
    });
    expect(after.deployed).toBe(c2b);
    // The rolled-back release proves healthy again over further rounds, and the failed commit stays out.
    await waitFor(async () => {
      const r = await envReport(dir, 'production');
      return r?.health?.phase === 'healthy' && r.deployed === c2b ? r : undefined;
    }, { what: 'the rolled-back release healthy again' });
    expect(await revParse(dir, 'main')).toBe(c2b);
    expect(await live(path.join(deployRoot, 'production'))).toBe(c2b);

    const history = (await readFile(path.join(dir, '.git/cascade-sync/history.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
    expect(history.filter((h) => h.event === 'promoted' && h.environment === 'production').map((h) => h.commit)).toEqual([c2b, c3]);
    expect(history.find((h) => h.event === 'promoted' && h.commit === c2b && h.environment === 'production').signers).toEqual(['alice@example.com']);
    expect(history.some((h) => h.event === 'rolled-back' && h.from === c3 && h.commit === c2b)).toBe(true);
    expect(history.filter((h) => h.event === 'approval-rejected').map((h) => h.result.split(':')[0]).sort()).toEqual(['bad-signature', 'expired', 'unknown-signer', 'wrong-commit']);
    expect(hook.unverified).toBe(0);
    expect(hook.events.map((e) => e.event)).toEqual(expect.arrayContaining(['approval-needed', 'promoted', 'rolled-back', 'health-degraded']));
    const st = await run(dir, ['status']);
    expect(st.stdout).toContain('production (approval from staging');
    expect(st.stdout).toContain('rolled-back');
    await fsckStrict(dir);
    await fsckStrict(bare);
  }, 180_000);

  it('sends every event as a signed webhook: gate-failed, health-degraded then health-recovered, push-failing, config-invalid', async () => {
    const { url, server } = await httpRemote();
    const hook = await webhookReceiver((close) => closers.push(close));
    const dir = await makeTmpDir('sandbox');
    const deployRoot = await makeTmpDir('deploy');
    const logFile = path.join(await makeTmpDir('logs'), 'cascade-sync.log');
    await writeFile(path.join(dir, 'app.txt'), 'v1\n');
    // The check fails while a flag file outside the release exists (the release itself is kept intact by selfHeal).
    const brokenFlag = path.join(deployRoot, 'production-is-broken');
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), pipelineConfig({ url, signers: [], hook: hook.url, logFile, deployRoot, productionCheck: `test ! -e ${brokenFlag}` }));
    expect((await run(dir, ['init'])).code).toBe(0);
    controllers.push(await startController(dir));
    const event = (name: string) => waitFor(() => hook.events.find((e) => e.event === name), { what: `the ${name} webhook`, timeoutMs: 60_000 });
    await waitFor(async () => (await envReport(dir, 'production'))?.health?.phase === 'healthy' || undefined, { what: 'production healthy' });
    // The first push of the run reports its progress; not a TTY here, so as one summary line.
    await waitFor(() => /^pushing develop to origin: \d+ objects in \S+/m.test(controllers[0]!.stdout.text()) || undefined, { what: 'the first push summary line' });
    expect(controllers[0]!.stdout.text()).toMatch(/^scanning the sandbox: \d+ changed in \S+/m);
    expect(controllers[0]!.stdout.text().match(/^scanning the sandbox:/gm)).toHaveLength(1);

    await writeFile(path.join(dir, 'app.txt'), 'FAIL\n');
    expect((await event('gate-failed')).message).toContain('no-fail');

    // Production breaks (no earlier healthy release to roll back to), then is repaired.
    await writeFile(brokenFlag, '');
    expect((await event('health-degraded')).message).toContain('not-broken');
    await rm(brokenFlag);
    await event('health-recovered');

    await server.setMode('down-503');
    await writeFile(path.join(dir, 'more.txt'), 'while the remote is down\n');
    expect((await event('push-failing')).message).toContain('remote:origin');
    await server.setMode('ok');

    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), 'version: [\n');
    await event('config-invalid');
    expect(hook.unverified).toBe(0);
  }, 120_000);

  it('a failing gate blocks staging and says which gate and why; a deny window holds promotion once it is in force on staging, the commit that would lift it included', async () => {
    const dir = await makeTmpDir('sandbox');
    const deployRoot = await makeTmpDir('deploy');
    const logFile = path.join(await makeTmpDir('logs'), 'cascade-sync.log');
    await writeFile(path.join(dir, 'app.txt'), 'v1\n');
    const base = { signers: [], logFile, deployRoot };
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), pipelineConfig(base));
    expect((await run(dir, ['init'])).code).toBe(0);
    const c1 = await revParse(dir, 'staging');

    await writeFile(path.join(dir, 'app.txt'), 'FAIL\n');
    await git(dir, 'add', '-A');
    await git(dir, 'commit', '-qm', 'a failing change');
    const bad = await revParse(dir, 'develop');
    const deploy = await run(dir, ['deploy-staging']);
    expect(deploy.code).toBe(1);
    expect(deploy.stdout).toContain('gate no-fail failed');
    expect(await revParse(dir, 'staging')).toBe(c1);

    // The window is staging's policy: committed on develop it is only pending; the commit carrying it is promoted under the policy in force.
    await writeFile(path.join(dir, 'app.txt'), 'fixed\n');
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), pipelineConfig({ ...base, stagingExtra: '    windows: [ { kind: deny, schedule: "* * * * *", duration: 2h, timezone: UTC } ]' }));
    await git(dir, 'add', '-A');
    await git(dir, 'commit', '-qm', 'fixed, and a deny window');
    const fixed = await revParse(dir, 'develop');
    const before = await run(dir, ['plan']);
    expect(before.stdout).toContain('pending policy change: windows deny "* * * * *" for 120m (UTC) (sandbox) vs none (in force on staging); takes effect once promoted');
    const promoted = await run(dir, ['deploy-staging']);
    expect(promoted.code, promoted.stdout + promoted.stderr).toBe(0);
    expect(await revParse(dir, 'staging')).toBe(fixed);

    // Now in force: the next commit waits, and so does the one that removes the window.
    await writeFile(path.join(dir, 'app.txt'), 'v2\n');
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), pipelineConfig(base));
    await git(dir, 'commit', '-qam', 'v2, and no window');
    const held = await run(dir, ['deploy-staging']);
    expect(held.code).toBe(1);
    expect(held.stdout).toContain('waiting for a window');
    expect(held.stdout).toContain('pending policy change: windows none (sandbox) vs deny');
    expect(await revParse(dir, 'staging')).toBe(fixed);
    expect(await live(path.join(deployRoot, 'staging'))).toBe(fixed);
    expect(bad).not.toBe(fixed);
  }, 120_000);

  it('a diverged staging gets a merge in which the candidate wins and nothing is lost; `health` exits 0 only when every check passes', async () => {
    const dir = await makeTmpDir('sandbox');
    const deployRoot = await makeTmpDir('deploy');
    const logFile = path.join(await makeTmpDir('logs'), 'cascade-sync.log');
    await writeFile(path.join(dir, 'app.txt'), 'v1\n');
    const brokenFlag = path.join(deployRoot, 'production-is-broken');
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), pipelineConfig({ signers: [], logFile, deployRoot, productionCheck: `test ! -e ${brokenFlag}` }));
    expect((await run(dir, ['init'])).code).toBe(0);
    // Someone committed straight onto staging (a hotfix file, and app.txt changed too).
    await git(dir, 'checkout', '-q', 'staging');
    await writeFile(path.join(dir, 'hotfix.txt'), 'hot\n');
    await writeFile(path.join(dir, 'app.txt'), 'staging version\n');
    await git(dir, 'add', '-A');
    await git(dir, 'commit', '-qm', 'hotfix on staging');
    const hotfix = await revParse(dir, 'staging');
    await git(dir, 'checkout', '-q', 'develop');
    await writeFile(path.join(dir, 'app.txt'), 'v2\n');
    await git(dir, 'commit', '-qam', 'v2');
    const candidate = await revParse(dir, 'develop');
    const r = await run(dir, ['deploy-staging']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const merged = await revParse(dir, 'staging');
    expect((await git(dir, 'rev-list', '--parents', '-n', '1', merged)).trim().split(' ').slice(1)).toEqual([hotfix, candidate]);
    expect((await gitOk(dir, 'show', `${merged}:app.txt`)).stdout).toBe('v2\n');
    expect((await gitOk(dir, 'show', `${merged}:hotfix.txt`)).stdout).toBe('hot\n');
    expect(await readFile(path.join(deployRoot, 'staging/current/hotfix.txt'), 'utf8')).toBe('hot\n');

    // health: no controller running -> exit 1; the production check fails once production is broken.
    const h = await run(dir, ['health', '--json']);
    expect(h.code).toBe(1);
    const checks = JSON.parse(h.stdout).checks as { name: string; ok: boolean }[];
    expect(checks.find((c) => c.name === 'controller')?.ok).toBe(false);
    expect(checks.filter((c) => c.name !== 'controller').every((c) => c.ok)).toBe(true);
    expect(checks.map((c) => c.name)).toEqual(expect.arrayContaining(['config', 'repository develop', 'repository staging', 'repository main', 'production/not-broken']));
    controllers.push(await startController(dir));
    const ok = await run(dir, ['health']);
    expect(ok.code, ok.stdout).toBe(0);
    await writeFile(brokenFlag, '');
    const broken = await run(dir, ['health']);
    expect(broken.code).toBe(1);
    expect(broken.stdout).toMatch(/FAIL production\/not-broken/);
  }, 120_000);
});
