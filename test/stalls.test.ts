/**
 * No stall outlives its cause (issue 15), with a real controller on real remotes: a reconciler that
 * failed is looked at again when a new local commit comes (not only when its backoff runs out), and an
 * environment branch a person must look at never holds up the sandbox branch's sync. retry.max is 5
 * minutes and the fetch interval 5 minutes, as a real team might have them: anything left to those
 * timers would miss the deadlines below by minutes.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { chmod, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { cloneTo, commitFiles, git, makeBareRepo, tryRevParse } from './helpers/git.js';
import { run, startController, type RunningController } from './helpers/sandbox.js';
import { statusJson } from './helpers/pipeline.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

let controllers: RunningController[] = [];
afterEach(async () => {
  for (const c of controllers) await c.stop();
  controllers = [];
  await cleanupTmpDirs();
});

function config(o: { remotes: { name: string; url: string }[]; logFile: string; environments?: boolean }): string {
  return [
    'version: 1',
    'sandbox: { debounce: 300ms, batchWindow: 2s }',
    'remotes:',
    ...o.remotes.map((r) => `  - { name: ${r.name}, url: ${JSON.stringify(r.url)} }`),
    'retry: { initial: 1s, factor: 2, max: 5m }',
    'intervals: { fetch: 5m, health: 5m, rescan: 10m }',
    `logging: { file: ${JSON.stringify(o.logFile)}, level: debug }`,
    'notifications: { desktop: false }',
    ...(o.environments ? [
      'environments:',
      '  staging:',
      '    branch: staging',
      '    from: develop',
      '    gates:',
      '      - { name: never, command: "false", timeout: 10s }',
    ] : []),
    '',
  ].join('\n');
}

async function sandboxOn(remotes: { name: string; url: string }[], environments = false): Promise<string> {
  const dir = await makeTmpDir('stalls-sandbox');
  const logFile = path.join(await makeTmpDir('stalls-logs'), 'c.log');
  await writeFile(path.join(dir, 'cascade-sync-config.yaml'), config({ remotes, logFile, environments }));
  await writeFile(path.join(dir, 'app.txt'), 'v1\n');
  const init = await run(dir, ['init']);
  expect(init.code, init.stderr + init.stdout).toBe(0);
  return dir;
}

/** Waits until `bare`'s develop holds app.txt with `text`; returns how long that took. */
async function onRemote(bare: string, text: string, timeoutMs: number): Promise<number> {
  const t0 = Date.now();
  await waitFor(async () => {
    const tip = await tryRevParse(bare, 'develop');
    return tip && (await git(bare, 'show', `${tip}:app.txt`).catch(() => '')) === text ? true : undefined;
  }, { what: `app.txt "${text}" on ${bare}'s develop`, timeoutMs, intervalMs: 50 });
  return Date.now() - t0;
}

async function reconciler(dir: string, name: string) {
  return (await statusJson(dir).catch(() => undefined))?.reconcilers?.find((r: { name: string }) => r.name === name);
}

describe('no stall outlives its cause', () => {
  it('a remote that refused a push looks again as soon as a new local commit comes, not after retry.max', async () => {
    const bare = path.join(await makeTmpDir('stalls-remote'), 'site.git');
    await makeBareRepo(bare, { initialBranch: 'develop' });
    const dir = await sandboxOn([{ name: 'origin', url: bare }]);
    const c = await startController(dir);
    controllers.push(c);
    await onRemote(bare, 'v1', 20_000);
    // The remote's hook refuses every push while the freeze file exists (a person's decision there).
    const freeze = path.join(bare, 'frozen');
    const hook = path.join(bare, 'hooks', 'pre-receive');
    await writeFile(hook, `#!/bin/sh\ncat >/dev/null\nif [ -e "${freeze}" ]; then echo "develop is frozen"; exit 1; fi\nexit 0\n`);
    await chmod(hook, 0o755);
    await writeFile(freeze, '');
    await writeFile(path.join(dir, 'app.txt'), 'v2\n');
    const stalled = await waitFor(async () => {
      const r = await reconciler(dir, 'remote:origin');
      return r?.lastError?.reason === 'PushRejected' ? r : undefined;
    }, { what: 'the refusal in status', timeoutMs: 20_000 });
    expect(stalled.conditions.some((x: { type: string; status: boolean }) => x.type === 'Stalled' && x.status)).toBe(true);
    // The freeze is lifted; the next edit's commit wakes the remote at once (its backoff says 5 minutes).
    await rm(freeze);
    await writeFile(path.join(dir, 'app.txt'), 'v3\n');
    const tookMs = await onRemote(bare, 'v3', 20_000);
    // The push lands on the remote a moment before the controller records the pass that made it.
    const after = await waitFor(async () => {
      const r = await reconciler(dir, 'remote:origin');
      return r && r.lastError === undefined ? r : undefined;
    }, { what: 'the refusal gone from status', timeoutMs: 10_000 }).catch(async () => reconciler(dir, 'remote:origin'));
    expect(after?.lastError, JSON.stringify(after)).toBeUndefined();
    console.log(`pushed ${tookMs} ms after the edit that followed the lifted refusal`);
  }, 90_000);

  it("an environment branch moved elsewhere on a second remote stalls only that: develop keeps syncing with it, edit after edit", async () => {
    const root = await makeTmpDir('stalls-remotes');
    const origin = path.join(root, 'origin.git');
    const backup = path.join(root, 'backup.git');
    await makeBareRepo(origin, { initialBranch: 'develop' });
    await makeBareRepo(backup, { initialBranch: 'develop' });
    const dir = await sandboxOn([{ name: 'origin', url: origin }, { name: 'backup', url: backup }], true);
    expect((await run(dir, ['reconcile'])).code).toBe(0);
    // Someone moves staging on the backup remote to a commit cascade-sync did not put there.
    const other = await cloneTo(backup, path.join(root, 'other'), '--branch', 'develop');
    const foreign = await commitFiles(other, { 'elsewhere.txt': 'x\n' }, 'moved by hand');
    await git(other, 'push', '-q', '--force', 'origin', `${foreign}:refs/heads/staging`);

    const c = await startController(dir);
    controllers.push(c);
    const blocked = await waitFor(async () => {
      const r = await reconciler(dir, 'remote:backup');
      return r?.lastError?.reason === 'EnvironmentBranchMovedElsewhere' ? r : undefined;
    }, { what: 'the moved staging branch in status', timeoutMs: 30_000 });
    expect(blocked.conditions.some((x: { type: string; status: boolean }) => x.type === 'Stalled' && x.status)).toBe(true);
    for (const text of ['v2', 'v3', 'v4']) {
      await writeFile(path.join(dir, 'app.txt'), `${text}\n`);
      await onRemote(backup, text, 20_000);
      await onRemote(origin, text, 20_000);
    }
    // Still reported (a person must look), and the staging branch there is left as it was.
    expect((await reconciler(dir, 'remote:backup'))?.lastError?.reason).toBe('EnvironmentBranchMovedElsewhere');
    expect(await git(backup, 'rev-parse', 'staging')).toBe(foreign);
    // Reported once in the log, not on every pass.
    const said = (c.stdout.text().match(/staging on backup is at/g) ?? []).length;
    expect(said).toBeLessThanOrEqual(2);
  }, 120_000);
});
