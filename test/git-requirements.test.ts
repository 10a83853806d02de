import { afterEach, expect, it } from 'vitest';
import { chmod, mkdir, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { gitOk } from './helpers/git.js';
// The built CLI (npm test compiles it first), run with a PATH of the test's choosing.
import { cli } from './helpers/process.js';
import { run, testEnv } from './helpers/sandbox.js';
import { cleanupTmpDirs, makeTmpDir } from './helpers/tmp.js';

afterEach(cleanupTmpDirs);

it('init, start and reconcile refuse a sha256 repository with the reason and a hint, writing nothing', async () => {
  const dir = await makeTmpDir('sha256');
  await gitOk(dir, 'init', '-q', '--object-format=sha256', '-b', 'develop');
  await writeFile(path.join(dir, 'a.txt'), 'a\n');
  const before = (await readdir(dir)).sort();
  const init = await run(dir, ['init']);
  expect(init.code).toBe(2);
  expect(init.stderr).toContain('RepositoryFormatUnsupported');
  expect(init.stderr).toContain('object format sha256');
  expect(init.stderr).toMatch(/hint: /);
  expect((await readdir(dir)).sort()).toEqual(before);
  // A config written by hand does not get a controller past the check either.
  await writeFile(path.join(dir, 'cascade-sync-config.yaml'), 'version: 1\nsandbox: {}\nremotes: []\n');
  for (const command of ['reconcile', 'start']) {
    const r = await run(dir, [command]);
    expect(r.code, command).toBe(2);
    expect(r.stderr, command).toContain('object format sha256');
  }
  expect((await gitOk(dir, 'rev-parse', '--show-object-format')).stdout.trim()).toBe('sha256');
});

it('validate, init and start name the git version they need when the installed git is older', async () => {
  const dir = await makeTmpDir('old-git');
  const bin = path.join(await makeTmpDir('old-git-bin'), 'bin');
  await mkdir(bin);
  // A git that answers like an old release: only its version matters here, nothing else may run.
  await writeFile(path.join(bin, 'git'), '#!/bin/sh\nif [ "$1" = version ]; then echo "git version 2.30.2"; exit 0; fi\necho "old git: $*" >&2; exit 1\n');
  await chmod(path.join(bin, 'git'), 0o755);
  await writeFile(path.join(dir, 'cascade-sync-config.yaml'), 'version: 1\nsandbox: {}\nremotes: []\n');
  const env = testEnv({ PATH: `${bin}:${process.env.PATH ?? ''}` });
  for (const command of ['validate', 'init', 'start']) {
    const r = await cli(dir, [command], env);
    expect(r.code, `${command}: ${r.stderr}`).toBe(2);
    expect(r.stderr, command).toContain('needs git 2.38.0 or newer; found git version 2.30.2');
    expect(r.stderr, command).toMatch(/hint: install a newer git/);
  }
});
