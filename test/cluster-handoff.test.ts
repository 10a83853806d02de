import { afterEach, describe, expect, it } from 'vitest';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseAllDocuments } from 'yaml';
import { loadConfig, parseConfig } from '../src/config/load.js';
import type { HealthCheckSpec } from '../src/config/types.js';
import { runCheck, type CheckResult } from '../src/pipeline/checks.js';
import { CommandSourceEnv } from '../src/pipeline/command-env.js';
import { parseCommitConfig } from '../src/pipeline/commit-config.js';
import { recordRound, newRelease } from '../src/pipeline/health-state.js';
import { startFakeArgoCd, type FakeArgoCd } from './helpers/argocd.js';
import { fsckStrict, git, makeBareRepo, revParse, tryRevParse } from './helpers/git.js';
import { startGitHttpServer } from './helpers/git-http-server.js';
import { envReport, statusJson } from './helpers/pipeline.js';
import { run, startController, testEnv, type RunningController } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir, waitFor } from './helpers/tmp.js';

const TOKEN = 'argocd-token-5f0c2d9e8b7a6f41';
const C1 = '1'.repeat(40);
const C2 = '2'.repeat(40);

let closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const close of closers.splice(0)) await close();
  await cleanupTmpDirs();
});

async function argo(state: Parameters<FakeArgoCd['set']>[0]): Promise<FakeArgoCd> {
  const fake = await startFakeArgoCd({ name: 'site', token: TOKEN, repoURL: 'https://git.example.com/team/site.git', state });
  closers.push(() => fake.close());
  return fake;
}

/** Production's Argo CD health check, as the config reference and examples/argocd write it. */
function argoConfig(url: string, extra = ''): string {
  return [
    'version: 1',
    'sandbox: {}',
    'environments:',
    '  production:',
    '    branch: main',
    '    from: develop',
    '    health:',
    '      - name: argocd',
    '        http:',
    `          url: ${JSON.stringify(url)}`,
    '          headers:',
    '            Authorization: "Bearer ${ARGOCD_TOKEN}"',
    '            Accept: application/json',
    '          expect:',
    '            json:',
    '              - { path: status.health.status, equals: Healthy, progressing: [Progressing] }',
    '              - { path: status.sync.revision, equals: "{commit}" }',
    extra,
    '',
  ].join('\n');
}

/** The health check of the production environment in `text`, loaded as the controller loads the sandbox's config. */
function loadCheck(text: string, env: NodeJS.ProcessEnv): { check: HealthCheckSpec; secrets: string[] } {
  const loaded = parseConfig(text, '/nowhere/cascade-sync-config.yaml', env);
  if (!loaded.ok) throw new Error(loaded.problems.map((p) => `${p.path}: ${p.message}`).join('\n'));
  return { check: loaded.config.environments.production!.health[0]!, secrets: loaded.config.secrets };
}

async function check(spec: HealthCheckSpec, commit: string): Promise<CheckResult> {
  return runCheck(spec, { cwd: '/', env: {}, commit });
}

describe('http checks with headers and JSON assertions (Argo CD)', () => {
  it('sends the headers, reads ${VAR} for them, and passes only when Argo CD reports Healthy at {commit}', async () => {
    const fake = await argo({ health: 'Healthy', revision: C1 });
    const { check: spec, secrets } = loadCheck(argoConfig(fake.appUrl), { ARGOCD_TOKEN: TOKEN });
    expect(spec.http!.headers).toEqual([
      { name: 'Authorization', value: `Bearer ${TOKEN}`, secret: true, reads: ['ARGOCD_TOKEN'] },
      { name: 'Accept', value: 'application/json', secret: false },
    ]);
    // The controller's redactor gets the header value, so logs and status mask it wherever it comes from.
    expect(secrets).toContain(`Bearer ${TOKEN}`);

    const ok = await check(spec, C1);
    expect(ok).toMatchObject({ ok: true });
    expect(ok.message).toMatch(/^HTTP 200 in \S+, all 2 JSON assertions hold$/);
    expect(fake.requests.at(-1)).toMatchObject({ authorization: `Bearer ${TOKEN}`, accept: 'application/json', 'user-agent': 'cascade-sync' });

    // Healthy, but at an older revision: not healthy yet, and pending (the rollout has not reached the commit).
    const old = await check(spec, C2);
    expect(old).toMatchObject({ ok: false, pending: true });
    expect(old.message).toContain(`but not at {commit} yet: status.sync.revision is "${C1}", expected "${C2}" ({commit})`);

    fake.set({ health: 'Progressing', revision: C2 });
    const progressing = await check(spec, C2);
    expect(progressing).toMatchObject({ ok: false, pending: true });
    expect(progressing.message).toContain('status.health.status is "Progressing", expected "Healthy" (still progressing)');

    fake.set({ health: 'Degraded', revision: C2 });
    const degraded = await check(spec, C2);
    expect(degraded.ok).toBe(false);
    expect(degraded.pending).toBeUndefined();
    expect(degraded.message).toContain('but status.health.status is "Degraded", expected "Healthy"');
    expect(degraded.output).toContain('"Degraded"');

    // Before Argo CD's first sync there is no revision: still rolling out.
    fake.set({ health: 'Missing' });
    const never = await check(spec, C2);
    expect(never).toMatchObject({ ok: false, pending: true });
    expect(never.message).toContain('status.sync.revision is missing (no key "revision" in status.sync)');
  });

  it('reads list items by index and by a key=value filter (Flux-style conditions), compares types exactly, and fails on a body that is not JSON', async () => {
    const { createServer } = await import('node:http');
    let body = '';
    const server = createServer((_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(body));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    closers.push(() => new Promise((r) => server.close(() => r())));
    const url = `http://127.0.0.1:${(server.address() as { port: number }).port}/k`;
    const spec: HealthCheckSpec = {
      name: 'flux', timeoutMs: 5000,
      http: {
        url, status: 200,
        json: [
          { path: 'status.conditions[type=Ready].status', equals: 'True', progressing: ['Unknown'] },
          { path: 'status.lastAppliedRevision', equals: 'main@sha1:{commit}' },
          { path: 'status.conditions[0].type', equals: 'Reconciling' },
          { path: 'status.observedGeneration', equals: 3 },
        ],
      },
    };
    const flux = (ready: string, revision: string, generation: unknown = 3) => JSON.stringify({
      status: {
        observedGeneration: generation, lastAppliedRevision: revision,
        conditions: [{ type: 'Reconciling', status: 'False' }, { type: 'Ready', status: ready, reason: 'ReconciliationSucceeded' }],
      },
    });
    body = flux('True', `main@sha1:${C1}`);
    expect((await check(spec, C1)).ok).toBe(true);
    body = flux('Unknown', `main@sha1:${C1}`);
    expect(await check(spec, C1)).toMatchObject({ ok: false, pending: true });
    body = flux('False', `main@sha1:${C1}`, '3');
    const failed = await check(spec, C1);
    expect(failed.pending).toBeUndefined();
    expect(failed.message).toContain('status.conditions[type=Ready].status is "False", expected "True"; status.observedGeneration is "3", expected 3');
    body = '<html>login</html>';
    expect((await check(spec, C1)).message).toMatch(/but the body is not JSON/);
    // No commit known yet (a deploy-less environment before its branch exists): an assertion with {commit} cannot hold.
    body = flux('True', `main@sha1:${C1}`);
    const unknown = await runCheck(spec, { cwd: '/', env: {} });
    expect(unknown.message).toContain('status.lastAppliedRevision cannot be compared: {commit} is known only once the environment runs a commit');
  });

  it('never shows a header value: not in the message, not in the body excerpt, even when the server echoes it', async () => {
    const fake = await argo({ health: 'Healthy', revision: C1 });
    fake.echoAuthorization = true;
    const wrong = 'wrong-token-c0ffee1234567890';
    const { check: spec } = loadCheck(argoConfig(fake.appUrl), { ARGOCD_TOKEN: wrong });
    const r = await check(spec, C1);
    expect(r.ok).toBe(false);
    expect(r.message).toMatch(/^HTTP 401 in \S+, expected 200$/);
    expect(r.output).toContain('invalid session: [REDACTED]');
    expect(`${r.message}\n${r.output}`).not.toContain('c0ffee');
    // A literal credential header written in the config is a secret too.
    const literal = loadCheck(argoConfig(fake.appUrl).replace('"Bearer ${ARGOCD_TOKEN}"', `"Bearer ${wrong}"`), {});
    expect(literal.check.http!.headers![0]).toMatchObject({ name: 'Authorization', secret: true });
    const r2 = await check(literal.check, C1);
    expect(r2.output).not.toContain('c0ffee');
  });

  it('a committed config cannot read the controller\'s own credentials into a header: the header is not sent and the check says why', async () => {
    const fake = await argo({ health: 'Healthy', revision: C1 });
    const dir = await makeTmpDir('sandbox');
    // The sandbox's config reads CASCADE_CLIENT_SECRET and ORIGIN_PASSWORD for the controller itself (a remote's password).
    const controller = { CASCADE_CLIENT_SECRET: 'remote-secret-aaaaaaaaaaaa', ORIGIN_PASSWORD: 'origin-pass-bbbbbbbbbbbb', ARGOCD_TOKEN: TOKEN };
    const source = new CommandSourceEnv(controller, ['ORIGIN_PASSWORD']);
    // A variable the sandbox's config reads for the controller: the committed config reads "[withheld]", and nothing is sent.
    const text = argoConfig(fake.appUrl).replace('${ARGOCD_TOKEN}', '${ORIGIN_PASSWORD}');
    const loaded = await parseCommitConfig(text, dir, source);
    if (!loaded.ok) throw new Error(loaded.problems.map((p) => p.message).join('\n'));
    const spec = loaded.config.environments.production!.health[0]!;
    expect(spec.http!.headers![0]!.value).toBe('Bearer [withheld]');
    const before = fake.requests.length;
    const r = await check(spec, C1);
    expect(r.ok).toBe(false);
    expect(r.message).toContain('header Authorization was not sent: its value reads one of the controller\'s own credentials');
    expect(fake.requests.length).toBe(before);
    // A CASCADE_* variable: the committed config is not valid at all (so it never becomes a policy in force).
    const reserved = await parseCommitConfig(argoConfig(fake.appUrl).replace('${ARGOCD_TOKEN}', '${CASCADE_CLIENT_SECRET}'), dir, source);
    expect(reserved.ok ? [] : reserved.problems.map((p) => p.message)).toEqual([expect.stringContaining("reads ${CASCADE_CLIENT_SECRET}, one of cascade-sync's own variables")]);
    expect(JSON.stringify(reserved)).not.toContain('remote-secret');
    // Its own variable reads through.
    const own = await parseCommitConfig(argoConfig(fake.appUrl), dir, source);
    expect(own.ok && (await check(own.config.environments.production!.health[0]!, C1)).ok).toBe(true);
  });

  it('validation refuses a header that reads a CASCADE_* variable or one the config reads for the controller itself, and a bad header name', () => {
    const url = 'http://127.0.0.1:1/api/v1/applications/site';
    const env = { CASCADE_CLIENT_SECRET: 'x'.repeat(20), ORIGIN_PASSWORD: 'y'.repeat(20), ARGOCD_TOKEN: TOKEN };
    const remote = 'remotes:\n  - { name: origin, url: "https://git.example.com/site.git", username: bot, password: "${ORIGIN_PASSWORD}" }';
    const own = parseConfig(`${argoConfig(url).replace('${ARGOCD_TOKEN}', '${ORIGIN_PASSWORD}')}${remote}\n`, '/nowhere/cascade-sync-config.yaml', env);
    expect(own.ok).toBe(false);
    const ownProblems = own.ok ? [] : own.problems.map((p) => `${p.path}: ${p.message}`);
    expect(ownProblems.join('\n')).toContain('environments.production.health[0].http.headers.Authorization: the value of header Authorization reads ${ORIGIN_PASSWORD}, a variable this config also reads for the controller itself');
    const reserved = parseConfig(argoConfig(url).replace('${ARGOCD_TOKEN}', '${CASCADE_CLIENT_SECRET}'), '/nowhere/cascade-sync-config.yaml', env);
    expect(reserved.ok ? [] : reserved.problems.map((p) => p.message)).toEqual([expect.stringContaining("reads ${CASCADE_CLIENT_SECRET}, one of cascade-sync's own variables")]);
    // No problem quotes a secret value.
    expect(JSON.stringify(reserved)).not.toContain('x'.repeat(20));
    const badName = parseConfig(argoConfig(url).replace('Accept: application/json', '"Bad Header": x'), '/nowhere/cascade-sync-config.yaml', env);
    expect(badName.ok ? [] : badName.problems.map((p) => p.message)).toEqual(['"Bad Header" is not a valid HTTP header name']);
    const badPath = parseConfig(argoConfig(url).replace('path: status.health.status', 'path: "status..health"'), '/nowhere/cascade-sync-config.yaml', env);
    expect(badPath.ok).toBe(false);
  });
});

describe('health rounds of a rollout that is not there yet', () => {
  const rules = { healthyAfter: 2, failureThreshold: 2, progressDeadlineMs: 60_000 };
  const pending = [{ name: 'argocd', ok: false, message: 'not at {commit} yet', pending: true }];
  const failing = [{ name: 'argocd', ok: false, message: 'Degraded' }];
  const passing = [{ name: 'argocd', ok: true, message: 'ok' }];

  it('a new release keeps progressing through pending rounds until its deadline, and fails on real failures', () => {
    let s = newRelease(C2, 0, false, true);
    for (let t = 1000; t <= 10_000; t += 1000) {
      const r = recordRound(s, pending, t, rules);
      expect(r.event).toBeUndefined();
      s = r.state;
    }
    expect(s).toMatchObject({ phase: 'progressing', okStreak: 0, failStreak: 0 });
    expect(recordRound(s, pending, 60_000, rules)).toMatchObject({ event: 'failed', state: { phase: 'failed' } });
    // A pending round breaks a run of passes, so healthyAfter counts passes in a row.
    s = recordRound(recordRound(s, passing, 11_000, rules).state, pending, 12_000, rules).state;
    expect(s.okStreak).toBe(0);
    s = recordRound(recordRound(s, passing, 13_000, rules).state, passing, 14_000, rules).state;
    expect(s.phase).toBe('healthy');
    // Once healthy, "not there" is a failure like any other: the service no longer runs the commit.
    const d = recordRound(recordRound(s, pending, 15_000, rules).state, failing, 16_000, rules);
    expect(d).toMatchObject({ event: 'degraded', state: { phase: 'degraded' } });
    expect(recordRound(recordRound(newRelease(C2, 0, false, true), failing, 1000, rules).state, failing, 2000, rules).event).toBe('failed');
  });
});

/** A sandbox whose production has no deploy: Argo CD deploys main, cascade-sync gates, watches and rolls back. */
async function argoPipeline(o: { argoUrl: string; remoteUrl: string }): Promise<{ dir: string; logFile: string }> {
  const dir = await makeTmpDir('sandbox');
  const logFile = path.join(await makeTmpDir('logs'), 'cascade-sync.log');
  await writeFile(path.join(dir, 'app.txt'), 'v1\n');
  await writeFile(path.join(dir, 'cascade-sync-config.yaml'), [
    'version: 1',
    'sandbox: { debounce: 300ms, batchWindow: 2s }',
    'remotes:',
    `  - { name: origin, url: ${JSON.stringify(o.remoteUrl)}, username: bot, password: "\${ORIGIN_PASSWORD}" }`,
    'retry: { initial: 200ms, factor: 2, max: 2s, jitter: 0 }',
    'intervals: { fetch: 1s, health: 1s, rescan: 10m }',
    `logging: { file: ${JSON.stringify(logFile)}, level: debug }`,
    'notifications: { desktop: false }',
    'environments:',
    '  production:',
    '    branch: main',
    '    from: develop',
    '    gates:',
    '      - { name: config, builtin: config }',
    '    health:',
    '      - name: argocd',
    '        http:',
    `          url: ${JSON.stringify(o.argoUrl)}`,
    '          headers: { Authorization: "Bearer ${ARGOCD_TOKEN}" }',
    '          expect:',
    '            json:',
    '              - { path: status.health.status, equals: Healthy, progressing: [Progressing] }',
    '              - { path: status.sync.revision, equals: "{commit}" }',
    '        timeout: 5s',
    '    healthyAfter: 2',
    '    failureThreshold: 2',
    '    progressDeadline: 10m',
    '    rollback: { automatic: true }',
    '',
  ].join('\n'));
  const init = await run(dir, ['init'], testEnv({ ORIGIN_PASSWORD, ARGOCD_TOKEN: TOKEN }));
  if (init.code !== 0) throw new Error(`init failed: ${init.stderr}${init.stdout}`);
  return { dir, logFile };
}

const ORIGIN_PASSWORD = 'origin-password-9d8c7b6a5f4e';

/** The remote's branch as Argo CD would read it. */
const remoteMain = (bare: string) => tryRevParse(bare, 'main');

describe('hand-off to a cluster: an environment without deploy, watched through Argo CD', () => {
  let controllers: RunningController[] = [];
  afterEach(async () => {
    for (const c of controllers.splice(0)) await c.stop();
  });

  it('promotion moves the branch, waits while Argo CD is progressing or healthy at the old revision, becomes healthy at {commit}, and a degraded report rolls the branch back on the remote', async () => {
    const root = await makeTmpDir('remotes');
    const bare = path.join(root, 'site.git');
    await makeBareRepo(bare, { initialBranch: 'develop' });
    const server = await startGitHttpServer({ root, username: 'bot', password: ORIGIN_PASSWORD });
    closers.push(() => server.close());
    const fake = await argo({ health: 'Missing' });
    const { dir, logFile } = await argoPipeline({ argoUrl: fake.appUrl, remoteUrl: server.url('site.git') });
    const c1 = await revParse(dir, 'main');
    const env = testEnv({ ORIGIN_PASSWORD, ARGOCD_TOKEN: TOKEN });
    controllers.push(await startController(dir, env));
    const report = () => envReport(dir, 'production');
    const explain = async (e: Error) => {
      const log = (await readFile(logFile, 'utf8').catch(() => '')).split('\n').filter((l) => l.includes('production')).slice(-12).join('\n');
      return new Error(`${e.message}\nproduction: ${JSON.stringify(await report())}\n${log}`);
    };
    const until = async <T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 40_000): Promise<T> =>
      waitFor(fn, { what, timeoutMs }).catch(async (e: Error) => { throw await explain(e); });
    const phaseAt = (phase: string, head: string) => until(`production ${phase} at ${head.slice(0, 7)}`, async () => {
      const r = await report();
      return r?.health?.phase === phase && r.head === head ? r : undefined;
    });
    /** Waits until Argo CD has been asked `n` more times: that many health rounds ran. */
    const rounds = async (n: number) => {
      const start = fake.requests.length;
      await until(`${n} more health rounds`, async () => fake.requests.length >= start + n);
    };

    // Before Argo CD's first sync the init commit is progressing, not failed.
    const first = await phaseAt('progressing', c1);
    await until('a round before the first sync', async () => (await report())?.health?.checks?.[0]?.message.includes('not at {commit} yet') || undefined);
    expect(first.deployed).toBeNull();
    await until('main on the remote', async () => (await remoteMain(bare)) === c1);
    fake.set({ health: 'Healthy', revision: c1 });
    await phaseAt('healthy', c1);

    // An edit is promoted: main moves (and is pushed), nothing is deployed here; Argo CD still runs c1.
    await writeFile(path.join(dir, 'app.txt'), 'v2\n');
    const c2 = await until('production promoted to the edit', async () => {
      const head = await revParse(dir, 'main');
      return head !== c1 ? head : undefined;
    });
    expect(await revParse(dir, 'develop')).toBe(c2);
    await until('main pushed to the remote', async () => (await remoteMain(bare)) === c2);
    // Healthy at the old revision is not healthy yet: through more rounds than failureThreshold it stays progressing.
    await rounds(4);
    let r = await phaseAt('progressing', c2);
    expect(r.health.checks[0]).toMatchObject({ ok: false, pending: true });
    expect(r.health.checks[0].message).toContain(`not at {commit} yet: status.sync.revision is "${c1}", expected "${c2}" ({commit})`);

    // A newer commit waits for c2 to become healthy before it is promoted.
    await writeFile(path.join(dir, 'app.txt'), 'v3\n');
    const c3 = await until('the second edit on develop', async () => {
      const head = await revParse(dir, 'develop');
      return head !== c2 ? head : undefined;
    });
    r = await until('production to wait for c2', async () => {
      const x = await report();
      return x?.next === `waiting for ${c2.slice(0, 7)} to become healthy before promoting ${c3.slice(0, 7)}` ? x : undefined;
    });
    fake.set({ health: 'Progressing', revision: c2 });
    await rounds(4);
    r = await phaseAt('progressing', c2);
    expect(r.health.checks[0].message).toContain('status.health.status is "Progressing", expected "Healthy" (still progressing)');
    expect(await revParse(dir, 'main')).toBe(c2);

    // Healthy at c2: c2 is healthy, and c3 is promoted.
    fake.set({ health: 'Healthy', revision: c2 });
    await until('c3 promoted', async () => (await revParse(dir, 'main')) === c3);
    await until('main at c3 on the remote', async () => (await remoteMain(bare)) === c3);
    fake.set({ health: 'Healthy', revision: c3 });
    await phaseAt('healthy', c3);

    // Argo CD reports c3 Degraded: after failureThreshold rounds the branch goes back to c2, on the remote too (forced, with lease).
    fake.set({ health: 'Degraded', revision: c3 });
    await until('main rolled back to c2', async () => (await revParse(dir, 'main')) === c2);
    await until('the rollback pushed to the remote', async () => (await remoteMain(bare)) === c2);
    expect(await revParse(dir, `refs/cascade-sync/failed/production/${c3}`)).toBe(c3);
    // Argo CD has not synced back yet (it still reports c3 Degraded): the rolled-back release is progressing, not failed.
    await rounds(4);
    r = await phaseAt('progressing', c2);
    expect(r.health.checks[0].message).toContain(`status.sync.revision is "${c3}", expected "${c2}"`);
    fake.set({ health: 'Healthy', revision: c2 });
    r = await phaseAt('healthy', c2);
    // The failed commit is not promoted again, though develop still holds it.
    await until('production to say c3 was rolled back', async () => (await report())?.next?.includes(`${c3.slice(0, 7)} was rolled back`) || undefined);
    expect(await revParse(dir, 'develop')).toBe(c3);
    expect(await revParse(dir, 'main')).toBe(c2);

    const history = (await readFile(path.join(dir, '.git/cascade-sync/history.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
    expect(history.filter((h) => h.environment === 'production' && h.event === 'promoted').map((h) => h.commit)).toEqual([c2, c3]);
    const rollback = history.find((h) => h.event === 'rolled-back');
    expect(rollback).toMatchObject({ environment: 'production', from: c3, commit: c2 });
    // The history says which assertion failed, with the value Argo CD reported.
    expect(rollback.result).toContain('argocd: HTTP 200');
    expect(rollback.result).toContain('status.health.status is \"Degraded\", expected \"Healthy\"');
    expect(history.some((h) => h.event === 'deployed')).toBe(false);

    // Every request carried the token; none of it (nor the remote's password) is in the log, status, history or output.
    expect(fake.requests.every((h) => h.authorization === `Bearer ${TOKEN}`)).toBe(true);
    const status = await run(dir, ['status', '--json'], env);
    const plan = await run(dir, ['plan'], env);
    const health = await run(dir, ['health'], env);
    expect(health.stdout).toContain('production/argocd: HTTP 200');
    const seen = [
      await readFile(logFile, 'utf8'), await readFile(path.join(dir, '.git/cascade-sync/status.json'), 'utf8'),
      await readFile(path.join(dir, '.git/cascade-sync/history.jsonl'), 'utf8'), await readFile(path.join(dir, '.git/cascade-sync/gates.json'), 'utf8').catch(() => ''),
      controllers[0]!.stdout.text(), status.stdout, status.stderr, plan.stdout, health.stdout,
    ].join('\n');
    expect(seen).toContain('status.health.status is \\"Degraded\\"');
    for (const secret of [TOKEN, TOKEN.slice(-12), ORIGIN_PASSWORD]) expect(seen).not.toContain(secret);
    await fsckStrict(bare);
  }, 240_000);

  it('a remote whose branch protection refuses the forced push of the rollback: status says so, the remote keeps the failed commit, and the push goes through once it is allowed', async () => {
    const root = await makeTmpDir('remotes');
    const bare = path.join(root, 'site.git');
    await makeBareRepo(bare, { initialBranch: 'develop' });
    // What a protected branch without a force-push exception for the controller does.
    await git(bare, 'config', 'receive.denyNonFastForwards', 'true');
    const server = await startGitHttpServer({ root, username: 'bot', password: ORIGIN_PASSWORD });
    closers.push(() => server.close());
    const fake = await argo({ health: 'Missing' });
    const { dir } = await argoPipeline({ argoUrl: fake.appUrl, remoteUrl: server.url('site.git') });
    const c1 = await revParse(dir, 'main');
    const env = testEnv({ ORIGIN_PASSWORD, ARGOCD_TOKEN: TOKEN });
    controllers.push(await startController(dir, env));
    const report = () => envReport(dir, 'production');
    fake.set({ health: 'Healthy', revision: c1 });
    await waitFor(async () => (await report())?.health?.phase === 'healthy' || undefined, { what: 'c1 healthy', timeoutMs: 40_000 });
    await writeFile(path.join(dir, 'app.txt'), 'v2\n');
    const c2 = await waitFor(async () => {
      const head = await tryRevParse(bare, 'main');
      return head && head !== c1 ? head : undefined;
    }, { what: 'c2 promoted and pushed', timeoutMs: 40_000 });
    fake.set({ health: 'Healthy', revision: c2 });
    await waitFor(async () => {
      const r = await report();
      return r?.head === c2 && r.health?.phase === 'healthy' || undefined;
    }, { what: 'c2 healthy', timeoutMs: 40_000 });

    fake.set({ health: 'Degraded', revision: c2 });
    await waitFor(async () => (await revParse(dir, 'main')) === c1 || undefined, { what: 'the local rollback', timeoutMs: 40_000 });
    const refused = await waitFor(async () => {
      const st = await statusJson(dir);
      const e = st.remotes?.[0]?.error;
      return e?.reason === 'PushRejected' ? e : undefined;
    }, { what: 'the refused push in status', timeoutMs: 40_000 });
    expect(refused.message).toContain('the remote refused the push (non-fast-forward)');
    expect(refused.hint).toContain('branch protection');
    expect(await tryRevParse(bare, 'main')).toBe(c2);

    // Allowed again (e.g. the controller's account added to the force-push exceptions): a stalled remote
    // is probed again within a minute, and the rollback reaches the remote.
    await git(bare, 'config', 'receive.denyNonFastForwards', 'false');
    await waitFor(async () => (await tryRevParse(bare, 'main')) === c1 || undefined, { what: 'the rollback pushed once allowed', timeoutMs: 100_000 });
    await fsckStrict(bare);
  }, 240_000);
});

describe('examples/argocd and examples/flux', () => {
  const examples = path.resolve(import.meta.dirname, '..', 'examples');
  const manifests = async (file: string) => parseAllDocuments(await readFile(file, 'utf8')).map((d) => {
    expect(d.errors).toEqual([]);
    return d.toJS() as { kind: string; metadata: { name: string }; spec: Record<string, any> };
  });

  it('validate with `cascade-sync validate`, and their manifests track the branch and remote the config promotes to', async () => {
    const env = testEnv({ ARGOCD_TOKEN: TOKEN, FLUX_READER_TOKEN: TOKEN });
    for (const name of ['argocd', 'flux']) {
      const file = path.join(examples, name, 'cascade-sync-config.yaml');
      const v = await run(examples, ['validate', '--config', file], env);
      expect(v.stdout + v.stderr).toContain(`${file}: valid`);
      expect(v.code).toBe(0);
      // Without the token the header's variable is reported missing, not sent empty.
      const missing = await run(examples, ['validate', '--config', file], testEnv());
      expect(missing.code).toBe(1);
      expect(missing.stderr).toMatch(/http\.headers\.Authorization: variable (ARGOCD|FLUX_READER)_TOKEN is not set/);
    }

    const argocd = await loadConfig(path.join(examples, 'argocd/cascade-sync-config.yaml'), { ARGOCD_TOKEN: TOKEN });
    if (!argocd.ok) throw new Error('argocd example invalid');
    const apps = await manifests(path.join(examples, 'argocd/application.yaml'));
    for (const envName of ['staging', 'production']) {
      const e = argocd.config.environments[envName]!;
      expect(e.deploy).toBeUndefined();
      const appName = e.health[0]!.http!.url.split('/').at(-1);
      const app = apps.find((a) => a.kind === 'Application' && a.metadata.name === appName)!;
      expect(app.spec.source.targetRevision).toBe(e.branch);
      expect(app.spec.source.repoURL).toBe(argocd.config.remotes[0]!.url);
      expect(app.spec.syncPolicy.automated).toBeTruthy();
    }
    expect(argocd.config.environments.production!.rollback.automatic).toBe(true);

    const flux = await loadConfig(path.join(examples, 'flux/cascade-sync-config.yaml'), { FLUX_READER_TOKEN: TOKEN });
    if (!flux.ok) throw new Error('flux example invalid');
    const prod = flux.config.environments.production!;
    expect(prod.deploy).toBeUndefined();
    const [repo] = await manifests(path.join(examples, 'flux/gitrepository.yaml'));
    const [kustomization] = await manifests(path.join(examples, 'flux/kustomization.yaml'));
    expect(repo).toMatchObject({ kind: 'GitRepository', spec: { url: flux.config.remotes[0]!.url, ref: { branch: prod.branch } } });
    expect(kustomization).toMatchObject({ kind: 'Kustomization', spec: { sourceRef: { kind: 'GitRepository', name: repo!.metadata.name }, wait: true } });
    expect(prod.health[0]!.http!.url).toContain(`/kustomizations/${kustomization!.metadata.name}`);
  });

  it('their health checks, pointed at servers shaped like Argo CD and the Kubernetes API, judge rollouts as described', async () => {
    const fake = await argo({ health: 'Healthy', revision: C1 });
    const argocd = await loadConfig(path.join(examples, 'argocd/cascade-sync-config.yaml'), { ARGOCD_TOKEN: TOKEN });
    if (!argocd.ok) throw new Error('argocd example invalid');
    const spec = argocd.config.environments.production!.health[0]!;
    const atFake = { ...spec, http: { ...spec.http!, url: fake.appUrl } };
    expect((await check(atFake, C1)).ok).toBe(true);
    expect(await check(atFake, C2)).toMatchObject({ ok: false, pending: true });
    fake.set({ health: 'Degraded', revision: C1 });
    expect(await check(atFake, C1)).toMatchObject({ ok: false });
    expect((await check(atFake, C1)).pending).toBeUndefined();

    const { createServer } = await import('node:http');
    let kustomization: unknown = {};
    const seen: (string | undefined)[] = [];
    const server = createServer((req, res) => {
      seen.push(req.headers.authorization);
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(kustomization));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    closers.push(() => new Promise((r) => server.close(() => r())));
    const flux = await loadConfig(path.join(examples, 'flux/cascade-sync-config.yaml'), { FLUX_READER_TOKEN: TOKEN });
    if (!flux.ok) throw new Error('flux example invalid');
    const fspec = flux.config.environments.production!.health[0]!;
    const url = new URL(fspec.http!.url);
    const local = { ...fspec, http: { ...fspec.http!, url: `http://127.0.0.1:${(server.address() as { port: number }).port}${url.pathname}` } };
    const status = (revision: string, ready: string, reason: string) => ({
      apiVersion: 'kustomize.toolkit.fluxcd.io/v1', kind: 'Kustomization', metadata: { name: 'site', namespace: 'flux-system' },
      status: {
        lastAttemptedRevision: `main@sha1:${revision}`, lastAppliedRevision: `main@sha1:${C1}`, observedGeneration: 1,
        conditions: [{ type: 'Ready', status: ready, reason, message: reason }, { type: 'Healthy', status: ready, reason }],
      },
    });
    kustomization = status(C1, 'True', 'ReconciliationSucceeded');
    expect((await check(local, C1)).ok).toBe(true);
    expect(seen.at(-1)).toBe(`Bearer ${TOKEN}`);
    kustomization = status(C1, 'True', 'ReconciliationSucceeded');
    expect(await check(local, C2)).toMatchObject({ ok: false, pending: true });
    kustomization = status(C2, 'Unknown', 'Progressing');
    expect(await check(local, C2)).toMatchObject({ ok: false, pending: true });
    kustomization = status(C2, 'False', 'HealthCheckFailed');
    const failed = await check(local, C2);
    expect(failed.pending).toBeUndefined();
    expect(failed.message).toContain('status.conditions[type=Ready].status is "False", expected "True"');
  });
});
