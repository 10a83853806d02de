import { createHmac } from "node:crypto";
import { execFile } from "node:child_process";
import { request } from "undici";
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

/**
 * Sends notifications to the desktop (notify-send, when installed) and to webhooks (JSON POST,
 * signed with `X-Cascade-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">` when a secret
 * is set). A repeat of the same event for the same key is suppressed. Never throws: a failed
 * delivery is logged and retried with backoff, at most `attempts` times.
 */
export class Notifier {
  private readonly sent = new Set<string>();
  /** The status page, when the controller serves one: desktop notifications and webhooks point to it. */
  private link: string | undefined;

  constructor(
    private config: NotifierConfig,
    private readonly log: Logger,
    private readonly redactor: Redactor,
    private readonly clock: Clock,
    private readonly attempts = 5,
  ) {}

  reconfigure(config: NotifierConfig): void {
    this.config = config;
  }

  /** Sets (or clears) the status page address that notifications link to. */
  setLink(url: string | undefined): void {
    this.link = url;
  }

  /** Sends `n` unless the same event was already sent for the same key; returns the deliveries. */
  async notify(n: Notification): Promise<void> {
    const id = `${n.event}\0${n.key}`;
    if (this.sent.has(id)) return;
    this.sent.add(id);
    const message = this.redactor.redact(n.message);
    this.log.info(`notify ${n.event}: ${message}`);
    const jobs: Promise<void>[] = [];
    if (this.config.desktop) jobs.push(desktop(`cascade-sync: ${n.event}`, this.link ? `${message}\n${this.link}` : message));
    const body = JSON.stringify(this.redactor.redactValue({ event: n.event, message, time: new Date(this.clock.now()).toISOString(), ...(this.link ? { link: this.link } : {}), ...(n.details ? { details: n.details } : {}) }));
    for (const hook of this.config.webhooks) {
      if (hook.events && !hook.events.includes(n.event)) continue;
      jobs.push(this.deliver(hook, body));
    }
    await Promise.all(jobs);
  }

  /** Allows `event` for `key` to be sent again (e.g. a push that recovered may fail again later). */
  reset(event: NotificationEvent, key: string): void {
    this.sent.delete(`${event}\0${key}`);
  }

  private async deliver(hook: { url: string; secret?: string }, body: string): Promise<void> {
    for (let attempt = 0; attempt < this.attempts; attempt++) {
      const timestamp = String(Math.floor(this.clock.now() / 1000));
      const headers: Record<string, string> = { "content-type": "application/json", "x-cascade-timestamp": timestamp };
      if (hook.secret) headers["x-cascade-signature"] = `sha256=${createHmac("sha256", hook.secret).update(`${timestamp}.${body}`).digest("hex")}`;
      try {
        const res = await request(hook.url, { method: "POST", headers, body, headersTimeout: 10_000, bodyTimeout: 10_000 });
        await res.body.dump();
        if (res.statusCode < 300) return;
        this.log.warn(`webhook answered HTTP ${res.statusCode}`, { url: hook.url, attempt: attempt + 1 });
      } catch (err) {
        this.log.warn(`webhook delivery failed: ${(err as Error).message}`, { url: hook.url, attempt: attempt + 1 });
      }
      await new Promise((r) => setTimeout(r, 500 * 2 ** attempt));
    }
  }
}

function desktop(title: string, message: string): Promise<void> {
  return new Promise((resolve) => {
    // Missing notify-send (ENOENT) or no display: desktop notifications are best effort by design.
    execFile("notify-send", ["--app-name=cascade-sync", title, message], { timeout: 5000 }, () => resolve());
  });
}
