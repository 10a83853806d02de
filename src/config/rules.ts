import { CronExpressionParser } from "cron-parser";
import { nearest } from "../text.js";
import type { CommandEnvEntry, Config } from "./types.js";
import { ENV_NAME, isAllowListed, RESERVED_PREFIX } from "../pipeline/command-env.js";

/** Reports a problem at a config path. */
export type Report = (path: (string | number)[], message: string, hint: string, severity?: "error" | "warning") => void;

/** A semantic rule: checks meaning the schema cannot express, reporting every problem it finds. */
export type Rule = (config: Config, report: Report) => void;

const uniqueRemoteNames: Rule = (c, report) => {
  const seen = new Set<string>();
  c.remotes.forEach((r, i) => {
    if (seen.has(r.name)) report(["remotes", i, "name"], `remote "${r.name}" is listed twice`, "give each remote its own name");
    seen.add(r.name);
  });
};

const knownFrom: Rule = (c, report) => {
  const names = Object.keys(c.environments);
  for (const env of Object.values(c.environments)) {
    if (env.from === c.sandbox.branch || names.includes(env.from)) continue;
    const guess = nearest(env.from, [...names, c.sandbox.branch]);
    report(["environments", env.name, "from"], `unknown environment "${env.from}"`,
      guess ? `did you mean "${guess}"?` : `use the sandbox branch "${c.sandbox.branch}" or one of: ${names.join(", ") || "(no environments)"}`);
  }
};

/** The environment named `name`; never an inherited property such as "constructor". */
function environment(c: Config, name: string): Config["environments"][string] | undefined {
  return Object.hasOwn(c.environments, name) ? c.environments[name] : undefined;
}

const noCycles: Rule = (c, report) => {
  const reported = new Set<string>();
  for (const start of Object.values(c.environments)) {
    const chain = [start.name];
    let next = environment(c, start.from);
    while (next) {
      if (next.name === start.name) {
        // One cycle is one mistake: report it once, at the member written first.
        const key = [...chain].sort().join("\0");
        if (reported.has(key)) break;
        reported.add(key);
        report(["environments", start.name, "from"], `environments form a cycle: ${[...chain, start.name].join(" <- ")}`,
          `one environment must take its commits from the sandbox branch "${c.sandbox.branch}"`);
        break;
      }
      if (chain.includes(next.name)) break; // A cycle further up; reported from its own members.
      chain.push(next.name);
      next = environment(c, next.from);
    }
  }
};

const distinctBranches: Rule = (c, report) => {
  const owner = new Map<string, string>([[c.sandbox.branch, "the sandbox"]]);
  for (const env of Object.values(c.environments)) {
    const other = owner.get(env.branch);
    if (other) report(["environments", env.name, "branch"], `branch "${env.branch}" is already used by ${other}`, "each environment needs a branch of its own");
    else owner.set(env.branch, `environment "${env.name}"`);
  }
};

const validWindows: Rule = (c, report) => {
  for (const env of Object.values(c.environments)) {
    env.windows.forEach((w, i) => {
      try {
        if (w.schedule.trim().split(/\s+/).length !== 5) throw new Error("expected 5 fields: minute hour day-of-month month day-of-week");
        CronExpressionParser.parse(w.schedule, { tz: w.timezone });
      } catch (err) {
        report(["environments", env.name, "windows", i, "schedule"], `cron schedule "${w.schedule}" does not parse: ${(err as Error).message}`, 'e.g. "0 9 * * 1-5" for 09:00 on weekdays');
      }
      try {
        new Intl.DateTimeFormat("en", { timeZone: w.timezone });
      } catch {
        report(["environments", env.name, "windows", i, "timezone"], `unknown time zone "${w.timezone}"`, 'use an IANA name such as "Europe/Berlin" or "UTC"');
      }
    });
  }
};

const batchAfterDebounce: Rule = (c, report) => {
  if (c.sandbox.batchWindowMs < c.sandbox.debounceMs) {
    report(["sandbox", "batchWindow"], "batchWindow is shorter than debounce, so every batch is cut by the window", "make batchWindow at least as long as debounce", "warning");
  }
};

/** Intervals the loop waits between passes: zero would spin (a fetch or full rescan on every turn). */
const MIN_INTERVAL_MS = 1000;
const positiveIntervals: Rule = (c, report) => {
  for (const key of ["fetch", "health", "rescan"] as const) {
    const ms = c.intervals[`${key}Ms`];
    if (ms < MIN_INTERVAL_MS) report(["intervals", key], `intervals.${key} is ${ms}ms; it must be at least 1s`, "the loop would do this work on every turn; use e.g. 30s");
  }
};

const loopbackOrToken: Rule = (c, report) => {
  const listen = c.server.listen;
  if (!listen) return;
  const host = listen.replace(/:\d+$/, "").replace(/^\[|\]$/g, "");
  const loopback = host === "localhost" || host === "::1" || /^127\./.test(host);
  if (!loopback && !c.server.token) {
    report(["server", "listen"], `listening on ${listen} without a token would expose the pipeline to the network`, "set server.token, or listen on 127.0.0.1");
  }
};

/**
 * Signers listed for an environment that does not ask for approvals: a misspelled `promotion` key is
 * only a warning (unknown keys are ignored), and would otherwise turn an approval environment into an
 * automatic one without anyone noticing. So this is an error, not a warning.
 */
const signersNeedApprovalPromotion: Rule = (c, report) => {
  for (const env of Object.values(c.environments)) {
    if (env.promotion === "approval" || !env.approvals.signers.length) continue;
    report(["environments", env.name, "approvals", "signers"], `${env.name} lists approval signers, but its promotion is "${env.promotion}", so no approval is ever asked for`,
      `set promotion: approval under environments.${env.name} (is the key misspelled?), or remove approvals.signers`);
  }
};

/** Every command `env` list in the config, with its path and whether a command uses it. */
function commandEnvLists(c: Config): { path: (string | number)[]; entries: CommandEnvEntry[]; unused?: string }[] {
  const lists: ReturnType<typeof commandEnvLists> = [];
  for (const env of Object.values(c.environments)) {
    env.gates.forEach((g, i) => lists.push({ path: ["environments", env.name, "gates", i, "env"], entries: g.env ?? [], ...(g.command === undefined ? { unused: g.http ? "an http gate" : "a builtin gate" } : {}) }));
    env.health.forEach((h, i) => lists.push({ path: ["environments", env.name, "health", i, "env"], entries: h.env ?? [], ...(h.command === undefined ? { unused: "an http check" } : {}) }));
    if (env.deploy) lists.push({ path: ["environments", env.name, "deploy", "hooks", "env"], entries: env.deploy.hooks.env ?? [], ...(!env.deploy.hooks.pre && !env.deploy.hooks.post ? { unused: "deploy without hooks" } : {}) });
  }
  return lists;
}

const OWN_VARIABLES_HINT = "cascade-sync sets CASCADE_ENVIRONMENT, CASCADE_COMMIT and CASCADE_RELEASE_DIR for commands itself, and its own credentials must never reach code from a commit; give the command a variable of its own, such as DEPLOY_TOKEN";

/**
 * A command's `env` names valid shell variables, none of cascade-sync's own CASCADE_* (neither named
 * nor read through ${VAR}: those hold the controller's credentials), each once.
 */
const validCommandEnv: Rule = (c, report) => {
  for (const { path, entries, unused } of commandEnvLists(c)) {
    const seen = new Set<string>();
    entries.forEach((e, i) => {
      const at = [...path, i];
      if (!ENV_NAME.test(e.name)) {
        report(at, `${JSON.stringify(e.name)} is not a valid environment variable name`, "use letters, digits and underscores, not starting with a digit, such as NPM_TOKEN");
      } else if (e.name.startsWith(RESERVED_PREFIX)) {
        report(at, `${e.name} is cascade-sync's own variable and is not given to commands`, OWN_VARIABLES_HINT);
      } else if (seen.has(e.name)) {
        report(at, `${e.name} is listed twice`, "list each variable once");
      } else if (e.value === undefined && isAllowListed(e.name)) {
        report(at, `every command gets ${e.name} already`, `remove it here, or write { ${e.name}: value } to give it another value`, "warning");
      }
      seen.add(e.name);
      const own = (e.reads ?? []).filter((v) => v.startsWith(RESERVED_PREFIX));
      if (own.length) report([...at, e.name], `the value of ${e.name} reads \${${own[0]}}, one of cascade-sync's own variables, which are never given to commands`, OWN_VARIABLES_HINT);
    });
    if (unused && entries.length) report(path, `env is ignored: ${unused} runs no command`, "remove env here", "warning");
  }
};

/** An HTTP header name (RFC 9110 token). */
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/**
 * An http check's `headers`: valid names, each once, values on one line, and no value read from a
 * variable that a committed config cannot read (cascade-sync's own CASCADE_*, or one this config
 * reads for the controller itself): the checks that run come from committed configs, where such a
 * value is "[withheld]" and the header would never be sent.
 */
const validHttpHeaders: Rule = (c, report) => {
  const own = new Set(c.controllerVariables ?? []);
  for (const env of Object.values(c.environments)) {
    const checks = [...env.gates.map((g, i) => ({ list: "gates", i, http: g.http })), ...env.health.map((h, i) => ({ list: "health", i, http: h.http }))];
    for (const { list, i, http } of checks) {
      const seen = new Set<string>();
      for (const h of http?.headers ?? []) {
        const at = ["environments", env.name, list, i, "http", "headers", h.name];
        if (!HEADER_NAME.test(h.name)) report(at, `${JSON.stringify(h.name)} is not a valid HTTP header name`, "use letters, digits and dashes, such as Authorization or X-Api-Key");
        else if (seen.has(h.name.toLowerCase())) report(at, `header ${h.name} is given twice`, "give each header once (names are case-insensitive)");
        seen.add(h.name.toLowerCase());
        if (/[\r\n\0]/.test(h.value)) report(at, `the value of header ${h.name} spans lines or holds a NUL character`, "a header value is one line; check the variable it reads");
        const reserved = (h.reads ?? []).find((v) => v.startsWith(RESERVED_PREFIX) || own.has(v));
        if (reserved) {
          report(at, `the value of header ${h.name} reads \${${reserved}}, ${reserved.startsWith(RESERVED_PREFIX) ? "one of cascade-sync's own variables" : "a variable this config also reads for the controller itself (outside environments)"}: the checks that run come from configs committed on branches, which cannot read it, so the header would never be sent`,
            "give the check a variable of its own, such as ARGOCD_TOKEN, holding a token for that service only");
        }
      }
    }
  }
};

/** Every semantic rule, run in order after normalization. */
export const semanticRules: Rule[] = [uniqueRemoteNames, knownFrom, noCycles, distinctBranches, validWindows, batchAfterDebounce, positiveIntervals, loopbackOrToken, signersNeedApprovalPromotion, validCommandEnv, validHttpHeaders];
