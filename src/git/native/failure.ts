import { posix } from "node:path";
import { CascadeError, type ErrorKind } from "../../errors.js";

/**
 * What git's failure is, once and for all: the only place where git's messages (stderr, and stdout for
 * `push --porcelain`) are read to decide what a failure means. Git runs with `LC_ALL=C`, so the messages
 * matched here are the untranslated ones.
 */
export class GitError extends CascadeError {
  /** `git <args>` as run, redacted. */
  readonly command: string;
  /** git's exit code; undefined when it did not exit by itself (timeout, abort, not started). */
  readonly exitCode: number | undefined;
  /** git's stderr, redacted. */
  readonly stderr: string;
  /** The ref concerned, when git named one (a race, a held ref lock, a refused push). */
  readonly ref: string | undefined;
  /** The lock file that is held, for reason `LockBusy`. */
  readonly lockPath: string | undefined;
  /** The ssh host, for reasons `HostKeyUnknown`/`HostKeyChanged`, when ssh named it. */
  readonly host: string | undefined;

  constructor(
    kind: ErrorKind,
    reason: string,
    message: string,
    detail: { command: string; exitCode?: number; stderr: string; ref?: string; lockPath?: string; host?: string; hint?: string; cause?: unknown; retryAfterMs?: number },
  ) {
    super(kind, reason, message, { hint: detail.hint, cause: detail.cause, retryAfterMs: detail.retryAfterMs });
    this.name = "GitError";
    this.command = detail.command;
    this.exitCode = detail.exitCode;
    this.stderr = detail.stderr;
    this.ref = detail.ref;
    this.lockPath = detail.lockPath;
    this.host = detail.host;
  }
}

/**
 * A ref was not where the move expected it (someone else moved it, or it exists where it must not):
 * Transient `RefConflict`, nothing was changed. Every RefConflict the gateway reports is one, so callers
 * may test `instanceof RefConflictError` or the reason alike.
 */
export class RefConflictError extends GitError {
  constructor(message: string, detail: { command: string; exitCode?: number; stderr: string; ref?: string }) {
    super("Transient", "RefConflict", message, { ...detail, hint: "a race with another process (another push, a native git command): cascade-sync looks again and retries at once; nobody has to act" });
    this.name = "RefConflictError";
  }
}

/**
 * An object the repository does not have (or cannot read): Stalled `ObjectMissing` naming it and what
 * was being read. A repository that lost an object needs a person (a fetch, or a restore).
 */
export function objectMissing(oid: string, what: string): GitError {
  return new GitError("Stalled", "ObjectMissing", `${what} ${oid} is missing from the repository`, {
    command: "git cat-file --batch", stderr: "",
    hint: "run `git fsck` in the repository; fetch the missing objects again from a remote that has them",
  });
}

/** What {@link classifyGitFailure} reads. */
export interface GitFailure {
  args: readonly string[];
  exitCode: number | undefined;
  stderr: string;
  /** Read too: `git push --porcelain` reports refused refs there. */
  stdout?: string;
  /** Applied to the command, stderr and every message before they are kept (secrets in URLs, tokens). */
  redact?: (text: string) => string;
}

interface Facts {
  text: string;
  where: string;
  base: { command: string; exitCode?: number; stderr: string };
}

type Rule = (f: Facts) => GitError | undefined;

/**
 * Turns a failed git command into a GitError with a kind and a stable reason. The rules are tried in
 * order; the first that recognises git's message wins, so the more specific messages come first (ssh
 * prints "Host key verification failed" after "REMOTE HOST IDENTIFICATION HAS CHANGED"; a held ref lock
 * says both "cannot lock ref" and "File exists"). Unknown failures are Transient `GitFailed` carrying
 * git's own (redacted) message: most are environmental (disk, permissions) and a person reads them in
 * status; a retry with backoff costs little.
 */
export function classifyGitFailure(failure: GitFailure): GitError {
  const redact = failure.redact ?? ((t: string) => t);
  const stderr = redact(failure.stderr);
  const text = `${stderr}\n${redact(failure.stdout ?? "")}`;
  const command = redact(`git ${failure.args.join(" ")}`);
  const facts: Facts = { text, where: command, base: { command, exitCode: failure.exitCode, stderr } };
  for (const rule of RULES) {
    const err = rule(facts);
    if (err) return err;
  }
  return new GitError("Transient", "GitFailed", `${command} failed (exit ${failure.exitCode ?? "none"}): ${firstLines(stderr) || "no message"}`, {
    ...facts.base,
    hint: "retried with backoff; if it keeps failing, git's message above says why",
  });
}

function firstLines(text: string, max = 6): string {
  return text.split("\n").map((l) => l.trim()).filter(Boolean).slice(0, max).join("; ");
}

/** The `remote: ...` lines a hook printed, without the prefix (git adds trailing spaces to clear the line). */
export function remoteMessages(text: string): string[] {
  return text
    .split(/\r?\n|\r/)
    .filter((l) => l.startsWith("remote: "))
    .map((l) => l.slice("remote: ".length).replace(/\s+$/, ""))
    .filter((l) => l.length > 0);
}

/** The host ssh named: `Host key for HOST has changed`, `No ... host key is known for HOST`, `connect to host HOST`. */
function sshHost(text: string): string | undefined {
  return /(?:Host key for|host key is known for|connect to host) \[?([^\s\]:]+)/.exec(text)?.[1];
}

/** The ref git named in `cannot lock ref 'REF'`, `failed to update ref 'REF'`, or a push status line. */
function refIn(text: string): string | undefined {
  return (
    /cannot lock ref '([^']+)'/.exec(text)?.[1] ??
    /failed to update ref '([^']+)'/.exec(text)?.[1] ??
    /^!\s*\t?(?:\S+:)?(refs\/\S+)\t/m.exec(text)?.[1] ??
    /->\s+(\S+)\s+\(/.exec(text)?.[1]
  );
}

const RULES: Rule[] = [
  (f) => {
    if (!/REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for \S+ has changed/.test(f.text)) return undefined;
    const host = sshHost(f.text);
    return new GitError("Stalled", "HostKeyChanged", `${f.where}: the ssh host key of ${host ?? "the remote"} has changed since it was trusted; refused`, {
      ...f.base, host,
      hint: `this is never accepted automatically: it may be an attack, or the server was reinstalled. Ask its administrator for the new key's fingerprint, then fix ~/.ssh/known_hosts (ssh-keygen -R ${host ?? "HOST"}) and run ssh -T ${host ?? "HOST"} once`,
    });
  },
  (f) => {
    if (!/Host key verification failed|No \S+ host key is known for/.test(f.text)) return undefined;
    const host = sshHost(f.text);
    return new GitError("Stalled", "HostKeyUnknown", `${f.where}: the ssh host key of ${host ?? "the remote"} is not known yet`, {
      ...f.base, host,
      hint: `run ssh -T ${host ?? "HOST"} once as the user running cascade-sync and check the fingerprint, or opt in with remotes[].acceptNewHostKey: true (a changed key is still refused)`,
    });
  },
  (f) => {
    if (!/Permission denied \((?:publickey|password|keyboard-interactive)|Permission denied, please try again/.test(f.text)) return undefined;
    return new GitError("Stalled", "AuthFailed", `${f.where}: the ssh server refused every key offered`, {
      ...f.base,
      hint: "add the key to ssh-agent (ssh-add) or name it in ~/.ssh/config; under systemd the unit needs SSH_AUTH_SOCK; check with ssh -T as the same user",
    });
  },
  (f) => {
    const http = /The requested URL returned error: (401|403)/.exec(f.text);
    if (!http && !/Authentication failed for|could not read (?:Username|Password) for|HTTP Basic: Access denied|terminal prompts disabled/.test(f.text)) return undefined;
    return new GitError("Stalled", "AuthFailed", `${f.where}: the remote refused the credentials${http ? ` (HTTP ${http[1]})` : ""}`, {
      ...f.base,
      hint: "set remotes[].username/password in the config (by default ${CASCADE_CLIENT_ID} and ${CASCADE_CLIENT_SECRET}), or a git credential helper for this URL",
    });
  },
  (f) => {
    const hook = /\[remote rejected\][^\n]*\(([^)]*hook declined)\)/.exec(f.text);
    if (!hook) return undefined;
    const said = remoteMessages(f.text);
    return new GitError("Stalled", "PushRejected", `${f.where}: the remote refused the push (its ${hook[1]})${said.length ? `: ${said.join(" / ")}` : ""}`, {
      ...f.base, ref: refIn(f.text),
      hint: "the remote's hook refused this push; its message says why. Change what it objects to, or ask whoever runs the remote",
    });
  },
  (f) => {
    const found = /Unable to create '([^']+\.lock)': File exists/.exec(f.text);
    if (!found) return undefined;
    // A remote's receive-pack names it as `site.git/./refs/heads/x.lock`.
    const lock = posix.normalize(found[1]!);
    const ref = /cannot lock ref '([^']+)'/.exec(f.text)?.[1];
    return new GitError("Transient", "LockBusy", `${f.where}: ${lock} exists: another git process is working in this repository, or one crashed and left it`, {
      ...f.base, ref, lockPath: lock,
      hint: `retried soon; if no git process is running, remove ${lock}`,
    });
  },
  (f) => {
    if (!/\[remote rejected\][^\n]*\((?:failed to update ref|cannot lock ref|failed to lock)|failed to update ref|cannot lock ref|is at [0-9a-f]+ but expected|reference already exists|unable to resolve reference/.test(f.text)) return undefined;
    const ref = refIn(f.text);
    return new RefConflictError(`${f.where}: ${ref ?? "a ref"} was moved by someone else meanwhile; nothing was changed`, { ...f.base, ref });
  },
  (f) => {
    if (!/\[rejected\][^\n]*\((?:fetch first|non-fast-forward|stale info)\)|Updates were rejected because/.test(f.text)) return undefined;
    const ref = refIn(f.text);
    return new GitError("Transient", "NonFastForward", `${f.where}: ${ref ?? "the branch"} on the remote has commits that are not here yet`, {
      ...f.base, ref,
      hint: "they are fetched and merged before the next push",
    });
  },
  (f) => {
    const why = /\[remote rejected\][^\n]*\(([^)]*)\)/.exec(f.text);
    if (!why) return undefined;
    const said = remoteMessages(f.text);
    return new GitError("Stalled", "PushRejected", `${f.where}: the remote refused the push (${why[1]})${said.length ? `: ${said.join(" / ")}` : ""}`, {
      ...f.base, ref: refIn(f.text),
      hint: "the remote's branch protection or configuration refused it",
    });
  },
  (f) => {
    const proto = /transport '([^']+)' not allowed/.exec(f.text);
    if (!proto) return undefined;
    return new GitError("Stalled", "ProtocolNotAllowed", `${f.where}: the ${proto[1]} transport is not allowed`, {
      ...f.base, hint: "use an http(s) or ssh URL or a local path in remotes[].url",
    });
  },
  (f) => {
    if (!/Repository not found|The requested URL returned error: 404|does not appear to be a git repository/.test(f.text)) return undefined;
    return new GitError("Stalled", "RemoteNotFound", `${f.where}: no repository at this URL`, { ...f.base, hint: "check remotes[].url" });
  },
  (f) => {
    if (!/detected dubious ownership/.test(f.text)) return undefined;
    return new GitError("Stalled", "UnsafeRepositoryOwner", `${f.where}: git refuses the repository because another user owns it`, {
      ...f.base, hint: "run cascade-sync as the repository's owner, or add it to git's safe.directory (git config --global --add safe.directory PATH)",
    });
  },
  (f) => {
    if (!/unknown repository extension|expected git repo version <= \d+/.test(f.text)) return undefined;
    return new GitError("Stalled", "RepositoryFormatUnsupported", `${f.where}: this git cannot read the repository's format: ${firstLines(f.base.stderr, 2)}`, {
      ...f.base, hint: "upgrade git, or use a repository made with the default format",
    });
  },
  (f) => {
    if (!/not a git repository/.test(f.text)) return undefined;
    return new GitError("Stalled", "NotAGitRepository", `${f.where}: not a git repository`, { ...f.base, hint: "check the path; run cascade-sync init to make the folder a sandbox" });
  },
  (f) => {
    if (!/No space left on device|Disk quota exceeded/.test(f.text)) return undefined;
    return new GitError("Transient", "DiskFull", `${f.where}: the disk is full`, { ...f.base, hint: "free some space; retried with backoff" });
  },
  (f) => {
    if (!/Could not resolve host|Failed to connect|Connection refused|Connection timed out|Connection reset|Operation timed out|The remote end hung up unexpectedly|early EOF|returned error: 5\d\d|ssh: connect to host|Could not read from remote repository|Could not resolve hostname|RPC failed|transfer closed with outstanding read data|Empty reply from server|unexpected disconnect while reading sideband packet/.test(f.text)) return undefined;
    return new GitError("Transient", "RemoteUnavailable", `${f.where}: remote unreachable: ${firstLines(f.base.stderr, 3)}`, {
      ...f.base, hint: "retried with backoff; commits wait locally until it is back",
    });
  },
];
