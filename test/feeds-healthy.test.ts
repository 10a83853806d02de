import { afterEach, expect, it } from 'vitest';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { revParse } from './helpers/git.js';
import type { RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';
import { envReport, live, pipelineConfig, startDeployedPipeline } from './helpers/pipeline.js';

let controllers: RunningController[] = [];
afterEach(async () => {
  for (const c of controllers) await c.stop();
  controllers = [];
  await cleanupTmpDirs();
});

it('promotes from another environment only a release that is healthy there: production waits while staging is still proving a commit, then takes it', async () => {
  const dir = await makeTmpDir('feeds-sandbox');
  const deployRoot = await makeTmpDir('feeds-deploy');
  const markers = await makeTmpDir('feeds-markers');
  const logFile = path.join(await makeTmpDir('feeds-logs'), 'cascade-sync.log');
  const letThrough = path.join(markers, 'let-through');
  // Staging's check fails for a SLOW release until the marker exists: the release stays progressing
  // (its deadline is far away), never healthy and never rolled back.
  const stagingExtra = [
    '    health:',
    `      - { name: slow, command: ${JSON.stringify(`! grep -q SLOW app.txt || test -f ${letThrough}`)}, timeout: 10s }`,
    '    healthyAfter: 1',
    '    failureThreshold: 1000',
    '    progressDeadline: 1h',
  ].join('\n');
  const { c1, clock } = await startDeployedPipeline({ dir, config: pipelineConfig({ signers: [], logFile, deployRoot, stagingExtra, productionPolicy: ['    from: staging', '    promotion: auto'] }), deployRoot, track: (c) => controllers.push(c) });

  await writeFile(path.join(dir, 'app.txt'), 'SLOW v2\n');
  const c2 = await waitFor(async () => {
    const s = await revParse(dir, 'staging');
    return s !== c1 && (await live(path.join(deployRoot, 'staging'))) === s ? s : undefined;
  }, { what: 'staging to deploy the slow release', timeoutMs: 60_000 });
  // Several rounds of staging's health and production's passes while staging is still proving c2.
  const report = await waitFor(async () => {
    const st = await envReport(dir, 'staging');
    const prod = await envReport(dir, 'production');
    return st?.health?.phase === 'progressing' && st.health.checks?.length && String(prod?.next ?? '').includes('waits to become healthy in staging') ? prod : undefined;
  }, { what: 'production to wait for staging to prove the release', timeoutMs: 60_000 });
  expect(report.next).toContain(c2.slice(0, 7));
  for (let i = 0; i < 5; i++) {
    clock.advance(10_000);
    await new Promise((r) => setTimeout(r, 300));
  }
  expect(await revParse(dir, 'main')).toBe(c1);
  expect(await live(path.join(deployRoot, 'production'))).toBe(c1);

  await writeFile(letThrough, '');
  await waitFor(async () => (await revParse(dir, 'main')) === c2 && (await live(path.join(deployRoot, 'production'))) === c2 || undefined, { what: 'production to take the release once it is healthy in staging', timeoutMs: 60_000 });
});
