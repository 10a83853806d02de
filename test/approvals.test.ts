import { createHash, generateKeyPairSync } from 'node:crypto';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { approveCommit, formatExpires, type ApproveOptions } from '../src/approvals/approve.js';
import { approvalsByCommit, evaluateApprovals, type ApprovalEvaluation, type EvaluateInput, type RejectReason } from '../src/approvals/evaluate.js';
import { approvalMessage, fingerprint, parsePrivateKey, publicKeyLine, signSshsig, verifySshsig } from '../src/approvals/sshsig.js';
import { MAX_SIGNATURE_BYTES, parseStateFile, STATE_FILE } from '../src/approvals/state.js';
import { CascadeError } from '../src/errors.js';
import { generateKey, runOk, sshSign, sshSignFile, sshVerify, type TestKey } from './helpers/ssh.js';
import { cleanupTmpDirs, makeTmpDir } from './helpers/tmp.js';

const COMMIT_A = '0123456789abcdef0123456789abcdef01234567';
const COMMIT_B = 'fedcba9876543210fedcba9876543210fedcba98';
const NOW = Date.parse('2026-11-24T18:00:00Z');
const EXPIRES = '2026-11-25T18:00:00Z';
const EXPIRES_AT = Date.parse(EXPIRES);

let dir: string;
let alice: TestKey; // ed25519
let bob: TestKey; // ecdsa P-256
let carol: TestKey; // rsa
let mallory: TestKey; // ed25519, listed nowhere
let dave: TestKey; // ed25519 behind the passphrase "secret"
let interop: { name: string; key: TestKey }[];
let SIGNERS: string[];

beforeAll(async () => {
  dir = await makeTmpDir('approvals');
  [alice, bob, carol, mallory, dave] = await Promise.all([
    generateKey(dir, 'alice', { type: 'ed25519', comment: 'alice@example.com' }),
    generateKey(dir, 'bob', { type: 'ecdsa', bits: 256, comment: 'bob@example.com' }),
    generateKey(dir, 'carol', { type: 'rsa', bits: 2048, comment: 'carol@example.com' }),
    generateKey(dir, 'mallory', { type: 'ed25519', comment: 'mallory@example.com' }),
    generateKey(dir, 'dave', { type: 'ed25519', comment: 'dave@example.com', passphrase: 'secret' }),
  ]);
  const [p384, p521] = await Promise.all([
    generateKey(dir, 'erin384', { type: 'ecdsa', bits: 384, comment: 'erin@example.com' }),
    generateKey(dir, 'erin521', { type: 'ecdsa', bits: 521, comment: 'erin@example.com' }),
  ]);
  interop = [
    { name: 'ed25519', key: alice },
    { name: 'ecdsa-sha2-nistp256', key: bob },
    { name: 'ecdsa-sha2-nistp384', key: p384! },
    { name: 'ecdsa-sha2-nistp521', key: p521! },
    { name: 'rsa (rsa-sha2-512)', key: carol },
  ];
  SIGNERS = [`alice@example.com ${alice.publicKey}`, `bob@example.com ${bob.publicKey}`, `carol@example.com ${carol.publicKey}`, `dave@example.com ${dave.publicKey}`];
});

afterAll(async () => {
  await cleanupTmpDirs();
});

// ---------------------------------------------------------------------------------------------
// helpers

interface Fields {
  environment: string;
  commit: string;
  expires: string;
  signer: string;
}

const base = (over: Partial<Fields> = {}): Fields => ({ environment: 'production', commit: COMMIT_A, expires: EXPIRES, signer: 'alice@example.com', ...over });

/** Signs `signed` (default: the written fields) with ssh-keygen, or with signSshsig when `via` is 'node'. */
async function signature(key: TestKey, signed: Fields, opts: { via?: 'ssh-keygen' | 'node'; namespace?: string } = {}): Promise<string> {
  const message = approvalMessage(signed);
  if (opts.via === 'node') return signSshsig(message, await readFile(key.file, 'utf8'), opts.namespace);
  return sshSign(dir, key.file, message, { namespace: opts.namespace ?? 'cascade-sync' });
}

/** One `approvals:` list item in the layout cascade-sync approve writes. */
function entryYaml(fields: Fields, sig: string): string {
  const sigLines = sig.trimEnd().split('\n').map((l) => `      ${l}`).join('\n');
  return [
    `  - environment: ${fields.environment}`,
    `    commit: ${fields.commit}`,
    `    expires: ${fields.expires}`,
    `    signer: ${fields.signer}`,
    `    signature: |`,
    sigLines,
    '',
  ].join('\n');
}

/** A signed entry: `written` are the fields in the file, `signed` (default: the same) the ones signed. */
async function entry(key: TestKey, written: Fields, opts: { signed?: Fields; via?: 'ssh-keygen' | 'node'; namespace?: string } = {}): Promise<string> {
  return entryYaml(written, await signature(key, opts.signed ?? written, opts));
}

const state = (...entries: string[]): string => `approvals:\n${entries.join('')}`;

function evaluate(committedText: string, over: Partial<EvaluateInput> & { workingText?: string } = {}): ApprovalEvaluation {
  const { workingText, ...rest } = over;
  return evaluateApprovals({
    environment: 'production',
    approvalEnvironments: ['production'],
    signers: SIGNERS,
    committed: parseStateFile(committedText, 'committed.yaml').entries,
    working: parseStateFile(workingText ?? committedText, 'working.yaml').entries,
    classifyCommit: () => 'eligible',
    now: NOW,
    ...rest,
  });
}

const reasons = (e: ApprovalEvaluation): RejectReason[] => e.rejected.map((r) => r.reason);

async function cascadeError(p: Promise<unknown>): Promise<CascadeError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof CascadeError) return err;
    throw err;
  }
  throw new Error('expected a CascadeError, but the call succeeded');
}

async function exists(file: string): Promise<boolean> {
  return stat(file).then(
    () => true,
    () => false,
  );
}

/** The parts of an SSHSIG blob (PROTOCOL.sshsig), to build forgeries from real signatures. */
function sshsigParts(armored: string): { publicKey: Buffer; namespace: Buffer; reserved: Buffer; hash: Buffer; signature: Buffer } {
  const blob = Buffer.from(armored.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, ''), 'base64');
  let off = 10; // "SSHSIG" and the version
  const next = () => {
    const len = blob.readUInt32BE(off);
    const out = blob.subarray(off + 4, off + 4 + len);
    off += 4 + len;
    return out;
  };
  return { publicKey: next(), namespace: next(), reserved: next(), hash: next(), signature: next() };
}

function sshsigArmor(parts: ReturnType<typeof sshsigParts>): string {
  const str = (b: Buffer) => Buffer.concat([Buffer.from([0, 0, 0, 0].map((_, i) => (b.length >>> (8 * (3 - i))) & 0xff)), b]);
  const blob = Buffer.concat([Buffer.from('SSHSIG'), Buffer.from([0, 0, 0, 1]), str(parts.publicKey), str(parts.namespace), str(parts.reserved), str(parts.hash), str(parts.signature)]);
  const lines = blob.toString('base64').match(/.{1,70}/g)!;
  return `-----BEGIN SSH SIGNATURE-----\n${lines.join('\n')}\n-----END SSH SIGNATURE-----\n`;
}

const keyBlob = (publicKey: string): Buffer => Buffer.from(publicKey.split(' ')[1]!, 'base64');

// ---------------------------------------------------------------------------------------------

describe('the signed message', () => {
  it('is exactly the four lines of DESIGN.md, each ending in a newline', () => {
    expect(approvalMessage(base())).toBe(`cascade-sync approval v1\nenvironment: production\ncommit: ${COMMIT_A}\nexpires: ${EXPIRES}\n`);
  });
});

describe('SSHSIG interoperability with ssh-keygen', () => {
  it('verifies what ssh-keygen -Y sign writes, for every supported key type, and reports the key ssh-keygen reports', async () => {
    for (const { name, key } of interop) {
      const message = approvalMessage(base());
      const sig = await sshSign(dir, key.file, message);
      const result = verifySshsig(message, sig);
      expect(result, name).toMatchObject({ ok: true });
      if (!result.ok) continue;
      expect(publicKeyLine(result.publicKey), name).toBe(key.publicKey);
      expect(fingerprint(result.publicKey.blob), name).toBe(key.fingerprint);
    }
  });

  it('writes signatures that ssh-keygen -Y verify accepts, in the armor ssh-keygen writes', async () => {
    for (const { name, key } of interop) {
      const message = approvalMessage(base({ signer: 'erin@example.com' }));
      const sig = signSshsig(message, await readFile(key.file, 'utf8'));
      expect(sig, name).toMatch(/^-----BEGIN SSH SIGNATURE-----\n([A-Za-z0-9+/=]{70}\n)+[A-Za-z0-9+/=]{1,70}\n-----END SSH SIGNATURE-----\n$/);
      const r = await sshVerify(dir, { allowedSigners: [`erin@example.com ${key.publicKey}`], principal: 'erin@example.com', signature: sig, message });
      expect({ name, code: r.code, out: r.stdout + r.stderr }).toMatchObject({ code: 0, out: expect.stringContaining('Good "cascade-sync" signature for erin@example.com') });
    }
  });

  it('signs with PEM ed25519 keys (node PKCS#8 and openssl genpkey) so that ssh-keygen verifies', async () => {
    const nodePem = generateKeyPairSync('ed25519').privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
    const opensslFile = path.join(dir, 'openssl-ed25519.pem');
    await runOk('openssl', ['genpkey', '-algorithm', 'ed25519', '-out', opensslFile]);
    for (const [name, pem] of [['node', nodePem], ['openssl', await readFile(opensslFile, 'utf8')]] as const) {
      const parsed = parsePrivateKey(pem);
      expect(parsed.ok, name).toBe(true);
      if (!parsed.ok) continue;
      const message = approvalMessage(base());
      const sig = signSshsig(message, parsed.key);
      const pub = publicKeyLine({ type: parsed.key.type, blob: parsed.key.publicBlob });
      const r = await sshVerify(dir, { allowedSigners: [`alice@example.com ${pub}`], principal: 'alice@example.com', signature: sig, message });
      expect(r.code, `${name}: ${r.stderr}`).toBe(0);
    }
  });

  it('refuses an altered message, as ssh-keygen does', async () => {
    const sig = await sshSign(dir, alice.file, approvalMessage(base()));
    const altered = approvalMessage(base({ commit: COMMIT_B }));
    expect(verifySshsig(altered, sig)).toEqual({ ok: false, reason: expect.stringMatching(/does not match the message/) });
    const oracle = await sshVerify(dir, { allowedSigners: [`alice@example.com ${alice.publicKey}`], principal: 'alice@example.com', signature: sig, message: altered });
    expect(oracle.code).not.toBe(0);
  });

  it('refuses forged signatures: a flipped signature bit, or another key put in front of a real signature', async () => {
    const message = approvalMessage(base());
    const parts = sshsigParts(await sshSign(dir, alice.file, message));
    const flipped = Buffer.from(parts.signature);
    flipped[flipped.length - 1]! ^= 1;
    expect(verifySshsig(message, sshsigArmor({ ...parts, signature: flipped }))).toMatchObject({ ok: false, reason: expect.stringMatching(/does not match/) });
    const swapped = sshsigArmor({ ...parts, publicKey: keyBlob(mallory.publicKey) });
    expect(verifySshsig(message, swapped)).toMatchObject({ ok: false });
    // The rebuild itself is faithful: unchanged parts still verify.
    expect(verifySshsig(message, sshsigArmor(parts))).toMatchObject({ ok: true });
  });

  it('refuses a signature made in another namespace', async () => {
    const message = approvalMessage(base());
    const sig = await sshSign(dir, alice.file, message, { namespace: 'git' });
    expect(verifySshsig(message, sig)).toEqual({ ok: false, reason: expect.stringMatching(/namespace "git", not "cascade-sync"/) });
  });

  it('returns a reason for garbage instead of throwing', () => {
    for (const junk of ['', 'hello', '-----BEGIN SSH SIGNATURE-----\n!!!\n-----END SSH SIGNATURE-----', '-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----', 'x'.repeat(100_000)]) {
      expect(verifySshsig('m', junk)).toMatchObject({ ok: false, reason: expect.any(String) });
    }
  });
});

describe('parseStateFile: hostile input', () => {
  it('rejects each malformed entry with what is wrong and where, and keeps the well-formed ones', async () => {
    const good = await entry(alice, base());
    const text = state(
      good,
      '  - environment: production\n    commit: nothex\n    expires: tomorrow\n    signer: alice@example.com\n    signature: nope\n',
      `  - environment: production\n    commit: ${COMMIT_A}\n    commit: ${COMMIT_B}\n    expires: ${EXPIRES}\n    signer: x\n    signature: |\n      -----BEGIN SSH SIGNATURE-----\n      AAAA\n      -----END SSH SIGNATURE-----\n`,
      `  - environment: production\n    commit: ${COMMIT_A}\n    expires: ${EXPIRES}\n    signer: x\n    signature: |\n      -----BEGIN SSH SIGNATURE-----\n${`      ${'A'.repeat(70)}\n`.repeat(130)}      -----END SSH SIGNATURE-----\n`,
      '  - just a string\n',
      `  - environment: production\n    color: blue\n`,
    );
    const parsed = parseStateFile(text, 'state.yaml');
    expect(parsed.problems).toEqual([]);
    const [ok, shapes, dupKey, oversize, scalar, partial] = parsed.entries;
    expect(ok).toMatchObject({ ok: true, line: 2, approval: { signer: 'alice@example.com' } });
    const messages = (e: typeof ok) => (e && !e.ok ? e.problems.map((p) => `${p.line}: ${p.message}`) : []);
    expect(messages(shapes)).toEqual([
      expect.stringMatching(/^14: commit "nothex" is not a full 40-digit/),
      expect.stringMatching(/^15: expires "tomorrow" is not an RFC 3339/),
      expect.stringMatching(/^17: signature is not an armored SSH signature/),
    ]);
    expect(messages(dupKey)).toEqual([expect.stringMatching(/^20: "commit" appears more than once/)]);
    expect(messages(oversize)).toEqual([expect.stringMatching(new RegExp(`signature is \\d+ bytes; at most ${MAX_SIGNATURE_BYTES}`))]);
    expect(messages(scalar)).toEqual([expect.stringMatching(/not a mapping/)]);
    expect(messages(partial)).toEqual([expect.stringMatching(/unknown key "color"/), ...['commit', 'expires', 'signer', 'signature'].map((k) => expect.stringContaining(`missing required key "${k}"`))]);
  });

  it('refuses deep nesting up front instead of overflowing the stack', () => {
    const cases: [string, number][] = [
      [`approvals:\n  ${'- '.repeat(5000)}x\n`, 2],
      [`approvals: ${'['.repeat(3000)}${']'.repeat(3000)}\n`, 1],
      [`approvals:\n  - ${'&a - !t ? '.repeat(3000)}x\n`, 2],
      [`approvals:\n${Array.from({ length: 1000 }, (_, i) => `${' '.repeat(i + 1)}- \n`).join('')}`, 17],
    ];
    for (const [text, line] of cases) {
      const parsed = parseStateFile(text, 'state.yaml');
      expect(parsed.entries).toEqual([]);
      expect(parsed.problems).toEqual([expect.objectContaining({ line, message: expect.stringMatching(/nest/) })]);
    }
  });

  it('reads nothing from a file with a YAML error, two approvals lists or too many bytes, and says why', async () => {
    const a = await entry(alice, base());
    const cases: [string, RegExp][] = [
      [`approvals:\n${a}  - environment: production\n   commit: [\n`, /./],
      [`approvals:\n${a}approvals:\n${a}`, /"approvals" appears more than once/],
      [`approvals:\n${'# padding\n'.repeat(110_000)}`, /is at most 1048576 bytes/],
    ];
    for (const [text, message] of cases) {
      const parsed = parseStateFile(text, 'state.yaml');
      expect(parsed.entries).toEqual([]);
      expect(parsed.problems.map((p) => p.message)).toContainEqual(expect.stringMatching(message));
    }
  });

  it('reads an empty file, `approvals:` and `approvals: ~` as no approvals, without problems', () => {
    for (const text of ['', '# nothing yet\n', 'approvals:\n', 'approvals: ~\n', 'approvals: []\nfreezes: []\n']) {
      expect(parseStateFile(text, 'state.yaml'), JSON.stringify(text)).toEqual({ entries: [], problems: [] });
    }
  });
});

describe('evaluateApprovals', () => {
  it('counts a committed entry signed by a listed key, with ssh-keygen’s fingerprint and the signature hash as id', async () => {
    const text = state(await entry(alice, base()));
    const result = evaluate(text);
    expect(result.rejected).toEqual([]);
    const sig = (parseStateFile(text, 'x').entries[0] as { approval: { signature: string } }).approval.signature;
    expect(result.valid).toEqual([
      {
        environment: 'production',
        commit: COMMIT_A,
        signer: 'alice@example.com',
        expires: EXPIRES,
        expiresAt: EXPIRES_AT,
        fingerprint: alice.fingerprint,
        id: createHash('sha256').update(sig.trim()).digest('hex'),
        line: 2,
      },
    ]);
  });

  interface Row {
    name: string;
    entry: () => Promise<string>;
    /** A function when it needs the keys, which exist only once beforeAll ran. */
    input?: Partial<EvaluateInput> | (() => Partial<EvaluateInput>);
    reason?: RejectReason;
    message?: RegExp;
    valid?: number;
    used?: number;
  }
  const rows: Row[] = [
    { name: 'rsa key, signed in TypeScript', entry: () => entry(carol, base({ signer: 'carol@example.com' }), { via: 'node' }), valid: 1 },
    { name: 'ecdsa key, signed by ssh-keygen', entry: () => entry(bob, base({ signer: 'bob@example.com' })), valid: 1 },
    { name: 'commit edited after signing', entry: () => entry(alice, base({ commit: COMMIT_B }), { signed: base() }), reason: 'bad-signature', message: /does not match the message/ },
    { name: 'expiry extended after signing', entry: () => entry(alice, base({ expires: '2027-11-25T18:00:00Z' }), { signed: base() }), reason: 'bad-signature' },
    { name: 'environment edited after signing', entry: () => entry(alice, base(), { signed: base({ environment: 'staging' }) }), reason: 'bad-signature' },
    { name: 'signed in the git namespace', entry: () => entry(alice, base(), { namespace: 'git' }), reason: 'bad-signature', message: /namespace "git"/ },
    { name: 'signer listed nowhere', entry: () => entry(mallory, base({ signer: 'mallory@example.com' })), reason: 'unknown-signer', message: /no line of approvals.signers .* mallory@example.com/ },
    { name: 'listed principal, unlisted key', entry: () => entry(mallory, base()), reason: 'unknown-signer', message: /alice@example.com is in approvals.signers, but not with this signature's key/ },
    { name: "bob's key claiming to be alice", entry: () => entry(bob, base()), reason: 'unknown-signer', message: /the key SHA256:\S+ is listed in approvals.signers for bob@example.com, not for alice@example.com/ },
    { name: 'expired', entry: () => entry(alice, base()), input: { now: EXPIRES_AT + 1000 }, reason: 'expired', message: /expired at 2026-11-25T18:00:00Z/ },
    { name: 'at its expiry time it still counts', entry: () => entry(alice, base()), input: { now: EXPIRES_AT }, valid: 1 },
    { name: 'commit not on the from-branch', entry: () => entry(alice, base()), input: { classifyCommit: () => 'unknown' }, reason: 'wrong-commit', message: /not on the branch/ },
    { name: 'commit already promoted (even expired): used', entry: () => entry(alice, base()), input: { classifyCommit: () => 'promoted', now: EXPIRES_AT + 1000 }, used: 1 },
    { name: 'environment without approvals', entry: () => entry(alice, base({ environment: 'prodution' })), reason: 'wrong-environment', message: /"prodution", which does not take approvals.*did you mean production/ },
    { name: 'another approval environment: ignored here', entry: () => entry(alice, base({ environment: 'audit' })), input: { approvalEnvironments: ['production', 'audit'] } },
    {
      name: 'signers line restricted to other namespaces',
      entry: () => entry(alice, base()),
      input: () => ({ signers: [`alice@example.com namespaces="git" ${alice.publicKey}`] }),
      reason: 'unknown-signer',
      message: /only namespaces "git"/,
    },
  ];
  it.each(rows)('$name', async (row) => {
    const result = evaluate(state(await row.entry()), typeof row.input === 'function' ? row.input() : row.input);
    expect(reasons(result)).toEqual(row.reason ? [row.reason] : []);
    if (row.message) expect(result.rejected[0]!.message).toMatch(row.message);
    expect(result.rejected.every((r) => r.line === 2 && r.commit !== undefined)).toBe(true);
    expect(result.valid).toHaveLength(row.valid ?? 0);
    expect(result.used).toHaveLength(row.used ?? 0);
  });

  it('agrees with ssh-keygen about a signers line restricted to other namespaces', async () => {
    const message = approvalMessage(base());
    const r = await sshVerify(dir, { allowedSigners: [`alice@example.com namespaces="git" ${alice.publicKey}`], principal: 'alice@example.com', signature: await signature(alice, base()), message });
    expect(r.code).not.toBe(0);
  });

  it('counts an entry for another approval environment in that environment', async () => {
    const result = evaluate(state(await entry(alice, base({ environment: 'audit' }))), { environment: 'audit', approvalEnvironments: ['production', 'audit'] });
    expect(result.valid.map((v) => v.environment)).toEqual(['audit']);
  });

  it('rejects an entry only in the working copy as not-committed; committed entries count even if deleted there', async () => {
    const a = await entry(alice, base());
    const b = await entry(bob, base({ signer: 'bob@example.com' }));
    const result = evaluate(state(a), { workingText: state(b) });
    expect(result.valid.map((v) => v.signer)).toEqual(['alice@example.com']);
    expect(result.rejected).toEqual([expect.objectContaining({ reason: 'not-committed', signer: 'bob@example.com', file: 'working.yaml', line: 2, message: expect.stringMatching(/only in the working copy/) })]);
    // The same entry on both sides is committed, whatever its position.
    expect(reasons(evaluate(state(b, a), { workingText: state(a, b) }))).toEqual([]);
    // An uncommitted entry with a worse problem reports that problem.
    expect(reasons(evaluate('', { workingText: state(await entry(mallory, base({ signer: 'mallory@example.com' }))) }))).toEqual(['unknown-signer']);
  });

  it('counts each signer once per commit: the same principal twice, or the same key under two principals', async () => {
    const text = state(
      await entry(alice, base()),
      await entry(alice, base({ expires: '2026-11-26T18:00:00Z' })),
      await entry(bob, base({ signer: 'bob@example.com' })),
      await entry(alice, base({ signer: 'alice.laptop@example.com' })),
      await entry(alice, base({ commit: COMMIT_B })),
    );
    const lines = parseStateFile(text, 'x').entries.map((e) => e.line);
    const result = evaluate(text, { signers: [...SIGNERS, `alice.laptop@example.com ${alice.publicKey}`] });
    expect(result.valid.map((v) => [v.commit, v.signer])).toEqual([
      [COMMIT_A, 'alice@example.com'],
      [COMMIT_A, 'bob@example.com'],
      [COMMIT_B, 'alice@example.com'],
    ]);
    expect(result.rejected.map((r) => [r.reason, r.line])).toEqual([
      ['duplicate-signer', lines[1]],
      ['duplicate-signer', lines[3]],
    ]);
    expect(result.rejected[0]!.message).toMatch(/alice@example.com already approved commit .* at line 2/);
    expect(result.rejected[1]!.message).toContain(`the key ${alice.fingerprint} already approved (as alice@example.com)`);
    const byCommit = approvalsByCommit(result.valid);
    expect(byCommit.get(COMMIT_A)?.map((v) => v.signer)).toEqual(['alice@example.com', 'bob@example.com']);
    expect(byCommit.get(COMMIT_B)).toHaveLength(1);
    // Fed twice (a caller concatenating lists), approvalsByCommit still counts distinct signers.
    expect(approvalsByCommit([...result.valid, ...result.valid]).get(COMMIT_A)).toHaveLength(2);
  });

  it('gives every entry of a hostile state file a reason and still counts the valid ones', async () => {
    const a = await entry(alice, base());
    const text = state(
      a,
      '  - environment: production\n    commit: NOT-A-COMMIT\n    expires: soon\n    signer: alice@example.com\n',
      `  - environment: production\n    commit: ${COMMIT_A}\n    expires: ${EXPIRES}\n    signer: carol@example.com\n    signature: |\n      -----BEGIN SSH SIGNATURE-----\n${`      ${'A'.repeat(70)}\n`.repeat(200)}      -----END SSH SIGNATURE-----\n`,
      `  - environment: production\n    commit: ${COMMIT_A}\n    expires: ${EXPIRES}\n    signer: carol@example.com\n    signature: |\n      -----BEGIN SSH SIGNATURE-----\n      ${'A'.repeat(64)}\n      -----END SSH SIGNATURE-----\n`,
      '  - 42\n',
      a,
      await entry(bob, base({ signer: 'bob@example.com' })),
    );
    const result = evaluate(text);
    expect(result.valid.map((v) => v.signer)).toEqual(['alice@example.com', 'bob@example.com']);
    expect(result.rejected.map((r) => r.reason)).toEqual(['malformed', 'malformed', 'bad-signature', 'malformed', 'duplicate-signer']);
    expect(result.rejected[0]!.message).toMatch(/commit "NOT-A-COMMIT".*expires "soon".*missing required key "signature"/);
    expect(result.rejected[1]!.message).toMatch(/signature is \d+ bytes/);
    expect(new Set(result.rejected.map((r) => r.line)).size).toBe(5);
  });

  it('reports unusable signers lines and still uses the others', async () => {
    const result = evaluate(state(await entry(alice, base())), { signers: ['# comment', 'bob@example.com ssh-ed25519 not-base64!', `alice@example.com ${alice.publicKey}`] });
    expect(result.valid).toHaveLength(1);
    expect(result.signerProblems).toEqual([{ index: 1, message: expect.stringMatching(/^signers\[1\]: /) }]);
  });
});

describe('approveCommit', () => {
  const opts = (sandboxDir: string, over: Partial<ApproveOptions> = {}): ApproveOptions => ({
    sandboxDir,
    environment: 'production',
    commit: COMMIT_A,
    keyFile: alice.file,
    expiresInMs: 24 * 3_600_000,
    now: Date.parse('2026-11-24T18:00:00.789Z'),
    ...over,
  });
  const evaluateSandbox = async (sandbox: string) => {
    const text = await readFile(path.join(sandbox, STATE_FILE), 'utf8');
    return evaluate(text);
  };

  it('creates a missing state file with an entry that ssh-keygen verifies and evaluateApprovals counts', async () => {
    const sandbox = await makeTmpDir('approve-new');
    const result = await approveCommit(opts(sandbox));
    expect(result.stateFile).toBe(path.join(sandbox, STATE_FILE));
    expect(result.entry).toMatchObject({ environment: 'production', commit: COMMIT_A, expires: '2026-11-25T18:00:00Z', signer: 'alice@example.com' });
    expect(result.entryText).toMatch(new RegExp(`^- environment: production\\n  commit: ${COMMIT_A}\\n  expires: 2026-11-25T18:00:00Z\\n  signer: alice@example.com\\n  signature: \\|\\n    -----BEGIN SSH SIGNATURE-----\\n`));
    expect(result.message).toContain(alice.fingerprint);
    const parsed = parseStateFile(await readFile(result.stateFile, 'utf8'), result.stateFile);
    expect(parsed.problems).toEqual([]);
    const written = parsed.entries[0];
    if (!written?.ok) throw new Error('the written entry does not parse');
    const r = await sshVerify(dir, { allowedSigners: [`alice@example.com ${alice.publicKey}`], principal: 'alice@example.com', signature: written.approval.signature, message: approvalMessage(written.approval) });
    expect(r.code, r.stderr).toBe(0);
    expect((await evaluateSandbox(sandbox)).valid).toEqual([expect.objectContaining({ signer: 'alice@example.com', fingerprint: alice.fingerprint, line: 2 })]);
    expect(await exists(`${result.stateFile}.lock`)).toBe(false);
  });

  it('appends to an existing state file, keeping its entries and comments', async () => {
    const sandbox = await makeTmpDir('approve-existing');
    const bobEntry = await entry(bob, base({ signer: 'bob@example.com' }));
    const bobWithNote = bobEntry.replace('signer: bob@example.com', 'signer: bob@example.com # inline note');
    const original = `# Approvals for production. Do not edit signatures by hand.\napprovals:\n  # bob approved on Monday\n${bobWithNote}# trailing comment\n`;
    await writeFile(path.join(sandbox, STATE_FILE), original);
    await approveCommit(opts(sandbox));
    const after = await readFile(path.join(sandbox, STATE_FILE), 'utf8');
    for (const line of ['# Approvals for production. Do not edit signatures by hand.', '  # bob approved on Monday', '# trailing comment']) expect(after).toContain(line);
    expect(after).toContain(bobWithNote);
    const result = await evaluateSandbox(sandbox);
    expect(result.valid.map((v) => v.signer)).toEqual(['bob@example.com', 'alice@example.com']);
    expect(result.rejected).toEqual([]);
  });

  it('keeps the existing text byte for byte when it ends with an entry, in either list indentation', async () => {
    const bobEntry = await entry(bob, base({ signer: 'bob@example.com' }));
    const unindented = bobEntry.split('\n').map((l) => l.slice(2)).join('\n');
    for (const original of [`# header\napprovals:\n${bobEntry}`, `approvals:\n${unindented}`]) {
      const sandbox = await makeTmpDir('approve-bytes');
      await writeFile(path.join(sandbox, STATE_FILE), original);
      await approveCommit(opts(sandbox));
      const after = await readFile(path.join(sandbox, STATE_FILE), 'utf8');
      expect(after.startsWith(original), after).toBe(true);
      expect((await evaluateSandbox(sandbox)).valid).toHaveLength(2);
    }
  });

  it('appends to a comment-only file and to an empty flow list', async () => {
    for (const original of ['# approvals go here\n', 'approvals: [] # none yet\n']) {
      const sandbox = await makeTmpDir('approve-empty');
      await writeFile(path.join(sandbox, STATE_FILE), original);
      await approveCommit(opts(sandbox));
      const after = await readFile(path.join(sandbox, STATE_FILE), 'utf8');
      expect(after).toContain(original.includes('here') ? '# approvals go here' : '# none yet');
      expect((await evaluateSandbox(sandbox)).valid, original).toHaveLength(1);
    }
  });

  it('never overwrites a state file that is not valid YAML or not a state file', async () => {
    for (const original of ['approvals:\n  - environment: production\n   commit: [\n', 'approvals: "all of them"\n', '- a list\n']) {
      const sandbox = await makeTmpDir('approve-invalid');
      await writeFile(path.join(sandbox, STATE_FILE), original);
      const err = await cascadeError(approveCommit(opts(sandbox)));
      expect(err.reason, original).toBe('StateFileInvalid');
      expect(err.message).toContain('not changed');
      expect(await readFile(path.join(sandbox, STATE_FILE), 'utf8')).toBe(original);
    }
  });

  it('signs with a PEM ed25519 key, asking for --signer when the key has no comment', async () => {
    const sandbox = await makeTmpDir('approve-pem');
    const { privateKey } = generateKeyPairSync('ed25519');
    const keyFile = path.join(sandbox, 'key.pem');
    await writeFile(keyFile, privateKey.export({ format: 'pem', type: 'pkcs8' }));
    const err = await cascadeError(approveCommit(opts(sandbox, { keyFile })));
    expect(err.reason).toBe('SignerRequired');
    expect(err.hint).toContain('--signer');
    expect(await exists(path.join(sandbox, STATE_FILE))).toBe(false);
    const result = await approveCommit(opts(sandbox, { keyFile, signer: 'pem@example.com' }));
    const parsed = parsePrivateKey(await readFile(keyFile, 'utf8'));
    if (!parsed.ok) throw new Error(parsed.message);
    const pub = publicKeyLine({ type: parsed.key.type, blob: parsed.key.publicBlob });
    const r = await sshVerify(dir, { allowedSigners: [`pem@example.com ${pub}`], principal: 'pem@example.com', signature: result.entry.signature, message: approvalMessage(result.entry) });
    expect(r.code, r.stderr).toBe(0);
  });

  it('takes the signer from the .pub file next to a key without a comment', async () => {
    const sandbox = await makeTmpDir('approve-pub');
    const { privateKey } = generateKeyPairSync('ed25519');
    const keyFile = path.join(sandbox, 'key.pem');
    await writeFile(keyFile, privateKey.export({ format: 'pem', type: 'pkcs8' }));
    const parsed = parsePrivateKey(await readFile(keyFile, 'utf8'));
    if (!parsed.ok) throw new Error(parsed.message);
    await writeFile(`${keyFile}.pub`, `${publicKeyLine({ type: parsed.key.type, blob: parsed.key.publicBlob })} frank@example.com\n`);
    expect((await approveCommit(opts(sandbox, { keyFile }))).entry.signer).toBe('frank@example.com');
  });

  it('refuses a passphrase-protected key with ssh-keygen steps that, followed, give a valid approval', async () => {
    const sandbox = await makeTmpDir('approve-encrypted');
    const err = await cascadeError(approveCommit(opts(sandbox, { keyFile: dave.file })));
    expect(err.reason).toBe('KeyEncrypted');
    expect(err.message).toMatch(/passphrase/);
    expect(err.hint).toContain(`ssh-keygen -Y sign -n cascade-sync -f ${dave.file} `);
    expect(await exists(path.join(sandbox, STATE_FILE))).toBe(false);
    // Follow the hint as a person would: write the four message lines, sign, add the entry.
    const hint = err.hint!;
    const lines = hint.split('\n').map((l) => l.trim());
    const start = lines.indexOf('cascade-sync approval v1');
    const message = lines.slice(start, start + 4).join('\n') + '\n';
    expect(message).toBe(approvalMessage({ environment: 'production', commit: COMMIT_A, expires: '2026-11-25T18:00:00Z' }));
    const msgFile = path.join(sandbox, /write the message file (\S+):/.exec(hint)![1]!);
    await writeFile(msgFile, message);
    const sig = await sshSignFile(sandbox, dave.file, msgFile, { passphrase: 'secret' });
    const signer = /signer: (\S+)/.exec(hint)![1]!;
    expect(signer).toBe('dave@example.com');
    const result = evaluate(state(entryYaml({ environment: 'production', commit: COMMIT_A, expires: '2026-11-25T18:00:00Z', signer }, sig)));
    expect(result.valid).toEqual([expect.objectContaining({ signer: 'dave@example.com', fingerprint: dave.fingerprint })]);
  });

  it('says why a key cannot be used: unsupported type, missing file, public key, not a file', async () => {
    const sandbox = await makeTmpDir('approve-keys');
    const ed448 = path.join(sandbox, 'ed448.pem');
    await writeFile(ed448, generateKeyPairSync('ed448').privateKey.export({ format: 'pem', type: 'pkcs8' }));
    await mkdir(path.join(sandbox, 'a-dir'));
    const cases: [string, string, RegExp][] = [
      [ed448, 'KeyUnsupported', /ed448/],
      [path.join(sandbox, 'missing'), 'KeyUnreadable', /ENOENT/],
      [alice.pubFile, 'KeyUnreadable', /public key/],
      [path.join(sandbox, 'a-dir'), 'KeyUnreadable', /not a regular file/],
    ];
    for (const [keyFile, reason, message] of cases) {
      const err = await cascadeError(approveCommit(opts(sandbox, { keyFile })));
      expect({ keyFile, reason: err.reason, message: err.message }).toMatchObject({ reason, message: expect.stringMatching(message) });
    }
    expect(await exists(path.join(sandbox, STATE_FILE))).toBe(false);
  });

  it('validates the commit, environment, expiry and signer before signing', async () => {
    const sandbox = await makeTmpDir('approve-args');
    const cases: [Partial<ApproveOptions>, string][] = [
      [{ commit: 'abc123' }, 'BadCommit'],
      [{ commit: COMMIT_A.toUpperCase() }, 'BadCommit'],
      [{ environment: 'Production' }, 'BadEnvironment'],
      [{ expiresInMs: 0 }, 'BadExpiry'],
      [{ expiresInMs: Number.NaN }, 'BadExpiry'],
      [{ signer: 'alice\nexpires: never' }, 'BadSigner'],
    ];
    for (const [over, reason] of cases) expect((await cascadeError(approveCommit(opts(sandbox, over)))).reason, JSON.stringify(over)).toBe(reason);
    expect(await exists(path.join(sandbox, STATE_FILE))).toBe(false);
  });

  it('writes expires as RFC 3339 UTC without milliseconds', () => {
    expect(formatExpires(Date.parse('2026-11-25T18:00:00.999Z'))).toBe('2026-11-25T18:00:00Z');
  });
});
