import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import ssh2 from 'ssh2';
import type { AuthContext, Connection, ParsedKey, ServerChannel } from 'ssh2';
import { gitEnv } from './git.js';
import { run } from './ssh.js';

const { Server, utils } = ssh2;

/** An ed25519 key pair made by the real ssh-keygen: the private key's path and the public key's OpenSSH line. */
export interface KeyPair {
  privatePath: string;
  publicLine: string;
}

/** Makes an ed25519 key pair without a passphrase at `file` (and `file.pub`). Rejects when ssh-keygen fails. */
export async function makeKeyPair(file: string, comment = 'cascade-test'): Promise<KeyPair> {
  const r = await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', file]);
  if (r.code !== 0) throw new Error(`ssh-keygen failed: ${r.stderr}`);
  return { privatePath: file, publicLine: (await readFile(`${file}.pub`, 'utf8')).trim() };
}

/** True when the OpenSSH client is installed (the ssh tests skip, saying so, when it is not). */
export async function haveSshClient(): Promise<boolean> {
  try {
    await run('ssh', ['-V']);
    return true;
  } catch {
    return false;
  }
}

export interface SshGitServerOptions {
  /** Repositories are served only from under this folder. */
  root: string;
  /** The server's host key (OpenSSH private key file). */
  hostKey: KeyPair;
  /** Public keys (OpenSSH lines) allowed to log in, as in authorized_keys. */
  authorizedKeys: string[];
}

/** One exec request the server saw. */
export interface SshExec {
  user: string;
  command: string;
  /** The git program's exit code once it ended; undefined while it runs or when refused. */
  exitCode: number | undefined;
}

export interface SshGitServer {
  readonly port: number;
  /** `ssh://git@127.0.0.1:PORT<abs>` for a repository at the absolute path `abs`. */
  url(abs: string): string;
  /** The `[127.0.0.1]:PORT ssh-ed25519 ...` line a known_hosts file needs to trust this server. */
  knownHostsLine(): string;
  /** Exec requests seen, oldest first. */
  readonly execs: SshExec[];
  /** Public-key logins refused (the client offered a key not in authorizedKeys). */
  readonly refusedKeys: number;
  /** Stops listening, ends every connection and kills running git programs. Idempotent. */
  close(): Promise<void>;
}

/** `git-upload-pack '/path'` (how git asks over ssh; the path in single quotes, `'\''` for a quote). */
function parseGitCommand(command: string): { program: 'upload-pack' | 'receive-pack'; dir: string } | undefined {
  const m = /^(git[- ](upload-pack|receive-pack)) '((?:[^']|'\\'')*)'$/.exec(command.trim());
  if (!m) return undefined;
  return { program: m[2] as 'upload-pack' | 'receive-pack', dir: m[3]!.replace(/'\\''/g, "'") };
}

/**
 * Starts an SSH server on 127.0.0.1 (random port) with the `ssh2` package's Server: its own host key,
 * public-key logins only (checked against `authorizedKeys`, the signature verified), and exec requests
 * `git-upload-pack '/path'` / `git-receive-pack '/path'` for repositories under `root`, each run as the
 * real `git upload-pack`/`git receive-pack` with the channel piped to it (GIT_PROTOCOL passed on as
 * sshd's AcceptEnv would). Anything else is refused. The real OpenSSH client talks to it.
 */
export async function startSshGitServer(opts: SshGitServerOptions): Promise<SshGitServer> {
  const root = path.resolve(opts.root);
  const hostKeyText = await readFile(opts.hostKey.privatePath);
  const allowed = opts.authorizedKeys.map((line) => {
    const parsed = utils.parseKey(line);
    if (parsed instanceof Error) throw parsed;
    return parsed as ParsedKey;
  });
  const execs: SshExec[] = [];
  const children = new Set<ChildProcess>();
  const connections = new Set<Connection>();
  let refusedKeys = 0;

  const authenticate = (ctx: AuthContext) => {
    if (ctx.method !== 'publickey') return ctx.reject(['publickey']);
    const key = allowed.find((k) => k.type === ctx.key.algo && k.getPublicSSH().equals(ctx.key.data));
    if (!key) {
      refusedKeys++;
      return ctx.reject(['publickey']);
    }
    // Without a signature the client only asks whether the key would do.
    if (!ctx.signature) return ctx.accept();
    if (ctx.blob && key.verify(ctx.blob, ctx.signature, ctx.hashAlgo)) return ctx.accept();
    return ctx.reject(['publickey']);
  };

  const serve = (channel: ServerChannel, record: SshExec, env: Record<string, string>) => {
    const parsed = parseGitCommand(record.command);
    const dir = parsed ? path.resolve(parsed.dir) : '';
    if (!parsed || (dir !== root && !dir.startsWith(root + path.sep))) {
      channel.stderr.write(`fatal: '${record.command}' is not a git command this server runs\n`);
      channel.exit(128);
      channel.end();
      return;
    }
    const child = spawn('git', [parsed.program, dir], { env: gitEnv(env), stdio: ['pipe', 'pipe', 'pipe'] });
    children.add(child);
    child.stdin.on('error', () => undefined);
    channel.pipe(child.stdin);
    child.stdout.pipe(channel, { end: false });
    child.stderr.pipe(channel.stderr, { end: false });
    child.on('error', (e) => {
      channel.stderr.write(`fatal: ${e.message}\n`);
      channel.exit(128);
      channel.end();
    });
    child.on('close', (code) => {
      children.delete(child);
      record.exitCode = code ?? 255;
      channel.exit(code ?? 255);
      channel.end();
    });
  };

  const server = new Server({ hostKeys: [hostKeyText] }, (client) => {
    connections.add(client);
    let user = '';
    client.on('authentication', (ctx) => {
      user = ctx.username;
      authenticate(ctx);
    });
    client.on('error', () => undefined);
    client.on('close', () => connections.delete(client));
    client.on('ready', () => {
      client.on('session', (acceptSession) => {
        const session = acceptSession();
        const env: Record<string, string> = {};
        session.on('env', (accept, _reject, info) => {
          if (info.key === 'GIT_PROTOCOL') env.GIT_PROTOCOL = info.val;
          accept?.();
        });
        session.on('exec', (accept, _reject, info) => {
          const record: SshExec = { user, command: info.command, exitCode: undefined };
          execs.push(record);
          serve(accept(), record, env);
        });
      });
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const hostPublic = (await readFile(`${opts.hostKey.privatePath}.pub`, 'utf8')).trim().split(/\s+/).slice(0, 2).join(' ');
  let closing: Promise<void> | undefined;

  return {
    port,
    execs,
    get refusedKeys() {
      return refusedKeys;
    },
    url: (abs) => `ssh://git@127.0.0.1:${port}${abs}`,
    knownHostsLine: () => `[127.0.0.1]:${port} ${hostPublic}`,
    close() {
      closing ??= new Promise<void>((resolve) => {
        for (const c of children) c.kill('SIGKILL');
        for (const c of connections) c.end();
        server.close(() => resolve());
      });
      return closing;
    },
  };
}

/**
 * Writes an ssh_config for the real OpenSSH client that reaches `server` (Host `alias` -> 127.0.0.1
 * and its port) with `identity` (omitted: keys from the agent only), trusts only the hosts in
 * `knownHosts` (a file it also writes), reads no other config, and offers only public-key logins.
 * Returns the config's path, to pass as `ssh -F PATH`.
 */
export async function writeSshConfig(file: string, o: { alias: string; port: number; identity?: string; knownHosts: string; knownHostsLines: string[] }): Promise<string> {
  await writeFile(o.knownHosts, o.knownHostsLines.map((l) => `${l}\n`).join(''));
  const common = [
    `  UserKnownHostsFile ${o.knownHosts}`,
    '  GlobalKnownHostsFile /dev/null',
    '  PasswordAuthentication no',
    '  KbdInteractiveAuthentication no',
    '  UpdateHostKeys no',
    '  ControlMaster no',
    '  ControlPath none',
    ...(o.identity ? [`  IdentityFile ${o.identity}`, '  IdentitiesOnly yes'] : ['  IdentityFile none']),
  ];
  const text = [`Host ${o.alias}`, '  HostName 127.0.0.1', `  Port ${o.port}`, '  User git', '', 'Host *', ...common, ''].join('\n');
  await writeFile(file, text);
  return file;
}
