import { afterEach, describe, expect, it } from 'vitest';
import { createServer } from 'node:http';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { commitFiles, git } from './helpers/git.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';
import { Repo } from '../src/git/repo.js';
import { GateRunner } from '../src/pipeline/gates.js';
import { Logger } from '../src/log.js';
import { Redactor } from '../src/redact.js';
import { systemClock } from '../src/clock.js';
import { Notifier } from '../src/notify.js';
import type { GateSpec } from '../src/config/types.js';

afterEach(cleanupTmpDirs);

const log = () => new Logger({}, 'error', new Redactor(), systemClock);

async function repoWith(files: Record<string, string>): Promise<{ dir: string; repo: Repo; commit: string }> {
  const dir = await makeTmpDir('gates-repo');
  await git(dir, 'init', '-q', '--initial-branch=develop');
  const commit = await commitFiles(dir, files, 'c1');
  return { dir, repo: await Repo.open(dir), commit };
}

describe('GateRunner', () => {
  it('runs gates on a clean export of the commit (not the sandbox), remembers results per commit and gate, also across restarts', async () => {
    const { dir, repo, commit } = await repoWith({ 'app.txt': 'committed\n' });
    await writeFile(path.join(dir, 'app.txt'), 'uncommitted edit\n');
    await writeFile(path.join(dir, 'untracked.txt'), 'x');
    const out = path.join(await makeTmpDir('gate-out'), 'runs');
    const gates: GateSpec[] = [{ name: 'look', command: `echo "$PWD $CASCADE_COMMIT $(cat app.txt) $(ls)" >> ${out}`, timeoutMs: 10_000 }];
    const settled: string[] = [];
    const runner = await GateRunner.open(repo, log(), process.env, (env) => settled.push(env));
    expect(runner.report('staging', commit, gates).state).toBe('pending');
    runner.start('staging', commit, gates);
    await runner.idle('staging');
    expect(settled).toEqual(['staging']);
    expect(runner.report('staging', commit, gates)).toMatchObject({ state: 'passed', gates: [{ name: 'look', state: 'passed' }] });
    const line = (await readFile(out, 'utf8')).trim();
    expect(line).toContain(`${commit} committed app.txt`);
    expect(line).not.toContain(dir);
    expect(line).not.toContain('untracked');

    // Unchanged commit: not run again, also by a new runner (restart).
    runner.start('staging', commit, gates);
    await runner.idle('staging');
    const again = await GateRunner.open(repo, log(), process.env, () => undefined);
    expect(again.report('staging', commit, gates).state).toBe('passed');
    again.start('staging', commit, gates);
    await again.idle('staging');
    expect((await readFile(out, 'utf8')).trim().split('\n')).toHaveLength(1);
    // An edited gate definition is a different gate: it runs.
    const edited = [{ ...gates[0]!, timeoutMs: 20_000 }];
    expect(again.report('staging', commit, edited).state).toBe('pending');
  });

  it('a newer commit cancels the gates still running for an older one; a failing gate stops the rest', async () => {
    const { dir, repo, commit: c1 } = await repoWith({ 'a.txt': '1' });
    const c2 = await commitFiles(dir, { 'a.txt': '2' }, 'c2');
    const pidFile = path.join(await makeTmpDir('gate-pid'), 'pid');
    const gates: GateSpec[] = [
      { name: 'slow-on-1', command: `if grep -q 1 a.txt; then echo $$ > ${pidFile}; sleep 30; fi; grep -q 2 a.txt && exit 1; true`, timeoutMs: 60_000 },
      { name: 'never', command: 'true', timeoutMs: 1000 },
    ];
    const runner = await GateRunner.open(repo, log(), process.env, () => undefined);
    runner.start('staging', c1, gates);
    const pid = Number(await waitFor(async () => (await readFile(pidFile, 'utf8').catch(() => '')).trim() || undefined, { what: 'the slow gate to start' }));
    expect(runner.report('staging', c1, gates).state).toBe('running');
    runner.start('staging', c2, gates);
    await waitFor(() => { try { process.kill(pid, 0); return undefined; } catch { return true; } }, { what: 'the cancelled gate process to be gone' });
    await runner.idle('staging');
    expect(runner.report('staging', c1, gates).state).toBe('pending'); // cancelled: proves nothing
    expect(runner.report('staging', c2, gates)).toMatchObject({ state: 'failed', gates: [{ name: 'slow-on-1', state: 'failed' }, { name: 'never', state: 'not run' }] });
  });

  it('builtin gates: config validity and repository integrity; an http gate', async () => {
    const { dir, repo, commit } = await repoWith({ 'cascade-sync-config.yaml': 'version: 1\nsandbox: {}\nremotes: []\n' });
    const bad = await commitFiles(dir, { 'cascade-sync-config.yaml': 'version: 2\n' }, 'bad config');
    const server = createServer((req, res) => res.writeHead(req.url === '/ok' ? 200 : 500).end('fine')).listen(0, '127.0.0.1');
    await new Promise((r) => server.once('listening', r));
    const port = (server.address() as { port: number }).port;
    const gates: GateSpec[] = [{ name: 'cfg', builtin: 'config', timeoutMs: 1000 }, { name: 'fsck', builtin: 'integrity', timeoutMs: 1000 }, { name: 'api', http: { url: `http://127.0.0.1:${port}/ok`, status: 200, body: 'fine' }, timeoutMs: 5000 }];
    const runner = await GateRunner.open(repo, log(), process.env, () => undefined);
    runner.start('staging', commit, gates);
    await runner.idle('staging');
    expect(runner.report('staging', commit, gates).state).toBe('passed');
    runner.start('staging', bad, gates);
    await runner.idle('staging');
    const r = runner.report('staging', bad, gates);
    expect(r.gates[0]).toMatchObject({ name: 'cfg', state: 'failed', message: expect.stringContaining('version') });
    server.close();

    // A corrupt object fails the integrity gate.
    const blob = (await git(dir, 'rev-parse', `${bad}:cascade-sync-config.yaml`)).trim();
    const objPath = path.join(dir, '.git/objects', blob.slice(0, 2), blob.slice(2));
    const { chmod } = await import('node:fs/promises');
    await chmod(objPath, 0o644);
    const zlib = await import('node:zlib');
    await writeFile(objPath, zlib.deflateSync(Buffer.from('blob 3\0bad')));
    const fresh = await GateRunner.open(await Repo.open(dir), log(), process.env, () => undefined);
    const integrity: GateSpec[] = [{ name: 'fsck2', builtin: 'integrity', timeoutMs: 1000 }];
    fresh.start('staging', bad, integrity);
    await fresh.idle('staging');
    expect(fresh.report('staging', bad, integrity).gates[0]).toMatchObject({ state: 'failed', message: expect.stringContaining('corrupt') });
  });

  it('remembers a result under the env names only: an empty env keeps earlier results, a new name re-runs, a value is never written to disk', async () => {
    const { repo, commit } = await repoWith({ 'a.txt': '1' });
    const runs = path.join(await makeTmpDir('gate-env-key'), 'runs');
    const plain: GateSpec = { name: 'count', command: `echo run >> ${runs}`, timeoutMs: 10_000 };
    const runner = await GateRunner.open(repo, log(), { PATH: process.env.PATH }, () => undefined);
    runner.start('staging', commit, [plain]);
    await runner.idle('staging');
    // A result remembered before gates had env is still valid for the same gate with env: [].
    expect(runner.report('staging', commit, [{ ...plain, env: [] }]).state).toBe('passed');
    const named: GateSpec = { ...plain, env: [{ name: 'TOKEN', value: 'v4lue-one-secret', reads: ['X'] }] };
    expect(runner.report('staging', commit, [named]).state).toBe('pending');
    runner.start('staging', commit, [named]);
    await runner.idle('staging');
    // Another value of the same variable: the same gate (its result stands); the value is not in the key.
    expect(runner.report('staging', commit, [{ ...named, env: [{ name: 'TOKEN', value: 'v4lue-two-secret', reads: ['X'] }] }]).state).toBe('passed');
    expect((await readFile(runs, 'utf8')).trim().split('\n')).toHaveLength(2);
    const saved = await readFile(path.join(repo.gitdir, 'cascade-sync', 'gates.json'), 'utf8');
    expect(saved).not.toContain('v4lue');
  });
});

describe('the security-scan gate', () => {
  it('fails on a secret with path:line and fingerprint (never the secret), skips encrypted paths, and passes once the finding is allowed', async () => {
    const key = 'AKIA' + 'QWERTYUIOPASDFGH';
    const config = (allow: string[]) => `version: 1\nsandbox: {}\nremotes: []\nsecurity: { allow: ${JSON.stringify(allow)} }\n`;
    const { dir, repo } = await repoWith({ 'cascade-sync-config.yaml': config([]), 'app/settings.py': `DEBUG = True\nAWS_KEY = "${key}"\n`, '.env': `AWS_KEY=${key}\n` });
    const leaky = (await git(dir, 'rev-parse', 'HEAD')).trim();
    const gates: GateSpec[] = [{ name: 'scan', builtin: 'security-scan', timeoutMs: 10_000 }];
    const runner = await GateRunner.open(repo, log(), process.env, () => undefined);
    runner.start('staging', leaky, gates);
    await runner.idle('staging');
    const failed = runner.report('staging', leaky, gates).gates[0] as { state: string; message: string };
    expect(failed.state).toBe('failed');
    expect(failed.message).toMatch(/^1 finding\(s\): app\/settings\.py:2: aws-access-key-id \(fingerprint [0-9a-f]{16}\)/);
    expect(failed.message).not.toContain(key);
    const fingerprint = /fingerprint ([0-9a-f]{16})/.exec(failed.message)![1]!;

    const allowed = await commitFiles(dir, { 'cascade-sync-config.yaml': config([fingerprint]) }, 'accept the finding');
    runner.start('staging', allowed, gates);
    await runner.idle('staging');
    expect(runner.report('staging', allowed, gates).gates[0]).toMatchObject({ state: 'passed' });
  });
});

describe('Notifier', () => {
  it('signs webhooks with an HMAC of timestamp.body, retries a failing delivery, suppresses repeats, and skips a missing notify-send', async () => {
    const { createHmac } = await import('node:crypto');
    const got: { ok: boolean; body: string }[] = [];
    let calls = 0;
    const server = createServer((req, res) => {
      let body = '';
      req.on('data', (d) => (body += d));
      req.on('end', () => {
        calls++;
        if (calls === 1) return void res.writeHead(500).end();
        const ts = String(req.headers['x-cascade-timestamp']);
        const ok = req.headers['x-cascade-signature'] === `sha256=${createHmac('sha256', 'k3y').update(`${ts}.${body}`).digest('hex')}`;
        got.push({ ok, body });
        res.writeHead(204).end();
      });
    }).listen(0, '127.0.0.1');
    await new Promise((r) => server.once('listening', r));
    const port = (server.address() as { port: number }).port;
    const path0 = process.env.PATH;
    process.env.PATH = '/nonexistent';
    try {
      const n = new Notifier({ desktop: true, webhooks: [{ url: `http://127.0.0.1:${port}/`, secret: 'k3y' }] }, log(), new Redactor(), systemClock);
      await n.notify({ event: 'promoted', key: 'staging:abc', message: 'staging: promoted abc' });
      // Queued while the first delivery is retried: the same event for the same key is not queued twice.
      await n.notify({ event: 'promoted', key: 'staging:abc', message: 'staging: promoted abc' });
      expect(await n.settle(20_000)).toBe(true);
      await n.notify({ event: 'promoted', key: 'staging:abc', message: 'staging: promoted abc' });
      n.setLink('http://127.0.0.1:7420/');
      await n.notify({ event: 'promoted', key: 'staging:def', message: 'staging: promoted def' });
      expect(await n.settle(20_000)).toBe(true);
    } finally {
      process.env.PATH = path0;
      server.close();
    }
    expect(calls).toBe(3); // one failed attempt retried, then one delivery per distinct commit
    expect(got.map((g) => g.ok)).toEqual([true, true]);
    expect(got.map((g) => JSON.parse(g.body).message)).toEqual(['staging: promoted abc', 'staging: promoted def']);
    // With the status page served, each notification links to it.
    expect(got.map((g) => JSON.parse(g.body).link)).toEqual([undefined, 'http://127.0.0.1:7420/']);
  });
});
