const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const PART = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/g;

/**
 * Parses a duration such as `3s`, `5m`, `1h30m` or `500ms` into milliseconds.
 * Returns undefined when the text is not a duration (the schema normally catches that first).
 */
export function parseDuration(text: string): number | undefined {
  if (!/^(\d+(\.\d+)?(ms|s|m|h|d))+$/.test(text)) return undefined;
  let total = 0;
  for (const m of text.matchAll(PART)) total += Number(m[1]) * (UNIT_MS[m[2] as string] ?? 0);
  return Math.round(total);
}

/** Formats milliseconds for people: `850ms`, `3s`, `2m05s`, `1h02m`. */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}

const SIZE_UNIT: Record<string, number> = { B: 1, KB: 1024, MB: 1024 ** 2, GB: 1024 ** 3 };

/** Parses a size such as `50MB` into bytes; undefined when it is not one. */
export function parseSize(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)(B|KB|MB|GB)$/.exec(text);
  return m ? Math.round(Number(m[1]) * (SIZE_UNIT[m[2] as string] ?? 1)) : undefined;
}
