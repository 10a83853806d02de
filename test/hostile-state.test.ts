// Issue 4, "Hostile input", state file part: malformed entries, oversize signatures, non-hex commits,
// duplicate entries, an alias bomb, a file that is not a mapping or too big. Each entry is rejected with
// a reason (and every file-level problem said once); the valid entries still count. Signatures are
// real ones made by ssh-keygen.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { evaluateApprovals, type ApprovalEvaluation, type EvaluateInput } from '../src/approvals/evaluate.js';
import { approvalMessage } from '../src/approvals/sshsig.js';
import { MAX_SIGNATURE_BYTES, MAX_SIGNER_CHARS, MAX_STATE_BYTES, parseStateFile, type ParsedEntry } from '../src/approvals/state.js';
import { generateKey, sshSign, type TestKey } from './helpers/ssh.js';
import { cleanupTmpDirs, makeTmpDir } from './helpers/tmp.js';

const COMMIT = '0123456789abcdef0123456789abcdef01234567';
const NOW = Date.parse('2026-11-24T18:00:00Z');
const EXPIRES = '2026-11-25T18:00:00Z';

let dir: string;
let alice: TestKey;
let bob: TestKey;
/** Valid, committed entries by alice and bob for COMMIT, in the layout `cascade-sync approve` writes. */
let aliceEntry: string;
let bobEntry: string;

interface Fields {
  environment: string;
  commit: string;
  expires: string;
  signer: string;
}

function entryYaml(f: Fields, signature: string): string {
  return [
    `  - environment: ${f.environment}`,
    `    commit: ${f.commit}`,
    `    expires: ${f.expires}`,
    `    signer: ${f.signer}`,
    '    signature: |',
    ...signature.trimEnd().split('\n').map((l) => `      ${l}`),
    '',
  ].join('\n');
}

/** An entry with every field given by hand (`fields` lines after `- `), for malformed shapes. */
const raw = (...fields: string[]) => `  - ${fields.join('\n    ')}\n`;
const state = (...entries: string[]) => `approvals:\n${entries.join('')}`;
const fakeSignature = (base64Lines: number) => `|\n      -----BEGIN SSH SIGNATURE-----\n${`      ${'A'.repeat(70)}\n`.repeat(base64Lines)}      -----END SSH SIGNATURE-----`;

beforeAll(async () => {
  dir = await makeTmpDir('hostile-state');
  [alice, bob] = await Promise.all([
    generateKey(dir, 'alice', { type: 'ed25519', comment: 'alice@example.com' }),
    generateKey(dir, 'bob', { type: 'ed25519', comment: 'bob@example.com' }),
  ]);
  const sign = async (key: TestKey, signer: string) => {
    const f: Fields = { environment: 'production', commit: COMMIT, expires: EXPIRES, signer };
    return entryYaml(f, await sshSign(dir, key.file, approvalMessage(f), { namespace: 'cascade-sync' }));
  };
  [aliceEntry, bobEntry] = await Promise.all([sign(alice, 'alice@example.com'), sign(bob, 'bob@example.com')]);
});

afterAll(async () => {
  await cleanupTmpDirs();
});

/** Judges `text` as the committed (and working) state file for production. */
function evaluate(text: string, over: Partial<EvaluateInput> = {}): ApprovalEvaluation {
  const entries = parseStateFile(text, 'state.yaml').entries;
  return evaluateApprovals({
    environment: 'production',
    approvalEnvironments: ['production'],
    signers: [`alice@example.com ${alice.publicKey}`, `bob@example.com ${bob.publicKey}`],
    committed: entries,
    working: entries,
    classifyCommit: () => 'eligible',
    now: NOW,
    ...over,
  });
}

/** The first line of `entry` in `text` (1-based), to compare with the lines evaluate reports. */
const lineOf = (text: string, needle: string, from = 0) => text.slice(0, text.indexOf(needle, from)).split('\n').length;
const problemsOf = (e: ParsedEntry | undefined) => (e && !e.ok ? e.problems.map((p) => `${p.line}:${p.col}: ${p.message}`) : []);

describe('malformed entries: each rejected with what is wrong and where; the valid ones still count', () => {
  it.each([
    { name: 'a scalar instead of an entry', entry: '  - approve everything\n', problem: /the entry is not a mapping of environment, commit, expires, signer and signature/ },
    { name: 'a list instead of an entry', entry: '  - [production, 0123]\n', problem: /the entry is not a mapping/ },
    { name: 'an empty entry', entry: '  -\n', problem: /the entry is not a mapping/ },
    { name: 'missing fields', entry: raw('environment: production', `commit: ${COMMIT}`), problem: /missing required key "expires".*missing required key "signer".*missing required key "signature"/ },
    { name: 'a list where the commit goes', entry: raw('environment: production', `commit: [${COMMIT}]`, `expires: ${EXPIRES}`, 'signer: x', 'signature: y'), problem: /commit must be a string/ },
    { name: 'a mapping where the signature goes', entry: raw('environment: production', `commit: ${COMMIT}`, `expires: ${EXPIRES}`, 'signer: x', 'signature: { a: 1 }'), problem: /signature must be a string/ },
    { name: 'an empty signer', entry: raw('environment: production', `commit: ${COMMIT}`, `expires: ${EXPIRES}`, 'signer:', `signature: ${fakeSignature(1)}`), problem: /signer is empty/ },
    { name: 'an unknown field', entry: raw('environment: production', `commit: ${COMMIT}`, `expires: ${EXPIRES}`, 'signer: x', `signature: ${fakeSignature(1)}`, 'role: admin'), problem: /unknown key "role"/ },
    { name: 'a field given twice', entry: raw('environment: production', `commit: ${COMMIT}`, `commit: ${'f'.repeat(40)}`, `expires: ${EXPIRES}`, 'signer: x', `signature: ${fakeSignature(1)}`), problem: /"commit" appears more than once in the entry/ },
    { name: 'an expiry that is no date', entry: raw('environment: production', `commit: ${COMMIT}`, 'expires: 2026-02-30T00:00:00Z', 'signer: x', `signature: ${fakeSignature(1)}`), problem: /expires "2026-02-30T00:00:00Z" is not an RFC 3339 date-time/ },
    { name: 'a signature without armor', entry: raw('environment: production', `commit: ${COMMIT}`, `expires: ${EXPIRES}`, 'signer: x', 'signature: trust me'), problem: /signature is not an armored SSH signature/ },
    { name: 'an environment that is no name', entry: raw('environment: Prod Env', `commit: ${COMMIT}`, `expires: ${EXPIRES}`, 'signer: x', `signature: ${fakeSignature(1)}`), problem: /environment "Prod Env" is not an environment name/ },
  ])('$name', ({ entry, problem }) => {
    const text = state(aliceEntry, entry, bobEntry);
    const result = evaluate(text);
    expect(result.valid.map((v) => v.signer)).toEqual(['alice@example.com', 'bob@example.com']);
    expect(result.rejected).toEqual([expect.objectContaining({ reason: 'malformed', line: lineOf(text, entry, state(aliceEntry).length), file: 'state.yaml', message: expect.stringMatching(problem) })]);
    // Each problem names its line:col, so a person finds it.
    expect(result.rejected[0]!.message).toMatch(/^\d+:\d+: /);
  });
});

describe('commits that are not a full lowercase hex hash', () => {
  it.each([
    { name: 'not hex', commit: 'zz23456789abcdef0123456789abcdef01234567', problem: 'commit "zz23456789abcdef0123456789abcdef01234567" is not a full 40-digit lowercase hex commit hash' },
    { name: 'abbreviated', commit: '0123456', problem: 'commit "0123456" has 7 hex digits; write the full 40-digit lowercase hash (git rev-parse COMMIT prints it)' },
    { name: 'one digit too many', commit: `${COMMIT}8`, problem: `commit "${COMMIT}8" has 41 hex digits; write the full 40-digit lowercase hash (git rev-parse COMMIT prints it)` },
    { name: 'upper case', commit: COMMIT.toUpperCase(), problem: `commit "${COMMIT.toUpperCase()}" has upper-case digits; write the full 40-digit lowercase hash (git rev-parse COMMIT prints it)` },
    { name: 'a branch name', commit: 'main', problem: 'commit "main" is not a full 40-digit lowercase hex commit hash' },
    { name: 'all digits (never read as a number)', commit: '1'.repeat(39), problem: `commit "${'1'.repeat(39)}" has 39 hex digits; write the full 40-digit lowercase hash (git rev-parse COMMIT prints it)` },
    { name: 'a SHA-256 object id', commit: 'a'.repeat(64), problem: `commit "${'a'.repeat(60)}"... (64 characters) has 64 hex digits; write the full 40-digit lowercase hash (git rev-parse COMMIT prints it)` },
  ])('$name: rejected as malformed, the others count', ({ commit, problem }) => {
    const bad = aliceEntry.replace(`commit: ${COMMIT}`, `commit: ${commit}`);
    const text = state(bad, bobEntry);
    const parsed = parseStateFile(text, 'state.yaml');
    expect(problemsOf(parsed.entries[0])).toEqual([`3:13: ${problem}`]);
    const result = evaluate(text);
    expect(result.valid.map((v) => v.signer)).toEqual(['bob@example.com']);
    expect(result.rejected.map((r) => [r.reason, r.line])).toEqual([['malformed', 2]]);
  });
});

describe('oversize values', () => {
  it(`a signature over ${MAX_SIGNATURE_BYTES} bytes is rejected without being decoded or kept; the others count`, () => {
    const huge = raw('environment: production', `commit: ${COMMIT}`, `expires: ${EXPIRES}`, 'signer: alice@example.com', `signature: ${fakeSignature(200)}`);
    const text = state(huge, aliceEntry, bobEntry);
    const parsed = parseStateFile(text, 'state.yaml');
    const first = parsed.entries[0]!;
    expect(first.ok).toBe(false);
    if (first.ok) return;
    expect(first.fields.signature).toBeUndefined();
    expect(first.problems.map((p) => p.message)).toEqual([expect.stringMatching(new RegExp(`^signature is \\d+ bytes; at most ${MAX_SIGNATURE_BYTES} \\(8 KiB\\)$`))]);
    const result = evaluate(text);
    expect(result.valid.map((v) => v.signer)).toEqual(['alice@example.com', 'bob@example.com']);
    expect(result.rejected.map((r) => r.reason)).toEqual(['malformed']);
  });

  it('a value of 400000 characters is quoted cut short and not kept, so status stays readable', () => {
    const long = 'a'.repeat(400_000); // Twice, within the 1 MiB file limit.
    const text = state(
      raw('environment: production', `commit: z${long}`, `expires: ${EXPIRES}`, 'signer: x', `signature: ${fakeSignature(1)}`),
      raw('environment: production', `commit: ${COMMIT}`, `expires: ${EXPIRES}`, `signer: ${'s'.repeat(MAX_SIGNER_CHARS + 1)}`, `signature: ${fakeSignature(1)}`),
      raw(`environment: ${long}`, `commit: ${COMMIT}`, `expires: ${EXPIRES}`, 'signer: x', `signature: ${fakeSignature(1)}`),
      // YAML limits a plain key to 1024 characters (a longer one is a syntax error: nothing counts).
      raw(`k${'a'.repeat(1000)}: 1`),
    );
    const result = evaluate(text.replace(/^approvals:\n/, `approvals:\n${aliceEntry}`));
    expect(result.valid).toHaveLength(1);
    expect(result.rejected.map((r) => r.reason)).toEqual(['malformed', 'malformed', 'malformed', 'malformed']);
    for (const r of result.rejected) {
      expect(r.message.length).toBeLessThan(1000);
      expect(JSON.stringify(r).length).toBeLessThan(1500);
    }
    expect(result.rejected[0]!.message).toMatch(/commit "za{59}"\.\.\. \(400001 characters\) is not a full 40-digit/);
    expect(result.rejected[1]!.message).toContain(`signer is ${MAX_SIGNER_CHARS + 1} characters long; a signer has at most ${MAX_SIGNER_CHARS}`);
    expect(result.rejected[2]!.message).toContain('environment is 400000 characters long; an environment name has at most 100');
    expect(result.rejected[3]!.message).toMatch(/unknown key "ka{59}"\.\.\. \(1001 characters\)/);
  });

  it(`a state file over ${MAX_STATE_BYTES} bytes (here 10 MB) approves nothing and says why`, () => {
    const text = state(aliceEntry, `# ${'x'.repeat(10 * 1024 * 1024)}\n`);
    const started = Date.now();
    const parsed = parseStateFile(text, 'state.yaml');
    expect(Date.now() - started).toBeLessThan(2000);
    expect(parsed.entries).toEqual([]);
    expect(parsed.problems).toEqual([expect.objectContaining({ severity: 'error', file: 'state.yaml', line: 1, col: 1, message: `the file is ${Buffer.byteLength(text)} bytes; a state file is at most ${MAX_STATE_BYTES} bytes`, hint: 'remove old approvals' })]);
    expect(evaluate(text).valid).toEqual([]);
  });
});

describe('duplicate entries', () => {
  it('an entry repeated byte for byte counts once; the copy is rejected as a duplicate naming the original', () => {
    const text = state(aliceEntry, aliceEntry, bobEntry);
    const result = evaluate(text);
    expect(result.valid.map((v) => [v.signer, v.line])).toEqual([['alice@example.com', 2], ['bob@example.com', lineOf(text, bobEntry)]]);
    expect(result.rejected).toEqual([
      expect.objectContaining({ reason: 'duplicate-signer', line: lineOf(text, aliceEntry, state(aliceEntry).length), signer: 'alice@example.com', commit: COMMIT, message: 'the entry is a copy of the one at line 2 (the same signature); it counts once: remove the copy' }),
    ]);
  });

  it('a re-indented copy (same signature) is the same entry', () => {
    const reindented = aliceEntry.split('\n').map((l) => (l ? `  ${l}` : l)).join('\n').replace(/^ {4}- /, '  - ').replace(/\n {6}(environment|commit|expires|signer|signature)/g, '\n    $1');
    const text = state(aliceEntry, reindented);
    expect(parseStateFile(text, 'state.yaml').entries.every((e) => e.ok)).toBe(true);
    const result = evaluate(text);
    expect(result.valid).toHaveLength(1);
    expect(result.rejected.map((r) => [r.reason, r.message])).toEqual([['duplicate-signer', expect.stringContaining('a copy of the one at line 2')]]);
  });

  it('a copy of an approval for a commit already promoted is not counted twice either', () => {
    const result = evaluate(state(aliceEntry, aliceEntry), { classifyCommit: () => 'promoted' });
    expect(result.used).toHaveLength(1);
    expect(result.rejected.map((r) => r.reason)).toEqual(['duplicate-signer']);
  });

  it('two approvals lists: neither counts (which one is meant is anybody\'s guess), and the file says so', () => {
    const text = `${state(aliceEntry)}${state(bobEntry)}`;
    const parsed = parseStateFile(text, 'state.yaml');
    expect(parsed.entries).toEqual([]);
    expect(parsed.problems).toEqual([expect.objectContaining({ path: 'approvals', message: '"approvals" appears more than once', hint: 'merge the lists into one' })]);
  });
});

describe('YAML tricks in the state file', () => {
  const laughs = [
    'lol: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
    ...'bcdefghi'.split('').map((k, i) => `${k}: &${k} [${Array(9).fill(`*${'abcdefghi'[i]}`).join(', ')}]`),
  ].join('\n');

  it('an alias bomb beside the approvals is never expanded: the keys are reported, the valid entries count', () => {
    const text = `${laughs}\n${state(aliceEntry, bobEntry)}`;
    const started = Date.now();
    const parsed = parseStateFile(text, 'state.yaml');
    expect(Date.now() - started).toBeLessThan(2000);
    expect(parsed.problems.map((p) => `${p.line}:${p.col}: ${p.message}`)).toEqual([
      '1:1: unknown key "lol"',
      ...'bcdefghi'.split('').map((k, i) => `${i + 2}:1: unknown key "${k}"`),
    ]);
    expect(evaluate(text).valid.map((v) => v.signer)).toEqual(['alice@example.com', 'bob@example.com']);
  });

  it('aliases inside entries are refused: as a field, as a whole entry, as the list', () => {
    const anchored = aliceEntry.replace(`commit: ${COMMIT}`, `commit: &c ${COMMIT}`);
    const text = state(anchored, raw('environment: production', 'commit: *c', `expires: ${EXPIRES}`, 'signer: x', `signature: ${fakeSignature(1)}`), '  - *c\n');
    const result = evaluate(text);
    expect(result.valid.map((v) => v.signer)).toEqual(['alice@example.com']);
    expect(result.rejected.map((r) => [r.reason, r.message])).toEqual([
      ['malformed', expect.stringContaining('commit: aliases are not allowed in approvals')],
      ['malformed', expect.stringContaining('the entry is not a mapping')],
    ]);
    const list = parseStateFile(`x: &l\n${aliceEntry}approvals: *l\n`, 'state.yaml');
    expect(list.entries).toEqual([]);
    expect(list.problems.map((p) => p.message)).toEqual(['unknown key "x"', 'must be a list of entries']);
  });

  it('a merge key (<<) is no YAML feature here: the entry is malformed', () => {
    const text = `base: &base\n  environment: production\n  commit: ${COMMIT}\n${state(aliceEntry, raw('<<: *base', `expires: ${EXPIRES}`, 'signer: x', `signature: ${fakeSignature(1)}`))}`;
    const result = evaluate(text);
    expect(result.valid).toHaveLength(1);
    expect(result.rejected.map((r) => r.message)).toEqual([expect.stringMatching(/unknown key "<<".*missing required key "environment"/)]);
  });

  it('deep nesting is refused before parsing, with the line', () => {
    const parsed = parseStateFile(`${state(aliceEntry)}  - ${'['.repeat(50_000)}${']'.repeat(50_000)}\n`, 'state.yaml');
    expect(parsed.entries).toEqual([]);
    expect(parsed.problems).toEqual([expect.objectContaining({ line: lineOf(state(aliceEntry), '\n', state(aliceEntry).length - 1) + 1, message: expect.stringMatching(/nest 50000 deep here; a state file nests at most 32 deep/) })]);
  });
});

describe('a state file that is not a mapping of lists', () => {
  it.each([
    { name: 'a list at the top', text: () => aliceEntry, problem: { line: 1, col: 3, path: '', message: 'the state file must be a YAML mapping with an `approvals:` list' } },
    { name: 'a scalar', text: () => 'approved\n', problem: { line: 1, col: 1, path: '', message: 'the state file must be a YAML mapping with an `approvals:` list' } },
    { name: 'approvals a mapping', text: () => 'approvals:\n  production: yes\n', problem: { line: 2, col: 3, path: 'approvals', message: 'must be a list of entries' } },
    { name: 'approvals a string', text: () => 'approvals: all of them\n', problem: { line: 1, col: 12, path: 'approvals', message: 'must be a list of entries' } },
    { name: 'a misspelled approvals key', text: () => `aprovals:\n${aliceEntry}`, problem: { line: 1, col: 1, path: 'aprovals', message: 'unknown key "aprovals"', hint: 'did you mean "approvals"?' } },
    { name: 'freezes not a list', text: () => 'freezes: now\n', problem: { line: 1, col: 1, path: 'freezes', message: 'must be a list' } },
    { name: 'not YAML', text: () => `approvals:\n${aliceEntry}  - { environment: production\n`, problem: { path: '', hint: 'fix the YAML syntax here; until then no approval in this file counts' } },
  ])('$name: no entries, one problem with where it is', ({ text, problem }) => {
    const parsed = parseStateFile(text(), 'state.yaml');
    expect(parsed.entries).toEqual([]);
    expect(parsed.problems).toEqual([expect.objectContaining({ severity: 'error', file: 'state.yaml', ...problem })]);
  });
});
