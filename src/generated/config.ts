/* DO NOT EDIT. Generated from schema/cascade-sync-config.schema.json by scripts/gen-types.mjs; run `npm run gen` after editing the schema. */

/**
 * Variables the gate's command is given beyond the allow-listed ones (see the command environment type), such as [NPM_TOKEN]. Ignored by http and builtin gates.
 */
export type CommandEnv = (
  | string
  | {
      [k: string]: string;
    }
)[];
/**
 * Variables hooks.pre and hooks.post are given beyond the allow-listed ones (see the command environment type).
 */
export type CommandEnv1 = (
  | string
  | {
      [k: string]: string;
    }
)[];
/**
 * Variables the check's command is given beyond the allow-listed ones (see the command environment type). Ignored by http checks.
 */
export type CommandEnv2 = (
  | string
  | {
      [k: string]: string;
    }
)[];
/**
 * Name of an event that can be notified.
 */
export type NotificationEvent =
  | "approval-needed"
  | "promoted"
  | "gate-failed"
  | "health-degraded"
  | "health-recovered"
  | "rolled-back"
  | "config-invalid"
  | "push-failing"
  | "drift-detected"
  | "secret-found";

/**
 * The desired state of one cascade-sync sandbox, read from cascade-sync-config.yaml. Only version and sandbox are required; a file without environments only commits and pushes the sandbox.
 */
export interface CascadeSyncConfig {
  /**
   * Version of this file's format. Only 1 exists today; it lets a later release read old files correctly.
   */
  version: 1;
  sandbox: Sandbox;
  /**
   * Git remotes that the sandbox branch and the environment branches are pushed to and fetched from. An empty list keeps everything local.
   */
  remotes?: Remote[];
  retry?: Retry;
  intervals?: Intervals;
  environments?: Environments;
  notifications?: Notifications;
  logging?: Logging;
  security?: Security;
  server?: Server;
}
/**
 * How the working folder is committed: which branch, how changes are batched, what is left out and how commits are written. Every field is optional.
 */
export interface Sandbox {
  /**
   * Branch that receives the sandbox commits and is pushed to every remote.
   */
  branch?: string;
  /**
   * Quiet time after the last change before a batch is committed.
   */
  debounce?: string;
  /**
   * A burst of changes is committed at the latest this long after its first change, even if files keep changing.
   */
  batchWindow?: string;
  /**
   * Gitignore-style patterns that are never committed. They apply in addition to the repository's .gitignore; setting this list replaces these defaults, so repeat the ones you want to keep.
   */
  exclude?: string[];
  /**
   * Message of each sandbox commit. {summary} becomes a short list of what changed, {count} the number of changed files and {branch} the sandbox branch.
   */
  commitMessage?: string;
  /**
   * Stop committing the sandbox: edits stay in the folder, uncommitted, and nothing is lost; setting paused back to false (or removing it) commits everything that waited as one batch. Remotes are still fetched and pushed. Takes effect without a restart.
   */
  paused?: boolean;
  author?: Author;
}
/**
 * Author and committer of sandbox commits. Default: none (the repository's git user.name and user.email are used, read again at most every 5 seconds, and cascade-sync <cascade-sync@localhost> where git has none). When author is given, a name or email left out takes its default below.
 */
export interface Author {
  /**
   * Name written into sandbox commits.
   */
  name?: string;
  /**
   * Email address written into sandbox commits.
   */
  email?: string;
}
/**
 * A git remote reached over HTTP(S), over ssh, or through a local path.
 */
export interface Remote {
  /**
   * Name of the remote, such as origin. Letters, digits, dots, underscores and dashes.
   */
  name: string;
  /**
   * An http:// or https:// URL; an ssh URL, as ssh://[user@]host[:port]/path or scp-like [user@]host:path (git@github.com:owner/repo.git, or an alias of ~/.ssh/config such as gitbox:/srv/site.git: a colon before any slash); or the path of a local bare repository (relative to the config's folder). git:// and other schemes are not supported.
   */
  url: string;
  /**
   * User name for HTTP authentication. ${VAR} reads the environment variable VAR when the controller starts, and the value is never written to logs or status. With the default, no credentials are sent while CASCADE_CLIENT_ID is unset.
   */
  username?: string;
  /**
   * Password or access token for HTTP authentication. ${VAR} reads the environment variable VAR when the controller starts, and the value is never written to logs or status. With the default, no credentials are sent while CASCADE_CLIENT_SECRET is unset.
   */
  password?: string;
  /**
   * A fetch or push that has not answered after this long counts as the remote being unreachable: it is retried with backoff while commits wait locally.
   */
  timeout?: string;
  /**
   * For ssh remotes: trust the server's host key the first time it is seen (ssh's StrictHostKeyChecking=accept-new) instead of stalling until someone runs ssh -T once. A host key that changed later is refused regardless.
   */
  acceptNewHostKey?: boolean;
  /**
   * Stop pushing to this remote: sandbox commits go on and wait locally, and are pushed when paused is set back to false (or removed). Fetching from the remote goes on, so its commits still reach the sandbox and status shows how far behind it is. Takes effect without a restart.
   */
  paused?: boolean;
}
/**
 * Backoff for transient failures such as an unreachable remote or a held lock. The wait starts at initial, is multiplied by factor after each failure up to max, and resets after a success.
 */
export interface Retry {
  /**
   * Wait before the first retry.
   */
  initial?: string;
  /**
   * Multiplier applied to the wait after each further failure.
   */
  factor?: number;
  /**
   * Longest wait between two retries.
   */
  max?: string;
  /**
   * Random spread applied to each wait, as a fraction of it: 0.2 means up to 20% shorter or longer, so several controllers do not retry in step.
   */
  jitter?: number;
}
/**
 * How often the controller looks again on its own, without any event telling it to.
 */
export interface Intervals {
  /**
   * How often the remotes are fetched to notice commits pushed by others.
   */
  fetch?: string;
  /**
   * How often every environment's health checks run.
   */
  health?: string;
  /**
   * How often the whole sandbox is rescanned to catch changes the file watcher missed.
   */
  rescan?: string;
  /**
   * How long an environment's lease lasts without renewal (only with a remote: in a team on one remote, only the lease holder acts on an environment). The holder renews it every third of this; when the holder stops it releases the lease, when it dies another controller takes over once this long has passed without a renewal. The duration written in the lease by its holder is the one every controller judges it by.
   */
  lease?: string;
}
/**
 * The stages after the sandbox, keyed by environment name (lowercase letters, digits and dashes, starting with a letter). Without environments cascade-sync only commits and pushes the sandbox.
 */
export interface Environments {
  [k: string]: Environment;
}
/**
 * One stage of the pipeline: a branch that is moved to candidate commits once they pass gates, windows and approvals, and optionally a deploy directory whose health is watched.
 */
export interface Environment {
  /**
   * Branch that holds what this environment runs. Promotion fast-forwards it to the candidate commit.
   */
  branch: string;
  /**
   * Where candidate commits come from: the name of another environment, whose healthy commit is the candidate, or a branch name such as develop. An environment name wins over a branch of the same name.
   */
  from: string;
  /**
   * auto promotes as soon as the gates pass and a window allows it; approval also waits for signed approvals of that exact commit in cascade-sync-state.yaml.
   */
  promotion?: "auto" | "approval";
  /**
   * Checks that must all pass on the candidate commit before promotion. They run in a clean export of that commit, never in the sandbox.
   */
  gates?: Gate[];
  approvals?: Approvals;
  /**
   * When promotion may happen. With no windows it may happen at any time; with allow windows only while one is open; a deny window blocks it while open, even inside an allow window.
   */
  windows?: Window[];
  deploy?: Deploy;
  /**
   * Checks run every intervals.health against the live release. With no checks, a deployed release counts as healthy at once.
   */
  health?: HealthCheck[];
  /**
   * Number of consecutive rounds in which every health check passes before a new release counts as healthy and may feed the next environment.
   */
  healthyAfter?: number;
  /**
   * Number of consecutive rounds with a failing health check before the environment counts as degraded.
   */
  failureThreshold?: number;
  /**
   * How long a new release may take to become healthy. Past this it counts as failed.
   */
  progressDeadline?: string;
  /**
   * Host names of the machines whose controllers may act on this environment (run its gates, promote, deploy, watch health, roll back) by holding its lease on the first remote; the others follow it. Default: any machine. Read from the config committed on this environment's own branch, like its promotion policy, so a sandbox edit cannot put a laptop in charge of production. A machine's name is its hostname, or CASCADE_SYNC_HOSTNAME when set.
   *
   * @minItems 1
   */
  runsOn?: [string, ...string[]];
  rollback?: Rollback;
}
/**
 * A check that must pass on a candidate commit before promotion. Exactly one of command, http or builtin is given.
 */
export interface Gate {
  /**
   * Name shown in status, plan and notifications, such as test.
   */
  name: string;
  /**
   * Shell command run in a clean export of the candidate commit. It passes when it exits with status 0.
   */
  command?: string;
  http?: HttpCheck;
  /**
   * A check built into cascade-sync: config validates the candidate's cascade-sync-config.yaml, integrity checks that the commit's objects are complete and readable, and security-scan looks for secrets and oversized files as set in security.
   */
  builtin?: "config" | "integrity" | "security-scan";
  /**
   * The gate fails when it has not finished after this long.
   */
  timeout?: string;
  env?: CommandEnv;
}
/**
 * An HTTP GET that passes when the response has the expected status and, if body is given, contains that text.
 */
export interface HttpCheck {
  /**
   * Absolute URL to request, such as http://127.0.0.1:3001/healthz.
   */
  url: string;
  /**
   * Response status the check expects.
   */
  status?: number;
  /**
   * Text the response body must contain. Default: none (the body is not checked).
   */
  body?: string;
  /**
   * Request headers, by name, such as { Authorization: "Bearer ${ARGOCD_TOKEN}" }. ${VAR} reads the environment variable VAR. A value read through ${VAR}, and any Authorization, Proxy-Authorization or Cookie value, is a secret: it is never logged and is masked in status, history, notifications and errors. The health checks and gates that run come from configs committed on branches, which cannot read the controller's own credentials (CASCADE_* variables and every variable read outside environments, such as a remote's password): such a value reads as [withheld], and a header holding it is not sent (the check fails and says so). With none, only User-Agent: cascade-sync is sent.
   */
  headers?: {
    [k: string]: string;
  };
  expect?: HttpExpect;
}
/**
 * What the response must say beyond its status, such as an Argo CD application's health and revision. Empty: only status and body are checked.
 */
export interface HttpExpect {
  /**
   * Assertions on the response parsed as JSON (its first 4 MiB); every one must hold. A body that is not JSON fails the check. Empty: the body is not parsed.
   */
  json?: JsonAssertion[];
}
/**
 * One field of a JSON response and the value it must have, such as { path: status.sync.revision, equals: "{commit}" }.
 */
export interface JsonAssertion {
  /**
   * Where the field is: keys separated by dots, [N] for the Nth item of a list (from 0), and [KEY=VALUE] for the first item of a list whose KEY is VALUE, such as status.health.status or status.conditions[type=Ready].status. A key cannot contain a dot or a bracket.
   */
  path: string;
  /**
   * The value the field must have: text, a number, true, false or null, compared exactly (the text "true" is not the value true). In text, {commit} becomes the full commit the environment should run (for a health check, the commit its branch or deploy directory holds; for a gate, the candidate), so that a rollout reported healthy at an older revision does not count. While an assertion with {commit} does not hold, the response is about another commit: a health check then counts as still progressing (bounded by progressDeadline), not as failed, and the other assertions are not judged.
   */
  equals: string | number | boolean | null;
  /**
   * Values of the field that mean the rollout is still under way rather than failed, such as [Progressing] for an Argo CD health status: while the field has one of them, a new release's health check counts as progressing (bounded by progressDeadline), not as failed. Once the release has been healthy, any failed assertion counts as a failure. Empty: every value but equals fails the check.
   */
  progressing?: (string | number | boolean | null)[];
}
/**
 * Who may approve a promotion when promotion is approval, and how many of them must. The signers list is read from the config committed on this environment's branch, so a sandbox edit cannot make itself an approver.
 */
export interface Approvals {
  /**
   * Number of distinct signers whose valid approvals a commit needs.
   */
  required?: number;
  /**
   * Keys allowed to approve, one OpenSSH allowed_signers line each: principal, key type, base64 key and an optional comment, such as "alice@example.com ssh-ed25519 AAAA... alice laptop".
   */
  signers?: string[];
}
/**
 * A recurring period that allows or blocks promotion: it opens at each time the schedule matches and stays open for duration.
 */
export interface Window {
  /**
   * allow permits promotion while the window is open; deny blocks it while open.
   */
  kind: "allow" | "deny";
  /**
   * When the window opens, as a five-field cron expression (minute hour day-of-month month day-of-week), such as "0 9 * * 1-5" for 09:00 on weekdays.
   */
  schedule: string;
  /**
   * How long the window stays open each time, such as 8h.
   */
  duration: string;
  /**
   * IANA time zone the schedule is read in, such as Europe/Berlin or UTC.
   */
  timezone: string;
}
/**
 * Where promoted commits are materialized: releases/<commit>/ holds each release and current is a symlink switched atomically to the live one. Default: none (promotion only moves the branch).
 */
export interface Deploy {
  /**
   * Directory that holds releases/ and the current symlink. It is created when missing.
   */
  directory: string;
  /**
   * Number of releases kept on disk, counting the live one; older ones are removed.
   */
  keep?: number;
  /**
   * When true, a deploy directory changed by hand (current repointed, release files edited or removed) is put back to the promoted commit. When false, the drift is only reported.
   */
  selfHeal?: boolean;
  hooks?: DeployHooks;
}
/**
 * Shell commands run around the switch of current.
 */
export interface DeployHooks {
  /**
   * Shell command run in the new release directory before current is switched to it. If it fails, current is not switched. Default: none (nothing runs before the switch).
   */
  pre?: string;
  /**
   * Shell command run in the new release directory after current is switched to it. If it fails, the deploy counts as failed. Default: none (nothing runs after the switch).
   */
  post?: string;
  env?: CommandEnv1;
}
/**
 * A check of a live release. Exactly one of command or http is given.
 */
export interface HealthCheck {
  /**
   * Name shown in status and notifications, such as web.
   */
  name: string;
  /**
   * Shell command run in the live release directory. It passes when it exits with status 0.
   */
  command?: string;
  http?: HttpCheck;
  /**
   * The check fails when it has not finished after this long.
   */
  timeout?: string;
  env?: CommandEnv2;
}
/**
 * What happens when a promoted release fails.
 */
export interface Rollback {
  /**
   * When true, a release that becomes degraded or misses progressDeadline is replaced by the last healthy one, and the failed commit is not promoted again. Default: true when promotion is approval, false otherwise (it depends on promotion, so no single value is given here).
   */
  automatic?: boolean;
}
/**
 * Where events such as a needed approval, a promotion or a rollback are reported.
 */
export interface Notifications {
  /**
   * Show desktop notifications where the system supports them.
   */
  desktop?: boolean;
  /**
   * URLs that receive each event as an HTTP POST with a JSON body.
   */
  webhooks?: Webhook[];
}
/**
 * A URL that receives events as HTTP POST requests with a JSON body.
 */
export interface Webhook {
  /**
   * Absolute URL the events are posted to.
   */
  url: string;
  /**
   * Shared secret used to sign each request (an x-cascade-signature header) so the receiver can check that it came from cascade-sync. ${VAR} reads the environment variable VAR; the value is never logged. Default: none (requests are sent unsigned).
   */
  secret?: string;
  /**
   * Events sent to this URL. Default: none (every event is sent, also events that later releases add).
   */
  events?: NotificationEvent[];
}
/**
 * Where the controller writes its log and how much detail it includes. Secrets are redacted before anything is written.
 */
export interface Logging {
  /**
   * Log file, written as JSON lines. A leading ~ stands for the home directory.
   */
  file?: string;
  /**
   * Least severe level that is written: debug, info, warn or error.
   */
  level?: "debug" | "info" | "warn" | "error";
}
/**
 * What keeps secrets and oversized files out of the history.
 */
export interface Security {
  /**
   * Gitignore-style patterns of files that are committed only in encrypted form, with key. The sandbox copy stays readable.
   */
  encrypt?: string[];
  /**
   * Key used for encrypt: 32 random bytes in base64, normally written as ${CASCADE_ENCRYPTION_KEY} so it is read from the environment, or the path of a file that holds it. Default: none (the key file that init creates outside the sandbox, under ${XDG_CONFIG_HOME:-~/.config}/cascade-sync/keys/, is used; without any usable key, files matching encrypt are not committed at all).
   */
  key?: string;
  /**
   * Largest file that is committed, such as 500KB or 50MB. Larger files are left out and reported.
   */
  maxFileSize?: string;
  /**
   * What the secret scan accepts, for known false positives such as test fixtures: gitignore-style path patterns, or the 16-hex fingerprint of one finding as status shows it (the only way to accept a file over maxFileSize).
   */
  allow?: string[];
}
/**
 * The optional local HTTP server: the status page, /metrics, /healthz, /readyz, /api/status and /api/events. Read-only.
 */
export interface Server {
  /**
   * Address to listen on as host:port, such as 127.0.0.1:7420. Empty means no server.
   */
  listen?: string;
  /**
   * Token that clients must present to the server, in an Authorization: Bearer header (or as ?token= on /api/events). ${VAR} reads the environment variable VAR; the value is never logged. Default: none (no token is asked for; the server then listens only on a loopback address and answers only to a loopback Host).
   */
  token?: string;
}
