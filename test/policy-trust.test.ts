import { afterEach, describe, expect, it } from 'vitest';
import { appendFile, readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { cloneTo, git, gitOk, makeBareRepo, revParse, tryRevParse } from './helpers/git.js';
import { run, type RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';
import {
  approvalPolicy, envReport, live, passControllerTime, pipelineConfig, signedEntry, sshKey, startDeployedPipeline,
  type AdvancingClock, type PipelineOptions,
} from './helpers/pipeline.js';

let controllers: RunningController[] = [];
afterEach(async () => {
  for (const c of controllers) await c.stop();
  controllers = [];
  await cleanupTmpDirs();
});

/** The three sandbox edits of issue 12 that once switched production's approval off. */
const EDITS: { name: string; policy: (signers: string[]) => string[]; pending: string }[] = [
  { name: 'promotion: auto', policy: () => ['    from: staging', '    promotion: auto'], pending: 'pending policy change: promotion auto (sandbox) vs approval (in force on main); takes effect once promoted' },
  { name: 'from: develop', policy: (signers) => ['    from: develop', ...approvalPolicy(signers).slice(1)], pending: 'pending policy change: from develop (sandbox) vs staging (in force on main); takes effect once promoted' },
  { name: 'approvals: { signers: [] }, promotion: approval removed', policy: () => ['    from: staging', '    approvals: { signers: [] }'], pending: 'pending policy change: promotion auto (sandbox) vs approval (in force on main); takes effect once promoted' },
];

interface Pipeline {
  dir: string;
  bare: string;
  deployRoot: string;
  markers: string;
  logFile: string;
  clock: AdvancingClock;
  opts: PipelineOptions;
  alice: { file: string; pub: string };
  /** The init commit: where main starts. */
  c1: string;
}

/** A sandbox with staging (auto) and production (approval, alice the one signer on main), a local bare remote, and a running controller on an advancing clock. */
async function pipeline(): Promise<Pipeline> {
  const keys = await makeTmpDir('keys');
  const alice = await sshKey(keys, 'alice@example.com');
  const remotes = await makeTmpDir('remotes');
  const bare = path.join(remotes, 'site.git');
  await makeBareRepo(bare, { initialBranch: 'develop' });
  const dir = await makeTmpDir('sandbox');
  const deployRoot = await makeTmpDir('deploy');
  const markers = await makeTmpDir('markers');
  const logFile = path.join(await makeTmpDir('logs'), 'cascade-sync.log');
  const opts: PipelineOptions = { url: bare, signers: [alice.pub], logFile, deployRoot };
  const { c1, clock } = await startDeployedPipeline({ dir, config: pipelineConfig(opts), deployRoot, track: (c) => controllers.push(c) });
  await waitFor(async () => (await tryRevParse(bare, 'main')) === c1 || undefined, { what: 'main pushed to the remote' });
  return { dir, bare, deployRoot, markers, logFile, clock, opts, alice, c1 };
}

/** The config with production's policy replaced, and hooks and a health check that leave marker files. */
function edited(p: Pipeline, policy: string[] | undefined, tag: string): string {
  return pipelineConfig({
    ...p.opts,
    ...(policy ? { productionPolicy: policy } : {}),
    productionHooks: { pre: `touch ${path.join(p.markers, `${tag}-hook-pre`)}`, post: `touch ${path.join(p.markers, `${tag}-hook-post`)}` },
    productionHealthExtra: `touch ${path.join(p.markers, `${tag}-health`)}`,
  });
}

/** Waits until staging holds a commit whose committed config is `config` (the edit went through develop and the gates). */
async function stagingHas(p: Pipeline, config: string): Promise<string> {
  return waitFor(async () => {
    const s = await revParse(p.dir, 'staging');
    const shown = await gitOk(p.dir, 'show', `${s}:cascade-sync-config.yaml`);
    return shown.stdout === config && (await live(path.join(p.deployRoot, 'staging'))) === s ? s : undefined;
  }, { what: 'staging to hold and deploy the edit', timeoutMs: 60_000 }).catch(async (e: Error) => {
    throw new Error(`${e.message}\nstaging: ${JSON.stringify(await envReport(p.dir, 'staging'))}`);
  });
}

/** A minute of controller time with production passes all along; then production is exactly where it was. */
async function productionHeld(p: Pipeline, edit: { pending: string }, main: string): Promise<void> {
  await passControllerTime(p.dir, p.clock, 'env:production');
  expect(await revParse(p.dir, 'main')).toBe(main);
  expect(await tryRevParse(p.bare, 'main')).toBe(main);
  expect(await live(path.join(p.deployRoot, 'production'))).toBe(main);
  const report = await envReport(p.dir, 'production');
  expect(report.promotion).toBe('approval');
  expect(report.from).toBe('staging');
  expect(report.next).toMatch(/^waiting for approval of /);
  expect(report.pendingPolicy.map((d: { message: string }) => d.message)).toContain(edit.pending);
  const status = await run(p.dir, ['status']);
  expect(status.stdout).toContain(edit.pending);
  const plan = await run(p.dir, ['plan']);
  expect(plan.stdout).toContain(edit.pending);
  expect(plan.stdout).not.toMatch(/would promote \S+ to production/);
}

async function markersWritten(p: Pipeline): Promise<string[]> {
  return (await readdir(p.markers)).sort();
}

async function productionHistory(p: Pipeline, event: string): Promise<string[]> {
  const lines = (await readFile(path.join(p.dir, '.git/cascade-sync/history.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
  return lines.filter((h) => h.environment === 'production' && h.event === event).map((h) => h.commit);
}

describe('production\'s policy is the one committed on main (issue 12, part 1)', () => {
  it('each of the three sandbox edits leaves main where it was for a minute of controller time while staging moves; their hooks and health checks never run for production', async () => {
    const p = await pipeline();
    let previous = p.c1;
    for (const [i, edit] of EDITS.entries()) {
      const config = edited(p, edit.policy([p.alice.pub]), `sandbox-${i}`);
      await writeFile(path.join(p.dir, 'cascade-sync-config.yaml'), config);
      const moved = await stagingHas(p, config);
      expect(moved).not.toBe(previous);
      previous = moved;
      await productionHeld(p, edit, p.c1);
    }
    expect(await productionHistory(p, 'promoted')).toEqual([]);
    expect(await productionHistory(p, 'deployed')).toEqual([p.c1]);
    expect(await markersWritten(p)).toEqual([]);
  }, 240_000);

  it('each of the three edits pushed to develop from a native clone of the remote leaves main where it was while staging moves', async () => {
    const p = await pipeline();
    const clone = path.join(await makeTmpDir('clone'), 'site');
    await cloneTo(p.bare, clone, '--branch', 'develop');
    let previous = p.c1;
    for (const [i, edit] of EDITS.entries()) {
      await git(clone, 'fetch', '-q', 'origin');
      await git(clone, 'reset', '-q', '--hard', 'origin/develop');
      const config = edited(p, edit.policy([p.alice.pub]), `pushed-${i}`);
      await writeFile(path.join(clone, 'cascade-sync-config.yaml'), config);
      await git(clone, 'commit', '-qam', `production: ${edit.name}`);
      await git(clone, 'push', '-q', 'origin', 'develop');
      // The controller fetches it, merges it into the sandbox (so the sandbox's config is the edit), and staging moves to it.
      await waitFor(async () => (await readFile(path.join(p.dir, 'cascade-sync-config.yaml'), 'utf8')) === config || undefined, { what: 'the pushed config in the sandbox', timeoutMs: 30_000 });
      const moved = await stagingHas(p, config);
      expect(moved).not.toBe(previous);
      previous = moved;
      await productionHeld(p, edit, p.c1);
    }
    expect(await productionHistory(p, 'promoted')).toEqual([]);
    expect(await markersWritten(p)).toEqual([]);
  }, 240_000);

  it('a policy change approved under the policy in force and promoted then takes effect; an approved release runs its own hooks, never the sandbox\'s', async () => {
    const p = await pipeline();
    const future = new Date(Date.now() + 3_600_000).toISOString().replace(/\.\d+Z$/, 'Z');

    // v2 reaches staging. Then an unapproved edit adds production hooks and a health check that leave markers.
    await writeFile(path.join(p.dir, 'app.txt'), 'v2\n');
    const c2 = await waitFor(async () => {
      const s = await revParse(p.dir, 'staging');
      return s !== p.c1 && (await gitOk(p.dir, 'show', `${s}:app.txt`)).stdout === 'v2\n' ? s : undefined;
    }, { what: 'v2 on staging', timeoutMs: 60_000 });
    const hooked = edited(p, undefined, 'unapproved');
    await writeFile(path.join(p.dir, 'cascade-sync-config.yaml'), hooked);
    await stagingHas(p, hooked);

    // c2 (before the edit) is approved: production deploys it with c2's own hooks and health checks (none that leave markers).
    await writeFile(path.join(p.dir, 'cascade-sync-state.yaml'), `approvals:\n${await signedEntry(p.alice.file, { environment: 'production', commit: c2, expires: future, signer: 'alice@example.com' })}`);
    await waitFor(async () => (await live(path.join(p.deployRoot, 'production'))) === c2 || undefined, { what: 'production to deploy the approved c2', timeoutMs: 60_000 });
    await waitFor(async () => (await envReport(p.dir, 'production'))?.health?.phase === 'healthy' || undefined, { what: 'c2 healthy' });
    await passControllerTime(p.dir, p.clock, 'env:production', 30_000);
    expect(await markersWritten(p)).toEqual([]);

    // The policy change: production auto, with hooks and a health check of its own. Pending until approved and promoted.
    const auto = edited(p, ['    from: staging', '    promotion: auto'], 'approved');
    await writeFile(path.join(p.dir, 'cascade-sync-config.yaml'), auto);
    const change = await stagingHas(p, auto);
    await productionHeld(p, EDITS[0]!, c2);
    expect(await markersWritten(p)).toEqual([]);
    await appendFile(path.join(p.dir, 'cascade-sync-state.yaml'), await signedEntry(p.alice.file, { environment: 'production', commit: change, expires: future, signer: 'alice@example.com' }));
    await waitFor(async () => (await live(path.join(p.deployRoot, 'production'))) === change || undefined, { what: 'production to deploy the approved policy change', timeoutMs: 60_000 }).catch(async (e: Error) => {
      throw new Error(`${e.message}\nproduction: ${JSON.stringify(await envReport(p.dir, 'production'))}`);
    });
    // Its own hooks and health checks ran (the approved content), and the policy is now in force.
    await waitFor(async () => (await markersWritten(p)).includes('approved-health') || undefined, { what: 'the approved release\'s own health check' });
    expect(await markersWritten(p)).toEqual(['approved-health', 'approved-hook-post', 'approved-hook-pre']);
    await waitFor(async () => {
      const r = await envReport(p.dir, 'production');
      return r?.promotion === 'auto' && !r.pendingPolicy ? r : undefined;
    }, { what: 'production to run on promotion auto, nothing pending' });

    // Now auto: the next staging commit reaches main with no approval.
    await writeFile(path.join(p.dir, 'app.txt'), 'v3\n');
    const c3 = await waitFor(async () => {
      const s = await revParse(p.dir, 'staging');
      return (await gitOk(p.dir, 'show', `${s}:app.txt`)).stdout === 'v3\n' ? s : undefined;
    }, { what: 'v3 on staging', timeoutMs: 60_000 });
    await waitFor(async () => (await revParse(p.dir, 'main')) === c3 || undefined, { what: 'main to follow staging on its own', timeoutMs: 60_000 });
    // The branch moves a moment before the promotion's history entry is appended.
    const promoted = await waitFor(async () => {
      const h = await productionHistory(p, 'promoted');
      return h.includes(c3) ? h : undefined;
    }, { what: 'the promotion of v3 in production\'s history', timeoutMs: 10_000 });
    expect(promoted.slice(0, 2)).toEqual([c2, change]);
    expect((await markersWritten(p)).filter((m) => !m.startsWith('approved-'))).toEqual([]);
  }, 240_000);

  it('an edit that points production at another branch (one whose config it wrote) is not followed: the branch is pinned', async () => {
    const p = await pipeline();
    // Pinned on the first pass, in the sandbox's .git/config (which no push can change).
    await waitFor(async () => (await gitOk(p.dir, 'config', 'cascade-sync.production.branch')).stdout.trim() === 'main' || undefined, { what: 'production\'s branch pinned' });
    const clone = path.join(await makeTmpDir('clone'), 'site');
    await cloneTo(p.bare, clone, '--branch', 'develop');
    // One push: production on develop itself, automatic, the sandbox moved aside so the config stays valid.
    const hijack = pipelineConfig({ ...p.opts, sandbox: '{ branch: elsewhere, debounce: 300ms, batchWindow: 2s }', productionPolicy: ['    from: staging', '    promotion: auto'] })
      .replace('  production:\n    branch: main', '  production:\n    branch: develop')
      .replace('    branch: staging\n    from: develop', '    branch: staging\n    from: elsewhere');
    await writeFile(path.join(clone, 'cascade-sync-config.yaml'), hijack);
    await writeFile(path.join(clone, 'app.txt'), 'hijacked\n');
    await git(clone, 'commit', '-qam', 'production: deploy develop');
    await git(clone, 'push', '-q', 'origin', 'develop');
    await waitFor(async () => (await readFile(path.join(p.dir, 'cascade-sync-config.yaml'), 'utf8')) === hijack || undefined, { what: 'the pushed config in the sandbox', timeoutMs: 30_000 });
    const report = await waitFor(async () => {
      const r = await envReport(p.dir, 'production');
      return r?.error?.reason === 'EnvironmentBranchChanged' ? r : undefined;
    }, { what: 'production to stall with EnvironmentBranchChanged', timeoutMs: 30_000 }).catch(async (e: Error) => {
      throw new Error(`${e.message}: ${JSON.stringify(await envReport(p.dir, 'production'))}`);
    });
    // Stalled: probed again each minute of controller time; two minutes pass, and nothing moves.
    await passControllerTime(p.dir, p.clock, 'env:production', 120_000, 60_000);
    expect(report.error?.hint).toContain('git config cascade-sync.production.branch develop');
    expect(await live(path.join(p.deployRoot, 'production'))).toBe(p.c1);
    expect(await readFile(path.join(p.deployRoot, 'production/current/app.txt'), 'utf8')).toBe('v1\n');
    expect(await revParse(p.dir, 'main')).toBe(p.c1);
    expect(await productionHistory(p, 'deployed')).toEqual([p.c1]);
  }, 120_000);
});
