import { execFile } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { createServer } from 'node:http';
import { readFile, readlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Clock } from '../../src/clock.js';
import { revParse } from './git.js';
import { run, startController, testEnv, type RunningController } from './sandbox.js';
import { waitFor } from './tmp.js';

const exec = promisify(execFile);

/** The webhook secret the pipeline configs below use. */
export const SECRET = 'hook-secret-0123456789';
// The configs name it as ${CASCADE_TEST_HOOK_SECRET}, as a user should: a literal secret in the
// config is held back by the secret scan. testEnv() passes process.env on to the controller.
process.env.CASCADE_TEST_HOOK_SECRET = SECRET;

/** An ed25519 key made by the real ssh-keygen; `pub` is its allowed_signers line. */
export async function sshKey(dir: string, principal: string): Promise<{ file: string; pub: string }> {
  const file = path.join(dir, principal.replace(/\W/g, '_'));
  await exec('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', principal, '-f', file]);
  const pub = (await readFile(`${file}.pub`, 'utf8')).trim().split(/\s+/).slice(0, 2).join(' ');
  return { file, pub: `${principal} ${pub}` };
}

/** A state-file entry signed with the real `ssh-keygen -Y sign -n cascade-sync`. */
export async function signedEntry(key: string, o: { environment: string; commit: string; expires: string; signer: string; signFor?: { environment?: string; commit?: string } }): Promise<string> {
  const msgFile = `${key}.msg-${Math.random().toString(36).slice(2)}`;
  const message = `cascade-sync approval v1\nenvironment: ${o.signFor?.environment ?? o.environment}\ncommit: ${o.signFor?.commit ?? o.commit}\nexpires: ${o.expires}\n`;
  await writeFile(msgFile, message);
  await exec('ssh-keygen', ['-Y', 'sign', '-n', 'cascade-sync', '-f', key, msgFile]);
  const sig = await readFile(`${msgFile}.sig`, 'utf8');
  return [
    `  - environment: ${o.environment}`,
    `    commit: "${o.commit}"`,
    `    expires: "${o.expires}"`,
    `    signer: ${o.signer}`,
    '    signature: |',
    ...sig.trimEnd().split('\n').map((l) => `      ${l}`),
    '',
  ].join('\n');
}

export interface PipelineOptions {
  /** Production's health check command (default: the live app.txt does not say BROKEN). */
  productionCheck?: string;
  /** The sandbox section as YAML flow (default: a 300ms debounce). */
  sandbox?: string;
  url?: string;
  signers: string[];
  hook?: string;
  stagingExtra?: string;
  logFile: string;
  deployRoot: string;
  /**
   * Production's policy lines (from, promotion, approvals) in place of the default
   * (`from: staging`, `promotion: approval`, one required approval from `signers`).
   */
  productionPolicy?: string[];
  /** Production's deploy hooks. */
  productionHooks?: { pre?: string; post?: string };
  /** A second production health check command. */
  productionHealthExtra?: string;
}

/** Production's default policy lines for pipelineConfig: approval from staging, signed by `signers`. */
export function approvalPolicy(signers: string[]): string[] {
  return [
    '    from: staging',
    '    promotion: approval',
    '    approvals:',
    '      required: 1',
    `      signers:${signers.length ? '' : ' []'}`,
    ...signers.map((s) => `        - ${JSON.stringify(s)}`),
  ];
}

export function pipelineConfig(o: PipelineOptions): string {
  return [
    'version: 1',
    `sandbox: ${o.sandbox ?? '{ debounce: 300ms, batchWindow: 2s }'}`,
    o.url ? `remotes:\n  - { name: origin, url: ${JSON.stringify(o.url)} }` : 'remotes: []',
    'retry: { initial: 200ms, factor: 2, max: 2s, jitter: 0 }',
    'intervals: { fetch: 1s, health: 1s, rescan: 10m }',
    `logging: { file: ${JSON.stringify(o.logFile)}, level: debug }`,
    `notifications:\n  desktop: false\n  webhooks: ${o.hook ? `[ { url: ${JSON.stringify(o.hook)}, secret: "\${CASCADE_TEST_HOOK_SECRET}" } ]` : '[]'}`,
    'environments:',
    '  staging:',
    '    branch: staging',
    '    from: develop',
    '    gates:',
    '      - { name: no-fail, command: "test -f app.txt && ! grep -q FAIL app.txt", timeout: 30s }',
    '      - { name: config, builtin: config }',
    `    deploy: { directory: ${JSON.stringify(path.join(o.deployRoot, 'staging'))}, keep: 3 }`,
    ...(o.stagingExtra ? [o.stagingExtra] : []),
    '  production:',
    '    branch: main',
    ...(o.productionPolicy ?? approvalPolicy(o.signers)),
    `    deploy: { directory: ${JSON.stringify(path.join(o.deployRoot, 'production'))}, keep: 5${o.productionHooks ? `, hooks: ${JSON.stringify(o.productionHooks)}` : ''} }`,
    '    health:',
    `      - { name: not-broken, command: ${JSON.stringify(o.productionCheck ?? '! grep -q BROKEN app.txt')}, timeout: 10s }`,
    ...(o.productionHealthExtra ? [`      - { name: extra, command: ${JSON.stringify(o.productionHealthExtra)}, timeout: 10s }`] : []),
    '    healthyAfter: 1',
    '    failureThreshold: 2',
    '    progressDeadline: 1m',
    '',
  ].join('\n');
}

export async function statusJson(dir: string) {
  return JSON.parse(await readFile(path.join(dir, '.git/cascade-sync/status.json'), 'utf8'));
}

export async function envReport(dir: string, name: string) {
  const st = await statusJson(dir).catch(() => undefined);
  return st?.environments?.find((e: { name: string }) => e.name === name);
}

export async function live(deployDir: string): Promise<string | undefined> {
  const target = await readlink(path.join(deployDir, 'current')).catch(() => undefined);
  return target ? path.basename(target) : undefined;
}


/** What a webhook receiver got: the verified events, and how many requests failed the HMAC check. */
export interface WebhookReceiver {
  url: string;
  events: { event: string; message: string; details?: Record<string, unknown> }[];
  unverified: number;
}

/** A webhook receiver on 127.0.0.1 that verifies every request's HMAC (SECRET) and keeps the verified events; `onClose` gets its closer. */
export async function webhookReceiver(onClose: (close: () => Promise<void>) => void): Promise<WebhookReceiver> {
  const state: WebhookReceiver = { url: '', events: [], unverified: 0 };
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      const ts = String(req.headers['x-cascade-timestamp'] ?? '');
      const expected = `sha256=${createHmac('sha256', SECRET).update(`${ts}.${body}`).digest('hex')}`;
      if (req.headers['x-cascade-signature'] === expected) state.events.push(JSON.parse(body));
      else state.unverified++;
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  state.url = `http://127.0.0.1:${(server.address() as { port: number }).port}/hook`;
  onClose(() => new Promise((r) => server.close(() => r())));
  return state;
}


/** A clock that runs with the wall clock, plus whatever a test has added: controller time passes without waiting for it. */
export interface AdvancingClock extends Clock {
  advance(ms: number): void;
}

export function advancingClock(): AdvancingClock {
  let offset = 0;
  return { now: () => Date.now() + offset, advance: (ms) => void (offset += ms) };
}

/** Starts `cascade-sync start` in-process in `dir` on `clock`; resolves once it reports ready. */
export function startControllerOn(dir: string, clock: Clock, env: NodeJS.ProcessEnv = testEnv()): Promise<RunningController> {
  return startController(dir, env, clock);
}

/**
 * A sandbox in `dir` running the pipeline of `config` in-process on an advancing clock, with production
 * (deployed under `deployRoot`) live at the init commit: writes app.txt ("v1") and the config, runs
 * `init`, starts the controller (handed to `track` at once, so that the test's afterEach stops it also
 * when this rejects) and waits for the deploy. Returns that commit (`c1`, main after init) and the clock.
 * Rejects when init fails or production is not live at c1 within 20 s.
 */
export async function startDeployedPipeline(o: { dir: string; config: string; deployRoot: string; track: (c: RunningController) => void }): Promise<{ c1: string; clock: AdvancingClock }> {
  await writeFile(path.join(o.dir, 'app.txt'), 'v1\n');
  await writeFile(path.join(o.dir, 'cascade-sync-config.yaml'), o.config);
  const init = await run(o.dir, ['init']);
  if (init.code !== 0) throw new Error(`init failed with ${init.code}: ${init.stderr}`);
  const c1 = await revParse(o.dir, 'main');
  const clock = advancingClock();
  o.track(await startControllerOn(o.dir, clock));
  await waitFor(async () => (await live(path.join(o.deployRoot, 'production'))) === c1 || undefined, { what: 'production to deploy the init commit' });
  return { c1, clock };
}

/**
 * Lets `totalMs` of controller time pass in steps of `stepMs`, waiting after each step until the
 * reconciler `name` has finished a pass that began after it: so at least totalMs/stepMs passes ran.
 */
export async function passControllerTime(dir: string, clock: AdvancingClock, name: string, totalMs = 60_000, stepMs = 10_000): Promise<void> {
  for (let passed = 0; passed < totalMs; passed += stepMs) {
    clock.advance(stepMs);
    const since = new Date(clock.now()).toISOString();
    await waitFor(async () => {
      const st = await statusJson(dir).catch(() => undefined);
      const r = st?.reconcilers?.find((x: { name: string }) => x.name === name);
      return r && r.lastRunAt >= since && r.lastDoneAt >= r.lastRunAt && !r.running ? true : undefined;
    }, { what: `a pass of ${name} after ${passed + stepMs}ms of controller time`, timeoutMs: 30_000 });
  }
}
