/**
 * The CLI's encryption commands: `filter-process` and `filter-textconv` (run by git, registered by
 * init), `key export` and `key import` (share the team's key).
 */
import { readFile } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { loadConfig, formatProblem } from "../config/load.js";
import { stalled } from "../errors.js";
import { Repo } from "../git/repo.js";
import { loadBlobPolicy } from "./blob-policy.js";
import { filterMain } from "./filter-main.js";
import { setUpEncryptionFilter } from "./git-filter.js";
import { exportKeyText, importKeyText } from "./keyfile.js";

/** What the encryption commands use of the CLI's world. */
export interface SecurityCommandArgs {
  cwd: string;
  env: NodeJS.ProcessEnv;
  stdin: NodeJS.ReadableStream;
  /** Binary output (git reads the filter's stdout as bytes). */
  stdout: NodeJS.WritableStream;
  out: (line: string) => void;
  err: (line: string) => void;
  /** `--config PATH` when given. */
  configFile?: string;
}

/** `cascade-sync filter-process` and `filter-textconv FILE` (argv as given, flags included) through the CLI's main (bin/ takes a faster way to the same {@link filterMain}). */
export async function filterCommand(a: SecurityCommandArgs, argv: readonly string[]): Promise<number> {
  return filterMain({ argv, cwd: a.cwd, env: a.env, stdin: a.stdin, stdout: a.stdout, stderr: { write: (s: string) => a.err(s) } });
}

async function sandboxSettings(a: SecurityCommandArgs) {
  const loaded = await loadConfig(a.configFile ?? resolve(a.cwd, "cascade-sync-config.yaml"), a.env);
  if (!loaded.ok) throw stalled("ConfigInvalid", `the config is not valid:\n${loaded.problems.map(formatProblem).join("\n")}`, "fix the problems above, then run `cascade-sync validate`");
  return loaded.config;
}

/**
 * `cascade-sync key export`: prints this sandbox's key (one line of base64) for a teammate, and on
 * stderr what it is. `key import [FILE]`: installs the key read from FILE or stdin, then decrypts the
 * encrypted files that held their ciphertext. Exit 0 on success; errors are Stalled with a hint.
 */
export async function keyCommand(a: SecurityCommandArgs, positionals: readonly string[]): Promise<number> {
  const [sub, file] = positionals;
  const config = await sandboxSettings(a);
  const settings = { dir: config.dir, configDir: dirname(config.file), security: config.security };
  if (sub === "export") {
    const r = await exportKeyText(settings, a.env);
    if (!r.ok) throw r.error;
    a.err(`the encryption key of ${config.dir} (${r.fingerprint}, from ${r.source}); it decrypts every file under security.encrypt: hand it over only through a private channel`);
    a.out(r.text);
    return 0;
  }
  if (sub === "import") {
    const text = file && file !== "-" ? await readFile(resolve(a.cwd, file), "utf8") : await readAll(a.stdin);
    const r = await importKeyText(settings, a.env, text);
    if (!r.ok) throw r.error;
    a.out(r.created ? `installed the key ${r.fingerprint} as ${r.path} (mode 0600)` : `the key ${r.fingerprint} is already installed at ${r.path}`);
    const repo = await Repo.open(config.dir).catch(() => undefined);
    if (repo) {
      const loaded = await loadBlobPolicy(config, a.env);
      for (const l of await setUpEncryptionFilter(repo, { encrypt: config.security.encrypt, ...loaded })) a.out(l);
      a.out("a running controller picks the key up at its next start (`cascade-sync stop`, then `cascade-sync start`)");
    }
    return 0;
  }
  throw stalled("UsageError", `unknown key command ${JSON.stringify(sub ?? "")}`, "use `cascade-sync key export` or `cascade-sync key import [FILE]`");
}

async function readAll(input: NodeJS.ReadableStream): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of input) chunks.push(typeof c === "string" ? Buffer.from(c) : (c as Buffer));
  return Buffer.concat(chunks).toString("utf8");
}
