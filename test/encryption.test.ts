/**
 * Encrypted paths and the secret scan, end to end with a real controller, a real bare remote and
 * native git as the oracle: plaintext never reaches a git object, an unchanged secret makes no new
 * commit, a second sandbox with the key gets the plaintext back, a tampered blob is refused, no key
 * means held back, and a secret in an ordinary file holds back that file only.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { encryptBlob } from '../src/security/encrypt.js';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { git, lsTree, makeBareRepo, revParse, runGit, showFile, tryRevParse } from './helpers/git.js';
import { makeSandbox, run, startController, testEnv, type RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';
import { pipelineConfig } from './helpers/pipeline.js';

let controllers: RunningController[] = [];
afterEach(async () => {
  for (const c of controllers) await c.stop();
  controllers = [];
  await cleanupTmpDirs();
});

const SECRET = 'API_TOKEN=plaintext-secret-123';

async function status(dir: string) {
  return JSON.parse(await readFile(path.join(dir, '.git/cascade-sync/status.json'), 'utf8'));
}

/** Every object of a repository, as `git cat-file -p` would show each (all of them, in one batch). */
async function allObjects(repo: string): Promise<string> {
  const r = await runGit({ cwd: repo, args: ['cat-file', '--batch-all-objects', '--batch', '--unordered'] });
  if (r.code !== 0) throw new Error(r.stderr);
  return r.stdout;
}

async function pushed(remote: string, dir: string) {
  return waitFor(async () => {
    const tip = await tryRevParse(remote, 'develop');
    return tip && tip === (await revParse(dir, 'develop')) ? tip : undefined;
  }, { what: 'develop pushed' });
}

describe('encrypted paths', () => {
  it('stores .env encrypted (no plaintext in any object or in git log -p), plaintext in the sandbox; unchanged content makes no commit; a second sandbox with the key gets the plaintext; a tampered blob is held while the rest syncs', async () => {
    const remote = path.join(await makeTmpDir('remote'), 'site.git');
    await makeBareRepo(remote, { initialBranch: 'develop' });
    const { dir } = await makeSandbox({ remotes: [{ name: 'origin', url: remote }], files: { '.env': `${SECRET}\n`, 'secrets/db.txt': 'password=hunter2-but-longer-9f8e7d\n', 'app.txt': 'app\n' } });
    const keyFile = (await readdir(path.join(testEnv().HOME!, '.config/cascade-sync/keys'))).map((f) => path.join(testEnv().HOME!, '.config/cascade-sync/keys', f)).find((f) => f.includes(path.basename(dir)))!;
    expect((await stat(keyFile)).mode & 0o777).toBe(0o600);
    controllers.push(await startController(dir));
    const first = await pushed(remote, dir);
    expect((await lsTree(remote, 'develop')).map((e) => e.path)).toEqual(expect.arrayContaining(['.env', 'secrets/db.txt', 'app.txt']));
    const blob = await showFile(remote, 'develop', '.env');
    expect(blob.subarray(0, 16).toString()).toBe('CASCADE-SYNC-ENC');
    for (const repo of [remote, dir]) {
      const objects = await allObjects(repo);
      expect(objects.length).toBeGreaterThan(100);
      expect(objects).not.toContain('plaintext-secret-123');
      expect(objects).not.toContain('hunter2-but-longer');
    }
    expect(await git(remote, 'log', '-p', '--all')).not.toContain('plaintext-secret-123');
    expect(await readFile(path.join(dir, '.env'), 'utf8')).toBe(`${SECRET}\n`);
    // Native git agrees the sandbox is clean (the index holds the ciphertext's id with the plaintext's stat).
    expect((await git(dir, 'status', '--porcelain')).trim()).toBe('');

    // The same content written again: the same ciphertext, so no commit; a real change commits new ciphertext.
    await writeFile(path.join(dir, '.env'), `${SECRET}\n`);
    await writeFile(path.join(dir, 'app.txt'), 'app v2\n');
    const second = await waitFor(async () => ((await revParse(dir, 'develop')) !== first ? revParse(dir, 'develop') : undefined), { what: 'the app.txt commit' });
    expect((await git(dir, 'diff', '--name-only', first, second)).trim()).toBe('app.txt');
    await writeFile(path.join(dir, '.env'), `${SECRET}\nDEBUG=1\n`);
    const third = await waitFor(async () => ((await revParse(dir, 'develop')) !== second ? revParse(dir, 'develop') : undefined), { what: 'the .env commit' });
    expect((await git(dir, 'diff', '--name-only', second, third)).trim()).toBe('.env');
    await pushed(remote, dir);

    // A second sandbox on another machine, with a copy of the key: the remote's .env arrives in plaintext.
    const other = await makeTmpDir('other');
    await writeFile(path.join(other, 'cascade-sync-config.yaml'), `version: 1\nsandbox: { debounce: 300ms }\nremotes:\n  - { name: origin, url: ${JSON.stringify(remote)} }\nintervals: { fetch: 1s }\nsecurity: { key: ${JSON.stringify(keyFile)} }\nnotifications: { desktop: false }\n`);
    expect((await run(other, ['init'])).code).toBe(0);
    controllers.push(await startController(other));
    await waitFor(async () => (await readFile(path.join(other, '.env'), 'utf8').catch(() => '')) === `${SECRET}\nDEBUG=1\n` || undefined, { what: '.env decrypted into the second sandbox', timeoutMs: 60_000 });
    await waitFor(async () => (await readFile(path.join(other, 'secrets/db.txt'), 'utf8').catch(() => '')) === 'password=hunter2-but-longer-9f8e7d\n' || undefined, { what: 'secrets/db.txt decrypted into the second sandbox' });

    // Someone tampers with the ciphertext on the remote (or encrypts it with another key): that file is
    // held (not written, reported with a hint) while the rest of the commit arrives.
    const tip = await revParse(remote, 'develop');
    const bad = Buffer.from(await showFile(remote, 'develop', '.env'));
    bad[bad.length - 3]! ^= 0x40;
    const badBlob = (await runGit({ cwd: remote, args: ['hash-object', '-w', '--stdin'], input: bad })).stdout.trim();
    const appBlob = (await runGit({ cwd: remote, args: ['hash-object', '-w', '--stdin'], input: 'app v3\n' })).stdout.trim();
    const tree = (await git(remote, 'ls-tree', tip)).replace(/^(100644 blob )[0-9a-f]{40}(\t\.env)$/m, `$1${badBlob}$2`).replace(/^(100644 blob )[0-9a-f]{40}(\tapp\.txt)$/m, `$1${appBlob}$2`);
    const newTree = (await runGit({ cwd: remote, args: ['mktree'], input: tree })).stdout.trim();
    const tampered = (await git(remote, 'commit-tree', newTree, '-p', tip, '-m', 'tampered')).trim();
    await git(remote, 'update-ref', 'refs/heads/develop', tampered);
    await waitFor(async () => (await readFile(path.join(other, 'app.txt'), 'utf8').catch(() => '')) === 'app v3\n' || undefined, { what: 'the rest of the tampered commit synced', timeoutMs: 30_000 });
    const held = await waitFor(async () => {
      const s = await status(other);
      return s.sandbox.heldBack.includes('.env') && s.sandbox.keyProblem?.reason === 'EncryptedWithAnotherKey' && s.sandbox.keyProblem.message.includes('.env') ? s : undefined;
    }, { what: 'the tampered .env held and reported', timeoutMs: 60_000 });
    expect(held.sandbox.keyProblem.hint).toContain('cascade-sync key import');
    expect(await readFile(path.join(other, '.env'), 'utf8')).toBe(`${SECRET}\nDEBUG=1\n`);
    // Never committed over: develop still holds the tampered blob, in both sandboxes' remotes.
    expect((await git(other, 'rev-parse', 'develop:.env')).trim()).toBe(badBlob);
    expect((await status(other)).reconcilers.find((r: { name: string }) => r.name === 'remote:origin')?.lastError?.reason).not.toBe('EncryptedBlobTampered');

    // A teammate with the key puts the good ciphertext back (the plaintext the file already holds, so nothing
    // is written): the file is released and the report goes away.
    const goodBlob = (await git(remote, 'rev-parse', `${tip}:.env`)).trim();
    await waitFor(async () => {
      const now = await revParse(remote, 'develop');
      const fixedTree = (await runGit({ cwd: remote, args: ['mktree'], input: (await git(remote, 'ls-tree', now)).replace(/^(100644 blob )[0-9a-f]{40}(\t\.env)$/m, `$1${goodBlob}$2`) })).stdout.trim();
      const fixed = (await git(remote, 'commit-tree', fixedTree, '-p', now, '-m', 'good .env back')).trim();
      return (await runGit({ cwd: remote, args: ['update-ref', 'refs/heads/develop', fixed, now] })).code === 0 || undefined;
    }, { what: 'the good .env committed on the remote' });
    await waitFor(async () => {
      const s = await status(other);
      return (await git(other, 'rev-parse', 'develop:.env')).trim() === goodBlob && !s.sandbox.heldBack.includes('.env') && s.sandbox.keyProblem === undefined || undefined;
    }, { what: 'the resolved .env released and no longer reported', timeoutMs: 60_000 });
    expect(await readFile(path.join(other, '.env'), 'utf8')).toBe(`${SECRET}\nDEBUG=1\n`);
  }, 180_000);

  it('without a usable key holds encrypted paths back (never plaintext) and says why in status', async () => {
    const remote = path.join(await makeTmpDir('remote'), 'r.git');
    await makeBareRepo(remote, { initialBranch: 'develop' });
    const { dir } = await makeSandbox({ remotes: [{ name: 'origin', url: remote }], files: { '.env': `${SECRET}\n` }, extra: 'security: { key: ./no-such.key }' });
    controllers.push(await startController(dir));
    await writeFile(path.join(dir, 'secrets.pem'), '-----BEGIN PRIVATE KEY-----\nxyz\n');
    await writeFile(path.join(dir, 'app.txt'), 'app');
    await waitFor(async () => (await lsTree(remote, 'develop').catch(() => [])).some((e) => e.path === 'app.txt') || undefined, { what: 'the push' });
    const paths = (await lsTree(remote, 'develop')).map((e) => e.path);
    expect(paths).not.toContain('.env');
    expect(paths).not.toContain('secrets.pem');
    expect(await git(remote, 'log', '-p', '--all')).not.toContain('plaintext-secret-123');
    await waitFor(async () => (await status(dir)).sandbox.heldBack.length === 2 || undefined, { what: 'status to list held-back files' });
    const st = await status(dir);
    expect(st.sandbox.heldBack).toEqual(['.env', 'secrets.pem']);
    expect(st.sandbox.keyProblem.reason).toBe('EncryptionKeyUnreadable');
    const text = (await run(dir, ['status'])).stdout;
    expect(text).toMatch(/held back: +\.env, secrets\.pem/);
    expect(text).toContain('no-such.key');
  });
});

describe('an encrypted file left staged by something other than the batch', () => {
  it('goes back to the branch\'s entry before a commit (without a key: not committed at all)', async () => {
    const remote = path.join(await makeTmpDir('remote'), 'r.git');
    await makeBareRepo(remote, { initialBranch: 'develop' });
    const { dir } = await makeSandbox({ remotes: [{ name: 'origin', url: remote }], files: { '.env': `${SECRET}\n`, 'app.txt': 'app\n' }, extra: 'security: { key: ./no-such.key }' });
    controllers.push(await startController(dir));
    const first = await pushed(remote, dir);
    // What a merge can leave: a teammate's .env (ciphertext of another key) staged, the file itself untouched.
    const r = await runGit({ cwd: dir, args: ['hash-object', '-w', '--stdin'], input: encryptBlob(randomBytes(32), Buffer.from('API_TOKEN=a-teammates-secret\n')) });
    await git(dir, 'update-index', '--add', '--cacheinfo', `100644,${r.stdout.trim()},.env`);
    await writeFile(path.join(dir, 'app.txt'), 'app 2\n');
    await waitFor(async () => ((await pushed(remote, dir)) !== first ? true : undefined), { what: 'the commit of app.txt pushed' });
    const paths = (await lsTree(remote, 'develop')).map((e) => e.path);
    expect(paths).toContain('app.txt');
    expect(paths).not.toContain('.env');
    // The index entry is the branch's again (none: .env was never committed), the file stays as it was.
    expect(await git(dir, 'ls-files', '--', '.env')).toBe('');
    expect(await readFile(path.join(dir, '.env'), 'utf8')).toBe(`${SECRET}\n`);
  });
});

describe('encrypted paths in releases', () => {
  it('deploys encrypted files in plaintext, and the release verifies against its manifest (no drift)', async () => {
    const dir = await makeTmpDir('sandbox');
    const deployRoot = await makeTmpDir('deploy');
    const logFile = path.join(await makeTmpDir('logs'), 'cascade-sync.log');
    await writeFile(path.join(dir, 'app.txt'), 'v1\n');
    await writeFile(path.join(dir, '.env'), `${SECRET}\n`);
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), pipelineConfig({ signers: [], logFile, deployRoot }));
    expect((await run(dir, ['init'])).code).toBe(0);
    expect((await showFile(dir, 'staging', '.env')).subarray(0, 16).toString()).toBe('CASCADE-SYNC-ENC');
    controllers.push(await startController(dir));
    await waitFor(async () => (await readFile(path.join(deployRoot, 'staging/current/.env'), 'utf8').catch(() => '')) === `${SECRET}\n` || undefined, { what: 'staging deployed with .env in plaintext' });
    await waitFor(async () => (await status(dir)).environments.find((e: { name: string }) => e.name === 'staging')?.integrity?.state === 'intact' || undefined, { what: 'staging verified intact', timeoutMs: 30_000 }).catch(async (e: Error) => {
      throw new Error(`${e.message}: ${JSON.stringify((await status(dir)).environments.find((x: { name: string }) => x.name === 'staging')?.integrity)}`);
    });
    const health = await run(dir, ['health', '--json']);
    const integrity = (JSON.parse(health.stdout).checks as { name: string; ok: boolean; message: string }[]).find((c) => c.name === 'staging/integrity');
    expect(integrity?.ok, integrity?.message).toBe(true);
  }, 90_000);
});

describe('the secret scan before every commit', () => {
  it('holds back only the file with a secret (file:line, rule, fingerprint; never the secret), notifies, commits the rest, and commits it once security.allow accepts the fingerprint; an oversized file is held back too', async () => {
    const remote = path.join(await makeTmpDir('remote'), 'r.git');
    await makeBareRepo(remote, { initialBranch: 'develop' });
    const token = 'ghp_' + 'a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8';
    const { dir, logFile } = await makeSandbox({ remotes: [{ name: 'origin', url: remote }], extra: 'security: { maxFileSize: 1KB }' });
    controllers.push(await startController(dir));
    await writeFile(path.join(dir, 'deploy.sh'), `#!/bin/sh\necho deploying\nexport GITHUB_TOKEN=${token}\n`);
    await writeFile(path.join(dir, 'big.bin'), Buffer.alloc(4096, 7));
    await writeFile(path.join(dir, 'readme.md'), 'fine\n');
    await waitFor(async () => (await lsTree(remote, 'develop').catch(() => [])).some((e) => e.path === 'readme.md') || undefined, { what: 'the rest of the batch pushed' });
    const tree = (await lsTree(remote, 'develop')).map((e) => e.path);
    expect(tree).not.toContain('deploy.sh');
    expect(tree).not.toContain('big.bin');
    const findings = await waitFor(async () => {
      const f = (await status(dir)).sandbox.findings;
      return f?.length === 2 ? f : undefined;
    }, { what: 'both files in status' });
    const secret = findings.find((f: { path: string }) => f.path === 'deploy.sh');
    expect(secret).toMatchObject({ path: 'deploy.sh', line: 3, rule: 'github-token' });
    expect(findings.find((f: { path: string }) => f.path === 'big.bin')).toMatchObject({ rule: 'file-too-large' });
    const shown = (await run(dir, ['status'])).stdout;
    expect(shown).toContain('held back:  deploy.sh:3: github-token');
    expect(shown).toContain(secret.fingerprint);
    for (const text of [shown, JSON.stringify(await status(dir)), await readFile(logFile, 'utf8'), await git(remote, 'log', '-p', '--all')]) expect(text).not.toContain(token);
    expect(await readFile(logFile, 'utf8')).toMatch(/notify secret-found: deploy\.sh:3/);

    // A person accepts this finding: the file is committed at the next look.
    const config = await readFile(path.join(dir, 'cascade-sync-config.yaml'), 'utf8');
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), config.replace('security: { maxFileSize: 1KB }', `security: { maxFileSize: 1KB, allow: ["${secret.fingerprint}"] }`));
    await waitFor(async () => (await lsTree(remote, 'develop')).some((e) => e.path === 'deploy.sh') || undefined, { what: 'the accepted file committed and pushed', timeoutMs: 30_000 });
    await waitFor(async () => (await status(dir)).sandbox.findings.length === 1 || undefined, { what: 'only big.bin still held back' });
  }, 90_000);
});
