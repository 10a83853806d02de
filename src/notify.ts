import { createHmac } from "node:crypto";
import { execFile } from "node:child_process";
import { setTimeout as sleep } from "node:timers/promises";
import type { Clock } from "./clock.js";
import type { Logger } from "./log.js";
import type { Redactor } from "./redact.js";

/** Event names a notification can carry (contract: webhooks filter on them). */
export type NotificationEvent =
  | "approval-needed" | "promoted" | "gate-failed" | "health-degraded" | "health-recovered"
  | "rolled-back" | "config-invalid" | "push-failing" | "drift-detected" | "secret-found";

/** One notification: what happened, to which subject, and a message a person can read. */
export interface Notification {
  event: NotificationEvent;
  /** What the event is about (a commit, a remote, the config's content hash): repeats per key are suppressed. */
  key: string;
  message: string;
  details?: Record<string, unknown>;
}

export interface NotifierConfig {
  desktop: boolean;
  webhooks: { url: string; secret?: string; events?: string[] }[];
}

/** At most this many deliveries run at once (a webhook that hangs holds one of them, not the queue). */
const CONCURRENT_DELIVERIES = 4;
/** Notifications waiting beyond this are dropped, oldest first (a dead webhook must not grow memory without bound). */
const MAX_QUEUED = 200;

/** One queued notification: its dedupe id and what each target receives. */
interface Job {
  id: string;
  event: NotificationEvent;
  title: string;
  text: string;
  body: string;
  hooks: { url: string; secret?: string }[];
  desktop: boolean;
}

/**
 * Sends notifications to the desktop (notify-send, when installed) and to webhooks (JSON POST,
 * signed with `X-Cascade-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">` when a secret
 * is set), beside the loop: `notify` only queues, and deliveries run in the background with their
 * retries (at most `attempts` per webhook, with backoff), so commits, pushes, promotions and deploys
 * never wait for a webhook. A repeat of the same event for the same key is suppressed while it is
 * queued and once it was delivered; an event counts as sent only once delivered (one that could not be
 * delivered may be sent again later). Never throws.
 */
export class Notifier {
  /** Events delivered (`event\0key`). */
  private readonly sent = new Set<string>();
  /** Events queued or being delivered. */
  private readonly pending = new Set<string>();
  private readonly queue: Job[] = [];
  private readonly running = new Set<Promise<void>>();
  /** Aborted by close(): deliveries under way and their retry waits end at once. */
  private readonly abort = new AbortController();
  private readonly idleWaiters: (() => void)[] = [];
  /** The status page, when the controller serves one: desktop notifications and webhooks point to it. */
  private link: string | undefined;

  constructor(
    private config: NotifierConfig,
    private readonly log: Logger,
    private readonly redactor: Redactor,
    private readonly clock: Clock,
    private readonly attempts = 5,
    /** The first retry's wait; each next one doubles it. */
    private readonly retryBaseMs = 500,
  ) {}

  reconfigure(config: NotifierConfig): void {
    this.config = config;
  }

  /** Sets (or clears) the status page address that notifications link to. */
  setLink(url: string | undefined): void {
    this.link = url;
  }

  /**
   * Queues `n` for delivery unless the same event for the same key is queued or was delivered, and
   * returns at once (the promise resolves without waiting for any delivery; `settle` waits for them).
   */
  async notify(n: Notification): Promise<void> {
    const id = `${n.event}\0${n.key}`;
    if (this.sent.has(id) || this.pending.has(id) || this.abort.signal.aborted) return;
    const message = this.redactor.redact(n.message);
    this.log.info(`notify ${n.event}: ${message}`);
    const hooks = this.config.webhooks.filter((h) => !h.events || h.events.includes(n.event));
    if (!this.config.desktop && !hooks.length) {
      // Nowhere to deliver: nothing is pending, and the event counts as sent.
      this.sent.add(id);
      return;
    }
    const body = JSON.stringify(this.redactor.redactValue({ event: n.event, message, time: new Date(this.clock.now()).toISOString(), ...(this.link ? { link: this.link } : {}), ...(n.details ? { details: n.details } : {}) }));
    this.pending.add(id);
    this.queue.push({ id, event: n.event, title: `cascade-sync: ${n.event}`, text: this.link ? `${message}\n${this.link}` : message, body, hooks, desktop: this.config.desktop });
    while (this.queue.length > MAX_QUEUED) {
      const dropped = this.queue.shift()!;
      this.pending.delete(dropped.id);
      this.log.warn(`notification ${dropped.event} dropped: ${MAX_QUEUED} are waiting for delivery already`);
    }
    this.pump();
  }

  /** Allows `event` for `key` to be sent again (e.g. a push that recovered may fail again later). */
  reset(event: NotificationEvent, key: string): void {
    this.sent.delete(`${event}\0${key}`);
  }

  /** How many notifications are queued or being delivered. */
  get backlog(): number {
    return this.queue.length + this.running.size;
  }

  /** Resolves once nothing is queued or being delivered, or after `maxMs` (true when everything was delivered). */
  async settle(maxMs = Infinity): Promise<boolean> {
    if (!this.backlog) return true;
    const idle = new Promise<boolean>((resolve) => this.idleWaiters.push(() => resolve(true)));
    if (maxMs === Infinity) return idle;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), maxMs);
      timer.unref();
    });
    try {
      return await Promise.race([idle, late]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Stops: gives what is queued or under way at most `graceMs` to be delivered, then abandons the rest
   * (said in the log) and accepts nothing more.
   */
  async close(graceMs: number): Promise<void> {
    const delivered = await this.settle(graceMs);
    if (delivered) return;
    const left = this.backlog;
    this.queue.length = 0;
    this.abort.abort();
    await Promise.allSettled([...this.running]);
    this.log.warn(`stopping with ${left} notification(s) not delivered after ${Math.round(graceMs / 1000)}s`);
  }

  /** Starts queued deliveries while fewer than CONCURRENT_DELIVERIES run. */
  private pump(): void {
    while (this.running.size < CONCURRENT_DELIVERIES && this.queue.length) {
      const job = this.queue.shift()!;
      const run: Promise<void> = this.deliverJob(job).finally(() => {
        this.running.delete(run);
        this.pump();
        if (!this.backlog) for (const wake of this.idleWaiters.splice(0)) wake();
      });
      this.running.add(run);
    }
  }

  private async deliverJob(job: Job): Promise<void> {
    const results = await Promise.all([
      ...(job.desktop ? [desktop(job.title, job.text).then(() => true)] : []),
      ...job.hooks.map((hook) => this.deliver(hook, job.body)),
    ]);
    this.pending.delete(job.id);
    if (results.every(Boolean)) this.sent.add(job.id);
    else this.log.warn(`notification ${job.event} not delivered to every webhook; it is sent again if it happens again`);
  }

  /** POSTs `body` to `hook`, retrying with backoff; true once a 2xx answer came. */
  private async deliver(hook: { url: string; secret?: string }, body: string): Promise<boolean> {
    const signal = this.abort.signal;
    for (let attempt = 0; attempt < this.attempts && !signal.aborted; attempt++) {
      const timestamp = String(Math.floor(this.clock.now() / 1000));
      const headers: Record<string, string> = { "content-type": "application/json", "x-cascade-timestamp": timestamp };
      if (hook.secret) headers["x-cascade-signature"] = `sha256=${createHmac("sha256", hook.secret).update(`${timestamp}.${body}`).digest("hex")}`;
      try {
        // Loaded on first use: undici alone added about 0.2 s to every start.
        const { request } = await import("undici");
        const res = await request(hook.url, { method: "POST", headers, body, headersTimeout: 10_000, bodyTimeout: 10_000, signal });
        await res.body.dump();
        if (res.statusCode < 300) return true;
        this.log.warn(`webhook answered HTTP ${res.statusCode}`, { url: this.redactor.redact(hook.url), attempt: attempt + 1 });
      } catch (err) {
        if (signal.aborted) break;
        this.log.warn(`webhook delivery failed: ${this.redactor.redact((err as Error).message)}`, { url: this.redactor.redact(hook.url), attempt: attempt + 1 });
      }
      if (attempt + 1 < this.attempts) await sleep(this.retryBaseMs * 2 ** attempt, undefined, { signal }).catch(() => undefined);
    }
    return false;
  }
}

function desktop(title: string, message: string): Promise<void> {
  return new Promise((resolve) => {
    // Missing notify-send (ENOENT) or no display: desktop notifications are best effort by design.
    execFile("notify-send", ["--app-name=cascade-sync", title, message], { timeout: 5000 }, () => resolve());
  });
}
