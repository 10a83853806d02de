/**
 * Time travel end to end with a real controller and native git as the oracle: `history` lists the
 * versions of a file, of a folder and of the whole sandbox; `restore` brings back a deleted file, a
 * folder (files created since removed), the whole sandbox (`.`), an encrypted file as plaintext, and a
 * restore can be undone by another restore. Each restore is one commit with the message
 * `restore: <paths> as of <time> (<commit>)`, and history is never rewritten. `--dry-run` changes
 * nothing; uncommitted edits are never overwritten.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { git, gitEnv, makeTestRepo, revParse, showFile, statusPorcelain } from './helpers/git.js';
import { commitNative, worktreeChanges } from '../src/git/native/index.js';
import { makeSandbox, run, startController, type RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, waitFor } from './helpers/tmp.js';

let controllers: RunningController[] = [];
afterEach(async () => {
  for (const c of controllers) await c.stop();
  controllers = [];
  await cleanupTmpDirs();
});

/** Waits until develop moves past `from` and has no uncommitted edits; returns the new head. */
async function committed(dir: string, from: string, what: string): Promise<string> {
  return waitFor(async () => {
    const head = await revParse(dir, 'develop');
    return head !== from && (await statusPorcelain(dir)).length === 0 ? head : undefined;
  }, { what, timeoutMs: 30_000 });
}

/** Waits until the clock is in a later second than commit `c` (git's dates have whole seconds). */
async function nextSecond(dir: string, c: string): Promise<void> {
  const t = Number(await git(dir, 'show', '-s', '--format=%ct', c));
  await waitFor(() => Math.floor(Date.now() / 1000) > t, { what: 'the next second' });
}

async function subject(dir: string, c = 'develop'): Promise<string> {
  return (await git(dir, 'show', '-s', '--format=%s', c)).trim();
}

async function write(dir: string, p: string, text: string): Promise<void> {
  await mkdir(path.dirname(path.join(dir, p)), { recursive: true });
  await writeFile(path.join(dir, p), text);
}

describe('history and restore', () => {
  it('lists versions newest first and restores a deleted file, a folder, ., an encrypted file and a restore, each as one commit named restore:', async () => {
    const { dir } = await makeSandbox({ files: { 'a.txt': 'version one\n', 'docs/x.md': 'x1\n', 'docs/y.md': 'y1\n', '.env': 'TOKEN=first-secret-value\n' } });
    controllers.push(await startController(dir));
    const c1 = await revParse(dir, 'develop');
    expect((await git(dir, 'ls-tree', '-r', '--name-only', c1)).split('\n')).toEqual(expect.arrayContaining(['a.txt', 'docs/x.md', 'docs/y.md', '.env']));

    await nextSecond(dir, c1);
    await write(dir, 'a.txt', 'version two, longer\n');
    await write(dir, '.env', 'TOKEN=second-secret-value\n');
    const c2 = await committed(dir, c1, 'the edit of a.txt committed');
    await nextSecond(dir, c2);
    await rm(path.join(dir, 'docs/y.md'));
    await write(dir, 'docs/z.md', 'z created later\n');
    const c3 = await committed(dir, c2, 'the deletion of docs/y.md committed');

    // history of one file: its versions, newest first, with sizes.
    const h = await run(dir, ['history', 'a.txt', '--json']);
    expect(h.code, h.stderr).toBe(0);
    const versions = JSON.parse(h.stdout).versions as { commit: string; summary: string; localTime: string; paths: { path: string; size?: number; deleted?: boolean }[] }[];
    expect(versions.map((v) => v.commit)).toEqual([c2, c1]);
    expect(versions[0]!.paths).toEqual([{ path: 'a.txt', status: 'M', size: 'version two, longer\n'.length }]);
    expect(versions[0]!.summary).toBe(await subject(dir, c2));
    // git log is the oracle for which commits changed the file.
    expect(versions.map((v) => v.commit)).toEqual((await git(dir, 'log', '--first-parent', '--format=%H', 'develop', '--', 'a.txt')).trim().split('\n'));
    // a deleted file shows as deleted; the text form shows local time, commit and summary.
    const y = await run(dir, ['history', 'docs/y.md']);
    expect(y.stdout).toMatch(new RegExp(`^\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d [+-]\\d\\d:\\d\\d  ${c3.slice(0, 7)}  .+\\n +deleted +docs/y\\.md\\n`));
    // the whole sandbox, and --since cutting it.
    const all = JSON.parse((await run(dir, ['history', '--json'])).stdout).versions as { commit: string }[];
    expect(all.map((v) => v.commit).slice(0, 3)).toEqual([c3, c2, c1]);
    const since = JSON.parse((await run(dir, ['history', '--json', '--since', '2020-01-01T00:00:00Z', 'docs'])).stdout).versions as { commit: string }[];
    expect(since.map((v) => v.commit)).toEqual([c3, c1]);
    expect(JSON.parse((await run(dir, ['history', '--json', '--since', '1h', 'docs/nothing-here'])).stdout).versions).toEqual([]);

    // --dry-run says what it would do and changes nothing.
    const dry = await run(dir, ['restore', 'docs', '--at', c2, '--dry-run']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toContain(`restore: docs as of`);
    expect(dry.stdout).toMatch(/recreate\s+docs\/y\.md/);
    expect(dry.stdout).toMatch(/delete\s+docs\/z\.md/);
    expect(existsSync(path.join(dir, 'docs/y.md'))).toBe(false);
    expect(await statusPorcelain(dir)).toEqual([]);
    expect(await revParse(dir, 'develop')).toBe(c3);

    // a folder, by time: the deleted file comes back, the file created since goes.
    const at2 = new Date(Number(await git(dir, 'show', '-s', '--format=%ct', c2)) * 1000 + 500).toISOString();
    const r1 = await run(dir, ['restore', 'docs', '--at', at2]);
    expect(r1.code, r1.stderr).toBe(0);
    const c4 = await committed(dir, c3, 'the restore of docs committed');
    expect(await subject(dir, c4)).toMatch(new RegExp(`^restore: docs as of \\d{4}-.+ \\(${c2.slice(0, 7)}\\)$`));
    expect(await git(dir, 'rev-parse', `${c4}:docs`)).toBe(await git(dir, 'rev-parse', `${c2}:docs`));
    expect(await git(dir, 'rev-parse', `${c4}^`)).toBe(c3); // a new commit on top: nothing rewritten
    expect(await readFile(path.join(dir, 'docs/y.md'), 'utf8')).toBe('y1\n');
    expect(existsSync(path.join(dir, 'docs/z.md'))).toBe(false);

    // a restore undone by another restore (by commit).
    const r2 = await run(dir, ['restore', 'docs', '--at', c3.slice(0, 10)]);
    expect(r2.code, r2.stderr).toBe(0);
    const c5 = await committed(dir, c4, 'the restore of the restore committed');
    expect(await subject(dir, c5)).toContain(`(${c3.slice(0, 7)})`);
    expect(await git(dir, 'rev-parse', `${c5}:docs`)).toBe(await git(dir, 'rev-parse', `${c3}:docs`));

    // an encrypted file comes back as plaintext, stored encrypted again.
    const r3 = await run(dir, ['restore', '.env', '--at', c1]);
    expect(r3.code, r3.stderr).toBe(0);
    expect(r3.stdout).toContain('written as plaintext');
    const c6 = await committed(dir, c5, 'the restore of .env committed');
    expect(await readFile(path.join(dir, '.env'), 'utf8')).toBe('TOKEN=first-secret-value\n');
    expect((await showFile(dir, c6, '.env')).subarray(0, 16).toString()).toBe('CASCADE-SYNC-ENC');
    expect(await subject(dir, c6), `${await git(dir, 'log', '--format=%h %s', '--name-status', '-6', 'develop')}\n${controllers.at(-1)!.stdout.text().split('\n').slice(-40).join('\n')}`).toMatch(/^restore: \.env as of /);

    // the whole sandbox.
    const r4 = await run(dir, ['restore', '.', '--at', c1]);
    expect(r4.code, r4.stderr).toBe(0);
    const c7 = await committed(dir, c6, 'the restore of . committed');
    expect(await subject(dir, c7)).toMatch(/^restore: \. as of /);
    expect(await git(dir, 'rev-parse', `${c7}^{tree}`)).toBe(await git(dir, 'rev-parse', `${c1}^{tree}`));
    expect(await readFile(path.join(dir, 'a.txt'), 'utf8')).toBe('version one\n');
    // every version is still in history: the one overwritten last included.
    expect((await showFile(dir, c6, 'a.txt')).toString()).toBe('version two, longer\n');
    expect(existsSync(path.join(dir, '.git/cascade-sync/restores')) ? (await git(dir, 'status', '--porcelain')) : '').toBe('');
    await waitFor(async () => !existsSync(path.join(dir, '.git/cascade-sync/restores')) || (await import('node:fs/promises')).readdir(path.join(dir, '.git/cascade-sync/restores')).then((l) => l.length === 0), { what: 'the intent files removed' });

    // nothing to do: already as it was.
    const same = await run(dir, ['restore', 'a.txt', '--at', c1]);
    expect(same.code).toBe(0);
    expect(same.stdout).toContain('nothing to restore');
  }, 180_000);

  it('never overwrites uncommitted edits: without a controller it refuses and changes nothing; a path that never existed is an error', async () => {
    const { dir } = await makeSandbox({ files: { 'a.txt': 'one\n' } });
    const c1 = await revParse(dir, 'develop');
    await writeFile(path.join(dir, 'a.txt'), 'edited, not committed\n');
    const r = await run(dir, ['restore', 'a.txt', '--at', c1]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('uncommitted edits');
    expect(r.stderr).toContain('hint:');
    expect(await readFile(path.join(dir, 'a.txt'), 'utf8')).toBe('edited, not committed\n');
    const dry = await run(dir, ['restore', 'a.txt', '--at', c1, '--dry-run']);
    expect(dry.code).toBe(0);
    expect(dry.stdout).toContain('uncommitted edits');
    const missing = await run(dir, ['restore', 'no/such/file', '--at', c1]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('existed neither');
    const bad = await run(dir, ['restore', 'a.txt', '--at', 'not a moment!']);
    expect(bad.code).toBe(2);
    const outside = await run(dir, ['history', '../elsewhere']);
    expect(outside.code).toBe(2);
    expect(outside.stderr).toContain('outside the sandbox');
  }, 60_000);

  it('a file git saw deleted and that is back when the batch is staged (git restore writes a file by deleting it first) is committed as it is, never as deleted', async () => {
    // Seen under load: the restore of .env was committed as its deletion, then the next commit added it back.
    const { dir, commit } = await makeTestRepo('back-again');
    const parent = await commit({ '.env': 'TOKEN=first\n', 'keep.txt': 'kept\n' });
    await rm(path.join(dir, '.env'));
    const repo = { cwd: dir, env: gitEnv() };
    const changes = await worktreeChanges(repo, ['.env']);
    expect(changes.map((e) => e.kind === 'ordinary' ? `${e.xy} ${e.path}` : e.path)).toEqual(['.D .env']);
    await writeFile(path.join(dir, '.env'), 'TOKEN=restored\n');
    const out = await commitNative(repo, {
      changes, ref: `refs/heads/${await git(dir, 'branch', '--show-current')}`, parent,
      author: { name: 'Cascade Test', email: 'cascade-test@example.invalid' }, judge: () => undefined, message: () => 'restore: .env',
    });
    expect(await git(dir, 'diff-tree', '-r', '--no-commit-id', '--name-status', out.commit!)).toBe('M\t.env');
    expect(await git(dir, 'show', `${out.commit}:.env`)).toBe('TOKEN=restored');
    expect(await statusPorcelain(dir)).toEqual([]);
  });
});
