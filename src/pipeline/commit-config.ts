import { join } from "node:path";
import { CONFIG_FILE, parseConfig } from "../config/load.js";
import type { LoadResult } from "../config/types.js";
import { dotenvPath, readDotenv, type Dotenv } from "../config/dotenv.js";
import { WITHHELD, type CommandSourceEnv } from "./command-env.js";

/**
 * Parses the `cascade-sync-config.yaml` of a commit (an environment's policy, a release's hooks and
 * health, a gate's view of its candidate) as the sandbox's own would be parsed: ${VAR} reads the
 * controller's environment, else the sandbox's `.env` — but never one of the controller's own
 * credentials, which read as "[withheld]" (see CommandSourceEnv), so a committed config cannot copy
 * one into a URL, a header or a command's `env`. Returns the loader's result union; never throws.
 */
export async function parseCommitConfig(text: string, sandboxDir: string, source: CommandSourceEnv): Promise<LoadResult> {
  const file = join(sandboxDir, CONFIG_FILE);
  const dotenv = withholdDotenv(await readDotenv(dotenvPath(file)), source);
  return parseConfig(text, file, source.env, dotenv);
}

/** `.env` without the controller's own credentials (they read as the placeholder, like the shell's). */
function withholdDotenv(d: Dotenv, source: CommandSourceEnv): Dotenv {
  const values: Record<string, string> = {};
  for (const [k, v] of Object.entries(d.values)) values[k] = source.isWithheld(k) ? WITHHELD : v;
  return { ...d, values };
}
