import { describe, expect, it } from 'vitest';
import { backoffDelay } from '../src/backoff.js';
import { Redactor } from '../src/redact.js';
import { parseDuration, formatDuration } from '../src/duration.js';

describe('backoffDelay', () => {
  const policy = { initialMs: 1000, factor: 2, maxMs: 300_000, jitter: 0.2 };
  it.each([
    { name: 'first failure waits initial', failures: 1, random: 0.5, expected: 1000 },
    { name: 'grows by factor', failures: 4, random: 0.5, expected: 8000 },
    { name: 'capped at max', failures: 30, random: 0.5, expected: 300_000 },
    { name: 'jitter low end', failures: 1, random: 0, expected: 800 },
    { name: 'jitter high end', failures: 1, random: 1, expected: 1200 },
  ])('$name', ({ failures, random, expected }) => {
    expect(backoffDelay(policy, failures, () => random)).toBe(expected);
  });
  it('resets after a success: the count starts again at 1', () => {
    expect(backoffDelay({ ...policy, jitter: 0 }, 1)).toBe(1000);
  });
});

describe('Redactor', () => {
  it('hides registered secrets and URL credentials everywhere, also inside objects', () => {
    const r = new Redactor();
    r.add('tok-123456');
    expect(r.redact('push to https://bot:tok-123456@git.example.com/x.git failed: tok-123456')).toBe(
      'push to https://[REDACTED]@git.example.com/x.git failed: [REDACTED]',
    );
    expect(r.redactValue({ a: ['https://u:p@h/'], b: 'tok-123456' })).toEqual({ a: ['https://[REDACTED]@h/'], b: '[REDACTED]' });
  });
});

describe('durations', () => {
  it.each([
    ['3s', 3000], ['5m', 300_000], ['1h', 3_600_000], ['1h30m', 5_400_000], ['500ms', 500], ['1d', 86_400_000],
  ] as const)('%s is %d ms', (text, ms) => expect(parseDuration(text)).toBe(ms));
  it('rejects what is not a duration', () => {
    expect(parseDuration('soon')).toBeUndefined();
    expect(parseDuration('3')).toBeUndefined();
  });
  it('formats for people', () => expect(formatDuration(125_000)).toBe('2m05s'));
});

import { readFile as readFileP } from 'node:fs/promises';
import path from 'node:path';
import { cleanupTmpDirs, makeTmpDir } from './helpers/tmp.js';
import { writeRuntimeFile } from '../src/runtime.js';

describe('writeRuntimeFile', () => {
  it('lands concurrent writes of one file in the order they were asked for (the newest content wins)', async () => {
    const gitdir = await makeTmpDir('runtime');
    // Big early writes and small late ones: without the queue, an early rename can land last.
    await Promise.all(Array.from({ length: 40 }, (_, i) => writeRuntimeFile(gitdir, 'pipeline.json', JSON.stringify({ i, pad: 'x'.repeat((40 - i) * 50_000) }))));
    expect(JSON.parse(await readFileP(path.join(gitdir, 'cascade-sync', 'pipeline.json'), 'utf8')).i).toBe(39);
    await cleanupTmpDirs();
  });
});

import { terminalProgress } from '../src/progress.js';

describe('terminalProgress', () => {
  const stream = (isTTY: boolean) => {
    const s = { text: '', isTTY, write(t: string) { s.text += t; return true; } };
    return s;
  };
  it('redraws one line on a TTY (done/total, rate) and leaves the summary line', () => {
    let now = 0;
    const out = stream(true);
    const task = terminalProgress(out, { now: () => now })('scanning the sandbox', 'files');
    now = 1000;
    task.update(5_000, 100_000);
    now = 1050; // within the redraw interval: not drawn
    task.update(6_000);
    now = 2000;
    task.update(10_000);
    task.end('100,000 files');
    expect(out.text).toContain('\r\x1b[2Kscanning the sandbox: 5,000/100,000 files, 5,000/s');
    expect(out.text).not.toContain('6,000');
    expect(out.text).toContain('scanning the sandbox: 10,000/100,000 files');
    expect(out.text.endsWith('\r\x1b[2Kscanning the sandbox: 100,000 files in 2s (5,000/s)\n')).toBe(true);
  });
  it('prints only a single summary line when the output is not a TTY', () => {
    let now = 0;
    const out = stream(false);
    const task = terminalProgress(out, { now: () => now })('pushing develop to origin', 'objects');
    for (let i = 1; i <= 300; i++) {
      now += 10;
      task.update(i);
    }
    task.end();
    expect(out.text).toBe('pushing develop to origin: 300 objects in 3s (100/s)\n');
  });
});

import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { PathRules } from '../src/path-rules.js';

describe('PathRules', () => {
  it('answers as git check-ignore does, also after it starts a fresh matcher to bound its memory', async () => {
    const dir = await makeTmpDir('cascade-rules-');
    const rules = ['*.log', '!keep.log', 'build/', '/top-only.txt', 'docs/**/draft-*', '\\#hash'];
    execFileSync('git', ['init', '-q', dir]);
    writeFileSync(path.join(dir, '.gitignore'), rules.join('\n') + '\n');
    // 25,000 paths (more than two matchers' worth of answers), asked twice in different orders.
    const names = ['a.log', 'keep.log', 'x.txt', 'top-only.txt', 'draft-1.md', '#hash', 'y.ts'];
    const folders = ['', 'build/', 'src/', 'docs/', 'docs/v1/', 'src/build/'];
    const paths: string[] = [];
    for (let i = 0; paths.length < 25_000; i++) paths.push(`${folders[i % 6]}n${Math.floor(i / 42)}/${names[Math.floor(i / 6) % 7]}`);
    const ignored = new Set(
      execFileSync('git', ['check-ignore', '--no-index', '--stdin'], { cwd: dir, input: paths.join('\n') + '\n', maxBuffer: 64 << 20 })
        .toString().split('\n').filter(Boolean),
    );
    expect(ignored.size).toBeGreaterThan(5_000);
    expect(ignored.size).toBeLessThan(paths.length - 5_000);
    const matcher = new PathRules(rules.join('\n'));
    for (const order of [paths, [...paths].reverse()]) {
      const wrong = order.filter((p) => matcher.matches(p) !== ignored.has(p));
      expect(wrong).toEqual([]);
    }
  });
});
