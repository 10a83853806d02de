/**
 * Release integrity (issue 4): manifests beside every release, verification of the live release,
 * drift reported once per episode and restored from git with deploy.selfHeal, rollback targets
 * repaired before they are made current; and hostile trees refused for deploys. Native git is the
 * oracle (`git archive`, `git show`), hostile trees are built with git plumbing.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { appendFile, chmod, link, lstat, mkdir, readdir, readFile, readlink, realpath, rename, rm, symlink, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { Repo } from '../src/git/repo.js';
import { CascadeError } from '../src/errors.js';
import { treeManifest } from '../src/pipeline/materialize.js';
import {
  currentRelease,
  deployRelease,
  integrityCheck,
  prepareRelease,
  releaseDir,
  repairRelease,
  switchCurrent,
  verifyReleaseIntegrity,
  type DeployInput,
} from '../src/pipeline/deploy.js';
import { isIntact, manifestPathFor, readManifest } from '../src/security/manifest.js';
import { commitFiles, git, gitOk, plumb, rawTree, revParse, showFile, makeTestRepo, type TestRepo } from './helpers/git.js';
import { webhookReceiver, envReport, live, pipelineConfig } from './helpers/pipeline.js';
import { run, startController, type RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

const exec = promisify(execFile);

let controllers: RunningController[] = [];
let closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of controllers) await c.stop();
  for (const close of closers) await close();
  controllers = [];
  closers = [];
  await cleanupTmpDirs();
});

const ENV = { PATH: process.env.PATH ?? '/usr/bin:/bin' };

const makeRepo = (): Promise<TestRepo> => makeTestRepo('integrity-repo');

function deployInput(directory: string, commit: string, extra: Partial<DeployInput> = {}): DeployInput {
  return { environment: 'staging', commit, deploy: { directory, keep: 5, hooks: {} }, env: ENV, ...extra };
}

/** A commit of a hand-made tree, optionally on top of `parent`. */
async function commitTree(dir: string, tree: string, parent?: string): Promise<string> {
  return git(dir, 'commit-tree', tree, ...(parent ? ['-p', parent] : []), '-m', 'crafted');
}

/** Every path below `root` (not following symlinks) with what it is: file mode and bytes, link target, or folder. */
async function snapshot(root: string, prefix = ''): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const name of (await readdir(path.join(root, prefix))).sort()) {
    const rel = prefix ? `${prefix}/${name}` : name;
    const abs = path.join(root, rel);
    const st = await lstat(abs);
    if (st.isDirectory()) {
      out.set(`${rel}/`, 'dir');
      for (const [k, v] of await snapshot(root, rel)) out.set(k, v);
    } else if (st.isSymbolicLink()) out.set(rel, `link -> ${await readlink(abs)}`);
    else out.set(rel, `${st.mode & 0o111 ? 'x' : '-'} ${(await readFile(abs)).toString('base64')}`);
  }
  return out;
}

/** Oracle: `dir` holds exactly what `git archive <commit>` extracts, byte for byte, modes and links included. */
async function expectSameAsGitArchive(repoDir: string, commit: string, dir: string): Promise<void> {
  const ref = await makeTmpDir('archive');
  const tar = path.join(ref, '..', `${path.basename(ref)}.tar`);
  await git(repoDir, 'archive', '--format=tar', '-o', tar, commit);
  await exec('tar', ['-xf', tar, '-C', ref]);
  await rm(tar, { force: true });
  expect(await snapshot(dir)).toEqual(await snapshot(ref));
}

async function inode(p: string): Promise<number> {
  return (await lstat(p)).ino;
}

describe('manifests beside every release', () => {
  it('is written before current switches, equals the commit tree, is removed with its pruned release', async () => {
    const t = await makeRepo();
    const a = await t.commit({ 'index.html': 'a\n', 'bin/run.sh': '#!/bin/sh\n' });
    const b = await t.commit({ 'index.html': 'b\n' });
    const directory = path.join(await makeTmpDir('manifests'), 'site');
    const out = await makeTmpDir('manifests-out');
    // The pre hook runs before the switch: the manifest must already be there.
    const hook = 'test -f "$CASCADE_DEPLOY_DIR/releases/$CASCADE_COMMIT.manifest.json" && echo present > "$OUT/$CASCADE_COMMIT"';
    const input = (c: string) => deployInput(directory, c, { env: { ...ENV, OUT: out }, deploy: { directory, keep: 0, hooks: { pre: hook, env: [{ name: 'OUT' }] } } });
    await deployRelease(t.repo, input(a));
    const second = await deployRelease(t.repo, input(b));
    for (const c of [a, b]) expect(await readFile(path.join(out, c), 'utf8')).toBe('present\n');
    expect(await readManifest(manifestPathFor(releaseDir(directory, b)))).toEqual(await treeManifest(t.repo, b));
    expect(second.pruned).toEqual([a]);
    expect(existsSync(manifestPathFor(releaseDir(directory, a)))).toBe(false);
    expect((await lstat(manifestPathFor(releaseDir(directory, b)))).mode & 0o777).toBe(0o600);
  });

  it('a release without a manifest (an older deploy) is judged against the commit tree, not its files', async () => {
    const t = await makeRepo();
    const a = await t.commit({ 'index.html': 'a\n', 'app.js': 'x\n' });
    const directory = await makeTmpDir('no-manifest');
    await deployRelease(t.repo, deployInput(directory, a));
    await rm(manifestPathFor(releaseDir(directory, a)));
    await writeFile(path.join(directory, 'current/index.html'), 'edited before the upgrade\n');

    const v = await verifyReleaseIntegrity(t.repo, directory, a);
    expect(v.rebuilt?.why).toBe('missing');
    expect(v.drift).toEqual({ changed: ['index.html'], added: [], removed: [] });
    expect(existsSync(manifestPathFor(releaseDir(directory, a)))).toBe(false); // verification is read-only
    expect((await integrityCheck(t.repo, directory, a)).message).toMatch(/manifest missing: checked against the commit's tree.*drift: 1 changed \(index\.html\)/);

    const prepared = await prepareRelease(t.repo, directory, a, { selfHeal: true });
    expect(prepared.repair?.rewritten).toEqual(['index.html']);
    expect(await readManifest(manifestPathFor(releaseDir(directory, a)))).toEqual(await treeManifest(t.repo, a));
    await expectSameAsGitArchive(t.dir, a, releaseDir(directory, a));
    expect(await integrityCheck(t.repo, directory, a)).toMatchObject({ ok: true });

    // A manifest of another commit is not trusted either.
    const m = await readManifest(manifestPathFor(releaseDir(directory, a)));
    await writeFile(manifestPathFor(releaseDir(directory, a)), JSON.stringify({ ...m, commit: 'f'.repeat(40) }));
    expect((await verifyReleaseIntegrity(t.repo, directory, a)).rebuilt?.why).toBe('invalid');
  });

  it('verifies a 10k-file release (time logged)', async () => {
    const t = await makeRepo();
    // One fast-import stream (a pack) rather than 10k files through a worktree and the index.
    const lines: string[] = ['commit refs/heads/big', 'committer Cascade Test <cascade-test@example.invalid> 1700000000 +0000', 'data 10', '10k files', ''];
    for (let d = 0; d < 100; d++) {
      for (let f = 0; f < 100; f++) {
        const content = `file ${d}/${f}\n`.repeat(1 + (f % 7));
        lines.push(`M ${f % 10 === 0 ? '100755' : '100644'} inline d${d}/f${f}.txt`, `data ${Buffer.byteLength(content)}`, content);
      }
    }
    await plumb(t.dir, ['fast-import', '--quiet'], `${lines.join('\n')}\n`);
    const commit = await revParse(t.dir, 'big');
    const directory = await makeTmpDir('big');
    let started = performance.now();
    await deployRelease(t.repo, deployInput(directory, commit));
    const deployMs = performance.now() - started;
    started = performance.now();
    const v = await verifyReleaseIntegrity(t.repo, directory, commit);
    const verifyMs = performance.now() - started;
    expect(v.entries).toBe(10_000);
    expect(isIntact(v.drift)).toBe(true);
    await appendFile(path.join(directory, 'current/d42/f7.txt'), 'x');
    expect((await verifyReleaseIntegrity(t.repo, directory, commit)).drift).toEqual({ changed: ['d42/f7.txt'], added: [], removed: [] });
    // Without a manifest (a release of an older version) the first verification builds it from git.
    await rm(manifestPathFor(releaseDir(directory, commit)));
    started = performance.now();
    const rebuilt = await verifyReleaseIntegrity(t.repo, directory, commit);
    const rebuiltMs = performance.now() - started;
    expect(rebuilt.rebuilt?.why).toBe('missing');
    expect(rebuilt.drift.changed).toEqual(['d42/f7.txt']);
    console.log(`10k-file release: deploy ${deployMs.toFixed(0)} ms, verify ${verifyMs.toFixed(0)} ms, verify with the manifest rebuilt from git ${rebuiltMs.toFixed(0)} ms`);
  }, 180_000);
});

describe('drift and repair', () => {
  async function deployed() {
    const t = await makeRepo();
    await t.commit({ 'index.html': '<h1>v1</h1>\n', 'assets/site.css': 'body{}\n', 'assets/img/logo.svg': '<svg/>\n', 'empty.txt': '' });
    await writeFile(path.join(t.dir, 'run.sh'), '#!/bin/sh\necho run\n');
    await chmod(path.join(t.dir, 'run.sh'), 0o755);
    await symlink('assets/site.css', path.join(t.dir, 'style.css'));
    const a = await t.commit({ 'README.md': '# site\n' });
    const directory = path.join(await makeTmpDir('drift'), 'site');
    await deployRelease(t.repo, deployInput(directory, a));
    return { t, a, directory, rel: releaseDir(directory, a), current: path.join(directory, 'current') };
  }

  it('detects changed content, changed mode, an added file, a removed file and a retargeted symlink, and restores them byte-exact', async () => {
    const { t, a, directory, rel, current } = await deployed();
    await writeFile(path.join(current, 'index.html'), '<h1>v2</h1>\n'); // same size, other bytes
    await chmod(path.join(current, 'run.sh'), 0o644);
    await chmod(path.join(current, 'empty.txt'), 0o755);
    await mkdir(path.join(current, 'uploads/deep'), { recursive: true });
    await writeFile(path.join(current, 'uploads/deep/shell.php'), '<?php system($_GET["c"]);');
    await unlink(path.join(current, 'assets/img/logo.svg'));
    await unlink(path.join(current, 'style.css'));
    await symlink('/etc/passwd', path.join(current, 'style.css'));

    const v = await verifyReleaseIntegrity(t.repo, directory, a);
    expect(v.drift).toEqual({ changed: ['empty.txt', 'index.html', 'run.sh', 'style.css'], added: ['uploads/deep/shell.php'], removed: ['assets/img/logo.svg'] });
    const check = await integrityCheck(t.repo, directory, a);
    expect(check.ok).toBe(false);
    expect(check.message).toContain('4 changed (empty.txt, index.html, run.sh, style.css); 1 added (uploads/deep/shell.php); 1 removed (assets/img/logo.svg)');

    const r = await repairRelease(t.repo, directory, a, v.drift);
    expect(r).toMatchObject({ rewritten: ['assets/img/logo.svg', 'empty.txt', 'index.html', 'run.sh', 'style.css'], removed: ['uploads/deep/shell.php'], rematerialized: false });
    expect(isIntact(r.after)).toBe(true);
    await expectSameAsGitArchive(t.dir, a, rel); // the empty folders the added file left are gone too
    expect(await readFile(path.join(rel, 'index.html'))).toEqual(await showFile(t.dir, a, 'index.html'));
  });

  it('never writes through a hard link into another release, nor outside the release', async () => {
    const t = await makeRepo();
    const a = await t.commit({ 'shared.txt': 'shared v1\n', 'page.html': 'a\n', 'data/x.txt': 'x\n' });
    const b = await t.commit({ 'page.html': 'b\n' });
    const directory = path.join(await makeTmpDir('links'), 'site');
    const outside = await makeTmpDir('links-outside');
    await writeFile(path.join(outside, 'secret.txt'), 'do not touch\n');
    await deployRelease(t.repo, deployInput(directory, a));
    await deployRelease(t.repo, deployInput(directory, b));
    const [ra, rb] = [releaseDir(directory, a), releaseDir(directory, b)];
    expect(await inode(path.join(rb, 'shared.txt'))).toBe(await inode(path.join(ra, 'shared.txt')));

    // Edited in place in the live release: the older release sharing the inode changes with it.
    await appendFile(path.join(directory, 'current/shared.txt'), 'tampered\n');
    // A file replaced by a hard link to a file outside; a folder replaced by a symlink to a folder outside.
    await unlink(path.join(rb, 'page.html'));
    await link(path.join(outside, 'secret.txt'), path.join(rb, 'page.html'));
    await rm(path.join(rb, 'data'), { recursive: true });
    await symlink(outside, path.join(rb, 'data'));
    expect((await verifyReleaseIntegrity(t.repo, directory, a)).drift.changed).toEqual(['shared.txt']);

    const v = await verifyReleaseIntegrity(t.repo, directory, b);
    expect(v.drift).toEqual({ changed: ['page.html', 'shared.txt'], added: ['data'], removed: ['data/x.txt'] });
    const r = await repairRelease(t.repo, directory, b, v.drift);
    expect(isIntact(r.after)).toBe(true);
    await expectSameAsGitArchive(t.dir, b, rb);
    expect(await readdir(outside)).toEqual(['secret.txt']);
    expect(await readFile(path.join(outside, 'secret.txt'), 'utf8')).toBe('do not touch\n');
    // The older release still holds the edit (the repair renamed a fresh file into b, it never wrote a's inode)...
    expect(await readFile(path.join(ra, 'shared.txt'), 'utf8')).toBe('shared v1\ntampered\n');
    // ...so switching back to it repairs it first.
    const prepared = await prepareRelease(t.repo, directory, a, { selfHeal: true });
    expect(prepared.verification.drift.changed).toEqual(['shared.txt']);
    expect(prepared.repair?.rewritten).toEqual(['shared.txt']);
    await switchCurrent(directory, a);
    await expectSameAsGitArchive(t.dir, a, path.join(directory, 'current'));
    await expectSameAsGitArchive(t.dir, b, rb);
  });

  it('a reused release that drifted is repaired before current switches back to it (reported only with selfHeal false)', async () => {
    const t = await makeRepo();
    const a = await t.commit({ 'f.txt': 'a\n', 'same.txt': 'same\n' });
    const b = await t.commit({ 'f.txt': 'b\n' });
    const directory = await makeTmpDir('reuse');
    await deployRelease(t.repo, deployInput(directory, a));
    await deployRelease(t.repo, deployInput(directory, b));
    await appendFile(path.join(directory, 'current/same.txt'), 'through the link\n');

    const kept = await deployRelease(t.repo, deployInput(directory, a, { selfHeal: false }));
    expect(kept.integrity?.verification.drift.changed).toEqual(['same.txt']);
    expect(kept.integrity?.repair).toBeUndefined();
    await switchCurrent(directory, b);
    const healed = await deployRelease(t.repo, deployInput(directory, a));
    expect(healed).toMatchObject({ reused: true, integrity: { repair: { rewritten: ['same.txt'] } } });
    expect(await currentRelease(directory)).toBe(a);
    await expectSameAsGitArchive(t.dir, a, path.join(directory, 'current'));
  });

  it('a release folder replaced by a symlink is never looked into nor written through: it is materialized again', async () => {
    const { t, a, directory, rel } = await deployed();
    const elsewhere = await makeTmpDir('elsewhere');
    await writeFile(path.join(elsewhere, 'index.html'), 'not ours\n');
    await rename(rel, `${rel}.moved`);
    await symlink(elsewhere, rel);
    const v = await verifyReleaseIntegrity(t.repo, directory, a);
    expect(v.rootReplaced).toBe(true);
    expect(v.drift.removed.length).toBe(v.entries);
    const r = await repairRelease(t.repo, directory, a, v.drift);
    expect(r.rematerialized).toBe(true);
    expect(isIntact(r.after)).toBe(true);
    expect((await lstat(rel)).isDirectory()).toBe(true);
    await expectSameAsGitArchive(t.dir, a, rel);
    expect(await readdir(elsewhere)).toEqual(['index.html']);
    expect(await readFile(path.join(elsewhere, 'index.html'), 'utf8')).toBe('not ours\n');
  });
});

describe('hostile trees, deploy side', () => {
  async function hostile(build: (dir: string, blob: string, outside: string) => Promise<string>) {
    const t = await makeRepo();
    const good = await t.commit({ 'index.html': 'good\n' });
    const root = await makeTmpDir('hostile');
    const directory = path.join(root, 'deploy');
    const outside = path.join(root, 'outside');
    await mkdir(outside);
    await deployRelease(t.repo, deployInput(directory, good));
    const blob = await plumb(t.dir, ['hash-object', '-w', '--stdin'], 'payload\n');
    const bad = await commitTree(t.dir, await build(t.dir, blob, outside), good);
    const before = await snapshot(directory);
    const err = await deployRelease(t.repo, deployInput(directory, bad)).catch((e: unknown) => e);
    return { t, good, bad, directory, root, outside, err, before };
  }
  const sub = (d: string, b: string, name = 'x') => plumb(d, ['mktree'], `100644 blob ${b}\t${name}\n`);
  const cases: { name: string; tree: (dir: string, blob: string, outside: string) => Promise<string> }[] = [
    { name: '".." holding a file', tree: async (d, b) => rawTree(d, [{ mode: '40000', name: '..', oid: await sub(d, b, 'escaped.txt') }]) },
    { name: 'an absolute path', tree: async (d, b) => rawTree(d, [{ mode: '100644', name: '/tmp/cascade-abs-escape', oid: b }]) },
    { name: 'a name with a slash', tree: async (d, b) => rawTree(d, [{ mode: '100644', name: '../escape', oid: b }]) },
    { name: '.git', tree: async (d, b) => rawTree(d, [{ mode: '40000', name: '.git', oid: await sub(d, b, 'config') }]) },
    { name: '.GIT', tree: async (d, b) => rawTree(d, [{ mode: '40000', name: '.GIT', oid: await sub(d, b, 'config') }]) },
    { name: '".git " (trailing space)', tree: async (d, b) => rawTree(d, [{ mode: '40000', name: '.git ', oid: await sub(d, b, 'config') }]) },
    { name: '".git." (trailing dot)', tree: async (d, b) => rawTree(d, [{ mode: '100644', name: '.git.', oid: b }]) },
    { name: 'GIT~1 (8.3 form)', tree: async (d, b) => rawTree(d, [{ mode: '40000', name: 'GIT~1', oid: await sub(d, b, 'config') }]) },
    { name: 'a nested .Git folder', tree: async (d, b) => rawTree(d, [{ mode: '40000', name: 'vendor', oid: await rawTree(d, [{ mode: '40000', name: '.Git', oid: await sub(d, b, 'HEAD') }]) }]) },
    {
      name: 'a symlink to a folder outside followed by a path through it',
      tree: async (d, b, outside) => {
        const target = await plumb(d, ['hash-object', '-w', '--stdin'], outside);
        return rawTree(d, [{ mode: '120000', name: 'a', oid: target }, { mode: '40000', name: 'a', oid: await sub(d, b) }]);
      },
    },
  ];
  for (const c of cases) {
    it(`refuses ${c.name} with Stalled UnsafePath, writing nothing`, async () => {
      const { directory, outside, err, before, good, bad } = await hostile(c.tree);
      expect(err).toBeInstanceOf(CascadeError);
      expect(err).toMatchObject({ kind: 'Stalled', reason: 'UnsafePath' });
      expect((err as Error).message).toMatch(/cannot be deployed safely/);
      expect(await currentRelease(directory)).toBe(good);
      expect(await snapshot(directory)).toEqual(before);
      expect(existsSync(releaseDir(directory, bad))).toBe(false);
      expect(await readdir(outside)).toEqual([]);
      expect(existsSync('/tmp/cascade-abs-escape')).toBe(false);
    });
  }

  it('a symlink pointing outside is materialized as a symlink and never followed, also not by a repair', async () => {
    const t = await makeRepo();
    const outside = await makeTmpDir('sym-outside');
    await writeFile(path.join(outside, 'keep.txt'), 'outside\n');
    await symlink(outside, path.join(t.dir, 'escape'));
    await symlink('../../../../..', path.join(t.dir, 'up'));
    const a = await t.commit({ 'index.html': 'a\n' });
    const directory = await makeTmpDir('sym-deploy');
    await deployRelease(t.repo, deployInput(directory, a));
    const rel = releaseDir(directory, a);
    expect(await readlink(path.join(rel, 'escape'))).toBe(outside);
    expect(await readlink(path.join(rel, 'up'))).toBe('../../../../..');
    expect(isIntact((await verifyReleaseIntegrity(t.repo, directory, a)).drift)).toBe(true);

    // Drift below a symlink is no drift of the release: the walk does not follow it.
    await writeFile(path.join(outside, 'planted.txt'), 'x');
    expect(isIntact((await verifyReleaseIntegrity(t.repo, directory, a)).drift)).toBe(true);
    // A retargeted link is replaced, not written through.
    await unlink(path.join(rel, 'index.html'));
    await symlink(path.join(outside, 'keep.txt'), path.join(rel, 'index.html'));
    const v = await verifyReleaseIntegrity(t.repo, directory, a);
    expect(v.drift.changed).toEqual(['index.html']);
    await repairRelease(t.repo, directory, a, v.drift);
    expect(await readFile(path.join(outside, 'keep.txt'), 'utf8')).toBe('outside\n');
    expect((await lstat(path.join(rel, 'index.html'))).isFile()).toBe(true);
    await expectSameAsGitArchive(t.dir, a, rel);
  });

  it('hooks run with the release folder as their cwd (not current, not the sandbox)', async () => {
    const t = await makeRepo();
    const a = await t.commit({ 'f.txt': 'a' });
    const directory = await makeTmpDir('hook-cwd');
    const out = await makeTmpDir('hook-cwd-out');
    await deployRelease(t.repo, deployInput(directory, a, { env: { ...ENV, OUT: out }, deploy: { directory, keep: 5, hooks: { pre: 'pwd -P > "$OUT/pre"', post: 'pwd -P > "$OUT/post"', env: [{ name: 'OUT' }] } } }));
    const real = await realpath(releaseDir(directory, a));
    expect(await readFile(path.join(out, 'pre'), 'utf8')).toBe(`${real}\n`);
    expect(await readFile(path.join(out, 'post'), 'utf8')).toBe(`${real}\n`);
  });
});

async function history(dir: string): Promise<{ event: string; commit: string; environment: string; result: string }[]> {
  const text = await readFile(path.join(dir, '.git/cascade-sync/history.jsonl'), 'utf8').catch(() => '');
  return text.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
}

/** A sandbox whose staging environment deploys (and, with `stagingExtra`, checks health), with a controller running. */
async function pipelineSandbox(o: { selfHeal?: boolean; stagingExtra?: string } = {}) {
  const hook = await webhookReceiver((close) => closers.push(close));
  const dir = await makeTmpDir('sandbox');
  const deployRoot = await makeTmpDir('deploy');
  const logFile = path.join(await makeTmpDir('logs'), 'cascade-sync.log');
  let config = pipelineConfig({ signers: [], hook: hook.url, logFile, deployRoot, ...(o.stagingExtra ? { stagingExtra: o.stagingExtra } : {}) });
  if (o.selfHeal === false) config = config.replace('keep: 3 }', 'keep: 3, selfHeal: false }');
  await writeFile(path.join(dir, 'app.txt'), 'v1\n');
  await writeFile(path.join(dir, 'lib.txt'), 'library\n');
  await writeFile(path.join(dir, 'cascade-sync-config.yaml'), config);
  const init = await run(dir, ['init']);
  expect(init.code, init.stderr).toBe(0);
  const c1 = await revParse(dir, 'staging');
  controllers.push(await startController(dir));
  const staging = path.join(deployRoot, 'staging');
  await waitFor(async () => (await live(staging)) === c1 || undefined, { what: 'staging to deploy the init commit' });
  return { dir, hook, staging, c1, logFile };
}

describe('the controller watches the live release', () => {
  it('selfHeal (default): drift is reported once per episode, recorded in history and status, and restored from git', async () => {
    const { dir, hook, staging, c1 } = await pipelineSandbox();
    await waitFor(async () => (await envReport(dir, 'staging'))?.integrity?.state === 'intact' || undefined, { what: 'a first verification' });
    await writeFile(path.join(staging, 'current/app.txt'), 'defaced\n');
    await writeFile(path.join(staging, 'current/backdoor.php'), '<?php');
    await waitFor(async () => ((await readFile(path.join(staging, 'current/app.txt'), 'utf8')) === 'v1\n' && !existsSync(path.join(staging, 'current/backdoor.php'))) || undefined, { what: 'the release restored', timeoutMs: 20_000 });
    await expectSameAsGitArchive(dir, c1, path.join(staging, 'current'));
    await waitFor(async () => (await envReport(dir, 'staging'))?.integrity?.state === 'intact' || undefined, { what: 'the episode to end' });
    const drift = hook.events.filter((e) => e.event === 'drift-detected');
    expect(drift).toHaveLength(1);
    // (A verification may fall between the two writes: backdoor.php then joins the same episode.)
    expect(drift[0]!.message).toMatch(/^staging: the live release \w{7} differs from its manifest: 1 changed \(app\.txt\)/);
    expect(drift[0]!.details).toMatchObject({ environment: 'staging', commit: c1, changed: ['app.txt'] });
    const h = (await history(dir)).filter((e) => e.environment === 'staging');
    expect(h.filter((e) => e.event === 'drift-detected')).toHaveLength(1);
    expect(h.find((e) => e.event === 'release-repaired')?.result).toMatch(/1 rewritten, 1 removed/);
    const report = await envReport(dir, 'staging');
    expect(report.health.phase).toBe('healthy'); // drift is no health failure
    expect(await live(staging)).toBe(c1);

    // A second episode is a second report.
    await writeFile(path.join(staging, 'current/lib.txt'), 'edited again\n');
    await waitFor(() => hook.events.filter((e) => e.event === 'drift-detected').length === 2 || undefined, { what: 'a second drift-detected', timeoutMs: 20_000 });
    await waitFor(async () => (await readFile(path.join(staging, 'current/lib.txt'), 'utf8')) === 'library\n' || undefined, { what: 'lib.txt restored' });

    const health = await run(dir, ['health']);
    expect(health.stdout).toMatch(new RegExp(`ok   staging/integrity: ${c1.slice(0, 7)}: \\d+ paths match the manifest`));
  });

  it('selfHeal false: drift is only reported (status lists the files), once, and stays until a person acts', async () => {
    const { dir, hook, staging, c1 } = await pipelineSandbox({ selfHeal: false });
    await waitFor(async () => (await envReport(dir, 'staging'))?.integrity?.state === 'intact' || undefined, { what: 'a first verification' });
    await writeFile(path.join(staging, 'current/app.txt'), 'defaced\n');
    const report = await waitFor(async () => {
      const r = await envReport(dir, 'staging');
      return r?.integrity?.state === 'drifted' ? r : undefined;
    }, { what: 'the drift in status', timeoutMs: 20_000 });
    expect(report.integrity).toMatchObject({ commit: c1, selfHeal: false, drift: { changed: ['app.txt'], added: [], removed: [], total: 1 } });
    // Several more rounds (health interval 1s): still one report, nothing restored.
    const at = (await envReport(dir, 'staging')).integrity.verifiedAt;
    await waitFor(async () => ((await envReport(dir, 'staging')).integrity.verifiedAt > at ? true : undefined), { what: 'another verification' });
    await waitFor(async () => ((await envReport(dir, 'staging')).integrity.verifiedAt > at ? true : undefined), { what: 'another verification' });
    expect(await readFile(path.join(staging, 'current/app.txt'), 'utf8')).toBe('defaced\n');
    expect(hook.events.filter((e) => e.event === 'drift-detected')).toHaveLength(1);
    expect((await history(dir)).filter((e) => e.event === 'drift-detected')).toHaveLength(1);
    expect((await history(dir)).filter((e) => e.event === 'release-repaired')).toHaveLength(0);
    const status = await run(dir, ['status']);
    expect(status.stdout).toMatch(/integrity: drift since .*: 1 changed \(app\.txt\) \(deploy\.selfHeal is false: only reported\)/);
    const health = await run(dir, ['health']);
    expect(health.code).toBe(1);
    expect(health.stdout).toContain(`FAIL staging/integrity: ${c1.slice(0, 7)}: drift: 1 changed (app.txt)`);
  });

  it('a rollback target edited through a hard link is repaired before it is made current', async () => {
    // The health check itself edits lib.txt in place in a broken release: lib.txt is hard-linked from
    // the healthy release before it, so that release changes too.
    const check = 'if grep -q BROKEN app.txt; then printf tampered >> lib.txt; exit 1; fi';
    const { dir, staging, hook } = await pipelineSandbox({ stagingExtra: ['    health:', `      - { name: app, command: ${JSON.stringify(check)}, timeout: 10s }`, '    healthyAfter: 1', '    failureThreshold: 2', '    progressDeadline: 1m', '    rollback: { automatic: true }'].join('\n') });
    await writeFile(path.join(dir, 'app.txt'), 'v2\n');
    const c2 = await waitFor(async () => {
      const s = await revParse(dir, 'staging');
      return (await gitOk(dir, 'show', `${s}:app.txt`)).stdout === 'v2\n' ? s : undefined;
    }, { what: 'v2 on staging', timeoutMs: 30_000 });
    await waitFor(async () => ((await live(staging)) === c2 && (await envReport(dir, 'staging'))?.health?.phase === 'healthy') || undefined, { what: 'v2 live and healthy', timeoutMs: 30_000 });

    await writeFile(path.join(dir, 'app.txt'), 'v3 BROKEN\n');
    const c3 = await waitFor(async () => {
      const s = await revParse(dir, 'staging');
      return s !== c2 ? s : undefined;
    }, { what: 'v3 on staging', timeoutMs: 30_000 });
    await waitFor(() => hook.events.find((e) => e.event === 'rolled-back'), { what: 'the rollback', timeoutMs: 40_000 }).catch(async (e) => {
      throw new Error(`${(e as Error).message}\n${JSON.stringify(await envReport(dir, 'staging'), null, 1)}\n${JSON.stringify(await history(dir), null, 1)}`);
    });
    expect(await live(staging)).toBe(c2);
    const h = (await history(dir)).filter((e) => e.environment === 'staging');
    const repaired = h.findIndex((e) => e.event === 'release-repaired' && e.commit === c2 && e.result.startsWith('rollback target'));
    expect(repaired, JSON.stringify(h, null, 1)).toBeGreaterThanOrEqual(0);
    expect(h.findIndex((e) => e.event === 'rolled-back' && e.commit === c2)).toBeGreaterThan(repaired);
    expect(await readFile(path.join(staging, 'current/lib.txt'), 'utf8')).toBe('library\n');
    await expectSameAsGitArchive(dir, c2, path.join(staging, 'current'));
    // The broken release was rewritten by its check every round: one drift episode, one report, one repair entry.
    expect(h.filter((e) => e.event === 'drift-detected' && e.commit === c3)).toHaveLength(1);
    expect(h.filter((e) => e.event === 'release-repaired' && e.commit === c3).length).toBeLessThanOrEqual(1);
  });

  it('a hostile commit on the environment branch stalls the environment (its tree, config included, cannot be read: no policy in force, nothing deployed); the controller keeps running', async () => {
    const { dir, staging, c1 } = await pipelineSandbox();
    const outside = await makeTmpDir('ctl-outside');
    const blob = await plumb(dir, ['hash-object', '-w', '--stdin'], 'payload\n');
    const target = await plumb(dir, ['hash-object', '-w', '--stdin'], outside);
    const tree = await rawTree(dir, [
      { mode: '120000', name: 'a', oid: target },
      { mode: '40000', name: 'a', oid: await plumb(dir, ['mktree'], `100644 blob ${blob}\tx\n`) },
      { mode: '40000', name: '.GIT', oid: await plumb(dir, ['mktree'], `100644 blob ${blob}\tconfig\n`) },
    ]);
    const bad = await commitTree(dir, tree, c1);
    await git(dir, 'update-ref', 'refs/heads/staging', bad);
    const report = await waitFor(async () => {
      const r = await envReport(dir, 'staging');
      return r?.error?.reason === 'PolicyUnreadable' ? r : undefined;
    }, { what: 'staging to stall with PolicyUnreadable', timeoutMs: 20_000 });
    expect(report.error.kind).toBe('Stalled');
    expect(report.error.message).toMatch(/cannot be read .*"\.GIT"/);
    expect(await live(staging)).toBe(c1);
    expect(await readdir(outside)).toEqual([]);
    expect(existsSync(path.join(staging, 'releases', bad))).toBe(false);
    // Still running: an edit in the sandbox is committed to develop.
    const before = await revParse(dir, 'develop');
    await writeFile(path.join(dir, 'more.txt'), 'more\n');
    await waitFor(async () => (await revParse(dir, 'develop')) !== before || undefined, { what: 'the controller to keep syncing' });
  });
});
