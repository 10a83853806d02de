/**
 * Keeps secrets out of everything a person or a file can see. Values registered here (passwords,
 * tokens, webhook secrets read from the environment) are replaced by `[REDACTED]`, and so is the
 * user:password part of any URL.
 */
export class Redactor {
  private readonly secrets = new Set<string>();

  /** Registers a secret value; empty and very short values are ignored (they would mask normal text). */
  add(value: string | undefined): void {
    if (value && value.length >= 3) this.secrets.add(value);
  }

  /** Returns text with every registered secret and URL credential replaced. */
  redact(text: string): string {
    let out = text.replace(/(\b[a-z][a-z0-9+.-]*:\/\/)[^/\s:@]+(:[^/\s@]*)?@/gi, "$1[REDACTED]@");
    // Longest first, so a secret that contains another is masked whole.
    for (const s of [...this.secrets].sort((a, b) => b.length - a.length)) out = out.split(s).join("[REDACTED]");
    return out;
  }

  /** Deep-copies a JSON-like value with every string redacted. */
  redactValue<T>(value: T): T {
    if (typeof value === "string") return this.redact(value) as T;
    if (Array.isArray(value)) return value.map((v) => this.redactValue(v)) as T;
    if (value && typeof value === "object") {
      const out: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(value)) out[k] = this.redactValue(v);
      return out as T;
    }
    return value;
  }
}
