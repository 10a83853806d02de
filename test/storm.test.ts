import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { appendFile, chmod, lstat, mkdir, readdir, rename, rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { cloneTo, fsckStrict, git, gitOk, lsTree, makeBareRepo, statusPorcelain, tryRevParse } from './helpers/git.js';
import { startGitHttpServer, type GitHttpServer } from './helpers/git-http-server.js';
import { makeSandbox, testEnv } from './helpers/sandbox.js';
import { descendantsOf, dice, diffLedger, readDiskTree, type Dice, type LedgerEntry } from './helpers/storm.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

// The fault storm of issue 15. A writer makes every kind of edit in a sandbox run by the compiled
// controller (a real process), while the controller is killed with SIGKILL at random moments and the
// moment one of git's locks appears (sometimes with its git children, as a power cut or a cgroup kill
// would), the local bare remote is renamed away and back, the HTTP remote refuses connections and comes
// back, a second clone pushes native commits to `develop` (its own files, and its own line of shared
// files whose other line the writer edits), and native `git commit`s run in the sandbox. After each
// round nothing may be lost: the ledger of intended contents, both remotes and the sandbox agree.
//
// Reproducing: the run prints `STORM_SEED=<n>`; running with that variable set replays the same
// sequence of edits, clone commits and faults. Their timing is wall-clock (when a lock shows up,
// how far the controller got when it was killed), so "reproducible" means the same operations and
// faults in the same order, not the same interleaving with the controller.

const BIN = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'bin', 'cascade-sync.js');
const SEED = process.env.STORM_SEED !== undefined && process.env.STORM_SEED !== '' ? Number(process.env.STORM_SEED) : Math.floor(Math.random() * 2 ** 31);
const ROUNDS = Number(process.env.STORM_ROUNDS ?? 4);
/** Writer operations per round (a burst counts as one). */
const OPS_PER_ROUND = Number(process.env.STORM_OPS ?? 200);
/** Clone commits per round. */
const CLONE_COMMITS_PER_ROUND = 6;
const SHARED = ['shared/s0.txt', 'shared/s1.txt', 'shared/s2.txt'];
/** How long a round may take to settle (every edit committed, pushed and in step) once its faults stop. */
const SETTLE_MS = 120_000;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

const servers: GitHttpServer[] = [];
const controllers: Controller[] = [];

beforeAll(async () => {
  await promisify(execFile)('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: path.join(path.dirname(BIN), '..') });
}, 180_000);

afterEach(async () => {
  for (const c of controllers.splice(0)) await c.kill(true);
  for (const s of servers.splice(0)) await s.close();
  await cleanupTmpDirs();
});

/** A shared file: the writer's line and the clone's line, with unchanged context lines between them. */
function sharedText(name: string, w: string, c: string): string {
  return [`shared file ${name}`, 'context 1', 'context 2', 'context 3', `W: ${w}`, 'context 4', 'context 5', 'context 6', `C: ${c}`, 'context 7', 'context 8', 'context 9', ''].join('\n');
}

/** Replaces the line starting with `prefix` in a shared file's text; undefined when the line is gone. */
function withLine(text: string, prefix: 'W: ' | 'C: ', value: string): string | undefined {
  const re = new RegExp(`^${prefix}.*$`, 'm');
  return re.test(text) ? text.replace(re, `${prefix}${value}`) : undefined;
}

/** The controller process (`node bin/cascade-sync.js start`), killed and restarted by the storm. */
class Controller {
  child: ChildProcess | undefined;
  starts = 0;
  private log = '';

  constructor(readonly dir: string) {}

  /** Output of every run so far, each run introduced by a line with its number. */
  output(): string {
    return this.log;
  }

  private note(s: string): void {
    // All of it (a few MB at debug level): a round's summary reads its own part.
    this.log += s;
  }

  running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /**
   * Starts a controller process and resolves once it says it is ready; rejects (with its output) if it
   * exits first or takes over a minute. With `killAfterMs`, it is killed (SIGKILL, with its git
   * children) that long after the spawn instead, ready or not: a crash during start-up and recovery.
   */
  async start(killAfterMs?: number): Promise<void> {
    const n = ++this.starts;
    let out = '';
    // detached: its own process group, so a test runner's signal does not reach it twice.
    const child = spawn(process.execPath, [BIN, 'start'], { cwd: this.dir, env: testEnv(), stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    this.child = child;
    this.note(`\n===== controller run ${n} (pid ${child.pid}) =====\n`);
    const onData = (d: Buffer) => {
      out += d;
      this.note(String(d));
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    if (killAfterMs !== undefined) {
      await sleep(killAfterMs);
      await this.kill(true);
      return;
    }
    await waitFor(() => out.includes('cascade-sync: ready') || (child.exitCode !== null ? Promise.reject(new Error(`exited ${child.exitCode}: ${out}`)) : undefined), {
      what: `controller run ${n} to be ready`,
      timeoutMs: 60_000,
    });
  }

  /** SIGKILL to the controller, and with `tree` to every process it started (git included); resolves once it is gone. */
  async kill(tree: boolean): Promise<void> {
    const child = this.child;
    if (!child?.pid || !this.running()) return;
    const others = tree ? descendantsOf(child.pid) : [];
    const gone = new Promise<void>((r) => child.once('exit', () => r()));
    try {
      process.kill(child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
    for (const pid of others) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    this.note(`\n===== SIGKILL${tree ? ` with ${others.length} descendants` : ''} =====\n`);
    await gone;
  }
}

/** Where the writer's names come from: git must take all of these (`\`, quotes, tab, spaces, non-ASCII). */
const FILE_SUFFIXES = ['.txt', ' sp ace.txt', '\\back\\slash.txt', '"dq".txt', "'sq'.md", '\ttab.txt', '-ünïcødé.txt', '日本語.md', ' trailing ', '.dotted.name.js', '$dollar&amp;.txt', '#hash.txt'];
const DIR_NAMES = ['d', 'dir ', 'ö', 'x\\y', 'q"'];
const SWAPS = ['w/swap0', 'w/swap1'];

/**
 * The ledger writer: makes edits of every kind under `w/` and in the writer's line of the shared
 * files, and records what each path must hold at the end. Its choices come from its own PRNG stream
 * and its own state only, so a seed replays the same edits.
 */
class Writer {
  readonly ledger = new Map<string, LedgerEntry>();
  readonly dirs = new Set<string>(['w']);
  readonly shared = new Map<string, string>();
  ops = 0;
  private n = 0;

  /** The sandbox folder; set once `init` made it. */
  root = '';

  constructor(readonly d: Dice) {}

  private abs(rel: string): string {
    return path.join(this.root, rel);
  }

  private unique(): number {
    return ++this.n;
  }

  content(): Buffer {
    const kind = this.d.weighted({ text: 8, empty: 1, binary: 1 });
    if (kind === 'empty') return Buffer.alloc(0);
    if (kind === 'binary') return Buffer.from(Array.from({ length: this.d.int(16, 600) }, () => this.d.int(0, 255)));
    const lines = Array.from({ length: this.d.int(1, 12) }, (_, i) => `line ${i} of edit ${this.unique()} value ${this.d.int(0, 1e6)}`);
    return Buffer.from(`${lines.join('\n')}\n`);
  }

  /** The files the initial sandbox holds (before `init`), recorded in the ledger. */
  initialFiles(): Record<string, string> {
    const files: Record<string, string> = {};
    for (const s of SHARED) {
      files[s] = sharedText(s, '0', '0');
      this.shared.set(s, '0');
    }
    for (let i = 0; i < 4; i++) {
      const dir = `w/d${i}`;
      this.dirs.add(dir);
      for (let k = 0; k < 3; k++) files[`${dir}/f${k}.txt`] = `initial ${i} ${k}\n`;
    }
    for (const s of SWAPS) {
      this.dirs.add(s);
      files[`${s}/inner.txt`] = `inner of ${s}\n`;
    }
    for (const [p, c] of Object.entries(files)) if (p.startsWith('w/')) this.ledger.set(p, { type: 'file', data: Buffer.from(c), exec: false });
    return files;
  }

  private files(): string[] {
    return [...this.ledger.entries()].filter(([, e]) => e.type === 'file').map(([p]) => p);
  }

  private links(): string[] {
    return [...this.ledger.entries()].filter(([, e]) => e.type === 'link').map(([p]) => p);
  }

  private movableDirs(): string[] {
    return [...this.dirs].filter((x) => x !== 'w');
  }

  private newFilePath(dir = this.d.pick([...this.dirs])): string {
    return `${dir}/${this.unique()}${this.d.pick(FILE_SUFFIXES)}`;
  }

  private newDirPath(): string {
    return `w/${this.d.pick(DIR_NAMES)}-${this.unique()}`;
  }

  private async writeNew(p: string): Promise<void> {
    const data = this.content();
    await writeFile(this.abs(p), data);
    this.ledger.set(p, { type: 'file', data, exec: false });
  }

  /** Forgets everything under `p` (a folder) in the ledger and the folder list. */
  private forgetUnder(p: string, keepSelf: boolean): void {
    for (const k of [...this.ledger.keys()]) if (k.startsWith(`${p}/`)) this.ledger.delete(k);
    for (const k of [...this.dirs]) if (k.startsWith(`${p}/`) || (!keepSelf && k === p)) this.dirs.delete(k);
  }

  /** Moves everything under folder `from` to `to` in the ledger and the folder list. */
  private moveUnder(from: string, to: string): void {
    for (const [k, v] of [...this.ledger]) {
      if (!k.startsWith(`${from}/`)) continue;
      this.ledger.delete(k);
      this.ledger.set(`${to}${k.slice(from.length)}`, v);
    }
    for (const k of [...this.dirs]) {
      if (k !== from && !k.startsWith(`${from}/`)) continue;
      this.dirs.delete(k);
      this.dirs.add(`${to}${k.slice(from.length)}`);
    }
  }

  /** One edit, chosen by the PRNG; returns its name for the round's tally. */
  async step(): Promise<string> {
    this.ops++;
    const op = this.d.weighted({
      create: 10, overwrite: 10, append: 5, delete: 5, burst: 1, renameFile: 3, renameDir: 1, rmMkdir: 1.5, mvMkdir: 1.5, swap: 1.5, exec: 3, symlink: 3, shared: 4,
    });
    const files = this.files();
    switch (op) {
      case 'create':
        await this.writeNew(this.newFilePath());
        break;
      case 'overwrite':
      case 'append': {
        if (files.length === 0) return this.step();
        const p = this.d.pick(files);
        const e = this.ledger.get(p) as Extract<LedgerEntry, { type: 'file' }>;
        const data = this.content();
        if (op === 'overwrite') await writeFile(this.abs(p), data);
        else await appendFile(this.abs(p), data);
        this.ledger.set(p, { ...e, data: op === 'overwrite' ? data : Buffer.concat([e.data, data]) });
        break;
      }
      case 'delete': {
        const all = [...this.ledger.keys()].filter((p) => !p.startsWith('w/burst'));
        if (all.length === 0) return this.step();
        const p = this.d.pick(all);
        await rm(this.abs(p));
        this.ledger.delete(p);
        break;
      }
      case 'burst':
        return this.burst();
      case 'renameFile': {
        const all = [...this.ledger.keys()];
        if (all.length === 0) return this.step();
        const from = this.d.pick(all);
        const to = this.newFilePath();
        await rename(this.abs(from), this.abs(to));
        this.ledger.set(to, this.ledger.get(from)!);
        this.ledger.delete(from);
        break;
      }
      case 'renameDir': {
        const dirs = this.movableDirs();
        if (dirs.length === 0) return this.step();
        const from = this.d.pick(dirs);
        const to = this.newDirPath();
        await rename(this.abs(from), this.abs(to));
        this.moveUnder(from, to);
        break;
      }
      case 'rmMkdir': {
        // `rm -r d && mkdir d`, then files written into the new folder now and later.
        const dirs = this.movableDirs();
        if (dirs.length === 0) return this.step();
        const dir = this.d.pick(dirs);
        await rm(this.abs(dir), { recursive: true });
        await mkdir(this.abs(dir));
        this.forgetUnder(dir, true);
        for (let i = this.d.int(0, 2); i > 0; i--) await this.writeNew(this.newFilePath(dir));
        break;
      }
      case 'mvMkdir': {
        // `mv d x && mkdir d`.
        const dirs = this.movableDirs();
        if (dirs.length === 0) return this.step();
        const dir = this.d.pick(dirs);
        const away = this.newDirPath();
        await rename(this.abs(dir), this.abs(away));
        await mkdir(this.abs(dir));
        this.moveUnder(dir, away);
        this.dirs.add(dir);
        for (let i = this.d.int(0, 2); i > 0; i--) await this.writeNew(this.newFilePath(dir));
        break;
      }
      case 'swap': {
        // A folder replaced by a file of the same name, and back.
        const s = this.d.pick(SWAPS);
        if (this.dirs.has(s)) {
          await rm(this.abs(s), { recursive: true });
          this.forgetUnder(s, false);
          await this.writeNew(s);
        } else {
          await rm(this.abs(s), { force: true });
          this.ledger.delete(s);
          await mkdir(this.abs(s));
          this.dirs.add(s);
          for (let i = this.d.int(1, 3); i > 0; i--) await this.writeNew(this.newFilePath(s));
        }
        break;
      }
      case 'exec': {
        if (files.length === 0) return this.step();
        const p = this.d.pick(files);
        const e = this.ledger.get(p) as Extract<LedgerEntry, { type: 'file' }>;
        await chmod(this.abs(p), e.exec ? 0o644 : 0o755);
        this.ledger.set(p, { ...e, exec: !e.exec });
        break;
      }
      case 'symlink': {
        const links = this.links();
        const target = this.d.pick(['f0.txt', '../d0/f1.txt', 'nowhere/at all', '日本語', '..', `t${this.unique()}`]);
        if (links.length > 0 && this.d.chance(0.4)) {
          const p = this.d.pick(links);
          await rm(this.abs(p));
          await symlink(target, this.abs(p));
          this.ledger.set(p, { type: 'link', target });
        } else {
          const p = this.newFilePath();
          await symlink(target, this.abs(p));
          this.ledger.set(p, { type: 'link', target });
        }
        break;
      }
      case 'shared': {
        // Read-modify-write of the writer's own line, at once (as an editor saving would).
        const s = this.d.pick(SHARED);
        const value = `w${this.unique()}`;
        const next = withLine(readFileSync(this.abs(s), 'utf8'), 'W: ', value);
        if (next === undefined) throw new Error(`${s} lost its W: line: ${readFileSync(this.abs(s), 'utf8')}`);
        writeFileSync(this.abs(s), next);
        this.shared.set(s, value);
        break;
      }
    }
    return op;
  }

  /** About 200 files at once: a new folder of them, a rewrite of existing ones, or a whole burst folder deleted. */
  private async burst(): Promise<string> {
    const old = [...this.dirs].filter((x) => /^w\/burst\d+$/.test(x));
    const kind = this.d.weighted({ add: 3, rewrite: 2, remove: old.length > 0 ? 2 : 0 });
    if (kind === 'add') {
      const dir = `w/burst${this.unique()}`;
      await mkdir(this.abs(dir));
      this.dirs.add(dir);
      for (let i = this.d.int(150, 250); i > 0; i--) await this.writeNew(`${dir}/b${i}${this.d.chance(0.1) ? this.d.pick(FILE_SUFFIXES) : '.txt'}`);
    } else if (kind === 'rewrite') {
      const files = this.files();
      for (let i = Math.min(files.length, this.d.int(150, 250)); i > 0; i--) {
        const p = this.d.pick(files);
        const e = this.ledger.get(p) as Extract<LedgerEntry, { type: 'file' }>;
        const data = this.content();
        await writeFile(this.abs(p), data);
        this.ledger.set(p, { ...e, data });
      }
    } else {
      const dir = this.d.pick(old);
      await rm(this.abs(dir), { recursive: true });
      this.forgetUnder(dir, false);
    }
    return `burst-${kind}`;
  }
}

/** The second clone: native commits to `develop` on its own files under `c/` and its line of the shared files. */
class Clone {
  readonly ledger = new Map<string, string>();
  readonly shared = new Map<string, string>();
  /** Every commit a push of this clone put on a remote's develop, with the remote. */
  readonly pushed: { remote: string; oid: string }[] = [];
  readonly notes: string[] = [];
  commits = 0;
  pushFailures = 0;
  private n = 0;

  constructor(
    readonly dir: string,
    readonly d: Dice,
  ) {
    for (const s of SHARED) this.shared.set(s, '0');
  }

  /** One commit of 1-3 edits (files created, rewritten, deleted; its shared lines). */
  async commit(): Promise<void> {
    for (let i = this.d.int(1, 3); i > 0; i--) {
      const own = [...this.ledger.keys()];
      const op = this.d.weighted({ create: 3, overwrite: 3, delete: own.length > 3 ? 1 : 0, shared: 3 });
      if (op === 'create' || (op === 'overwrite' && own.length === 0)) {
        const p = `c/${this.d.pick(['', 'sub/', 'sub/deeper/', 'ö ö/'])}c${++this.n}.txt`;
        const text = `clone file ${this.n} v${this.d.int(0, 1e6)}\n`;
        await mkdir(path.dirname(path.join(this.dir, p)), { recursive: true });
        await writeFile(path.join(this.dir, p), text);
        this.ledger.set(p, text);
      } else if (op === 'overwrite') {
        const p = this.d.pick(own);
        const text = `rewritten by the clone ${++this.n}\n`;
        await writeFile(path.join(this.dir, p), text);
        this.ledger.set(p, text);
      } else if (op === 'delete') {
        const p = this.d.pick(own);
        await rm(path.join(this.dir, p));
        this.ledger.delete(p);
      } else {
        const s = this.d.pick(SHARED);
        const value = `c${++this.n}`;
        const next = withLine(readFileSync(path.join(this.dir, s), 'utf8'), 'C: ', value);
        if (next === undefined) throw new Error(`the clone's ${s} lost its C: line`);
        writeFileSync(path.join(this.dir, s), next);
        this.shared.set(s, value);
      }
    }
    await git(this.dir, 'add', '-A');
    await git(this.dir, 'commit', '-q', '--allow-empty', '-m', `clone commit ${++this.commits}`);
  }

  /** Pushes HEAD to `remote`'s develop, fetching and merging (native `git merge`) when it is behind; true once pushed, false if `giveUp()` says stop first. */
  async push(remote: string, giveUp: () => boolean): Promise<boolean> {
    for (;;) {
      const r = await gitOk(this.dir, 'push', '--porcelain', remote, 'HEAD:refs/heads/develop');
      if (r.code === 0) {
        this.pushed.push({ remote, oid: await git(this.dir, 'rev-parse', 'HEAD') });
        return true;
      }
      this.pushFailures++;
      if (giveUp()) return false;
      const f = await gitOk(this.dir, 'fetch', '-q', remote);
      if (f.code !== 0) {
        await sleep(200);
        continue;
      }
      const m = await gitOk(this.dir, 'merge', '-q', '--no-edit', `${remote}/develop`);
      if (m.code !== 0) {
        // Both sides changed the same lines: only a reverted edit of one side can do that here.
        this.notes.push(`merge conflict pulling ${remote}/develop into the clone: ${m.stdout}${m.stderr}`);
        await gitOk(this.dir, 'merge', '--abort');
        await git(this.dir, 'merge', '-q', '--no-edit', '-X', 'ours', `${remote}/develop`);
      }
    }
  }
}

/** git lock files under `gitDir` (any `*.lock`, walked recursively). */
async function lockFilesUnder(gitDir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string): Promise<void> => {
    for (const name of await readdir(d).catch(() => [] as string[])) {
      const p = path.join(d, name);
      const st = await lstat(p).catch(() => undefined);
      if (st?.isDirectory()) await walk(p);
      else if (name.endsWith('.lock')) out.push(p);
    }
  };
  await walk(gitDir);
  return out;
}

/** Paths (with mode and blob) where two trees differ. */
function treeDiff(a: Map<string, string>, b: Map<string, string>): string[] {
  const out: string[] = [];
  for (const p of new Set([...a.keys(), ...b.keys()])) if (a.get(p) !== b.get(p)) out.push(`${JSON.stringify(p)}: ${a.get(p) ?? 'absent'} vs ${b.get(p) ?? 'absent'}`);
  return out.sort();
}

async function treeOf(repo: string, ref: string): Promise<Map<string, string>> {
  return new Map((await lsTree(repo, ref)).map((e) => [e.path, `${e.mode} ${e.oid}`]));
}

/** Runs `fn`; a failure that does not name the seed yet (set-up, a helper's timeout) gets it in front. */
async function withSeed(fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (err) {
    if (err instanceof Error && !err.message.includes('STORM_SEED=')) err.message = `STORM_SEED=${SEED}: ${err.message}`;
    throw err;
  }
}

describe('fault storm (issue 15)', () => {
  it(`[slow] nothing is lost under kill -9, vanishing remotes, a pushing clone and native commits (${ROUNDS} rounds)`, () => withSeed(async () => {
    console.log(`storm: STORM_SEED=${SEED} (${ROUNDS} rounds of ${OPS_PER_ROUND} edits)`);
    const writerDice = dice(SEED);
    const cloneDice = dice(SEED ^ 0x5bd1e995);
    const faultDice = dice(SEED ^ 0x27d4eb2f);
    const outageDice = dice(SEED ^ 0x165667b1);
    // One stream per concurrent actor: their draws never interleave, so a seed replays each one's sequence.
    const nativeDice = dice(SEED ^ 0x85ebca6b);

    const root = await makeTmpDir('storm');
    const bare = path.join(root, 'origin.git');
    await makeBareRepo(bare, { initialBranch: 'develop' });
    const httpRoot = path.join(root, 'http');
    const webBare = path.join(httpRoot, 'site.git');
    await makeBareRepo(webBare, { initialBranch: 'develop' });
    const server = await startGitHttpServer({ root: httpRoot });
    servers.push(server);

    const writer = new Writer(writerDice);
    const files = writer.initialFiles();
    const { dir } = await makeSandbox({
      remotes: [{ name: 'origin', url: bare }, { name: 'web', url: server.url('site.git') }],
      files,
      fetch: '1s',
    });
    writer.root = dir;
    for (const d of writer.dirs) await mkdir(path.join(dir, d), { recursive: true });

    const ctl = new Controller(dir);
    controllers.push(ctl);
    await ctl.start();
    const inStep = async () => {
      const head = await tryRevParse(dir, 'develop');
      return head !== undefined && head === (await tryRevParse(bare, 'develop')) && head === (await tryRevParse(webBare, 'develop'));
    };
    await waitFor(() => inStep() || undefined, { what: 'the first push to both remotes', timeoutMs: 60_000 });

    const cloneDir = path.join(root, 'clone');
    await cloneTo(bare, cloneDir, '--branch', 'develop');
    await git(cloneDir, 'remote', 'add', 'web', server.url('site.git'));
    await git(cloneDir, 'config', 'user.name', 'Clone');
    await git(cloneDir, 'config', 'user.email', 'clone@example.invalid');
    const clone = new Clone(cloneDir, cloneDice);

    const LOCKS = ['index.lock', 'HEAD.lock', 'packed-refs.lock', 'refs/heads/develop.lock', 'refs/remotes/origin/develop.lock', 'refs/remotes/web/develop.lock'].map((l) => path.join(dir, '.git', l));

    for (let round = 1; round <= ROUNDS; round++) {
      const tally: Record<string, number> = {};
      const count = (k: string) => (tally[k] = (tally[k] ?? 0) + 1);
      let stormOver = false;
      let nativeRunning = false;
      const started = Date.now();
      const outputAtStart = ctl.output().length;

      const writing = (async () => {
        for (let i = 0; i < OPS_PER_ROUND; i++) {
          count(await writer.step());
          await sleep(writerDice.int(0, 25));
        }
      })();

      const cloning = (async () => {
        for (let i = 0; i < CLONE_COMMITS_PER_ROUND && !stormOver; i++) {
          await sleep(cloneDice.int(300, 1500));
          await clone.commit();
          const remote = cloneDice.chance(0.75) ? 'origin' : 'web';
          if (await clone.push(remote, () => stormOver)) count(`clone-push-${remote}`);
        }
      })();

      const native = (async () => {
        while (!stormOver) {
          await sleep(nativeDice.int(1500, 4000));
          if (stormOver) break;
          nativeRunning = true;
          const all = nativeDice.chance(0.5);
          const add = all ? await gitOk(dir, 'add', '-A') : { code: 0, stderr: '' };
          const r = add.code === 0 ? await gitOk(dir, 'commit', '-q', all ? '-m' : '-am', `native commit in round ${round}`) : add;
          nativeRunning = false;
          count(r.code === 0 ? 'native-commit' : /lock|cannot lock ref|File exists/i.test(r.stderr) ? 'native-refused-by-lock' : 'native-nothing-or-failed');
        }
      })();

      // Remotes going away and coming back, one outage at a time, beside the kills.
      const outages = (async () => {
        while (!stormOver) {
          await sleep(outageDice.int(300, 2500));
          if (stormOver) break;
          const kind = outageDice.weighted({ localAway: 1, httpDown: 1 });
          const duration = outageDice.int(300, 3000);
          count(kind);
          if (kind === 'localAway') {
            await rename(bare, `${bare}.away`);
            await sleep(duration);
            await rename(`${bare}.away`, bare);
          } else {
            await server.setMode('refuse');
            await sleep(duration);
            await server.setMode('ok');
          }
        }
      })();

      // kill -9 of the controller: at a random moment, the moment a git lock appears, or during start-up.
      const faults = (async () => {
        while (!stormOver) {
          await sleep(faultDice.int(200, 1000));
          if (stormOver) break;
          const kind = faultDice.weighted({ kill: 3, killAtLock: 3, killDuringStart: 1 });
          const tree = faultDice.chance(0.6);
          const pause = faultDice.int(0, 800);
          if (kind === 'killAtLock') {
            const deadline = Date.now() + 5000;
            let seen: string | undefined;
            while (Date.now() < deadline && seen === undefined) {
              if (!nativeRunning) seen = LOCKS.find((l) => existsSync(l));
              if (seen === undefined) await new Promise((r) => setImmediate(r));
            }
            count(seen ? `kill-at-${path.basename(seen)}` : 'kill-no-lock-seen');
          } else {
            count(kind);
          }
          await ctl.kill(tree);
          await sleep(pause);
          if (kind === 'killDuringStart') await ctl.start(faultDice.int(50, 2500));
          await ctl.start();
        }
      })();

      const wrote = await writing.then(() => undefined, (e: unknown) => e);
      stormOver = true;
      const ended = await Promise.allSettled([cloning, native, faults, outages]);
      const broke = [wrote, ...ended.map((r) => (r.status === 'rejected' ? (r.reason as unknown) : undefined))].filter((e) => e !== undefined);
      if (broke.length > 0) throw new Error(`STORM_SEED=${SEED} round ${round}: the storm itself failed: ${broke.map((e) => (e instanceof Error ? e.stack : String(e))).join('\n')}\n--- controller output (tail) ---\n${ctl.output().slice(-20_000)}`);
      if (!ctl.running()) await ctl.start();
      // The clone's last commit reaches a remote now that nothing fails any more.
      if (!(await clone.push('origin', () => false))) throw new Error('unreachable');

      const stormMs = Date.now() - started;
      const problems: string[] = [];
      const settled = await waitFor(
        async () => {
          if ((await statusPorcelain(dir)).length > 0 || !(await inStep())) return undefined;
          const last = clone.pushed[clone.pushed.length - 1]!.oid;
          return (await gitOk(dir, 'merge-base', '--is-ancestor', last, 'develop')).code === 0 || undefined;
        },
        { what: 'the sandbox, both remotes and the clone in step', timeoutMs: SETTLE_MS, intervalMs: 250 },
      ).catch((e: Error) => problems.push(`not settled: ${e.message}`));
      const settleMs = Date.now() - started - stormMs;

      // Every ledger path holds what was written last (content, exec bit, link target), nothing else is there.
      for (const d of diffLedger(writer.ledger, await readDiskTree(dir, 'w'))) problems.push(`w: ${JSON.stringify(d.path)}: expected ${d.expected}, found ${d.actual}`);
      // The clone's own files hold the clone's last version.
      const cloneLedger = new Map([...clone.ledger].map(([p, t]) => [p, { type: 'file', data: Buffer.from(t), exec: false } as LedgerEntry]));
      for (const d of diffLedger(cloneLedger, await readDiskTree(dir, 'c'))) problems.push(`c: ${JSON.stringify(d.path)}: expected ${d.expected}, found ${d.actual}`);
      // Each shared file keeps both sides' last line.
      for (const s of SHARED) {
        const text = readFileSync(path.join(dir, s), 'utf8');
        const want = sharedText(s, writer.shared.get(s)!, clone.shared.get(s)!);
        if (text !== want) problems.push(`shared ${s}: expected W: ${writer.shared.get(s)} and C: ${clone.shared.get(s)}, found ${JSON.stringify(text)}`);
      }
      const status = await statusPorcelain(dir);
      if (status.length > 0) problems.push(`git status not clean: ${status.slice(0, 30).join(' | ')}${status.length > 30 ? ` (+${status.length - 30})` : ''}`);
      const sandboxTree = await treeOf(dir, 'develop');
      for (const [name, repo] of [['origin', bare], ['web', webBare]] as const) {
        const diff = treeDiff(sandboxTree, await treeOf(repo, 'develop'));
        if (diff.length > 0) problems.push(`${name}'s develop differs from the sandbox's: ${diff.slice(0, 20).join(' | ')}`);
        for (const { remote, oid } of clone.pushed) {
          if ((await gitOk(repo, 'merge-base', '--is-ancestor', oid, 'develop')).code !== 0) problems.push(`the clone's commit ${oid} (pushed to ${remote}) is not in ${name}'s develop`);
        }
      }
      for (const [name, repo] of [['sandbox', dir], ['origin', bare], ['web', webBare]] as const) {
        await fsckStrict(repo).catch((e: Error) => problems.push(`fsck ${name}: ${e.message}`));
      }
      // A lock that is still there a few seconds later was left behind (a fetch's own locks come and go).
      const locks = [...(await lockFilesUnder(path.join(dir, '.git'))), ...(await lockFilesUnder(bare)), ...(await lockFilesUnder(webBare))];
      if (locks.length > 0) {
        await sleep(3000);
        for (const l of locks) if (existsSync(l)) problems.push(`lock left: ${l}`);
      }
      problems.push(...clone.notes.splice(0).map((n) => `clone: ${n}`));

      // What the controller ran into this round (reason codes of its warnings and errors), for the summary.
      const reasons: Record<string, number> = {};
      const roundOutput = ctl.output().slice(outputAtStart);
      for (const m of roundOutput.matchAll(/ reason=(\w+)/g)) reasons[m[1]!] = (reasons[m[1]!] ?? 0) + 1;
      // A failure git's messages were not classified for says what it was, for whoever reads the summary.
      for (const line of new Set(roundOutput.split('\n').filter((l) => / reason=(GitFailed|InternalError)\b/.test(l)))) console.log(`storm round ${round}: unclassified: ${line.slice(0, 600)}`);
      console.log(`storm round ${round}: ${stormMs} ms of storm, settled in ${settleMs} ms${settled ? '' : ' (NOT settled)'}; ${JSON.stringify(tally)}; controller reasons ${JSON.stringify(reasons)}; ledger ${writer.ledger.size} paths, clone ${clone.ledger.size} files, ${clone.pushed.length} pushes so far`);
      if (problems.length > 0) {
        const tail = ctl.output().slice(-20_000);
        expect(problems, `STORM_SEED=${SEED} round ${round}: ${problems.length} problems\n${problems.join('\n')}\n--- controller output (tail) ---\n${tail}`).toEqual([]);
      }
    }
  }), 420_000);
});
