import type { HistoryEntry } from "../pipeline/history.js";
import { observe, sleep, type Observation } from "./demo-tour.js";

/** What following the pipeline needs. */
export interface FollowContext {
  gitdir: string;
  say: (line: string) => void;
  signal: AbortSignal;
  /** The approve command to show for `environment` and `commit`. */
  approveLine: (environment: string, commit: string) => string;
}

const POLL_MS = 500;

/**
 * After the tour: one line for each thing the controller does from now on (a sandbox commit, a
 * gate failure, a promotion, a deploy, a rollback, an environment waiting for approval with the
 * command to run), read from its status and history, until the signal aborts. What had already
 * happened when it starts is not repeated.
 */
export async function followPipeline(f: FollowContext): Promise<void> {
  let o = await observe(f.gitdir);
  const seen = new Set(o.history.map(historyKey));
  let head = o.status?.sandbox.head ?? null;
  const asked = new Set(waitingForApproval(o).map((w) => `${w.name}:${w.candidate}`));
  while (!f.signal.aborted) {
    await sleep(POLL_MS, f.signal);
    if (f.signal.aborted) break;
    o = await observe(f.gitdir);
    const last = o.status?.sandbox.lastCommit;
    if (o.status?.sandbox.head && o.status.sandbox.head !== head) {
      head = o.status.sandbox.head;
      if (last?.commit === head) f.say(`commit: develop ${head.slice(0, 7)} "${last.message.split("\n")[0]}"`);
      else f.say(`develop moved to ${head.slice(0, 7)}`);
    }
    for (const h of o.history) {
      const key = historyKey(h);
      if (seen.has(key)) continue;
      seen.add(key);
      f.say(describeEntry(h));
    }
    for (const w of waitingForApproval(o)) {
      const key = `${w.name}:${w.candidate}`;
      if (asked.has(key)) continue;
      asked.add(key);
      f.say(`${w.name} waits for approval of ${w.candidate.slice(0, 7)}; to approve it: ${f.approveLine(w.name, w.candidate)}`);
    }
  }
}

function historyKey(h: HistoryEntry): string {
  return `${h.at} ${h.environment} ${h.event} ${h.commit}`;
}

/** One line for a history entry, as a person reads it. */
export function describeEntry(h: HistoryEntry): string {
  const c = h.commit.slice(0, 7);
  switch (h.event) {
    case "promoted": return `${h.environment}: promoted ${c}${h.signers?.length ? ` (approved by ${h.signers.join(", ")})` : ""}`;
    case "deployed": return `${h.environment}: deployed ${c} (${h.result})`;
    case "rolled-back": return `${h.environment}: rolled back from ${h.from?.slice(0, 7) ?? "?"} to ${c}: ${h.result}`;
    case "gate-failed": return `${h.environment}: a gate failed on ${c}: ${h.result}`;
    case "approval-rejected": return `${h.environment}: an approval of ${c} was rejected: ${h.result}`;
    default: return `${h.environment}: ${h.event} ${c}: ${h.result}`;
  }
}

/** Environments that wait for a signed approval of their candidate. */
function waitingForApproval(o: Observation): { name: string; candidate: string }[] {
  return (o.status?.environments ?? [])
    .filter((e) => e.promotion === "approval" && e.blocked && e.candidate && e.hint?.includes(`approve ${e.name} ${e.candidate}`))
    .map((e) => ({ name: e.name, candidate: e.candidate! }));
}
