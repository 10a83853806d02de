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
