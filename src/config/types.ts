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
  /** Request headers in the order written; absent when the config gives none. */
  headers?: HttpHeaderSpec[];
  /** Assertions on the JSON response; absent when the config gives none. */
  json?: JsonAssertionSpec[];
}

/** One request header of an HTTP check, its ${VAR}s substituted. */
export interface HttpHeaderSpec {
  name: string;
  value: string;
  /** Never shown: read through ${VAR}, or the value of a credential header (Authorization, Proxy-Authorization, Cookie). */
  secret: boolean;
  /** The variables the value was read from through ${VAR}. */
  reads?: string[];
}

/** One assertion on an HTTP check's JSON response: the field at `path` must equal `equals` (`{commit}` expanded when the check runs). */
export interface JsonAssertionSpec {
  path: string;
  equals: string | number | boolean | null;
  /** Values that mean "still rolling out", not "failed". */
  progressing?: (string | number | boolean | null)[];
}

/**
 * A variable a command (gate, deploy hook, health check) is given beyond the allow-listed ones, as
 * the config's `env` names it: `NAME` (passed through from the controller's environment when set
 * there) or `{ NAME: value }`.
 */
export interface CommandEnvEntry {
  name: string;
  /** The value, ${VAR}s substituted; absent: passed through from the controller's environment. */
  value?: string;
  /** The variables the value was read from through ${VAR}; a value read from one is a secret. */
  reads?: string[];
}

export interface GateSpec {
  name: string;
  command?: string;
  http?: HttpCheckSpec;
  builtin?: "config" | "integrity" | "security-scan";
  timeoutMs: number;
  /** What the command is given beyond the allow-list; normalize always sets it (absent: nothing). */
  env?: CommandEnvEntry[];
}

export interface HealthCheckSpec {
  name: string;
  command?: string;
  http?: HttpCheckSpec;
  timeoutMs: number;
  /** What the command is given beyond the allow-list; normalize always sets it (absent: nothing). */
  env?: CommandEnvEntry[];
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
  /** `hooks.env`: what both hooks are given beyond the allow-list; normalize always sets it (absent: nothing). */
  deploy?: { directory: string; keep: number; selfHeal: boolean; hooks: { pre?: string; post?: string; env?: CommandEnvEntry[] } };
  health: HealthCheckSpec[];
  healthyAfter: number;
  failureThreshold: number;
  progressDeadlineMs: number;
  rollback: { automatic: boolean };
  /** Host names whose controllers may hold this environment's lease (act on it); absent: any. */
  runsOn?: string[];
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
  /** `paused: true`: commits wait locally; nothing is pushed to this remote (fetching goes on). */
  paused?: boolean;
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
    /** `paused: true`: nothing is committed; edits wait in the folder and are committed as one batch once unpaused. */
    paused?: boolean;
  };
  remotes: RemoteSpec[];
  retry: { initialMs: number; factor: number; maxMs: number; jitter: number };
  /** `leaseMs`: how long an environment's lease lasts without renewal (a team on one remote). */
  intervals: { fetchMs: number; healthMs: number; rescanMs: number; leaseMs: number };
  environments: Record<string, EnvironmentSpec>;
  notifications: { desktop: boolean; webhooks: { url: string; secret?: string; events?: string[] }[] };
  logging: { file: string; level: LogLevel };
  security: { encrypt: string[]; key?: string; maxFileSizeBytes: number; allow: string[] };
  server: { listen: string; token?: string };
  /**
   * Every secret value in this config, for redaction: passwords, tokens, whatever .env gave, and what
   * commands' `env` reads from the controller's environment (names passed through, values read through ${VAR}).
   */
  secrets: string[];
  /** The variables this config reads for the controller itself (outside `environments`): withheld from commands and from configs in commits. */
  controllerVariables?: string[];
  /** Each ${VAR} the config refers to, in order of first use, and where its value came from. */
  variables: VariableSource[];
}

/**
 * Where a ${VAR} of the config found its value: the controller's environment (`shell`, which wins),
 * the sandbox's `.env`, or neither. Never the value itself.
 */
export interface VariableSource {
  name: string;
  source: "shell" | ".env" | "missing";
  /** Missing and allowed to be: a default credential variable (then no credentials are sent). */
  optional?: true;
}

/** The result of loading a config: never a throw. `variables` says where each ${VAR} came from (once the file parsed). */
export type LoadResult =
  | { ok: true; config: Config; warnings: ConfigProblem[] }
  | { ok: false; problems: ConfigProblem[]; variables?: VariableSource[] };
