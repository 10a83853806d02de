import { readdir, readFile, readlink, lstat, writeFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { cloneTo, commitFiles, git, makeBareRepo } from './git.js';
import { run } from './sandbox.js';
import { makeTmpDir } from './tmp.js';

/**
 * A pipeline config without deploy directories: staging's gate never passes and production has no
 * signers, so no controller in a test can promote anything; only the remote reconciler can move an
 * environment branch (which is what the tests below watch). `retry` and `intervals` replace the
 * quick test defaults (flow mappings, as in YAML: `{ initial: 1s, factor: 2, max: 5m }`).
 */
export function frozenPipelineConfig(o: { url: string; logFile: string; retry?: string; intervals?: string }): string {
  return [
    'version: 1',
    'sandbox: { debounce: 300ms, batchWindow: 2s }',
    `remotes:\n  - { name: origin, url: ${JSON.stringify(o.url)} }`,
    `retry: ${o.retry ?? '{ initial: 200ms, factor: 2, max: 2s, jitter: 0 }'}`,
    `intervals: ${o.intervals ?? '{ fetch: 1s, health: 1s, rescan: 10m }'}`,
    `logging: { file: ${JSON.stringify(o.logFile)}, level: debug }`,
    'notifications: { desktop: false }',
    'environments:',
    '  staging:',
    '    branch: staging',
    '    from: develop',
    '    gates:',
    '      - { name: never, command: "false", timeout: 10s }',
    '  production:',
    '    branch: main',
    '    from: staging',
    '    promotion: approval',
    '    approvals: { required: 1, signers: [] }',
    '',
  ].join('\n');
}

/** A team's remote: develop at c3, staging at c2, main at c1 (each a different commit), and the team's config. */
export interface TeamRemote {
  bare: string;
  config: string;
  c1: string;
  c2: string;
  c3: string;
}

/**
 * Makes a bare remote the way a team would have it after a while: a sandbox made by `init` and synced
 * once (`reconcile`), then two more commits pushed from a native clone, with staging moved to the
 * first and develop at the second (main stays at the init commit). The team's config names the
 * remote by `url` (the bare repository's path, or what `serve` returned).
 */
export async function teamRemote(opts: { serve?: (root: string) => Promise<string> } = {}): Promise<TeamRemote & { url: string }> {
  const root = await makeTmpDir('team-remote');
  const bare = path.join(root, 'site.git');
  await makeBareRepo(bare, { initialBranch: 'develop' });
  // The sandboxes reach it by path, or over smart HTTP when `serve` starts a server for `root` and returns its URL.
  const url = opts.serve ? await opts.serve(root) : bare;
  const first = await makeTmpDir('team-first');
  const logFile = path.join(await makeTmpDir('logs'), 'first.log');
  const config = frozenPipelineConfig({ url, logFile });
  await writeFile(path.join(first, 'cascade-sync-config.yaml'), config);
  await writeFile(path.join(first, 'app.txt'), 'v1\n');
  const init = await run(first, ['init']);
  if (init.code !== 0) throw new Error(`init failed: ${init.stderr}`);
  const synced = await run(first, ['reconcile']);
  if (synced.code !== 0) throw new Error(`reconcile failed: ${synced.stderr}${synced.stdout}`);
  const c1 = await git(bare, 'rev-parse', 'main');
  const other = await makeTmpDir('team-other');
  await cloneTo(bare, other, '--branch', 'develop');
  const c2 = await commitFiles(other, { 'app.txt': 'v2\n' }, 'v2');
  await git(other, 'push', '-q', 'origin', 'develop', `${c2}:refs/heads/staging`);
  const c3 = await commitFiles(other, { 'app.txt': 'v3\n', 'notes.md': 'more\n' }, 'v3');
  await git(other, 'push', '-q', 'origin', 'develop');
  return { bare, url, config, c1, c2, c3 };
}

/**
 * Every ref of a repository with its commit (native git's view), except the environments' leases
 * (`refs/cascade-sync/lease/*`, issue 15): any controller's pass may take, renew or release those.
 */
export async function refsOf(repo: string): Promise<string> {
  const all = await git(repo, 'for-each-ref', '--format=%(refname) %(objectname)');
  return all.split('\n').filter((l) => !l.startsWith('refs/cascade-sync/lease/')).join('\n');
}

/** A folder's whole content: each path with its type, symlink target, mode and content hash. */
export async function treeSnapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (rel: string): Promise<void> => {
    const entries = await readdir(path.join(dir, rel)).catch(() => [] as string[]);
    for (const name of entries.sort()) {
      const p = rel ? `${rel}/${name}` : name;
      const abs = path.join(dir, p);
      const st = await lstat(abs);
      if (st.isSymbolicLink()) out[p] = `link ${await readlink(abs)}`;
      else if (st.isDirectory()) {
        out[p] = 'dir';
        await walk(p);
      } else out[p] = `file ${(st.mode & 0o777).toString(8)} ${createHash('sha256').update(await readFile(abs)).digest('hex')}`;
    }
  };
  await walk('');
  return out;
}
