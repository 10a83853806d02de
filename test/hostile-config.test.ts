// Issue 4, "Hostile input", config part: an alias bomb, a 10 MB file, deep nesting, wrong types and
// unknown keys. Each is refused with a clear problem at file:line:col (unknown keys: a warning naming
// the nearest valid key, the key ignored), never a throw; a running controller keeps its last good
// config, keeps syncing with it, and shows the problem in status.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { CONFIG_FILE, MAX_CONFIG_BYTES, formatProblem, loadConfig, parseConfig } from '../src/config/load.js';
import type { ConfigProblem, LoadResult } from '../src/config/types.js';
import { lsTree } from './helpers/git.js';
import { makeSandbox, run, startController, type RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

const FILE = '/srv/site/cascade-sync-config.yaml';
const ENV: NodeJS.ProcessEnv = { HOME: '/home/tester' };
const yaml = (...lines: string[]) => `${lines.join('\n')}\n`;
const HEAD = ['version: 1', 'sandbox: {}'];

/** "Billion laughs": nine levels of nine aliases each, 9^9 strings once expanded. */
const billionLaughs = yaml(
  ...HEAD,
  'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
  ...'bcdefghi'.split('').map((k, i) => `${k}: &${k} [${Array(9).fill(`*${'abcdefghi'[i]}`).join(', ')}]`),
);
/** The same in block style inside a known key, where a reader would expect a plain list. */
const blockBomb = yaml(
  'version: 1',
  'sandbox:',
  '  exclude: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]',
  'security:',
  '  allow: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]',
  '  encrypt: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]',
  'x: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]',
);
const nestedFlow = (n: number) => `${'['.repeat(n)}${']'.repeat(n)}`;
const nestedBlock = (n: number) => {
  let text = 'version: 1\nsandbox: {}\nx:\n';
  for (let i = 1; i <= n; i++) text += `${' '.repeat(i * 2)}k:\n`;
  return text;
};

function load(text: string): LoadResult {
  let result: LoadResult | undefined;
  expect(() => (result = parseConfig(text, FILE, ENV))).not.toThrow();
  return result!;
}

type Seen = Pick<ConfigProblem, 'severity' | 'line' | 'col' | 'path' | 'message'> & { hint?: string };
const seen = (p: ConfigProblem): Seen => ({ severity: p.severity, line: p.line, col: p.col, path: p.path, message: p.message, ...(p.hint ? { hint: p.hint } : {}) });

function errors(text: string): Seen[] {
  const r = load(text);
  expect(r.ok, 'the config should be refused').toBe(false);
  return r.ok ? [] : r.problems.filter((p) => p.severity === 'error').map(seen);
}

afterAll(async () => {
  await cleanupTmpDirs();
});

describe('hostile config text: a clear error at line:col, never a throw', () => {
  it.each([
    {
      name: 'billion laughs (9^9 values), at the alias that goes past the limit',
      text: billionLaughs,
      expected: { line: 6, col: 8, message: 'expanding the aliases up to *c here takes more than 100 alias uses (an alias bomb?)' },
    },
    {
      name: 'an alias bomb in block style under known keys',
      text: blockBomb,
      expected: { line: 6, col: 48, message: 'expanding the aliases up to *b here takes more than 100 alias uses (an alias bomb?)' },
    },
    {
      name: 'few aliases, but each names a big value: at the fifth, which passes 10000 values',
      text: yaml(...HEAD, `a: &a [${Array(2000).fill('"x"').join(', ')}]`, 'b: &b [*a, *a, *a, *a, *a, *a]'),
      expected: { line: 4, col: 24, message: 'expanding the aliases up to *a here gives more than 10000 values (an alias bomb?)' },
    },
    {
      name: 'one small anchor used 101 times',
      text: yaml('version: 1', 'sandbox:', '  exclude: &e ["dist/"]', ...Array.from({ length: 101 }, (_, i) => `k${i}: *e`)),
      expected: { line: 104, col: 7, message: 'expanding the aliases up to *e here takes more than 100 alias uses (an alias bomb?)' },
    },
    {
      name: 'an alias inside its own anchor (a cycle)',
      text: yaml(...HEAD, 'x: &x [1, *x]'),
      expected: { line: 3, col: 11, message: 'alias *x refers to a value that contains it, so it expands without end' },
    },
    {
      name: '33 levels of flow nesting, at the innermost bracket',
      text: yaml(...HEAD, `x: ${nestedFlow(33)}`),
      expected: { line: 3, col: 36, message: 'values are nested more than 32 levels deep' },
    },
    {
      name: '100000 levels of flow nesting',
      text: yaml(...HEAD, `x: ${nestedFlow(100_000)}`),
      expected: { line: 3, col: 37, message: 'values are nested more than 32 levels deep' },
    },
    {
      name: '40 levels of block nesting, at the line that goes too deep',
      text: nestedBlock(40),
      expected: { line: 37, col: 69, message: 'values are nested more than 32 levels deep' },
    },
    {
      name: '10 MB of text',
      text: yaml(...HEAD, `# ${'x'.repeat(10 * 1024 * 1024)}`),
      expected: { line: 1, col: 1, message: `the file is ${10 * 1024 * 1024 + 26} bytes; a config is at most ${MAX_CONFIG_BYTES} bytes` },
    },
  ])('$name', ({ text, expected }) => {
    const started = Date.now();
    expect(errors(text)).toEqual([expect.objectContaining({ severity: 'error', path: '', ...expected, hint: expect.any(String) })]);
    // Refused up front: nothing was expanded or composed level by level.
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it('a file of 10 MB is refused from its size, with the file named', async () => {
    const dir = await makeTmpDir('hostile-config');
    const file = path.join(dir, CONFIG_FILE);
    await writeFile(file, yaml(...HEAD, `# ${'x'.repeat(10 * 1024 * 1024)}`));
    const r = await loadConfig(file, ENV);
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.problems.map(formatProblem)).toEqual([
      `${file}:1:1: the file is ${10 * 1024 * 1024 + 26} bytes; a config is at most ${MAX_CONFIG_BYTES} bytes (hint: is this the right file?)`,
    ]);
  });

  it('wrong types: every one reported, each at its value', () => {
    const text = yaml(
      'version: "1"', // 1
      'sandbox:', // 2
      '  debounce: 3', // 3
      '  exclude: "*.tmp"', // 4
      'remotes: { name: origin }', // 5
      'retry: { factor: two, jitter: true }', // 6
      'notifications: { desktop: 1 }', // 7
      'environments: []', // 8
    );
    expect(errors(text).map((p) => `${p.line}:${p.col}: ${p.path}: ${p.message}`)).toEqual([
      '1:10: version: must be 1',
      '3:13: sandbox.debounce: 3 is not a duration',
      '4:12: sandbox.exclude: must be array',
      '5:10: remotes: must be array',
      '6:18: retry.factor: must be number',
      '6:31: retry.jitter: must be number',
      '7:27: notifications.desktop: must be boolean',
      '8:15: environments: must be object',
    ]);
  });

  it('unknown keys: a warning each, naming the nearest valid key; the config loads and the keys are ignored', () => {
    const r = load(yaml('version: 1', 'sandbox:', '  debounse: 1h', '  debounce: 2s', 'remote: []', 'intervals: { fech: 1m }', 'zzzzzz: 1'));
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.config.sandbox.debounceMs).toBe(2000);
    expect(r.config.intervals.fetchMs).toBe(30_000);
    expect(r.warnings.map(seen)).toEqual([
      { severity: 'warning', line: 3, col: 3, path: 'sandbox.debounse', message: 'unknown key "debounse" is ignored', hint: 'did you mean "debounce"?' },
      { severity: 'warning', line: 5, col: 1, path: 'remote', message: 'unknown key "remote" is ignored', hint: 'did you mean "remotes"?' },
      { severity: 'warning', line: 6, col: 14, path: 'intervals.fech', message: 'unknown key "fech" is ignored', hint: 'did you mean "fetch"?' },
      { severity: 'warning', line: 7, col: 1, path: 'zzzzzz', message: 'unknown key "zzzzzz" is ignored', hint: expect.stringMatching(/^valid keys: version, sandbox, remotes, /) },
    ]);
    expect(formatProblem(r.warnings[0]!)).toBe(`${FILE}:3:3: warning: sandbox.debounse: unknown key "debounse" is ignored (hint: did you mean "debounce"?)`);
  });

  it('unknown keys next to errors: the errors fail the load, the warnings are reported with them in file order', () => {
    const r = load(yaml('version: 1', 'sandbox:', '  debounse: 3s', '  batchWindow: soon'));
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.problems.map((p) => [p.severity, p.line, p.path])).toEqual([
      ['warning', 3, 'sandbox.debounse'],
      ['error', 4, 'sandbox.batchWindow'],
    ]);
  });
});

describe('a running controller given a hostile config edit', () => {
  let dir: string;
  let good: string;
  let controller: RunningController;
  const configFile = () => path.join(dir, CONFIG_FILE);
  const status = async () => JSON.parse(await readFile(path.join(dir, '.git/cascade-sync/status.json'), 'utf8'));
  let n = 0;

  beforeAll(async () => {
    ({ dir } = await makeSandbox());
    good = await readFile(configFile(), 'utf8');
    controller = await startController(dir);
  });

  afterAll(async () => {
    await controller?.stop();
  });

  afterEach(async () => {
    // Back to the good config before the next case; the controller takes it again.
    if ((await readFile(configFile(), 'utf8')) === good) return;
    await writeFile(configFile(), good);
    await waitFor(async () => {
      const st = await status();
      return (st.config.valid === true && st.config.problems.length === 0) || undefined;
    }, { what: 'the good config to be in force again' });
  });

  /** A file written now is committed with the last good config's 300ms debounce: the controller still syncs. */
  async function stillSyncing(): Promise<void> {
    const name = `still-${++n}.txt`;
    await writeFile(path.join(dir, name), 'working');
    await waitFor(async () => (await lsTree(dir, 'develop')).some((e) => e.path === name) || undefined, { what: `${name} to be committed under the last good config` });
  }

  it.each([
    { name: 'an alias bomb', text: () => billionLaughs, problem: /cascade-sync-config\.yaml:6:8: expanding the aliases up to \*c here takes more than 100 alias uses/ },
    { name: 'a 10 MB file', text: () => `${good}# ${'x'.repeat(10 * 1024 * 1024)}\n`, problem: /cascade-sync-config\.yaml:1:1: the file is \d+ bytes; a config is at most 1048576 bytes/ },
    { name: 'deep nesting', text: () => `${good}x: ${nestedFlow(100_000)}\n`, problem: /cascade-sync-config\.yaml:\d+:\d+: values are nested more than 32 levels deep/ },
    { name: 'a wrong type', text: () => good.replace('debounce: 300ms', 'debounce: [300ms]'), problem: /cascade-sync-config\.yaml:3:13: sandbox\.debounce: \["300ms"\] is not a duration/ },
  ])('$name: refused with file:line:col, the last good config kept and still syncing', async ({ text, problem }) => {
    await writeFile(configFile(), text());
    await waitFor(async () => (await status()).config.valid === false || undefined, { what: 'status to show the invalid config' });
    const st = await status();
    expect(st.config.problems).toEqual([expect.stringMatching(problem)]);
    // The CLI says the same, and that the controller keeps the last good config.
    const cli = await run(dir, ['status']);
    expect(cli.stdout).toMatch(/config: +INVALID \(the controller keeps the last good config\)/);
    expect(cli.stdout).toMatch(problem);
    await stillSyncing();
    expect(controller.stdout.text()).toContain('config edit is not valid; the last good config stays in force');
  });

  it('unknown keys: valid, the warning with the nearest valid key in status and the log, the keys ignored', async () => {
    await writeFile(configFile(), good.replace('  debounce: 300ms', '  debounce: 300ms\n  debounse: 1h'));
    const warning = /cascade-sync-config\.yaml:4:3: warning: sandbox\.debounse: unknown key "debounse" is ignored \(hint: did you mean "debounce"\?\)/;
    await waitFor(async () => {
      const st = await status();
      return (st.config.valid === true && st.config.problems.length === 1) || undefined;
    }, { what: 'status to show the warning' });
    expect((await status()).config.problems).toEqual([expect.stringMatching(warning)]);
    const cli = await run(dir, ['status']);
    expect(cli.stdout).toMatch(/config: +valid\n +\S+cascade-sync-config\.yaml:4:3: warning: /);
    expect(controller.stdout.text()).toMatch(warning);
    // Still a 300ms debounce: "debounse: 1h" changed nothing.
    await stillSyncing();
  });
});
