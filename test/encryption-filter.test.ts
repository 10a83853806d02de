/**
 * `security.encrypt` as a git filter (issue 14) and keys in a team (issue 15), with real git, the real
 * filter process (bin/cascade-sync.js run by git; `npx tsc` builds dist/ first), real controllers and a
 * real bare remote: native `git status`, `diff`, `checkout`, `stash` and a second clone show plaintext in
 * files and keep ciphertext in objects; the v1 blob format still reads; the same plaintext gives the
 * same blob; without a key nothing is stored; another person's file is held while the rest syncs.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { git, lsTree, makeBareRepo, revParse, runGit, tryRevParse } from './helpers/git.js';
import { configText, makeSandbox, run, startController, testEnv, type RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';
import { createKeyFile, defaultKeyFilePath } from '../src/security/keyfile.js';
import { EncryptionKey, encryptBlob, isEncryptedBlob } from '../src/security/encrypt.js';
import { attributeLines, setUpEncryptionFilter, undecryptableInBranches } from '../src/security/git-filter.js';
import { BlobPolicy } from '../src/security/blob-policy.js';

let controllers: RunningController[] = [];
afterEach(async () => {
  for (const c of controllers) await c.stop();
  controllers = [];
  await cleanupTmpDirs();
});

const SECRET = 'API_TOKEN=plaintext-secret-4242';

/** Every object of a repository as `git cat-file --batch` prints it. */
async function allObjects(repo: string): Promise<string> {
  const r = await runGit({ cwd: repo, args: ['cat-file', '--batch-all-objects', '--batch', '--unordered'] });
  if (r.code !== 0) throw new Error(r.stderr);
  return r.stdout;
}

/** The raw bytes of an object, as `git cat-file -p` shows them (no filter runs there). */
async function catFile(repo: string, spec: string): Promise<Buffer> {
  return (await import('./helpers/git.js')).showFile(repo, spec.split(':')[0]!, spec.split(':')[1]!);
}

async function status(dir: string) {
  return JSON.parse(await readFile(path.join(dir, '.git/cascade-sync/status.json'), 'utf8'));
}

describe('encrypted paths through native git', () => {
  it('git status, diff, stash, checkout and add show plaintext in files and keep ciphertext in objects; unchanged plaintext gives the same blob', async () => {
    const { dir } = await makeSandbox({ files: { '.env': `${SECRET}\n`, 'app.txt': 'app\n' } });
    // init registered the filter process and the attributes.
    expect(await git(dir, 'config', '--get', 'filter.cascade-sync.process')).toMatch(/bin\/cascade-sync\.js'? filter-process/);
    expect((await git(dir, 'config', '--get', 'filter.cascade-sync.required')).trim()).toBe('true');
    expect(await readFile(path.join(dir, '.git/info/attributes'), 'utf8')).toContain('.env filter=cascade-sync diff=cascade-sync');
    expect(isEncryptedBlob(await catFile(dir, 'HEAD:.env'))).toBe(true);
    const first = (await git(dir, 'rev-parse', 'HEAD:.env')).trim();
    // No assume-unchanged any more: native git itself sees the file as unchanged.
    expect((await git(dir, 'ls-files', '-v', '.env')).startsWith('H ')).toBe(true);
    await writeFile(path.join(dir, '.env'), `${SECRET}\n`); // same plaintext, new mtime: git re-cleans it
    expect((await git(dir, 'status', '--porcelain')).trim()).toBe('');
    expect((await git(dir, 'hash-object', '.env')).trim()).toBe(first);

    // An edit: native status and diff see it, in plaintext (textconv).
    await writeFile(path.join(dir, '.env'), `${SECRET}\nDEBUG=1\n`);
    expect((await git(dir, 'status', '--porcelain')).trim()).toBe('M .env');
    const diff = await git(dir, 'diff', '--', '.env');
    expect(diff).toContain(`+DEBUG=1`);
    expect(diff).toContain(` ${SECRET}`);

    // stash and pop: the file goes back to the committed plaintext and returns.
    await git(dir, 'stash');
    expect(await readFile(path.join(dir, '.env'), 'utf8')).toBe(`${SECRET}\n`);
    await git(dir, 'stash', 'pop');
    expect(await readFile(path.join(dir, '.env'), 'utf8')).toBe(`${SECRET}\nDEBUG=1\n`);

    // git add + commit: ciphertext in the object, plaintext in the file.
    await git(dir, 'add', '.env');
    await git(dir, 'commit', '-q', '-m', 'debug on');
    const second = await catFile(dir, 'HEAD:.env');
    expect(isEncryptedBlob(second)).toBe(true);
    expect(second.toString('latin1')).not.toContain('DEBUG=1');

    // checkout of the older version and back: plaintext each time, status clean.
    await git(dir, 'checkout', '-q', 'HEAD~1', '--', '.env');
    expect(await readFile(path.join(dir, '.env'), 'utf8')).toBe(`${SECRET}\n`);
    expect((await git(dir, 'rev-parse', ':.env')).trim()).toBe(first);
    await git(dir, 'checkout', '-q', 'HEAD', '--', '.env');
    expect(await readFile(path.join(dir, '.env'), 'utf8')).toBe(`${SECRET}\nDEBUG=1\n`);
    expect((await git(dir, 'status', '--porcelain')).trim()).toBe('');
    // diff between commits is readable too, and no object anywhere holds the plaintext.
    expect(await git(dir, 'diff', 'HEAD~1', 'HEAD', '--', '.env')).toContain('+DEBUG=1');
    const objects = await allObjects(dir);
    expect(objects).not.toContain('plaintext-secret-4242');
    expect(objects).not.toContain('DEBUG=1');
  }, 120_000);

  it('reads blobs of the version-1 format written before the filter (a fixed vector), and a clean gives that same blob back', async () => {
    const dir = await makeTmpDir('v1');
    await git(dir, 'init', '-q', '-b', 'develop');
    const keyFile = path.join(await makeTmpDir('v1-key'), 'k.key');
    const key = await createKeyFile(keyFile, Buffer.alloc(32, 7));
    // encryptBlob(key 07*32, "OLD=format-v1\n") as the assume-unchanged era committed it (hash-object --no-filters).
    const v1 = Buffer.from('Q0FTQ0FERS1TWU5DLUVOQwGaTAAwrd4IXVQTTHj9XSQJmghtY5naYTKGt95csH47dLlRVzrWOt9jCes=', 'base64');
    const oid = (await runGit({ cwd: dir, args: ['hash-object', '-w', '--no-filters', '--stdin'], input: v1 })).stdout.trim();
    await runGit({ cwd: dir, args: ['update-index', '--add', '--cacheinfo', `100644,${oid},.env`] });
    await git(dir, 'commit', '-q', '-m', 'v1 blob');
    await git(dir, 'update-index', '--assume-unchanged', '.env');
    const policy = new BlobPolicy({ encrypt: ['.env'], maxFileSizeBytes: 1 << 20, allow: [] }, key, keyFile);
    const lines = await setUpEncryptionFilter({ dir, gitdir: path.join(dir, '.git') }, { encrypt: ['.env'], policy });
    // The migration takes the assume-unchanged mark off.
    expect(lines.join('\n')).toContain('no longer marked assume-unchanged');
    expect((await git(dir, 'ls-files', '-v', '.env')).startsWith('H ')).toBe(true);
    await git(dir, 'checkout', '-q', 'HEAD', '--', '.env');
    expect(await readFile(path.join(dir, '.env'), 'utf8')).toBe('OLD=format-v1\n');
    expect((await git(dir, 'hash-object', '.env')).trim()).toBe(oid);
    expect((await git(dir, 'status', '--porcelain')).trim()).toBe('');
  }, 60_000);

  it('a new process finds what the branches hold for another key from the listing the last one kept, commits made while stopped included', async () => {
    const dir = await makeTmpDir('listing');
    await git(dir, 'init', '-q', '-b', 'develop');
    const keyFile = path.join(await makeTmpDir('listing-key'), 'k.key');
    const key = await createKeyFile(keyFile, Buffer.alloc(32, 3));
    const settings = { encrypt: ['.env', 'secrets/**'], maxFileSizeBytes: 1 << 20, allow: [] };
    const repo = { dir, gitdir: path.join(dir, '.git') };
    /** Commits `files` as given (ciphertext included) with plumbing: no filter runs. */
    const commitRaw = async (files: Record<string, Buffer>) => {
      for (const [p, bytes] of Object.entries(files)) {
        const oid = (await runGit({ cwd: dir, args: ['hash-object', '-w', '--no-filters', '--stdin'], input: bytes })).stdout.trim();
        await runGit({ cwd: dir, args: ['update-index', '--add', '--cacheinfo', `100644,${oid},${p}`] });
      }
      await git(dir, 'commit', '-q', '-m', 'raw');
    };
    const other = Buffer.alloc(32, 9);
    await commitRaw({ 'app.txt': Buffer.from('app\n'), '.env': encryptBlob(key, Buffer.from('MINE=1\n')), 'secrets/a': encryptBlob(other, Buffer.from('a\n')) });
    // Each new BlobPolicy is what a new process has: no listing in memory.
    const fresh = () => new BlobPolicy(settings, key, keyFile);
    expect(await undecryptableInBranches(repo, fresh(), key)).toEqual(['secrets/a']);
    const saved = JSON.parse(await readFile(path.join(dir, '.git/cascade-sync/encrypted-files.json'), 'utf8'));
    expect(saved.listings[0].treeish).toBe((await revParse(dir, 'develop')).trim());
    expect(saved.listings[0].entries.map((e: [string, string]) => e[0]).sort()).toEqual(['.env', 'secrets/a']);
    // While stopped: a teammate's file arrives, one is re-encrypted with our key, one is deleted.
    await commitRaw({ 'secrets/b': encryptBlob(other, Buffer.from('b\n')), 'secrets/a': encryptBlob(key, Buffer.from('a\n')) });
    expect(await undecryptableInBranches(repo, fresh(), key)).toEqual(['secrets/b']);
    await git(dir, 'rm', '-q', '--cached', 'secrets/b');
    await git(dir, 'commit', '-q', '-m', 'gone');
    expect(await undecryptableInBranches(repo, fresh(), key)).toEqual([]);
    // What a new process starts from is the kept listing, not a new ls-tree of the whole tree: an
    // entry put into it (a blob of another key that the tree does not hold) is reported.
    const ghost = (await runGit({ cwd: dir, args: ['hash-object', '-w', '--no-filters', '--stdin'], input: encryptBlob(other, Buffer.from('g\n')) })).stdout.trim();
    const kept = JSON.parse(await readFile(path.join(dir, '.git/cascade-sync/encrypted-files.json'), 'utf8'));
    const [newest] = kept.listings;
    await writeFile(path.join(dir, '.git/cascade-sync/encrypted-files.json'), JSON.stringify({ ...kept, listings: [{ ...newest, entries: [...newest.entries, ['secrets/ghost', ghost]] }] }));
    expect(await undecryptableInBranches(repo, fresh(), key)).toEqual(['secrets/ghost']);
    // Branches at different trees (staging left behind) are each kept: a new process answers both
    // from the kept listings, the older tree too (shown by an entry put into its listing).
    await git(dir, 'branch', '-f', 'staging', 'develop~1');
    expect(await undecryptableInBranches(repo, fresh(), key)).toEqual(['secrets/b', 'secrets/ghost']);
    const both = JSON.parse(await readFile(path.join(dir, '.git/cascade-sync/encrypted-files.json'), 'utf8'));
    expect(both.listings.map((l: { treeish: string }) => l.treeish).sort()).toEqual([(await revParse(dir, 'develop')).trim(), (await revParse(dir, 'develop~1')).trim()].sort());
    const older = both.listings.find((l: { treeish: string }) => l.treeish !== newest.treeish);
    older.entries.push(['secrets/older-ghost', ghost]);
    await writeFile(path.join(dir, '.git/cascade-sync/encrypted-files.json'), JSON.stringify(both));
    expect(await undecryptableInBranches(repo, fresh(), key)).toEqual(['secrets/b', 'secrets/ghost', 'secrets/older-ghost']);
    await git(dir, 'branch', '-D', 'staging');
    // A kept listing of a tree git no longer has (or of other patterns) is not used: the tree is listed again.
    await writeFile(path.join(dir, '.git/cascade-sync/encrypted-files.json'), JSON.stringify({ ...saved, listings: [{ treeish: 'f'.repeat(40), entries: [] }] }));
    await commitRaw({ 'secrets/c': encryptBlob(other, Buffer.from('c\n')) });
    expect(await undecryptableInBranches(repo, fresh(), key)).toEqual(['secrets/c']);
  }, 60_000);

  it('the sandbox\'s own commits keep the listing of encrypted files at the head in step (no diff of trees at the next start)', async () => {
    const { dir } = await makeSandbox({ files: { '.env': 'A=0\n', 'app.txt': 'app\n' } });
    controllers.push(await startController(dir));
    const listings = async (): Promise<{ treeish: string; entries: [string, string][] }[]> =>
      JSON.parse(await readFile(path.join(dir, '.git/cascade-sync/encrypted-files.json'), 'utf8').catch(() => '{"listings":[]}')).listings;
    const started = (await revParse(dir, 'develop')).trim();
    await waitFor(async () => (await listings()).some((l) => l.treeish === started) || undefined, { what: 'the start listed the head' });
    let head = started;
    const committed = async () => {
      head = await waitFor(async () => {
        const now = (await revParse(dir, 'develop')).trim();
        return now !== head && (await git(dir, 'status', '--porcelain')).trim() === '' ? now : undefined;
      }, { what: 'a commit', timeoutMs: 20_000 });
    };
    for (let i = 1; i <= 3; i++) {
      await writeFile(path.join(dir, '.env'), `A=${i}\n`);
      await writeFile(path.join(dir, 'app.txt'), `app ${i}\n`);
      await committed();
      // Each commit's listing replaces its parent's: the head is listed, with the blob it records.
      const [newest, ...rest] = await waitFor(async () => { const l = await listings(); return l[0]?.treeish === head ? l : undefined; }, { what: `the listing of commit ${i}` });
      expect(newest!.entries).toEqual([['.env', (await git(dir, 'rev-parse', `${head}:.env`)).trim()]]);
      expect(rest.map((l) => l.treeish)).not.toContain((await git(dir, 'rev-parse', `${head}~1`)).trim());
    }
    await rm(path.join(dir, '.env'));
    await committed();
    const [gone] = await waitFor(async () => { const l = await listings(); return l[0]?.treeish === head ? l : undefined; }, { what: 'the listing after .env was deleted' });
    expect(gone!.entries).toEqual([]);
  }, 60_000);

  it('without a key: the clean filter refuses (native git add fails), the controller holds the file back, and its plaintext is in no object', async () => {
    const remote = path.join(await makeTmpDir('remote'), 'r.git');
    await makeBareRepo(remote, { initialBranch: 'develop' });
    const { dir } = await makeSandbox({ remotes: [{ name: 'origin', url: remote }], files: { 'app.txt': 'app\n' }, extra: 'security: { key: ./no-such.key }' });
    controllers.push(await startController(dir));
    await writeFile(path.join(dir, '.env'), `${SECRET}\n`);
    await writeFile(path.join(dir, 'app.txt'), 'app 2\n');
    await waitFor(async () => ((await git(remote, 'show', 'develop:app.txt').catch(() => '')) === 'app 2') || undefined, { what: 'app.txt pushed', timeoutMs: 30_000 });
    await waitFor(async () => (await status(dir)).sandbox.heldBack.includes('.env') || undefined, { what: '.env held back in status' });
    const add = await runGit({ cwd: dir, args: ['add', '.env'] });
    expect(add.code).not.toBe(0);
    expect(add.stderr).toContain("clean filter 'cascade-sync' failed");
    expect(add.stderr).toContain('cascade-sync key import');
    for (const repo of [dir, remote]) expect(await allObjects(repo)).not.toContain('plaintext-secret-4242');
    expect((await lsTree(remote, 'develop')).map((e) => e.path)).not.toContain('.env');
  }, 90_000);
});

describe('keys in a team', () => {
  it('holds a file encrypted with another key (not written, status says why and how) while the rest keeps syncing; init in a clone says how to install the team key; key export/import brings plaintext', async () => {
    const remote = path.join(await makeTmpDir('remote'), 'team.git');
    await makeBareRepo(remote, { initialBranch: 'develop' });
    const a = await makeSandbox({ remotes: [{ name: 'origin', url: remote }], files: { 'app.txt': 'app\n' } });
    controllers.push(await startController(a.dir));
    await waitFor(async () => (await tryRevParse(remote, 'develop')) || undefined, { what: 'A pushed' });

    // B has a key of its own (made before its init), so A's files do not decrypt there.
    const b = await makeTmpDir('b');
    await createKeyFile(defaultKeyFilePath(b, testEnv()));
    await writeFile(path.join(b, 'cascade-sync-config.yaml'), configText({ remotes: [{ name: 'origin', url: remote }], logFile: path.join(await makeTmpDir('blog'), 'b.log') }));
    expect((await run(b, ['init'])).code).toBe(0);
    controllers.push(await startController(b));

    // A commits a secret (with A's key) and an ordinary change.
    await writeFile(path.join(a.dir, '.env'), `${SECRET}\n`);
    await writeFile(path.join(a.dir, 'app.txt'), 'app v2\n');
    await waitFor(async () => ((await git(remote, 'show', 'develop:app.txt').catch(() => '')) === 'app v2' && (await lsTree(remote, 'develop')).some((e) => e.path === '.env')) || undefined, { what: 'A pushed .env and app.txt', timeoutMs: 30_000 });
    const aBlob = (await git(remote, 'rev-parse', 'develop:.env')).trim();

    // B: app.txt arrives, .env is held (not written) and reported with the hint.
    await waitFor(async () => (await readFile(path.join(b, 'app.txt'), 'utf8').catch(() => '')) === 'app v2\n' || undefined, { what: 'app.txt synced into B', timeoutMs: 45_000 });
    const held = await waitFor(async () => {
      const s = await status(b);
      return s.sandbox.heldBack.includes('.env') && s.sandbox.keyProblem?.reason === 'EncryptedWithAnotherKey' ? s : undefined;
    }, { what: 'B reports .env held for another key', timeoutMs: 30_000 });
    expect(held.sandbox.keyProblem.hint).toContain('cascade-sync key import');
    expect(await readFile(path.join(b, '.env'), 'utf8').catch(() => 'absent')).toBe('absent');
    const shown = (await run(b, ['status'])).stdout;
    expect(shown).toMatch(/held back: .*\.env/);
    expect(shown).toContain('cascade-sync key import');
    for (const r of (await status(b)).reconcilers) expect(r.lastError?.reason).not.toBe('EncryptedBlobTampered');

    // The rest goes on: B's own edit reaches the remote, and A's .env is never committed over.
    await writeFile(path.join(b, 'b.txt'), 'from b\n');
    await waitFor(async () => ((await git(remote, 'show', 'develop:b.txt').catch(() => '')) === 'from b') || undefined, { what: 'B pushed b.txt', timeoutMs: 45_000 });
    expect((await git(remote, 'rev-parse', 'develop:.env')).trim()).toBe(aBlob);
    await waitFor(async () => (await readFile(path.join(a.dir, 'b.txt'), 'utf8').catch(() => '')) === 'from b\n' || undefined, { what: 'b.txt synced into A', timeoutMs: 45_000 });
    expect(await readFile(path.join(a.dir, '.env'), 'utf8')).toBe(`${SECRET}\n`);

    // C: a plain `git clone` (no filter yet: .env is ciphertext), then init says how to get the team's key.
    const c = path.join(await makeTmpDir('c'), 'site');
    await git(path.dirname(c), 'clone', '-q', '-b', 'develop', remote, c);
    expect(isEncryptedBlob(await readFile(path.join(c, '.env')))).toBe(true);
    const init = await run(c, ['init']);
    expect(init.code).toBe(0);
    expect(init.stdout).toMatch(/history has encrypted files that are stored encrypted and this sandbox has no key: \.env/);
    expect(init.stdout).toContain('cascade-sync key import');
    expect(init.stdout).not.toContain('created the encryption key');
    for (const repo of [c, remote]) expect(await allObjects(repo)).not.toContain('plaintext-secret-4242');

    // A exports its key, C imports it: .env decrypted in place, still ciphertext in the objects, status clean.
    const exported = await run(a.dir, ['key', 'export']);
    expect(exported.code).toBe(0);
    expect(exported.stderr).toContain('private channel');
    const keyText = exported.stdout.trim();
    expect(EncryptionKey.fromBytes(Buffer.from(keyText, 'base64')).fingerprint).toMatch(/^[0-9a-f]{16}$/);
    const keyFile = path.join(await makeTmpDir('handover'), 'team.key');
    await writeFile(keyFile, `${keyText}\n`, { mode: 0o600 });
    const imported = await run(c, ['key', 'import', keyFile]);
    expect(imported.code).toBe(0);
    expect(imported.stdout).toContain('decrypted 1 file(s)');
    expect(await readFile(path.join(c, '.env'), 'utf8')).toBe(`${SECRET}\n`);
    expect(isEncryptedBlob(await catFile(c, 'HEAD:.env'))).toBe(true);
    expect((await git(c, 'status', '--porcelain')).trim()).toBe('');
    expect(await git(c, 'log', '-p', '--', '.env')).toContain(`+${SECRET}`);
    // Importing the same key again changes nothing; another key never overwrites it.
    expect((await run(c, ['key', 'import', keyFile])).stdout).toContain('already installed');
    const otherKey = path.join(path.dirname(keyFile), 'other.key');
    await writeFile(otherKey, `${Buffer.alloc(32, 9).toString('base64')}\n`, { mode: 0o600 });
    const refused = await run(c, ['key', 'import', otherKey]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain('never overwrites a key');
    expect(await revParse(remote, 'develop')).toMatch(/^[0-9a-f]{40}$/);
  }, 240_000);
});

describe('the attributes written for security.encrypt', () => {
  it('turn gitignore-style patterns into gitattributes ones', () => {
    expect(attributeLines(['.env', '.env.*', '**/*.pem', 'secrets/**', 'vault/', 'a/b/', '!keep.env', 'has space.txt', '# comment', ''])).toEqual([
      '.env filter=cascade-sync diff=cascade-sync',
      '.env.* filter=cascade-sync diff=cascade-sync',
      '**/*.pem filter=cascade-sync diff=cascade-sync',
      'secrets/** filter=cascade-sync diff=cascade-sync',
      '**/vault/** filter=cascade-sync diff=cascade-sync',
      'a/b/** filter=cascade-sync diff=cascade-sync',
      'keep.env !filter !diff',
      '"has space.txt" filter=cascade-sync diff=cascade-sync',
    ]);
  });
});
