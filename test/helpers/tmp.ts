import { mkdtemp, realpath, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

const tracked = new Set<string>();

/**
 * Creates a fresh directory under os.tmpdir() and returns its real path (symlinks resolved, so it
 * compares equal to the paths git prints). The directory is tracked and removed by cleanupTmpDirs().
 * Rejects only if the temp directory cannot be created.
 */
export async function makeTmpDir(prefix: string): Promise<string> {
  const safePrefix = prefix.replace(/[^A-Za-z0-9._-]/g, '-');
  const dir = await realpath(await mkdtemp(path.join(os.tmpdir(), `cascade-${safePrefix}-`)));
  tracked.add(dir);
  return dir;
}

/**
 * Removes every directory made by makeTmpDir() since the last cleanup (recursively, force).
 * Resolves when all are gone; rejects with an AggregateError naming the directories that could not be
 * removed. Call it from afterEach/afterAll, after servers and watchers using the dirs are closed.
 */
export async function cleanupTmpDirs(): Promise<void> {
  const dirs = [...tracked];
  tracked.clear();
  const results = await Promise.allSettled(
    // maxRetries: a just-killed git child may still be releasing files (EBUSY/ENOTEMPTY).
    dirs.map((dir) => rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 50 })),
  );
  const failed = results.flatMap((r, i) => (r.status === 'rejected' ? [{ dir: dirs[i], reason: r.reason as unknown }] : []));
  if (failed.length > 0) {
    throw new AggregateError(
      failed.map((f) => f.reason),
      `could not remove temp dirs: ${failed.map((f) => f.dir).join(', ')}`,
    );
  }
}

export interface WaitForOptions {
  /** Give up after this long. Default 20000. */
  timeoutMs?: number;
  /** Pause between attempts. Default 50. */
  intervalMs?: number;
  /** What is awaited, for the timeout message ("the push to reach the remote"). */
  what: string;
}

/**
 * Polls `fn` until it returns a truthy value and resolves with that value. A throw from `fn` counts as
 * "not yet" and is remembered. Rejects with `timed out after <timeoutMs>ms waiting for <what>` (plus the
 * last error `fn` threw, also set as `cause`) once the deadline passes; an attempt still running at the
 * deadline is abandoned, not awaited. Use this instead of fixed sleeps.
 */
export async function waitFor<T>(
  fn: () => Promise<T | undefined | null | false> | T | undefined | null | false,
  opts: WaitForOptions,
): Promise<T> {
  const timeoutMs = opts.timeoutMs ?? 20_000;
  const intervalMs = opts.intervalMs ?? 50;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  const timedOut = Symbol('timedOut');

  for (;;) {
    const remaining = deadline - Date.now();
    if (remaining <= 0) break;
    let timer: NodeJS.Timeout | undefined;
    try {
      const attempt = Promise.resolve().then(fn);
      // A late rejection of an abandoned attempt must not surface as an unhandled rejection.
      attempt.catch(() => undefined);
      const outcome = await Promise.race([
        attempt,
        new Promise<typeof timedOut>((resolve) => {
          timer = setTimeout(() => resolve(timedOut), remaining);
        }),
      ]);
      if (outcome === timedOut) break;
      if (outcome) return outcome as T;
    } catch (err) {
      lastError = err;
    } finally {
      clearTimeout(timer);
    }
    const pause = Math.min(intervalMs, deadline - Date.now());
    if (pause <= 0) break;
    await new Promise((resolve) => setTimeout(resolve, pause));
  }

  let message = `timed out after ${timeoutMs}ms waiting for ${opts.what}`;
  if (lastError !== undefined) {
    message += `; last error: ${lastError instanceof Error ? lastError.message : String(lastError)}`;
  }
  throw new Error(message, lastError === undefined ? undefined : { cause: lastError });
}
