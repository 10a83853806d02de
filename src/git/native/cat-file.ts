import { spawn, type ChildProcess } from "node:child_process";
import { GitError } from "./failure.js";
import { gitEnvironment, globalArgs, killProcessGroup, type GitRepo } from "./run.js";

/** An object read from the repository. */
export interface GitObject {
  oid: string;
  /** blob, tree, commit or tag. */
  type: string;
  size: number;
  /** The object's content as stored (no filters applied). */
  data: Buffer;
}

interface Request {
  name: string;
  attempts: number;
  resolve: (obj: GitObject | undefined) => void;
  reject: (err: Error) => void;
}

/** One running `git cat-file --batch` and where its answer stream is. */
interface Reader {
  child: ChildProcess;
  pending: Request[];
  stderr: string;
  /** Bytes of a header line not yet ended by its newline. */
  header: Buffer;
  /** The object whose content is being read, and how much of it has arrived. */
  body: { obj: GitObject; filled: number } | undefined;
  /** The newline after an object's content is still to come. */
  expectNewline: boolean;
  /** close (or a spawn error) was handled; Node may report both. */
  ended: boolean;
  /** A `flush` is queued for the requests written in this tick. */
  flushQueued: boolean;
}

const HEADER = /^([0-9a-f]{40}|[0-9a-f]{64}) (\S+) (\d+)$/;

/**
 * Reads objects through one long-lived `git cat-file --batch-command --buffer` (`--batch`'s answers, git
 * 2.36+), so a thousand reads cost one process instead of a thousand. Requests are written as they come,
 * git is told to flush once per tick, and answers come in order; content is read by the
 * size git announces, so it may hold any bytes, newlines included. When the process dies (killed, out of
 * memory) the requests it had not answered are sent again to a new one, at most twice each; a request
 * whose answer has begun to arrive is sent again whole. Object names containing a newline cannot be
 * asked for (the protocol is line-based).
 */
export class CatFileBatch {
  private reader: Reader | undefined;
  private closed = false;
  /** How many times a process was started; a test kills one and sees the next. */
  starts = 0;

  constructor(private readonly repo: GitRepo) {}

  /** The running process's pid (also its process group id), if one runs. */
  get pid(): number | undefined {
    return this.reader?.child.pid;
  }

  /**
   * Resolves with the object `name` names (an oid, or anything `git rev-parse` takes such as
   * `HEAD:path`), or undefined when the repository does not have it. Rejects with Transient
   * `CatFileFailed` when git keeps dying, `CatFileClosed` after close(), a TypeError for a name with a
   * newline.
   */
  read(name: string): Promise<GitObject | undefined> {
    if (name.length === 0 || /[\n\0]/.test(name)) return Promise.reject(new TypeError(`cat-file: an object name cannot be empty or hold a newline: ${JSON.stringify(name)}`));
    if (this.closed) return Promise.reject(failed("CatFileClosed", "the object reader was closed"));
    return new Promise((resolve, reject) => this.send({ name, attempts: 0, resolve, reject }));
  }

  /** Lets the process answer what is pending, then ends it; resolves once it has exited (killed after 5 s). */
  async close(): Promise<void> {
    this.closed = true;
    const reader = this.reader;
    if (!reader) return;
    await new Promise<void>((resolve) => {
      if (reader.child.exitCode !== null || reader.child.signalCode !== null) return resolve();
      const timer = setTimeout(() => reader.child.pid !== undefined && killProcessGroup(reader.child.pid), 5_000);
      reader.child.once("close", () => {
        clearTimeout(timer);
        resolve();
      });
      reader.child.stdin?.end();
    });
  }

  private send(req: Request): void {
    const reader = this.reader ?? this.start();
    if (reader.pending.length === 0) holdLoop(reader, true);
    reader.pending.push(req);
    reader.child.stdin!.write(`contents ${req.name}\n`);
    // git buffers its answers until told to flush: one flush per tick answers every request of the tick
    // in a few large writes instead of one small write (and one wake-up of each side) per object.
    if (!reader.flushQueued) {
      reader.flushQueued = true;
      process.nextTick(() => {
        reader.flushQueued = false;
        if (!reader.ended) reader.child.stdin!.write("flush\n");
      });
    }
  }

  /** Takes the first pending request: it is being answered. An idle reader no longer keeps Node running. */
  private answered(reader: Reader): Request {
    const req = reader.pending.shift()!;
    if (reader.pending.length === 0) holdLoop(reader, false);
    return req;
  }

  private start(): Reader {
    this.starts++;
    const child = spawn("git", [...globalArgs(this.repo), "cat-file", "--batch-command", "--buffer"], {
      cwd: this.repo.cwd,
      env: gitEnvironment(this.repo.env),
      stdio: ["pipe", "pipe", "pipe"],
      detached: true,
      windowsHide: true,
    });
    const reader: Reader = { child, pending: [], stderr: "", header: Buffer.alloc(0), body: undefined, expectNewline: false, ended: false, flushQueued: false };
    this.reader = reader;
    holdLoop(reader, false);
    child.stdin!.on("error", () => undefined); // a dead process: handled on close
    child.stdout!.on("data", (chunk: Buffer) => this.onData(reader, chunk));
    child.stderr!.on("data", (d: Buffer) => (reader.stderr = (reader.stderr + d.toString("utf8")).slice(-4000)));
    child.on("error", () => this.onClose(reader, null, null));
    child.on("close", (code, signal) => this.onClose(reader, code, signal));
    return reader;
  }

  private onData(reader: Reader, chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length) {
      if (reader.body) {
        const { obj } = reader.body;
        const n = Math.min(obj.size - reader.body.filled, chunk.length - at);
        chunk.copy(obj.data, reader.body.filled, at, at + n);
        reader.body.filled += n;
        at += n;
        if (reader.body.filled === obj.size) {
          reader.body = undefined;
          reader.expectNewline = true;
          this.answered(reader).resolve(obj);
        }
        continue;
      }
      if (reader.expectNewline) {
        reader.expectNewline = false;
        at++;
        continue;
      }
      const nl = chunk.indexOf(0x0a, at);
      if (nl < 0) {
        reader.header = Buffer.concat([reader.header, chunk.subarray(at)]);
        return;
      }
      const line = Buffer.concat([reader.header, chunk.subarray(at, nl)]).toString("utf8");
      reader.header = Buffer.alloc(0);
      at = nl + 1;
      this.onHeader(reader, line);
    }
  }

  private onHeader(reader: Reader, line: string): void {
    const m = HEADER.exec(line);
    if (m) {
      const obj: GitObject = { oid: m[1]!, type: m[2]!, size: Number(m[3]), data: Buffer.allocUnsafe(Number(m[3])) };
      if (obj.size === 0) {
        reader.expectNewline = true;
        this.answered(reader).resolve(obj);
      } else reader.body = { obj, filled: 0 };
      return;
    }
    if (reader.pending.length === 0) return;
    const req = this.answered(reader);
    if (line.endsWith(" ambiguous")) req.reject(failed("ObjectNameAmbiguous", `${req.name} names more than one object`));
    else req.resolve(undefined); // "<name> missing" (and the --follow-symlinks answers, which mean the same here)
  }

  private onClose(reader: Reader, code: number | null, signal: NodeJS.Signals | null): void {
    if (reader.ended) return;
    reader.ended = true;
    if (this.reader === reader) this.reader = undefined;
    const unanswered = reader.pending.splice(0);
    for (const req of unanswered) {
      if (this.closed || req.attempts >= 2) {
        req.reject(failed("CatFileFailed", `git cat-file --batch exited (${signal ?? `exit ${code}`}) before answering ${req.name}${reader.stderr ? `: ${reader.stderr.trim()}` : ""}`));
      } else {
        this.send({ ...req, attempts: req.attempts + 1 });
      }
    }
  }
}

/**
 * A reader waiting for answers keeps Node's event loop alive; an idle one does not, so a command or a
 * script that opened a repository exits without closing it (the process then ends with its stdin).
 */
function holdLoop(reader: Reader, hold: boolean): void {
  const handles = [reader.child, reader.child.stdout, reader.child.stderr, reader.child.stdin] as unknown as ({ ref?(): void; unref?(): void } | null)[];
  for (const h of handles) {
    if (hold) h?.ref?.();
    else h?.unref?.();
  }
}

function failed(reason: string, message: string): GitError {
  return new GitError("Transient", reason, message, { command: "git cat-file --batch", stderr: "", hint: "retried with backoff" });
}
