import { afterEach, describe, expect, it } from 'vitest';
import { request, type IncomingHttpHeaders } from 'node:http';
import type { StatusSnapshot } from '../src/controller.js';
import { systemClock } from '../src/clock.js';
import { Logger } from '../src/log.js';
import { Redactor } from '../src/redact.js';
import { Metrics } from '../src/server/metrics.js';
import { parseListen, startStatusServer, type StatusServer, type StatusServerOptions } from '../src/server/http.js';
import { waitFor } from './helpers/tmp.js';

const DEV = 'a'.repeat(40);
const NEXT = 'b'.repeat(40);
const TOKEN = 's3cret-token-value';

/** A snapshot as the controller writes it: a sandbox, one remote, one auto environment. */
function snapshot(head = DEV): StatusSnapshot {
  const at = '2026-11-24T10:00:00.000Z';
  return {
    version: 1, pid: 4242, running: true, startedAt: at, updatedAt: at,
    sandbox: { dir: '/srv/sandbox', branch: 'develop', head, pendingPaths: 3, heldBack: [], lastCommit: { commit: head, message: 'sync: 1 modified (index.html)', at } },
    config: { file: '/srv/sandbox/cascade-sync-config.yaml', valid: true, problems: [], lastGoodAt: at },
    remotes: [{ name: 'origin', url: 'https://git.example.com/site.git', lastPush: { commit: head, at }, relation: 'in-sync' }],
    reconcilers: [
      { name: 'sandbox', conditions: [{ type: 'Ready', status: true, reason: 'Succeeded', message: 'committed' }], failures: 0, running: false, lastSuccessAt: at },
      { name: 'remote:origin', conditions: [], failures: 0, running: false, lastSuccessAt: '2026-11-24T10:00:05.000Z' },
    ],
    environments: [{
      name: 'staging', branch: 'staging', from: 'develop', promotion: 'auto', head, deployed: head, candidate: head, target: head,
      gates: null, window: { open: true, reason: 'no windows: always open' },
      health: { phase: 'healthy', description: 'healthy since 10:00', checks: [{ name: 'web', ok: true, message: 'HTTP 200' }] },
      failed: [], next: 'up to date', blocked: false, inProgress: false,
    }],
    history: [{ at, environment: 'staging', event: 'promoted', commit: head, from: null, result: 'fast-forward' }],
  };
}

interface Reply { status: number; headers: IncomingHttpHeaders; body: string }

/** One request with node:http (fetch cannot set a Host header). */
function call(base: string, path: string, opts: { method?: string; headers?: Record<string, string> } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request(new URL(path, base), { method: opts.method ?? 'GET', headers: opts.headers ?? {} }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** An open /api/events stream: the parsed `data:` events and the count of comment lines so far. */
interface EventStream { status: number; headers: IncomingHttpHeaders; events: { snapshot: StatusSnapshot }[]; comments: number; close(): void }

function openEvents(base: string, path = '/api/events', headers: Record<string, string> = {}): Promise<EventStream> {
  return new Promise((resolve, reject) => {
    const req = request(new URL(path, base), { headers }, (res) => {
      const stream: EventStream = { status: res.statusCode ?? 0, headers: res.headers, events: [], comments: 0, close: () => req.destroy() };
      let buffer = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buffer += chunk;
        let end: number;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          if (block.startsWith(':')) stream.comments++;
          const data = block.split('\n').filter((l) => l.startsWith('data: ')).map((l) => l.slice(6)).join('\n');
          if (data) stream.events.push(JSON.parse(data));
        }
      });
      res.on('error', () => undefined);
      resolve(stream);
    });
    req.on('error', reject);
    req.end();
  });
}

const servers: StatusServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function start(over: Partial<StatusServerOptions> = {}): Promise<{ server: StatusServer; metrics: Metrics; state: { snap: StatusSnapshot; alive: boolean; ready: boolean } }> {
  const state = { snap: snapshot(), alive: true, ready: true };
  const metrics = new Metrics();
  const server = await startStatusServer({
    listen: '127.0.0.1:0',
    status: () => state.snap,
    ready: () => state.ready,
    alive: () => state.alive,
    metrics,
    log: new Logger({}, 'error', new Redactor(), systemClock),
    ...over,
  });
  servers.push(server);
  return { server, metrics, state };
}

describe('status server endpoints', () => {
  it('answers /healthz and /readyz from alive() and ready()', async () => {
    const { server, state } = await start();
    expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
    expect((await call(server.url, '/healthz')).status).toBe(200);
    expect((await call(server.url, '/readyz')).status).toBe(200);
    state.alive = false;
    state.ready = false;
    expect((await call(server.url, '/healthz')).status).toBe(503);
    const notReady = await call(server.url, '/readyz');
    expect(notReady.status).toBe(503);
    expect(notReady.body).toContain('not ready');
  });

  it('serves /api/status as `status --json` prints it', async () => {
    const { server, state } = await start();
    const r = await call(server.url, '/api/status');
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('application/json; charset=utf-8');
    expect(r.headers['cache-control']).toBe('no-store');
    expect(JSON.parse(r.body)).toEqual({ running: true, pid: 4242, config: { valid: true, problems: [] }, snapshot: state.snap });
  });

  it('redacts secrets before a snapshot leaves the process', async () => {
    const redactor = new Redactor();
    redactor.add('hunter22');
    const { server, state } = await start({ redactor });
    state.snap.remotes[0]!.url = 'https://bot:hunter22@git.example.com/site.git';
    state.snap.config.problems = ['password hunter22 is wrong'];
    const body = (await call(server.url, '/api/status')).body;
    expect(body).not.toContain('hunter22');
    expect(body).toContain('[REDACTED]');
  });

  it('serves /metrics in the Prometheus text format with every metric', async () => {
    const { server, metrics, state } = await start();
    metrics.commitMade(120, 7);
    metrics.pushed('origin', true);
    metrics.pushed('origin', false);
    metrics.fetched('origin', false);
    metrics.gateResult('staging', 'test', true);
    metrics.gateResult('staging', 'lint', false);
    metrics.recordHistory({ at: '2026-11-24T10:00:00Z', environment: 'production', event: 'promoted', commit: DEV, result: 'fast-forward' });
    metrics.recordHistory({ at: '2026-11-24T10:00:00Z', environment: 'production', event: 'rolled-back', commit: DEV, result: 'health failed' });
    metrics.recordHistory({ at: '2026-11-24T10:00:00Z', environment: 'production', event: 'approval-rejected', commit: DEV, result: 'expired: the approval expired at ...' });
    metrics.approvalRejected('production', 'bad-signature');
    metrics.observeStatus(state.snap);

    const r = await call(server.url, '/metrics');
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
    const lines = r.body.split('\n');
    for (const expected of [
      'cascade_sync_commits_total 1',
      'cascade_sync_commit_duration_seconds_count 1',
      'cascade_sync_commit_duration_seconds_sum 0.12',
      'cascade_sync_batch_files_bucket{le="10"} 1',
      'cascade_sync_pending_changes 3',
      'cascade_sync_pushes_total{remote="origin"} 1',
      'cascade_sync_push_failures_total{remote="origin"} 1',
      'cascade_sync_fetches_total{remote="origin"} 0',
      'cascade_sync_fetch_failures_total{remote="origin"} 1',
      'cascade_sync_promotions_total{environment="production"} 1',
      'cascade_sync_promotions_total{environment="staging"} 0',
      'cascade_sync_rollbacks_total{environment="production"} 1',
      'cascade_sync_gate_results_total{environment="staging",gate="test",result="passed"} 1',
      'cascade_sync_gate_results_total{environment="staging",gate="lint",result="failed"} 1',
      'cascade_sync_health_state{environment="staging",state="healthy"} 1',
      'cascade_sync_health_state{environment="staging",state="failed"} 0',
      'cascade_sync_approvals_rejected_total{environment="production",reason="expired"} 1',
      'cascade_sync_approvals_rejected_total{environment="production",reason="bad-signature"} 1',
      `cascade_sync_last_successful_reconcile_timestamp_seconds{reconciler="sandbox"} ${Date.parse('2026-11-24T10:00:00Z') / 1000}`,
      `cascade_sync_last_successful_reconcile_timestamp_seconds{reconciler="remote:origin"} ${Date.parse('2026-11-24T10:00:05Z') / 1000}`,
    ]) {
      expect(lines, expected).toContain(expected);
    }
    expect(r.body).toContain('process_cpu_seconds_total');
  });

  it('drops gauge series of environments that left the snapshot', async () => {
    const { server, metrics, state } = await start();
    metrics.observeStatus(state.snap);
    state.snap.environments = [];
    metrics.observeStatus(state.snap);
    expect((await call(server.url, '/metrics')).body).not.toContain('cascade_sync_health_state{environment="staging"');
  });

  it('is read-only: other methods get 405; unknown paths 404; HEAD has no body', async () => {
    const { server } = await start();
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH']) {
      const r = await call(server.url, '/api/status', { method });
      expect(r.status, method).toBe(405);
      expect(r.headers.allow).toBe('GET, HEAD');
    }
    expect((await call(server.url, '/nope')).status).toBe(404);
    const head = await call(server.url, '/metrics', { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.body).toBe('');
  });

  it('serves the page with a strict Content-Security-Policy and no external resources', async () => {
    const { server } = await start();
    const r = await call(server.url, '/');
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('text/html; charset=utf-8');
    const csp = String(r.headers['content-security-policy']);
    expect(csp).toContain("default-src 'none'");
    expect(csp).toContain("connect-src 'self'");
    expect(csp).not.toContain('unsafe-inline');
    expect(r.headers['x-frame-options']).toBe('DENY');
    expect(r.body).not.toMatch(/(src|href)=["']?(https?:)?\/\//);
    expect(r.body).not.toContain('innerHTML');
  });

  it('answers only loopback Host headers when no token is set (DNS rebinding)', async () => {
    const { server } = await start();
    expect((await call(server.url, '/api/status', { headers: { host: 'evil.example:7420' } })).status).toBe(403);
    expect((await call(server.url, '/api/status', { headers: { host: 'localhost:7420' } })).status).toBe(200);
  });

  it('refuses an address it cannot bind with Stalled ServerListenFailed', async () => {
    const { server } = await start();
    const port = new URL(server.url).port;
    await expect(start({ listen: `127.0.0.1:${port}` })).rejects.toMatchObject({ kind: 'Stalled', reason: 'ServerListenFailed' });
  });

  it('parses host:port and [v6]:port', () => {
    expect(parseListen('127.0.0.1:7420')).toEqual({ host: '127.0.0.1', port: 7420 });
    expect(parseListen('[::1]:80')).toEqual({ host: '::1', port: 80 });
    expect(() => parseListen('7420')).toThrow(/host:port/);
  });
});

describe('status server with a token', () => {
  const bearer = { authorization: `Bearer ${TOKEN}` };

  it('needs the bearer token everywhere but /healthz and the page shell', async () => {
    const { server } = await start({ token: TOKEN });
    expect((await call(server.url, '/healthz')).status).toBe(200);
    expect((await call(server.url, '/')).status).toBe(200);
    for (const path of ['/readyz', '/metrics', '/api/status', '/api/events', '/nope']) {
      const none = await call(server.url, path);
      expect(none.status, path).toBe(401);
      expect(none.headers['www-authenticate']).toContain('Bearer');
      expect((await call(server.url, path, { headers: { authorization: 'Bearer wrong' } })).status, path).toBe(401);
    }
    for (const path of ['/readyz', '/metrics', '/api/status']) {
      expect((await call(server.url, path, { headers: bearer })).status, path).toBe(200);
    }
    const events = await openEvents(server.url, '/api/events', bearer);
    events.close();
    expect(events.status).toBe(200);
  });

  it('accepts ?token= on /api/events only (EventSource cannot send headers)', async () => {
    const { server } = await start({ token: TOKEN });
    expect((await call(server.url, `/api/status?token=${TOKEN}`)).status).toBe(401);
    expect((await call(server.url, `/metrics?token=${TOKEN}`)).status).toBe(401);
    expect((await openEvents(server.url, '/api/events?token=wrong')).status).toBe(401);
    const events = await openEvents(server.url, `/api/events?token=${encodeURIComponent(TOKEN)}`);
    expect(events.status).toBe(200);
    await waitFor(() => events.events.length === 1, { what: 'the initial snapshot', timeoutMs: 5000 });
    events.close();
  });

  it('does not restrict the Host header (the token protects it)', async () => {
    const { server } = await start({ token: TOKEN });
    expect((await call(server.url, '/api/status', { headers: { ...bearer, host: 'ci.example:7420' } })).status).toBe(200);
  });
});

describe('status server events', () => {
  it('sends the snapshot at connect, then every published one, and heartbeats', async () => {
    const { server, state } = await start({ heartbeatMs: 50 });
    const events = await openEvents(server.url);
    expect(events.status).toBe(200);
    expect(events.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    await waitFor(() => events.events.length === 1, { what: 'the initial snapshot', timeoutMs: 5000 });
    expect(events.events[0]).toMatchObject({ running: true, pid: 4242, snapshot: { sandbox: { head: DEV } } });

    state.snap = snapshot(NEXT);
    server.publish(state.snap);
    await waitFor(() => events.events.length === 2, { what: 'the published snapshot', timeoutMs: 5000 });
    expect(events.events[1]!.snapshot.sandbox.head).toBe(NEXT);
    await waitFor(() => events.comments >= 2, { what: 'two heartbeats', timeoutMs: 5000 });
    events.close();
  });

  it('forgets a client that disconnected, and close() ends open streams', async () => {
    const { server } = await start();
    const gone = await openEvents(server.url);
    await waitFor(() => gone.events.length === 1, { what: 'the initial snapshot', timeoutMs: 5000 });
    gone.close();
    const staying = await openEvents(server.url);
    await waitFor(() => staying.events.length === 1, { what: 'the initial snapshot', timeoutMs: 5000 });
    server.publish(snapshot(NEXT));
    await waitFor(() => staying.events.length === 2, { what: 'the published snapshot', timeoutMs: 5000 });
    expect(gone.events).toHaveLength(1);
    await server.close();
    servers.splice(servers.indexOf(server), 1);
    await expect(call(server.url, '/healthz')).rejects.toThrow();
  });
});
