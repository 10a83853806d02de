import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { cloneTo, fsckStrict, git, makeBareRepo, revParse, tryRevParse } from './helpers/git.js';
import { buildDist, cli, killStartedProcesses, startControllerProcess, type CliProcess } from './helpers/process.js';
import { testEnv } from './helpers/sandbox.js';
import { envReport, live, pipelineConfig, sshKey } from './helpers/pipeline.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

// The processes run the compiled code: make sure a stale dist is not tested.
beforeAll(buildDist, 180_000);

/** The team's shared log file of the test under way (kept on failure when LEASE_TEST_LOG names a file). */
let teamLog: string | undefined;

afterEach(async () => {
  if (process.env.LEASE_TEST_LOG && teamLog) await writeFile(process.env.LEASE_TEST_LOG, await readFile(teamLog, 'utf8').catch(() => ''));
  teamLog = undefined;
  killStartedProcesses();
  await cleanupTmpDirs();
});

/** The lease term of the test config: short, so that a handover after kill -9 is quick. */
const TTL_MS = 9_000;

/** The CLI run to its end as a process on machine `host` (CASCADE_SYNC_HOSTNAME). */
function cliOn(cwd: string, host: string, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return cli(cwd, args, testEnv({ CASCADE_SYNC_HOSTNAME: host }));
}

/** `cascade-sync start` as a real process on machine `host` (CASCADE_SYNC_HOSTNAME), so it can be killed with SIGKILL. */
function startOn(dir: string, host: string): Promise<CliProcess> {
  return startControllerProcess(dir, { env: testEnv({ CASCADE_SYNC_HOSTNAME: host }), what: `the controller on ${host}` });
}

type HistoryEntry = { event: string; environment: string; commit: string; at: string };
async function history(dir: string): Promise<HistoryEntry[]> {
  const text = await readFile(path.join(dir, '.git/cascade-sync/history.jsonl'), 'utf8').catch(() => '');
  return text.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as HistoryEntry);
}
const acts = (h: HistoryEntry[], env: string, since = '') => h.filter((e) => e.environment === env && e.at >= since && ['promoted', 'deployed', 'rolled-back'].includes(e.event));

/** The remote's lease of `env`, as native git reads it. */
async function remoteLease(bare: string, env: string): Promise<{ holder: { host: string; pid: number }; released?: boolean } | undefined> {
  const oid = await tryRevParse(bare, `refs/cascade-sync/lease/${env}`);
  if (!oid) return undefined;
  return JSON.parse(await git(bare, 'show', `${oid}:lease.json`));
}

describe('a team of three controllers on one remote: one promoter per environment', () => {
  it('only the lease holder promotes and deploys, each approved commit once; an approval made in any sandbox reaches it; a machine not in runsOn never holds a lease; kill -9 of the holder hands the lease over after its term', async () => {
    const keys = await makeTmpDir('keys');
    const alice = await sshKey(keys, 'alice@example.com');
    const bare = path.join(await makeTmpDir('remote'), 'site.git');
    await makeBareRepo(bare, { initialBranch: 'develop' });
    const logDir = await makeTmpDir('logs');
    // Each machine deploys into its own folder beside its sandbox (the config's relative path).
    teamLog = path.join(logDir, 'team.log');
    const config = pipelineConfig({ url: bare, signers: [alice.pub], logFile: teamLog, deployRoot: '../deploy' })
      .replace('intervals: { fetch: 1s, health: 1s, rescan: 10m }', `intervals: { fetch: 1s, health: 1s, rescan: 10m, lease: ${TTL_MS / 1000}s }`)
      .replace('    branch: staging\n', '    branch: staging\n    runsOn: [host-a, host-b]\n')
      .replace('    branch: main\n', '    branch: main\n    runsOn: [host-a, host-b]\n');
    expect(config).toContain('runsOn: [host-a, host-b]');

    const hosts = ['host-a', 'host-b', 'host-c'] as const;
    const dirs: Record<string, string> = {};
    dirs['host-a'] = path.join(await makeTmpDir('machine-a'), 'site');
    await mkdir(dirs['host-a'], { recursive: true });
    await writeFile(path.join(dirs['host-a'], 'cascade-sync-config.yaml'), config);
    await writeFile(path.join(dirs['host-a'], 'app.txt'), 'v1\n');
    expect((await cliOn(dirs['host-a'], 'host-a', 'init')).code).toBe(0);
    const first = await cliOn(dirs['host-a'], 'host-a', 'reconcile');
    expect(first.code, first.stderr + first.stdout).toBe(0);
    // The one-shot pass let go of the leases it took.
    expect((await remoteLease(bare, 'staging'))?.released).toBe(true);
    for (const host of ['host-b', 'host-c']) {
      dirs[host] = path.join(await makeTmpDir(`machine-${host.slice(-1)}`), 'site');
      await cloneTo(bare, dirs[host]!);
      const init = await cliOn(dirs[host]!, host, 'init');
      expect(init.code, init.stderr).toBe(0);
    }

    // What the controllers do from here on is counted (host-a's one-shot pass above deployed the first commit on its machine).
    const since = new Date().toISOString();
    const running: Record<string, CliProcess> = {};
    for (const host of hosts) running[host] = await startOn(dirs[host]!, host);

    // Each environment's lease goes to exactly one of the machines runsOn names; host-c follows.
    const holderOf = async (env: string) => waitFor(async () => {
      const states = await Promise.all(hosts.map(async (h) => (await envReport(dirs[h]!, env))?.lease?.state));
      const held = hosts.filter((_, i) => states[i] === 'held');
      return held.length === 1 && states.every((s) => s === 'held' || s === 'other' || s === 'excluded') ? held[0] : undefined;
    }, { what: `one holder of ${env}'s lease, the others following`, timeoutMs: 60_000 });
    const stagingHolder = await holderOf('staging');
    const productionHolder = await holderOf('production');
    expect(['host-a', 'host-b']).toContain(stagingHolder);
    expect(['host-a', 'host-b']).toContain(productionHolder);
    const cView = await waitFor(async () => {
      const l = (await envReport(dirs['host-c']!, 'staging'))?.lease;
      return l?.holder ? l : undefined;
    }, { what: 'host-c to see who holds staging\'s lease' });
    expect(cView).toMatchObject({ state: 'excluded', me: 'host-c', holder: { host: stagingHolder } });
    expect((await remoteLease(bare, 'staging'))?.holder.host).toBe(stagingHolder);

    // An edit on the machine that may not deploy: it reaches develop, and the holder promotes and deploys it.
    await writeFile(path.join(dirs['host-c']!, 'app.txt'), 'v2\n');
    const c2 = await waitFor(async () => {
      const dev = await tryRevParse(bare, 'develop');
      const staged = await tryRevParse(bare, 'staging');
      return dev && staged === dev && (await git(bare, 'show', `${dev}:app.txt`)) === 'v2' && (await live(path.join(dirs[stagingHolder]!, '..', 'deploy', 'staging'))) === dev ? dev : undefined;
    }, { what: 'the holder to promote and deploy the edit made on host-c', timeoutMs: 90_000 });

    // The approval is made (and committed) on host-c; the holder of production acts on it.
    const approve = await cliOn(dirs['host-c']!, 'host-c', 'approve', 'production', c2, '--key', alice.file, '--expires', '2h');
    expect(approve.code, approve.stderr).toBe(0);
    const approvedAt = Date.now();
    await waitFor(async () => (await tryRevParse(bare, 'main')) === c2 && (await live(path.join(dirs[productionHolder]!, '..', 'deploy', 'production'))) === c2 || undefined,
      { what: 'production to deploy the commit approved on host-c', timeoutMs: 90_000 });
    const approvalLatencyMs = Date.now() - approvedAt;
    // The approval's own commit goes through staging too; let it settle before counting.
    await waitFor(async () => {
      const dev = await tryRevParse(bare, 'develop');
      return dev && (await tryRevParse(bare, 'staging')) === dev && (await live(path.join(dirs[stagingHolder]!, '..', 'deploy', 'staging'))) === dev || undefined;
    }, { what: 'staging to take the approval commit', timeoutMs: 90_000 });

    // The followers show the environment as the holder left it.
    for (const h of hosts.filter((x) => x !== productionHolder)) {
      await waitFor(async () => (await envReport(dirs[h]!, 'production'))?.deployed === c2 || undefined, { what: `host ${h} to show production's live release as the holder left it` });
    }
    const status = await cliOn(dirs['host-c']!, 'host-c', 'status');
    expect(status.stdout).toMatch(new RegExp(`lease: held by \\S+@${productionHolder} \\(pid \\d+, sandbox [0-9a-f]{8}\\) until \\S+; this machine \\(host-c\\) is not in runsOn`));

    // Exactly one controller promoted and deployed each environment; each commit was deployed once.
    for (const env of ['staging', 'production']) {
      const holder = env === 'staging' ? stagingHolder : productionHolder;
      for (const h of hosts) {
        const mine = acts(await history(dirs[h]!), env, since);
        if (h === holder) expect(mine.length, `${h} ${env}`).toBeGreaterThan(0);
        else expect(mine, `${h} acted on ${env}`).toEqual([]);
      }
      const deployed = (await history(dirs[holder]!)).filter((e) => e.environment === env && e.event === 'deployed').map((e) => e.commit);
      expect(new Set(deployed).size, `${env} deployed a commit twice: ${deployed.join(' ')}`).toBe(deployed.length);
    }
    // The approved commit was deployed once in the whole team (the holder also deployed what main held when it took the lease, on its machine).
    const everywhere = (await Promise.all(hosts.map((h) => history(dirs[h]!)))).flat();
    expect(everywhere.filter((e) => e.environment === 'production' && e.event === 'deployed' && e.commit === c2)).toHaveLength(1);
    expect(everywhere.filter((e) => e.environment === 'production' && e.event === 'promoted').map((e) => e.commit)).toEqual([c2]);

    // kill -9 of staging's holder: the other machine of runsOn takes the lease over once its term has passed unchanged, host-c never.
    const victim = stagingHolder;
    const heir = victim === 'host-a' ? 'host-b' : 'host-a';
    const lastLease = await git(bare, 'rev-parse', 'refs/cascade-sync/lease/staging');
    running[victim]!.child.kill('SIGKILL');
    const killedAt = Date.now();
    await waitFor(async () => (await remoteLease(bare, 'staging'))?.holder.host === heir || undefined, { what: `${heir} to take staging's lease over`, timeoutMs: 60_000 });
    const handoverMs = Date.now() - killedAt;
    // Not before the term: a renewal up to a third of the term before the kill leaves at least two thirds of it.
    expect(handoverMs).toBeGreaterThanOrEqual((TTL_MS * 2) / 3 - 500);
    expect(await git(bare, 'rev-parse', 'refs/cascade-sync/lease/staging')).not.toBe(lastLease);
    await waitFor(async () => (await envReport(dirs[heir]!, 'staging'))?.lease?.state === 'held' || undefined, { what: `${heir} to report staging's lease as held` });

    // The heir acts: a new edit (from host-c again) is promoted and deployed on its machine.
    await writeFile(path.join(dirs['host-c']!, 'app.txt'), 'v3\n');
    const c3 = await waitFor(async () => {
      const dev = await tryRevParse(bare, 'develop');
      return dev && (await git(bare, 'show', `${dev}:app.txt`)) === 'v3' && (await tryRevParse(bare, 'staging')) === dev && (await live(path.join(dirs[heir]!, '..', 'deploy', 'staging'))) === dev ? dev : undefined;
    }, { what: `${heir} to promote and deploy the next edit`, timeoutMs: 90_000 });
    expect(acts(await history(dirs[heir]!), 'staging').some((e) => e.event === 'promoted' && e.commit === c3)).toBe(true);
    // host-c never acted on anything.
    expect(acts(await history(dirs['host-c']!), 'staging')).toEqual([]);
    expect(acts(await history(dirs['host-c']!), 'production')).toEqual([]);
    await waitFor(async () => (await revParse(dirs['host-c']!, 'staging')) === c3 || undefined, { what: 'host-c to follow staging' });
    await fsckStrict(bare);
    console.log(`approval made on host-c acted on after ${approvalLatencyMs} ms; staging's lease handed over ${handoverMs} ms after kill -9 (term ${TTL_MS} ms)`);
  }, 420_000);
});
