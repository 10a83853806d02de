/**
 * `cascade-sync freeze` and `cascade-sync unfreeze` (issue 16): sign a freeze or a lift of an
 * environment into the sandbox's state file; the controller commits it with its next batch, and it
 * counts once committed (see src/approvals/freeze.ts).
 */
import { resolve } from "node:path";
import { formatProblem, loadConfig } from "../config/load.js";
import { parseDuration } from "../duration.js";
import { signFreeze } from "../approvals/freeze.js";
import type { MainArgs } from "./main.js";

type Out = (s: string) => void;

/**
 * Runs `freeze ENV --reason TEXT [--expires 4h] --key FILE [--signer NAME]` (action freeze) or
 * `unfreeze ENV --key FILE [--reason TEXT] [--signer NAME]` (action lift). Returns 0 when the entry
 * was written, 2 for a usage error (unknown environment, missing --key or --reason, bad --expires);
 * key and state file problems are thrown as Stalled CascadeErrors (main prints them, exit 2).
 */
export async function freezeCmd(args: MainArgs, configFile: string, positionals: string[], flags: Record<string, string | boolean>, out: Out, err: Out, action: "freeze" | "lift"): Promise<number> {
  const command = action === "freeze" ? "freeze" : "unfreeze";
  const usage = action === "freeze" ? "cascade-sync freeze ENV --reason TEXT [--expires 4h] --key FILE" : "cascade-sync unfreeze ENV --key FILE";
  const loaded = await loadConfig(configFile, args.env);
  if (!loaded.ok) {
    for (const p of loaded.problems) err(formatProblem(p));
    return 1;
  }
  const config = loaded.config;
  const envName = positionals[0];
  const env = envName && Object.hasOwn(config.environments, envName) ? config.environments[envName] : undefined;
  if (!env) {
    err(`cascade-sync ${command}: ${envName ? `"${envName}" is not an environment` : "which environment?"}\nhint: ${usage}, with ENV one of: ${Object.keys(config.environments).join(", ") || "(none configured)"}`);
    return 2;
  }
  if (typeof flags.key !== "string") {
    err(`cascade-sync ${command}: --key FILE is required (an unencrypted OpenSSH or PEM private key whose public key is in ${env.name}'s approvals.signers)\nhint: ${usage}`);
    return 2;
  }
  if (action === "freeze" && (typeof flags.reason !== "string" || !flags.reason.trim())) {
    err(`cascade-sync freeze: --reason TEXT is required (it is signed, and shown in status, plan and on the status page)\nhint: ${usage}`);
    return 2;
  }
  let expiresInMs: number | undefined;
  if (action === "freeze" && flags.expires !== undefined) {
    expiresInMs = typeof flags.expires === "string" ? parseDuration(flags.expires) : undefined;
    if (!expiresInMs) {
      err(`cascade-sync freeze: --expires ${String(flags.expires)} is not a duration\nhint: e.g. 4h, 30m, 2d; leave it out to freeze until unfrozen`);
      return 2;
    }
  }
  const result = await signFreeze({
    sandboxDir: config.dir, environment: env.name, action, keyFile: resolve(args.cwd, flags.key), now: args.clock.now(),
    ...(typeof flags.reason === "string" ? { reason: flags.reason } : {}),
    ...(expiresInMs !== undefined ? { expiresInMs } : {}),
    ...(typeof flags.signer === "string" ? { signer: flags.signer } : {}),
  });
  out(result.entryText);
  out(`${result.message}.`);
  out(`appended to ${result.stateFile} under freezes:; the controller commits it with its next batch (see \`cascade-sync status\`)`);
  if (!env.approvals.signers.length) out(`note: ${env.name} has no approvals.signers in this config; a freeze counts only when signed by a key listed there, as committed on branch ${env.branch}`);
  return 0;
}
