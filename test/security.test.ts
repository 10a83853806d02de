import { createCipheriv, createHash, generateKeyPairSync, hkdfSync, randomBytes, type KeyObject } from 'node:crypto';
import { chmod, lstat, mkdir, readFile, rm, stat, symlink, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { inspect } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CascadeError } from '../src/errors.js';
import { decryptBlob, encryptBlob, EncryptionKey, ENCRYPTED_MAGIC, isEncryptedBlob } from '../src/security/encrypt.js';
import { createKeyFile, defaultKeyFilePath, loadEncryptionKey } from '../src/security/keyfile.js';
import { buildManifest, isIntact, manifestPathFor, readManifest, verifyRelease, writeManifest, type ReleaseManifest } from '../src/security/manifest.js';
import { fileTooLarge, fingerprintOf, looksRandom, makeAllowList, scanFile, shannonEntropy, type Finding, type ScanRule } from '../src/security/scan.js';
import { cleanupTmpDirs, makeTmpDir } from './helpers/tmp.js';

const KEY = Buffer.from(Array.from({ length: 32 }, (_, i) => i + 1));
const OTHER_KEY = Buffer.alloc(32, 7);
const COMMIT = '0123456789abcdef0123456789abcdef01234567';

/** Joins parts, so that this file holds no literal token for a scanner (ours or anyone's) to flag. */
const t = (...parts: string[]) => parts.join('');

afterAll(async () => {
  await cleanupTmpDirs();
});

// ---------------------------------------------------------------------------------------------
describe('encryptBlob / decryptBlob', () => {
  const plaintext = Buffer.from('DB_PASSWORD=hunter2\nAPI_TOKEN=abc\n');

  it('round-trips empty, small and large plaintexts', () => {
    for (const p of [Buffer.alloc(0), plaintext, randomBytes(1024 * 1024 + 3)]) {
      const blob = encryptBlob(KEY, p);
      expect(isEncryptedBlob(blob)).toBe(true);
      expect(blob.length).toBe(17 + 12 + p.length + 16);
      const r = decryptBlob(KEY, blob);
      expect(r.ok && r.plaintext.equals(p)).toBe(true);
    }
  });

  it('is deterministic for the same key and plaintext, and differs otherwise', () => {
    const a = encryptBlob(KEY, plaintext);
    expect(encryptBlob(EncryptionKey.fromBytes(KEY), Buffer.from(plaintext)).equals(a)).toBe(true);
    expect(encryptBlob(KEY, Buffer.from('DB_PASSWORD=hunter3\nAPI_TOKEN=abc\n')).equals(a)).toBe(false);
    expect(encryptBlob(OTHER_KEY, plaintext).equals(a)).toBe(false);
    // Different plaintexts get different nonces (the nonce is the plaintext's HMAC).
    expect(encryptBlob(KEY, Buffer.from('x')).subarray(17, 29).equals(a.subarray(17, 29))).toBe(false);
  });

  it('keeps the version-1 format stable (known answer)', () => {
    const blob = encryptBlob(KEY, Buffer.from('DB_PASSWORD=hunter2\n'));
    expect(blob.subarray(0, 17).toString('latin1')).toBe('CASCADE-SYNC-ENC\x01');
    expect(blob.toString('hex')).toBe(KNOWN_ANSWER);
  });

  it('holds no byte sequence of the plaintext', () => {
    const secret = Buffer.from(`SECRET=${'s3cr3t'.repeat(20)}\n`);
    const blob = encryptBlob(KEY, secret);
    expect(blob.includes(secret.subarray(0, 8))).toBe(false);
    expect(blob.includes(Buffer.from('s3cr3t'))).toBe(false);
  });

  it('refuses a change in every region: header, version, nonce, ciphertext, tag, length', () => {
    const blob = encryptBlob(KEY, plaintext);
    const flip = (i: number) => {
      const b = Buffer.from(blob);
      b[i]! ^= 0x01;
      return b;
    };
    const cases: Array<[string, Buffer, string]> = [
      ['magic', flip(0), 'NotEncrypted'],
      ['magic end', flip(15), 'NotEncrypted'],
      ['version', flip(16), 'EncryptedBlobUnknownVersion'],
      ['nonce start', flip(17), 'EncryptedBlobTampered'],
      ['nonce end', flip(28), 'EncryptedBlobTampered'],
      ['ciphertext start', flip(29), 'EncryptedBlobTampered'],
      ['ciphertext end', flip(blob.length - 17), 'EncryptedBlobTampered'],
      ['tag start', flip(blob.length - 16), 'EncryptedBlobTampered'],
      ['tag end', flip(blob.length - 1), 'EncryptedBlobTampered'],
      ['truncated', blob.subarray(0, blob.length - 1), 'EncryptedBlobTampered'],
      ['header only', blob.subarray(0, 17), 'EncryptedBlobTampered'],
      ['extended', Buffer.concat([blob, Buffer.from([0])]), 'EncryptedBlobTampered'],
    ];
    for (const [name, bad, reason] of cases) {
      const r = decryptBlob(KEY, bad, '.env');
      expect(r.ok, name).toBe(false);
      if (r.ok) continue;
      expect(r.reason, name).toBe(reason);
      expect(r.error).toBeInstanceOf(CascadeError);
      expect(r.error.kind).toBe('Stalled');
      expect(r.error.reason).toBe(reason);
      expect(r.error.message).toContain('.env');
      expect(r.error.hint).toBeTruthy();
      expect('plaintext' in r).toBe(false);
    }
  });

  it('refuses a blob made with another key', () => {
    const r = decryptBlob(OTHER_KEY, encryptBlob(KEY, plaintext));
    expect(r.ok).toBe(false);
    expect(!r.ok && r.reason).toBe('EncryptedBlobTampered');
  });

  it('refuses an unknown format version and a plaintext file', () => {
    const v2 = encryptBlob(KEY, plaintext);
    v2[16] = 2;
    const r = decryptBlob(KEY, v2);
    expect(!r.ok && r.reason).toBe('EncryptedBlobUnknownVersion');
    expect(!r.ok && r.error.message).toMatch(/version 2/);
    expect(isEncryptedBlob(plaintext)).toBe(false);
    const p = decryptBlob(KEY, plaintext);
    expect(!p.ok && p.reason).toBe('NotEncrypted');
  });

  it('refuses a blob with a valid GCM tag whose nonce is not the synthetic one', () => {
    // Built by hand with the same subkey, as someone holding the key but not using encryptBlob could.
    const encKey = Buffer.from(hkdfSync('sha256', KEY, Buffer.alloc(0), 'cascade-sync v1 aes-256-gcm key', 32));
    const header = Buffer.concat([ENCRYPTED_MAGIC, Buffer.from([1])]);
    const nonce = Buffer.alloc(12, 9);
    const cipher = createCipheriv('aes-256-gcm', encKey, nonce);
    cipher.setAAD(header);
    const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    const r = decryptBlob(KEY, Buffer.concat([header, nonce, body, cipher.getAuthTag()]));
    expect(!r.ok && r.reason).toBe('EncryptedBlobTampered');
  });

  it('refuses raw keys that are not 32 bytes, and never prints key material', () => {
    expect(() => encryptBlob(Buffer.alloc(16), plaintext)).toThrow(/32 bytes, got 16/);
    const key = EncryptionKey.fromBytes(KEY);
    const shown = `${inspect(key)} ${JSON.stringify({ key })} ${String(Object.keys(key))}`;
    expect(shown).toContain(key.fingerprint);
    expect(shown).not.toContain(KEY.toString('base64'));
    expect(shown).not.toContain(KEY.toString('hex'));
    expect(key.fingerprint).toMatch(/^[0-9a-f]{16}$/);
    expect(EncryptionKey.fromBytes(KEY).fingerprint).toBe(key.fingerprint);
    expect(EncryptionKey.fromBytes(OTHER_KEY).fingerprint).not.toBe(key.fingerprint);
  });
});

// ---------------------------------------------------------------------------------------------
describe('key files', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await makeTmpDir('keys');
  });
  const opts = () => ({ baseDir: dir, env: { HOME: dir } });

  it('creates a 0600 key file in a 0700 folder, loads it, and never overwrites it', async () => {
    const file = path.join(dir, 'config', 'cascade-sync', 'keys', 'a.key');
    const key = await createKeyFile(file);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect((await stat(path.dirname(file))).mode & 0o777).toBe(0o700);
    const text = await readFile(file, 'utf8');
    expect(text).toMatch(/^[A-Za-z0-9+/]{43}=\n$/);
    const loaded = await loadEncryptionKey(file, opts());
    expect(loaded.ok && loaded.key.fingerprint).toBe(key.fingerprint);
    expect(loaded.ok && loaded.source).toBe('file');
    expect(loaded.ok && loaded.warnings).toEqual([]);

    const again = await createKeyFile(file).catch((e: unknown) => e);
    expect(again).toBeInstanceOf(CascadeError);
    expect((again as CascadeError).reason).toBe('EncryptionKeyFileExists');
    expect(await readFile(file, 'utf8')).toBe(text);
    // No temp file is left behind.
    const { readdir } = await import('node:fs/promises');
    expect(await readdir(path.dirname(file))).toEqual(['a.key']);
  });

  it('loads an inline base64 key (standard and URL-safe) and a key file by relative and ~/ path', async () => {
    const b64 = KEY.toString('base64');
    const inline = await loadEncryptionKey(b64, opts());
    expect(inline.ok && inline.source).toBe('inline');
    expect(inline.ok && inline.key.fingerprint).toBe(EncryptionKey.fromBytes(KEY).fingerprint);
    const url = await loadEncryptionKey(KEY.toString('base64url'), opts());
    expect(url.ok && url.key.fingerprint).toBe(EncryptionKey.fromBytes(KEY).fingerprint);

    await writeFile(path.join(dir, 'rel.key'), `\n  ${b64}  \n\n`, { mode: 0o600 });
    const rel = await loadEncryptionKey('./rel.key', opts());
    expect(rel.ok && rel.path).toBe(path.join(dir, 'rel.key'));
    expect(rel.ok && rel.key.fingerprint).toBe(EncryptionKey.fromBytes(KEY).fingerprint);
    const home = await loadEncryptionKey('~/rel.key', { baseDir: '/nonexistent', env: { HOME: dir } });
    expect(home.ok).toBe(true);
    // A base64-looking name without ./ is still a path when such a file exists.
    await writeFile(path.join(dir, 'prodkey'), b64, { mode: 0o600 });
    expect((await loadEncryptionKey('prodkey', opts())).ok).toBe(true);
  });

  it('explains a missing spec, a wrong length, an unreadable path and a bad key file, without echoing the key', async () => {
    const reason = async (spec: string | undefined) => {
      const r = await loadEncryptionKey(spec, opts());
      expect(r.ok).toBe(false);
      if (r.ok) return '';
      expect(r.error.kind).toBe('Stalled');
      expect(r.error.hint).toBeTruthy();
      if (spec && !spec.includes('/') && spec.length > 8) expect(`${r.error.message} ${r.error.hint}`).not.toContain(spec);
      return `${r.error.reason}: ${r.error.message}`;
    };
    expect(await reason(undefined)).toMatch(/^EncryptionKeyMissing/);
    expect(await reason('   ')).toMatch(/^EncryptionKeyMissing/);
    const short = Buffer.alloc(16, 2).toString('base64');
    expect(await reason(short)).toMatch(/^EncryptionKeyInvalid: .*16 bytes.*exactly 32/);
    expect(await reason(Buffer.alloc(48, 0xfb).toString('base64'))).toMatch(/^EncryptionKeyInvalid: .*48 bytes/);
    expect(await reason('./missing.key')).toMatch(/^EncryptionKeyUnreadable: .*does not exist/);
    // A mistyped key (here with quotes left in) is not echoed as if it were a path.
    const quoted = `"${KEY.toString('base64')}"`;
    expect(await reason(quoted)).toMatch(/^EncryptionKeyInvalid: security.key is neither base64 nor the path of an existing file/);
    expect(await reason(dir)).toMatch(/^EncryptionKeyUnreadable: .*not a regular file/);
    await writeFile(path.join(dir, 'short.key'), `${short}\n`, { mode: 0o600 });
    expect(await reason('./short.key')).toMatch(/^EncryptionKeyInvalid: .*short\.key.*16 bytes, not 32/);
    await writeFile(path.join(dir, 'junk.key'), 'not a key at all\n', { mode: 0o600 });
    expect(await reason('./junk.key')).toMatch(/^EncryptionKeyInvalid: .*one line of base64/);
  });

  it('warns about a key file others can read and refuses one others can write', async () => {
    const file = path.join(dir, 'open.key');
    await writeFile(file, KEY.toString('base64'));
    await chmod(file, 0o644);
    const readable = await loadEncryptionKey(file, opts());
    expect(readable.ok).toBe(true);
    expect(readable.ok && readable.warnings.join()).toMatch(/readable by group or others \(mode 644\); run: chmod 600/);
    await chmod(file, 0o666);
    const writable = await loadEncryptionKey(file, opts());
    expect(!writable.ok && writable.error.reason).toBe('EncryptionKeyInsecure');
    expect(!writable.ok && writable.error.hint).toBe(`run: chmod 600 ${file}`);
  });

  it('puts the default key file under XDG_CONFIG_HOME or ~/.config, named after the sandbox path', () => {
    const a = defaultKeyFilePath('/srv/work/site', { XDG_CONFIG_HOME: '/home/u/.xdg', HOME: '/home/u' });
    expect(a).toMatch(/^\/home\/u\/\.xdg\/cascade-sync\/keys\/site-[0-9a-f]{16}\.key$/);
    expect(a.endsWith(`site-${createHash('sha256').update('/srv/work/site').digest('hex').slice(0, 16)}.key`)).toBe(true);
    const b = defaultKeyFilePath('/srv/work/site', { HOME: '/home/u' });
    expect(path.dirname(b)).toBe('/home/u/.config/cascade-sync/keys');
    expect(path.basename(b)).toBe(path.basename(a));
    expect(defaultKeyFilePath('/srv/other/site', { HOME: '/home/u' })).not.toBe(b);
    expect(defaultKeyFilePath('/srv/work/site/', { HOME: '/home/u', XDG_CONFIG_HOME: 'relative' })).toBe(b);
    const none = (() => {
      try {
        defaultKeyFilePath('/srv/x', {});
      } catch (e) {
        return e as CascadeError;
      }
    })();
    expect(none?.reason).toBe('EncryptionKeyNoHome');
    expect(() => defaultKeyFilePath('/home/u', { HOME: '/home/u' })).toThrow(/inside the sandbox/);
  });
});

// ---------------------------------------------------------------------------------------------
describe('scanFile', () => {
  const MAX = 1024 * 1024;
  const scan = (text: string, file = 'app/config.env') => scanFile(file, Buffer.from(text), { maxFileSizeBytes: MAX });
  const RANDOM32 = 'q8Zr2LmX0vTb5NcW7yHd3KfJ9pGs1AeU';
  const RANDOM40 = 'Zk3pW9qL2vX8nR4tY7bM1cF6hJ0sD5gA/e+Q2u8K';
  const JWT = t('eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9', '.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkphbmUifQ', '.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c');
  const pemOf = (type: 'ed25519' | 'rsa' | 'ec', format: 'pkcs8' | 'pkcs1' | 'sec1') => {
    const { privateKey } = generateKeyPairSync(type as 'rsa', { modulusLength: 1024, namedCurve: 'P-256' } as never) as unknown as { privateKey: KeyObject };
    return String(privateKey.export({ type: format, format: 'pem' } as never));
  };
  const openssh = t('-----BEGIN OPENSSH', ' PRIVATE KEY-----\n', randomBytes(300).toString('base64').replace(/.{70}/g, '$&\n'), '\n-----END OPENSSH PRIVATE KEY-----\n');
  const pgp = t('-----BEGIN PGP PRIVATE', ' KEY BLOCK-----\nVersion: GnuPG v2\n\n', randomBytes(200).toString('base64'), '\n-----END PGP PRIVATE KEY BLOCK-----\n');

  /** [name, text, rule or null for "no finding", the secret that must not appear in the finding] */
  const table: Array<[string, string, ScanRule | null, string?]> = [
    ['pkcs8 key', pemOf('ed25519', 'pkcs8'), 'private-key'],
    ['rsa key', pemOf('rsa', 'pkcs1'), 'private-key'],
    ['ec key', pemOf('ec', 'sec1'), 'private-key'],
    ['openssh key', openssh, 'private-key', openssh.split('\n')[1]],
    ['pgp key', pgp, 'private-key'],
    ['key in a JSON string', `{"private_key": "${t('-----BEGIN RSA', ' PRIVATE KEY-----')}\\n${randomBytes(120).toString('base64')}\\n-----END RSA PRIVATE KEY-----\\n"}`, 'private-key'],
    ['public key block', String((generateKeyPairSync('ed25519').publicKey as KeyObject).export({ type: 'spki', format: 'pem' })), null],
    ['only a mention of the header', t('if (text.includes("-----BEGIN OPENSSH', ' PRIVATE KEY-----")) return parse(text);\n'), null],
    ['aws access key id', `aws_access_key_id = ${t('AKIA', 'Q3VZ7K2M9PLX4T8B')}\n`, 'aws-access-key-id', t('AKIA', 'Q3VZ7K2M9PLX4T8B')],
    ['aws session key id', `id: ${t('ASIA', 'Q3VZ7K2M9PLX4T8B')}`, 'aws-access-key-id', t('ASIA', 'Q3VZ7K2M9PLX4T8B')],
    ['aws documentation example id', `id: ${t('AKIA', 'IOSFODNN7EXAMPLE')}`, null],
    ['aws id too short', `id: ${t('AKIA', 'Q3VZ7K2M9PLX4T8')}`, null],
    ['aws id inside a longer word', `id: X${t('AKIA', 'Q3VZ7K2M9PLX4T8B')}`, null],
    ['aws secret key', `aws_secret_access_key = ${RANDOM40}\n`, 'aws-secret-access-key', RANDOM40],
    ['aws secret key, env style', `AWS_SECRET_ACCESS_KEY="${RANDOM40}"`, 'aws-secret-access-key', RANDOM40],
    ['github classic token', `GH=${t('ghp', '_', RANDOM32, 'abcd')}`, 'github-token', t('ghp', '_', RANDOM32, 'abcd')],
    ['github oauth/user/server/refresh tokens', ['gho', 'ghu', 'ghs', 'ghr'].map((p) => t(p, '_', RANDOM32, 'wxyz')).join('\n'), 'github-token'],
    ['github fine-grained token', t('github', '_pat_', '11ABCDEFG0', RANDOM32, '_', RANDOM32, RANDOM32), 'github-token'],
    ['github token placeholder', t('ghp', '_', 'X'.repeat(36)), null],
    ['github token too short', t('ghp', '_', 'abc123'), null],
    ['gitlab token', `token: ${t('glpat', '-', 'xR4mB9kT2vLp8QwZ3nYd')}`, 'gitlab-token', t('glpat', '-', 'xR4mB9kT2vLp8QwZ3nYd')],
    ['gitlab token too short', t('glpat', '-', 'abc'), null],
    ['slack bot token', t('xoxb', '-', '2440163874-9384720018-', RANDOM32.slice(0, 24)), 'slack-token'],
    ['slack user token', t('xoxp', '-', '2440163874-9384720018-', RANDOM32), 'slack-token'],
    ['slack-looking word', t('xoxb', '-not-a-real-token'), null],
    ['slack webhook', t('https://hooks.slack', '.com/services/', 'T024BE7LD/B01ABCDEF/', RANDOM32.slice(0, 24)), 'slack-webhook'],
    ['slack other url', 'https://api.slack.com/apps', null],
    ['.env password', `PASSWORD=${RANDOM32}\n`, 'generic-secret', RANDOM32],
    ['.env prefixed key', `DB_PASSWORD=${RANDOM32}\n`, 'generic-secret', RANDOM32],
    ['YAML quoted', `db:\n  password: '${RANDOM32}'\n`, 'generic-secret', RANDOM32],
    ['YAML bare', `client_secret: ${RANDOM32}\n`, 'generic-secret', RANDOM32],
    ['JSON', `{"api_key": "${RANDOM32}", "name": "x"}`, 'generic-secret', RANDOM32],
    ['shell export', `export SERVICE_TOKEN="${RANDOM32}"`, 'generic-secret', RANDOM32],
    ['code', `const apiKey = '${RANDOM32}';`, 'generic-secret', RANDOM32],
    ['url query', `GET /x?token=${RANDOM32}&page=2`, 'generic-secret', RANDOM32],
    ['JWT', `id_token: ${JWT}`, 'generic-secret', JWT],
    ['password=changeme', 'password=changeme\n', null],
    ['short password', 'password=hunter2\n', null],
    ['env placeholder', 'password=${DB_PASSWORD}\nsecret: "${WEBHOOK_SECRET}"\n', null],
    ['template placeholder', 'token: "{{ .Values.token }}"\napi_key: <your-api-key-here-1234>\n', null],
    ['shell reference', 'PASSWORD=$DB_PASSWORD_FROM_VAULT_1\n', null],
    ['code reference', 'const token = process.env.GITHUB_TOKEN_2;\npassword = os.environ["DB_PASSWORD"]\n', null],
    ['type annotation', 'interface A { token: string; password?: string }\n', null],
    ['dotted identifier', 'secret: config.v2.secretProvider\n', null],
    ['url value', 'token_url: https://auth.example.com/oauth2/v1/token\n', null],
    ['words only', 'password: correcthorsebatterystaple\n', null],
    ['low-entropy value', 'password=aaaaaaaa11111111\n', null],
    ['key name without a secret word', `checksum: ${RANDOM32}\n`, null],
    ['lockfile entry', '"node_modules/js-tokens": {\n  "version": "4.0.0",\n  "integrity": "sha512-RdJUflcE3cUzKiMqQgsCu06FPu9UdIJO0beYbPhHN4k6apgJtifcoCtT9bcxOpYBtpD2kCM6Sbzg4CausW/PKQ=="\n', null],
  ];

  it.each(table)('%s', (_name, text, rule, secret) => {
    const findings = scan(text);
    if (rule === null) {
      expect(findings).toEqual([]);
      return;
    }
    expect(findings.map((f) => f.rule)).toContain(rule);
    expect(findings.every((f) => f.rule === rule)).toBe(true);
    const json = JSON.stringify(findings);
    if (secret) expect(json).not.toContain(secret);
    for (const f of findings) {
      expect(f.fingerprint).toMatch(/^[0-9a-f]{16}$/);
      expect(f.line).toBeGreaterThan(0);
      expect(f.message).toContain(rule);
    }
  });

  it('reports file:line:column, and finds several secrets in one file in order', () => {
    const text = `# settings\nNAME=demo\n  PASSWORD=${RANDOM32}\nGH=${t('ghp', '_', RANDOM32, 'abcd')}\n`;
    const findings = scan(text, 'deploy/.env.example');
    expect(findings.map((f) => [f.rule, f.line, f.column])).toEqual([
      ['generic-secret', 3, 12],
      ['github-token', 4, 4],
    ]);
    expect(findings[0]!.path).toBe('deploy/.env.example');
    expect(findings[0]!.message).toContain('PASSWORD');
  });

  it('reports one finding when a token is also assigned to a secret-like key', () => {
    const token = t('ghp', '_', RANDOM32, 'abcd');
    expect(scan(`GITHUB_TOKEN=${token}\n`).map((f) => f.rule)).toEqual(['github-token']);
    expect(scan(`aws_access_key_id: ${t('AKIA', 'Q3VZ7K2M9PLX4T8B')}\n`).map((f) => f.rule)).toEqual(['aws-access-key-id']);
  });

  it('gives a stable, secret-free fingerprint that depends on rule, path and secret', () => {
    const text = `PASSWORD=${RANDOM32}\n`;
    const [a] = scan(text, 'a/.env');
    expect(scan(`\n\n# moved down\n${text}`, 'a/.env')[0]!.fingerprint).toBe(a!.fingerprint);
    expect(scan(text, 'b/.env')[0]!.fingerprint).not.toBe(a!.fingerprint);
    expect(scan(`PASSWORD=${RANDOM32.slice(1)}x\n`, 'a/.env')[0]!.fingerprint).not.toBe(a!.fingerprint);
    expect(a!.fingerprint).toBe(fingerprintOf('generic-secret', 'a/.env', RANDOM32));
    expect(JSON.stringify(a)).not.toContain(RANDOM32.slice(0, 8));
  });

  it('picks an entropy threshold that separates words from random values', () => {
    expect(shannonEntropy('')).toBe(0);
    expect(shannonEntropy('aaaa')).toBe(0);
    expect(shannonEntropy('abcd')).toBe(2);
    expect(shannonEntropy(RANDOM32)).toBeGreaterThan(4.5);
    expect(looksRandom(RANDOM32)).toBe(true);
    expect(looksRandom(randomBytes(24).toString('base64'))).toBe(true);
    for (const word of ['changeme', 'correcthorsebatterystaple', 'Password1234Password1234', '${SOME_SECRET_VARIABLE}', 'xxxxxxxxxxxxxxxxxxxxxxxx1']) {
      expect(looksRandom(word), word).toBe(false);
    }
  });

  it('only size-checks binary files', () => {
    const binary = Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x00, 0x00]), Buffer.from(`PASSWORD=${RANDOM32}\n${t('ghp', '_', RANDOM32, 'abcd')}`)]);
    expect(scanFile('img.png', binary, { maxFileSizeBytes: MAX })).toEqual([]);
    const big = scanFile('img.png', binary, { maxFileSizeBytes: 10 });
    expect(big.map((f) => [f.rule, f.line])).toEqual([['file-too-large', 0]]);
    // A NUL after the first 8000 bytes does not make a file binary.
    const late = Buffer.concat([Buffer.from(`PASSWORD=${RANDOM32}\n`), Buffer.alloc(9000, 0x20), Buffer.from([0])]);
    expect(scanFile('late.txt', late, { maxFileSizeBytes: MAX }).map((f) => f.rule)).toEqual(['generic-secret']);
  });

  it('reports a file over maxFileSizeBytes once, at line 0, without scanning it', () => {
    const text = Buffer.from(`PASSWORD=${RANDOM32}\n`);
    const findings = scanFile('big.txt', text, { maxFileSizeBytes: text.length - 1 });
    expect(findings).toHaveLength(1);
    expect(findings[0]).toMatchObject({ path: 'big.txt', line: 0, rule: 'file-too-large' });
    expect(findings[0]!.column).toBeUndefined();
    expect(findings[0]!.message).toMatch(/over security\.maxFileSize/);
    expect(scanFile('big.txt', text, { maxFileSizeBytes: text.length })).toHaveLength(1); // the secret, not the size
    expect(fileTooLarge('huge.iso', 3 * 1024 ** 3, 50 * 1024 ** 2)?.message).toMatch(/3\.0 GB.*50\.0 MB/);
  });

  it('accepts findings by path pattern and by fingerprint through security.allow', () => {
    const text = `PASSWORD=${RANDOM32}\n`;
    const inFixtures = scan(text, 'test/fixtures/app/.env');
    const elsewhere = scan(text, 'app/.env');
    const other = scan(`TOKEN=${RANDOM32.split('').reverse().join('')}\n`, 'app/.env');
    const tooLarge = scanFile('test/fixtures/blob.bin', Buffer.alloc(100), { maxFileSizeBytes: 10 });

    const byPath = makeAllowList(['test/fixtures/**', '*.sample']);
    expect(byPath.filter(inFixtures)).toEqual([]);
    expect(makeAllowList(['test/fixtures/']).filter(inFixtures)).toEqual([]);
    expect(makeAllowList(['/app/.env']).filter(elsewhere)).toEqual([]);
    expect(byPath.filter(scan(text, 'conf/app.env.sample'))).toEqual([]);
    expect(byPath.filter(elsewhere)).toEqual(elsewhere);
    // A path pattern accepts secrets, not size: an oversized file needs its own fingerprint.
    expect(byPath.filter(tooLarge)).toEqual(tooLarge);

    const byFingerprint = makeAllowList([` ${elsewhere[0]!.fingerprint.toUpperCase()} `, tooLarge[0]!.fingerprint]);
    expect(byFingerprint.filter([...elsewhere, ...other, ...tooLarge])).toEqual(other);
    expect(byFingerprint.allows(inFixtures[0]!)).toBe(false); // same secret, other path
    expect(makeAllowList([]).filter(elsewhere)).toEqual(elsewhere);
    // Paths `ignore` cannot take match no pattern instead of throwing.
    const odd: Finding = { ...elsewhere[0]!, path: '../outside/.env' };
    expect(makeAllowList(['**']).allows(odd)).toBe(false);
  });

  it('scans 10k small files quickly', () => {
    const files = Array.from({ length: 10_000 }, (_, i) =>
      Buffer.from(`// file ${i}\nimport x from "./x.js";\nexport const token: string = read("token");\nconst password = process.env.PW;\n${'const a = b + c; // filler\n'.repeat(20)}`),
    );
    const started = performance.now();
    let total = 0;
    for (const [i, bytes] of files.entries()) total += scanFile(`src/f${i}.ts`, bytes, { maxFileSizeBytes: MAX }).length;
    const ms = performance.now() - started;
    expect(total).toBe(0);
    console.log(`scanned 10k files (${(files.reduce((n, f) => n + f.length, 0) / 1e6).toFixed(1)} MB) in ${ms.toFixed(0)} ms`);
  });
});

// ---------------------------------------------------------------------------------------------
describe('release manifests', () => {
  let root: string;
  let release: string;
  let manifest: ReleaseManifest;
  const put = async (rel: string, content: string, mode = 0o644) => {
    const abs = path.join(release, rel);
    await mkdir(path.dirname(abs), { recursive: true });
    await writeFile(abs, content);
    await chmod(abs, mode);
  };

  beforeAll(async () => {
    root = await makeTmpDir('manifest');
    release = path.join(root, 'releases', COMMIT);
    await put('index.html', '<h1>hi</h1>\n');
    await put('bin/run.sh', '#!/bin/sh\necho hi\n', 0o755);
    await put('assets/css/site.css', 'body{}\n');
    await put('empty.txt', '');
    await mkdir(path.join(release, 'empty-dir'));
    await symlink('assets/css', path.join(release, 'css'));
    await symlink('/etc/passwd', path.join(release, 'outside'));
    manifest = await buildManifest(release, COMMIT);
  });

  it('records path, type, mode, size and SHA-256 of each file and the target of each symlink, sorted', () => {
    const sha = (s: string) => createHash('sha256').update(s).digest('hex');
    expect(manifest.version).toBe(1);
    expect(manifest.commit).toBe(COMMIT);
    expect(manifest.entries).toEqual([
      { path: 'assets/css/site.css', type: 'file', mode: '100644', size: 7, sha256: sha('body{}\n') },
      { path: 'bin/run.sh', type: 'file', mode: '100755', size: 18, sha256: sha('#!/bin/sh\necho hi\n') },
      { path: 'css', type: 'symlink', target: 'assets/css' },
      { path: 'empty.txt', type: 'file', mode: '100644', size: 0, sha256: sha('') },
      { path: 'index.html', type: 'file', mode: '100644', size: 12, sha256: sha('<h1>hi</h1>\n') },
      { path: 'outside', type: 'symlink', target: '/etc/passwd' },
    ]);
  });

  it('writes atomically with mode 0600 beside the release and reads it back', async () => {
    const file = manifestPathFor(release);
    expect(file).toBe(`${release}.manifest.json`);
    await writeManifest(file, manifest);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect(await readManifest(file)).toEqual(manifest);
    await writeManifest(file, { ...manifest, entries: manifest.entries.slice(1) });
    expect((await readManifest(file)).entries).toHaveLength(manifest.entries.length - 1);
    const { readdir } = await import('node:fs/promises');
    expect((await readdir(path.dirname(file))).filter((n) => n.endsWith('.tmp'))).toEqual([]);
  });

  it('refuses a missing or malformed manifest with a reason', async () => {
    const file = path.join(root, 'bad.manifest.json');
    const reasonOf = async (content: unknown) => {
      await writeFile(file, typeof content === 'string' ? content : JSON.stringify(content));
      return readManifest(file).then(
        () => 'ok',
        (e: CascadeError) => `${e.reason}: ${e.message}`,
      );
    };
    expect(await readManifest(path.join(root, 'none.json')).catch((e: CascadeError) => e.reason)).toBe('ReleaseManifestMissing');
    expect(await reasonOf('{')).toMatch(/^ReleaseManifestInvalid: .*not JSON/);
    expect(await reasonOf({ ...manifest, version: 2 })).toMatch(/version 2/);
    expect(await reasonOf({ ...manifest, commit: 'HEAD' })).toMatch(/commit/);
    const entry = manifest.entries[0]!;
    for (const p of ['../etc/passwd', '/abs', 'a//b', 'a/./b', '']) {
      expect(await reasonOf({ ...manifest, entries: [{ ...entry, path: p }] })).toMatch(/entry 1: bad path/);
    }
    expect(await reasonOf({ ...manifest, entries: [entry, entry] })).toMatch(/entry 2: .* listed twice/);
    expect(await reasonOf({ ...manifest, entries: [{ ...entry, sha256: 'abc' }] })).toMatch(/bad sha256/);
    expect(await reasonOf({ ...manifest, entries: [{ ...entry, mode: '100666' }] })).toMatch(/bad mode/);
    expect(await reasonOf({ ...manifest, entries: [{ path: 'x', type: 'fifo' }] })).toMatch(/unknown type/);
    expect(await reasonOf(manifest)).toBe('ok');
  });

  it('finds an intact release intact, also through a `current` symlink', async () => {
    expect(await verifyRelease(release, manifest)).toEqual({ changed: [], added: [], removed: [] });
    const current = path.join(root, 'current');
    await symlink(path.join('releases', COMMIT), current);
    expect(isIntact(await verifyRelease(current, manifest))).toBe(true);
  });

  it('detects changed content, changed mode, added, removed and retargeted paths', async () => {
    const copy = path.join(root, 'releases', 'drift');
    await rm(copy, { recursive: true, force: true });
    const { cp } = await import('node:fs/promises');
    await cp(release, copy, { recursive: true, verbatimSymlinks: true });
    expect(isIntact(await verifyRelease(copy, manifest))).toBe(true);

    await writeFile(path.join(copy, 'index.html'), '<h1>HI</h1>\n'); // same size, other bytes
    await chmod(path.join(copy, 'bin/run.sh'), 0o644);
    await writeFile(path.join(copy, 'assets/css/extra.css'), 'x');
    await mkdir(path.join(copy, 'new/deep'), { recursive: true });
    await writeFile(path.join(copy, 'new/deep/file'), 'x');
    await unlink(path.join(copy, 'empty.txt'));
    await unlink(path.join(copy, 'css'));
    await symlink('assets', path.join(copy, 'css'));
    await unlink(path.join(copy, 'outside'));
    await writeFile(path.join(copy, 'outside'), 'now a file');
    await mkdir(path.join(copy, 'another-empty-dir'));

    expect(await verifyRelease(copy, manifest)).toEqual({
      changed: ['bin/run.sh', 'css', 'index.html', 'outside'],
      added: ['assets/css/extra.css', 'new/deep/file'],
      removed: ['empty.txt'],
    });
  });

  it('does not follow a directory that became a symlink', async () => {
    const copy = path.join(root, 'releases', 'swapped');
    const { cp } = await import('node:fs/promises');
    await cp(release, copy, { recursive: true, verbatimSymlinks: true });
    await rm(path.join(copy, 'assets'), { recursive: true });
    await symlink(path.join(release, 'assets'), path.join(copy, 'assets'));
    expect(await verifyRelease(copy, manifest)).toEqual({ changed: [], added: ['assets'], removed: ['assets/css/site.css'] });
    expect((await lstat(path.join(copy, 'assets'))).isSymbolicLink()).toBe(true);
  });

  it('reports every path removed when the release folder is gone, and refuses to build one', async () => {
    const gone = path.join(root, 'releases', 'gone');
    expect((await verifyRelease(gone, manifest)).removed).toEqual(manifest.entries.map((e) => e.path));
    expect(await buildManifest(gone, COMMIT).catch((e: CascadeError) => e.reason)).toBe('ReleaseMissing');
  });

  it('builds and verifies a 10k-file release', async () => {
    const big = path.join(root, 'releases', 'big');
    await Promise.all(Array.from({ length: 100 }, (_, d) => mkdir(path.join(big, `d${d}`), { recursive: true })));
    for (let d = 0; d < 100; d++) {
      await Promise.all(Array.from({ length: 100 }, (_, f) => writeFile(path.join(big, `d${d}`, `f${f}.txt`), `file ${d}/${f}\n`.repeat(1 + (f % 7)))));
    }
    let started = performance.now();
    const m = await buildManifest(big, COMMIT);
    const buildMs = performance.now() - started;
    expect(m.entries).toHaveLength(10_000);
    started = performance.now();
    expect(isIntact(await verifyRelease(big, m))).toBe(true);
    const verifyMs = performance.now() - started;
    await writeFile(path.join(big, 'd42', 'f7.txt'), 'changed');
    expect(await verifyRelease(big, m)).toEqual({ changed: ['d42/f7.txt'], added: [], removed: [] });
    console.log(`10k files: build ${buildMs.toFixed(0)} ms, verify ${verifyMs.toFixed(0)} ms`);
  });
});

const KNOWN_ANSWER =
  '434153434144452d53594e432d454e4301d3ff4114cc05ea2be32d52f6173e0ff733ccc0950eb29c5b281a64468b7aa30d4be95bef5b575222f010f94d2e5555e9';
