import { randomBytes } from 'node:crypto';
import { chmod, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { GitError } from '../../src/git/native/index.js';
import { Repo } from '../../src/git/repo.js';
import { cloneTo, commitFiles, gitEnv, makeBareRepo, TEST_AUTHOR } from './git.js';
import { makeKeyPair, startSshGitServer, writeSshConfig, type KeyPair, type SshGitServer } from './ssh-server.js';
import { makeTmpDir } from './tmp.js';

// For tests of the transport (src/git/transport.ts) and the gateway below it: remotes to push to and
// fetch from, and the environment the installed git runs in.

/** The committer the tests hand to fetchBranch/pushBranch (`{ who }`): TEST_AUTHOR at a fixed time. */
export const who = { ...TEST_AUTHOR, timestamp: 1_700_000_000, timezoneOffset: 0 };

/**
 * Gives this test process the tests' git environment. The transport runs git with the process's own
 * environment, as the controller does: here the isolated HOME and no system config, and neither the
 * developer's ssh agent nor their GIT_SSH_COMMAND (nor GIT_TRACE). Call it from beforeAll.
 */
export function isolateProcessEnv(): void {
  const env = gitEnv();
  for (const k of ['HOME', 'XDG_CONFIG_HOME', 'GIT_CONFIG_NOSYSTEM', 'GIT_CEILING_DIRECTORIES']) process.env[k] = env[k];
  for (const k of ['SSH_AUTH_SOCK', 'SSH_AGENT_PID', 'GIT_SSH_COMMAND', 'GIT_SSH', 'GIT_TRACE']) delete process.env[k];
}

/** Runs `body` with process.env changed as given (undefined removes a variable), then puts it back as it was. */
export async function withEnv<T>(changes: Record<string, string | undefined>, body: () => Promise<T>): Promise<T> {
  const before: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(changes)) {
    before[k] = process.env[k];
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  try {
    return await body();
  } finally {
    for (const [k, v] of Object.entries(before)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

/**
 * The GitError `p` rejects with. Rejects with what `p` rejected with when that is not a GitError, and
 * with "expected a rejection" when `p` resolves.
 */
export async function gitRejection(p: Promise<unknown>): Promise<GitError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof GitError) return err;
    throw err;
  }
  throw new Error('expected a rejection');
}

/**
 * A bare remote (`site.git`) with one commit on develop, and a sandbox-like clone of it (`work-<random>`)
 * with one more commit of `files`, both in a new folder under `root` (or in a new temp dir). `tip` is that
 * commit, `repo` the clone opened as the controller opens a sandbox.
 */
export async function remoteAndClone(
  root?: string,
  files: Record<string, string> = { 'page.html': '<h1>hi</h1>\n', 'a/b.txt': 'b\n' },
  message = 'files',
): Promise<{ bare: string; work: string; repo: Repo; tip: string }> {
  const dir = root ? path.join(root, randomBytes(4).toString('hex')) : await makeTmpDir('cascade-native-');
  await mkdir(dir, { recursive: true });
  const bare = path.join(dir, 'site.git');
  await makeBareRepo(bare, { withCommit: true });
  const work = await cloneTo(bare, path.join(dir, `work-${randomBytes(3).toString('hex')}`), '--branch', 'develop');
  const tip = await commitFiles(work, files, message);
  return { bare, work, repo: await Repo.open(work), tip };
}

/** An ssh git server on 127.0.0.1 serving the bare repositories under `root`, with its keys. */
export interface SshRemoteHost {
  server: SshGitServer;
  /** The folder (mode 0700) holding the host's and the client's key pairs. */
  keys: string;
  hostKey: KeyPair;
  /** The one key the server accepts. */
  clientKey: KeyPair;
  root: string;
}

/**
 * Starts an ssh git server (helpers/ssh-server.ts) with a fresh host key, accepting one fresh client
 * key. The caller closes `server`. `prefix` names the temp dirs.
 */
export async function startSshRemoteHost(prefix: string): Promise<SshRemoteHost> {
  const keys = await makeTmpDir(`${prefix}-keys`);
  await chmod(keys, 0o700);
  const hostKey = await makeKeyPair(path.join(keys, 'host_ed25519'), 'test-host');
  const clientKey = await makeKeyPair(path.join(keys, 'client_ed25519'), 'test-client');
  const root = await makeTmpDir(`${prefix}-root`);
  const server = await startSshGitServer({ root, hostKey, authorizedKeys: [clientKey.publicLine] });
  return { server, keys, hostKey, clientKey, root };
}

/**
 * An ssh_config (in a new temp dir) that reaches `host`'s server as `gitbox`, trusting
 * `knownHostsLines` (default: the server's own host key) and offering `identity` (default the client
 * key; undefined: none, so only an agent's keys). Returns the GIT_SSH_COMMAND that uses it, and the
 * known_hosts file it names.
 */
export async function sshCommandFor(host: SshRemoteHost, o: { identity?: string; knownHostsLines?: string[] } = {}): Promise<{ command: string; knownHosts: string }> {
  const dir = await makeTmpDir('cascade-ssh-config-');
  const knownHosts = path.join(dir, 'known_hosts');
  const config = await writeSshConfig(path.join(dir, 'ssh_config'), {
    alias: 'gitbox', port: host.server.port, knownHosts, knownHostsLines: o.knownHostsLines ?? [host.server.knownHostsLine()],
    ...('identity' in o ? (o.identity ? { identity: o.identity } : {}) : { identity: host.clientKey.privatePath }),
  });
  return { command: `ssh -F ${config}`, knownHosts };
}
