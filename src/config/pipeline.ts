import type { Config, EnvironmentSpec } from "./types.js";

/** Environment names in promotion order: an environment comes after the one it takes commits from. */
export function promotionOrder(config: Config): string[] {
  const out: string[] = [];
  const visit = (name: string, depth: number): void => {
    const env = config.environments[name];
    if (!env || out.includes(name) || depth > 100) return;
    if (Object.hasOwn(config.environments, env.from)) visit(env.from, depth + 1);
    if (!out.includes(name)) out.push(name);
  };
  for (const name of Object.keys(config.environments)) visit(name, 0);
  return out;
}

/** The branch `env` takes its candidates from: its `from` environment's branch, or `from` itself (the sandbox branch). */
export function fromBranch(config: Config, env: EnvironmentSpec): string {
  return Object.hasOwn(config.environments, env.from) ? config.environments[env.from]!.branch : env.from;
}

/**
 * One setting of an environment's promotion policy where the sandbox's copy of the config differs
 * from the copy committed on the environment's own branch (the one in force).
 */
export interface PolicyDifference {
  /** The setting, as a config key under the environment: `promotion`, `from`, `approvals.signers`, ... */
  setting: string;
  /** The sandbox's value, described in a few words. */
  sandbox: string;
  /** The value in force (committed on the environment's branch), described in a few words. */
  inForce: string;
}

/** An environment's policy as one config states it, with its `from` resolved to a branch in that same config. */
export interface PolicyView {
  env: EnvironmentSpec;
  fromBranch: string;
  /** Set when `from` names another environment (in that same config): its healthy commits are the candidates. */
  fromEnvironment?: string;
}

/**
 * Pure. Every policy setting (promotion, from, approvals.required, approvals.signers, windows, gates,
 * rollback.automatic, runsOn) where `sandbox` differs from `inForce`, in that order; empty when they agree.
 * Release settings (deploy, health) are not policy: each release runs those of its own commit.
 */
export function policyDifferences(sandbox: PolicyView, inForce: PolicyView): PolicyDifference[] {
  const out: PolicyDifference[] = [];
  const compare = (setting: string, describe: (p: PolicyView) => string, key: (p: PolicyView) => string = describe) => {
    if (key(sandbox) !== key(inForce)) out.push({ setting, sandbox: describe(sandbox), inForce: describe(inForce) });
  };
  compare("promotion", (p) => p.env.promotion);
  compare("from", (p) => (p.env.from === p.fromBranch ? p.env.from : `${p.env.from} (branch ${p.fromBranch})`));
  compare("approvals.required", (p) => String(p.env.approvals.required));
  compare("approvals.signers", (p) => describeSigners(p.env.approvals.signers), (p) => JSON.stringify(signerLines(p.env.approvals.signers)));
  compare("windows", (p) => (p.env.windows.length ? p.env.windows.map((w) => `${w.kind} "${w.schedule}" for ${w.durationMs / 60_000}m (${w.timezone})`).join(", ") : "none"), (p) => JSON.stringify(p.env.windows));
  compare("gates", (p) => (p.env.gates.length ? p.env.gates.map(describeGate).join(", ") : "none"), (p) => JSON.stringify(p.env.gates));
  compare("rollback.automatic", (p) => String(p.env.rollback.automatic));
  compare("runsOn", (p) => (p.env.runsOn?.length ? [...p.env.runsOn].sort().join(", ") : "any machine"));
  return out;
}

/** The sentence `status`, `plan` and the status page show for one pending policy change. */
export function describePolicyDifference(d: PolicyDifference, branch: string): string {
  return `pending policy change: ${d.setting} ${d.sandbox} (sandbox) vs ${d.inForce} (in force on ${branch}); takes effect once promoted`;
}

/** allowed_signers lines without blanks, comments and spacing differences, sorted: what decides trust. */
function signerLines(lines: string[]): string[] {
  return lines.map((l) => l.trim().replace(/\s+/g, " ")).filter((l) => l && !l.startsWith("#")).sort();
}

function describeSigners(lines: string[]): string {
  const list = signerLines(lines);
  if (!list.length) return "none";
  // The principal is the first field; the key is what matters, so its last characters are shown too.
  return list.map((l) => {
    const fields = l.split(" ");
    const type = fields.findIndex((f, i) => i > 0 && /^(ssh-|ecdsa-|sk-)/.test(f));
    const key = type > 0 ? (fields[type + 1] ?? "") : "";
    return key ? `${fields[0]} (key ...${key.slice(-8)})` : fields[0]!;
  }).join(", ");
}

function describeGate(g: EnvironmentSpec["gates"][number]): string {
  const what = g.command !== undefined ? `command ${JSON.stringify(g.command)}` : g.http ? `http ${g.http.url}` : `builtin ${g.builtin}`;
  return `${g.name} (${what})`;
}
