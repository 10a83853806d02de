import { afterEach, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { Ajv } from 'ajv';
import addFormatsModule from 'ajv-formats';
import { parse as parseYaml } from 'yaml';
import { cp, readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CONFIG_FILE, MAX_CONFIG_BYTES, formatProblem, loadConfig, parseConfig } from '../src/config/load.js';
import { normalize } from '../src/config/normalize.js';
import type { CascadeSyncConfig } from '../src/generated/config.js';
import configSchema from '../schema/cascade-sync-config.schema.json' with { type: 'json' };
import stateSchema from '../schema/cascade-sync-state.schema.json' with { type: 'json' };
import type { Config, ConfigProblem, LoadResult } from '../src/config/types.js';
import { cleanupTmpDirs, makeTmpDir } from './helpers/tmp.js';
import { run, testEnv } from './helpers/sandbox.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/** parseConfig never reads this path: it only names the file in problems and anchors relative paths. */
const DIR = '/srv/site';
const FILE = path.join(DIR, CONFIG_FILE);
const HOME = '/home/tester';
const ENV: NodeJS.ProcessEnv = { HOME };

const yaml = (...lines: string[]) => `${lines.join('\n')}\n`;
const HEAD = ['version: 1', 'sandbox: {}'];
const REMOTE = ['remotes:', '  - name: origin', '    url: https://git.example.com/team/site.git'];

/** Runs the pipeline; a throw fails the test, since loading must always return a result. */
function load(text: string, env: NodeJS.ProcessEnv = ENV): LoadResult {
  let result: LoadResult | undefined;
  expect(() => (result = parseConfig(text, FILE, env))).not.toThrow();
  return result!;
}

function valid(text: string, env: NodeJS.ProcessEnv = ENV): Config {
  const r = load(text, env);
  if (!r.ok) throw new Error(`expected a valid config, got:\n${r.problems.map(formatProblem).join('\n')}`);
  return r.config;
}

type Seen = Pick<ConfigProblem, 'line' | 'col' | 'path' | 'message'> & { hint?: string };

/** The warnings of a config that must load. */
function warnings(text: string, env: NodeJS.ProcessEnv = ENV): (Seen & { severity: ConfigProblem['severity'] })[] {
  const r = load(text, env);
  if (!r.ok) throw new Error(`expected a valid config, got:\n${r.problems.map(formatProblem).join('\n')}`);
  return r.warnings.map((p) => ({ severity: p.severity, line: p.line, col: p.col, path: p.path, message: p.message, ...(p.hint ? { hint: p.hint } : {}) }));
}

function problems(text: string, env: NodeJS.ProcessEnv = ENV): Seen[] {
  const r = load(text, env);
  expect(r.ok, 'the config should be refused').toBe(false);
  if (r.ok) return [];
  for (const p of r.problems) expect(p.file).toBe(FILE);
  return r.problems.map((p) => ({ line: p.line, col: p.col, path: p.path, message: p.message, ...(p.hint ? { hint: p.hint } : {}) }));
}

afterEach(async () => {
  await cleanupTmpDirs();
});

describe('a config with only version, sandbox and remotes', () => {
  it('is valid, with every default filled in and normalized', () => {
    const r = load(yaml(...HEAD, ...REMOTE));
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.warnings).toEqual([]);
    const { file, dir, ...rest } = r.config;
    expect(file).toBe(FILE);
    expect(dir).toBe(DIR);
    expect(rest).toEqual({
      version: 1,
      sandbox: {
        branch: 'develop',
        debounceMs: 3000,
        batchWindowMs: 10_000,
        exclude: ['*.tmp', '.cache/', 'node_modules/', '*.pid', 'nohup.out', '.venv/', 'dist/', 'build/'],
        commitMessage: 'sync: {summary}',
      },
      // The default credentials are ${CASCADE_CLIENT_ID}/${CASCADE_CLIENT_SECRET}: unset here, so none.
      remotes: [{ name: 'origin', url: 'https://git.example.com/team/site.git', kind: 'http', timeoutMs: 60_000 }],
      retry: { initialMs: 1000, factor: 2, maxMs: 300_000, jitter: 0.2 },
      intervals: { fetchMs: 30_000, healthMs: 20_000, rescanMs: 600_000, leaseMs: 60_000 },
      environments: {},
      notifications: { desktop: true, webhooks: [] },
      logging: { file: path.join(HOME, '.headyme/logs/cascade-sync.log'), level: 'info' },
      security: { encrypt: ['.env', '.env.*', '**/*.pem', 'secrets/**'], maxFileSizeBytes: 50 * 1024 * 1024, allow: [] },
      server: { listen: '' },
      secrets: [],
      variables: [
        { name: 'CASCADE_CLIENT_ID', source: 'missing', optional: true },
        { name: 'CASCADE_CLIENT_SECRET', source: 'missing', optional: true },
      ],
    });
  });

  it('takes the log file default under the HOME it is given, not the process HOME', () => {
    const c = valid(yaml(...HEAD, ...REMOTE), { HOME: '/home/someone-else' });
    expect(c.logging.file).toBe('/home/someone-else/.headyme/logs/cascade-sync.log');
  });
});

describe('normalization', () => {
  it.each([
    { name: '3s', text: '3s', ms: 3000 },
    { name: '5m', text: '5m', ms: 300_000 },
    { name: '1h', text: '1h', ms: 3_600_000 },
    { name: '1h30m', text: '1h30m', ms: 5_400_000 },
    { name: '500ms', text: '500ms', ms: 500 },
    { name: 'a fraction', text: '1.5s', ms: 1500 },
    { name: 'a day', text: '1d', ms: 86_400_000 },
  ])('duration $name is $ms ms', ({ text, ms }) => {
    const c = valid(yaml('version: 1', 'sandbox:', `  debounce: ${text}`, '  batchWindow: 2d', 'retry:', `  initial: ${text}`));
    expect(c.sandbox.debounceMs).toBe(ms);
    expect(c.retry.initialMs).toBe(ms);
  });

  it('converts the durations of every section', () => {
    const c = valid(
      yaml(
        ...HEAD,
        'retry: { initial: 250ms, max: 2m }',
        'intervals: { fetch: 1m, health: 45s }',
        'environments:',
        '  staging:',
        '    branch: staging',
        '    from: develop',
        '    progressDeadline: 1h30m',
        '    gates: [ { name: test, command: "npm test", timeout: 90s } ]',
        '    health: [ { name: web, command: "true" } ]',
        '    windows: [ { kind: allow, schedule: "0 9 * * 1-5", duration: 8h, timezone: UTC } ]',
      ),
    );
    expect(c.retry).toMatchObject({ initialMs: 250, maxMs: 120_000 });
    expect(c.intervals).toMatchObject({ fetchMs: 60_000, healthMs: 45_000 });
    const staging = c.environments.staging!;
    expect(staging.progressDeadlineMs).toBe(5_400_000);
    expect(staging.gates[0]!.timeoutMs).toBe(90_000);
    expect(staging.health[0]!.timeoutMs).toBe(5000); // the health check default
    expect(staging.windows[0]!.durationMs).toBe(8 * 3_600_000);
  });

  it.each([
    { name: '~/ is HOME from the passed env', written: '~/logs/cs.log', resolved: `${HOME}/logs/cs.log` },
    { name: 'a relative path is resolved against the config folder', written: 'logs/cs.log', resolved: `${DIR}/logs/cs.log` },
    { name: '.. leaves the config folder', written: '../shared/cs.log', resolved: '/srv/shared/cs.log' },
    { name: 'an absolute path is kept', written: '/var/log/cs.log', resolved: '/var/log/cs.log' },
  ])('paths: $name', ({ written, resolved }) => {
    const c = valid(
      yaml(
        ...HEAD,
        'remotes:',
        '  - name: local',
        `    url: ${written.replace('cs.log', 'bare.git')}`,
        'environments:',
        '  staging:',
        '    branch: staging',
        '    from: develop',
        `    deploy: { directory: ${written.replace('cs.log', 'deploy')} }`,
        `logging: { file: ${written} }`,
      ),
    );
    expect(c.logging.file).toBe(resolved);
    expect(c.remotes[0]).toEqual({ name: 'local', url: resolved.replace('cs.log', 'bare.git'), kind: 'local', timeoutMs: 60_000 });
    expect(c.environments.staging!.deploy!.directory).toBe(resolved.replace('cs.log', 'deploy'));
  });

  it('keeps an http(s) URL as written', () => {
    const c = valid(yaml(...HEAD, 'remotes:', '  - { name: o, url: "https://git.example.com/a/../b.git" }'));
    expect(c.remotes[0]).toEqual({ name: 'o', url: 'https://git.example.com/a/../b.git', kind: 'http', timeoutMs: 60_000 });
  });

  it('substitutes ${VAR} from the passed env only, each value exactly once', () => {
    const env = {
      HOME,
      REMOTE_URL: 'https://git.example.com/team/site.git',
      GIT_USER: 'bot',
      GIT_TOKEN: 'tok-${NOT_A_VAR}-1', // a value that looks like a reference is not expanded again
      HOOK_SECRET: 's3cret',
    };
    const c = valid(
      yaml(
        'version: 1',
        'sandbox:',
        '  commitMessage: "sync by ${GIT_USER}: {summary}"',
        'remotes:',
        '  - name: origin',
        '    url: ${REMOTE_URL}',
        '    username: ${GIT_USER}',
        '    password: ${GIT_TOKEN}',
        'notifications:',
        '  webhooks: [ { url: "https://hooks.example.com/x", secret: "${HOOK_SECRET}" } ]',
      ),
      env,
    );
    expect(c.sandbox.commitMessage).toBe('sync by bot: {summary}');
    expect(c.remotes).toEqual([{ name: 'origin', url: env.REMOTE_URL, kind: 'http', username: 'bot', password: 'tok-${NOT_A_VAR}-1', timeoutMs: 60_000 }]);
    expect(c.notifications.webhooks).toEqual([{ url: 'https://hooks.example.com/x', secret: 's3cret' }]);
    expect(c.secrets).toEqual(expect.arrayContaining(['bot', 'tok-${NOT_A_VAR}-1', 's3cret']));
  });

  it('does not read process.env: a variable set only there is unset', () => {
    expect(process.env.PATH).toBeTruthy();
    expect(problems(yaml('version: 1', 'sandbox:', '  commitMessage: "${PATH}"'))).toEqual([
      {
        line: 3,
        col: 18,
        path: 'sandbox.commitMessage',
        message: "variable PATH is not set (looked in the controller's environment and in /srv/site/.env, which does not exist)",
        hint: 'add a line PATH=... to .env beside the config (kept encrypted in git), or export PATH where cascade-sync starts',
      },
    ]);
  });
});

describe('credential variables', () => {
  it.each([
    { name: 'left out (the defaults)', lines: [] as string[] },
    { name: 'written out', lines: ['    username: ${CASCADE_CLIENT_ID}', '    password: ${CASCADE_CLIENT_SECRET}'] },
  ])('$name and unset: valid, and no credentials are sent', ({ lines }) => {
    const c = valid(yaml(...HEAD, ...REMOTE, ...lines));
    expect(c.remotes[0]).toEqual({ name: 'origin', url: 'https://git.example.com/team/site.git', kind: 'http', timeoutMs: 60_000 });
    expect(c.secrets).toEqual([]);
  });

  it('left out and set: the remote gets them, and they are secrets', () => {
    const c = valid(yaml(...HEAD, ...REMOTE), { HOME, CASCADE_CLIENT_ID: 'ci-bot', CASCADE_CLIENT_SECRET: 'pa${X}ss' });
    expect(c.remotes[0]).toMatchObject({ username: 'ci-bot', password: 'pa${X}ss' });
    expect(c.secrets).toEqual(['ci-bot', 'pa${X}ss']);
  });

  it.each([
    {
      name: 'another variable under remotes',
      text: yaml(...HEAD, ...REMOTE, '    username: ${GIT_USER}'),
      expected: { line: 6, col: 15, path: 'remotes[0].username', message: "variable GIT_USER is not set (looked in the controller's environment and in /srv/site/.env, which does not exist)" },
    },
    {
      name: 'a credential variable used as a URL',
      text: yaml(...HEAD, 'remotes:', '  - name: origin', '    url: ${CASCADE_CLIENT_ID}'),
      expected: { line: 5, col: 10, path: 'remotes[0].url', message: "variable CASCADE_CLIENT_ID is not set (looked in the controller's environment and in /srv/site/.env, which does not exist)" },
    },
    {
      name: 'a credential variable outside remotes',
      text: yaml('version: 1', 'sandbox:', '  branch: develop', '  commitMessage: "by ${CASCADE_CLIENT_ID}"'),
      expected: { line: 4, col: 18, path: 'sandbox.commitMessage', message: "variable CASCADE_CLIENT_ID is not set (looked in the controller's environment and in /srv/site/.env, which does not exist)" },
    },
    {
      name: 'a webhook secret',
      text: yaml(...HEAD, 'notifications:', '  webhooks:', '    - url: https://hooks.example.com/x', '      secret: ${CASCADE_WEBHOOK_SECRET}'),
      expected: { line: 6, col: 15, path: 'notifications.webhooks[0].secret', message: "variable CASCADE_WEBHOOK_SECRET is not set (looked in the controller's environment and in /srv/site/.env, which does not exist)" },
    },
  ])('any other unset variable is one error at its line:col: $name', ({ text, expected }) => {
    // One problem: the value emptied by the missing variable is not reported a second time.
    expect(problems(text)).toEqual([expect.objectContaining(expected)]);
  });
});

describe('schema problems', () => {
  it('reports every mistake, each at its own line:col', () => {
    const text = yaml(
      'version: 1', // 1
      'sandbox:', // 2
      '  debounse: 3s', // 3: unknown key (a warning, reported with the errors)
      '  batchWindow: 10', // 4: a number, not a duration string
      ...REMOTE, // 5-7
      'logging:', // 8
      '  level: loud', // 9: not one of the levels
    );
    expect(problems(text)).toEqual([
      { line: 3, col: 3, path: 'sandbox.debounse', message: 'unknown key "debounse" is ignored', hint: 'did you mean "debounce"?' },
      { line: 4, col: 16, path: 'sandbox.batchWindow', message: '10 is not a duration', hint: 'write a number followed by ms, s, m, h or d, optionally chained: 500ms, 3s, 5m, 1h30m' },
      { line: 9, col: 10, path: 'logging.level', message: '"loud" is not one of: "debug", "info", "warn", "error"', hint: 'write one of those values, or leave level out for the default info' },
    ]);
  });

  it.each([
    { name: 'debounse', lines: ['sandbox:', '  debounse: 3s'], at: [3, 3], path: 'sandbox.debounse', hint: 'did you mean "debounce"?' },
    { name: 'a top-level typo', lines: ['sandbox: {}', 'remote: []'], at: [3, 1], path: 'remote', hint: 'did you mean "remotes"?' },
    {
      name: 'inside an environment',
      lines: ['sandbox: {}', 'environments:', '  staging:', '    branch: staging', '    from: develop', '    promoton: auto'],
      at: [7, 5],
      path: 'environments.staging.promoton',
      hint: 'did you mean "promotion"?',
    },
    {
      name: 'inside a flow mapping in a list',
      lines: ['sandbox: {}', 'remotes: [ { name: o, url: /srv/git/site.git, pasword: x } ]'],
      at: [3, 47],
      path: 'remotes[0].pasword',
      hint: 'did you mean "password"?',
    },
    {
      name: 'nothing close: the valid keys',
      lines: ['sandbox: {}', 'retry:', '  zzzzzzzz: 1'],
      at: [4, 3],
      path: 'retry.zzzzzzzz',
      hint: 'valid keys: initial, factor, max, jitter',
    },
    {
      name: 'a "__proto__" key is a plain unknown key',
      lines: ['sandbox:', '  __proto__: { debounce: 5 }'],
      at: [3, 3],
      path: 'sandbox.__proto__',
      hint: 'valid keys: branch, debounce, batchWindow, exclude, commitMessage, paused, author',
    },
  ])('unknown key ($name): a warning at the key, with the nearest valid key; the key is ignored', ({ lines, at, path: p, hint }) => {
    const key = p.split('.').at(-1)!;
    expect(warnings(yaml('version: 1', ...lines))).toEqual([{ severity: 'warning', line: at[0], col: at[1], path: p, message: `unknown key "${key}" is ignored`, hint }]);
  });

  it('an unknown key is ignored: its value changes nothing and an unset variable in it is no error', () => {
    const r = load(yaml('version: 1', 'sandbox:', '  debounse: 9s', '  debounce: 5s', '  color: ${NO_SUCH_VAR}', 'sandboxx: { debounce: 1s }'));
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.config.sandbox.debounceMs).toBe(5000);
    expect(r.warnings.map((w) => [w.path, w.severity, w.hint])).toEqual([
      ['sandbox.debounse', 'warning', 'did you mean "debounce"?'],
      ['sandbox.color', 'warning', expect.stringContaining('valid keys:')],
      ['sandboxx', 'warning', 'did you mean "sandbox"?'],
    ]);
  });

  it('a misspelled promotion next to approval signers is an error, not an automatic production', () => {
    const text = yaml(...HEAD, 'environments:', '  production:', '    branch: main', '    from: develop', '    promotoin: approval', '    approvals:', '      signers: ["alice@example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEzQ7Zr0ugl8JexD0YyKYHXkpxk0DXAoSXBjFUt1y3HA"]');
    const r = load(text);
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.problems.map((p) => [p.severity, p.line, p.path, p.message])).toEqual([
      ['warning', 7, 'environments.production.promotoin', 'unknown key "promotoin" is ignored'],
      ['error', 9, 'environments.production.approvals.signers', 'production lists approval signers, but its promotion is "auto", so no approval is ever asked for'],
    ]);
  });

  const env = (...lines: string[]) => ['environments:', '  staging:', '    branch: staging', '    from: develop', ...lines];
  it.each([
    { name: 'version other than 1', lines: ['version: 2', 'sandbox: {}'], expected: { line: 1, col: 10, path: 'version', message: 'must be 1', hint: expect.stringMatching(/^set version: 1;/) } },
    { name: 'sandbox not a mapping', lines: ['version: 1', 'sandbox: 5'], expected: { line: 2, col: 10, path: 'sandbox', message: 'must be object' } },
    { name: 'remotes not a list', lines: [...HEAD, 'remotes: { name: origin }'], expected: { line: 3, col: 10, path: 'remotes', message: 'must be array' } },
    { name: 'factor a string', lines: [...HEAD, 'retry: { factor: "2" }'], expected: { line: 3, col: 18, path: 'retry.factor', message: 'must be number' } },
    { name: 'desktop not a boolean', lines: [...HEAD, 'notifications: { desktop: yes please }'], expected: { line: 3, col: 27, path: 'notifications.desktop', message: 'must be boolean' } },
    { name: 'jitter above 1', lines: [...HEAD, 'retry: { jitter: 2 }'], expected: { line: 3, col: 18, path: 'retry.jitter', message: 'must be <= 1' } },
    { name: 'missing sandbox', lines: ['version: 1'], expected: { line: 1, col: 1, path: 'sandbox', message: 'missing required key "sandbox"', hint: expect.stringMatching(/^add sandbox: at the top level \(How the working folder is committed/) } },
    {
      name: 'a duration in words',
      lines: ['version: 1', 'sandbox:', '  debounce: 3 seconds'],
      expected: { line: 3, col: 13, path: 'sandbox.debounce', message: '"3 seconds" is not a duration', hint: expect.stringContaining('500ms, 3s, 5m, 1h30m') },
    },
    {
      name: 'bad enum: promotion',
      lines: [...HEAD, ...env('    promotion: manual')],
      expected: { line: 7, col: 16, path: 'environments.staging.promotion', message: '"manual" is not one of: "auto", "approval"', hint: 'write one of those values, or leave promotion out for the default auto' },
    },
    {
      name: 'bad enum: builtin gate',
      lines: [...HEAD, ...env('    gates: [ { name: g, builtin: lint } ]')],
      expected: { line: 7, col: 34, path: 'environments.staging.gates[0].builtin', message: '"lint" is not one of: "config", "integrity", "security-scan"', hint: 'write one of those values' },
    },
    {
      name: 'a gate with both command and http',
      lines: [...HEAD, ...env('    gates:', '      - { name: test, command: "npm test", http: { url: "http://127.0.0.1:3001/" } }')],
      expected: { line: 8, col: 9, path: 'environments.staging.gates[0]', message: 'has both command and http; give exactly one of: command, http, builtin' },
    },
    {
      name: 'a gate with all three',
      lines: [...HEAD, ...env('    gates:', '      - { name: t, command: "true", builtin: config, http: { url: "http://127.0.0.1/" } }')],
      expected: { line: 8, col: 9, path: 'environments.staging.gates[0]', message: 'has command, http and builtin; give exactly one of: command, http, builtin' },
    },
    {
      name: 'a gate with neither',
      lines: [...HEAD, ...env('    gates:', '      - { name: test, timeout: 5m }')],
      expected: { line: 8, col: 9, path: 'environments.staging.gates[0]', message: 'needs exactly one of: command, http, builtin' },
    },
    {
      name: 'a health check with neither',
      lines: [...HEAD, ...env('    health:', '      - name: web')],
      expected: { line: 8, col: 9, path: 'environments.staging.health[0]', message: 'needs exactly one of: command, http' },
    },
    {
      name: 'an environment name with capitals',
      lines: [...HEAD, 'environments:', '  Staging: { branch: staging, from: develop }'],
      expected: { line: 4, col: 3, path: 'environments.Staging', message: '"Staging" is not a valid name', hint: expect.stringContaining('lowercase') },
    },
    {
      name: 'a branch name git refuses',
      lines: ['version: 1', 'sandbox:', '  branch: "feature..x"'],
      expected: { line: 3, col: 11, path: 'sandbox.branch', message: '"feature..x" is not a valid branch name', hint: expect.stringContaining('develop or main') },
    },
    {
      name: 'a git:// remote',
      lines: [...HEAD, 'remotes: [ { name: o, url: "git://git.example.com/x.git" } ]'],
      expected: { line: 3, col: 28, path: 'remotes[0].url', message: '"git://git.example.com/x.git" is not a supported remote', hint: expect.stringContaining('git:// and other schemes are not supported') },
    },
  ])('$name: one clear problem at its value', ({ lines, expected }) => {
    expect(problems(yaml(...lines))).toEqual([expect.objectContaining(expected)]);
  });
});

describe('semantic rules', () => {
  const staging = ['  staging:', '    branch: staging', '    from: develop'];
  it.each([
    {
      name: 'unknown from environment, with a did-you-mean hint',
      lines: [...HEAD, 'environments:', ...staging, '  production:', '    branch: main', '    from: stagin'],
      expected: [{ line: 9, col: 11, path: 'environments.production.from', message: 'unknown environment "stagin"', hint: 'did you mean "staging"?' }],
    },
    {
      name: 'a typo of the sandbox branch',
      lines: [...HEAD, 'environments:', '  staging:', '    branch: staging', '    from: devleop'],
      expected: [{ line: 6, col: 11, path: 'environments.staging.from', message: 'unknown environment "devleop"', hint: 'did you mean "develop"?' }],
    },
    {
      name: 'a cycle between environments is one problem',
      lines: [...HEAD, 'environments:', '  qa:', '    branch: qa', '    from: uat', '  uat:', '    branch: uat', '    from: qa'],
      expected: [
        {
          line: 6,
          col: 11,
          path: 'environments.qa.from',
          message: 'environments form a cycle: qa <- uat <- qa',
          hint: 'one environment must take its commits from the sandbox branch "develop"',
        },
      ],
    },
    {
      name: 'an environment taking commits from itself',
      lines: [...HEAD, 'environments:', '  qa:', '    branch: qa', '    from: qa'],
      expected: [expect.objectContaining({ line: 6, col: 11, path: 'environments.qa.from', message: 'environments form a cycle: qa <- qa' })],
    },
    {
      name: 'a cron that does not parse',
      lines: [...HEAD, 'environments:', ...staging, '    windows:', '      - { kind: allow, schedule: "0 25 * * 1-5", duration: 8h, timezone: UTC }'],
      expected: [expect.objectContaining({ line: 8, col: 34, path: 'environments.staging.windows[0].schedule', message: expect.stringMatching(/^cron schedule "0 25 \* \* 1-5" does not parse: /) })],
    },
    {
      name: 'an unknown timezone',
      lines: [...HEAD, 'environments:', ...staging, '    windows:', '      - { kind: deny, schedule: "0 0 * * *", duration: 1h, timezone: Europe/Atlantis }'],
      expected: [expect.objectContaining({ line: 8, col: 70, path: 'environments.staging.windows[0].timezone', message: 'unknown time zone "Europe/Atlantis"' })],
    },
    {
      name: 'duplicate remote names',
      lines: [...HEAD, 'remotes:', '  - { name: origin, url: "https://a.example.com/x.git" }', '  - { name: origin, url: /srv/git/x.git }'],
      expected: [{ line: 5, col: 13, path: 'remotes[1].name', message: 'remote "origin" is listed twice', hint: 'give each remote its own name' }],
    },
    {
      name: 'two environments on one branch',
      lines: [...HEAD, 'environments:', ...staging, '  qa:', '    branch: staging', '    from: develop'],
      expected: [{ line: 8, col: 13, path: 'environments.qa.branch', message: 'branch "staging" is already used by environment "staging"', hint: 'each environment needs a branch of its own' }],
    },
    {
      name: 'an environment on the sandbox branch',
      lines: [...HEAD, 'environments:', '  staging:', '    branch: develop', '    from: develop'],
      expected: [expect.objectContaining({ line: 5, col: 13, path: 'environments.staging.branch', message: 'branch "develop" is already used by the sandbox' })],
    },
  ])('$name', ({ lines, expected }) => {
    expect(problems(yaml(...lines))).toEqual(expected);
  });

  it('reports every semantic problem of one file together', () => {
    const text = yaml(
      ...HEAD,
      'remotes:',
      '  - { name: origin, url: /srv/git/a.git }',
      '  - { name: origin, url: /srv/git/b.git }', // 5
      'environments:',
      '  staging:',
      '    branch: staging',
      '    from: devlop', // 9
      '    windows:',
      '      - { kind: allow, schedule: "61 * * * *", duration: 1h, timezone: Mars/Olympus }', // 11
    );
    expect(problems(text).map((p) => `${p.line}:${p.col} ${p.path}`)).toEqual([
      '5:13 remotes[1].name',
      '9:11 environments.staging.from',
      '11:34 environments.staging.windows[0].schedule',
      '11:72 environments.staging.windows[0].timezone',
    ]);
  });

  it('a batchWindow shorter than debounce is a warning, not an error', () => {
    const r = load(yaml('version: 1', 'sandbox:', '  debounce: 5s', '  batchWindow: 1s'));
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.warnings).toEqual([expect.objectContaining({ severity: 'warning', line: 4, col: 16, path: 'sandbox.batchWindow' })]);
  });
});

describe('hostile or broken input: refused with one clear problem, never a throw', () => {
  const nested = (n: number) => `${'['.repeat(n)}${']'.repeat(n)}`;
  let blockNested = 'version: 1\nsandbox: {}\nx:\n';
  for (let i = 1; i <= 40; i++) blockNested += `${' '.repeat(i * 2)}k:\n`;
  const aliasBomb = yaml(
    'version: 1',
    'sandbox: {}',
    'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
    'b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]',
    'c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]',
    'd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]',
    'e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]',
    'f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]',
    'g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]',
    'h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]',
    'i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]',
  );
  it.each([
    {
      name: 'an unclosed flow sequence',
      text: yaml('version: 1', 'sandbox:', '  exclude: ["*.tmp", dist/', 'remotes: []'),
      expected: { line: 4, col: 1, path: '', hint: 'fix the YAML syntax here' },
    },
    {
      name: 'a tab as indentation',
      text: yaml('version: 1', 'sandbox:', '\tbranch: develop'),
      expected: { line: 3, col: 1, path: '', hint: 'fix the YAML syntax here' },
    },
    {
      name: 'a duplicate key',
      text: yaml('version: 1', 'sandbox: {}', 'version: 1'),
      expected: { line: 3, col: 1, path: '', message: 'Map keys must be unique', hint: 'fix the YAML syntax here' },
    },
    {
      name: 'an alias bomb (billion laughs)',
      text: aliasBomb,
      expected: { line: 6, col: 8, path: '', message: 'expanding the aliases up to *c here takes more than 100 alias uses (an alias bomb?)', hint: 'write the values out, or use at most 100 alias uses and 10000 expanded values' },
    },
    {
      name: '33 levels of nesting',
      text: yaml(...HEAD, `x: ${nested(33)}`),
      expected: { line: 3, col: 36, path: '', message: 'values are nested more than 32 levels deep' },
    },
    {
      name: '40 levels of block nesting',
      text: blockNested,
      expected: { line: 37, col: 69, path: '', message: 'values are nested more than 32 levels deep' },
    },
    {
      name: '100000 levels of flow nesting',
      text: yaml(...HEAD, `x: ${nested(100_000)}`),
      expected: { line: 3, col: 37, path: '', message: 'values are nested more than 32 levels deep' },
    },
    {
      name: '200000 nested block sequences on one line',
      text: `${'- '.repeat(200_000)}x\n`,
      expected: { line: 1, col: 69, path: '', message: 'values are nested more than 32 levels deep' },
    },
    {
      name: 'text over 1 MB',
      text: yaml(...HEAD, `# ${'x'.repeat(MAX_CONFIG_BYTES)}`),
      expected: { line: 1, col: 1, path: '', message: expect.stringMatching(/^the file is \d+ bytes; a config is at most 1048576 bytes$/) },
    },
    {
      name: 'an empty file',
      text: '',
      expected: { line: 1, col: 1, path: '', message: expect.stringContaining('must be a YAML mapping') },
    },
    {
      name: 'a list instead of a mapping',
      text: yaml('- version: 1'),
      expected: { line: 1, col: 1, path: '', message: expect.stringContaining('must be a YAML mapping') },
    },
  ])('$name', ({ text, expected }) => {
    expect(problems(text)).toEqual([expect.objectContaining(expected)]);
  });

  it('30 levels of nesting are not refused for depth (the unknown key is all that is wrong)', () => {
    expect(warnings(yaml(...HEAD, `x: ${nested(30)}`))).toEqual([expect.objectContaining({ severity: 'warning', line: 3, col: 1, path: 'x', message: 'unknown key "x" is ignored' })]);
  });

  it('a few aliases are fine', () => {
    const c = valid(yaml('version: 1', 'sandbox:', '  exclude: &ex ["*.tmp", dist/]', 'security:', '  allow: *ex'));
    expect(c.security.allow).toEqual(['*.tmp', 'dist/']);
  });
});

describe('loadConfig', () => {
  it('refuses a file over 1 MB before reading it', async () => {
    const dir = await makeTmpDir('config-big');
    const file = path.join(dir, CONFIG_FILE);
    await writeFile(file, yaml(...HEAD, `# ${'x'.repeat(MAX_CONFIG_BYTES)}`));
    const r = await loadConfig(file, ENV);
    expect(r).toEqual({
      ok: false,
      problems: [{ severity: 'error', file, line: 1, col: 1, path: '', message: `the file is ${MAX_CONFIG_BYTES + 26} bytes; a config is at most ${MAX_CONFIG_BYTES} bytes`, hint: 'is this the right file?' }],
    });
  });

  it('reports a missing file with what to do', async () => {
    const dir = await makeTmpDir('config-missing');
    const r = await loadConfig(path.join(dir, CONFIG_FILE), ENV);
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.problems).toEqual([expect.objectContaining({ message: 'no config file here', hint: expect.stringContaining('cascade-sync init') })]);
  });

  it('anchors relative paths at the file it reads', async () => {
    const dir = await makeTmpDir('config-rel');
    await writeFile(path.join(dir, CONFIG_FILE), yaml(...HEAD, 'remotes: [ { name: o, url: ../remote.git } ]', 'logging: { file: logs/cs.log }'));
    const r = await loadConfig(path.join(dir, CONFIG_FILE), ENV);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.config.dir).toBe(dir);
    expect(r.config.remotes[0]!.url).toBe(path.join(path.dirname(dir), 'remote.git'));
    expect(r.config.logging.file).toBe(path.join(dir, 'logs/cs.log'));
  });
});

describe('formatProblem', () => {
  it.each([
    { name: 'with a path and a hint', p: { path: 'sandbox.debounse', message: 'unknown key "debounse"', hint: 'did you mean "debounce"?' }, out: '/x/c.yaml:3:5: sandbox.debounse: unknown key "debounse" (hint: did you mean "debounce"?)' },
    { name: 'without a hint', p: { path: 'retry.factor', message: 'must be number' }, out: '/x/c.yaml:3:5: retry.factor: must be number' },
    { name: 'for the whole file', p: { path: '', message: 'values are nested too deep' }, out: '/x/c.yaml:3:5: values are nested too deep' },
    { name: 'a warning', p: { path: 'a', message: 'm', severity: 'warning' as const }, out: '/x/c.yaml:3:5: warning: a: m' },
  ])('$name', ({ p, out }) => {
    expect(formatProblem({ severity: 'error', file: '/x/c.yaml', line: 3, col: 5, ...p })).toBe(out);
  });
});

/** The config outline from DESIGN.md, verbatim. */
const DESIGN_OUTLINE = `version: 1
sandbox:
  branch: develop
  debounce: 3s            # quiet time after the last change before a commit
  batchWindow: 10s        # a burst is committed at the latest this long after its first change
  exclude: ["*.tmp", ".cache/", "node_modules/", "*.pid", "nohup.out", ".venv/", "dist/", "build/"]
  commitMessage: "sync: {summary}"
remotes:
  - name: origin
    url: https://git.example.com/team/site.git   # http(s) URL or a local path to a bare repository
    username: \${CASCADE_CLIENT_ID}               # \${VAR} reads the environment; never written to logs
    password: \${CASCADE_CLIENT_SECRET}
retry: { initial: 1s, factor: 2, max: 5m }
intervals: { fetch: 30s, health: 20s, rescan: 10m }
environments:
  staging:
    branch: staging
    from: develop
    promotion: auto               # auto | approval
    gates:                        # must pass on the candidate commit, run in a clean export, not the sandbox
      - { name: test, command: "npm test", timeout: 10m }
    deploy: { directory: /srv/site/staging, keep: 5 }
    health:
      - { name: web, http: { url: "http://127.0.0.1:3001/healthz", status: 200 }, timeout: 5s }
  production:
    branch: main
    from: staging
    promotion: approval
    approvals:
      required: 1
      signers: ["alice@example.com ssh-ed25519 AAAAC3Nza..."]   # allowed_signers lines
    windows:
      - { kind: allow, schedule: "0 9 * * 1-5", duration: 8h, timezone: Europe/Berlin }
    deploy: { directory: /srv/site/production, keep: 10 }
    health:
      - { name: smoke, command: "./scripts/smoke.sh", timeout: 30s }
    rollback: { automatic: true }
notifications:
  desktop: true
  webhooks: [ { url: "https://hooks.example.com/cascade", secret: "\${CASCADE_WEBHOOK_SECRET}" } ]
logging: { file: ~/.headyme/logs/cascade-sync.log, level: info }
`;

describe('cascade-sync validate', () => {
  async function sandboxWith(text: string): Promise<{ dir: string; file: string }> {
    const dir = await makeTmpDir('validate');
    const file = path.join(dir, CONFIG_FILE);
    await writeFile(file, text);
    return { dir, file };
  }

  it('prints every problem as file:line:col: path: message and exits 1', async () => {
    const { dir, file } = await sandboxWith(
      yaml('version: 1', 'sandbox:', '  debounse: 3s', '  batchWindow: 10', 'remotes:', '  - name: origin', '    url: ${NO_SUCH_VAR}', 'logging:', '  level: loud'),
    );
    const r = await run(dir, ['validate'], testEnv());
    expect(r.code).toBe(1);
    expect(r.stdout).toBe(`${file}:3:3: warning: sandbox.debounse: unknown key "debounse" is ignored (hint: did you mean "debounce"?)\nvariables: NO_SUCH_VAR (missing), CASCADE_CLIENT_ID (missing, optional), CASCADE_CLIENT_SECRET (missing, optional)\n`);
    const lines = r.stderr.trimEnd().split('\n');
    expect(lines).toEqual([
      `${file}:4:16: sandbox.batchWindow: 10 is not a duration (hint: write a number followed by ms, s, m, h or d, optionally chained: 500ms, 3s, 5m, 1h30m)`,
      `${file}:7:10: remotes[0].url: variable NO_SUCH_VAR is not set (looked in the controller's environment and in ${path.join(path.dirname(file), '.env')}, which does not exist) (hint: add a line NO_SUCH_VAR=... to .env beside the config (kept encrypted in git), or export NO_SUCH_VAR where cascade-sync starts)`,
      `${file}:9:10: logging.level: "loud" is not one of: "debug", "info", "warn", "error" (hint: write one of those values, or leave level out for the default info)`,
      `3 problem(s) in ${file}`,
    ]);
    for (const line of lines.slice(0, -1)) expect(line).toMatch(/^\/\S+:\d+:\d+: [\w.[\]]+: \S.* \(hint: \S.*\)$/);
  });

  it('reads --config PATH relative to the working directory', async () => {
    const { dir, file } = await sandboxWith(yaml('version: 1', 'sandbox:', '  debounce: soon'));
    const r = await run(path.dirname(dir), ['validate', '--config', path.join(path.basename(dir), CONFIG_FILE)], testEnv());
    expect(r.code).toBe(1);
    expect(r.stderr.split('\n')[0]).toBe(`${file}:3:13: sandbox.debounce: "soon" is not a duration (hint: write a number followed by ms, s, m, h or d, optionally chained: 500ms, 3s, 5m, 1h30m)`);
  });

  it('a config with an unknown key is valid: the warning with the nearest valid key on stdout, exit 0', async () => {
    const { dir, file } = await sandboxWith(yaml('version: 1', 'sandbox:', '  debounse: 3s'));
    const r = await run(dir, ['validate'], testEnv());
    expect(r).toEqual({
      code: 0,
      stdout: `${file}:3:3: warning: sandbox.debounse: unknown key "debounse" is ignored (hint: did you mean "debounce"?)\n${file}: valid\n`,
      stderr: '',
    });
  });

  it('exits 1 with what to do when there is no config', async () => {
    const dir = await makeTmpDir('validate-none');
    const r = await run(dir, ['validate'], testEnv());
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${path.join(dir, CONFIG_FILE)}:1:1: no config file here (hint: run \`cascade-sync init\``);
  });

  it('accepts the shipped cascade-sync-config.yaml once REMOTE_URL is a URL', async () => {
    const shipped = await readFile(path.join(ROOT, CONFIG_FILE), 'utf8');
    expect(shipped).toContain('url: REMOTE_URL');
    const { dir, file } = await sandboxWith(shipped.replace('REMOTE_URL', 'https://git.example.com/team/site.git'));
    const env = testEnv();
    delete env.CASCADE_CLIENT_ID;
    delete env.CASCADE_CLIENT_SECRET;
    const r = await run(dir, ['validate'], env);
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe(`variables: CASCADE_CLIENT_ID (missing, optional), CASCADE_CLIENT_SECRET (missing, optional)\n${file}: valid\n`);
    expect(r.code).toBe(0);
  });

  it('accepts the outline from DESIGN.md with its variables set', async () => {
    const { dir, file } = await sandboxWith(DESIGN_OUTLINE);
    const env = testEnv({ CASCADE_WEBHOOK_SECRET: 'hook-secret' });
    delete env.CASCADE_CLIENT_ID;
    delete env.CASCADE_CLIENT_SECRET;
    const r = await run(dir, ['validate'], env);
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe(`variables: CASCADE_CLIENT_ID (missing, optional), CASCADE_CLIENT_SECRET (missing, optional), CASCADE_WEBHOOK_SECRET (shell)\n${file}: valid\n`);
    expect(r.code).toBe(0);
  });

  it('the DESIGN.md outline without CASCADE_WEBHOOK_SECRET: exactly that one error', async () => {
    const { dir, file } = await sandboxWith(DESIGN_OUTLINE);
    const env = testEnv();
    delete env.CASCADE_WEBHOOK_SECRET;
    const r = await run(dir, ['validate'], env);
    expect(r.code).toBe(1);
    expect(r.stderr.trimEnd().split('\n')).toEqual([
      `${file}:40:67: notifications.webhooks[0].secret: variable CASCADE_WEBHOOK_SECRET is not set (looked in the controller's environment and in ${path.join(path.dirname(file), '.env')}, which does not exist) (hint: add a line CASCADE_WEBHOOK_SECRET=... to .env beside the config (kept encrypted in git), or export CASCADE_WEBHOOK_SECRET where cascade-sync starts)`,
      `1 problem(s) in ${file}`,
    ]);
  });

  it('the DESIGN.md outline normalizes to what it says', () => {
    const c = valid(DESIGN_OUTLINE, { HOME, CASCADE_WEBHOOK_SECRET: 'hook-secret' });
    expect(Object.keys(c.environments)).toEqual(['staging', 'production']);
    expect(c.environments.production).toMatchObject({
      from: 'staging',
      promotion: 'approval',
      approvals: { required: 1, signers: ['alice@example.com ssh-ed25519 AAAAC3Nza...'] },
      windows: [{ kind: 'allow', schedule: '0 9 * * 1-5', durationMs: 8 * 3_600_000, timezone: 'Europe/Berlin' }],
      deploy: { directory: '/srv/site/production', keep: 10, selfHeal: true, hooks: {} },
      rollback: { automatic: true },
    });
    expect(c.environments.staging).toMatchObject({
      gates: [{ name: 'test', command: 'npm test', timeoutMs: 600_000 }],
      health: [{ name: 'web', http: { url: 'http://127.0.0.1:3001/healthz', status: 200 }, timeoutMs: 5000 }],
      rollback: { automatic: false },
    });
    expect(c.secrets).toContain('hook-secret');
  });
});

describe('command env', () => {
  const staging = ['environments:', '  staging:', '    branch: staging', '    from: develop'];
  const SET = { HOME, NPM_TOKEN: 'npm-t0k3n', CASCADE_CLIENT_SECRET: 'client-s3cr3t' };

  it('gates, health checks and deploy hooks take NAME and { NAME: value } items; values read from the environment are secrets, literals are not', () => {
    const c = valid(yaml(...HEAD, ...staging,
      '    gates:',
      '      - { name: test, command: "npm test", env: [NPM_TOKEN, { AUTH: "Bearer ${NPM_TOKEN}" }, { NODE_ENV: production }] }',
      '    deploy: { directory: /srv/staging, hooks: { post: ./restart.sh, env: [{ RELOAD: "1" }] } }',
      '    health: [ { name: smoke, command: ./smoke.sh, env: [SMOKE_KEY] }, { name: web, http: { url: "http://127.0.0.1/" } } ]',
    ), { ...SET, SMOKE_KEY: 'smoke-k3y' });
    const env = c.environments.staging!;
    expect(env.gates[0]!.env).toEqual([{ name: 'NPM_TOKEN' }, { name: 'AUTH', value: 'Bearer npm-t0k3n', reads: ['NPM_TOKEN'] }, { name: 'NODE_ENV', value: 'production' }]);
    expect(env.deploy!.hooks).toEqual({ post: './restart.sh', env: [{ name: 'RELOAD', value: '1' }] });
    expect(env.health.map((h) => h.env)).toEqual([[{ name: 'SMOKE_KEY' }], []]);
    expect(c.secrets).toEqual(expect.arrayContaining(['npm-t0k3n', 'Bearer npm-t0k3n', 'smoke-k3y']));
    expect(c.secrets).not.toContain('production');
    expect(c.secrets).not.toContain('1');
  });

  it('a name passed through that the controller does not have is no error (the command just does not get it)', () => {
    expect(valid(yaml(...HEAD, ...staging, '    gates: [ { name: test, command: "npm test", env: [NOT_SET_HERE] } ]')).environments.staging!.gates[0]!.env).toEqual([{ name: 'NOT_SET_HERE' }]);
  });

  it('${VAR} in a command is left to the shell: not substituted, and an unset one is no error', () => {
    const c = valid(yaml(...HEAD, ...staging,
      '    gates: [ { name: test, command: "echo ${CASCADE_CLIENT_SECRET} ${UNSET_ONE}" } ]',
      '    deploy: { directory: /srv/staging, hooks: { pre: "echo ${NPM_TOKEN}", post: "echo ${HOME}" } }',
      '    health: [ { name: smoke, command: "test -n \\"${NPM_TOKEN}\\"" } ]',
    ), SET);
    const env = c.environments.staging!;
    expect(env.gates[0]!.command).toBe('echo ${CASCADE_CLIENT_SECRET} ${UNSET_ONE}');
    expect(env.deploy!.hooks).toMatchObject({ pre: 'echo ${NPM_TOKEN}', post: 'echo ${HOME}' });
    expect(env.health[0]!.command).toBe('test -n "${NPM_TOKEN}"');
    // Everywhere else ${VAR} is still the controller's.
    expect(c.environments.staging!.deploy!.directory).toBe('/srv/staging');
  });

  it('an invalid name, a CASCADE_* name, a value reading ${CASCADE_*} and a repeated name: one error each, at file:line:col', () => {
    const text = yaml(
      ...HEAD, ...staging, //                                     1-6
      '    gates:', //                                              7
      '      - name: test', //                                      8
      '        command: npm test', //                              9
      '        env:', //                                           10
      '          - npm-token', //                                  11
      '          - { 1ABC: x }', //                                12
      '          - CASCADE_CLIENT_SECRET', //                      13
      '          - { TOKEN: "${CASCADE_CLIENT_SECRET}" }', //      14
      '          - NPM_TOKEN', //                                  15
      '          - NPM_TOKEN', //                                  16
      '    deploy: { directory: /srv/staging, hooks: { pre: ./x, env: [CASCADE_COMMIT] } }', // 17
      '    health: [ { name: h, command: "true", env: ["A B"] } ]', // 18
    );
    const own = "cascade-sync sets CASCADE_ENVIRONMENT, CASCADE_COMMIT and CASCADE_RELEASE_DIR for commands itself, and its own credentials must never reach code from a commit; give the command a variable of its own, such as DEPLOY_TOKEN";
    const name = 'use letters, digits and underscores, not starting with a digit, such as NPM_TOKEN';
    expect(problems(text, SET)).toEqual([
      { line: 11, col: 13, path: 'environments.staging.gates[0].env[0]', message: '"npm-token" is not a valid environment variable name', hint: name },
      { line: 12, col: 13, path: 'environments.staging.gates[0].env[1]', message: '"1ABC" is not a valid environment variable name', hint: name },
      { line: 13, col: 13, path: 'environments.staging.gates[0].env[2]', message: "CASCADE_CLIENT_SECRET is cascade-sync's own variable and is not given to commands", hint: own },
      { line: 14, col: 22, path: 'environments.staging.gates[0].env[3].TOKEN', message: "the value of TOKEN reads ${CASCADE_CLIENT_SECRET}, one of cascade-sync's own variables, which are never given to commands", hint: own },
      { line: 16, col: 13, path: 'environments.staging.gates[0].env[5]', message: 'NPM_TOKEN is listed twice', hint: 'list each variable once' },
      { line: 17, col: 65, path: 'environments.staging.deploy.hooks.env[0]', message: "CASCADE_COMMIT is cascade-sync's own variable and is not given to commands", hint: own },
      { line: 18, col: 49, path: 'environments.staging.health[0].env[0]', message: '"A B" is not a valid environment variable name', hint: name },
    ]);
  });

  it('an item that is neither a name nor a one-name mapping, and an unset ${VAR} in a value, are errors at their line:col', () => {
    const text = yaml(...HEAD, ...staging, '    gates:', '      - name: test', '        command: npm test', '        env:', '          - [NPM_TOKEN]', '          - { A: x, B: y }', '          - { C: "${NO_SUCH_VAR}" }');
    expect(problems(text, SET)).toEqual([
      expect.objectContaining({ line: 11, col: 13, path: 'environments.staging.gates[0].env[0]', message: 'must be string,object' }),
      expect.objectContaining({ line: 12, col: 13, path: 'environments.staging.gates[0].env[1]', message: 'must NOT have more than 1 properties' }),
      expect.objectContaining({ line: 13, col: 18, path: 'environments.staging.gates[0].env[2].C', message: expect.stringContaining('variable NO_SUCH_VAR is not set') }),
    ]);
  });

  it('naming an allow-listed variable is a warning, and its value is no secret (HOME would mask every path in the log)', () => {
    const text = yaml(...HEAD, ...staging, '    gates: [ { name: test, command: "npm test", env: [HOME, { PATH: "/opt/node/bin:/usr/bin" }] } ]');
    expect(warnings(text).map((w) => [w.line, w.col, w.path, w.message])).toEqual([[7, 55, 'environments.staging.gates[0].env[0]', 'every command gets HOME already']]);
    expect(valid(text).secrets).not.toContain(HOME);
  });

  it('env on an http gate or check, or on a deploy without hooks, is a warning: nothing runs with it', () => {
    expect(warnings(yaml(...HEAD, ...staging, '    gates: [ { name: web, http: { url: "http://127.0.0.1/" }, env: [X] } ]')).map((w) => [w.severity, w.path, w.message])).toEqual([
      ['warning', 'environments.staging.gates[0].env', 'env is ignored: an http gate runs no command'],
    ]);
  });
});

describe('generated types', () => {
  const script = path.join(ROOT, 'scripts/gen-types.mjs');
  function gen(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve, reject) => {
      execFile(process.execPath, [script, ...args], { cwd: ROOT, encoding: 'utf8' }, (err, stdout, stderr) => {
        if (err && typeof err.code !== 'number') reject(err);
        else resolve({ code: err ? Number(err.code) : 0, stdout, stderr });
      });
    });
  }
  async function snapshot(dir: string): Promise<Record<string, string>> {
    const out: Record<string, string> = {};
    for (const f of (await readdir(dir)).sort()) out[f] = await readFile(path.join(dir, f), 'utf8');
    return out;
  }

  it('src/generated is current with schema/ (npm run check:gen)', async () => {
    const r = await gen(['--check']);
    expect(r.stderr).toBe('');
    expect(r.stdout).toContain('generated types up to date');
    expect(r.code).toBe(0);
  });

  it('the check fails on a schema change that was not generated, and gen fixes it; the real files stay untouched', async () => {
    const before = await snapshot(path.join(ROOT, 'src/generated'));
    const schemaDir = await makeTmpDir('gen-schema');
    const outDir = await makeTmpDir('gen-out');
    await cp(path.join(ROOT, 'schema'), schemaDir, { recursive: true });
    await cp(path.join(ROOT, 'src/generated'), outDir, { recursive: true });
    const dirs = ['--schema-dir', schemaDir, '--out-dir', outDir];

    // The unchanged copy passes, so the failure below comes from the edit alone.
    expect((await gen(['--check', ...dirs])).code).toBe(0);

    const schemaFile = path.join(schemaDir, 'cascade-sync-config.schema.json');
    const schema = JSON.parse(await readFile(schemaFile, 'utf8')) as { properties: { sandbox: { properties: Record<string, unknown> } } };
    schema.properties.sandbox.properties.quietHours = { description: 'A field added to the schema only.', type: 'string' };
    await writeFile(schemaFile, JSON.stringify(schema, null, 2));

    const stale = await gen(['--check', ...dirs]);
    expect(stale.code).toBe(1);
    expect(stale.stderr).toContain('generated types are stale');
    expect(stale.stderr).toContain(`stale: ${path.join(outDir, 'config.ts')}`);
    expect(stale.stderr).not.toContain('state.ts');

    const written = await gen(dirs);
    expect(written.code).toBe(0);
    expect(await readFile(path.join(outDir, 'config.ts'), 'utf8')).toContain('quietHours?: string;');
    expect((await gen(['--check', ...dirs])).code).toBe(0);

    expect(await snapshot(path.join(ROOT, 'src/generated'))).toEqual(before);
  });

  it('the check fails when a generated file was edited by hand', async () => {
    const outDir = await makeTmpDir('gen-edited');
    await cp(path.join(ROOT, 'src/generated'), outDir, { recursive: true });
    const file = path.join(outDir, 'state.ts');
    await writeFile(file, (await readFile(file, 'utf8')).replace('signer: string;', 'signer: string | number;'));
    const r = await gen(['--check', '--out-dir', outDir]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`stale: ${file}`);
  });
});

describe('intervals and remote URLs', () => {
  it.each(['fetch', 'rescan', 'health'])('refuses intervals.%s below 1s (the loop would spin)', (key) => {
    const seen = problems(yaml(...HEAD, `intervals: { ${key}: 0s }`));
    expect(seen.map((p) => `${p.path}: ${p.message}`)).toEqual([`intervals.${key}: intervals.${key} is 0ms; it must be at least 1s`]);
  });
  it('accepts an upper-case HTTPS:// remote as an HTTP remote', () => {
    const c = valid(yaml(...HEAD, 'remotes:', '  - name: origin', '    url: HTTPS://git.example.com/x.git'));
    expect(c.remotes[0]?.kind).toBe('http');
  });
});

describe('server.listen', () => {
  it('refuses a non-loopback address without a token, and accepts loopback or a token', () => {
    expect(problems(yaml(...HEAD, 'server: { listen: "0.0.0.0:7420" }'))).toEqual([
      expect.objectContaining({ path: 'server.listen', message: expect.stringContaining('without a token would expose the pipeline'), hint: 'set server.token, or listen on 127.0.0.1' }),
    ]);
    expect(valid(yaml(...HEAD, 'server: { listen: "127.0.0.1:7420" }')).server.listen).toBe('127.0.0.1:7420');
    expect(valid(yaml(...HEAD, 'server: { listen: "[::1]:7420" }')).server.listen).toBe('[::1]:7420');
    expect(valid(yaml(...HEAD, 'server: { listen: "0.0.0.0:7420", token: "${T}" }'), { ...ENV, T: 'long-random-token' }).server.token).toBe('long-random-token');
  });
});

/** A JSON Schema node, as far as these checks read it. */
type SchemaNode = {
  $ref?: string;
  description?: string;
  default?: unknown;
  required?: string[];
  properties?: Record<string, SchemaNode>;
  oneOf?: SchemaNode[];
  dependencies?: Record<string, SchemaNode>;
  definitions?: Record<string, SchemaNode>;
  [keyword: string]: unknown;
};

/** One property declared anywhere in a schema, named by where it is declared (a definition's name, or the root). */
interface Field {
  name: string;
  node: SchemaNode;
  /** Its parent lists it in `required`: the user must write it, so a default would never apply. */
  required: boolean;
  /** One of the keys of an "exactly one of" choice (gate command/http/builtin): a default would make the choice for the user. */
  alternative: boolean;
}

/**
 * Every property of every `properties` keyword in `schema`, wherever it is (root, definitions,
 * items, map values, nested objects), so that a field added anywhere is found. Names read like
 * config paths: `sandbox.debounce`, `webhook.events` (in definitions.webhook), `remote[]...`.
 */
function schemaFields(schema: SchemaNode): Field[] {
  const out: Field[] = [];
  const visit = (node: unknown, name: string): void => {
    if (!node || typeof node !== 'object') return;
    if (Array.isArray(node)) {
      for (const n of node) visit(n, name);
      return;
    }
    const n = node as SchemaNode;
    const required = new Set(n.required ?? []);
    const choices = [...(n.oneOf ?? []), ...Object.values(n.dependencies ?? {}).flatMap((d) => d.oneOf ?? [])];
    const alternatives = new Set(choices.flatMap((c) => c.required ?? []));
    for (const [key, value] of Object.entries(n)) {
      if (key === 'properties' && value && typeof value === 'object') {
        for (const [prop, child] of Object.entries(value as Record<string, SchemaNode>)) {
          const childName = name ? `${name}.${prop}` : prop;
          out.push({ name: childName, node: child, required: required.has(prop), alternative: alternatives.has(prop) });
          visit(child, childName);
        }
      } else if (key === 'definitions' && value && typeof value === 'object') {
        for (const [def, child] of Object.entries(value as Record<string, SchemaNode>)) visit(child, def);
      } else if (key === 'items') visit(value, `${name}[]`);
      else if (key === 'additionalProperties') visit(value, `${name}.<name>`);
      else visit(value, name);
    }
  };
  visit(schema, '');
  return out;
}

/**
 * Optional fields that have no `default`, each for a reason: absence itself is the behaviour, and
 * no value written into the file would mean the same. Their descriptions say "Default: ..." in
 * words instead. Keep this list short: a new optional field gets a default unless it belongs here.
 */
const NO_DEFAULT: Record<string, Record<string, string>> = {
  config: {
    // Absent: git's user.name/user.email are used. A default object would replace them with the
    // name/email defaults, which apply only once author is written.
    'sandbox.author': 'git identity when absent',
    // Absent: promotion only moves the branch. No value would mean that: deploy needs a directory.
    'environment.deploy': 'no deploy when absent',
    // Absent: no command runs; an empty command is refused (minLength 1).
    'environment.deploy.hooks.pre': 'no hook when absent',
    'environment.deploy.hooks.post': 'no hook when absent',
    // Depends on promotion (true for approval, false for auto); a schema default is one value.
    'environment.rollback.automatic': 'default depends on promotion',
    // Absent: any machine may hold the environment's lease; an empty list is refused (minItems 1).
    'environment.runsOn': 'any machine when absent',
    // Absent: the body is not checked at all.
    'httpCheck.body': 'body not checked when absent',
    // Absent: requests go unsigned; an empty secret is refused (minLength 1).
    'webhook.secret': 'unsigned when absent',
    // Absent: every event, including events later releases add; a list would freeze today's set.
    'webhook.events': 'every event when absent',
    // Absent: the key file init made outside the sandbox; its path depends on the machine.
    'security.key': 'init key file when absent',
    // Absent: no token, so only loopback listening is allowed (rule loopbackOrToken).
    'server.token': 'no token when absent',
  },
  state: {
    // Absent: a lift without a reason (a freeze needs one; the entry reader says so).
    'freeze.reason': 'no reason when absent',
    // Absent: the freeze lasts until lifted; a date default would be one moment for everybody.
    'freeze.expires': 'until lifted when absent',
  },
};

/** What is wrong with the documentation of `schema`'s fields: one line per problem. */
function undocumented(schema: SchemaNode, noDefault: Record<string, string>): string[] {
  const problems: string[] = [];
  const fields = schemaFields(schema);
  const ajv = (addFormatsModule as unknown as (a: Ajv) => Ajv)(new Ajv({ strict: false }));
  for (const f of fields) {
    // A property that is only a $ref is described by the definition it names (json-schema-to-typescript
    // turns a $ref with keywords beside it into a copy of the type).
    const refOnly = f.node.$ref && Object.keys(f.node).length === 1 ? schema.definitions?.[f.node.$ref.replace('#/definitions/', '')] : undefined;
    const description = f.node.description ?? refOnly?.description;
    if (typeof description !== 'string' || !description.trim()) problems.push(`${f.name}: no description`);
    const hasDefault = f.node.default !== undefined;
    if (f.required || f.alternative) {
      if (hasDefault) problems.push(`${f.name}: a default on a ${f.required ? 'required' : 'one-of'} key never applies`);
    } else if (Object.hasOwn(noDefault, f.name)) {
      if (hasDefault) problems.push(`${f.name}: has a default, so remove it from the no-default list`);
      if (!/\bDefault: /.test(description ?? '')) problems.push(`${f.name}: has no default, so its description must say "Default: ..." in words`);
    } else if (!hasDefault) {
      problems.push(`${f.name}: no default`);
    }
    if (hasDefault) {
      const check = ajv.compile({ definitions: schema.definitions, ...f.node, default: undefined });
      if (!check(f.node.default)) problems.push(`${f.name}: the default ${JSON.stringify(f.node.default)} is not a valid value: ${ajv.errorsText(check.errors)}`);
    }
  }
  const names = new Set(fields.map((f) => f.name));
  for (const name of Object.keys(noDefault)) if (!names.has(name)) problems.push(`${name}: listed without a default, but no such field`);
  return problems;
}

describe('the schemas document every field', () => {
  const schemas = { config: configSchema as SchemaNode, state: stateSchema as SchemaNode };

  it.each(['config', 'state'] as const)('%s: every property has a description, and a default unless required, one-of, or listed', (which) => {
    const fields = schemaFields(schemas[which]).map((f) => f.name);
    // The walk reaches nested objects, list items, map values and definitions.
    expect(fields).toEqual(expect.arrayContaining(which === 'config'
      ? ['version', 'sandbox.debounce', 'sandbox.author.email', 'environment.deploy.hooks.pre', 'httpCheck.body', 'webhook.events', 'server.token']
      : ['approvals', 'freezes', 'approval.signature']));
    expect(undocumented(schemas[which], NO_DEFAULT[which]!)).toEqual([]);
  });

  it('fails for a field added without a description or a default, anywhere in the schema', () => {
    const copy = structuredClone(configSchema) as SchemaNode;
    copy.properties!.sandbox!.properties!.quietHours = { type: 'string' };
    copy.definitions!.window!.properties!.jitter = { type: 'number', description: 'Documented, but no default.' };
    copy.definitions!.webhook!.properties!.events!.default = 'promoted';
    delete copy.definitions!.gate!.properties!.timeout!.description;
    expect(undocumented(copy, NO_DEFAULT.config!)).toEqual([
      'sandbox.quietHours: no description',
      'sandbox.quietHours: no default',
      'gate.timeout: no description',
      'window.jitter: no default',
      'webhook.events: has a default, so remove it from the no-default list',
      expect.stringMatching(/^webhook\.events: the default "promoted" is not a valid value: /),
    ]);
  });
});

describe('normalization applies the schema defaults', () => {
  // Every object that has defaults, written with only its required keys.
  const sparse = yaml(
    'version: 1',
    'sandbox: { author: {} }',
    'remotes: [ { name: origin, url: /srv/git/site.git } ]',
    'retry: {}',
    'intervals: {}',
    'environments:',
    '  staging:',
    '    branch: staging',
    '    from: develop',
    '    gates: [ { name: test, command: "true" }, { name: up, http: { url: "http://127.0.0.1:1/" } } ]',
    '    health: [ { name: web, http: { url: "http://127.0.0.1:1/" } } ]',
    '    windows: [ { kind: allow, schedule: "0 9 * * 1-5", duration: 8h, timezone: UTC } ]',
    '    deploy: { directory: releases/staging, hooks: {} }',
    '    approvals: {}',
    '    rollback: {}',
    '  production: { branch: main, from: staging, promotion: approval }',
    'notifications: { webhooks: [ { url: "https://hooks.example.com/x" } ] }',
    'logging: {}',
    'security: {}',
    'server: {}',
  );

  it('normalize() without the validator filling defaults gives the same config as the whole pipeline', () => {
    // The pipeline's validator writes the schema defaults in before normalize() runs; normalize()
    // has fallbacks of its own. Both must agree, or the schema documents defaults that are not applied.
    const withSchemaDefaults = valid(sparse);
    // (Where the ${VAR}s came from is the pipeline's to say: normalize() is handed it.)
    const fallbacksOnly = normalize(parseYaml(sparse) as CascadeSyncConfig, FILE, ENV, { variables: withSchemaDefaults.variables, fromDotenv: [] });
    expect(fallbacksOnly).toEqual(withSchemaDefaults);
    // And the defaults that only normalize() knows are the ones the schema describes in words.
    expect(withSchemaDefaults.sandbox.author).toEqual({ name: 'cascade-sync', email: 'cascade-sync@localhost' });
    expect(withSchemaDefaults.environments.staging!.rollback.automatic).toBe(false);
    expect(withSchemaDefaults.environments.production!.rollback.automatic).toBe(true);
    expect(withSchemaDefaults.environments.staging!.deploy!.hooks).toEqual({ env: [] });
    expect(withSchemaDefaults.notifications.webhooks).toEqual([{ url: 'https://hooks.example.com/x' }]);
  });

  it('a config without sandbox.author leaves the author to git', () => {
    expect(valid(yaml(...HEAD)).sandbox.author).toBeUndefined();
  });
});

describe('every problem has file:line:col, a path, a message and a hint', () => {
  const staging = ['environments:', '  staging:', '    branch: staging', '    from: develop'];
  it.each([
    { name: 'an enum violation', lines: [...HEAD, 'logging: { level: loud }'], path: 'logging.level' },
    { name: 'an enum violation in a list', lines: [...HEAD, 'notifications: { webhooks: [ { url: "https://h.example.com/", events: [promted] } ] }'], path: 'notifications.webhooks[0].events[0]' },
    { name: 'a wrong type', lines: [...HEAD, 'retry: { factor: "2" }'], path: 'retry.factor' },
    { name: 'a wrong type for a section', lines: ['version: 1', 'sandbox: [develop]'], path: 'sandbox' },
    { name: 'an unknown property', lines: [...HEAD, 'retry: { zzzzzzzz: 1 }'], path: 'retry.zzzzzzzz' },
    { name: 'a missing required top-level key', lines: ['version: 1'], path: 'sandbox' },
    { name: 'a missing required key in an environment', lines: [...HEAD, 'environments:', '  staging: { branch: staging }'], path: 'environments.staging.from' },
    { name: 'a bad duration', lines: ['version: 1', 'sandbox: { debounce: soon }'], path: 'sandbox.debounce' },
    { name: 'a bad cron', lines: [...HEAD, ...staging, '    windows: [ { kind: allow, schedule: "0 25 * * *", duration: 1h, timezone: UTC } ]'], path: 'environments.staging.windows[0].schedule' },
    { name: 'a cron with four fields', lines: [...HEAD, ...staging, '    windows: [ { kind: allow, schedule: "0 9 * *", duration: 1h, timezone: UTC } ]'], path: 'environments.staging.windows[0].schedule' },
    { name: 'an unknown from', lines: [...HEAD, 'environments:', '  staging: { branch: staging, from: nowhere-at-all }'], path: 'environments.staging.from' },
    { name: 'a cycle', lines: [...HEAD, 'environments:', '  qa: { branch: qa, from: uat }', '  uat: { branch: uat, from: qa }'], path: 'environments.qa.from' },
    { name: 'a missing ${VAR}', lines: [...HEAD, 'server: { listen: "127.0.0.1:7420", token: "${NO_SUCH_TOKEN}" }'], path: 'server.token' },
    { name: 'version 2', lines: ['version: 2', 'sandbox: {}'], path: 'version' },
    { name: 'a number out of range', lines: [...HEAD, 'retry: { jitter: 2 }'], path: 'retry.jitter' },
    { name: 'an empty string', lines: ['version: 1', 'sandbox: { commitMessage: "" }'], path: 'sandbox.commitMessage' },
    { name: 'a name of the wrong form', lines: [...HEAD, 'remotes: [ { name: "a b", url: /srv/git/x.git } ]'], path: 'remotes[0].name' },
    { name: 'a size of the wrong form', lines: [...HEAD, 'security: { maxFileSize: 5TB }'], path: 'security.maxFileSize' },
    { name: 'a URL that is not one', lines: [...HEAD, 'notifications: { webhooks: [ { url: "not a url" } ] }'], path: 'notifications.webhooks[0].url' },
    { name: 'a repeated event', lines: [...HEAD, 'notifications: { webhooks: [ { url: "https://h.example.com/", events: [promoted, promoted] } ] }'], path: 'notifications.webhooks[0].events' },
    { name: 'a gate with neither command, http nor builtin', lines: [...HEAD, ...staging, '    gates: [ { name: test } ]'], path: 'environments.staging.gates[0]' },
    { name: 'a gate with two of them', lines: [...HEAD, ...staging, '    gates: [ { name: test, command: "true", builtin: config } ]'], path: 'environments.staging.gates[0]' },
    { name: 'an approval signer line of the wrong form', lines: [...HEAD, ...staging, '    promotion: approval', '    approvals: { signers: [alice] }'], path: 'environments.staging.approvals.signers[0]' },
    { name: 'an interval below 1s', lines: [...HEAD, 'intervals: { fetch: 0s }'], path: 'intervals.fetch' },
  ])('$name', ({ lines, path: expectedPath }) => {
    const r = load(yaml(...lines));
    const all = r.ok ? r.warnings : r.problems;
    const context = all.map(formatProblem).join('\n');
    expect(all.map((p) => p.path), context).toContain(expectedPath);
    for (const p of all) {
      expect(p, context).toMatchObject({ file: FILE, line: expect.any(Number), col: expect.any(Number), path: expect.stringMatching(/\S/), message: expect.stringMatching(/\S/), hint: expect.stringMatching(/\S/) });
      expect(Number.isInteger(p.line) && p.line >= 1 && Number.isInteger(p.col) && p.col >= 1, context).toBe(true);
      expect(formatProblem(p)).toMatch(new RegExp(`^${FILE.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:\\d+:\\d+: (warning: )?[^ :]+: \\S.* \\(hint: \\S.*\\)$`));
    }
  });

  it('the hints say what to write', () => {
    const hint = (...lines: string[]) => {
      const r = load(yaml(...lines));
      return (r.ok ? r.warnings : r.problems).map((p) => `${p.path}: ${p.hint}`);
    };
    expect(hint(...HEAD, 'logging: { level: loud }')).toEqual(['logging.level: write one of those values, or leave level out for the default info']);
    expect(hint(...HEAD, 'logging: { level: wran }')).toEqual(['logging.level: did you mean "warn"?']);
    expect(hint('version: 2', 'sandbox: {}')).toEqual(['version: set version: 1; this release of cascade-sync reads only format version 1']);
    expect(hint(...HEAD, 'retry: { factor: "2" }')).toEqual(['retry.factor: write a number, or leave factor out for the default 2']);
    expect(hint(...HEAD, 'environments:', '  staging: { branch: staging }')).toEqual([expect.stringMatching(/^environments\.staging\.from: add from: under environments\.staging \(Where candidate commits come from: /)]);
    expect(hint(...HEAD, 'security: { maxFileSize: 5TB }')).toEqual([expect.stringContaining('such as 500KB or 50MB')]);
    expect(hint(...HEAD, ...staging, '    gates: [ { name: test, command: "true", builtin: config } ]')).toEqual(['environments.staging.gates[0]: keep either command or builtin, and remove the other']);
  });
});
