import { execFile, spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { testEnv } from './sandbox.js';
import { waitFor } from './tmp.js';

// Controllers as real processes: the compiled CLI (dist/, through bin/), so a test can kill one with
// SIGKILL, start it again, or run several side by side.

/** The repository's root (the folder of package.json). */
const ROOT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The CLI as `npm start` and users run it: bin/cascade-sync.js over the compiled dist/. */
export const BIN = path.join(ROOT, 'bin', 'cascade-sync.js');

/**
 * Compiles src/ to dist/ (`tsc -p tsconfig.json`), so that a process test never runs a stale build.
 * Call it from beforeAll with a generous timeout; rejects with tsc's error when the build fails.
 */
export async function buildDist(): Promise<void> {
  await promisify(execFile)('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: ROOT });
}

const started: ChildProcess[] = [];

/**
 * Starts the CLI with `args` as a child process of this test file (stdout and stderr piped), tracked so
 * that {@link killStartedProcesses} ends it. Returns the child and what it wrote: `out` both streams
 * interleaved as they came, `stdout` the terminal output alone.
 */
export function spawnCli(args: string[], o: { cwd: string; env?: NodeJS.ProcessEnv }): CliProcess {
  const child = spawn(process.execPath, [BIN, ...args], { cwd: o.cwd, env: o.env ?? testEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  started.push(child);
  let out = '';
  let stdout = '';
  child.stdout!.on('data', (d) => ((out += d), (stdout += d)));
  child.stderr!.on('data', (d) => (out += d));
  return { child, out: () => out, stdout: () => stdout };
}

/** A CLI process started by {@link spawnCli} or {@link startControllerProcess}. */
export interface CliProcess {
  child: ChildProcess;
  /** stdout and stderr so far, interleaved. */
  out(): string;
  /** stdout so far. */
  stdout(): string;
}

/**
 * Starts `cascade-sync start` in `dir` as a real process and resolves once it says it is ready.
 * Rejects when it exits first or is not ready within `timeoutMs` (default 60 s); the message names
 * `what` (default "the controller process") and holds the process's output.
 */
export async function startControllerProcess(dir: string, o: { env?: NodeJS.ProcessEnv; what?: string; timeoutMs?: number } = {}): Promise<CliProcess> {
  const p = spawnCli(['start'], { cwd: dir, env: o.env });
  const { child, out } = p;
  await waitFor(() => out().includes('cascade-sync: ready') || (child.exitCode !== null ? Promise.reject(new Error(out())) : undefined), {
    what: `${o.what ?? 'the controller process'} to be ready`,
    timeoutMs: o.timeoutMs ?? 60_000,
  }).catch((e: Error) => {
    throw new Error(`${e.message}\n--- controller output ---\n${out()}`);
  });
  return p;
}

/** Sends SIGKILL to every process started here that is still running; call it from afterEach. */
export function killStartedProcesses(): void {
  for (const c of started.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
}

/** Resolves with the child's exit code (null when a signal ended it) once it has exited, at once if it has. */
export function exited(child: ChildProcess): Promise<number | null> {
  return child.exitCode !== null || child.signalCode !== null ? Promise.resolve(child.exitCode) : new Promise((r) => child.once('exit', (code) => r(code)));
}

/**
 * Runs the CLI with `args` to its end as a child process (its environment `env`, default the tests').
 * Resolves with its exit code and output; a process killed by a signal has code 1 (or its own) and
 * `(killed by SIGNAL)` at the end of stderr. Never rejects.
 */
export function cli(cwd: string, args: string[], env: NodeJS.ProcessEnv = testEnv()): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { cwd, env }, (err, stdout, stderr) => {
      const signal = (err as { signal?: string } | null)?.signal;
      const code = (err as { code?: unknown } | null)?.code;
      resolve({ code: err ? (typeof code === 'number' ? code : 1) : 0, stdout, stderr: signal ? `${stderr}(killed by ${signal})` : stderr });
    });
  });
}
