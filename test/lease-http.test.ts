import { afterEach, describe, expect, it } from 'vitest';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { cloneTo, git, tryRevParse } from './helpers/git.js';
import { startGitHttpServer, type GitHttpServer } from './helpers/git-http-server.js';
import { run, startController, testEnv, type RunningController } from './helpers/sandbox.js';
import { envReport } from './helpers/pipeline.js';
import { teamRemote } from './helpers/team.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

let controllers: RunningController[] = [];
let servers: GitHttpServer[] = [];
afterEach(async () => {
  for (const c of controllers) await c.stop();
  controllers = [];
  for (const s of servers) await s.close();
  servers = [];
  await cleanupTmpDirs();
});

async function leaseOn(bare: string, env: string): Promise<{ holder: { host: string }; released?: boolean } | undefined> {
  const oid = await tryRevParse(bare, `refs/cascade-sync/lease/${env}`);
  return oid ? JSON.parse(await git(bare, 'show', `${oid}:lease.json`)) : undefined;
}

describe('leases over smart HTTP', () => {
  it('two controllers on an HTTP remote: one holds each lease (compare-and-swap push through git http-backend), the other follows; a graceful stop releases it and the other takes over at once, long before the term', async () => {
    const team = await teamRemote({
      serve: async (root) => {
        const server = await startGitHttpServer({ root });
        servers.push(server);
        return server.url('site.git');
      },
    });
    // A long term: a takeover within it can only come from the release.
    const config = team.config.replace('intervals: { fetch: 1s, health: 1s, rescan: 10m }', 'intervals: { fetch: 1s, health: 1s, rescan: 10m, lease: 10m }');
    expect(config).toContain('lease: 10m');
    const dirs: string[] = [];
    for (const name of ['x', 'y']) {
      const dir = path.join(await makeTmpDir(`http-${name}`), 'site');
      await cloneTo(team.bare, dir);
      await writeFile(path.join(dir, 'cascade-sync-config.yaml'), config);
      const init = await run(dir, ['init'], testEnv({ CASCADE_SYNC_HOSTNAME: `host-${name}` }));
      expect(init.code, init.stderr).toBe(0);
      dirs.push(dir);
    }
    const [x, y] = dirs as [string, string];
    const cx = await startController(x, testEnv({ CASCADE_SYNC_HOSTNAME: 'host-x' }));
    controllers.push(cx);
    const cy = await startController(y, testEnv({ CASCADE_SYNC_HOSTNAME: 'host-y' }));
    controllers.push(cy);

    const states = async () => [(await envReport(x, 'staging'))?.lease?.state, (await envReport(y, 'staging'))?.lease?.state].join(',');
    const settled = await waitFor(async () => {
      const s = await states();
      return s === 'held,other' || s === 'other,held' ? s : undefined;
    }, { what: 'one holder of staging\'s lease and one follower', timeoutMs: 60_000 });
    const [holderDir, otherDir, holderHost, otherHost, holder] = settled === 'held,other' ? [x, y, 'host-x', 'host-y', cx] : [y, x, 'host-y', 'host-x', cy];
    expect((await leaseOn(team.bare, 'staging'))?.holder.host).toBe(holderHost);
    expect((await envReport(otherDir, 'staging'))?.lease).toMatchObject({ state: 'other', holder: { host: holderHost } });
    expect((await envReport(otherDir, 'staging'))?.next).toMatch(new RegExp(`^following \\S+@${holderHost} `));
    expect((await run(otherDir, ['status'])).stdout).toMatch(new RegExp(`lease: held by \\S+@${holderHost} .* until \\S+; this controller \\(${otherHost}\\) follows`));

    const stoppedAt = Date.now();
    await holder.stop();
    controllers = controllers.filter((c) => c !== holder);
    expect((await leaseOn(team.bare, 'staging'))?.released).toBe(true);
    await waitFor(async () => (await leaseOn(team.bare, 'staging'))?.holder.host === otherHost || undefined, { what: `${otherHost} to take the released lease`, timeoutMs: 60_000 });
    expect(Date.now() - stoppedAt).toBeLessThan(60_000);
    await waitFor(async () => (await envReport(otherDir, 'staging'))?.lease?.state === 'held' || undefined, { what: `${otherHost} to report the lease held` });
    expect(holderDir).not.toBe(otherDir);
  }, 240_000);
});
