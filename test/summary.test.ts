import { afterAll, describe, expect, it } from 'vitest';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { commitNative, worktreeChanges } from '../src/git/native/index.js';
import { git, gitEnv } from './helpers/git.js';
import { cleanupTmpDirs, makeTmpDir } from './helpers/tmp.js';
import { commitMessage, summarize } from '../reconcilers/sandbox.js';
import type { CommittedPath } from '../src/git/commit.js';
import { parseConfig } from '../src/config/load.js';
import type { Config } from '../src/config/types.js';

// Blob oids: equal oids mean equal content, which is what makes a deletion plus an addition a rename.
const OID_A = 'a'.repeat(40);
const OID_B = 'b'.repeat(40);
const OID_C = 'c'.repeat(40);
const OID_D = 'd'.repeat(40);
const OID_E = 'e'.repeat(40);
const OID_F = 'f'.repeat(40);

const blob = (oid: string) => ({ mode: '100644' as const, oid });
const added = (path: string, oid: string): CommittedPath => ({ path, after: blob(oid) });
const deleted = (path: string, oid: string): CommittedPath => ({ path, before: blob(oid) });
const modified = (path: string, from: string, to: string): CommittedPath => ({ path, before: blob(from), after: blob(to) });

interface Case {
  name: string;
  paths: CommittedPath[];
  summary: string;
  body: string[];
}

const cases: Case[] = [
  {
    name: 'adds',
    paths: [added('a.txt', OID_A), added('docs/b.md', OID_B)],
    summary: '2 added (a.txt, docs/b.md)',
    body: ['A a.txt', 'A docs/b.md'],
  },
  {
    name: 'modifies',
    paths: [modified('src/app.ts', OID_A, OID_B)],
    summary: '1 modified (src/app.ts)',
    body: ['M src/app.ts'],
  },
  {
    name: 'deletes',
    paths: [deleted('old.txt', OID_A), deleted('tmp/x.log', OID_B)],
    summary: '2 deleted (old.txt, tmp/x.log)',
    body: ['D old.txt', 'D tmp/x.log'],
  },
  {
    name: 'the documented example: modified first, then added',
    paths: [modified('src/app.ts', OID_A, OID_B), added('docs/intro.md', OID_C), modified('README.md', OID_D, OID_A)],
    summary: '2 modified, 1 added (src/app.ts, README.md, docs/intro.md)',
    body: ['M src/app.ts', 'M README.md', 'A docs/intro.md'],
  },
  {
    name: 'a deletion and an addition with the same blob are one rename',
    paths: [deleted('notes/draft.md', OID_A), added('notes/final.md', OID_A)],
    summary: '1 renamed (notes/final.md)',
    body: ['R notes/draft.md -> notes/final.md'],
  },
  {
    name: 'a case-only rename is a rename, not an add and a delete',
    paths: [added('README.md', OID_A), deleted('Readme.md', OID_A)],
    summary: '1 renamed (README.md)',
    body: ['R Readme.md -> README.md'],
  },
  {
    name: 'a deletion and an addition with different content stay apart',
    paths: [deleted('a.txt', OID_A), added('b.txt', OID_B)],
    summary: '1 added, 1 deleted (b.txt, a.txt)',
    body: ['A b.txt', 'D a.txt'],
  },
  {
    name: 'two deletions of one blob and one addition of it: one rename, one deletion',
    paths: [deleted('x/one.txt', OID_A), deleted('x/two.txt', OID_A), added('y/one.txt', OID_A)],
    summary: '1 deleted, 1 renamed (x/two.txt, y/one.txt)',
    body: ['D x/two.txt', 'R x/one.txt -> y/one.txt'],
  },
  {
    name: 'more than 3 paths: the first 3 and +N more, the body lists every path',
    paths: [
      modified('a.ts', OID_A, OID_B),
      modified('b.ts', OID_A, OID_B),
      added('c.ts', OID_C),
      deleted('d.ts', OID_D),
      added('e.ts', OID_E),
      deleted('f.ts', OID_F),
    ],
    summary: '2 modified, 2 added, 2 deleted (a.ts, b.ts, c.ts, +3 more)',
    body: ['M a.ts', 'M b.ts', 'A c.ts', 'A e.ts', 'D d.ts', 'D f.ts'],
  },
  {
    name: 'exactly 3 paths: no +N more',
    paths: [added('a', OID_A), added('b', OID_B), added('c', OID_C)],
    summary: '3 added (a, b, c)',
    body: ['A a', 'A b', 'A c'],
  },
  {
    name: 'nothing',
    paths: [],
    summary: 'no changes',
    body: [],
  },
];

describe('summarize', () => {
  it.each(cases)('$name', ({ paths, summary, body }) => {
    const out = summarize(paths);
    expect(out.summary).toBe(summary);
    expect(out.body).toBe(body.join('\n'));
  });

  it('counts and lists a path named twice once (what it was first, what it is last), as a commit changes it', () => {
    const out = summarize([deleted('d/a.txt', OID_A), deleted('d/a.txt', OID_A), modified('b.txt', OID_B, OID_C), modified('b.txt', OID_C, OID_D), added('gone.txt', OID_E), deleted('gone.txt', OID_E)]);
    expect(out.summary).toBe('1 modified, 1 deleted (b.txt, d/a.txt)');
    expect(out.body).toBe('M b.txt\nD d/a.txt');
    expect(out.files).toBe(2);
  });

  it('lists every one of many paths in the body', () => {
    const many = Array.from({ length: 250 }, (_, i) => added(`f/${String(i).padStart(3, '0')}.txt`, i.toString(16).padStart(40, '0')));
    const out = summarize(many);
    expect(out.summary).toBe('250 added (f/000.txt, f/001.txt, f/002.txt, +247 more)');
    expect(out.body.split('\n')).toEqual(many.map((p) => `A ${p.path}`));
  });
});

/** A config loaded through the real pipeline (schema, defaults, rules) from a `sandbox:` block. */
function sandboxConfig(sandboxYaml: string): Config {
  const r = parseConfig(`version: 1\nsandbox:\n${sandboxYaml}\nremotes: []\n`, '/nonexistent/cascade-sync-config.yaml', {});
  if (!r.ok) throw new Error(r.problems.map((p) => `${p.path}: ${p.message}`).join('\n'));
  return r.config;
}

describe('commitMessage', () => {
  const paths = [modified('src/app.ts', OID_A, OID_B), added('docs/intro.md', OID_C), modified('README.md', OID_D, OID_A)];

  it('fills a non-default template: {branch}, {summary} and {count}, each placeholder wherever it appears', () => {
    const config = sandboxConfig('  branch: work\n  commitMessage: "{branch}: {summary} [{count}]"');
    expect(commitMessage(config, paths)).toBe(
      'work: 2 modified, 1 added (src/app.ts, README.md, docs/intro.md) [3]\n\nM src/app.ts\nM README.md\nA docs/intro.md\n',
    );
    const twice = sandboxConfig('  commitMessage: "{count} on {branch} / {count} on {branch}"');
    expect(commitMessage(twice, [added('a', OID_A)]).split('\n')[0]).toBe('1 on develop / 1 on develop');
  });

  it('counts a rename as one file in {count}, as the summary does', () => {
    const config = sandboxConfig('  commitMessage: "{summary} [{count}]"');
    expect(commitMessage(config, [deleted('old.txt', OID_A), added('new.txt', OID_A), added('b.txt', OID_B)]).split('\n')[0]).toBe('1 added, 1 renamed (b.txt, new.txt) [2]');
  });

  it('uses "sync: {summary}" when the config sets no template', () => {
    const config = sandboxConfig('  branch: develop');
    expect(commitMessage(config, paths)).toBe('sync: 2 modified, 1 added (src/app.ts, README.md, docs/intro.md)\n\nM src/app.ts\nM README.md\nA docs/intro.md\n');
  });
});

describe('the message of a native commit says what the commit records', () => {
  afterAll(cleanupTmpDirs);

  it('also a file a person staged with `git add` that the batch did not name: counts and paths equal git diff-tree', async () => {
    const dir = await makeTmpDir('message');
    await git(dir, 'init', '--quiet', '-b', 'develop');
    await writeFile(path.join(dir, 'old.txt'), 'old');
    await git(dir, 'add', 'old.txt');
    await git(dir, 'commit', '--quiet', '-m', 'root');
    // Staged by a person (or by a native commit racing ours), not among the batch's paths.
    await writeFile(path.join(dir, 'staged.txt'), 'staged by hand');
    await git(dir, 'add', 'staged.txt');
    await writeFile(path.join(dir, 'batch.txt'), 'the batch');
    const repo = { cwd: dir, env: gitEnv() };
    const config = sandboxConfig('  branch: develop');
    const out = await commitNative(repo, {
      changes: await worktreeChanges(repo, ['batch.txt']), ref: 'refs/heads/develop', parent: await git(dir, 'rev-parse', 'HEAD'),
      author: { name: 'Cascade Test', email: 'cascade-test@example.invalid' },
      judge: () => undefined,
      message: (changes) => commitMessage(config, changes as CommittedPath[]),
    });
    const real = (await git(dir, 'diff-tree', '-r', '--no-commit-id', '--name-status', out.commit!)).split('\n').map((l) => l.replace('\t', ' '));
    expect(real).toEqual(['A batch.txt', 'A staged.txt']);
    expect(await git(dir, 'log', '-1', '--format=%s', 'develop')).toBe('sync: 2 added (batch.txt, staged.txt)');
    expect((await git(dir, 'log', '-1', '--format=%b', 'develop')).split('\n')).toEqual(real);
  });
});
