import type { LogLevel } from "../log.js";

/** One problem found in a config file, with where it is and what to do. */
export interface ConfigProblem {
  severity: "error" | "warning";
  file: string;
  line: number;
  col: number;
  /** Dotted path of the value, e.g. `environments.staging.from`; empty for the whole file. */
  path: string;
  message: string;
  hint?: string;
}

/** An HTTP check used by gates and health checks. */
export interface HttpCheckSpec {
  url: string;
  status: number;
  body?: string;
}

export interface GateSpec {
  name: string;
  command?: string;
  http?: HttpCheckSpec;
  builtin?: "config" | "integrity" | "security-scan";
  timeoutMs: number;
}

export interface HealthCheckSpec {
  name: string;
  command?: string;
  http?: HttpCheckSpec;
  timeoutMs: number;
}

export interface WindowSpec {
  kind: "allow" | "deny";
  schedule: string;
  durationMs: number;
  timezone: string;
}

export interface EnvironmentSpec {
  name: string;
  branch: string;
  from: string;
  promotion: "auto" | "approval";
  gates: GateSpec[];
  approvals: { required: number; signers: string[] };
  windows: WindowSpec[];
  deploy?: { directory: string; keep: number; selfHeal: boolean; hooks: { pre?: string; post?: string } };
  health: HealthCheckSpec[];
  healthyAfter: number;
  failureThreshold: number;
  progressDeadlineMs: number;
  rollback: { automatic: boolean };
}

export interface RemoteSpec {
  name: string;
  /** As written (after ${VAR} substitution); a local path is resolved against the config's folder. */
  url: string;
  /** How git reaches it: http(s), ssh (`ssh://` or scp-like `[user@]host:path`), or a local path. */
  kind: "http" | "ssh" | "local";
  username?: string;
  password?: string;
  /** How long a fetch or push may go without an answer. */
  timeoutMs: number;
  /** ssh only: trust a host key seen for the first time (a changed one is refused regardless). */
  acceptNewHostKey?: boolean;
}

/**
 * The config after defaults, with durations in milliseconds, paths resolved and ${VAR}s substituted.
 * This is what the controller runs on; the written shape is the generated `CascadeSyncConfig`.
 */
export interface Config {
  /** Absolute path of the config file. */
  file: string;
  /** The sandbox folder: the config file's folder. */
  dir: string;
  version: 1;
  sandbox: {
    branch: string;
    debounceMs: number;
    batchWindowMs: number;
    exclude: string[];
    commitMessage: string;
    author?: { name: string; email: string };
  };
  remotes: RemoteSpec[];
  retry: { initialMs: number; factor: number; maxMs: number; jitter: number };
  intervals: { fetchMs: number; healthMs: number; rescanMs: number };
  environments: Record<string, EnvironmentSpec>;
  notifications: { desktop: boolean; webhooks: { url: string; secret?: string; events?: string[] }[] };
  logging: { file: string; level: LogLevel };
  security: { encrypt: string[]; key?: string; maxFileSizeBytes: number; allow: string[] };
  server: { listen: string; token?: string };
  /** Every secret value in this config (passwords, tokens), for redaction. */
  secrets: string[];
}

/** The result of loading a config: never a throw. */
export type LoadResult =
  | { ok: true; config: Config; warnings: ConfigProblem[] }
  | { ok: false; problems: ConfigProblem[] };
