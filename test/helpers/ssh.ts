import { spawn } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';

/** What a finished child process returned. */
export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `cmd args` with `input` on stdin and an environment without SSH_AUTH_SOCK (so ssh-keygen never
 * asks a developer's agent) plus `env`. Resolves with the exit code and output; rejects only when the
 * program cannot be started (e.g. ssh-keygen is not installed).
 */
export function run(cmd: string, args: string[], opts: { input?: string | Buffer; env?: Record<string, string>; cwd?: string } = {}): Promise<RunResult> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && k !== 'SSH_AUTH_SOCK' && k !== 'SSH_AGENT_PID') env[k] = v;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: { ...env, ...opts.env }, cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.on('error', () => undefined); // the child may exit before reading all of stdin
    child.stdin.end(opts.input ?? '');
  });
}

/** Like run(), but rejects with the output when the exit code is not 0. */
export async function runOk(cmd: string, args: string[], opts: Parameters<typeof run>[2] = {}): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${String(r.code)}: ${r.stderr || r.stdout}`);
  return r;
}

/** A key pair written by ssh-keygen: the private key file, the .pub file and its one line. */
export interface TestKey {
  file: string;
  pubFile: string;
  /** `type base64 comment`, as in the .pub file. */
  publicLine: string;
  /** `type base64`, without the comment. */
  publicKey: string;
  /** `SHA256:...`, as `ssh-keygen -l` prints it. */
  fingerprint: string;
}

/**
 * Generates a key with the real ssh-keygen (`-t type [-b bits] -N passphrase -C comment`) at
 * `dir/name`. Resolves with its files, public line and ssh-keygen's own fingerprint; rejects when
 * ssh-keygen fails.
 */
export async function generateKey(dir: string, name: string, opts: { type: 'ed25519' | 'ecdsa' | 'rsa'; bits?: number; comment: string; passphrase?: string }): Promise<TestKey> {
  const file = path.join(dir, name);
  const args = ['-q', '-t', opts.type, '-N', opts.passphrase ?? '', '-C', opts.comment, '-f', file];
  if (opts.bits) args.push('-b', String(opts.bits));
  await runOk('ssh-keygen', args);
  const publicLine = (await readFile(`${file}.pub`, 'utf8')).trim();
  const fp = await runOk('ssh-keygen', ['-l', '-E', 'sha256', '-f', `${file}.pub`]);
  return { file, pubFile: `${file}.pub`, publicLine, publicKey: publicLine.split(' ').slice(0, 2).join(' '), fingerprint: fp.stdout.split(' ')[1]! };
}

/**
 * Signs `message` with `ssh-keygen -Y sign -n namespace -f keyFile`, through a fresh message file in
 * `dir`. For a passphrase-protected key pass `passphrase`: it is given to ssh-keygen through
 * SSH_ASKPASS (forced), as a person would type it. Resolves with the armored signature text.
 */
export async function sshSign(dir: string, keyFile: string, message: string, opts: { namespace?: string; passphrase?: string } = {}): Promise<string> {
  const msgFile = path.join(dir, `msg-${Date.now()}-${Math.random().toString(36).slice(2)}.txt`);
  await writeFile(msgFile, message);
  return sshSignFile(dir, keyFile, msgFile, opts);
}

/** Signs an existing file like sshSign (ssh-keygen writes `<file>.sig`); resolves with the signature. */
export async function sshSignFile(dir: string, keyFile: string, msgFile: string, opts: { namespace?: string; passphrase?: string } = {}): Promise<string> {
  const env: Record<string, string> = {};
  if (opts.passphrase !== undefined) {
    const askpass = path.join(dir, `askpass-${Math.random().toString(36).slice(2)}.sh`);
    await writeFile(askpass, `#!/bin/sh\nprintf '%s\\n' '${opts.passphrase}'\n`, { mode: 0o700 });
    Object.assign(env, { SSH_ASKPASS: askpass, SSH_ASKPASS_REQUIRE: 'force', DISPLAY: ':0' });
  }
  await runOk('ssh-keygen', ['-Y', 'sign', '-n', opts.namespace ?? 'cascade-sync', '-f', keyFile, msgFile], { env });
  return readFile(`${msgFile}.sig`, 'utf8');
}

/**
 * Runs `ssh-keygen -Y verify -f allowed_signers -I principal -n namespace -s sig < message` with the
 * allowed_signers lines and signature written to fresh files in `dir`. Resolves with the result (exit
 * code 0 means ssh-keygen accepts the signature).
 */
export async function sshVerify(dir: string, opts: { allowedSigners: string[]; principal: string; namespace?: string; signature: string; message: string }): Promise<RunResult> {
  const tag = `${Date.now()}-${Math.random().toString(36).slice(2)}`;
  const signersFile = path.join(dir, `allowed_signers-${tag}`);
  const sigFile = path.join(dir, `sig-${tag}.sig`);
  await writeFile(signersFile, opts.allowedSigners.join('\n') + '\n');
  await writeFile(sigFile, opts.signature);
  return run('ssh-keygen', ['-Y', 'verify', '-f', signersFile, '-I', opts.principal, '-n', opts.namespace ?? 'cascade-sync', '-s', sigFile], { input: opts.message });
}
