import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { cloneTo, fsckStrict, git, gitOk, makeBareRepo } from './helpers/git.js';
import { startGitHttpServer, type GitHttpServer } from './helpers/git-http-server.js';
import { buildDist, killStartedProcesses, startControllerProcess } from './helpers/process.js';
import { run } from './helpers/sandbox.js';
import { frozenPipelineConfig } from './helpers/team.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

// A team over smart HTTP (issue 15): three sandboxes, each with its own controller process (the compiled
// dist), on one `git http-backend` remote, everyone editing their own files at once. Pushes race on the
// server (`failed to update ref`, non-fast-forward); each race must be retried at once, never stall.

let server: GitHttpServer | undefined;

beforeAll(buildDist, 180_000);

afterEach(async () => {
  killStartedProcesses();
  await server?.close();
  server = undefined;
  await cleanupTmpDirs();
});
afterAll(async () => {
  await server?.close();
});

/**
 * The team's config: retry.max as in production (5 minutes), so a race treated as a refusal would show.
 * The team's pipeline as in the run, held still: staging's gate never passes and production
 * has no signers, so environments keep failing (Waiting, Stalled) while develop must go on syncing.
 */
function teamConfig(url: string, logFile: string): string {
  return frozenPipelineConfig({ url, logFile, retry: '{ initial: 1s, factor: 2, max: 5m }', intervals: '{ fetch: 2s, rescan: 10m }' });
}

/** The paths (with content) `dir` holds among `expected` that differ from it. */
async function missingIn(read: (p: string) => Promise<string | undefined>, expected: Map<string, string>): Promise<string[]> {
  const out: string[] = [];
  for (const [p, content] of expected) if ((await read(p)) !== content) out.push(p);
  return out;
}

describe('a team of three controllers on one smart-HTTP remote', () => {
  it('everyone editing their own files at once converges within 30 s of the last edit, with nothing lost', async () => {
    const root = await makeTmpDir('team-http');
    await makeBareRepo(path.join(root, 'site.git'), { initialBranch: 'develop' });
    server = await startGitHttpServer({ root });
    const url = server.url('site.git');
    const logs = await makeTmpDir('team-logs');

    const first = await makeTmpDir('team-a');
    await writeFile(path.join(first, 'cascade-sync-config.yaml'), teamConfig(url, path.join(logs, 'team.log')));
    await writeFile(path.join(first, 'README.md'), 'team\n');
    expect((await run(first, ['init'])).code).toBe(0);
    const synced = await run(first, ['reconcile']);
    expect(synced.code, synced.stderr + synced.stdout).toBe(0);
    const dirs = [first];
    for (const name of ['b', 'c']) {
      const dir = path.join(await makeTmpDir(`team-${name}`), 'site');
      await cloneTo(url, dir, '--branch', 'develop');
      const init = await run(dir, ['init']);
      expect(init.code, init.stderr + init.stdout).toBe(0);
      dirs.push(dir);
    }
    const procs = await Promise.all(dirs.map((d) => startControllerProcess(d, { what: 'a controller process' })));

    // Each person writes and rewrites their own files, all three at once, for a while.
    const expected = new Map<string, string>();
    const people = ['a', 'b', 'c'];
    const rounds = 24;
    await Promise.all(dirs.map(async (dir, i) => {
      const who = people[i]!;
      await mkdir(path.join(dir, who), { recursive: true });
      for (let n = 0; n < rounds; n++) {
        const file = `${who}/f${n % 8}.txt`;
        const content = `${who} step ${n}\n`;
        await writeFile(path.join(dir, file), content);
        expected.set(file, content);
        // Irregular pauses: sometimes inside a batch's debounce, sometimes just after a commit.
        await new Promise((r) => setTimeout(r, 150 + ((n * 7 + i * 13) % 9) * 90));
      }
    }));
    const lastEdit = Date.now();

    const bare = path.join(root, 'site.git');
    // One git process per look at the remote (the machine is busy with three controllers already).
    let remoteTree = new Map<string, string>();
    const blobId = (content: string) => createHash('sha1').update(`blob ${Buffer.byteLength(content)}\0${content}`).digest('hex');
    const onRemote = async (p: string) => (remoteTree.get(p) === blobId(expected.get(p)!) ? expected.get(p) : undefined);
    const inSandbox = (dir: string) => (p: string) => readFile(path.join(dir, p), 'utf8').catch(() => undefined);
    let lastMissing: Record<string, string[]> = {};
    const converged = await waitFor(async () => {
      remoteTree = new Map((await git(bare, 'ls-tree', '-r', 'develop')).split('\n').map((l) => { const [meta, p] = l.split('\t'); return [p!, meta!.split(' ')[2]!]; }));
      lastMissing = { remote: await missingIn(onRemote, expected) };
      for (const [i, dir] of dirs.entries()) lastMissing[people[i]!] = await missingIn(inSandbox(dir), expected);
      return Object.values(lastMissing).every((m) => m.length === 0) || undefined;
    }, { what: 'every edit on the remote and in every sandbox', timeoutMs: 30_000, intervalMs: 250 }).catch(async (e: Error) => {
      const views = await Promise.all(dirs.map(async (dir, i) => `--- ${people[i]}: ${await git(dir, 'log', '--oneline', '-3', 'develop')}\nstatus: ${await git(dir, 'status', '--short')}\n${procs[i]!.out().split('\n').filter((l) => !/gate never/.test(l)).slice(-30).join('\n')}`));
      throw new Error(`${e.message}\nmissing: ${JSON.stringify(lastMissing)}\nremote: ${await git(bare, 'log', '--oneline', '-3', 'develop')}\n${views.join('\n')}`);
    });
    expect(converged).toBe(true);
    const tookMs = Date.now() - lastEdit;
    // Nothing stalled on a race: no controller reported a push refused (a race is retried, not a refusal).
    for (const [i, p] of procs.entries()) expect(p.out(), `${people[i]}'s controller`).not.toMatch(/PushRejected|a person must act/);
    for (const p of procs) {
      p.child.kill('SIGTERM');
      await new Promise((r) => (p.child.exitCode !== null ? r(null) : p.child.once('exit', r)));
    }
    // Every sandbox's develop ends where the remote's does, and every history is whole.
    const tip = await git(bare, 'rev-parse', 'develop');
    for (const dir of dirs) expect((await gitOk(dir, 'merge-base', '--is-ancestor', tip, 'develop')).code).toBe(0);
    await fsckStrict(bare);
    const races = procs.map((p) => (p.out().match(/RefConflict|NonFastForward|failed to update ref|non-fast-forward/g) ?? []).length);
    console.log(`team over HTTP: converged ${tookMs} ms after the last edit; races seen per controller: ${races.join(', ')}`);
  }, 240_000);
});
