import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Repo } from '../../src/git/repo.js';
import { makeTmpDir } from './tmp.js';

/** Identity used for every commit made through these helpers (and by tests that compare authors). */
export const TEST_AUTHOR = { name: 'Cascade Test', email: 'cascade-test@example.invalid' } as const;

const TEST_GITCONFIG = [
  '[init]',
  '\tdefaultBranch = main',
  '[advice]',
  '\tdetachedHead = false',
  '',
].join('\n');

let isolatedHome: string | undefined;

/**
 * A HOME holding only TEST_GITCONFIG, so the developer's global config (credential helpers,
 * hooksPath, signing, url rewrites) never leaks into a test. Its name is derived from the config's
 * hash, so all runs share one directory instead of leaking one per worker (vitest kills fork workers
 * without running 'exit' handlers); it is written atomically because workers race to create it.
 */
function testHome(): string {
  if (isolatedHome === undefined) {
    const digest = createHash('sha256').update(TEST_GITCONFIG).digest('hex').slice(0, 12);
    const home = path.join(os.tmpdir(), `cascade-git-home-${process.getuid?.() ?? 'user'}-${digest}`);
    const file = path.join(home, '.gitconfig');
    mkdirSync(home, { recursive: true });
    let current: string | undefined;
    try {
      current = readFileSync(file, 'utf8');
    } catch {
      current = undefined;
    }
    if (current !== TEST_GITCONFIG) {
      const staged = `${file}.${process.pid}.tmp`;
      writeFileSync(staged, TEST_GITCONFIG);
      renameSync(staged, file);
    }
    isolatedHome = home;
  }
  return isolatedHome;
}

/**
 * The environment every helper runs git with: the caller's PATH and locale, no inherited GIT_*
 * variables (a test run from a git hook would otherwise inherit GIT_DIR/GIT_INDEX_FILE), a fixed
 * identity, no system config, an isolated HOME, and no terminal prompts (a missing credential fails
 * instead of blocking). `extra` is merged last.
 */
export function gitEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (key.startsWith('GIT_') || key === 'SSH_ASKPASS' || key === 'XDG_CONFIG_HOME') continue;
    env[key] = value;
  }
  const home = testHome();
  return {
    ...env,
    HOME: home,
    XDG_CONFIG_HOME: path.join(home, '.config'),
    GIT_CONFIG_NOSYSTEM: '1',
    GIT_AUTHOR_NAME: TEST_AUTHOR.name,
    GIT_AUTHOR_EMAIL: TEST_AUTHOR.email,
    GIT_COMMITTER_NAME: TEST_AUTHOR.name,
    GIT_COMMITTER_EMAIL: TEST_AUTHOR.email,
    GIT_TERMINAL_PROMPT: '0',
    // Keeps repository discovery from walking out of a temp dir into some unrelated /tmp/.git.
    GIT_CEILING_DIRECTORIES: os.tmpdir(),
    ...extra,
  };
}

/**
 * gitEnv's test HOME, identity and no system config (its GIT_* variables, HOME and XDG_CONFIG_HOME), as
 * the `env` of a src/git/native call: additions over the gateway's own environment, which keeps
 * terminal prompts off itself.
 */
export function gatewayEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(gitEnv())) if (v !== undefined && (k.startsWith('GIT_') || k === 'HOME' || k === 'XDG_CONFIG_HOME')) env[k] = v;
  delete env['GIT_TERMINAL_PROMPT'];
  return env;
}

export interface GitResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface RunGitOptions {
  cwd: string;
  args: readonly string[];
  /** Merged over gitEnv(). */
  env?: NodeJS.ProcessEnv;
  /** Written to git's stdin, which is then closed. */
  input?: string | Buffer;
}

/**
 * Runs native git and never rejects for a non-zero exit: resolves with the exit code and raw
 * stdout/stderr. Rejects only if git cannot be started at all (missing binary, missing cwd).
 */
export function runGit(opts: RunGitOptions): Promise<GitResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      'git',
      [...opts.args],
      { cwd: opts.cwd, env: gitEnv(opts.env), maxBuffer: 256 * 1024 * 1024, encoding: 'utf8' },
      (err, stdout, stderr) => {
        if (err && typeof err.code !== 'number') {
          reject(err);
          return;
        }
        resolve({ code: err ? Number(err.code) : 0, stdout, stderr });
      },
    );
    child.stdin?.on('error', () => undefined); // git may exit before reading all input (EPIPE)
    child.stdin?.end(opts.input);
  });
}

/** Thrown by git() and friends when git exits non-zero; the message carries the command and stderr. */
export class GitCommandError extends Error {
  constructor(
    readonly args: readonly string[],
    readonly cwd: string,
    readonly result: GitResult,
  ) {
    super(`git ${args.join(' ')} (in ${cwd}) exited ${result.code}: ${result.stderr.trim() || result.stdout.trim()}`);
    this.name = 'GitCommandError';
  }
}

/** Runs `git ...args` in `cwd`; resolves with trimmed stdout, rejects with GitCommandError on non-zero exit. */
export async function git(cwd: string, ...args: string[]): Promise<string> {
  const result = await runGit({ cwd, args });
  if (result.code !== 0) throw new GitCommandError(args, cwd, result);
  return result.stdout.trim();
}

/** Runs `git ...args` in `cwd` for tests that expect failure: resolves with {code, stdout, stderr}, never rejects on exit code. */
export function gitOk(cwd: string, ...args: string[]): Promise<GitResult> {
  return runGit({ cwd, args });
}

async function gitIn(opts: RunGitOptions): Promise<string> {
  const result = await runGit(opts);
  if (result.code !== 0) throw new GitCommandError(opts.args, opts.cwd, result);
  return result.stdout.trim();
}

export interface MakeBareRepoOptions {
  /** Branch HEAD names (and that holds the commit, with withCommit). Default 'develop'. */
  initialBranch?: string;
  /** Create one commit ("initial commit", a README.md) on the initial branch. Default false. */
  withCommit?: boolean;
}

/**
 * Creates a bare repository at `dir` (parents created) with HEAD -> refs/heads/<initialBranch>.
 * With withCommit the branch exists, so HEAD names a real branch (a clone then checks it out).
 * Resolves with the commit oid when withCommit, otherwise undefined; rejects with GitCommandError.
 */
export async function makeBareRepo(dir: string, opts: MakeBareRepoOptions = {}): Promise<string | undefined> {
  const branch = opts.initialBranch ?? 'develop';
  await mkdir(dir, { recursive: true });
  await git(dir, 'init', '--quiet', '--bare', `--initial-branch=${branch}`);
  if (!opts.withCommit) return undefined;
  // Plumbing instead of a scratch clone: no worktree, no index left behind in the bare repo.
  const blob = await gitIn({ cwd: dir, args: ['hash-object', '-w', '--stdin'], input: '# test repository\n' });
  const tree = await gitIn({ cwd: dir, args: ['mktree'], input: `100644 blob ${blob}\tREADME.md\n` });
  const commit = await git(dir, 'commit-tree', tree, '-m', 'initial commit');
  await git(dir, 'update-ref', `refs/heads/${branch}`, commit, '');
  return commit;
}

/**
 * Clones `url` into `dir` (which must not exist or be empty) with native git and resolves with `dir`.
 * Extra args go before the URL (e.g. '--branch', 'main'). Rejects with GitCommandError (stderr included).
 */
export async function cloneTo(url: string, dir: string, ...args: string[]): Promise<string> {
  await mkdir(path.dirname(dir), { recursive: true });
  await git(path.dirname(dir), 'clone', '--quiet', ...args, url, dir);
  return dir;
}

/**
 * Writes `files` (paths relative to the worktree `dir`, parents created), stages everything
 * (`git add -A`, so deletions made beforehand are included) and commits with `message`.
 * Resolves with the new HEAD oid; rejects with GitCommandError (for example when nothing changed).
 */
export async function commitFiles(dir: string, files: Record<string, string | Buffer>, message: string): Promise<string> {
  for (const [rel, content] of Object.entries(files)) {
    const abs = path.join(dir, rel);
    await mkdir(path.dirname(abs), { recursive: true });
    await writeFile(abs, content);
  }
  await git(dir, 'add', '-A');
  await git(dir, 'commit', '--quiet', '-m', message);
  return git(dir, 'rev-parse', 'HEAD');
}

/**
 * Runs `git fsck --strict --no-dangling` in `repoDir` (a bare repo or a worktree). Resolves when the
 * repository is clean; rejects with the full report when git exits non-zero or prints anything other
 * than `notice:` lines (fsck reports missing/broken objects on stdout and bad objects on stderr).
 */
export async function fsckStrict(repoDir: string): Promise<void> {
  const args = ['fsck', '--strict', '--no-dangling', '--no-progress'];
  const result = await runGit({ cwd: repoDir, args });
  const complaints = [...result.stdout.split('\n'), ...result.stderr.split('\n')]
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('notice:'));
  if (result.code !== 0 || complaints.length > 0) {
    throw new GitCommandError(args, repoDir, {
      ...result,
      stderr: `fsck found problems:\n${[result.stdout, result.stderr].join('\n').trim()}`,
    });
  }
}

/** `git status --porcelain=v1 -uall` in worktree `dir`: one entry per line ("XY path"); [] when clean. */
export async function statusPorcelain(dir: string): Promise<string[]> {
  const result = await runGit({ cwd: dir, args: ['status', '--porcelain=v1', '-uall'] });
  if (result.code !== 0) throw new GitCommandError(['status'], dir, result);
  return result.stdout.split('\n').filter((line) => line !== '');
}

/** Subjects of the commits reachable from `ref` (default HEAD), newest first; works in bare repos and worktrees. */
export async function logOneline(repoDir: string, ref = 'HEAD'): Promise<string[]> {
  const out = await git(repoDir, 'log', '--format=%s', ref, '--');
  return out === '' ? [] : out.split('\n');
}

/** Full oid `ref` resolves to (`git rev-parse --verify`, so `main`, `origin/main`, `HEAD~1`, `v1^{commit}` all work); rejects with GitCommandError if it does not resolve. */
export function revParse(repoDir: string, ref = 'HEAD'): Promise<string> {
  return git(repoDir, 'rev-parse', '--verify', ref);
}

/** Resolves with the oid of `ref`, or undefined when the ref does not exist (no throw). */
export async function tryRevParse(repoDir: string, ref: string): Promise<string | undefined> {
  const result = await runGit({ cwd: repoDir, args: ['rev-parse', '--verify', '--quiet', ref] });
  return result.code === 0 ? result.stdout.trim() : undefined;
}

export interface TreeEntry {
  mode: string;
  type: 'blob' | 'tree' | 'commit';
  oid: string;
  path: string;
}

/** Every blob (and gitlink) in `ref`'s tree, recursively, paths relative to the root, sorted as git sorts them. */
export async function lsTree(repoDir: string, ref = 'HEAD'): Promise<TreeEntry[]> {
  const result = await runGit({ cwd: repoDir, args: ['ls-tree', '-r', '-z', '--full-tree', ref] });
  if (result.code !== 0) throw new GitCommandError(['ls-tree', ref], repoDir, result);
  return result.stdout
    .split('\0')
    .filter((record) => record !== '')
    .map((record) => {
      const tab = record.indexOf('\t');
      const [mode = '', type = '', oid = ''] = record.slice(0, tab).split(' ');
      return { mode, type: type as TreeEntry['type'], oid, path: record.slice(tab + 1) };
    });
}

/** Exact bytes of `filePath` at `ref` (`git cat-file blob <ref>:<path>`); rejects if it does not exist there. */
export function showFile(repoDir: string, ref: string, filePath: string): Promise<Buffer> {
  const args = ['cat-file', 'blob', `${ref}:${filePath}`];
  return new Promise((resolve, reject) => {
    execFile(
      'git',
      args,
      { cwd: repoDir, env: gitEnv(), maxBuffer: 256 * 1024 * 1024, encoding: 'buffer' },
      (err, stdout, stderr) => {
        if (err) {
          const code = typeof err.code === 'number' ? err.code : -1;
          reject(new GitCommandError(args, repoDir, { code, stdout: '', stderr: stderr.toString('utf8') }));
        } else {
          resolve(stdout);
        }
      },
    );
  });
}

/** Map of ref name -> oid from `git ls-remote <remote>` run in `cwd`; rejects with GitCommandError (stderr says why). */
export async function lsRemote(cwd: string, remote: string): Promise<Map<string, string>> {
  const out = await git(cwd, 'ls-remote', remote);
  const refs = new Map<string, string>();
  for (const line of out.split('\n')) {
    const [oid, name] = line.split('\t');
    if (oid && name) refs.set(name, oid);
  }
  return refs;
}

/** Author and committer names that the refs and index tests' reflog assertions expect. */
export const FIXED_NAMES = {
  GIT_AUTHOR_NAME: 'Test Author',
  GIT_AUTHOR_EMAIL: 'author@example.com',
  GIT_COMMITTER_NAME: 'Test Committer',
  GIT_COMMITTER_EMAIL: 'committer@example.com',
  LANG: 'C',
} as const;

/**
 * Runs git with FIXED_NAMES; rejects on a non-zero exit unless `allowFail`. Resolves with the exit
 * code and output.
 */
export async function gitFixed(cwd: string, args: string[], allowFail = false, input?: string): Promise<GitResult> {
  const r = await runGit({ cwd, args, env: FIXED_NAMES, ...(input !== undefined ? { input } : {}) });
  if (r.code !== 0 && !allowFail) throw new Error(`git ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
  return r;
}

/** Runs a git plumbing command with `input` on stdin and returns its trimmed output; throws on failure. */
export async function plumb(dir: string, args: string[], input: string | Buffer): Promise<string> {
  const r = await runGit({ cwd: dir, args, input });
  if (r.code !== 0) throw new Error(`git ${args.join(' ')}: ${r.stderr}`);
  return r.stdout.trim();
}

/** A tree object written byte for byte (`hash-object --literally`), so names git's own tools refuse ("..", "/abs", "a/b") can be had. */
export async function rawTree(dir: string, entries: { mode: string; name: string; oid: string }[]): Promise<string> {
  const body = Buffer.concat(entries.map((e) => Buffer.concat([Buffer.from(`${e.mode} ${e.name}\0`), Buffer.from(e.oid, 'hex')])));
  return plumb(dir, ['hash-object', '-t', 'tree', '--literally', '-w', '--stdin'], body);
}

/** A repository in a temp dir to commit test trees into, opened as cascade-sync's Repo too. */
export interface TestRepo {
  dir: string;
  repo: Repo;
  /** Commits `files` (and deletions made before) and returns the new commit. */
  commit(files: Record<string, string | Buffer>, message?: string): Promise<string>;
}

export async function makeTestRepo(prefix: string): Promise<TestRepo> {
  const dir = await makeTmpDir(prefix);
  await git(dir, 'init', '--quiet');
  const repo = await Repo.open(dir);
  let n = 0;
  return { dir, repo, commit: (files, message) => commitFiles(dir, files, message ?? `commit ${++n}`) };
}
