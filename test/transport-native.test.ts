/**
 * The transport is the installed git's: ls-remote, fetch and push --porcelain against real remotes.
 * ssh through the real OpenSSH client to a real SSH server on 127.0.0.1 (the `ssh2` package's Server
 * running git-upload-pack/git-receive-pack), http(s) through git http-backend, local paths through
 * git-receive-pack with the remote's hooks and permissions.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { createHash, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../src/config/load.js';
import { remoteKind } from '../src/config/normalize.js';
import { GitError } from '../src/git/native/index.js';
import { Repo } from '../src/git/repo.js';
import { fetchBranch, pushBranch, remoteBranchTips, sshTarget, type RemoteTarget } from '../src/git/transport.js';
import { startGitHttpServer, type GitHttpServer } from './helpers/git-http-server.js';
import { cloneTo, commitFiles, fsckStrict, git, revParse, runGit as runTestGit, tryRevParse } from './helpers/git.js';
import { haveSshClient, makeKeyPair, startSshGitServer, writeSshConfig, type KeyPair, type SshGitServer } from './helpers/ssh-server.js';
import { gitRejection, isolateProcessEnv, remoteAndClone, sshCommandFor, startSshRemoteHost, who, withEnv, type SshRemoteHost } from './helpers/transport.js';
import { run } from './helpers/ssh.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

const cleanups: (() => Promise<unknown> | unknown)[] = [];

/** HOME and XDG_CONFIG_HOME as isolateProcessEnv set them, for tests that change them and put them back. */
const baseEnv: Record<string, string | undefined> = {};
beforeAll(() => {
  isolateProcessEnv();
  Object.assign(baseEnv, { HOME: process.env.HOME, XDG_CONFIG_HOME: process.env.XDG_CONFIG_HOME });
});
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
  await cleanupTmpDirs();
});

function local(url: string, extra: Partial<RemoteTarget> = {}): RemoteTarget {
  return { name: 'origin', url, kind: 'local', timeoutMs: 20_000, ...extra };
}

function runGitInput(cwd: string, args: string[], input: string) {
  return runTestGit({ cwd, args, input });
}

/** Every `*.lock` file under `dir`. */
function locks(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.lock')) out.push(p);
    }
  };
  walk(dir);
  return out;
}

describe('config: which remotes are ssh', () => {
  it.each([
    ['https://git.example.com/team/site.git', 'http'],
    ['HTTP://git.example.com/site.git', 'http'],
    ['ssh://git@git.example.com:2222/srv/site.git', 'ssh'],
    ['git+ssh://git.example.com/site.git', 'ssh'],
    ['git@github.com:owner/repo.git', 'ssh'],
    ['gitbox:/srv/site.git', 'ssh'],
    ['gitbox:site.git', 'ssh'],
    ['[::1]:srv/site.git', 'ssh'],
    ['/srv/site.git', 'local'],
    ['../remote.git', 'local'],
    ['remote.git', 'local'],
    ['./a:b/site.git', 'local'],
    ['dir/with:colon.git', 'local'],
    ['C:\\repos\\site.git', 'local'],
    ['C:/repos/site.git', 'local'],
  ])('%s is %s', (url, kind) => {
    expect(remoteKind(url)).toBe(kind);
  });

  it('loads an scp-like URL as written (never a relative folder), with acceptNewHostKey; other schemes are refused', () => {
    const text = [
      'version: 1',
      'sandbox: { branch: develop }',
      'remotes:',
      '  - { name: box, url: "gitbox:/srv/site.git", acceptNewHostKey: true }',
      '  - { name: gh, url: "git@github.com:owner/repo.git" }',
      '  - { name: sshurl, url: "ssh://git@git.example.com:2222/srv/site.git" }',
      '  - { name: here, url: remote.git }',
      '',
    ].join('\n');
    const loaded = parseConfig(text, '/home/me/site/cascade-sync-config.yaml', {});
    if (!loaded.ok) throw new Error(JSON.stringify(loaded.problems));
    expect(loaded.config.remotes.map((r) => [r.url, r.kind, r.acceptNewHostKey])).toEqual([
      ['gitbox:/srv/site.git', 'ssh', true],
      ['git@github.com:owner/repo.git', 'ssh', undefined],
      ['ssh://git@git.example.com:2222/srv/site.git', 'ssh', undefined],
      ['/home/me/site/remote.git', 'local', undefined],
    ]);
    const gitProtocol = parseConfig('version: 1\nsandbox: { branch: develop }\nremotes:\n  - { name: g, url: "git://git.example.com/site.git" }\n', '/x/cascade-sync-config.yaml', {});
    expect(gitProtocol.ok).toBe(false);
  });

  it('names the ssh target for `ssh -T` from either URL form', () => {
    expect(sshTarget('ssh://git@127.0.0.1:2222/srv/site.git')).toBe('-p 2222 git@127.0.0.1');
    expect(sshTarget('ssh://gitbox/srv/site.git')).toBe('gitbox');
    expect(sshTarget('git@github.com:owner/repo.git')).toBe('git@github.com');
    expect(sshTarget('gitbox:/srv/site.git')).toBe('gitbox');
  });
});

const sshMissing = !(await haveSshClient());
if (sshMissing) console.warn('transport-native: no OpenSSH client (ssh) on this machine: the ssh transport tests are skipped');

describe.skipIf(sshMissing)('ssh remotes through the real OpenSSH client', () => {
  let host: SshRemoteHost;
  let server: SshGitServer;
  let keys: string;
  let hostKey: KeyPair;
  let root: string;

  beforeAll(async () => {
    host = await startSshRemoteHost('cascade-ssh');
    ({ server, keys, hostKey, root } = host);
    cleanups.push(() => server.close());
  });

  /** An ssh_config for `gitbox` -> the server, trusting `knownHostsLines`, with `identity` (none: the agent's keys). */
  const sshCommand = (o: { identity?: string; knownHostsLines?: string[] } = {}) => sshCommandFor(host, o);

  function sshRemote(url: string, extra: Partial<RemoteTarget> = {}): RemoteTarget {
    return { name: 'origin', url, kind: 'ssh', timeoutMs: 20_000, ...extra };
  }

  it('fetches, lists and pushes over ssh:// with the user\'s GIT_SSH_COMMAND (BatchMode added, not replacing it)', async () => {
    const { bare, repo, tip } = await remoteAndClone(root);
    const remote = sshRemote(server.url(bare));
    const { command } = await sshCommand();
    await withEnv({ GIT_SSH_COMMAND: command }, async () => {
      const before = await revParse(bare, 'develop');
      expect(await fetchBranch(repo, remote, 'develop', { who })).toBe(before);
      await pushBranch(repo, remote, 'develop', tip, { who });
      expect(await revParse(bare, 'develop')).toBe(tip);
      expect(await remoteBranchTips(repo, remote, ['develop', 'nope'], { who })).toEqual({ develop: tip, nope: null });
    });
    await fsckStrict(bare);
    expect(server.execs.map((e) => e.command.split(' ')[0])).toEqual(expect.arrayContaining(['git-upload-pack', 'git-receive-pack']));
    expect(server.execs.every((e) => e.user === 'git')).toBe(true);
  });

  it('pushes to an scp-like alias of the ssh config (gitbox:/path)', async () => {
    const { bare, repo, tip } = await remoteAndClone(root);
    const url = `gitbox:${bare}`;
    expect(remoteKind(url)).toBe('ssh');
    const { command } = await sshCommand();
    await withEnv({ GIT_SSH_COMMAND: command }, () => pushBranch(repo, sshRemote(url), 'develop', tip, { who }));
    expect(await revParse(bare, 'develop')).toBe(tip);
    await fsckStrict(bare);
  });

  it('uses a key held by ssh-agent; without the agent: Stalled AuthFailed with the ssh-agent / SSH_AUTH_SOCK hint', async () => {
    const agentKey = await makeKeyPair(path.join(keys, 'agent_ed25519'), 'agent-only');
    const agentServerRoot = root;
    const agentServer = await startSshGitServer({ root: agentServerRoot, hostKey, authorizedKeys: [agentKey.publicLine] });
    cleanups.push(() => agentServer.close());
    const sock = path.join(await makeTmpDir('cascade-agent-'), 'agent.sock');
    const agent = spawn('ssh-agent', ['-D', '-a', sock], { stdio: 'ignore' });
    cleanups.push(() => agent.kill('SIGKILL'));
    await waitFor(() => existsSync(sock) || undefined, { what: 'the ssh-agent socket' });
    const added = await run('ssh-add', [agentKey.privatePath], { env: { SSH_AUTH_SOCK: sock } });
    expect(added.code, added.stderr).toBe(0);

    const { bare, repo, tip } = await remoteAndClone(root);
    const dir = await makeTmpDir('cascade-ssh-config-');
    const config = await writeSshConfig(path.join(dir, 'ssh_config'), { alias: 'gitbox', port: agentServer.port, knownHosts: path.join(dir, 'known_hosts'), knownHostsLines: [agentServer.knownHostsLine()] });
    const remote = sshRemote(`gitbox:${bare}`);
    // The key is only in the agent: no agent, no login.
    const refused = await withEnv({ GIT_SSH_COMMAND: `ssh -F ${config}`, SSH_AUTH_SOCK: undefined }, () => gitRejection(pushBranch(repo, remote, 'develop', tip, { who })));
    expect([refused.kind, refused.reason]).toEqual(['Stalled', 'AuthFailed']);
    expect(refused.hint).toMatch(/ssh-agent/);
    expect(refused.hint).toMatch(/SSH_AUTH_SOCK/);
    expect(refused.message).toContain(`remote origin (gitbox:${bare})`);
    await withEnv({ GIT_SSH_COMMAND: `ssh -F ${config}`, SSH_AUTH_SOCK: sock }, () => pushBranch(repo, remote, 'develop', tip, { who }));
    expect(await revParse(bare, 'develop')).toBe(tip);
  });

  it('a key the server does not accept: Stalled AuthFailed (publickey)', async () => {
    const stranger = await makeKeyPair(path.join(keys, `stranger_${randomBytes(3).toString('hex')}`), 'stranger');
    const { bare, repo, tip } = await remoteAndClone(root);
    const { command } = await sshCommand({ identity: stranger.privatePath });
    const before = server.refusedKeys;
    const err = await withEnv({ GIT_SSH_COMMAND: command }, () => gitRejection(fetchBranch(repo, sshRemote(server.url(bare)), 'develop', { who })));
    expect([err.kind, err.reason]).toEqual(['Stalled', 'AuthFailed']);
    expect(err.stderr).toMatch(/Permission denied \(publickey\)/);
    expect(server.refusedKeys).toBeGreaterThan(before);
    expect(await revParse(bare, 'develop')).not.toBe(tip);
  });

  it('an unknown host key: Stalled HostKeyUnknown at once with the `ssh -T` hint; acceptNewHostKey trusts it the first time', async () => {
    const { bare, repo, tip } = await remoteAndClone(root);
    const { command, knownHosts } = await sshCommand({ knownHostsLines: [] });
    const started = Date.now();
    const err = await withEnv({ GIT_SSH_COMMAND: command }, () => gitRejection(pushBranch(repo, sshRemote(`gitbox:${bare}`), 'develop', tip, { who })));
    expect(Date.now() - started).toBeLessThan(15_000);
    expect([err.kind, err.reason]).toEqual(['Stalled', 'HostKeyUnknown']);
    expect(err.hint).toContain('ssh -T gitbox');
    expect(err.hint).toContain('acceptNewHostKey: true');
    expect(await readFile(knownHosts, 'utf8')).toBe('');
    // The ssh:// form names host and port.
    const err2 = await withEnv({ GIT_SSH_COMMAND: command }, () => gitRejection(fetchBranch(repo, sshRemote(server.url(bare)), 'develop', { who })));
    expect(err2.hint).toContain(`ssh -T -p ${server.port} git@127.0.0.1`);

    await withEnv({ GIT_SSH_COMMAND: command }, () => pushBranch(repo, sshRemote(`gitbox:${bare}`, { acceptNewHostKey: true }), 'develop', tip, { who }));
    expect(await revParse(bare, 'develop')).toBe(tip);
    expect(await readFile(knownHosts, 'utf8')).toContain(server.knownHostsLine().split(' ').slice(1).join(' '));
  });

  it('a changed host key is refused: Stalled HostKeyChanged, also with acceptNewHostKey', async () => {
    const { bare, repo, tip } = await remoteAndClone(root);
    const impostor = await makeKeyPair(path.join(keys, `impostor_${randomBytes(3).toString('hex')}`), 'impostor');
    const wrongLine = `[127.0.0.1]:${server.port} ${impostor.publicLine.split(' ').slice(0, 2).join(' ')}`;
    const { command, knownHosts } = await sshCommand({ knownHostsLines: [wrongLine] });
    for (const acceptNewHostKey of [false, true]) {
      const err = await withEnv({ GIT_SSH_COMMAND: command }, () => gitRejection(pushBranch(repo, sshRemote(`gitbox:${bare}`, { acceptNewHostKey }), 'develop', tip, { who })));
      expect([err.kind, err.reason]).toEqual(['Stalled', 'HostKeyChanged']);
      expect(err.hint).toContain('never accepted');
    }
    expect(await readFile(knownHosts, 'utf8')).toBe(`${wrongLine}\n`);
    expect(await revParse(bare, 'develop')).not.toBe(tip);
  });
});

describe('http(s) remotes', () => {
  const USER = 'bob-the-user';
  const PASS = 's3cret-Pa55 with $pace';
  let server: GitHttpServer;
  let root: string;

  beforeAll(async () => {
    root = await makeTmpDir('cascade-http-');
    server = await startGitHttpServer({ root, username: USER, password: PASS });
    cleanups.push(() => server.close());
  });

  async function httpRemote(extra: Partial<RemoteTarget> = {}) {
    const { bare, repo, tip } = await remoteAndClone(root);
    const remote: RemoteTarget = { name: 'origin', url: server.url(path.basename(path.dirname(bare)) + '/site.git'), kind: 'http', timeoutMs: 20_000, ...extra };
    return { bare, repo, tip, remote };
  }

  it('hands the config\'s credentials to git through the askpass helper, never on a command line', async () => {
    const { bare, repo, tip, remote } = await httpRemote({ username: USER, password: PASS });
    const trace = path.join(await makeTmpDir('cascade-trace-'), 'trace.txt');
    // Every process on the machine whose command line holds the password, sampled while git runs.
    const seen: string[] = [];
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
          try {
            const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
            if (cmd.includes(PASS) || cmd.includes(encodeURIComponent(PASS))) seen.push(cmd);
          } catch { /* gone */ }
        }
        await new Promise((r) => setImmediate(r));
      }
    })();
    await withEnv({ GIT_TRACE: trace }, async () => {
      await pushBranch(repo, remote, 'develop', tip, { who });
      expect(await fetchBranch(repo, remote, 'develop', { who })).toBe(tip);
    });
    sampling = false;
    await sampler;
    expect(await revParse(bare, 'develop')).toBe(tip);
    expect(server.requests.some((r) => r.user === USER)).toBe(true);
    const traced = await readFile(trace, 'utf8');
    // git ran our helper for the answers (GIT_TRACE logs every command line git starts) ...
    expect(traced).toMatch(/cascade-sync-askpass 'Password for/);
    // ... and no command line held the password.
    expect(traced).not.toContain(PASS);
    expect(seen).toEqual([]);
  });

  it('a wrong password: Stalled AuthFailed, the password nowhere in the error', async () => {
    const { bare, repo, tip, remote } = await httpRemote({ username: USER, password: 'wrong-password-123' });
    const err = await gitRejection(pushBranch(repo, remote, 'develop', tip, { who }));
    expect([err.kind, err.reason]).toEqual(['Stalled', 'AuthFailed']);
    expect(err.hint).toMatch(/CASCADE_CLIENT_ID/);
    expect(`${err.message} ${err.hint} ${err.stderr} ${err.command}`).not.toContain('wrong-password-123');
    expect(`${err.message} ${err.command}`).not.toContain(USER);
    expect(await revParse(bare, 'develop')).not.toBe(tip);
  });

  it('without credentials in the config the user\'s credential helper answers; with them, the config wins over the helper', async () => {
    const home = await makeTmpDir('cascade-home-');
    const helper = (pass: string) => `!f() { test "$1" = get && printf 'username=${USER}\\npassword=${pass}\\n'; }; f`;
    await writeFile(path.join(home, '.gitconfig'), `[credential]\n\thelper = "${helper(PASS).replace(/"/g, '\\"')}"\n`);
    const { bare, repo, tip, remote } = await httpRemote();
    await withEnv({ HOME: home, XDG_CONFIG_HOME: path.join(home, '.config') }, () => pushBranch(repo, remote, 'develop', tip, { who }));
    expect(await revParse(bare, 'develop')).toBe(tip);
    // No helper and no credentials: AuthFailed at once, no prompt.
    const err = await gitRejection(fetchBranch(repo, remote, 'develop', { who }));
    expect(err.reason).toBe('AuthFailed');

    await writeFile(path.join(home, '.gitconfig'), `[credential]\n\thelper = "${helper('stale-helper-pass').replace(/"/g, '\\"')}"\n`);
    const next = await commitFiles(repo.dir, { 'more.txt': 'more\n' }, 'more');
    await withEnv({ HOME: home, XDG_CONFIG_HOME: path.join(home, '.config') }, async () => {
      expect((await gitRejection(fetchBranch(repo, remote, 'develop', { who }))).reason).toBe('AuthFailed');
      await pushBranch(repo, { ...remote, username: USER, password: PASS }, 'develop', next, { who });
    });
    expect(await revParse(bare, 'develop')).toBe(next);
  });
});

describe('local remotes through git-receive-pack', () => {
  it('runs the remote\'s post-receive hook and honours core.sharedRepository', async () => {
    const { bare, repo, tip } = await remoteAndClone();
    const marker = path.join(bare, 'post-receive.marker');
    await writeFile(path.join(bare, 'hooks', 'post-receive'), `#!/bin/sh\ncat >> '${marker}'\n`, { mode: 0o755 });
    await git(bare, 'config', 'core.sharedRepository', 'group');
    const before = await revParse(bare, 'develop');
    const umask = process.umask(0o077);
    try {
      await pushBranch(repo, local(bare), 'develop', tip, { who });
    } finally {
      process.umask(umask);
    }
    expect((await readFile(marker, 'utf8')).trim()).toBe(`${before} ${tip} refs/heads/develop`);
    // Under umask 077 a plain write would leave the new object folders private; git made them the group's.
    const objectDir = path.join(bare, 'objects', tip.slice(0, 2));
    expect(statSync(objectDir).mode & 0o070).toBe(0o070);
    await fsckStrict(bare);
  });

  it('a hook that refuses: Stalled PushRejected with the hook\'s message; the branch stays', async () => {
    const { bare, repo, tip } = await remoteAndClone();
    await writeFile(path.join(bare, 'hooks', 'pre-receive'), '#!/bin/sh\necho "develop is frozen until the release is out" >&2\nexit 1\n', { mode: 0o755 });
    const before = await revParse(bare, 'develop');
    const err = await gitRejection(pushBranch(repo, local(bare), 'develop', tip, { who }));
    expect([err.kind, err.reason]).toEqual(['Stalled', 'PushRejected']);
    expect(err.message).toContain('develop is frozen until the release is out');
    expect(err.message).toMatch(/refused the push/);
    expect(err.message).toContain(`remote origin (${bare})`);
    expect(await revParse(bare, 'develop')).toBe(before);
  });

  it('two pushes racing: one is Transient, and both land after fetch, merge and a second push', async () => {
    const dir = await makeTmpDir('cascade-race-');
    const { bare, work: a, repo: repoA, tip: tipA } = await remoteAndClone(dir);
    const b = await cloneTo(bare, path.join(path.dirname(bare), 'b'), '--branch', 'develop');
    const tipB = await commitFiles(b, { 'b-only.txt': 'b\n' }, 'from b');
    const repoB = await Repo.open(b);
    const results = await Promise.allSettled([pushBranch(repoA, local(bare), 'develop', tipA, { who }), pushBranch(repoB, local(bare), 'develop', tipB, { who })]);
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    expect(failed).toHaveLength(1);
    const err = failed[0]!.reason as GitError;
    expect(err.kind).toBe('Transient');
    expect(['NonFastForward', 'RefConflict']).toContain(err.reason);
    const [loser, loserRepo] = results[0]!.status === 'rejected' ? [a, repoA] : [b, repoB];
    const theirs = await fetchBranch(loserRepo, local(bare), 'develop', { who });
    expect(theirs).toBe(await revParse(bare, 'develop'));
    await git(loser, 'merge', '--quiet', '--no-edit', 'refs/remotes/origin/develop');
    await pushBranch(loserRepo, local(bare), 'develop', await revParse(loser), { who });
    const remoteTip = await revParse(bare, 'develop');
    for (const t of [tipA, tipB]) expect((await git(bare, 'merge-base', '--is-ancestor', t, remoteTip).then(() => true))).toBe(true);
    await fsckStrict(bare);
  });

  it('a forced push is a lease: it moves a branch back only while the remote holds the commit the caller saw', async () => {
    const { bare, work, repo } = await remoteAndClone();
    const first = await revParse(work, 'HEAD~1');
    const ahead = await revParse(work);
    await pushBranch(repo, local(bare), 'develop', ahead, { who });
    // Someone else moved it meanwhile: a lease on what the caller saw (ahead) fails.
    const other = await cloneTo(bare, path.join(path.dirname(work), 'other'), '--branch', 'develop');
    const theirs = await commitFiles(other, { 'theirs.txt': 't\n' }, 'theirs');
    await git(other, 'push', '-q', 'origin', 'develop');
    const stale = await gitRejection(pushBranch(repo, local(bare), 'develop', first, { who, force: true, expectedOld: ahead }));
    expect([stale.kind, stale.reason]).toEqual(['Transient', 'NonFastForward']);
    expect(await revParse(bare, 'develop')).toBe(theirs);
    // With what it holds now: moved back.
    await pushBranch(repo, local(bare), 'develop', first, { who, force: true, expectedOld: theirs });
    expect(await revParse(bare, 'develop')).toBe(first);
    // No expectedOld: the tip remoteBranchTips saw last.
    expect(await remoteBranchTips(repo, local(bare), ['develop'], { who })).toEqual({ develop: first });
    await pushBranch(repo, local(bare), 'develop', ahead, { who, force: true });
    expect(await revParse(bare, 'develop')).toBe(ahead);
    // A new branch: expectedOld null means "must not exist yet".
    await pushBranch(repo, local(bare), 'staging', ahead, { who, force: true, expectedOld: null });
    expect((await gitRejection(pushBranch(repo, local(bare), 'staging', first, { who, force: true, expectedOld: null }))).kind).toBe('Transient');
    expect(await revParse(bare, 'staging')).toBe(ahead);
  });

  it('reports push progress from git --progress; a missing branch fetches as null; a missing repository is Stalled with how to make it', async () => {
    const { bare, repo } = await remoteAndClone();
    const files: Record<string, string> = {};
    for (let i = 0; i < 300; i++) files[`many/f${i}.txt`] = `file ${i}\n`.repeat(20);
    const tip = await commitFiles(repo.dir, files, 'many');
    const progress: [number, number | undefined][] = [];
    await pushBranch(repo, local(bare), 'develop', tip, { who, onProgress: (n, total) => progress.push([n, total]) });
    expect(progress.length).toBeGreaterThan(0);
    const [n, total] = progress[progress.length - 1]!;
    expect(n).toBe(total);
    expect(total).toBeGreaterThanOrEqual(300);

    expect(await fetchBranch(repo, local(bare), 'no-such-branch', { who })).toBeNull();
    const missing = path.join(path.dirname(bare), 'nothing-here.git');
    const err = await gitRejection(fetchBranch(repo, local(missing), 'develop', { who }));
    expect([err.kind, err.reason]).toEqual(['Stalled', 'RemoteNotFound']);
    expect(err.hint).toContain(`git init --bare ${missing}`);
  });

  it('refuses transports other than file, http(s) and ssh: an ext:: URL runs nothing', async () => {
    const { repo } = await remoteAndClone();
    const marker = path.join(await makeTmpDir('cascade-ext-'), 'ran');
    const url = `ext::sh -c touch% ${marker}`;
    expect(remoteKind(url)).toBe('ssh');
    const remote: RemoteTarget = { name: 'origin', url, kind: 'ssh', timeoutMs: 10_000 };
    const tip = await revParse(repo.dir);
    for (const attempt of [() => fetchBranch(repo, remote, 'develop', { who }), () => pushBranch(repo, remote, 'develop', tip, { who }), () => remoteBranchTips(repo, remote, ['develop'], { who })]) {
      const err = await gitRejection(attempt());
      expect([err.kind, err.reason]).toEqual(['Stalled', 'ProtocolNotAllowed']);
    }
    expect(existsSync(marker)).toBe(false);
  });

  it('fetches a real history with deltas into packs that the sandbox\'s own reader reads', async () => {
    const dir = await makeTmpDir('cascade-history-');
    const src = path.join(dir, 'src');
    await mkdir(src);
    await git(src, 'init', '-q', '--bare');
    // 150 commits through fast-import, a file growing a little in each, others renamed and deleted:
    // a pack of delta chains once repacked.
    let text = '';
    let stream = '';
    for (let i = 0; i < 150; i++) {
      text += `line ${i}: ${'lorem ipsum dolor sit amet '.repeat(4)}\n`;
      const note = `note ${i}\n${text.slice(0, 500)}`;
      stream += `commit refs/heads/develop\ncommitter T <t@example.invalid> ${1_700_000_000 + i} +0000\ndata <<EOM\nstep ${i}\nEOM\n`;
      stream += `M 100644 inline book.txt\ndata ${Buffer.byteLength(text)}\n${text}\n`;
      stream += `M 100644 inline notes/${i % 7}.md\ndata ${Buffer.byteLength(note)}\n${note}\n`;
      if (i % 10 === 9) stream += `R notes/${i % 7}.md old/${i}.md\n`;
      if (i % 25 === 24) stream += `D old/${i - 15}.md\n`;
    }
    const imported = await runGitInput(src, ['fast-import', '--quiet'], stream);
    expect(imported.code, imported.stderr).toBe(0);
    const bare = path.join(dir, 'remote.git');
    await git(dir, 'clone', '-q', '--bare', src, bare);
    await git(bare, 'repack', '-a', '-d', '-q', '--depth=50', '--window=50');
    const work = await makeTmpDir('cascade-history-work-');
    await git(work, 'init', '-q', '-b', 'develop');
    const repo = await Repo.open(work);
    const tip = await fetchBranch(repo, local(bare), 'develop', { who });
    expect(tip).toBe(await revParse(bare, 'develop'));
    // The remote is mirrored into .git/config, so a native `git fetch origin` works too.
    expect(await git(work, 'config', '--get', 'remote.origin.url')).toBe(bare);
    expect(await git(work, 'config', '--get', 'remote.origin.fetch')).toBe('+refs/heads/*:refs/remotes/origin/*');
    // git kept what it received as a pack with deltas (well past fetch.unpackLimit).
    const packs = readdirSync(path.join(work, '.git', 'objects', 'pack')).filter((n) => n.endsWith('.pack'));
    expect(packs.length).toBeGreaterThan(0);
    const verify = await git(work, 'verify-pack', '-v', path.join(work, '.git', 'objects', 'pack', packs[0]!));
    expect(verify).toMatch(/chain length = \d+/);
    // Every object, read by our reader, is what git says it is: its type, and content that hashes to its id.
    const objects = (await git(work, 'rev-list', '--objects', '--all')).split('\n').map((l) => l.slice(0, 40));
    expect(objects.length).toBeGreaterThan(300);
    const types = new Map((await runGitInput(work, ['cat-file', '--batch-check=%(objectname) %(objecttype)'], objects.join('\n') + '\n')).stdout.trim().split('\n').map((l) => l.split(' ') as [string, string]));
    for (const oid of objects) {
      const { type, object } = await repo.readRaw(oid);
      expect(type).toBe(types.get(oid));
      expect(createHash('sha1').update(`${type} ${object.length}\0`).update(object).digest('hex')).toBe(oid);
    }
    expect((await repo.readBlob(await revParse(work, `${tip}:book.txt`))).toString()).toBe(text);
  }, 120_000);
});

describe('a push killed midway leaves the remote usable', () => {
  /** A commit of `count` incompressible files of `size` bytes: long enough a push to be caught midway. */
  async function bigCommit(work: string, count = 400, size = 48 * 1024): Promise<string> {
    const files: Record<string, Buffer> = {};
    for (let i = 0; i < count; i++) files[`big/f${i}.bin`] = randomBytes(size);
    return commitFiles(work, files, 'big');
  }

  /** Processes running `git push ...` whose command line names `bare`, with their process group. */
  function pushProcesses(bare: string): { pid: number; pgid: number }[] {
    const out: { pid: number; pgid: number }[] = [];
    for (const name of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
      try {
        const cmd = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0');
        if (!(cmd[0] === 'git' && cmd.includes('push') && cmd.includes(bare)) && !(cmd.some((c) => c.endsWith('receive-pack')) && cmd.includes(bare))) continue;
        const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
        out.push({ pid: Number(name), pgid: Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2]) });
      } catch { /* gone */ }
    }
    return out;
  }

  async function expectUsable(bare: string, repo: Repo, tip: string): Promise<void> {
    await waitFor(() => pushProcesses(bare).length === 0 || undefined, { what: 'every git of the killed push to be gone', timeoutMs: 30_000 });
    await pushBranch(repo, local(bare), 'develop', tip, { who });
    expect(await revParse(bare, 'develop')).toBe(tip);
    expect(locks(bare)).toEqual([]);
    await fsckStrict(bare);
    // A native push from elsewhere works too.
    const other = await cloneTo(bare, path.join(path.dirname(repo.dir), `other-${randomBytes(3).toString('hex')}`), '--branch', 'develop');
    await commitFiles(other, { 'after.txt': 'after\n' }, 'after');
    await git(other, 'push', '-q', 'origin', 'develop');
  }

  it.skipIf(!existsSync('/proc/self/stat'))('kill -9 of the push\'s whole process group mid-transfer', async () => {
    const { bare, repo } = await remoteAndClone();
    const tip = await bigCommit(repo.dir);
    let killed = false;
    const pushing = pushBranch(repo, local(bare), 'develop', tip, {
      who,
      onProgress: (n, total) => {
        if (killed || total === undefined || n >= total / 2 || n < 1) return;
        const procs = pushProcesses(bare);
        if (!procs.length) return;
        killed = true;
        for (const pgid of new Set(procs.map((p) => p.pgid))) process.kill(-pgid, 'SIGKILL');
      },
    });
    await expect(pushing).rejects.toBeTruthy();
    expect(killed).toBe(true);
    expect(await tryRevParse(bare, 'develop')).not.toBe(tip);
    await expectUsable(bare, repo, tip);
  }, 120_000);

  it('kill -9 of the controller\'s process mid-push', async () => {
    const dist = path.resolve('dist/src/git/transport.js');
    expect(existsSync(dist), 'build first: npx tsc -p tsconfig.json').toBe(true);
    const { bare, repo } = await remoteAndClone();
    const tip = await bigCommit(repo.dir);
    const script = `
      const { pushBranch } = await import(${JSON.stringify(pathToFileURL(dist).href)});
      const { Repo } = await import(${JSON.stringify(pathToFileURL(path.resolve('dist/src/git/repo.js')).href)});
      const repo = await Repo.open(${JSON.stringify(repo.dir)});
      await pushBranch(repo, ${JSON.stringify(local(bare))}, 'develop', ${JSON.stringify(tip)}, {
        who: ${JSON.stringify(who)}, onProgress: (n, t) => console.log('progress', n, t),
      });
      console.log('done');`;
    const child: ChildProcess = spawn(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    await waitFor(() => {
      const m = /progress (\d+) (\d+)\n/.exec(out);
      return (m && Number(m[1]) < Number(m[2])) || out.includes('done') ? true : undefined;
    }, { what: "the child's push to be underway", timeoutMs: 60_000, intervalMs: 5 }).catch((e: Error) => {
      throw new Error(`${e.message}: ${stderr}`);
    });
    expect(out).not.toContain('done');
    child.kill('SIGKILL');
    expect(await exited).toBeNull();
    await expectUsable(bare, repo, tip);
  }, 120_000);
});
