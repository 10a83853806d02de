import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { createHash, timingSafeEqual } from "node:crypto";
import type { StatusSnapshot } from "../controller.js";
import type { StatusReport } from "../cli/format.js";
import { stalled } from "../errors.js";
import type { Logger } from "../log.js";
import type { Redactor } from "../redact.js";
import type { Metrics } from "./metrics.js";
import { PAGE_CSP, PAGE_HTML } from "./page.js";

/** What `startStatusServer` serves and how it asks the controller. */
export interface StatusServerOptions {
  /** `host:port` as in `server.listen` (`[::1]:7420` for IPv6); port 0 picks a free port. */
  listen: string;
  /** When set, every endpoint but `/healthz` and the page shell needs `Authorization: Bearer <token>`. */
  token?: string;
  /** The controller's current snapshot (read for `/api/status` and when an event stream opens). */
  status: () => StatusSnapshot | Promise<StatusSnapshot>;
  /** `/readyz`: config valid and the initial scan done. */
  ready: () => boolean;
  /** `/healthz`: the process is alive and its loop is turning. */
  alive: () => boolean;
  metrics: Metrics;
  log: Logger;
  /** Applied to every snapshot before it leaves the process (the controller's snapshot is not redacted). */
  redactor?: Redactor;
  /** `/api/history`: recent commits of the sandbox branch with their paths and restore commands (absent: `null`). */
  history?: () => Promise<unknown>;
  /** Interval of the comment lines that keep idle event streams open through proxies; 15 s by default. */
  heartbeatMs?: number;
}

/** A listening status server. */
export interface StatusServer {
  /** Where the server listens, e.g. `http://127.0.0.1:7420/`. */
  url: string;
  /** Sends `snapshot` to every open `/api/events` stream. */
  publish(snapshot: StatusSnapshot): void;
  /** Ends the event streams and stops listening; resolves when the server is closed. */
  close(): Promise<void>;
}

/** A client that reads no more than this is cut off rather than buffered without end. */
const MAX_BUFFERED_BYTES = 4 * 1024 * 1024;

/** Headers on every response: nothing is cached, framed, sniffed or leaked in a Referer. */
const COMMON_HEADERS = {
  "cache-control": "no-store",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "x-frame-options": "DENY",
};

/**
 * Serves the read-only status endpoints with node:http:
 * - `/healthz` 200/503 from `alive()`, never behind the token (for supervisors and probes);
 * - `/readyz` 200/503 from `ready()`;
 * - `/metrics` Prometheus text from `metrics`;
 * - `/api/status` what `cascade-sync status --json` prints (`{ running, pid?, config, snapshot }`);
 * - `/api/events` the same object as server-sent events: one at connect, one per `publish`, and a
 *   comment line every `heartbeatMs`;
 * - `/` the status page.
 * Methods other than GET and HEAD get 405, unknown paths 404.
 *
 * With `token` set, requests need `Authorization: Bearer <token>` (compared in constant time), else
 * 401. Two deliberate exceptions: `/` is a static shell that holds no data, because a browser cannot
 * add a header to a navigation (the page takes the token from the URL fragment, which is never
 * sent); and `/api/events` also accepts `?token=`, because EventSource cannot send headers.
 * Without a token, only loopback Host headers are answered (403 otherwise), so that a web page
 * cannot read the pipeline through DNS rebinding.
 *
 * Rejects with Stalled `ServerListenFailed` when the address cannot be bound (in use, not local).
 */
export async function startStatusServer(o: StatusServerOptions): Promise<StatusServer> {
  const { host, port } = parseListen(o.listen);
  const streams = new Set<ServerResponse>();
  let published: { seq: number; snapshot: StatusSnapshot } | undefined;

  const report = (s: StatusSnapshot): StatusReport => {
    const safe = o.redactor ? o.redactor.redactValue(s) : s;
    return { running: safe.running, ...(safe.running ? { pid: safe.pid } : {}), config: { valid: safe.config.valid, problems: safe.config.problems }, snapshot: safe };
  };
  const frame = (s: StatusSnapshot) => `data: ${JSON.stringify(report(s))}\n\n`;
  const send = (res: ServerResponse, data: string) => {
    if (res.writableLength > MAX_BUFFERED_BYTES) {
      o.log.warn("status server: an event stream reads too slowly; closing it");
      res.destroy();
      return;
    }
    res.write(data);
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? "/", "http://localhost");
    if (req.method !== "GET" && req.method !== "HEAD") return reply(res, 405, "read-only: only GET and HEAD are allowed\n", { allow: "GET, HEAD" });
    if (!o.token && !loopbackHost(req.headers.host, host)) return reply(res, 403, "forbidden: without server.token this server answers only to a loopback Host\n");
    if (url.pathname === "/healthz") return o.alive() ? reply(res, 200, "ok\n") : reply(res, 503, "the controller loop is not turning\n");
    if (url.pathname === "/") {
      return reply(res, 200, PAGE_HTML, { "content-type": "text/html; charset=utf-8", "content-security-policy": PAGE_CSP });
    }
    if (o.token && !authorized(req, url, o.token)) {
      return reply(res, 401, "unauthorized: send Authorization: Bearer <server.token>\n", { "www-authenticate": 'Bearer realm="cascade-sync"' });
    }
    switch (url.pathname) {
      case "/readyz":
        return o.ready() ? reply(res, 200, "ready\n") : reply(res, 503, "not ready: the config is invalid or the initial scan is not done\n");
      case "/metrics":
        return reply(res, 200, await o.metrics.text(), { "content-type": o.metrics.contentType });
      case "/api/status":
        return reply(res, 200, `${JSON.stringify(report(await o.status()), null, 2)}\n`, { "content-type": "application/json; charset=utf-8" });
      case "/api/history":
        // null, not 404: the page asks anyway, and a 404 would be an error in its console.
        if (!o.history) return reply(res, 200, "null\n", { "content-type": "application/json; charset=utf-8" });
        return reply(res, 200, `${JSON.stringify(o.redactor ? o.redactor.redactValue(await o.history()) : await o.history())}\n`, { "content-type": "application/json; charset=utf-8" });
      case "/api/events": {
        res.writeHead(200, { ...COMMON_HEADERS, "content-type": "text/event-stream; charset=utf-8", connection: "keep-alive", "x-accel-buffering": "no" });
        if (req.method === "HEAD") return void res.end();
        const seq = published?.seq ?? 0;
        const initial = await o.status();
        if (res.destroyed) return;
        res.write("retry: 2000\n\n");
        // A publish while status() ran is newer than what it returned.
        send(res, frame(published && published.seq > seq ? published.snapshot : initial));
        streams.add(res);
        res.on("close", () => streams.delete(res));
        return;
      }
      default:
        return reply(res, 404, "not found\n");
    }
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      // The path only: a query may hold the token.
      o.log.warn(`status server: ${req.method} ${(req.url ?? "").split("?")[0]} failed: ${(err as Error).message}`);
      if (!res.headersSent) reply(res, 500, "internal error; see the controller's log\n");
      else res.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) => {
      reject(stalled("ServerListenFailed", `cannot listen on ${o.listen}: ${err.code ?? err.message}`, "change server.listen in the config, or stop what uses that address"));
    });
    server.listen(port, host, () => resolve());
  });
  server.on("error", (err) => o.log.warn(`status server: ${err.message}`));

  const heartbeat = setInterval(() => {
    for (const res of streams) res.write(": heartbeat\n\n");
  }, o.heartbeatMs ?? 15_000);
  heartbeat.unref();

  const address = server.address() as AddressInfo;
  const shownHost = address.family === "IPv6" ? `[${address.address}]` : address.address;
  let seq = 0;
  return {
    url: `http://${shownHost}:${address.port}/`,
    publish(snapshot) {
      published = { seq: ++seq, snapshot };
      if (!streams.size) return;
      const data = frame(snapshot);
      for (const res of streams) send(res, data);
    },
    close() {
      clearInterval(heartbeat);
      for (const res of streams) res.end();
      streams.clear();
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Keep-alive connections (a browser's) would hold close() open until they time out.
        server.closeAllConnections();
      });
    },
  };
}

/** Splits `host:port` / `[v6]:port`; an empty host means all interfaces. */
export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(listen);
  if (!m || Number(m[3]) > 65535) throw stalled("ServerListenInvalid", `server.listen must be host:port, got ${JSON.stringify(listen)}`, "use e.g. 127.0.0.1:7420");
  return { host: m[1] ?? m[2] ?? "", port: Number(m[3]) };
}

function reply(res: ServerResponse, status: number, body: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { ...COMMON_HEADERS, "content-type": "text/plain; charset=utf-8", ...headers, "content-length": Buffer.byteLength(body) });
  res.end(body);
}

/** Bearer header anywhere; the `token` query parameter only on the event stream (EventSource cannot send headers). */
function authorized(req: IncomingMessage, url: URL, token: string): boolean {
  const bearer = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? "")?.[1];
  const given = bearer ?? (url.pathname === "/api/events" ? url.searchParams.get("token") ?? undefined : undefined);
  return given !== undefined && sameSecret(given, token);
}

/** Constant-time comparison; hashing first makes the lengths equal, so the length does not leak either. */
function sameSecret(a: string, b: string): boolean {
  const digest = (s: string) => createHash("sha256").update(s).digest();
  return timingSafeEqual(digest(a), digest(b));
}

/** True for a Host header naming a loopback address, `localhost`, or the configured listen host. */
function loopbackHost(header: string | undefined, listenHost: string): boolean {
  if (!header) return false;
  const name = header.replace(/:\d+$/, "").replace(/^\[|\]$/g, "").toLowerCase();
  return name === "localhost" || name === "::1" || /^127\.\d+\.\d+\.\d+$/.test(name) || (listenHost !== "" && name === listenHost.toLowerCase());
}
