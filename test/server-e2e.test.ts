import { afterEach, describe, expect, it } from 'vitest';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import type { Browser } from 'playwright-core';
import { launchChromium } from './helpers/browser.js';
import { git, revParse } from './helpers/git.js';
import { pipelineConfig, signedEntry, sshKey, statusJson } from './helpers/pipeline.js';
import { run, startController, type RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

const OUTPUT = fileURLToPath(new URL('../test-output/', import.meta.url));
const TOKEN = 'e2e-token-0123456789';
// Named as ${VAR} in the config, as a user should: a literal token there is held back by the secret scan.
process.env.CASCADE_TEST_SERVER_TOKEN = TOKEN;

let controller: RunningController | undefined;
let browser: Browser | undefined;
afterEach(async () => {
  await browser?.close();
  await controller?.stop();
  browser = undefined;
  controller = undefined;
  await cleanupTmpDirs();
});

async function get(url: string, token?: string): Promise<{ status: number; text: string }> {
  const res = await request(url, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  return { status: res.statusCode, text: await res.body.text() };
}

describe('the status server of a running controller', () => {
  it('serves /healthz, /readyz, /metrics and /api/status, and the page follows sandbox commits live and shows a rejected approval', async () => {
    const keys = await makeTmpDir('keys');
    const alice = await sshKey(keys, 'alice@example.com');
    const mallory = await sshKey(keys, 'mallory@example.com');
    const dir = await makeTmpDir('sandbox');
    const deployRoot = await makeTmpDir('deploy');
    const logFile = path.join(await makeTmpDir('logs'), 'cascade-sync.log');
    await writeFile(path.join(dir, 'app.txt'), 'v1\n');
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), `${pipelineConfig({ signers: [alice.pub], logFile, deployRoot })}server: { listen: "127.0.0.1:0", token: "\${CASCADE_TEST_SERVER_TOKEN}" }\n`);
    expect((await run(dir, ['init'])).code).toBe(0);
    controller = await startController(dir);
    const url: string = await waitFor(async () => (await statusJson(dir).catch(() => undefined))?.server?.url, { what: 'the server address in status.json' });

    expect((await get(`${url}healthz`)).status).toBe(200);
    expect((await get(`${url}readyz`)).status).toBe(401);
    expect((await get(`${url}readyz`, TOKEN)).status).toBe(200);
    expect((await get(`${url}api/status`)).status).toBe(401);
    const api = await waitFor(async () => {
      const a = JSON.parse((await get(`${url}api/status`, TOKEN)).text);
      return a.snapshot.environments.length === 2 ? a : undefined;
    }, { what: 'both environments in /api/status' });
    expect(api.snapshot.environments.map((e: { name: string }) => e.name)).toEqual(['staging', 'production']);
    expect(JSON.stringify(api)).not.toContain(TOKEN);

    browser = await launchChromium();
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    await page.goto(`${url}#token=${TOKEN}`);
    await expect.poll(() => page.getByTestId('column').evaluateAll((els) => els.map((e) => e.getAttribute('data-env'))), { timeout: 10_000 }).toEqual(['develop', 'staging', 'production']);
    await expect.poll(() => page.locator('#conn').innerText(), { timeout: 10_000 }).toBe('live');

    // A sandbox edit commits; the page shows the new develop commit within 2 s of it, without a reload.
    const before = await revParse(dir, 'develop');
    await writeFile(path.join(dir, 'app.txt'), 'v2\n');
    const after = await waitFor(async () => ((await revParse(dir, 'develop')) !== before ? revParse(dir, 'develop') : undefined), { what: 'the edit committed' });
    await expect.poll(() => page.locator('[data-env="develop"]').getByTestId('commit').innerText(), { timeout: 2000, interval: 100 }).toContain(after.slice(0, 7));

    // An approval signed by a key that is not in the signers shows up with its reason.
    await waitFor(async () => (await revParse(dir, 'staging')) === after || undefined, { what: 'staging at the edit', timeoutMs: 30_000 });
    const expires = new Date(Date.now() + 3_600_000).toISOString().replace(/\.\d+Z$/, 'Z');
    await writeFile(path.join(dir, 'cascade-sync-state.yaml'), `approvals:\n${await signedEntry(mallory.file, { environment: 'production', commit: after, expires, signer: 'mallory@example.com' })}`);
    await expect.poll(() => page.locator('[data-env="production"]').getByTestId('rejected').innerText().catch(() => ''), { timeout: 30_000 }).toContain('unknown-signer');

    // Every column names its commit with subject and author (from the snapshot's commits).
    const mainSubject = (await git(dir, 'log', '-1', '--format=%s', 'main')).trim();
    expect(await page.locator('[data-env="production"]').getByTestId('commit').first().innerText()).toContain(mainSubject);
    const metrics = (await get(`${url}metrics`, TOKEN)).text;
    expect(metrics).toMatch(/^cascade_sync_commits_total [1-9]/m);
    expect(metrics).toMatch(/^cascade_sync_promotions_total\{environment="staging"\} [1-9]/m);
    expect(metrics).toMatch(/^cascade_sync_gate_results_total\{environment="staging",gate="no-fail",result="passed"\} [1-9]/m);
    expect(metrics).toMatch(/^cascade_sync_approvals_rejected_total\{environment="production",reason="unknown-signer"\} 1/m);
    expect(metrics).toMatch(/^cascade_sync_health_state\{environment="production",state="healthy"\} 1/m);
    await mkdir(OUTPUT, { recursive: true });
    await page.screenshot({ path: `${OUTPUT}status-page-live.png`, fullPage: true });
  }, 120_000);
});
