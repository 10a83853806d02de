import { execFile, spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import type { Socket } from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { gitEnv } from './git.js';

/**
 * Whole-server fault injection:
 * - 'ok': serve normally.
 * - 'down-503': answer 503 to every request.
 * - 'refuse': the listening socket is closed (and open connections destroyed), so connects get
 *   ECONNREFUSED; switching back to any other mode listens again on the same port.
 * - 'hang': accept requests and never answer. Requests hung this way stay hung after a mode change,
 *   until the client gives up or close() destroys them.
 * - 'unauthorized': answer 401 with a Basic challenge to everything, valid credentials or not.
 */
export type GitHttpServerMode = 'ok' | 'down-503' | 'refuse' | 'hang' | 'unauthorized';

/** Per-request fault: like the modes, plus 'reset' (destroy the socket without answering). */
export type GitHttpRequestFault = 'down-503' | 'hang' | 'unauthorized' | 'reset';

/** What a per-request fault predicate sees. */
export interface GitHttpRequestInfo {
  method: string;
  /** Decoded URL path, e.g. '/remote.git/git-receive-pack'. */
  path: string;
  /** Raw query string without '?', e.g. 'service=git-upload-pack'. */
  query: string;
  /** The smart-HTTP service this request belongs to, when it names one. */
  service: 'git-upload-pack' | 'git-receive-pack' | undefined;
}

export interface GitHttpServerOptions {
  /** Directory holding the bare repositories; `url('x.git')` serves `<root>/x.git`. */
  root: string;
  /** When username or password is set, every request needs matching Basic credentials (else 401). */
  username?: string;
  password?: string;
  /**
   * Fault injection from the start: a mode (as for setMode; default 'ok'), or a function called for
   * every request while the mode is 'ok' that returns a fault for that request or undefined to serve it
   * (e.g. fail only pushes: `(r) => r.service === 'git-receive-pack' ? 'down-503' : undefined`).
   */
  failWith?: GitHttpServerMode | ((req: GitHttpRequestInfo) => GitHttpRequestFault | undefined);
}

/** One served (or refused-at-HTTP-level) request. Entries are appended when the request arrives. */
export interface GitHttpRequestLogEntry {
  method: string;
  path: string;
  query: string;
  /** HTTP status sent; 0 while unanswered, and forever for hung, reset or aborted requests. */
  status: number;
  /** Request Content-Encoding (git gzips large fetch negotiation bodies). */
  contentEncoding: string | undefined;
  /** True when the request body came with Transfer-Encoding: chunked (git does this above http.postBuffer). */
  chunked: boolean;
  /** Authenticated user name, when auth is on and passed. */
  user: string | undefined;
  /** The injected fault that answered this request, if any. */
  fault: Exclude<GitHttpServerMode, 'ok'> | GitHttpRequestFault | undefined;
  /** What git http-backend wrote to stderr, when anything (filled in once it exits). */
  backendStderr: string | undefined;
}

export interface GitHttpServer {
  /** `http://127.0.0.1:PORT/<repoName>`, without credentials. */
  url(repoName: string): string;
  /** Same as url() with the configured username/password embedded (url() when auth is off). */
  authUrl(repoName: string): string;
  readonly port: number;
  readonly root: string;
  /** Request log, oldest first; tests may clear it with `requests.length = 0`. */
  readonly requests: GitHttpRequestLogEntry[];
  readonly mode: GitHttpServerMode;
  /**
   * Switches fault mode. The change takes effect synchronously (connections are refused, or accepted
   * again, as soon as this returns); the promise resolves once the socket is listening again after
   * 'refuse', and rejects if the port cannot be re-bound. Awaiting it is optional otherwise.
   */
  setMode(mode: GitHttpServerMode): Promise<void>;
  /** Stops listening, destroys every connection (hung ones too) and kills running backends; resolves when all are gone. Idempotent. */
  close(): Promise<void>;
}

let backendPath: Promise<string> | undefined;

/** Locates git-http-backend via `git --exec-path` (it is not on PATH on most systems). */
function findHttpBackend(): Promise<string> {
  backendPath ??= promisify(execFile)('git', ['--exec-path'], { env: gitEnv() }).then(({ stdout }) =>
    path.join(stdout.trim(), 'git-http-backend'),
  );
  return backendPath;
}

function serviceOf(urlPath: string, query: string): GitHttpRequestInfo['service'] {
  const fromQuery = new URLSearchParams(query).get('service');
  const name = fromQuery ?? urlPath.slice(urlPath.lastIndexOf('/') + 1);
  return name === 'git-upload-pack' || name === 'git-receive-pack' ? name : undefined;
}

function basicUser(header: string | undefined, username: string, password: string): string | undefined {
  const match = /^Basic\s+(\S+)\s*$/i.exec(header ?? '');
  if (!match?.[1]) return undefined;
  const decoded = Buffer.from(match[1], 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return undefined;
  return decoded.slice(0, colon) === username && decoded.slice(colon + 1) === password ? username : undefined;
}

/** Finds the end of a CGI header block; returns [headerEnd, bodyStart] or undefined if not complete yet. */
function headerBoundary(buf: Buffer): [number, number] | undefined {
  const crlf = buf.indexOf('\r\n\r\n');
  const lf = buf.indexOf('\n\n');
  if (crlf >= 0 && (lf < 0 || crlf < lf)) return [crlf, crlf + 4];
  if (lf >= 0) return [lf, lf + 2];
  return undefined;
}

/**
 * Starts a smart-HTTP git server on 127.0.0.1 (random port) that serves every bare repository under
 * `opts.root` through native `git http-backend` (push enabled, all repos exported), with optional Basic
 * auth and fault injection. Resolves once it is listening; rejects if git-http-backend cannot be
 * located or the port cannot be bound. Always close() it (afterEach/afterAll) or the test run hangs.
 */
export async function startGitHttpServer(opts: GitHttpServerOptions): Promise<GitHttpServer> {
  const backend = await findHttpBackend();
  const root = path.resolve(opts.root);
  const authRequired = opts.username !== undefined || opts.password !== undefined;
  const username = opts.username ?? '';
  const password = opts.password ?? '';
  const predicate = typeof opts.failWith === 'function' ? opts.failWith : undefined;
  let mode: GitHttpServerMode = typeof opts.failWith === 'string' ? opts.failWith : 'ok';
  let closed = false;
  const requests: GitHttpRequestLogEntry[] = [];
  const sockets = new Set<Socket>();
  const children = new Set<ChildProcess>();

  // Built once: the user's GIT_* vars are stripped and HOME isolated by gitEnv().
  const baseEnv = gitEnv({
    GIT_PROJECT_ROOT: root,
    GIT_HTTP_EXPORT_ALL: '1',
    // Without this, http-backend only allows receive-pack when REMOTE_USER is set.
    GIT_CONFIG_COUNT: '1',
    GIT_CONFIG_KEY_0: 'http.receivepack',
    GIT_CONFIG_VALUE_0: 'true',
    GATEWAY_INTERFACE: 'CGI/1.1',
    SERVER_PROTOCOL: 'HTTP/1.1',
    SERVER_SOFTWARE: 'cascade-sync-test',
  });

  function answer(res: http.ServerResponse, entry: GitHttpRequestLogEntry, status: number, headers: http.OutgoingHttpHeaders, body: string): void {
    entry.status = status;
    res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'no-cache', ...headers });
    res.end(body);
  }

  function challenge(res: http.ServerResponse, entry: GitHttpRequestLogEntry): void {
    answer(res, entry, 401, { 'WWW-Authenticate': 'Basic realm="git"' }, 'authentication required\n');
  }

  function runBackend(req: http.IncomingMessage, res: http.ServerResponse, entry: GitHttpRequestLogEntry, info: GitHttpRequestInfo): void {
    const env: NodeJS.ProcessEnv = {
      ...baseEnv,
      REQUEST_METHOD: info.method,
      PATH_INFO: info.path,
      QUERY_STRING: info.query,
      REMOTE_ADDR: req.socket.remoteAddress ?? '127.0.0.1',
      SERVER_NAME: '127.0.0.1',
      SERVER_PORT: String(port),
    };
    if (entry.user !== undefined) {
      env.REMOTE_USER = entry.user;
      env.AUTH_TYPE = 'Basic';
    }
    if (req.headers['content-type'] !== undefined) env.CONTENT_TYPE = req.headers['content-type'];
    if (req.headers['content-length'] !== undefined) env.CONTENT_LENGTH = req.headers['content-length'];
    const gitProtocol = req.headers['git-protocol'];
    if (typeof gitProtocol === 'string') env.GIT_PROTOCOL = gitProtocol;
    // CGI passes request headers as HTTP_*; http-backend reads HTTP_CONTENT_ENCODING and inflates
    // gzip bodies itself. Credentials are never passed on, as with Apache.
    for (const [name, value] of Object.entries(req.headers)) {
      if (value === undefined || name === 'authorization' || name === 'proxy-authorization') continue;
      if (name === 'content-type' || name === 'content-length') continue;
      env[`HTTP_${name.toUpperCase().replace(/-/g, '_')}`] = Array.isArray(value) ? value.join(', ') : value;
    }

    const child = spawn(backend, [], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    children.add(child);
    const stderr: Buffer[] = [];
    let headerBuf: Buffer = Buffer.alloc(0);
    let headersSent = false;

    child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
    // The backend may answer (e.g. 403/404) without reading the body; EPIPE is then expected.
    child.stdin.on('error', () => undefined);
    req.pipe(child.stdin);

    const onData = (chunk: Buffer): void => {
      headerBuf = Buffer.concat([headerBuf, chunk]);
      const boundary = headerBoundary(headerBuf);
      if (!boundary) return;
      child.stdout.pause();
      child.stdout.off('data', onData);
      let status = 200;
      const headers: Record<string, string | string[]> = {};
      for (const line of headerBuf.subarray(0, boundary[0]).toString('latin1').split(/\r?\n/)) {
        const colon = line.indexOf(':');
        if (colon <= 0) continue;
        const name = line.slice(0, colon).trim();
        const value = line.slice(colon + 1).trim();
        if (name.toLowerCase() === 'status') {
          status = Number.parseInt(value, 10) || 500;
        } else {
          const prev = headers[name];
          headers[name] = prev === undefined ? value : [...(Array.isArray(prev) ? prev : [prev]), value];
        }
      }
      headersSent = true;
      entry.status = status;
      res.writeHead(status, headers);
      res.write(headerBuf.subarray(boundary[1]));
      child.stdout.pipe(res);
    };
    child.stdout.on('data', onData);

    child.on('error', (err) => {
      if (!headersSent && !res.headersSent) answer(res, entry, 502, {}, `cannot run git http-backend: ${err.message}\n`);
    });
    child.on('close', (code, signal) => {
      children.delete(child);
      const text = Buffer.concat(stderr).toString('utf8').trim();
      if (text !== '') entry.backendStderr = text;
      if (!headersSent && !res.headersSent && !res.destroyed) {
        answer(res, entry, 502, {}, `git http-backend exited ${code ?? signal} without a response: ${text}\n`);
      }
    });
    // Client went away mid-request: don't leave the backend blocked on a pipe nobody reads.
    res.on('close', () => {
      if (!res.writableFinished && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
  }

  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    let decodedPath: string;
    try {
      decodedPath = decodeURIComponent(url.pathname);
    } catch {
      decodedPath = url.pathname;
    }
    const info: GitHttpRequestInfo = {
      method: req.method ?? 'GET',
      path: decodedPath,
      query: url.search.replace(/^\?/, ''),
      service: serviceOf(decodedPath, url.search),
    };
    const entry: GitHttpRequestLogEntry = {
      method: info.method,
      path: info.path,
      query: info.query,
      status: 0,
      contentEncoding: req.headers['content-encoding'],
      chunked: /\bchunked\b/i.test(req.headers['transfer-encoding'] ?? ''),
      user: undefined,
      fault: undefined,
      backendStderr: undefined,
    };
    requests.push(entry);

    const fault = mode !== 'ok' ? mode : predicate?.(info);
    if (fault !== undefined) {
      entry.fault = fault;
      switch (fault) {
        case 'hang':
          return; // the socket stays open until the client gives up or close() destroys it
        case 'reset':
        case 'refuse': // a request that slipped in while switching to 'refuse'
          req.socket.destroy();
          return;
        case 'down-503':
          req.resume();
          answer(res, entry, 503, { Connection: 'close', 'Retry-After': '1' }, 'service unavailable\n');
          return;
        case 'unauthorized':
          req.resume();
          challenge(res, entry);
          return;
      }
    }

    if (authRequired) {
      entry.user = basicUser(req.headers.authorization, username, password);
      if (entry.user === undefined) {
        req.resume();
        challenge(res, entry);
        return;
      }
    }
    runBackend(req, res, entry, info);
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  // A destroyed hung socket surfaces as a clientError; it is expected here, not a test failure.
  server.on('clientError', (_err, socket) => socket.destroy());

  function listen(onPort: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => {
        server.off('listening', onListening);
        reject(err);
      };
      const onListening = (): void => {
        server.off('error', onError);
        resolve();
      };
      server.once('error', onError);
      server.once('listening', onListening);
      server.listen(onPort, '127.0.0.1');
    });
  }

  function dropConnections(): void {
    server.closeAllConnections();
    for (const socket of sockets) socket.destroy();
    sockets.clear();
  }

  await listen(0);
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('git http server: no TCP address after listen');
  const port = address.port;
  if (mode === 'refuse') {
    server.close();
  }

  const handle: GitHttpServer = {
    url: (repoName) => `http://127.0.0.1:${port}/${repoName.split('/').map(encodeURIComponent).join('/')}`,
    authUrl: (repoName) => {
      const base = handle.url(repoName);
      if (!authRequired) return base;
      const creds = `${encodeURIComponent(username)}:${encodeURIComponent(password)}@`;
      return base.replace('http://', `http://${creds}`);
    },
    port,
    root,
    requests,
    get mode() {
      return mode;
    },
    async setMode(next) {
      if (closed) throw new Error('git http server: setMode after close()');
      const prev = mode;
      mode = next;
      if (next === 'refuse' && prev !== 'refuse') {
        // net.Server.close() closes the listening fd synchronously, so refusal starts right now.
        server.close();
        dropConnections();
      } else if (prev === 'refuse' && next !== 'refuse') {
        await listen(port);
      }
    },
    async close() {
      if (closed) return;
      closed = true;
      const serverClosed = server.listening
        ? new Promise<void>((resolve) => server.close(() => resolve()))
        : Promise.resolve();
      dropConnections();
      const exits = [...children].map(
        (child) =>
          new Promise<void>((resolve) => {
            if (child.exitCode !== null || child.signalCode !== null) return resolve();
            child.once('close', () => resolve());
            child.kill('SIGKILL');
          }),
      );
      await Promise.all([serverClosed, ...exits]);
    },
  };
  return handle;
}
