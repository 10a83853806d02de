import type { StatusSnapshot } from "../controller.js";

/** What `status` reports: whether a controller runs, the config's validity and the last snapshot. */
export interface StatusReport {
  running: boolean;
  pid?: number;
  config: { valid: boolean; problems: string[] };
  snapshot: StatusSnapshot | null;
}

/** Renders a status report as one screen of text. */
export function formatStatus(r: StatusReport): string {
  const lines: string[] = [];
  lines.push(r.running ? `controller: running (pid ${r.pid})` : "controller: not running (start it with `cascade-sync start`)");
  lines.push(r.config.valid ? "config:     valid" : `config:     INVALID${r.running ? " (the controller keeps the last good config)" : ""}`);
  for (const p of r.config.problems) lines.push(`  ${p}`);
  const s = r.snapshot;
  if (!s) return lines.join("\n");
  lines.push(`sandbox:    ${s.sandbox.dir} on ${s.sandbox.branch} at ${s.sandbox.head?.slice(0, 7) ?? "(no commit)"}, ${s.sandbox.pendingPaths} pending change(s)`);
  if (s.sandbox.heldBack?.length) {
    lines.push(`held back:  ${s.sandbox.heldBack.join(", ")}`);
    lines.push("            (they match security.encrypt; this version cannot encrypt, so they are never committed or pushed)");
  }
  if (s.sandbox.lastCommit) lines.push(`            last commit ${s.sandbox.lastCommit.commit.slice(0, 7)} ${s.sandbox.lastCommit.at}: ${s.sandbox.lastCommit.message}`);
  if (!s.remotes.length) lines.push("remotes:    none (everything stays local)");
  for (const rm of s.remotes) {
    const push = rm.lastPush ? `last push ${rm.lastPush.commit.slice(0, 7)} at ${rm.lastPush.at}` : "never pushed";
    lines.push(`remote ${rm.name}: ${rm.url}: ${push}${rm.relation ? `, ${rm.relation}` : ""}`);
    if (rm.error) lines.push(`  error (${rm.error.kind} ${rm.error.reason}, ${rm.error.at}): ${rm.error.message}${rm.error.hint ? `\n  hint: ${rm.error.hint}` : ""}`);
  }
  if (!r.running && s.reconcilers.length) lines.push("when the controller last ran:");
  for (const rc of s.reconcilers) {
    const ready = rc.conditions.find((c) => c.type === "Ready");
    const state = rc.lastError ? `${rc.lastError.kind === "Stalled" ? "STALLED" : "retrying"} (${rc.lastError.reason}, ${rc.failures} failure(s))` : ready?.status ? "ready" : "pending";
    lines.push(`reconciler ${rc.name}: ${state}${rc.lastSummary && !rc.lastError ? `: ${rc.lastSummary}` : ""}${rc.nextRunAt ? `; next ${rc.nextRunAt}` : ""}`);
    if (rc.lastError) lines.push(`  ${rc.lastError.message}${rc.lastError.hint ? `\n  hint: ${rc.lastError.hint}` : ""}`);
  }
  lines.push(`updated:    ${s.updatedAt}`);
  return lines.join("\n");
}
