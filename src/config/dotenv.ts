import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { parseEnv } from "node:util";
import type { ConfigProblem, VariableSource } from "./types.js";

/** The file at the top of the sandbox that ${VAR} reads when the controller's environment lacks VAR. */
export const DOTENV_FILE = ".env";
/** A .env larger than this is not read: it holds a few credentials, never this much. */
export const MAX_DOTENV_BYTES = 1024 * 1024;
/** How an encrypted blob starts (src/security/encrypt.ts): a working file that a native git command wrote from the stored blob. */
const CIPHERTEXT_MAGIC = "CASCADE-SYNC-ENC";

/**
 * The sandbox's .env as read: its variables, and a warning for each line that could not be read.
 * The values are secrets: nothing here may be printed, and the problems never quote a line.
 */
export interface Dotenv {
  /** Absolute path of the .env file (whether or not it exists). */
  file: string;
  exists: boolean;
  values: Record<string, string>;
  /** Warnings with file:line (a line that is not NAME=value, an unreadable file); never a value. */
  problems: ConfigProblem[];
}

/** The .env that belongs to the config file at `configFile`: the one beside it, at the top of the sandbox. */
export function dotenvPath(configFile: string): string {
  return join(configFile, "..", DOTENV_FILE);
}

/** What a sandbox without a .env reads: no variables (the default of parseConfig). */
export function noDotenv(file: string): Dotenv {
  return { file, exists: false, values: {}, problems: [] };
}

/**
 * Reads the .env at `file`. Never throws: a missing file gives no variables, an unreadable,
 * oversized or still-encrypted one gives no variables and a warning that says why.
 */
export async function readDotenv(file: string): Promise<Dotenv> {
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") return noDotenv(file);
    return unread(file, `cannot read ${DOTENV_FILE} (${code ?? (err as Error).message}); its variables are not used`, `check that ${file} is a file this user may read`);
  }
  if (bytes.length > MAX_DOTENV_BYTES) {
    return unread(file, `${DOTENV_FILE} is ${bytes.length} bytes, more than ${MAX_DOTENV_BYTES}; its variables are not used`, "keep only NAME=value lines for cascade-sync in it");
  }
  if (bytes.subarray(0, CIPHERTEXT_MAGIC.length).toString("latin1") === CIPHERTEXT_MAGIC) {
    // Normally the working file is plaintext (cascade-sync decrypts what it writes out); a native
    // `git checkout` or `git stash` writes the stored ciphertext instead.
    return unread(file, `${DOTENV_FILE} holds its encrypted form (written by a native git command), so its variables are not used`,
      "write the plaintext back into .env; cascade-sync stores it encrypted again, and writes it out decrypted itself");
  }
  return { file, exists: true, ...parseDotenv(bytes.toString("utf8"), file) };
}

function unread(file: string, message: string, hint: string): Dotenv {
  return { file, exists: true, values: {}, problems: [{ severity: "warning", file, line: 1, col: 1, path: "", message, hint }] };
}

/** `NAME=value`, optionally after `export`; the name as dotenv tools write them (a ${VAR} can refer only to [A-Za-z_][A-Za-z0-9_]*). */
const ENTRY = /^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=(.*)$/;
const QUOTES = new Set(['"', "'", "`"]);

/**
 * Parses .env text: each entry's value by Node's own `util.parseEnv` (quotes, `#` comments,
 * multi-line quoted values, `\n` in double quotes), one entry at a time, so that a bad line is
 * reported and skipped instead of being glued to the next one (as parseEnv alone does with a line
 * that has no `=`). Returns the variables and a warning per bad line, with its line number and never its text.
 */
export function parseDotenv(text: string, file: string): { values: Record<string, string>; problems: ConfigProblem[] } {
  const lines = text.replace(/^\uFEFF/, "").split(/\r?\n/);
  const values: Record<string, string> = {};
  const problems: ConfigProblem[] = [];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (!line.trim() || line.trimStart().startsWith("#")) continue;
    const m = ENTRY.exec(line);
    if (!m) {
      problems.push({ severity: "warning", file, line: i + 1, col: 1, path: "", message: `line ${i + 1} is not NAME=value${line.includes("=") ? " (the text before = is not a variable name)" : " (it has no =)"}; it is ignored`,
        hint: "write NAME=value, with a name of letters, digits and _ that does not start with a digit; start a comment with #" });
      continue;
    }
    const name = m[1]!;
    let raw = m[2]!;
    const start = raw.trimStart();
    const q = start[0];
    // A quoted value that does not close on its own line runs on to the line that closes it (as in parseEnv).
    if (q && QUOTES.has(q) && !start.slice(1).includes(q)) {
      const end = lines.findIndex((l, j) => j > i && l.includes(q));
      if (end > 0) {
        raw = [raw, ...lines.slice(i + 1, end + 1)].join("\n");
        i = end;
      }
    }
    const parsed = parseEnv(`${name}=${raw}`) as Record<string, string>;
    if (Object.hasOwn(parsed, name)) values[name] = parsed[name]!;
  }
  return { values, problems };
}

/**
 * One line for `validate` and `status`: each variable the config refers to and where its value
 * came from, e.g. `CASCADE_CLIENT_ID (.env), CASCADE_CLIENT_SECRET (shell), HOOK (missing)`. Never a value.
 */
export function formatVariables(variables: readonly VariableSource[]): string {
  return variables.map((v) => `${v.name} (${v.source}${v.source === "missing" && v.optional ? ", optional" : ""})`).join(", ");
}
