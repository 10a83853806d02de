import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import type { Browser, Page } from 'playwright-core';
import type { StatusSnapshot } from '../src/controller.js';
import { systemClock } from '../src/clock.js';
import { Logger } from '../src/log.js';
import { Redactor } from '../src/redact.js';
import { Metrics } from '../src/server/metrics.js';
import { startStatusServer, type StatusServer } from '../src/server/http.js';
import { launchChromium } from './helpers/browser.js';

const OUTPUT = fileURLToPath(new URL('../test-output/', import.meta.url));
const TOKEN = 'page-test-token';

const OLD = '1'.repeat(40);
const STAGED = '2'.repeat(40);
const DEV = '3'.repeat(40);
const NEW = '4'.repeat(40);

/** The pipeline with staging up to date and production waiting for an approval, one of which was rejected. */
function snapshot(now: number, head = DEV, message = 'sync: 1 modified (index.html)'): StatusSnapshot {
  const iso = (agoMs: number) => new Date(now - agoMs).toISOString();
  return {
    version: 1, pid: 4242, running: true, startedAt: iso(3_600_000), updatedAt: iso(0),
    sandbox: { dir: '/srv/site/sandbox', branch: 'develop', head, pendingPaths: 0, heldBack: [], lastCommit: { commit: head, message, at: iso(1000) } },
    config: { file: '/srv/site/sandbox/cascade-sync-config.yaml', valid: true, problems: [], lastGoodAt: iso(3_600_000) },
    remotes: [{ name: 'origin', url: 'https://git.example.com/team/site.git', lastPush: { commit: head, at: iso(900) }, relation: 'in-sync' }],
    reconcilers: [{ name: 'sandbox', conditions: [], failures: 0, running: false, lastSuccessAt: iso(1000) }],
    environments: [
      {
        name: 'staging', branch: 'staging', from: 'develop', promotion: 'auto', head: STAGED, deployed: STAGED, candidate: head, target: head,
        gates: { commit: head, state: 'running', gates: [{ name: 'lint', state: 'passed', ok: true, message: 'exit 0', at: iso(500), durationMs: 400 }, { name: 'test', state: 'running' }] },
        window: { open: true, reason: 'no windows: always open' },
        health: { phase: 'healthy', description: 'healthy for 2h', checks: [{ name: 'web', ok: true, message: 'HTTP 200 in 12ms' }] },
        failed: [], next: `gates running on ${head.slice(0, 7)}`, blocked: false, inProgress: true,
      },
      {
        name: 'production', branch: 'main', from: 'staging', promotion: 'approval', head: OLD, deployed: OLD, candidate: STAGED, target: null,
        gates: null,
        approvals: {
          required: 1, signersFrom: 'main', signers: 2, valid: [],
          rejected: [{ environment: 'production', commit: STAGED, signer: 'mallory@example.com', line: 7, reason: 'unknown-signer', message: 'mallory@example.com is not in approvals.signers on main <script>alert(1)</script>' }],
        },
        window: { open: false, reason: 'outside allow window 0 9 * * 1-5 (Europe/Berlin)', nextOpenAt: now + 3.5 * 3_600_000 },
        health: { phase: 'degraded', description: 'smoke failed 2 rounds in a row', checks: [{ name: 'smoke', ok: false, message: 'exit 1: /checkout returned 502' }] },
        failed: [OLD.replace(/1/g, '9')],
        next: `waiting for approval of ${STAGED.slice(0, 7)} (0/1 valid)`,
        hint: `cascade-sync approve production ${STAGED} --key ~/.ssh/id_ed25519`,
        blocked: true, inProgress: false,
      },
    ],
    history: [
      { at: iso(7_200_000), environment: 'production', event: 'promoted', commit: OLD, from: null, signers: ['alice@example.com'], result: 'fast-forward' },
      { at: iso(600_000), environment: 'staging', event: 'promoted', commit: STAGED, from: OLD, result: 'fast-forward' },
      { at: iso(300_000), environment: 'production', event: 'approval-rejected', commit: STAGED, signers: ['mallory@example.com'], result: 'unknown-signer: not in approvals.signers' },
    ],
  };
}

describe('status page in Chromium', () => {
  let browser: Browser;
  let server: StatusServer;
  let page: Page;
  const problems: string[] = [];

  beforeAll(async () => {
    server = await startStatusServer({
      listen: '127.0.0.1:0',
      token: TOKEN,
      status: () => snapshot(Date.now()),
      ready: () => true,
      alive: () => true,
      metrics: new Metrics(),
      log: new Logger({}, 'error', new Redactor(), systemClock),
    });
    browser = await launchChromium();
    page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    // Console errors include Content-Security-Policy violations: the inline blocks' hashes must match.
    page.on('console', (m) => m.type() === 'error' && problems.push(m.text()));
    page.on('pageerror', (e) => problems.push(e.message));
  });

  afterAll(async () => {
    await browser?.close();
    await server?.close();
  });

  it('renders develop, staging and production with health, gates, approvals, window and the approve command', async () => {
    await page.goto(`${server.url}#token=${TOKEN}`);
    const columns = page.getByTestId('column');
    await expect.poll(() => columns.evaluateAll((els) => els.map((e) => e.getAttribute('data-env'))), { timeout: 5000 }).toEqual(['develop', 'staging', 'production']);

    const production = page.locator('[data-env="production"]');
    const rejected = production.getByTestId('rejected');
    expect(await rejected.innerText()).toContain('unknown-signer');
    // Text from the snapshot is shown as text, never parsed as HTML.
    expect(await rejected.innerText()).toContain('<script>alert(1)</script>');
    expect(await production.getByTestId('hint').innerText()).toBe(`cascade-sync approve production ${STAGED} --key ~/.ssh/id_ed25519`);
    expect(await production.getByTestId('next').innerText()).toContain('waiting for approval of 2222222');
    expect(await production.getByTestId('health').innerText()).toBe('degraded');
    expect(await production.innerText()).toContain('exit 1: /checkout returned 502');
    expect(await production.innerText()).toContain('outside allow window');
    expect(await production.innerText()).toMatch(/opens .*in 3h/);
    expect(await production.innerText()).toContain('promoted 2h ago');
    expect(await page.locator('[data-env="staging"]').innerText()).toMatch(/test: running/);
    expect(await page.locator('#history').innerText()).toContain('approval-rejected');
    // The token leaves the address bar (it stays in this tab's sessionStorage).
    expect(page.url()).not.toContain(TOKEN);
  });

  it('shows a new develop commit within 2 s of publish(), without reloading', async () => {
    // Browser-side code as strings: the test project's types have no DOM.
    await expect.poll(() => page.locator('#conn').innerText(), { timeout: 5000 }).toBe('live');
    await page.evaluate('window.marker = 1');
    const develop = page.locator('[data-env="develop"]').getByTestId('commit');
    expect(await develop.innerText()).toContain('3333333');

    server.publish(snapshot(Date.now(), NEW, 'sync: 2 added (about.html, logo.svg)'));
    await expect.poll(() => develop.innerText(), { timeout: 2000, interval: 100 }).toContain('4444444');
    expect(await develop.innerText()).toContain('sync: 2 added (about.html, logo.svg)');
    expect(await page.evaluate('window.marker'), 'the page was not reloaded').toBe(1);

    await mkdir(OUTPUT, { recursive: true });
    await page.screenshot({ path: `${OUTPUT}server-page.png`, fullPage: true });
    expect(problems).toEqual([]);
  });
});
