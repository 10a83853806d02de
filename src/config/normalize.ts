import { homedir } from "node:os";
import { dirname, isAbsolute, resolve } from "node:path";
import type { CascadeSyncConfig } from "../generated/config.js";
import { parseDuration, parseSize } from "../duration.js";
import type { CommandEnvEntry, Config, EnvironmentSpec, GateSpec, HealthCheckSpec, HttpCheckSpec, HttpHeaderSpec, RemoteSpec, VariableSource } from "./types.js";
import { formatPath } from "./positions.js";
import { isAllowListed, WITHHELD } from "../pipeline/command-env.js";
import type { LogLevel } from "../log.js";

// The fallbacks below repeat the schema's defaults, which the validator has normally filled in
// already; test/config.test.ts normalizes a config without them and requires the same result, so
// the two cannot drift apart.
const DEFAULT_EXCLUDE = ["*.tmp", ".cache/", "node_modules/", "*.pid", "nohup.out", ".venv/", "dist/", "build/"];
const DEFAULT_ENCRYPT = [".env", ".env.*", "**/*.pem", "secrets/**"];

/** A duration string the schema has already accepted, in ms. */
function ms(text: string | undefined, fallback: string): number {
  return parseDuration(text ?? fallback) ?? parseDuration(fallback)!;
}

function nonEmpty(s: string | undefined): string | undefined {
  return s ? s : undefined;
}

/** Resolves `~` (from $HOME) and relative paths (against `base`). */
export function resolvePath(p: string, base: string, env: NodeJS.ProcessEnv): string {
  if (p === "~" || p.startsWith("~/")) return resolve(env.HOME || homedir(), p.slice(2));
  return isAbsolute(p) ? p : resolve(base, p);
}

/** True when a remote URL is fetched over HTTP(S) rather than being a local path. */
export function isHttpUrl(url: string): boolean {
  return /^https?:\/\//i.test(url);
}

/** What ${VAR} substitution found: where each variable came from, and the values read from .env. */
export interface Substitution {
  variables: VariableSource[];
  /** Every value a ${VAR} took from .env: all of them are secrets (.env is where credentials live), wherever they are used. */
  fromDotenv: string[];
  /** A value's formatted path -> the ${VAR}s substituted into it. */
  reads?: ReadonlyMap<string, readonly string[]>;
}

/**
 * How git reaches a remote URL, by git's own rule (connect.c): `scheme://` URLs by their scheme (http,
 * https; ssh, git+ssh, ssh+git); otherwise scp-like ssh (`git@github.com:owner/repo.git`,
 * `gitbox:/srv/site.git`, an alias of ~/.ssh/config) when a colon comes before any slash and it is not
 * a Windows drive path (`C:\\x`, `C:/x`); everything else is a local path. The schema refuses other schemes.
 */
export function remoteKind(url: string): "http" | "ssh" | "local" {
  if (isHttpUrl(url)) return "http";
  if (/^(?:ssh|git\+ssh|ssh\+git):\/\//i.test(url)) return "ssh";
  if (/^[A-Za-z]:[\\/]/.test(url)) return "local";
  const colon = url.indexOf(":");
  const slash = url.indexOf("/");
  return colon > 0 && (slash < 0 || colon < slash) ? "ssh" : "local";
}

/**
 * Turns a schema-valid config (defaults already filled by the validator) into the `Config` the
 * controller runs on. Pure apart from reading `env`; never fails: the schema has already checked
 * every shape, and the semantic rules check meaning afterwards. `substitution` is what the
 * ${VAR}s in `data` (already substituted) were read from; a command `env` value read from one is a secret.
 */
export function normalize(data: CascadeSyncConfig, file: string, env: NodeJS.ProcessEnv, substitution: Substitution = { variables: [], fromDotenv: [] }): Config {
  const reads = substitution.reads ?? new Map<string, readonly string[]>();
  const dir = dirname(file);
  const secrets: string[] = [];
  const withheld = controllerVariables(reads);
  const commandEnv = (list: CommandEnvInput | undefined, path: (string | number)[]): CommandEnvEntry[] => {
    const entries = commandEnvEntries(list, path, reads);
    for (const e of entries) {
      // A value passed through or read through ${VAR} came from the controller's environment: a secret.
      const value = e.value ?? (Object.hasOwn(env, e.name) ? env[e.name] : undefined);
      if (value && (e.value === undefined ? !isAllowListed(e.name) : e.reads?.length)) secrets.push(value);
    }
    return entries;
  };
  const remotes: RemoteSpec[] = (data.remotes ?? []).map((r) => {
    const kind = remoteKind(r.url);
    // ${VAR}s are already substituted; an unset optional credential variable leaves "".
    const username = nonEmpty(r.username);
    const password = nonEmpty(r.password);
    secrets.push(...[username, password].filter((s): s is string => !!s));
    return {
      name: r.name,
      url: kind === "local" ? resolvePath(r.url, dir, env) : r.url,
      kind,
      ...(r.acceptNewHostKey ? { acceptNewHostKey: true } : {}),
      ...(r.paused ? { paused: true } : {}),
      ...(username ? { username } : {}),
      ...(password ? { password } : {}),
      timeoutMs: ms(r.timeout, "60s"),
    };
  });

  const environments: Record<string, EnvironmentSpec> = {};
  for (const [name, e] of Object.entries(data.environments ?? {})) {
    const promotion = e.promotion ?? "auto";
    environments[name] = {
      name,
      branch: e.branch,
      from: e.from,
      promotion,
      gates: (e.gates ?? []).map((g, i) => ({ ...check(g, "10m", ["environments", name, "gates", i], reads, secrets), env: commandEnv(g.env, ["environments", name, "gates", i, "env"]) }) as GateSpec),
      approvals: { required: e.approvals?.required ?? 1, signers: e.approvals?.signers ?? [] },
      windows: (e.windows ?? []).map((w) => ({ kind: w.kind, schedule: w.schedule, durationMs: ms(w.duration, "1h"), timezone: w.timezone })),
      ...(e.deploy
        ? {
            deploy: {
              directory: resolvePath(e.deploy.directory, dir, env),
              keep: e.deploy.keep ?? 5,
              selfHeal: e.deploy.selfHeal ?? true,
              hooks: {
                ...(e.deploy.hooks?.pre ? { pre: e.deploy.hooks.pre } : {}),
                ...(e.deploy.hooks?.post ? { post: e.deploy.hooks.post } : {}),
                env: commandEnv(e.deploy.hooks?.env, ["environments", name, "deploy", "hooks", "env"]),
              },
            },
          }
        : {}),
      health: (e.health ?? []).map((h, i) => ({ ...check(h, "5s", ["environments", name, "health", i], reads, secrets), env: commandEnv(h.env, ["environments", name, "health", i, "env"]) }) as HealthCheckSpec),
      healthyAfter: e.healthyAfter ?? 3,
      failureThreshold: e.failureThreshold ?? 3,
      progressDeadlineMs: ms(e.progressDeadline, "5m"),
      rollback: { automatic: e.rollback?.automatic ?? promotion === "approval" },
      ...(e.runsOn ? { runsOn: [...e.runsOn] } : {}),
    };
  }

  const webhooks = (data.notifications?.webhooks ?? []).map((w) => {
    if (w.secret) secrets.push(w.secret);
    return { url: w.url, ...(w.secret ? { secret: w.secret } : {}), ...(w.events ? { events: [...w.events] } : {}) };
  });
  const key = nonEmpty(data.security?.key);
  if (key) secrets.push(key);
  if (data.server?.token) secrets.push(data.server.token);

  return {
    file,
    dir,
    version: 1,
    sandbox: {
      branch: data.sandbox.branch ?? "develop",
      debounceMs: ms(data.sandbox.debounce, "3s"),
      batchWindowMs: ms(data.sandbox.batchWindow, "10s"),
      exclude: [...(data.sandbox.exclude ?? DEFAULT_EXCLUDE)],
      commitMessage: data.sandbox.commitMessage ?? "sync: {summary}",
      ...(data.sandbox.paused ? { paused: true } : {}),
      ...(data.sandbox.author ? { author: { name: data.sandbox.author.name ?? "cascade-sync", email: data.sandbox.author.email ?? "cascade-sync@localhost" } } : {}),
    },
    remotes,
    retry: {
      initialMs: ms(data.retry?.initial, "1s"),
      factor: data.retry?.factor ?? 2,
      maxMs: ms(data.retry?.max, "5m"),
      jitter: data.retry?.jitter ?? 0.2,
    },
    intervals: {
      fetchMs: ms(data.intervals?.fetch, "30s"),
      healthMs: ms(data.intervals?.health, "20s"),
      rescanMs: ms(data.intervals?.rescan, "10m"),
      leaseMs: ms(data.intervals?.lease, "1m"),
    },
    environments,
    notifications: { desktop: data.notifications?.desktop ?? true, webhooks },
    logging: {
      file: resolvePath(data.logging?.file ?? "~/.headyme/logs/cascade-sync.log", dir, env),
      level: (data.logging?.level ?? "info") as LogLevel,
    },
    security: {
      encrypt: [...(data.security?.encrypt ?? DEFAULT_ENCRYPT)],
      ...(key ? { key } : {}),
      maxFileSizeBytes: parseSize(data.security?.maxFileSize ?? "50MB") ?? 50 * 1024 * 1024,
      allow: [...(data.security?.allow ?? [])],
    },
    server: { listen: data.server?.listen ?? "", ...(data.server?.token ? { token: data.server.token } : {}) },
    secrets: [...new Set([...secrets, ...substitution.fromDotenv.filter((s) => s)])],
    ...(withheld.length ? { controllerVariables: withheld } : {}),
    variables: substitution.variables,
  };
}

type CheckInput = NonNullable<NonNullable<CascadeSyncConfig["environments"]>[string]["gates"]>[number];

/**
 * A gate or health check as the controller runs it. Secret header values (see httpHeaders) are
 * added to `secrets`, so the controller's redactor masks them too.
 */
function check(c: CheckInput, defaultTimeout: string, path: (string | number)[], reads: ReadonlyMap<string, readonly string[]>, secrets: string[]): GateSpec | HealthCheckSpec {
  const headers = c.http ? httpHeaders(c.http.headers, [...path, "http", "headers"], reads) : [];
  // "[withheld]" (a committed config's read of a credential) is no secret, and masking it would hide why a check fails.
  for (const h of headers) if (h.secret && h.value && !h.value.includes(WITHHELD)) secrets.push(h.value);
  const json = c.http?.expect?.json ?? [];
  const http: HttpCheckSpec | undefined = c.http
    ? {
        url: c.http.url, status: c.http.status ?? 200, ...(c.http.body !== undefined ? { body: c.http.body } : {}),
        ...(headers.length ? { headers } : {}), ...(json.length ? { json: json.map((a) => ({ path: a.path, equals: a.equals ?? null, ...(a.progressing?.length ? { progressing: [...a.progressing] } : {}) })) } : {}),
      }
    : undefined;
  return {
    name: c.name,
    ...(c.command !== undefined ? { command: c.command } : {}),
    ...(http ? { http } : {}),
    ...(c.builtin ? { builtin: c.builtin as GateSpec["builtin"] } : {}),
    timeoutMs: ms(c.timeout, defaultTimeout),
  };
}

/** Headers whose values are credentials by their very name, whatever they were read from. */
const CREDENTIAL_HEADERS = new Set(["authorization", "proxy-authorization", "cookie"]);

/**
 * An HTTP check's `headers` as a list: a value read through ${VAR} (the controller's environment or
 * .env) or given to a credential header is a secret.
 */
function httpHeaders(headers: Record<string, string> | undefined, path: (string | number)[], reads: ReadonlyMap<string, readonly string[]>): HttpHeaderSpec[] {
  return Object.entries(headers ?? {}).map(([name, value]) => {
    const vars = reads.get(formatPath([...path, name]));
    return { name, value, secret: !!vars?.length || CREDENTIAL_HEADERS.has(name.toLowerCase()), ...(vars?.length ? { reads: [...vars] } : {}) };
  });
}

type CommandEnvInput = NonNullable<NonNullable<CascadeSyncConfig["environments"]>[string]["gates"]>[number]["env"];

/**
 * A command's `env` as entries: `NAME` passes NAME through, `{ NAME: value }` gives it a value. Each
 * entry records the ${VAR}s its value was read from (from `reads`, keyed by the value's path).
 */
function commandEnvEntries(list: CommandEnvInput, path: (string | number)[], reads: ReadonlyMap<string, readonly string[]>): CommandEnvEntry[] {
  return (list ?? []).flatMap((item, i): CommandEnvEntry[] => {
    if (typeof item === "string") return [{ name: item }];
    return Object.entries(item).map(([name, value]) => {
      const vars = reads.get(formatPath([...path, i, name]));
      return { name, value, ...(vars?.length ? { reads: [...vars] } : {}) };
    });
  });
}

/**
 * The ${VAR}s read outside `environments`: the controller's own credentials, never given to commands.
 * CASCADE_* names are left out: they are withheld by their prefix anyway.
 */
function controllerVariables(reads: ReadonlyMap<string, readonly string[]>): string[] {
  const names = new Set<string>();
  for (const [path, vars] of reads) if (!path.startsWith("environments")) for (const v of vars) if (!v.startsWith("CASCADE_")) names.add(v);
  return [...names].sort();
}
