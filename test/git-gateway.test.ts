import { createHash } from 'node:crypto';
import { chmod, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import {
  CatFileBatch, classifyGitFailure, commitKnownPaths, commitTree, compareGitVersions, forEachRef, GitError,
  gitVersion, mergeTree, MIN_GIT_VERSION, parseGitVersion, parseLsFilesStage, parseLsFilesStageRecord, parseLsTree, parseRawDiff,
  parseStatusV2, repositoryFormat, requireGitVersion, requireSupportedFormat, runGit, runGitRecords, updateIndex,
  updateIndexInfo, updateRefs, writeTree, type GitRepo, type IndexEntry, type StatusEntry,
} from '../src/git/native/index.js';
import { Redactor } from '../src/redact.js';
import { startGitHttpServer, type GitHttpServer } from './helpers/git-http-server.js';
import { TEST_AUTHOR, gatewayEnv, git, gitOk, makeBareRepo } from './helpers/git.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';
import { gitRejection } from './helpers/transport.js';

/** The test HOME, identity and no system config, as additions over the gateway's own environment. */
const ENV = gatewayEnv();
const at = (dir: string): GitRepo => ({ cwd: dir, env: ENV });

/** Names that broke the former home-made layer or need quoting in git's non -z output. */
const ODD_NAMES = ['back\\slash.txt', 'quote"d.txt', "it's.txt", 'tab\there.txt', 'new\nline.txt', 'ünïcödé ñ.txt', 'sp ace/fi le.txt', 'x/y/z.md'];

async function writeFiles(dir: string, files: Record<string, string | Buffer>): Promise<void> {
  for (const [rel, content] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(dir, rel)), { recursive: true });
    await writeFile(path.join(dir, rel), content);
  }
}

async function repoWith(files: Record<string, string | Buffer>, initArgs: string[] = []): Promise<string> {
  const dir = await makeTmpDir('gw');
  await git(dir, 'init', '--quiet', '-b', 'main', ...initArgs);
  await writeFiles(dir, files);
  await git(dir, 'add', '-A');
  await git(dir, 'commit', '--quiet', '-m', 'initial');
  return dir;
}

/** Pids of the processes in process group `pgid` (Linux /proc). */
async function processGroup(pgid: number): Promise<number[]> {
  const out: number[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = await readFile(`/proc/${name}/stat`, 'utf8');
      const fieldsAfterComm = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fieldsAfterComm[2]) === pgid && fieldsAfterComm[0] !== 'Z') out.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

const servers: GitHttpServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});
afterAll(cleanupTmpDirs);

describe('runGit', () => {
  it('runs an argument array without a shell, feeds stdin as string, Buffer or stream, returns stdout as bytes', async () => {
    const dir = await repoWith({ 'a.txt': 'a\n' });
    const evil = '$(touch pwned) `touch pwned2`; | & > x';
    const fromString = (await runGit(['hash-object', '--stdin'], { ...at(dir), stdin: evil })).stdout.toString().trim();
    const fromBuffer = (await runGit(['hash-object', '--stdin'], { ...at(dir), stdin: Buffer.from(evil) })).stdout.toString().trim();
    const fromStream = (await runGit(['hash-object', '--stdin'], { ...at(dir), stdin: Readable.from([Buffer.from(evil.slice(0, 5)), Buffer.from(evil.slice(5))]) })).stdout.toString().trim();
    expect(fromBuffer).toBe(fromString);
    expect(fromStream).toBe(fromString);
    expect(fromString).toBe(createHash('sha1').update(`blob ${Buffer.byteLength(evil)}\0${evil}`).digest('hex'));
    const r = await runGit(['log', '--format=%s', `--grep=${evil}`, '--', evil], at(dir));
    expect(r.stdout).toBeInstanceOf(Buffer);
    expect(r.stdout.length).toBe(0);
    await expect(readdir(dir)).resolves.not.toContain('pwned');
  });

  it('ignores GIT_DIR/GIT_INDEX_FILE inherited from the process and runs without a controlling terminal, prompts or a pager', async () => {
    const dir = await repoWith({ 'a.txt': 'a\n' });
    const other = await repoWith({ 'b.txt': 'b\n' });
    const saved = { GIT_DIR: process.env['GIT_DIR'], GIT_INDEX_FILE: process.env['GIT_INDEX_FILE'] };
    process.env['GIT_DIR'] = path.join(other, '.git');
    process.env['GIT_INDEX_FILE'] = path.join(other, '.git', 'index');
    try {
      const files = (await runGit(['ls-files'], at(dir))).stdout.toString();
      expect(files).toBe('a.txt\n');
    } finally {
      for (const [k, v] of Object.entries(saved)) if (v === undefined) delete process.env[k]; else process.env[k] = v;
    }
    // An alias runs a program under git; it reports its own session, terminal and environment.
    const probe = await runGit(['-c', 'alias.probe=!cat /proc/$$/stat; echo; env', 'probe'], at(dir));
    const text = probe.stdout.toString();
    const stat = text.split('\n')[0]!;
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const self = (await readFile('/proc/self/stat', 'utf8'));
    const selfSession = Number(self.slice(self.lastIndexOf(')') + 2).split(' ')[3]);
    expect(Number(f[4]), 'tty_nr: no controlling terminal').toBe(0);
    expect(Number(f[3]), 'a session of its own').not.toBe(selfSession);
    expect(text).toMatch(/^GIT_TERMINAL_PROMPT=0$/m);
    expect(text).toMatch(/^LC_ALL=C$/m);
    expect(text).toMatch(/^SSH_ASKPASS_REQUIRE=never$/m);
    expect(text).not.toMatch(/^SSH_ASKPASS=/m);
  });

  it('kills the whole process group of a fetch from a server that never answers, at the timeout', async () => {
    const root = await makeTmpDir('gw-http');
    await makeBareRepo(path.join(root, 'r.git'), { withCommit: true });
    const server = await startGitHttpServer({ root, failWith: 'hang' });
    servers.push(server);
    const dir = await repoWith({ 'a.txt': 'a\n' });
    let pgid = 0;
    let helperSeen = false;
    const started = Date.now();
    const fetching = runGit(['fetch', server.url('r.git'), 'develop'], { ...at(dir), timeoutMs: 3000, remote: {}, onSpawn: (pid) => (pgid = pid) });
    // git-remote-http runs as a child of git: the group is more than git itself while it hangs.
    await waitFor(async () => (helperSeen = pgid > 0 && (await processGroup(pgid)).length >= 2), { what: 'git and its http helper to be running', timeoutMs: 2500 }).catch(() => undefined);
    const err = await gitRejection(fetching);
    expect(err.kind).toBe('Transient');
    expect(err.reason).toBe('GitTimeout');
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(helperSeen).toBe(true);
    await waitFor(async () => (await processGroup(pgid)).length === 0, { what: 'every process of the group to be gone', timeoutMs: 5000 });
  });

  it('idleTimeoutMs kills a git that goes silent, not one that keeps printing progress; onStderr hears it as it comes', async () => {
    const dir = await repoWith({ 'a.txt': 'a\n' });
    const heard: string[] = [];
    // Prints every 0.2 s for 1.6 s: past the idle limit in total, never silent for long.
    const talking = await runGit(['-c', 'alias.talk=!for i in 1 2 3 4 5 6 7 8; do echo "tick $i" >&2; sleep 0.2; done', 'talk'], { ...at(dir), idleTimeoutMs: 1000, onStderr: (t) => heard.push(t) });
    expect(talking.stderr).toContain('tick 8');
    expect(heard.join('')).toContain('tick 8');
    expect(heard.length).toBeGreaterThan(1);
    const started = Date.now();
    const silent = await gitRejection(runGit(['-c', 'alias.hush=!echo start >&2; sleep 30', 'hush'], { ...at(dir), idleTimeoutMs: 800 }));
    expect([silent.kind, silent.reason]).toEqual(['Transient', 'GitTimeout']);
    expect(silent.message).toMatch(/no sign of progress for 800 ms/);
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it('an abort signal stops a git that waits for input forever', async () => {
    const dir = await repoWith({ 'a.txt': 'a\n' });
    const ac = new AbortController();
    const never = new PassThrough();
    const p = runGit(['hash-object', '--stdin'], { ...at(dir), stdin: never, signal: ac.signal });
    setImmediate(() => ac.abort());
    const err = await gitRejection(p);
    expect(err.reason).toBe('GitAborted');
  });

  it('appends BatchMode=yes to the user core.sshCommand for remote operations, and accept-new only on opt-in', async () => {
    const dir = await repoWith({ 'a.txt': 'a\n' });
    const recorder = path.join(dir, '.git', 'ssh-recorder.sh');
    await writeFile(recorder, '#!/bin/sh\nprintf "%s\\n" "$@" > "$0.args"\necho "ssh: connect to host example.invalid port 22: Connection refused" >&2\nexit 255\n');
    await chmod(recorder, 0o755);
    await git(dir, 'config', 'core.sshCommand', recorder);
    const first = await gitRejection(runGit(['fetch', 'ssh://git@example.invalid/r.git'], { ...at(dir), remote: {} }));
    expect(first.reason).toBe('RemoteUnavailable');
    const args1 = (await readFile(`${recorder}.args`, 'utf8')).split('\n');
    expect(args1).toContain('BatchMode=yes');
    expect(args1).not.toContain('StrictHostKeyChecking=accept-new');
    await gitRejection(runGit(['fetch', 'ssh://git@example.invalid/r.git'], { ...at(dir), remote: { acceptNewHostKey: true } }));
    const args2 = (await readFile(`${recorder}.args`, 'utf8')).split('\n');
    expect(args2).toEqual(expect.arrayContaining(['BatchMode=yes', 'StrictHostKeyChecking=accept-new']));
  });
});

describe('git failures become our kinds', () => {
  it('not a git repository -> Stalled NotAGitRepository', async () => {
    const dir = await makeTmpDir('gw-plain');
    const err = await gitRejection(runGit(['status'], at(dir)));
    expect([err.kind, err.reason]).toEqual(['Stalled', 'NotAGitRepository']);
  });

  it('a held index.lock -> Transient LockBusy naming the lock', async () => {
    const dir = await repoWith({ 'a.txt': 'a\n' });
    await writeFile(path.join(dir, 'a.txt'), 'changed\n');
    await writeFile(path.join(dir, '.git', 'index.lock'), '');
    const err = await gitRejection(updateIndex(at(dir), ['a.txt']));
    expect([err.kind, err.reason]).toEqual(['Transient', 'LockBusy']);
    expect(err.lockPath).toBe(path.join(dir, '.git', 'index.lock'));
    expect(err.hint).toContain('index.lock');
    await rm(path.join(dir, '.git', 'index.lock'));
    await updateIndex(at(dir), ['a.txt']);
  });

  it('HTTP 401 -> Stalled AuthFailed without prompting, credentials redacted', async () => {
    const root = await makeTmpDir('gw-http');
    await makeBareRepo(path.join(root, 'r.git'), { withCommit: true });
    const server = await startGitHttpServer({ root, username: 'bob', password: 'right-password' });
    servers.push(server);
    const dir = await repoWith({ 'a.txt': 'a\n' });
    const redactor = new Redactor();
    redactor.add('wrong-password');
    const url = server.url('r.git').replace('http://', 'http://bob:wrong-password@');
    const err = await gitRejection(runGit(['fetch', url], { ...at(dir), remote: {}, redact: (t) => redactor.redact(t), timeoutMs: 20_000 }));
    expect([err.kind, err.reason]).toEqual(['Stalled', 'AuthFailed']);
    expect(`${err.message} ${err.command} ${err.stderr}`).not.toContain('wrong-password');
    const anonymous = await gitRejection(runGit(['fetch', server.url('r.git')], { ...at(dir), remote: {}, timeoutMs: 20_000 }));
    expect(anonymous.reason).toBe('AuthFailed');
  });

  it("a pre-receive hook's refusal -> Stalled PushRejected with the hook's message; a stale push -> Transient NonFastForward", async () => {
    const root = await makeTmpDir('gw-remote');
    const bare = path.join(root, 'r.git');
    await makeBareRepo(bare, { withCommit: true, initialBranch: 'main' });
    const dir = await makeTmpDir('gw-clone');
    await git(root, 'clone', '--quiet', bare, dir);
    await writeFile(path.join(dir, 'n.txt'), 'n\n');
    await git(dir, 'add', '-A');
    await git(dir, 'commit', '--quiet', '-m', 'n');
    await writeFile(path.join(bare, 'hooks', 'pre-receive'), '#!/bin/sh\necho "policy: main is frozen until Monday" >&2\nexit 1\n');
    await chmod(path.join(bare, 'hooks', 'pre-receive'), 0o755);
    const refused = await gitRejection(runGit(['push', '--porcelain', 'origin', 'main'], { ...at(dir), remote: {} }));
    expect([refused.kind, refused.reason]).toEqual(['Stalled', 'PushRejected']);
    expect(refused.message).toContain('policy: main is frozen until Monday');
    expect(refused.ref).toBe('refs/heads/main');
    await rm(path.join(bare, 'hooks', 'pre-receive'));
    // Someone else pushes first.
    const other = await makeTmpDir('gw-clone2');
    await git(root, 'clone', '--quiet', bare, other);
    await writeFile(path.join(other, 'o.txt'), 'o\n');
    await git(other, 'add', '-A');
    await git(other, 'commit', '--quiet', '-m', 'o');
    await git(other, 'push', '--quiet', 'origin', 'main');
    const stale = await gitRejection(runGit(['push', '--porcelain', 'origin', 'main'], { ...at(dir), remote: {} }));
    expect([stale.kind, stale.reason]).toEqual(['Transient', 'NonFastForward']);
    expect(stale.ref).toBe('refs/heads/main');
  });

  it('an unknown failure is Transient GitFailed with git\'s message, redacted', async () => {
    const dir = await repoWith({ 'a.txt': 'a\n' });
    const err = await gitRejection(runGit(['cat-file', '-p', 'secret-token-value'], { ...at(dir), redact: (t) => t.split('secret-token-value').join('[REDACTED]') }));
    expect([err.kind, err.reason]).toEqual(['Transient', 'GitFailed']);
    expect(err.message).toContain('[REDACTED]');
    expect(`${err.message}${err.stderr}${err.command}`).not.toContain('secret-token-value');
  });

  // ssh's and servers' own words (OpenSSH 9, git 2.39 receive-pack), for the cases a test machine
  // cannot produce without an ssh server; the same function reads live git output above.
  it.each([
    ['HostKeyUnknown', 'Stalled', 'No ED25519 host key is known for git.example.com and you have requested strict checking.\r\nHost key verification failed.\r\nfatal: Could not read from remote repository.\n', 'git.example.com'],
    ['HostKeyChanged', 'Stalled', '@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\nIT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\nHost key for git.example.com has changed and you have requested strict checking.\nHost key verification failed.\nfatal: Could not read from remote repository.\n', 'git.example.com'],
    ['AuthFailed', 'Stalled', 'git@git.example.com: Permission denied (publickey).\r\nfatal: Could not read from remote repository.\n', undefined],
    ['AuthFailed', 'Stalled', "fatal: Authentication failed for 'https://git.example.com/r.git/'\n", undefined],
    ['AuthFailed', 'Stalled', 'fatal: unable to access \'https://git.example.com/r.git/\': The requested URL returned error: 403\n', undefined],
    ['RefConflict', 'Transient', 'To http://127.0.0.1:1/r.git\n ! [remote rejected] develop -> develop (failed to update ref)\nerror: failed to push some refs\n', undefined],
    ['RefConflict', 'Transient', "To /srv/r.git\n ! [remote rejected] develop -> develop (cannot lock ref 'refs/heads/develop': is at 1111111111111111111111111111111111111111 but expected 2222222222222222222222222222222222222222)\n", undefined],
    ['NonFastForward', 'Transient', 'To /srv/r.git\n ! [rejected]        develop -> develop (fetch first)\nerror: failed to push some refs\n', undefined],
    ['PushRejected', 'Stalled', 'remote: Sorry, develop is protected.        \nTo /srv/r.git\n ! [remote rejected] develop -> develop (pre-receive hook declined)\n', undefined],
    ['RemoteUnavailable', 'Transient', 'ssh: connect to host git.example.com port 22: Connection refused\r\nfatal: Could not read from remote repository.\n', 'git.example.com'],
    // An HTTP server gone in the middle of a push (the fault storm's outage): curl's and git's words.
    ['RemoteUnavailable', 'Transient', 'error: RPC failed; curl 18 transfer closed with outstanding read data remaining\nsend-pack: unexpected disconnect while reading sideband packet\nfatal: the remote end hung up unexpectedly\n', undefined],
    ['RemoteUnavailable', 'Transient', 'fatal: unable to access \'http://127.0.0.1:1/r.git/\': transfer closed with outstanding read data remaining\n', undefined],
    ['RepositoryFormatUnsupported', 'Stalled', 'fatal: unknown repository extension found:\n\trefstorage\n', undefined],
  ])('%s (%s) from git/ssh wording', (reason, kind, stderr, host) => {
    const err = classifyGitFailure({ args: ['push', 'origin', 'develop'], exitCode: 1, stderr });
    expect([err.reason, err.kind]).toEqual([reason, kind]);
    if (host && reason.startsWith('HostKey')) expect(err.host).toBe(host);
    if (host) expect(err.message).toContain(reason.startsWith('HostKey') ? host : 'unreachable');
    if (reason === 'HostKeyUnknown') expect(err.hint).toMatch(/ssh -T git\.example\.com.*acceptNewHostKey/);
    if (reason === 'HostKeyChanged') expect(err.hint).toContain('never accepted');
    if (reason === 'PushRejected') expect(err.message).toContain('Sorry, develop is protected.');
    if (reason === 'RefConflict') expect(err.ref).toMatch(/develop/);
  });
});

describe('-z parsers against real git', () => {
  it('status --porcelain=v2 -z: ordinary, renamed with original path, unmerged, untracked, ignored, submodule state; odd names', async () => {
    const files: Record<string, string> = { '.gitignore': '*.log\n', 'conflict.txt': 'base\n', 'to-rename.txt': 'rename me, I am long enough to be recognised\n' };
    for (const n of ODD_NAMES) files[n] = `content of ${n}\n`;
    const dir = await repoWith(files);
    const subSrc = await repoWith({ 'inside.txt': 'i\n' });
    await git(dir, '-c', 'protocol.file.allow=always', 'submodule', '--quiet', 'add', subSrc, 'sub');
    await git(dir, 'commit', '--quiet', '-m', 'sub');
    // A conflict on conflict.txt.
    await git(dir, 'checkout', '--quiet', '-b', 'side');
    await writeFile(path.join(dir, 'conflict.txt'), 'side\n');
    await git(dir, 'commit', '--quiet', '-am', 'side');
    await git(dir, 'checkout', '--quiet', 'main');
    await writeFile(path.join(dir, 'conflict.txt'), 'main\n');
    await git(dir, 'commit', '--quiet', '-am', 'main');
    await gitOk(dir, 'merge', 'side');
    for (const n of ODD_NAMES) await writeFile(path.join(dir, n), `changed ${n}\n`);
    await git(dir, 'mv', 'to-rename.txt', 'tab\tnew name\n.txt');
    await writeFiles(dir, { 'new\tuntracked "file".txt': 'u\n', 'debug.log': 'ignored\n', 'sub/inside.txt': 'changed\n', 'sub/extra.txt': 'x\n' });
    const { stdout } = await runGit(['status', '--porcelain=v2', '-z', '--branch', '--untracked-files=all', '--ignored'], at(dir));
    const { headers, entries } = parseStatusV2(stdout);
    expect(headers['branch.head']).toBe('main');
    const byPath = new Map<string, StatusEntry>(entries.map((e) => [e.path, e]));
    for (const n of ODD_NAMES) expect(byPath.get(n), n).toMatchObject({ kind: 'ordinary', xy: '.M' });
    expect(byPath.get('tab\tnew name\n.txt')).toMatchObject({ kind: 'renamed', op: 'R', score: 100, originalPath: 'to-rename.txt', xy: 'R.' });
    expect(byPath.get('conflict.txt')).toMatchObject({ kind: 'unmerged', xy: 'UU' });
    const u = byPath.get('conflict.txt');
    if (u?.kind === 'unmerged') expect(u.oids.every((o) => /^[0-9a-f]{40}$/.test(o))).toBe(true);
    expect(byPath.get('new\tuntracked "file".txt')).toEqual({ kind: 'untracked', path: 'new\tuntracked "file".txt' });
    expect(byPath.get('debug.log')).toEqual({ kind: 'ignored', path: 'debug.log' });
    expect(byPath.get('sub')).toMatchObject({ kind: 'ordinary', submodule: { commitChanged: false, trackedChanges: true, untrackedChanges: true } });
  });

  it('ls-files -z -s and ls-tree -z -r -l list every odd name exactly', async () => {
    const files: Record<string, string> = {};
    for (const n of ODD_NAMES) files[n] = `content of ${n}\n`;
    const dir = await repoWith(files);
    const staged = parseLsFilesStage((await runGit(['ls-files', '-z', '-s'], at(dir))).stdout);
    expect(staged.map((e) => e.path).sort()).toEqual([...ODD_NAMES].sort());
    expect(staged.every((e) => e.stage === 0 && e.mode === '100644' && /^[0-9a-f]{40}$/.test(e.oid))).toBe(true);
    const tree = parseLsTree((await runGit(['ls-tree', '-z', '-r', '-l', 'HEAD'], at(dir))).stdout);
    expect(tree.map((e) => e.path).sort()).toEqual([...ODD_NAMES].sort());
    for (const e of tree) expect(e.size).toBe(Buffer.byteLength(`content of ${e.path}\n`));
    const top = parseLsTree((await runGit(['ls-tree', '-z', 'HEAD'], at(dir))).stdout);
    expect(top.find((e) => e.path === 'sp ace')).toMatchObject({ type: 'tree', mode: '040000', size: undefined });
  });

  it('runGitRecords hands over every record of a list bigger than a pipe chunk, multibyte names cut across chunks included, and keeps no stdout', async () => {
    const files: Record<string, string> = {};
    // About 400 KB of ls-files output: many 64 KB pipe chunks, so records and 2-byte characters are cut between them.
    for (let i = 0; i < 3000; i++) files[`dïr-${i % 7}/${'ü'.repeat(i % 50)}-${i}.txt`] = `${i}\n`;
    for (const n of ODD_NAMES) files[n] = `content of ${n}\n`;
    const dir = await repoWith(files);
    const whole = parseLsFilesStage((await runGit(['ls-files', '-z', '-s'], at(dir))).stdout);
    const streamed: IndexEntry[] = [];
    const result = await runGitRecords(['ls-files', '-z', '-s'], at(dir), (r) => streamed.push(parseLsFilesStageRecord(r)));
    expect(result.stdout.length).toBe(0);
    expect(streamed).toEqual(whole);
    expect(streamed.length).toBe(3000 + ODD_NAMES.length);
  });

  it('diff-tree -z --raw -r -M: added, deleted, modified, renamed, mode change; odd names', async () => {
    const dir = await repoWith({ 'keep\\me.txt': 'k\n', 'gone "x".txt': 'g\n', 'long.txt': 'a fairly long line that survives a rename intact\n'.repeat(5), 'run.sh': 'echo\n' });
    await rm(path.join(dir, 'gone "x".txt'));
    await writeFile(path.join(dir, 'keep\\me.txt'), 'k2\n');
    await git(dir, 'mv', 'long.txt', 'ne\nw\tlong.txt');
    await writeFile(path.join(dir, 'ädded.txt'), 'a\n');
    await chmod(path.join(dir, 'run.sh'), 0o755);
    await git(dir, 'add', '-A');
    await git(dir, 'commit', '--quiet', '-m', 'changes');
    const head = await git(dir, 'rev-parse', 'HEAD');
    const { commit, entries } = parseRawDiff((await runGit(['diff-tree', '-z', '--raw', '-r', '-M', 'HEAD'], at(dir))).stdout);
    expect(commit).toBe(head);
    const byPath = new Map(entries.map((e) => [e.path, e]));
    expect(byPath.get('gone "x".txt')).toMatchObject({ status: 'D', dstMode: '000000' });
    expect(byPath.get('keep\\me.txt')).toMatchObject({ status: 'M' });
    expect(byPath.get('ne\nw\tlong.txt')).toMatchObject({ status: 'R', score: 100, srcPath: 'long.txt' });
    expect(byPath.get('ädded.txt')).toMatchObject({ status: 'A', srcMode: '000000', srcOid: '0'.repeat(40) });
    expect(byPath.get('run.sh')).toMatchObject({ status: 'M', srcMode: '100644', dstMode: '100755' });
    const twoTrees = parseRawDiff((await runGit(['diff-tree', '-z', '--raw', '-r', 'HEAD~1', 'HEAD'], at(dir))).stdout);
    expect(twoTrees.commit).toBeUndefined();
    expect(twoTrees.entries.length).toBe(6);
  });

  it('for-each-ref: branches, annotated tags peeled, symbolic refs', async () => {
    const dir = await repoWith({ 'a.txt': 'a\n' });
    const head = await git(dir, 'rev-parse', 'HEAD');
    await git(dir, 'branch', 'develop');
    await git(dir, 'tag', '-a', 'v1', '-m', 'v1');
    await git(dir, 'update-ref', 'refs/remotes/origin/main', head);
    await git(dir, 'symbolic-ref', 'refs/remotes/origin/HEAD', 'refs/remotes/origin/main');
    const refs = await forEachRef(at(dir));
    const byRef = new Map(refs.map((r) => [r.ref, r]));
    expect(byRef.get('refs/heads/develop')).toEqual({ ref: 'refs/heads/develop', oid: head, type: 'commit', symref: undefined, peeled: undefined });
    expect(byRef.get('refs/tags/v1')).toMatchObject({ type: 'tag', peeled: head });
    expect(byRef.get('refs/remotes/origin/HEAD')).toMatchObject({ symref: 'refs/remotes/origin/main', oid: head });
    expect((await forEachRef(at(dir), ['refs/heads/'])).map((r) => r.ref)).toEqual(['refs/heads/develop', 'refs/heads/main']);
  });
});

describe('cat-file --batch reader', () => {
  it('reads blobs (binary, newlines, empty, large), trees and commits; missing is undefined; requests are answered in order', async () => {
    const binary = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7) % 256));
    const large = Buffer.alloc(3 * 1024 * 1024 + 17, 'line\n');
    const dir = await repoWith({ 'bin.dat': binary, 'empty': '', 'large.txt': large, 'new\nline.txt': 'x\ny\n' });
    const reader = new CatFileBatch(at(dir));
    try {
      const [bin, empty, big, odd, tree, commit, missing] = await Promise.all([
        reader.read('HEAD:bin.dat'), reader.read('HEAD:empty'), reader.read('HEAD:large.txt'), reader.read(await git(dir, 'rev-parse', 'HEAD:new\nline.txt')),
        reader.read('HEAD^{tree}'), reader.read('HEAD'), reader.read('0'.repeat(40)),
      ]);
      expect(bin?.data.equals(binary)).toBe(true);
      expect(empty).toMatchObject({ type: 'blob', size: 0 });
      expect(big?.data.equals(large)).toBe(true);
      expect(odd?.data.toString()).toBe('x\ny\n');
      expect(tree?.type).toBe('tree');
      expect(commit?.data.toString()).toContain('initial');
      expect(missing).toBeUndefined();
      await expect(reader.read('HEAD:a\nb')).rejects.toThrow(TypeError);
      expect(reader.starts).toBe(1);
    } finally {
      await reader.close();
    }
    await expect(reader.read('HEAD')).rejects.toMatchObject({ reason: 'CatFileClosed' });
  });

  it('a cat-file process killed mid-use is restarted and every pending request is answered', async () => {
    const large = Buffer.alloc(2 * 1024 * 1024, 'abcdefgh\n');
    const dir = await repoWith({ 'large.txt': large, 'small.txt': 'small\n' });
    const reader = new CatFileBatch(at(dir));
    try {
      await reader.read('HEAD:small.txt');
      const firstPid = reader.pid!;
      const reads = Array.from({ length: 40 }, (_, i) => reader.read(i % 2 ? 'HEAD:large.txt' : 'HEAD:small.txt'));
      const firstDone = await reads[0];
      expect(firstDone?.data.toString()).toBe('small\n');
      process.kill(-firstPid, 'SIGKILL');
      const all = await Promise.all(reads);
      all.forEach((obj, i) => expect(obj?.data.equals(i % 2 ? large : Buffer.from('small\n')), `read ${i}`).toBe(true));
      expect(reader.starts).toBeGreaterThanOrEqual(2);
      expect(reader.pid).not.toBe(firstPid);
      expect((await reader.read('HEAD:small.txt'))?.data.toString()).toBe('small\n');
    } finally {
      await reader.close();
    }
  });
});

describe('update-ref transactions', () => {
  it('moves several refs at once with expected old values; one stale expectation moves none', async () => {
    const dir = await repoWith({ 'a.txt': 'a\n' });
    const c1 = await git(dir, 'rev-parse', 'HEAD');
    await writeFile(path.join(dir, 'a.txt'), 'b\n');
    await git(dir, 'commit', '--quiet', '-am', 'second');
    const c2 = await git(dir, 'rev-parse', 'HEAD');
    await updateRefs(at(dir), [
      { ref: 'refs/heads/staging', newOid: c1, expectedOld: null },
      { ref: 'refs/heads/develop', newOid: c2, expectedOld: null },
    ]);
    expect(await git(dir, 'rev-parse', 'staging', 'develop')).toBe(`${c1}\n${c2}`);
    const err = await gitRejection(updateRefs(at(dir), [
      { ref: 'refs/heads/staging', newOid: c2, expectedOld: c1 },
      { ref: 'refs/heads/develop', newOid: c1, expectedOld: c1 },
    ]));
    expect([err.kind, err.reason, err.ref]).toEqual(['Transient', 'RefConflict', 'refs/heads/develop']);
    expect(await git(dir, 'rev-parse', 'staging', 'develop')).toBe(`${c1}\n${c2}`);
    const exists = await gitRejection(updateRefs(at(dir), [{ ref: 'refs/heads/staging', newOid: c2, expectedOld: null }]));
    expect([exists.reason, exists.ref]).toEqual(['RefConflict', 'refs/heads/staging']);
    await updateRefs(at(dir), [{ ref: 'refs/heads/staging', newOid: null, expectedOld: c1 }]);
    expect(await gitOk(dir, 'rev-parse', '--verify', '--quiet', 'staging')).toMatchObject({ code: 1 });
    expect(await git(dir, 'reflog', 'show', '--format=%gs', 'develop')).toContain('cascade-sync');
  });

  it('of two racing moves from the same old value exactly one wins; the other is a Transient race naming the ref', async () => {
    const dir = await repoWith({ 'a.txt': 'a\n' });
    const base = await git(dir, 'rev-parse', 'HEAD');
    const tree = await git(dir, 'rev-parse', 'HEAD^{tree}');
    const mine = await commitTree(at(dir), { tree, parents: [base], message: 'mine\n', author: TEST_AUTHOR });
    const theirs = await commitTree(at(dir), { tree, parents: [base], message: 'theirs\n', author: TEST_AUTHOR });
    for (let round = 0; round < 5; round++) {
      await git(dir, 'update-ref', 'refs/heads/race', base);
      const results = await Promise.allSettled([mine, theirs].map((oid) => updateRefs(at(dir), [{ ref: 'refs/heads/race', newOid: oid, expectedOld: base }])));
      const won = results.filter((r) => r.status === 'fulfilled');
      expect(won.length, `round ${round}`).toBe(1);
      const lost = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
      expect(lost.reason).toMatchObject({ kind: 'Transient', ref: 'refs/heads/race' });
      expect(['RefConflict', 'LockBusy']).toContain((lost.reason as GitError).reason);
    }
  });

  it('a held ref lock -> Transient LockBusy naming the ref and the lock', async () => {
    const dir = await repoWith({ 'a.txt': 'a\n' });
    const head = await git(dir, 'rev-parse', 'HEAD');
    await writeFile(path.join(dir, '.git', 'refs', 'heads', 'main.lock'), '');
    const err = await gitRejection(updateRefs(at(dir), [{ ref: 'refs/heads/main', newOid: head, expectedOld: head }]));
    expect([err.kind, err.reason, err.ref]).toEqual(['Transient', 'LockBusy', 'refs/heads/main']);
    expect(err.lockPath).toBe(path.join(dir, '.git', 'refs', 'heads', 'main.lock'));
  });
});

describe('git version', () => {
  it.each([
    ['git version 2.39.5', [2, 39, 5]],
    ['git version 2.39.3 (Apple Git-146)', [2, 39, 3]],
    ['git version 2.45.1.windows.1', [2, 45, 1]],
    ['git version 2.40.0.rc1', [2, 40, 0]],
    ['git version 2.38\n', [2, 38, 0]],
    ['git version 3.0.0-rc0', [3, 0, 0]],
  ])('parses %j', (text, [major, minor, patch]) => {
    expect(parseGitVersion(text)).toMatchObject({ major, minor, patch });
  });

  it.each(['', 'hub version 2.14.2', 'git 2.39.5', 'git version two'])('refuses %j', (text) => {
    expect(parseGitVersion(text)).toBeUndefined();
  });

  it('the installed git meets the minimum; a higher minimum is Stalled GitTooOld with a hint', async () => {
    const v = await gitVersion({ env: ENV });
    expect(compareGitVersions(v, parseGitVersion(`git version ${MIN_GIT_VERSION}`)!)).toBeGreaterThanOrEqual(0);
    await expect(requireGitVersion(undefined, { env: ENV })).resolves.toMatchObject({ major: v.major });
    const err = await gitRejection(requireGitVersion('99.1.0', { env: ENV }));
    expect([err.kind, err.reason]).toEqual(['Stalled', 'GitTooOld']);
    expect(err.message).toContain(v.text);
    expect(err.hint).toBeTruthy();
  });

  it('a missing git binary is Stalled GitNotFound', async () => {
    const err = await gitRejection(runGit(['version'], { env: { PATH: '/nonexistent-dir' } }));
    expect([err.kind, err.reason]).toEqual(['Stalled', 'GitNotFound']);
  });
});

describe('repository format', () => {
  it('detects sha1, sha256, reftable and unknown extensions; git itself refusing one is RepositoryFormatUnsupported', async () => {
    const sha1 = await repoWith({ 'a.txt': 'a\n' });
    expect(await repositoryFormat(path.join(sha1, '.git'), { env: ENV })).toMatchObject({ version: 0, objectFormat: 'sha1', refStorage: 'files', unknownExtensions: [] });
    const sha256 = await repoWith({ 'a.txt': 'a\n' }, ['--object-format=sha256']);
    const f256 = await requireSupportedFormat(path.join(sha256, '.git'), {}, { env: ENV });
    expect(f256).toMatchObject({ version: 1, objectFormat: 'sha256' });
    const refused = await gitRejection(requireSupportedFormat(path.join(sha256, '.git'), { objectFormats: ['sha1'] }, { env: ENV }));
    expect([refused.kind, refused.reason]).toEqual(['Stalled', 'RepositoryFormatUnsupported']);
    expect(refused.message).toContain('sha256');

    const odd = await repoWith({ 'a.txt': 'a\n' });
    const config = path.join(odd, '.git', 'config');
    await git(odd, 'config', '--file', config, 'core.repositoryformatversion', '1');
    await git(odd, 'config', '--file', config, 'extensions.refStorage', 'reftable');
    const reftable = await gitRejection(requireSupportedFormat(path.join(odd, '.git'), {}, { env: ENV }));
    expect(reftable.message).toContain('reftable');
    await git(odd, 'config', '--file', config, '--unset', 'extensions.refStorage');
    await git(odd, 'config', '--file', config, 'extensions.timeTravel', 'true');
    expect((await repositoryFormat(path.join(odd, '.git'), { env: ENV })).unknownExtensions).toEqual(['timetravel']);
    await expect(requireSupportedFormat(path.join(odd, '.git'), {}, { env: ENV })).rejects.toMatchObject({ reason: 'RepositoryFormatUnsupported' });
    const byGit = await gitRejection(runGit(['status'], at(odd)));
    expect([byGit.kind, byGit.reason]).toEqual(['Stalled', 'RepositoryFormatUnsupported']);
  });

  it('a linked worktree reads the common config', async () => {
    const sha256 = await repoWith({ 'a.txt': 'a\n' }, ['--object-format=sha256']);
    const wt = path.join(await makeTmpDir('gw-wt'), 'wt');
    await git(sha256, 'worktree', 'add', '--quiet', wt);
    const gitDir = await git(wt, 'rev-parse', '--absolute-git-dir');
    expect((await repositoryFormat(gitDir, { env: ENV })).objectFormat).toBe('sha256');
  });
});

describe('plumbing commit on the known path', () => {
  for (const objectFormat of ['sha1', 'sha256']) {
    it(`commits changed, added and deleted odd names; the result equals git add -A (${objectFormat})`, async () => {
      const files: Record<string, string> = {};
      for (const n of ODD_NAMES) files[n] = `v1 ${n}\n`;
      const dir = await repoWith(files, [`--object-format=${objectFormat}`]);
      const parent = await git(dir, 'rev-parse', 'HEAD');
      const [changed, deleted, ...rest] = ODD_NAMES;
      await writeFile(path.join(dir, changed!), 'v2\n');
      await rm(path.join(dir, deleted!));
      await writeFiles(dir, { 'brand\tnew/ö "file".txt': 'new\n' });
      const { commit, tree } = await commitKnownPaths(at(dir), {
        paths: [changed!, deleted!, 'brand\tnew/ö "file".txt'], ref: 'refs/heads/main', parent, message: 'sync: 3 paths\n', author: { ...TEST_AUTHOR, date: '2026-01-02T03:04:05Z' },
      });
      expect(commit).toMatch(objectFormat === 'sha1' ? /^[0-9a-f]{40}$/ : /^[0-9a-f]{64}$/);
      expect(await git(dir, 'rev-parse', 'HEAD', 'HEAD^{tree}', 'HEAD~1')).toBe(`${commit}\n${tree}\n${parent}`);
      expect(await git(dir, 'status', '--porcelain=v1', '-uall')).toBe('');
      await git(dir, 'add', '-A');
      expect(await git(dir, 'write-tree')).toBe(tree);
      expect(await git(dir, 'log', '-1', '--format=%an <%ae> %aI %B')).toBe(`${TEST_AUTHOR.name} <${TEST_AUTHOR.email}> 2026-01-02T03:04:05+00:00 sync: 3 paths`);
      expect(rest.length).toBeGreaterThan(0);
      await git(dir, 'fsck', '--strict', '--no-dangling');
      const reader = new CatFileBatch(at(dir));
      try {
        expect((await reader.read(`${commit}:${changed}`))?.data.toString()).toBe('v2\n');
      } finally {
        await reader.close();
      }
      const stale = await gitRejection(commitKnownPaths(at(dir), { paths: [], ref: 'refs/heads/main', parent, message: 'stale\n', author: TEST_AUTHOR }));
      expect([stale.reason, stale.ref]).toEqual(['RefConflict', 'refs/heads/main']);
    });
  }

  it('updateIndexInfo writes entries from existing blobs; writeTree sees them', async () => {
    const dir = await repoWith({ 'a.txt': 'a\n' });
    const blob = (await runGit(['hash-object', '-w', '--stdin'], { ...at(dir), stdin: 'from a merge\n' })).stdout.toString().trim();
    await updateIndexInfo(at(dir), [{ mode: '100644', oid: blob, path: 'm\\erged\tfile.txt' }, { mode: '0', oid: '0'.repeat(40), path: 'a.txt' }]);
    const tree = await writeTree(at(dir));
    const entries = parseLsTree((await runGit(['ls-tree', '-z', tree], at(dir))).stdout);
    expect(entries).toEqual([{ mode: '100644', type: 'blob', oid: blob, size: undefined, path: 'm\\erged\tfile.txt' }]);
  });
});

describe('merge-tree --write-tree', () => {
  it('a clean merge gives the tree git would; a conflict gives stages and messages; odd names', async () => {
    const dir = await repoWith({ 'shared.txt': 'one\ntwo\nthree\n', 'tab\there.txt': 'base\n' });
    await git(dir, 'checkout', '--quiet', '-b', 'side');
    await writeFiles(dir, { 'shared.txt': 'one\ntwo\nthree\nfour\n', 'only-side "q".txt': 's\n', 'tab\there.txt': 'side\n' });
    await git(dir, 'add', '-A');
    await git(dir, 'commit', '--quiet', '-m', 'side');
    await git(dir, 'checkout', '--quiet', 'main');
    await writeFiles(dir, { 'shared.txt': 'zero\none\ntwo\nthree\n', 'tab\there.txt': 'main\n' });
    await git(dir, 'commit', '--quiet', '-am', 'main');
    const result = await mergeTree(at(dir), 'main', 'side');
    expect(result.clean).toBe(false);
    expect(new Set(result.conflicts.map((c) => c.path))).toEqual(new Set(['tab\there.txt']));
    expect(result.conflicts.map((c) => c.stage).sort()).toEqual([1, 2, 3]);
    expect(result.messages.find((m) => m.type === 'CONFLICT (contents)')).toMatchObject({ paths: ['tab\there.txt'] });
    expect(result.messages.find((m) => m.type === 'Auto-merging' && m.paths[0] === 'shared.txt')).toBeDefined();
    const oracle = (await gitOk(dir, 'merge-tree', '--write-tree', 'main', 'side')).stdout.split('\n')[0];
    expect(result.tree).toBe(oracle);
    const merged = await git(dir, 'cat-file', 'blob', `${result.tree}:shared.txt`);
    expect(merged).toBe('zero\none\ntwo\nthree\nfour');

    await git(dir, 'checkout', '--quiet', '-b', 'other', 'main~1');
    await writeFiles(dir, { 'new\nfile.txt': 'n\n' });
    await git(dir, 'add', '-A');
    await git(dir, 'commit', '--quiet', '-m', 'other');
    const clean = await mergeTree(at(dir), 'main', 'other');
    expect(clean).toMatchObject({ clean: true, conflicts: [] });
    expect(clean.tree).toBe((await gitOk(dir, 'merge-tree', '--write-tree', 'main', 'other')).stdout.trim());
    expect(await git(dir, 'cat-file', 'blob', `${clean.tree}:new\nfile.txt`)).toBe('n');
    const unknown = await gitRejection(mergeTree(at(dir), 'main', 'no-such-branch'));
    expect([unknown.kind, unknown.reason]).toEqual(['Transient', 'GitFailed']);
    expect(unknown.message).toContain('no-such-branch');
  });
});
