import { writeFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { main } from '../../src/cli/main.js';
import { systemClock, type Clock } from '../../src/clock.js';
import { gitEnv } from './git.js';
import { makeTmpDir, waitFor } from './tmp.js';

/** Captured output of an in-process command. */
export interface Captured {
  write(s: string): boolean;
  text(): string;
}

export function capture(): Captured {
  let buf = '';
  return { write: (s: string) => ((buf += s), true), text: () => buf };
}

/** The environment cascade-sync runs with in tests: isolated HOME, no user git config. */
export function testEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return gitEnv(extra);
}

/** Runs one CLI command in-process; returns its exit code and output. */
export async function run(cwd: string, argv: string[], env: NodeJS.ProcessEnv = testEnv()): Promise<{ code: number; stdout: string; stderr: string }> {
  const stdout = capture();
  const stderr = capture();
  const code = await main({ argv, cwd, env, stdout, stderr, clock: systemClock, signal: new AbortController().signal });
  return { code, stdout: stdout.text(), stderr: stderr.text() };
}

export interface ConfigOptions {
  remotes?: { name: string; url: string; username?: string; password?: string; timeout?: string }[];
  debounce?: string;
  batchWindow?: string;
  exclude?: string[];
  fetch?: string;
  rescan?: string;
  logFile: string;
  extra?: string;
}

/** A config for tests: short debounce, log file in a temp dir, no desktop notifications. */
export function configText(o: ConfigOptions): string {
  const remotes = (o.remotes ?? [])
    .map((r) => `  - name: ${r.name}\n    url: ${JSON.stringify(r.url)}\n${r.username ? `    username: ${JSON.stringify(r.username)}\n` : ''}${r.password ? `    password: ${JSON.stringify(r.password)}\n` : ''}${r.timeout ? `    timeout: ${r.timeout}\n` : ''}`)
    .join('');
  return [
    'version: 1',
    'sandbox:',
    `  debounce: ${o.debounce ?? '300ms'}`,
    `  batchWindow: ${o.batchWindow ?? '2s'}`,
    ...(o.exclude ? ['  exclude:', ...o.exclude.map((e) => `    - ${JSON.stringify(e)}`)] : []),
    o.remotes?.length ? `remotes:\n${remotes.trimEnd()}` : 'remotes: []',
    'retry: { initial: 200ms, factor: 2, max: 2s, jitter: 0 }',
    `intervals: { fetch: ${o.fetch ?? '1s'}, rescan: ${o.rescan ?? '10m'} }`,
    `logging: { file: ${JSON.stringify(o.logFile)}, level: debug }`,
    'notifications: { desktop: false }',
    o.extra ?? '',
    '',
  ].join('\n');
}

/** Makes a sandbox folder with a config and runs `init` in it. */
export async function makeSandbox(opts: Omit<ConfigOptions, 'logFile'> & { files?: Record<string, string> } = {}): Promise<{ dir: string; logFile: string }> {
  const dir = await makeTmpDir('sandbox');
  const logFile = path.join(await makeTmpDir('logs'), 'cascade-sync.log');
  for (const [p, c] of Object.entries(opts.files ?? {})) {
    await mkdir(path.dirname(path.join(dir, p)), { recursive: true });
    await writeFile(path.join(dir, p), c);
  }
  await writeFile(path.join(dir, 'cascade-sync-config.yaml'), configText({ ...opts, logFile }));
  const r = await run(dir, ['init']);
  if (r.code !== 0) throw new Error(`init failed: ${r.stderr}${r.stdout}`);
  return { dir, logFile };
}

/** A controller running in-process (`cascade-sync start`), stopped with stop(). */
export interface RunningController {
  stdout: Captured;
  stop(): Promise<number>;
  ready: Promise<void>;
}

/**
 * Starts `cascade-sync start` in-process in `dir` (on `clock`, default the wall clock); resolves once it
 * reports ready, rejects when it exits first or is not ready within 30 s.
 */
export async function startController(dir: string, env: NodeJS.ProcessEnv = testEnv(), clock: Clock = systemClock): Promise<RunningController> {
  const ac = new AbortController();
  const stdout = capture();
  const stderr = capture();
  const done = main({ argv: ['start'], cwd: dir, env, stdout, stderr, clock, signal: ac.signal });
  const ready = waitFor(() => stdout.text().includes('cascade-sync: ready') || undefined, { what: 'the controller to be ready', timeoutMs: 30_000 }).then(() => undefined);
  const failed = done.then((code) => {
    throw new Error(`controller exited early with ${code}: ${stderr.text()}${stdout.text()}`);
  });
  await Promise.race([ready, failed]);
  failed.catch(() => undefined);
  return {
    stdout,
    ready,
    stop: async () => {
      ac.abort();
      const code = await done;
      return code;
    },
  };
}
