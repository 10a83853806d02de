import { afterEach, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { makeTestRepo } from './helpers/git.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';
import { run, startController, testEnv, type RunningController } from './helpers/sandbox.js';
import { parseConfig } from '../src/config/load.js';
import type { Config, EnvironmentSpec } from '../src/config/types.js';
import { GateRunner } from '../src/pipeline/gates.js';
import { deployRelease } from '../src/pipeline/deploy.js';
import { runHealthRound } from '../src/pipeline/checks.js';
import { commandEnv } from '../src/pipeline/command-env.js';
import { Logger } from '../src/log.js';
import { Redactor } from '../src/redact.js';
import { systemClock } from '../src/clock.js';

let controllers: RunningController[] = [];
afterEach(async () => {
  for (const c of controllers) await c.stop();
  controllers = [];
  await cleanupTmpDirs();
});

// The controller's environment: what a shell needs, the controller's own credentials (read by its
// config through ${VAR}), a token meant for one gate, and something unrelated.
const SECRETS = {
  CASCADE_CLIENT_SECRET: 'client-secret-4f1c9a',
  CASCADE_WEBHOOK_SECRET: 'webhook-secret-77d0e2',
  SERVER_TOKEN: 'server-token-3b8e51',
  ENCRYPTION_KEY: randomBytes(32).toString('base64'),
};
const CONTROLLER: NodeJS.ProcessEnv = {
  PATH: process.env.PATH ?? '/usr/bin:/bin',
  HOME: os.homedir(),
  USER: 'cascade-tester',
  SHELL: '/bin/sh',
  LANG: 'C.UTF-8',
  LC_ALL: 'C.UTF-8',
  TZ: 'UTC',
  TMPDIR: os.tmpdir(),
  TERM: 'dumb',
  ...SECRETS,
  CASCADE_CLIENT_ID: 'ci-bot',
  NPM_TOKEN: 'npm-token-91a7c4',
  REGISTRY: 'registry.example.com',
  UNRELATED: 'unrelated-value-5e2d',
};
const ALLOWED = ['PATH', 'HOME', 'USER', 'SHELL', 'LANG', 'LC_ALL', 'TZ', 'TMPDIR', 'TERM'];
/** Variables /bin/sh itself exports to what it runs. */
const SHELL_OWN = new Set(['PWD', 'OLDPWD', 'SHLVL', '_']);

/** A config as a user writes it, the controller's credentials read through ${VAR}; `staging` is spliced in. */
function configYaml(staging: string[]): string {
  return [
    'version: 1',
    'sandbox: {}',
    'remotes:',
    '  - { name: origin, url: "https://git.example.com/team/site.git", username: "${CASCADE_CLIENT_ID}", password: "${CASCADE_CLIENT_SECRET}" }',
    'notifications:',
    '  desktop: false',
    '  webhooks: [ { url: "https://hooks.example.com/x", secret: "${CASCADE_WEBHOOK_SECRET}" } ]',
    'server: { listen: "127.0.0.1:7420", token: "${SERVER_TOKEN}" }',
    'security: { key: "${ENCRYPTION_KEY}" }',
    'environments:',
    '  staging:',
    '    branch: staging',
    '    from: develop',
    ...staging.map((l) => `    ${l}`),
  ].join('\n');
}

function load(staging: string[]): Config {
  const r = parseConfig(configYaml(staging), '/sandbox/cascade-sync-config.yaml', CONTROLLER);
  if (!r.ok) throw new Error(r.problems.map((p) => `${p.line}:${p.col} ${p.path}: ${p.message}`).join('\n'));
  return r.config;
}

/** `env` output as a map (values are single-line here). */
async function envFile(file: string): Promise<Map<string, string>> {
  const text = await readFile(file, 'utf8');
  return new Map(text.split('\n').filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)] as [string, string]));
}

/** The names a command saw, without the ones its shell adds. */
function names(env: Map<string, string>): string[] {
  return [...env.keys()].filter((k) => !SHELL_OWN.has(k)).sort();
}

/** Fails when any of the controller's secrets, or the names they live under, reached the command. */
async function expectNoControllerSecrets(file: string): Promise<void> {
  const text = await readFile(file, 'utf8');
  for (const [name, value] of Object.entries(SECRETS)) {
    expect(text, name).not.toContain(value);
    expect(text, name).not.toContain(`${name}=`);
  }
  expect(text).not.toContain('UNRELATED');
  expect(text).not.toContain('CASCADE_CLIENT_ID');
}

async function runGates(config: Config): Promise<{ commit: string; log: string }> {
  const t = await makeTestRepo('command-env-gates');
  const commit = await t.commit({ 'app.txt': 'v1\n' });
  const logFile = path.join(await makeTmpDir('command-env-log'), 'log.jsonl');
  // An empty redactor: the log must stay clean even when the controller does not know the values
  // (hooks and health can come from another commit's config than the one it loaded).
  const runner = await GateRunner.open(t.repo, new Logger({ file: logFile }, 'debug', new Redactor(), systemClock), CONTROLLER, () => undefined);
  runner.start('staging', commit, config.environments.staging!.gates);
  await runner.idle('staging');
  const report = runner.report('staging', commit, config.environments.staging!.gates);
  expect(report.state, JSON.stringify(report)).toBe('passed');
  return { commit, log: await readFile(logFile, 'utf8') };
}

describe('gates', () => {
  it('a gate sees only the allow-listed variables and CASCADE_ENVIRONMENT/CASCADE_COMMIT, none of the controller\'s secrets', async () => {
    const out = await makeTmpDir('gate-env');
    const config = load(['gates:', `  - { name: dump, command: ${JSON.stringify(`env > ${out}/gate.env`)} }`]);
    const { commit } = await runGates(config);
    await expectNoControllerSecrets(path.join(out, 'gate.env'));
    const seen = await envFile(path.join(out, 'gate.env'));
    expect(names(seen)).toEqual([...ALLOWED, 'CASCADE_COMMIT', 'CASCADE_ENVIRONMENT'].sort());
    expect(seen.get('CASCADE_COMMIT')).toBe(commit);
    expect(seen.get('CASCADE_ENVIRONMENT')).toBe('staging');
    expect(seen.get('USER')).toBe('cascade-tester');
  });

  it('a gate that names NPM_TOKEN gets exactly that one more, and its value never reaches the log', async () => {
    const out = await makeTmpDir('gate-env-named');
    const config = load(['gates:', `  - { name: dump, command: ${JSON.stringify(`env > ${out}/gate.env; echo "token is $NPM_TOKEN"; echo "$NPM_TOKEN" | tr a-z A-Z`)}, env: [NPM_TOKEN] }`]);
    const { log } = await runGates(config);
    await expectNoControllerSecrets(path.join(out, 'gate.env'));
    const seen = await envFile(path.join(out, 'gate.env'));
    expect(names(seen)).toEqual([...ALLOWED, 'CASCADE_COMMIT', 'CASCADE_ENVIRONMENT', 'NPM_TOKEN'].sort());
    expect(seen.get('NPM_TOKEN')).toBe(CONTROLLER.NPM_TOKEN);
    expect(log).toContain('token is [REDACTED]');
    expect(log).not.toContain(CONTROLLER.NPM_TOKEN);
  });

  it('a { NAME: value } pair resolves ${VAR} from the controller; a literal value is passed as written', async () => {
    const out = await makeTmpDir('gate-env-pairs');
    const config = load([
      'gates:',
      `  - name: dump`,
      `    command: ${JSON.stringify(`env > ${out}/gate.env`)}`,
      '    env:',
      '      - { NPM_CONFIG_REGISTRY: "https://${REGISTRY}/npm/" }',
      '      - { AUTH: "Bearer ${NPM_TOKEN}" }',
      '      - { NODE_ENV: production }',
    ]);
    await runGates(config);
    await expectNoControllerSecrets(path.join(out, 'gate.env'));
    const seen = await envFile(path.join(out, 'gate.env'));
    expect(names(seen)).toEqual([...ALLOWED, 'AUTH', 'CASCADE_COMMIT', 'CASCADE_ENVIRONMENT', 'NODE_ENV', 'NPM_CONFIG_REGISTRY'].sort());
    expect(seen.get('NPM_CONFIG_REGISTRY')).toBe('https://registry.example.com/npm/');
    expect(seen.get('AUTH')).toBe(`Bearer ${CONTROLLER.NPM_TOKEN}`);
    expect(seen.get('NODE_ENV')).toBe('production');
  });

  it('${VAR} in a command is the shell\'s, read from the command\'s own environment: the loader writes no controller secret into it', async () => {
    const out = await makeTmpDir('gate-env-command');
    const command = `echo "[\${CASCADE_CLIENT_SECRET}][\${UNRELATED}][\${NPM_TOKEN}]" > ${out}/echo.txt`;
    const config = load(['gates:', `  - { name: echo, command: ${JSON.stringify(command)}, env: [NPM_TOKEN] }`]);
    expect(config.environments.staging!.gates[0]!.command).toBe(command);
    await runGates(config);
    expect(await readFile(path.join(out, 'echo.txt'), 'utf8')).toBe(`[][][${CONTROLLER.NPM_TOKEN}]\n`);
  });
});

describe('deploy hooks', () => {
  it('hooks see only the allow-listed and CASCADE_* variables plus what hooks.env names', async () => {
    const out = await makeTmpDir('hook-env');
    const directory = path.join(await makeTmpDir('hook-deploy'), 'site');
    const config = load([
      'deploy:',
      `  directory: ${JSON.stringify(directory)}`,
      '  hooks:',
      `    pre: ${JSON.stringify(`env > ${out}/pre.env`)}`,
      `    post: ${JSON.stringify(`env > ${out}/post.env; echo "deployed with $DEPLOY_KEY"`)}`,
      '    env: [NPM_TOKEN, { DEPLOY_KEY: "k-${NPM_TOKEN}" }]',
    ]);
    const t = await makeTestRepo('hook-repo');
    const commit = await t.commit({ 'index.html': 'hi\n' });
    const outcome = await deployRelease(t.repo, { environment: 'staging', commit, deploy: config.environments.staging!.deploy!, env: CONTROLLER });
    for (const stage of ['pre', 'post']) {
      const file = path.join(out, `${stage}.env`);
      await expectNoControllerSecrets(file);
      const seen = await envFile(file);
      expect(names(seen)).toEqual([...ALLOWED, 'CASCADE_COMMIT', 'CASCADE_DEPLOY_DIR', 'CASCADE_ENVIRONMENT', 'CASCADE_PREVIOUS_COMMIT', 'CASCADE_RELEASE_DIR', 'DEPLOY_KEY', 'NPM_TOKEN'].sort());
      expect(seen.get('NPM_TOKEN')).toBe(CONTROLLER.NPM_TOKEN);
      expect(seen.get('DEPLOY_KEY')).toBe(`k-${CONTROLLER.NPM_TOKEN}`);
      expect(seen.get('CASCADE_RELEASE_DIR')).toBe(path.join(directory, 'releases', commit));
    }
    expect(outcome.hookOutput).toContain('deployed with [REDACTED]');
    expect(outcome.hookOutput).not.toContain(CONTROLLER.NPM_TOKEN);
  });
});

describe('health checks', () => {
  async function liveRelease(): Promise<{ directory: string; commit: string }> {
    const directory = path.join(await makeTmpDir('health-deploy'), 'site');
    const commit = 'c'.repeat(40);
    await mkdir(path.join(directory, 'releases', commit), { recursive: true });
    await symlink(`releases/${commit}`, path.join(directory, 'current'));
    return { directory, commit };
  }

  it('a health command sees none of the controller\'s secrets; with a live release it gets all three CASCADE_* variables', async () => {
    const out = await makeTmpDir('health-env');
    const { directory, commit } = await liveRelease();
    const config = load([`deploy: { directory: ${JSON.stringify(directory)} }`, 'health:', `  - { name: dump, command: ${JSON.stringify(`env > ${out}/health.env`)} }`]);
    const [result] = await runHealthRound(config.environments.staging!, commit, '/nonexistent-sandbox', CONTROLLER);
    expect(result).toMatchObject({ name: 'dump', ok: true });
    await expectNoControllerSecrets(path.join(out, 'health.env'));
    const seen = await envFile(path.join(out, 'health.env'));
    expect(names(seen)).toEqual([...ALLOWED, 'CASCADE_COMMIT', 'CASCADE_ENVIRONMENT', 'CASCADE_RELEASE_DIR'].sort());
    expect(seen.get('CASCADE_RELEASE_DIR')).toBe(path.join(directory, 'releases', commit));
  });

  it('a health command that names a variable gets exactly that one; its value is masked in the message', async () => {
    const out = await makeTmpDir('health-env-named');
    const { directory, commit } = await liveRelease();
    const env: EnvironmentSpec = load([
      `deploy: { directory: ${JSON.stringify(directory)} }`,
      'health:',
      `  - { name: dump, command: ${JSON.stringify(`env > ${out}/health.env; echo "bad token $NPM_TOKEN"; exit 1`)}, env: [NPM_TOKEN] }`,
    ]).environments.staging!;
    const [result] = await runHealthRound(env, commit, '/nonexistent-sandbox', CONTROLLER);
    expect(result).toEqual({ name: 'dump', ok: false, message: 'exit 1: bad token [REDACTED]' });
    await expectNoControllerSecrets(path.join(out, 'health.env'));
    const seen = await envFile(path.join(out, 'health.env'));
    expect(names(seen)).toEqual([...ALLOWED, 'CASCADE_COMMIT', 'CASCADE_ENVIRONMENT', 'CASCADE_RELEASE_DIR', 'NPM_TOKEN'].sort());
  });
});

describe('commandEnv', () => {
  it('never passes a CASCADE_* variable through, even for a spec that was not validated, and cascade values win', () => {
    const built = commandEnv({
      controller: CONTROLLER,
      entries: [{ name: 'CASCADE_CLIENT_SECRET' }, { name: 'CASCADE_COMMIT', value: 'forged' }, { name: 'bad-name', value: 'x' }, { name: 'MISSING' }, { name: 'NPM_TOKEN' }, { name: 'PLAIN', value: 'literal' }],
      cascade: { CASCADE_COMMIT: 'real' },
    });
    expect(Object.keys(built.env).sort()).toEqual([...ALLOWED, 'CASCADE_COMMIT', 'NPM_TOKEN', 'PLAIN'].sort());
    expect(built.env.CASCADE_COMMIT).toBe('real');
    // A name passed through is a secret; a literal value written in the config is not.
    expect(built.secrets).toEqual([CONTROLLER.NPM_TOKEN]);
  });
});

describe('a running controller', () => {
  it('gives its gate, deploy hooks and health command none of its own secrets, and each what its env names', async () => {
    const dir = await makeTmpDir('command-env-sandbox');
    const out = await makeTmpDir('command-env-out');
    const deployRoot = await makeTmpDir('command-env-deploy');
    const logFile = path.join(await makeTmpDir('command-env-logs'), 'cascade-sync.log');
    const dump = (what: string) => JSON.stringify(`env > ${out}/${what}.tmp && mv ${out}/${what}.tmp ${out}/${what}.env`);
    await writeFile(path.join(dir, 'app.txt'), 'v1\n');
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), [
      'version: 1',
      'sandbox: { debounce: 300ms, batchWindow: 2s }',
      'remotes: []',
      'intervals: { fetch: 1s, health: 1s, rescan: 10m }',
      `logging: { file: ${JSON.stringify(logFile)}, level: debug }`,
      'notifications:',
      '  desktop: false',
      '  webhooks: [ { url: "http://127.0.0.1:9/unused", secret: "${CASCADE_WEBHOOK_SECRET}" } ]',
      'server: { token: "${SERVER_TOKEN}" }',
      'security: { key: "${ENCRYPTION_KEY}" }',
      'environments:',
      '  staging:',
      '    branch: staging',
      '    from: develop',
      '    gates:',
      // Each dump is written whole before it appears (the test reads it as soon as it exists).
      `      - { name: dump, command: ${JSON.stringify(`env > ${out}/gate.tmp && mv ${out}/gate.tmp ${out}/gate.env; echo "gate token $NPM_TOKEN"`)}, env: [NPM_TOKEN] }`,
      `    deploy: { directory: ${JSON.stringify(path.join(deployRoot, 'staging'))}, hooks: { pre: ${dump('hook')}, env: [{ NODE_ENV: staging }] } }`,
      `    health: [ { name: dump, command: ${dump('health')}, env: [REGISTRY] } ]`,
      '    healthyAfter: 1',
      '',
    ].join('\n'));
    const env = testEnv({ ...SECRETS, CASCADE_CLIENT_ID: 'ci-bot', NPM_TOKEN: CONTROLLER.NPM_TOKEN, REGISTRY: CONTROLLER.REGISTRY, UNRELATED: CONTROLLER.UNRELATED });
    const init = await run(dir, ['init'], env);
    expect(init.code, init.stderr).toBe(0);
    controllers.push(await startController(dir, env));
    // init put staging at the first commit already: a new commit is what runs the gate.
    await writeFile(path.join(dir, 'app.txt'), 'v2\n');
    await waitFor(() => ['gate', 'hook', 'health'].every((w) => existsSync(path.join(out, `${w}.env`))) || undefined, { what: 'the gate, the hook and a health round to run', timeoutMs: 30_000 });

    const extra = { gate: ['CASCADE_COMMIT', 'CASCADE_ENVIRONMENT', 'NPM_TOKEN'], hook: ['CASCADE_COMMIT', 'CASCADE_DEPLOY_DIR', 'CASCADE_ENVIRONMENT', 'CASCADE_PREVIOUS_COMMIT', 'CASCADE_RELEASE_DIR', 'NODE_ENV'], health: ['CASCADE_COMMIT', 'CASCADE_ENVIRONMENT', 'CASCADE_RELEASE_DIR', 'REGISTRY'] };
    const allowed = Object.keys(env).filter((k) => ALLOWED.includes(k) || /^LC_/.test(k));
    for (const [what, names_] of Object.entries(extra)) {
      const file = path.join(out, `${what}.env`);
      await expectNoControllerSecrets(file);
      expect(names(await envFile(file)), what).toEqual([...allowed, ...names_].sort());
    }
    expect((await envFile(path.join(out, 'gate.env'))).get('NPM_TOKEN')).toBe(CONTROLLER.NPM_TOKEN);
    const log = await waitFor(async () => {
      const text = await readFile(logFile, 'utf8').catch(() => '');
      return text.includes('gate token') ? text : undefined;
    }, { what: 'the gate output in the log' });
    expect(log).toContain('gate token [REDACTED]');
    expect(log).not.toContain(CONTROLLER.NPM_TOKEN);
  });

  it("withholds the controller's own credentials whatever they are named: a committed config can neither pass one by name nor copy it through ${VAR}", async () => {
    const dir = await makeTmpDir('command-env-withheld');
    const out = await makeTmpDir('command-env-withheld-out');
    const deployRoot = await makeTmpDir('command-env-withheld-deploy');
    const dump = (what: string) => JSON.stringify(`env > ${out}/${what}.tmp && mv ${out}/${what}.tmp ${out}/${what}.env`);
    await writeFile(path.join(dir, 'app.txt'), 'v1\n');
    // SERVER_TOKEN and ENCRYPTION_KEY are read by the config for the controller itself (server, security):
    // the environment's gate, hook and health name them, as anyone who can push to develop could write.
    await writeFile(path.join(dir, 'cascade-sync-config.yaml'), [
      'version: 1',
      'sandbox: { debounce: 300ms, batchWindow: 2s }',
      'remotes: []',
      'intervals: { fetch: 1s, health: 1s, rescan: 10m }',
      `logging: { file: ${JSON.stringify(path.join(out, 'log.jsonl'))}, level: debug }`,
      'notifications: { desktop: false }',
      'server: { token: "${SERVER_TOKEN}" }',
      'security: { key: "${ENCRYPTION_KEY}" }',
      'environments:',
      '  staging:',
      '    branch: staging',
      '    from: develop',
      '    gates:',
      `      - { name: dump, command: ${dump('gate')}, env: [SERVER_TOKEN, { COPY: "\${ENCRYPTION_KEY}" }] }`,
      `    deploy: { directory: ${JSON.stringify(path.join(deployRoot, 'staging'))}, hooks: { pre: ${dump('hook')}, env: [ENCRYPTION_KEY, { COPY: "\${SERVER_TOKEN}" }] } }`,
      `    health: [ { name: dump, command: ${dump('health')}, env: [SERVER_TOKEN, { COPY: "\${ENCRYPTION_KEY}" }] } ]`,
      '    healthyAfter: 1',
      '',
    ].join('\n'));
    const env = testEnv({ SERVER_TOKEN: SECRETS.SERVER_TOKEN, ENCRYPTION_KEY: SECRETS.ENCRYPTION_KEY });
    const init = await run(dir, ['init'], env);
    expect(init.code, init.stderr).toBe(0);
    controllers.push(await startController(dir, env));
    await writeFile(path.join(dir, 'app.txt'), 'v2\n');
    await waitFor(() => ['gate', 'hook', 'health'].every((w) => existsSync(path.join(out, `${w}.env`))) || undefined, { what: 'the gate, the hook and a health round to run', timeoutMs: 30_000 });
    for (const what of ['gate', 'hook', 'health']) {
      const seen = await envFile(path.join(out, `${what}.env`));
      expect(seen.has('SERVER_TOKEN'), what).toBe(false);
      expect(seen.has('ENCRYPTION_KEY'), what).toBe(false);
      expect(seen.get('COPY'), what).toBe('[withheld]');
      const text = await readFile(path.join(out, `${what}.env`), 'utf8');
      expect(text, what).not.toContain(SECRETS.SERVER_TOKEN);
      expect(text, what).not.toContain(SECRETS.ENCRYPTION_KEY);
    }
  });
});
