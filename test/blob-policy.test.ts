import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { BlobPolicy } from '../src/security/blob-policy.js';
import { EncryptionKey } from '../src/security/encrypt.js';

const settings = { encrypt: ['.env', 'secrets/**'], maxFileSizeBytes: 1000, allow: [] as string[] };
const key = EncryptionKey.fromBytes(randomBytes(32));
const AWS = 'AKIA' + 'QWERTYUIOPASDFGH';

describe('BlobPolicy', () => {
  it('encrypts matching paths deterministically, and decrypts them back', () => {
    const p = new BlobPolicy(settings, key);
    const plain = Buffer.from(`AWS=${AWS}\n`);
    const a = p.toGit('.env', plain);
    const b = p.toGit('.env', plain);
    expect(a.ok && b.ok && a.encrypted).toBe(true);
    if (!a.ok || !b.ok) throw new Error('not stored');
    expect(a.blob.equals(b.blob)).toBe(true);
    expect(a.blob.includes(plain)).toBe(false);
    expect(p.fromGit('.env', a.blob).equals(plain)).toBe(true);
    // A secret in an encrypted path is not a finding: it never leaves in plaintext.
    expect(p.toGit('secrets/db.txt', plain).ok).toBe(true);
  });

  it('holds back a matching path without a key, and refuses to write out an encrypted blob it cannot decrypt', () => {
    const p = new BlobPolicy(settings, undefined);
    const r = p.toGit('.env', Buffer.from('A=1\n'));
    expect(r).toMatchObject({ ok: false, held: { why: 'no-key', path: '.env' } });
    const blob = (new BlobPolicy(settings, key).toGit('.env', Buffer.from('A=1\n')) as { blob: Buffer }).blob;
    expect(() => p.fromGit('.env', blob)).toThrow(/no encryption key/);
    const other = new BlobPolicy(settings, EncryptionKey.fromBytes(randomBytes(32)));
    expect(() => other.fromGit('.env', blob)).toThrow();
    const tampered = Buffer.from(blob);
    tampered[tampered.length - 1]! ^= 1;
    expect(() => new BlobPolicy(settings, key).fromGit('.env', tampered)).toThrow(/tamper|authentic|altered/i);
  });

  it('holds back a file with a secret or over the size limit (never naming the secret), unless security.allow accepts it', () => {
    const p = new BlobPolicy(settings, key);
    const r = p.toGit('app/config.py', Buffer.from(`x = 1\nKEY = "${AWS}"\n`));
    expect(r.ok).toBe(false);
    if (r.ok || r.held.why !== 'findings') throw new Error('expected findings');
    expect(r.held.findings[0]).toMatchObject({ path: 'app/config.py', line: 2, rule: 'aws-access-key-id' });
    expect(JSON.stringify(r.held)).not.toContain(AWS);
    const allowed = new BlobPolicy({ ...settings, allow: [r.held.findings[0]!.fingerprint] }, key);
    expect(allowed.toGit('app/config.py', Buffer.from(`x = 1\nKEY = "${AWS}"\n`)).ok).toBe(true);
    expect(p.tooLarge('big.bin', 2000)).toMatchObject({ why: 'findings', path: 'big.bin' });
    expect(p.tooLarge('.env', 2000)).toBeUndefined();
    expect(p.toGit('readme.md', Buffer.from('hello\n'))).toMatchObject({ ok: true, encrypted: false });
    expect(p.fromGit('readme.md', Buffer.from('hello\n')).toString()).toBe('hello\n');
  });
});
