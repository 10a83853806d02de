/**
 * Credentials from `.env` (issue 13, part 2): a ${VAR} of the config reads the controller's
 * environment, else the .env at the top of the sandbox; the shell wins. Where each variable came
 * from is shown (`shell`, `.env`, `missing`), never its value; an edit of .env while the controller
 * runs changes the credential in use; .env never reaches git in plaintext.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseConfig, CONFIG_FILE, formatProblem } from '../src/config/load.js';
import { parseDotenv, readDotenv, type Dotenv } from '../src/config/dotenv.js';
import type { Config, LoadResult } from '../src/config/types.js';
import { commitFiles, git, lsTree, makeBareRepo, revParse, runGit, showFile, tryRevParse } from './helpers/git.js';
import { Repo } from '../src/git/repo.js';
import { GateRunner } from '../src/pipeline/gates.js';
import { Logger } from '../src/log.js';
import { Redactor } from '../src/redact.js';
import { systemClock } from '../src/clock.js';
import type { GateSpec } from '../src/config/types.js';
import { startGitHttpServer, type GitHttpServer } from './helpers/git-http-server.js';
import { makeSandbox, run, startController, testEnv, type RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

let controllers: RunningController[] = [];
let servers: GitHttpServer[] = [];
afterEach(async () => {
  for (const c of controllers) await c.stop();
  for (const s of servers) await s.close();
  controllers = [];
  servers = [];
  await cleanupTmpDirs();
});

const DIR = '/srv/site';
const FILE = path.join(DIR, CONFIG_FILE);
const DOTENV = path.join(DIR, '.env');
const yaml = (...lines: string[]) => `${lines.join('\n')}\n`;
const REMOTE = ['version: 1', 'sandbox: {}', 'remotes:', '  - name: origin', '    url: https://git.example.com/team/site.git'];

/** Distinctive values: any occurrence of one in output is a leak. */
const USER = 'ci-bot-from-shell';
const PASS = 'dotenv-Passw0rd-7f3a9c';
const BAD_PASS = 'stale-Passw0rd-b81e44';
const DOTENV_USER = 'user-only-in-dotenv-5d2';

function dotenv(text: string, file = DOTENV): Dotenv {
  return { file, exists: true, ...parseDotenv(text, file) };
}

function valid(r: LoadResult): Config {
  if (!r.ok) throw new Error(`expected a valid config, got:\n${r.problems.map(formatProblem).join('\n')}`);
  return r.config;
}

/** The environment of a controller or command: the test's, without any credential variable of the machine running the tests. */
function shell(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env = testEnv(extra);
  for (const k of ['CASCADE_CLIENT_ID', 'CASCADE_CLIENT_SECRET', 'CASCADE_WEBHOOK_SECRET']) if (!(k in extra)) delete env[k];
  return env;
}

describe('${VAR} from the shell, else from .env', () => {
  it('the shell wins over .env', () => {
    const c = valid(parseConfig(yaml(...REMOTE), FILE, { HOME: '/h', CASCADE_CLIENT_ID: USER, CASCADE_CLIENT_SECRET: 'from-the-shell' }, dotenv(`CASCADE_CLIENT_ID=${DOTENV_USER}\nCASCADE_CLIENT_SECRET=${PASS}\n`)));
    expect(c.remotes[0]).toMatchObject({ username: USER, password: 'from-the-shell' });
    expect(c.variables).toEqual([{ name: 'CASCADE_CLIENT_ID', source: 'shell' }, { name: 'CASCADE_CLIENT_SECRET', source: 'shell' }]);
  });

  it('.env gives what the shell lacks, and every value it gives is a secret wherever it is used', () => {
    const text = yaml(...REMOTE, '    username: ${CASCADE_CLIENT_ID}', 'server: { listen: "127.0.0.1:0", token: "${TOKEN}" }', 'logging: { file: "${LOG_DIR}/cs.log" }');
    const c = valid(parseConfig(text, FILE, { HOME: '/h', CASCADE_CLIENT_ID: USER }, dotenv(`CASCADE_CLIENT_SECRET=${PASS}\nTOKEN="tok en-9"\nexport LOG_DIR=/var/log/site # a comment\n`)));
    expect(c.remotes[0]).toMatchObject({ username: USER, password: PASS });
    expect(c.server.token).toBe('tok en-9');
    expect(c.logging.file).toBe('/var/log/site/cs.log');
    expect(c.variables).toEqual([
      { name: 'CASCADE_CLIENT_ID', source: 'shell' },
      { name: 'CASCADE_CLIENT_SECRET', source: '.env' },
      { name: 'TOKEN', source: '.env' },
      { name: 'LOG_DIR', source: '.env' },
    ]);
    expect(c.secrets).toEqual(expect.arrayContaining([USER, PASS, 'tok en-9', '/var/log/site']));
  });

  it('a missing variable is one error that names it and where it was looked for, with a hint', () => {
    const text = yaml(...REMOTE, '    password: ${GIT_TOKEN}');
    for (const [d, where] of [[dotenv('OTHER=1\n'), DOTENV], [undefined, `${DOTENV}, which does not exist`]] as const) {
      const r = parseConfig(text, FILE, { HOME: '/h' }, d);
      expect(r.ok).toBe(false);
      if (r.ok) return;
      expect(r.problems.map(formatProblem)).toEqual([
        `${FILE}:6:15: remotes[0].password: variable GIT_TOKEN is not set (looked in the controller's environment and in ${where}) (hint: add a line GIT_TOKEN=... to .env beside the config (kept encrypted in git), or export GIT_TOKEN where cascade-sync starts)`,
      ]);
      // (The password is written out; the user name is the default's.)
      expect(r.variables).toEqual([{ name: 'GIT_TOKEN', source: 'missing' }, { name: 'CASCADE_CLIENT_ID', source: 'missing', optional: true }]);
    }
  });

  it('lists the default credential variables for an HTTP remote only (a local remote sends none)', () => {
    const local = valid(parseConfig(yaml('version: 1', 'sandbox: {}', 'remotes:', '  - { name: backup, url: ../backup.git }'), FILE, { HOME: '/h' }));
    expect(local.variables).toEqual([]);
    expect(local.remotes[0]).toEqual({ name: 'backup', url: '/srv/backup.git', kind: 'local', timeoutMs: 60_000 });
    const http = valid(parseConfig(yaml(...REMOTE), FILE, { HOME: '/h' }));
    expect(http.variables).toEqual([{ name: 'CASCADE_CLIENT_ID', source: 'missing', optional: true }, { name: 'CASCADE_CLIENT_SECRET', source: 'missing', optional: true }]);
  });

  it('a problem with a value read from a variable never quotes it', () => {
    const secretUrl = 'git://deploy@secret-host.example/x.git';
    const r = parseConfig(yaml('version: 1', 'sandbox: {}', 'remotes:', '  - name: origin', '    url: ${REMOTE_URL}'), FILE, { HOME: '/h' }, dotenv(`REMOTE_URL=${secretUrl}\n`));
    expect(r.ok).toBe(false);
    if (r.ok) return;
    const text = r.problems.map(formatProblem).join('\n');
    expect(text).toMatch(/remotes\[0\]\.url: "\[REDACTED\]" is not a supported remote/);
    expect(text).not.toContain('secret-host');
  });
});

describe('.env parsing (util.parseEnv, entry by entry)', () => {
  it('reads quotes, export, comments, CRLF and multi-line values as parseEnv does', () => {
    const { values, problems } = parseDotenv(
      ['# a comment', 'A=1', '  export B = "two words"  # trailing comment', "C='single # not a comment'", 'D="line one', 'line two"', 'E=`back`', 'F=unquoted # cut here', 'G=x\r', 'H=a=b', ''].join('\n'),
      DOTENV,
    );
    expect(problems).toEqual([]);
    expect(values).toEqual({ A: '1', B: 'two words', C: 'single # not a comment', D: 'line one\nline two', E: 'back', F: 'unquoted', G: 'x', H: 'a=b' });
  });

  it('reports a bad line with file:line and a hint, never its text, and still reads the lines around it', () => {
    const leaked = 'hunter2-do-not-echo';
    const { values, problems } = parseDotenv(['A=1', `this line has ${leaked} but no equals`, 'B=2', `1BAD=${leaked}`, '=nameless', 'C=3'].join('\n'), DOTENV);
    expect(values).toEqual({ A: '1', B: '2', C: '3' });
    expect(problems.map(formatProblem)).toEqual([
      `${DOTENV}:2:1: warning: line 2 is not NAME=value (it has no =); it is ignored (hint: write NAME=value, with a name of letters, digits and _ that does not start with a digit; start a comment with #)`,
      `${DOTENV}:4:1: warning: line 4 is not NAME=value (the text before = is not a variable name); it is ignored (hint: write NAME=value, with a name of letters, digits and _ that does not start with a digit; start a comment with #)`,
      `${DOTENV}:5:1: warning: line 5 is not NAME=value (the text before = is not a variable name); it is ignored (hint: write NAME=value, with a name of letters, digits and _ that does not start with a digit; start a comment with #)`,
    ]);
    expect(JSON.stringify(problems)).not.toContain(leaked);
  });

  it('a .env that holds its encrypted form gives no variables and says so', async () => {
    const dir = await makeTmpDir('dotenv-cipher');
    await writeFile(path.join(dir, '.env'), Buffer.concat([Buffer.from('CASCADE-SYNC-ENC\x01'), Buffer.alloc(40, 7)]));
    const d = await readDotenv(path.join(dir, '.env'));
    expect(d.values).toEqual({});
    expect(d.problems.map(formatProblem)).toEqual([expect.stringMatching(/\.env:1:1: warning: \.env holds its encrypted form .*\(hint: write the plaintext back/)]);
    expect(await readDotenv(path.join(dir, 'none', '.env'))).toEqual({ file: path.join(dir, 'none', '.env'), exists: false, values: {}, problems: [] });
  });
});

describe('validate and status say where each variable came from, never its value', () => {
  it('validate: shell, .env and missing; a bad .env line as a warning; no value anywhere', async () => {
    const { dir, logFile } = await makeSandbox({
      remotes: [{ name: 'origin', url: 'https://git.example.com/team/site.git' }],
      extra: 'server: { listen: "127.0.0.1:0", token: "${SERVER_TOKEN}" }',
      files: { '.env': `SERVER_TOKEN=${BAD_PASS}\n` },
    });
    await writeFile(path.join(dir, '.env'), `CASCADE_CLIENT_ID=${DOTENV_USER}\nCASCADE_CLIENT_SECRET=${PASS}\nnot a line with ${BAD_PASS}\n`);
    const env = shell({ CASCADE_CLIENT_ID: USER });
    const r = await run(dir, ['validate'], env);
    expect(r.code).toBe(1);
    const file = path.join(dir, CONFIG_FILE);
    expect(r.stdout).toBe(
      `${path.join(dir, '.env')}:3:1: warning: line 3 is not NAME=value (it has no =); it is ignored (hint: write NAME=value, with a name of letters, digits and _ that does not start with a digit; start a comment with #)\n` +
        'variables: CASCADE_CLIENT_ID (shell), CASCADE_CLIENT_SECRET (.env), SERVER_TOKEN (missing)\n',
    );
    expect(r.stderr).toMatch(new RegExp(`^${file}:\\d+:\\d+: server\\.token: variable SERVER_TOKEN is not set \\(looked in the controller's environment and in ${path.join(dir, '.env')}\\)`));

    await writeFile(path.join(dir, '.env'), `CASCADE_CLIENT_SECRET=${PASS}\nSERVER_TOKEN=${BAD_PASS}\n`);
    const ok = await run(dir, ['validate'], env);
    expect(ok).toEqual({ code: 0, stdout: `variables: CASCADE_CLIENT_ID (shell), CASCADE_CLIENT_SECRET (.env), SERVER_TOKEN (.env)\n${file}: valid\n`, stderr: '' });

    const text = await run(dir, ['status'], env);
    expect(text.stdout).toContain('variables:  CASCADE_CLIENT_ID (shell), CASCADE_CLIENT_SECRET (.env), SERVER_TOKEN (.env)\n');
    const json = await run(dir, ['status', '--json'], env);
    expect(JSON.parse(json.stdout).config.variables).toEqual([
      { name: 'CASCADE_CLIENT_ID', source: 'shell' },
      { name: 'CASCADE_CLIENT_SECRET', source: '.env' },
      { name: 'SERVER_TOKEN', source: '.env' },
    ]);
    const log = await readFile(logFile, 'utf8').catch(() => '');
    for (const [where, t] of Object.entries({ validate: r.stdout + r.stderr + ok.stdout, status: text.stdout + text.stderr, json: json.stdout + json.stderr, log })) {
      for (const value of [USER, PASS, BAD_PASS, DOTENV_USER]) expect(t, `${where} shows ${value}`).not.toContain(value);
    }
  });
});

describe('gates', () => {
  it('the config gate reads the sandbox .env for the candidate commit, as the controller does', async () => {
    const dir = await makeTmpDir('dotenv-gate');
    await git(dir, 'init', '-q', '--initial-branch=develop');
    const commit = await commitFiles(dir, { [CONFIG_FILE]: 'version: 1\nsandbox: {}\nremotes: []\nserver: { listen: "127.0.0.1:0", token: "${GATE_TOKEN}" }\n' }, 'c1');
    const run = async (name: string) => {
      // A gate's result is remembered per commit and definition: each run is a gate of its own name.
      const gates: GateSpec[] = [{ name, builtin: 'config', timeoutMs: 5000 }];
      const runner = await GateRunner.open(await Repo.open(dir), new Logger({}, 'error', new Redactor(), systemClock), shell(), () => undefined);
      runner.start(name, commit, gates);
      await runner.idle(name);
      return runner.report(name, commit, gates).gates[0];
    };
    expect(await run('before')).toMatchObject({ state: 'failed', message: expect.stringContaining('variable GATE_TOKEN is not set') });
    await writeFile(path.join(dir, '.env'), `GATE_TOKEN=${PASS}\n`);
    expect(await run('after')).toMatchObject({ state: 'passed' });
  });
});

/** Every object of a repository, as `git cat-file --batch` shows each. */
async function allObjects(repo: string): Promise<string> {
  const r = await runGit({ cwd: repo, args: ['cat-file', '--batch-all-objects', '--batch', '--unordered'] });
  if (r.code !== 0) throw new Error(r.stderr);
  return r.stdout;
}

async function statusFile(dir: string) {
  return JSON.parse(await readFile(path.join(dir, '.git/cascade-sync/status.json'), 'utf8'));
}

describe('a running controller', () => {
  it('takes the new password from an edited .env at once, the user name from the shell, and never commits or shows either', async () => {
    const root = await makeTmpDir('remotes');
    const bare = path.join(root, 'site.git');
    await makeBareRepo(bare, { initialBranch: 'develop' });
    const server = await startGitHttpServer({ root, username: USER, password: PASS });
    servers.push(server);
    // The .env's user name must lose to the shell's, and its stale password is refused by the server.
    const { dir, logFile } = await makeSandbox({ remotes: [{ name: 'origin', url: server.url('site.git') }], files: { '.env': `CASCADE_CLIENT_ID=${DOTENV_USER}\nCASCADE_CLIENT_SECRET=${BAD_PASS}\n` } });
    const env = shell({ CASCADE_CLIENT_ID: USER });
    const c = await startController(dir, env);
    controllers.push(c);
    await waitFor(async () => (await statusFile(dir)).remotes[0]?.error?.reason === 'AuthFailed' || undefined, { what: 'the stale password refused (AuthFailed)' });
    expect(await tryRevParse(bare, 'develop')).toBeUndefined();
    expect((await statusFile(dir)).config.variables).toEqual([{ name: 'CASCADE_CLIENT_ID', source: 'shell' }, { name: 'CASCADE_CLIENT_SECRET', source: '.env' }]);

    // Edit only .env (quoted, as people write it): the controller reloads and pushes with the new password.
    await writeFile(path.join(dir, '.env'), `CASCADE_CLIENT_ID=${DOTENV_USER}\nCASCADE_CLIENT_SECRET="${PASS}"\n`);
    await waitFor(() => c.stdout.text().includes('config reloaded') || undefined, { what: 'the reload after the .env edit' });
    await waitFor(async () => ((await tryRevParse(bare, 'develop')) === (await revParse(dir, 'develop')) ? true : undefined), { what: 'the push with the password from the edited .env', timeoutMs: 30_000 });
    expect(server.requests.some((q) => q.user === USER && q.status === 200)).toBe(true);
    expect(server.requests.some((q) => q.user === DOTENV_USER)).toBe(false);

    // Committed only encrypted: no object in the sandbox or the remote holds a value of .env.
    expect((await lsTree(bare, 'develop')).map((e) => e.path)).toContain('.env');
    expect((await showFile(bare, 'develop', '.env')).subarray(0, 16).toString()).toBe('CASCADE-SYNC-ENC');
    for (const repo of [dir, bare]) {
      const objects = await allObjects(repo);
      for (const value of [PASS, BAD_PASS, DOTENV_USER]) expect(objects, `${repo} holds ${value}`).not.toContain(value);
    }

    const json = await run(dir, ['status', '--json'], env);
    expect(JSON.parse(json.stdout).config.variables).toEqual([{ name: 'CASCADE_CLIENT_ID', source: 'shell' }, { name: 'CASCADE_CLIENT_SECRET', source: '.env' }]);
    const text = await run(dir, ['status'], env);
    expect(text.stdout).toContain('variables:  CASCADE_CLIENT_ID (shell), CASCADE_CLIENT_SECRET (.env)');
    const basic = (user: string, pass: string) => Buffer.from(`${user}:${pass}`).toString('base64');
    await waitFor(async () => (await readFile(logFile, 'utf8')).includes('config reloaded') || undefined, { what: 'the reload in the log file' });
    const outputs = { log: await readFile(logFile, 'utf8'), statusFile: await readFile(path.join(dir, '.git/cascade-sync/status.json'), 'utf8'), json: json.stdout + json.stderr, text: text.stdout + text.stderr, terminal: c.stdout.text() };
    for (const [where, t] of Object.entries(outputs)) {
      for (const value of [PASS, BAD_PASS, USER, DOTENV_USER, basic(USER, PASS), basic(USER, BAD_PASS)]) expect(t, `${where} shows ${value}`).not.toContain(value);
    }
  }, 90_000);

  it('without an encryption key holds .env back (never committed) and still reads it; an edit of a git-ignored .env is picked up too', async () => {
    const remote = path.join(await makeTmpDir('remote'), 'r.git');
    await makeBareRepo(remote, { initialBranch: 'develop' });
    const { dir } = await makeSandbox({
      remotes: [{ name: 'origin', url: remote }],
      files: { '.env': `HOOK_SECRET=${PASS}\n` },
      extra: 'security: { key: ./no-such.key }\nserver: { listen: "127.0.0.1:0", token: "${HOOK_SECRET}" }',
    });
    const c = await startController(dir, shell());
    controllers.push(c);
    await writeFile(path.join(dir, 'app.txt'), 'app');
    await waitFor(async () => (await lsTree(remote, 'develop').catch(() => [])).some((e) => e.path === 'app.txt') || undefined, { what: 'app.txt pushed' });
    expect((await lsTree(dir, 'develop')).map((e) => e.path)).not.toContain('.env');
    for (const repo of [dir, remote]) expect(await allObjects(repo)).not.toContain(PASS);
    const st = await statusFile(dir);
    expect(st.sandbox.heldBack).toContain('.env');
    expect(st.config.variables).toEqual([{ name: 'HOOK_SECRET', source: '.env' }]);

    // A git-ignored .env: the sandbox watcher reports no ignored path, yet an edit that leaves a variable missing is seen.
    await writeFile(path.join(dir, '.gitignore'), '.env\n');
    await waitFor(async () => (await lsTree(dir, 'develop')).some((e) => e.path === '.gitignore') || undefined, { what: '.gitignore committed' });
    await writeFile(path.join(dir, '.env'), 'OTHER=1\n');
    await waitFor(async () => (await statusFile(dir)).config.valid === false || undefined, { what: 'the edit of the ignored .env to be seen' });
    expect((await statusFile(dir)).config.problems.join('\n')).toMatch(/server\.token: variable HOOK_SECRET is not set/);
    await writeFile(path.join(dir, '.env'), `HOOK_SECRET=${BAD_PASS}\n`);
    await waitFor(async () => (await statusFile(dir)).config.valid === true || undefined, { what: 'the config valid again after .env is fixed' });
    expect(JSON.stringify(await statusFile(dir))).not.toContain(BAD_PASS);
  }, 90_000);
});
