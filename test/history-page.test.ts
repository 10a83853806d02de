/**
 * The status page's sandbox history, in real Chromium against a running controller: recent commits
 * of the sandbox branch with their paths, and for each path the exact restore command; the command
 * shown for a deleted file, run as it is, brings the file back.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Browser } from 'playwright-core';
import { revParse, statusPorcelain } from './helpers/git.js';
import { makeSandbox, run, startController, type RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, waitFor } from './helpers/tmp.js';
import { launchChromium } from './helpers/browser.js';

let controllers: RunningController[] = [];
let browser: Browser | undefined;
afterEach(async () => {
  await browser?.close();
  browser = undefined;
  for (const c of controllers) await c.stop();
  controllers = [];
  await cleanupTmpDirs();
});

describe('sandbox history on the status page', () => {
  it('lists recent commits with their paths and the restore command of each; the command for a deleted file restores it', async () => {
    const { dir } = await makeSandbox({ files: { 'notes/plan.md': 'the plan\n', 'index.html': '<h1>v1</h1>\n' }, extra: 'server: { listen: "127.0.0.1:0" }' });
    controllers.push(await startController(dir));
    const c1 = await revParse(dir, 'develop');
    await rm(path.join(dir, 'notes/plan.md'));
    const c2 = await waitFor(async () => {
      const head = await revParse(dir, 'develop');
      return head !== c1 && (await statusPorcelain(dir)).length === 0 ? head : undefined;
    }, { what: 'the deletion committed', timeoutMs: 30_000 });
    const url: string = await waitFor(async () => JSON.parse(await readFile(path.join(dir, '.git/cascade-sync/status.json'), 'utf8')).server?.url, { what: 'the server address' });

    browser = await launchChromium();
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    const problems: string[] = [];
    page.on('console', (m) => m.type() === 'error' && problems.push(m.text()));
    page.on('pageerror', (e) => problems.push(e.message));
    await page.goto(url);
    const row = page.locator(`[data-testid="sandbox-history"] tr[data-commit="${c2}"]`);
    await expect.poll(() => row.innerText().catch(() => ''), { timeout: 15_000 }).toContain('notes/plan.md');
    expect(await row.innerText()).toContain(c2.slice(0, 7));
    expect(await row.innerText()).toContain('deleted');
    const command = await row.getByTestId('restore-command').first().innerText();
    expect(command).toBe(`cascade-sync restore notes/plan.md --at ${c2.slice(0, 12)}~1`);
    // The first commit's paths are listed too, each with its own command.
    const first = page.locator(`[data-testid="sandbox-history"] tr[data-commit="${c1}"]`);
    expect(await first.getByTestId('restore-command').allInnerTexts()).toContain(`cascade-sync restore index.html --at ${c1.slice(0, 12)}`);
    expect(problems).toEqual([]);

    // The command as shown works.
    const r = await run(dir, command.split(' ').slice(1));
    expect(r.code, r.stderr).toBe(0);
    expect(await readFile(path.join(dir, 'notes/plan.md'), 'utf8')).toBe('the plan\n');
    // The page follows the new commit (the restore's batch).
    const c3 = await waitFor(async () => ((await revParse(dir, 'develop')) !== c2 ? revParse(dir, 'develop') : undefined), { what: 'the restore committed', timeoutMs: 30_000 });
    await expect.poll(() => page.locator(`[data-testid="sandbox-history"] tr[data-commit="${c3}"]`).innerText().catch(() => ''), { timeout: 15_000 }).toContain('restore: notes/plan.md as of');
  }, 120_000);
});
