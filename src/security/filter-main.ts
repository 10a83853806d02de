/**
 * The entry of the commands git runs for `security.encrypt` paths (`filter-process`,
 * `filter-textconv`), kept apart from the CLI's main so that a git command in the sandbox pays for
 * loading the filter and the config only, not the whole controller (measured on a loaded 2-core
 * machine: about 0.6 s against 2.7 s to start).
 */
import { readFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { CONFIG_FILE, loadConfig } from "../config/load.js";
import type { EncryptionKey } from "./encrypt.js";
import { smudgeContent } from "./filter-content.js";
import { serveFilterProcess } from "./filter-process.js";
import { loadEncryptionKey, sandboxKey, type KeyEnv } from "./keyfile.js";

/** The commands this entry serves. */
export const FILTER_COMMANDS: readonly string[] = ["filter-process", "filter-textconv"];

/**
 * The key the filter process (and textconv) uses: the sandbox's, found from the config in `cwd` (git
 * runs filters at the top of the work tree) the way the controller finds it; when that config cannot
 * be loaded, the key file `init` made for this folder. Undefined (with why) when there is none.
 */
export async function loadFilterKey(cwd: string, env: KeyEnv & NodeJS.ProcessEnv, configFile = join(cwd, CONFIG_FILE), keyFile?: string): Promise<{ key: EncryptionKey | undefined; problem?: string }> {
  const loaded = await loadConfig(configFile, env);
  const settings = loaded.ok
    ? { dir: loaded.config.dir, configDir: dirname(loaded.config.file), security: loaded.config.security }
    : { dir: cwd, configDir: cwd, security: { encrypt: [] as string[] } };
  let k = await sandboxKey(settings, env);
  // The config names no key and no default key file is found here: the key file the controller registered.
  if (!k.ok && k.error.reason === "EncryptionKeyMissing" && keyFile) k = await loadEncryptionKey(keyFile, { baseDir: cwd, env });
  return k.ok ? { key: k.key } : { key: undefined, problem: k.error.message };
}

/** What a filter command runs with (the process's own streams in production). */
export interface FilterMainArgs {
  argv: readonly string[];
  cwd: string;
  env: NodeJS.ProcessEnv;
  stdin: NodeJS.ReadableStream;
  stdout: NodeJS.WritableStream;
  stderr: { write(s: string): unknown };
}

/**
 * Runs `filter-process` (git's long-running filter protocol until git closes the pipe) or
 * `filter-textconv FILE` (the file decrypted when it is encrypted and this key reads it, else as it
 * is, for `git diff`). `--config PATH` names the config when it is not in `cwd`; `--key-file PATH` the
 * key file to use when the config names no key and no default key file is found. Resolves with the
 * exit code; a protocol error rejects (git then fails the command, storing nothing unfiltered).
 */
export async function filterMain(a: FilterMainArgs): Promise<number> {
  const [command, ...rest] = a.argv;
  const flags: Record<string, string> = {};
  const positionals: string[] = [];
  for (let i = 0; i < rest.length; i++) {
    const f = rest[i]!;
    if ((f === "--config" || f === "--key-file") && rest[i + 1] !== undefined) flags[f.slice(2)] = resolve(a.cwd, rest[++i]!);
    else positionals.push(f);
  }
  const { key } = await loadFilterKey(a.cwd, a.env, flags.config, flags["key-file"]);
  const warn = (line: string) => a.stderr.write(`${line}\n`);
  if (command === "filter-process") return serveFilterProcess({ input: a.stdin, output: a.stdout, warn, key });
  if (command === "filter-textconv" && positionals[0]) {
    const content = smudgeContent(key, positionals[0], await readFile(resolve(a.cwd, positionals[0]))).content;
    await new Promise<void>((res, rej) => a.stdout.write(content, (e) => (e ? rej(e) : res())));
    return 0;
  }
  warn(`cascade-sync: usage: cascade-sync filter-process | filter-textconv FILE`);
  return 2;
}
