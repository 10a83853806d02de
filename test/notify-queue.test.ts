/**
 * Notifications beside the loop (issue 15): a webhook that accepts connections and never answers
 * leaves commit-to-remote latency and promote-to-deploy time as they are without it, and `stop`
 * returns promptly. Real controller, real git, a real bare remote, a real (silent) HTTP server.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:http';
import type { Socket } from 'node:net';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { git, makeBareRepo, tryRevParse } from './helpers/git.js';
import { live, pipelineConfig } from './helpers/pipeline.js';
import { run, startController, testEnv, type RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';
import { Notifier } from '../src/notify.js';
import { Redactor } from '../src/redact.js';
import { systemClock } from '../src/clock.js';
import { Logger } from '../src/log.js';

const closers: (() => Promise<unknown>)[] = [];
let controllers: RunningController[] = [];
afterEach(async () => {
  for (const c of controllers) await c.stop();
  controllers = [];
  for (const close of closers.splice(0).reverse()) await close();
  await cleanupTmpDirs();
});

/** A webhook on 127.0.0.1 that accepts every connection and request and never answers. */
async function silentWebhook(): Promise<{ url: string; requests: () => number }> {
  let requests = 0;
  const sockets = new Set<Socket>();
  const server: Server = createServer(() => void requests++);
  server.on('connection', (s) => (sockets.add(s), s.on('close', () => sockets.delete(s))));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  closers.push(() => new Promise((r) => {
    for (const s of sockets) s.destroy();
    server.close(() => r(undefined));
  }));
  return { url: `http://127.0.0.1:${(server.address() as { port: number }).port}/hook`, requests: () => requests };
}

const TOKEN = 'ghp_' + 'a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8';

/**
 * One run: a sandbox with a pipeline (staging promoted automatically and deployed) on a bare remote,
 * `hook` as its webhook. An edit that also holds a secret (a `secret-found` notification in the very
 * pass that commits) is made; returns how long the commit took to reach the remote, how long staging
 * took from its promotion to its deploy, and how long `stop` took.
 */
async function measure(hook: string | undefined): Promise<{ toRemoteMs: number; promoteToDeployMs: number; stopMs: number }> {
  const bare = path.join(await makeTmpDir('nq-remote'), 'site.git');
  await makeBareRepo(bare, { initialBranch: 'develop' });
  const dir = await makeTmpDir('nq-sandbox');
  const deployRoot = await makeTmpDir('nq-deploy');
  const logFile = path.join(await makeTmpDir('nq-logs'), 'c.log');
  await writeFile(path.join(dir, 'app.txt'), 'v1\n');
  await writeFile(path.join(dir, 'cascade-sync-config.yaml'), pipelineConfig({ url: bare, signers: [], logFile, deployRoot, ...(hook ? { hook } : {}) }));
  const env = testEnv({ CASCADE_TEST_HOOK_SECRET: 'hook-secret-0123456789' });
  expect((await run(dir, ['init'], env)).code).toBe(0);
  const c = await startController(dir, env);
  controllers.push(c);
  // Settled first: the initial commit pushed and staging deployed.
  await waitFor(async () => ((await tryRevParse(bare, 'develop')) && (await live(path.join(deployRoot, 'staging')))) || undefined, { what: 'the first deploy of staging', timeoutMs: 60_000 });

  const reached = (text: string) => waitFor(async () => {
    const tip = await tryRevParse(bare, 'develop');
    return tip && (await git(bare, 'show', `${tip}:app.txt`)) === text ? tip : undefined;
  }, { what: `${text} on the remote`, timeoutMs: 90_000, intervalMs: 20 });
  // An edit with a secret in it: the pass that commits it notifies `secret-found`.
  await writeFile(path.join(dir, 'deploy.sh'), `#!/bin/sh\nexport GITHUB_TOKEN=${TOKEN}\n`);
  await writeFile(path.join(dir, 'app.txt'), 'v2\n');
  await reached('v2');
  // The next edit is committed and pushed as soon as without any webhook.
  const editedAt = Date.now();
  await writeFile(path.join(dir, 'app.txt'), 'v3\n');
  const commit = await reached('v3');
  const toRemoteMs = Date.now() - editedAt;
  const promotedAt = await waitFor(async () => ((await tryRevParse(dir, 'staging')) === commit ? Date.now() : undefined), { what: 'staging promoted', timeoutMs: 90_000, intervalMs: 20 });
  await waitFor(async () => (await live(path.join(deployRoot, 'staging'))) === commit || undefined, { what: 'staging deployed', timeoutMs: 90_000, intervalMs: 20 });
  const promoteToDeployMs = Date.now() - promotedAt;
  const stopAt = Date.now();
  await c.stop();
  controllers = controllers.filter((x) => x !== c);
  return { toRemoteMs, promoteToDeployMs, stopMs: Date.now() - stopAt };
}

describe('notifications are delivered beside the loop', () => {
  it('a webhook that never answers leaves commit-to-remote and promote-to-deploy times unchanged, and stop returns promptly', async () => {
    const hook = await silentWebhook();
    const without = await measure(undefined);
    const silent = await measure(hook.url);
    const report = `without a webhook: ${JSON.stringify(without)}; with a silent one: ${JSON.stringify(silent)}; requests it got: ${hook.requests()}`;
    console.log(report);
    // The silent webhook was really asked (secret-found, promoted, ...), and never answered.
    expect(hook.requests(), report).toBeGreaterThan(0);
    // One delivery attempt alone waits 10 s for an answer, and all five about 57 s: waiting for any of
    // them inline would add at least 10 s to these times.
    expect(silent.toRemoteMs, report).toBeLessThan(without.toRemoteMs + 6_000);
    expect(silent.promoteToDeployMs, report).toBeLessThan(without.promoteToDeployMs + 6_000);
    // A stop gives pending deliveries a few seconds at most (commit, push and deliveries included).
    expect(silent.stopMs, report).toBeLessThan(without.stopMs + 5_000);
  }, 300_000);

  it('queues deliveries: notify returns at once, an undelivered event can be sent again, close gives up after its grace', async () => {
    const hook = await silentWebhook();
    let lines = '';
    const log = new Logger({ terminal: { write: (l: string) => (lines += l) } }, 'debug', new Redactor(), systemClock);
    const n = new Notifier({ desktop: false, webhooks: [{ url: hook.url }] }, log, new Redactor(), systemClock, 2, 50);
    const t0 = Date.now();
    await n.notify({ event: 'promoted', key: 'staging:abc', message: 'staging: promoted abc' });
    await n.notify({ event: 'promoted', key: 'staging:abc', message: 'staging: promoted abc' });
    expect(Date.now() - t0).toBeLessThan(500);
    expect(n.backlog).toBe(1);
    await waitFor(() => hook.requests() === 1 || undefined, { what: 'the first attempt to reach the webhook' });
    expect(await n.settle(300)).toBe(false);
    const closing = Date.now();
    await n.close(500);
    expect(Date.now() - closing).toBeLessThan(3_000);
    expect(n.backlog).toBe(0);
    expect(lines).toMatch(/1 notification\(s\) not delivered/);
    // Not delivered, so not counted as sent: the same event may be queued again (here: refused, the notifier is closed).
    expect(lines.match(/notify promoted/g)).toHaveLength(1);
  }, 60_000);
});
