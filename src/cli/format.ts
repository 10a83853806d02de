import type { StatusSnapshot } from "../controller.js";
import type { VariableSource } from "../config/types.js";
import { formatVariables } from "../config/dotenv.js";
import type { EnvironmentReport } from "../../reconcilers/environment.js";
import type { HistoryEntry } from "../pipeline/history.js";

/** What `status` reports: whether a controller runs, the config's validity and the last snapshot. */
export interface StatusReport {
  running: boolean;
  pid?: number;
  /** `variables`: where each ${VAR} came from (`shell`, `.env`, `missing`), never a value. */
  config: { valid: boolean; problems: string[]; variables?: VariableSource[] };
  snapshot: StatusSnapshot | null;
}

/** Renders a status report as one screen of text. */
export function formatStatus(r: StatusReport): string {
  const lines: string[] = [];
  lines.push(r.running ? `controller: running (pid ${r.pid})` : "controller: not running (start it with `cascade-sync start`)");
  lines.push(r.config.valid ? "config:     valid" : `config:     INVALID${r.running ? " (the controller keeps the last good config)" : ""}`);
  for (const p of r.config.problems) lines.push(`  ${p}`);
  if (r.config.variables?.length) lines.push(`variables:  ${formatVariables(r.config.variables)}`);
  const s = r.snapshot;
  if (!s) return lines.join("\n");
  if (r.running && s.server) lines.push(`status page: ${s.server.url} (also /metrics)`);
  lines.push(`sandbox:    ${s.sandbox.dir} on ${s.sandbox.branch} at ${s.sandbox.head?.slice(0, 7) ?? "(no commit)"}, ${s.sandbox.pendingPaths} pending change(s)`);
  if (s.sandbox.paused) lines.push("            PAUSED (sandbox.paused: true): nothing is committed; edits wait and are committed as one batch when unpaused");
  if (s.sandbox.heldBack?.length) {
    lines.push(`held back:  ${s.sandbox.heldBack.join(", ")}`);
    lines.push(`            (they match security.encrypt and are stored only encrypted: ${s.sandbox.keyProblem?.message ?? "there is no encryption key"}; they are never committed in plaintext)`);
    if (s.sandbox.keyProblem?.hint) lines.push(`            hint: ${s.sandbox.keyProblem.hint}`);
  }
  for (const f of s.sandbox.findings ?? []) {
    lines.push(`held back:  ${f.path}${f.line ? `:${f.line}` : ""}: ${f.rule}: ${f.message}`);
    lines.push(`            not committed; remove it, or accept it with security.allow: ["${f.fingerprint}"]`);
  }
  if (s.sandbox.lastCommit) lines.push(`            last commit ${s.sandbox.lastCommit.commit.slice(0, 7)} ${s.sandbox.lastCommit.at}: ${s.sandbox.lastCommit.message}`);
  for (const e of s.sandbox.embedded ?? []) {
    const recorded = e.recorded ? `recorded only as a gitlink to ${e.head?.slice(0, 7)}` : e.head ? `to be recorded as a gitlink to ${e.head.slice(0, 7)}` : "not recorded";
    lines.push(`not synced: ${e.path}/ (a repository of its own, ${recorded}): ${e.problems.map((p) => p.message).join("; ")}`);
    lines.push(`            hint: ${e.hint}`);
  }
  if (!s.remotes.length) lines.push("remotes:    none (everything stays local)");
  for (const rm of s.remotes) {
    const push = rm.lastPush ? `last push ${rm.lastPush.commit.slice(0, 7)} at ${rm.lastPush.at}` : "never pushed";
    lines.push(`remote ${rm.name}: ${rm.url}: ${push}${rm.relation ? `, ${rm.relation}` : ""}${rm.paused ? ", PAUSED (remotes[].paused: true): not pushing, commits wait locally" : ""}`);
    if (rm.error) lines.push(`  error (${rm.error.kind} ${rm.error.reason}, ${rm.error.at}): ${rm.error.message}${rm.error.hint ? `\n  hint: ${rm.error.hint}` : ""}`);
  }
  if (!r.running && s.reconcilers.length) lines.push("when the controller last ran:");
  for (const rc of s.reconcilers) {
    const ready = rc.conditions.find((c) => c.type === "Ready");
    const state = rc.lastError ? `${rc.lastError.kind === "Stalled" ? "STALLED" : "retrying"} (${rc.lastError.reason}, ${rc.failures} failure(s))` : ready?.status ? "ready" : "pending";
    lines.push(`reconciler ${rc.name}: ${state}${rc.lastSummary && !rc.lastError ? `: ${rc.lastSummary}` : ""}${rc.nextRunAt ? `; next ${rc.nextRunAt}` : ""}`);
    if (rc.lastError) lines.push(`  ${rc.lastError.message}${rc.lastError.hint ? `\n  hint: ${rc.lastError.hint}` : ""}`);
  }
  if (s.environments?.length) {
    lines.push("pipeline:");
    for (const e of s.environments) {
      lines.push(...formatEnvironment(e).map((l) => `  ${l}`));
      if (e.error) lines.push(`    error (${e.error.kind} ${e.error.reason}): ${e.error.message}${e.error.hint ? `\n    hint: ${e.error.hint}` : ""}`);
    }
  }
  if (s.history?.length) {
    lines.push("history:");
    for (const h of s.history.slice(-10)) lines.push(`  ${formatHistory(h)}`);
  }
  lines.push(`updated:    ${s.updatedAt}`);
  return lines.join("\n");
}

/** A commit as 7 hex digits, `(none)` when there is none. */
export const short = (c: string | null | undefined) => (c ? c.slice(0, 7) : "(none)");

/** One environment as a few lines: where it is, what is live, gates, approvals, window, health, and what happens next. */
export function formatEnvironment(e: EnvironmentReport): string[] {
  const lines = [`${e.name} (${e.promotion} from ${e.from}, branch ${e.branch}): at ${short(e.head)}${e.deployed !== null || e.head ? `, live ${short(e.deployed ?? e.head)}` : ""}`];
  for (const d of e.pendingPolicy ?? []) lines.push(`  ${d.message}`);
  if (e.lease) lines.push(`  lease: ${formatLease(e.lease)}`);
  if (e.health) lines.push(`  health: ${e.health.description}`);
  for (const c of e.health?.checks ?? []) lines.push(`    ${c.ok ? "ok  " : c.pending ? "WAIT" : "FAIL"} ${c.name}: ${c.message}`);
  if (e.integrity) lines.push(`  integrity: ${e.integrity.description}${e.integrity.drift && !e.integrity.selfHeal ? " (deploy.selfHeal is false: only reported)" : ""}`);
  if (e.candidate) lines.push(`  candidate: ${short(e.candidate)}${e.target && e.target !== e.candidate ? `, target ${short(e.target)}` : ""}`);
  if (e.gates) lines.push(`  gates on ${short(e.gates.commit)}: ${e.gates.gates.map((g) => `${g.name} ${g.state}${"message" in g && g.state === "failed" ? ` (${g.message})` : ""}`).join(", ") || "none"}`);
  if (e.approvals) {
    const a = e.approvals;
    lines.push(`  approvals: ${a.valid.length} valid of ${a.required} required (signers: ${a.signers} from ${a.signersFrom})${a.problem ? `: ${a.problem}` : ""}`);
    for (const p of a.fileProblems ?? []) lines.push(`    problem: ${p}`);
    for (const v of a.valid) lines.push(`    valid: ${v.signer} for ${short(v.commit)}, expires ${v.expires}`);
    for (const r of a.rejected) lines.push(`    rejected (line ${r.line}${r.signer ? `, ${r.signer}` : ""}${r.commit ? `, ${short(r.commit)}` : ""}): ${r.reason}: ${r.message}`);
  }
  for (const f of e.freeze?.active ?? []) lines.push(`  FROZEN by ${f.signer} at ${f.at}, ${f.expires ? `until ${f.expires}` : "until lifted"}: ${f.reason}`);
  if (e.freeze?.lifted && !e.freeze.active.length) lines.push(`  freeze lifted by ${e.freeze.lifted.signer} at ${e.freeze.lifted.at}`);
  for (const r of e.freeze?.rejected ?? []) lines.push(`  ${r.action ?? "freeze"} rejected (line ${r.line}${r.signer ? `, ${r.signer}` : ""}): ${r.reason}: ${r.message}`);
  lines.push(`  window: ${e.window.open ? "open" : "closed"}: ${e.window.reason}`);
  if (e.failed.length) lines.push(`  rolled back (not promoted again automatically): ${e.failed.map(short).join(", ")}`);
  lines.push(`  next: ${e.next}`);
  if (e.hint) lines.push(`  run: ${e.hint}`);
  return lines;
}

/** Who holds an environment's lease and until when (a team on one remote: only the holder acts). */
export function formatLease(l: NonNullable<EnvironmentReport["lease"]>): string {
  const who = l.holder ? `${l.holder.user}@${l.holder.host} (pid ${l.holder.pid}, sandbox ${l.holder.id.slice(0, 8)})` : "";
  const runsOn = l.runsOn ? `; runsOn: ${l.runsOn.join(", ")}` : "";
  switch (l.state) {
    case "held": return `held by this controller (${who}) until ${l.until}${runsOn}`;
    case "other": return `held by ${who} until ${l.until}; this controller (${l.me}) follows${runsOn}`;
    case "excluded": return `${l.holder ? `held by ${who} until ${l.until}` : "not held"}; this machine (${l.me}) is not in runsOn${runsOn}`;
    case "free": return `free: this controller (${l.me}) takes it${runsOn}`;
    case "unknown": return `not read yet${l.problem ? `: ${l.problem}` : ""}${runsOn}`;
  }
}

/** One history line: when, where, what, which commit, who signed. */
export function formatHistory(h: HistoryEntry): string {
  return `${h.at} ${h.environment} ${h.event} ${short(h.commit)}${h.from ? ` (was ${short(h.from)})` : ""}${h.signers?.length ? ` signed by ${h.signers.join(", ")}` : ""}: ${h.result}`;
}
