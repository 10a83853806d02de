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
