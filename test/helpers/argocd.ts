import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';

/** What the fake Argo CD reports for its one application, as the real API shapes it. */
export interface ArgoAppState {
  /** `status.health.status`: Healthy, Progressing, Degraded, Missing, Suspended, Unknown. */
  health: string;
  /** `status.sync.revision`: the commit Argo CD last synced (absent before the first sync). */
  revision?: string;
  /** `status.sync.status`: Synced or OutOfSync (default Synced). */
  sync?: string;
}

/** A fake Argo CD API server on 127.0.0.1 serving one application, its state set by the test. */
export interface FakeArgoCd {
  /** `http://127.0.0.1:PORT/api/v1/applications/<name>`. */
  appUrl: string;
  /** Changes what the next request sees. */
  set(state: ArgoAppState): void;
  /** Every request's headers, in order (also refused ones). */
  requests: IncomingHttpHeaders[];
  /** When set, a 401 body echoes the Authorization header it got (a careless server), to prove it is masked. */
  echoAuthorization: boolean;
  close(): Promise<void>;
}

/**
 * Starts a fake Argo CD on 127.0.0.1 that answers `GET /api/v1/applications/<name>` with
 * Argo CD-shaped application JSON when the request carries `Authorization: Bearer <token>`, and
 * 401 `{"error":"no session information","code":16}` (Argo CD's own answer) otherwise.
 */
export async function startFakeArgoCd(o: { name: string; token: string; repoURL: string; state: ArgoAppState }): Promise<FakeArgoCd> {
  let state = o.state;
  const fake: FakeArgoCd = {
    appUrl: '',
    set: (s) => void (state = s),
    requests: [],
    echoAuthorization: false,
    close: async () => undefined,
  };
  const server = createServer((req, res) => {
    fake.requests.push(req.headers);
    const json = (status: number, body: unknown) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    if (req.method !== 'GET' || req.url !== `/api/v1/applications/${o.name}`) return json(404, { error: 'not found', code: 5 });
    if (req.headers.authorization !== `Bearer ${o.token}`) {
      return json(401, { error: fake.echoAuthorization ? `invalid session: ${req.headers.authorization ?? '(none)'}` : 'no session information', code: 16 });
    }
    json(200, application(o.name, o.repoURL, state));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  fake.appUrl = `http://127.0.0.1:${port}/api/v1/applications/${o.name}`;
  fake.close = () => new Promise((r) => {
    server.closeAllConnections();
    server.close(() => r());
  });
  return fake;
}

/** An Application resource as `GET /api/v1/applications/<name>` returns it (the fields a health check reads, and some around them). */
function application(name: string, repoURL: string, s: ArgoAppState): unknown {
  return {
    metadata: { name, namespace: 'argocd', resourceVersion: '12345' },
    spec: {
      project: 'default',
      source: { repoURL, targetRevision: 'main', path: 'deploy' },
      destination: { server: 'https://kubernetes.default.svc', namespace: 'site' },
      syncPolicy: { automated: { prune: true, selfHeal: true } },
    },
    status: {
      resources: [{ group: 'apps', version: 'v1', kind: 'Deployment', namespace: 'site', name: 'web', status: s.sync ?? 'Synced', health: { status: s.health } }],
      sync: { status: s.sync ?? 'Synced', comparedTo: { source: { repoURL, targetRevision: 'main', path: 'deploy' } }, ...(s.revision ? { revision: s.revision } : {}) },
      health: { status: s.health },
      ...(s.revision ? { operationState: { phase: 'Succeeded', message: 'successfully synced (all tasks run)', syncResult: { revision: s.revision } } } : {}),
      sourceType: 'Directory',
    },
  };
}
