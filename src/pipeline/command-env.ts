import type { CommandEnvEntry } from "../config/types.js";

/**
 * Variables every command (gate, deploy hook, health check) gets from the controller's environment
 * when they are set there: what a shell and common tools need to work, and nothing that
 * authenticates anyone. Everything else must be named in the config's `env` for that command.
 */
export const ALLOWED_VARIABLES: readonly string[] = ["PATH", "HOME", "USER", "SHELL", "LANG", "TZ", "TMPDIR", "TERM"];
/** Locale categories (LC_ALL, LC_CTYPE, ...) follow LANG into the allow-list. */
const ALLOWED_PATTERN = /^LC_[A-Z_]+$/;

/**
 * Names cascade-sync keeps for itself: it sets some for commands (CASCADE_ENVIRONMENT, CASCADE_COMMIT,
 * ...) and reads its own credentials from others (CASCADE_CLIENT_SECRET, CASCADE_ENCRYPTION_KEY, ...).
 * A config may neither pass one through nor set one; commandEnv enforces it too, for specs that were
 * never validated.
 */
export const RESERVED_PREFIX = "CASCADE_";

/** What an environment variable name must look like for `env` (POSIX shell names). */
export const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** True for a variable every command gets anyway (the allow-list); naming one passes nothing secret. */
export function isAllowListed(name: string): boolean {
  return ALLOWED_VARIABLES.includes(name) || ALLOWED_PATTERN.test(name);
}

/** True when `name` may be named in a command's `env`: a valid shell name outside CASCADE_*. */
export function isNameable(name: string): boolean {
  return ENV_NAME.test(name) && !name.startsWith(RESERVED_PREFIX);
}

/** What commandEnv builds from. */
export interface CommandEnvInput {
  /** The controller's own environment: the source of the allow-listed variables and of names passed through. */
  controller: NodeJS.ProcessEnv;
  /** What the config names for this command (its `env`); absent means nothing beyond the allow-list. */
  entries?: readonly CommandEnvEntry[];
  /** The CASCADE_* variables cascade-sync sets for this run; they win over anything else. */
  cascade: Record<string, string>;
}

/** A command's complete environment and the values in it that are secrets. */
export interface CommandEnv {
  /** Exactly what the command's process gets. */
  env: Record<string, string>;
  /**
   * Values that must not appear in its output or in logs: those passed through by name (but for
   * allow-listed names, which every command gets) and those read through ${VAR}. Literal values
   * written in the config are not.
   */
  secrets: string[];
}

/**
 * Builds the environment of a command that runs code from a commit (a gate, a deploy hook, a health
 * check): the allow-listed variables from `controller`, then the config's `entries` (a name passed
 * through when `controller` has it, or a name with its value; later entries win), then `cascade`.
 * Nothing else of the controller's environment reaches the command, in particular not the
 * credentials the controller itself uses. Entries with an invalid or CASCADE_* name are skipped (the
 * config's validation reports them). Pure; never throws.
 */
export function commandEnv(input: CommandEnvInput): CommandEnv {
  const env: Record<string, string> = {};
  const secrets: string[] = [];
  for (const [name, value] of Object.entries(input.controller)) {
    if (value !== undefined && isAllowListed(name)) env[name] = value;
  }
  for (const entry of input.entries ?? []) {
    if (!isNameable(entry.name)) continue;
    const value = entry.value ?? (Object.hasOwn(input.controller, entry.name) ? input.controller[entry.name] : undefined);
    // A credential of the controller's own (see CommandSourceEnv) is not passed, not even as its placeholder.
    if (value === undefined || (entry.value === undefined && value === WITHHELD)) continue;
    env[entry.name] = value;
    if (entry.value === undefined ? !isAllowListed(entry.name) : entry.reads?.length) secrets.push(value);
  }
  Object.assign(env, input.cascade);
  return { env, secrets };
}

/** What a withheld variable reads as, for configs and commands that come from commits. */
export const WITHHELD = "[withheld]";

/**
 * The names of the controller's own credentials in `config`: every ${VAR} read outside
 * `environments` (remote credentials, webhook secrets, the server token, the encryption key).
 */
export function controllerVariableNames(config: { controllerVariables?: readonly string[] }): string[] {
  return [...(config.controllerVariables ?? [])];
}

/**
 * The environment that code and configs from commits may read, kept up to date in place (gates,
 * hooks, health checks and the parsing of committed configs all hold the same object). Every
 * `CASCADE_*` variable and every variable the controller's own config reads for itself reads as
 * {@link WITHHELD}: a commit can neither pass one to a command by name nor copy it into a value
 * through ${VAR} (a health check's URL, say). Names once withheld stay withheld for the process's
 * life, so a config edit pushed to `develop` that stops reading a credential cannot free it.
 */
export class CommandSourceEnv {
  /** The environment to hand on; mutated in place by {@link update}. */
  readonly env: NodeJS.ProcessEnv = {};
  private readonly withheld = new Set<string>();

  constructor(controller: NodeJS.ProcessEnv, names: readonly string[] = []) {
    this.update(controller, names);
  }

  /** Withholds `names` too (on top of every name withheld before) and copies the rest of `controller`. */
  update(controller: NodeJS.ProcessEnv, names: readonly string[]): void {
    for (const n of names) this.withheld.add(n);
    for (const k of Object.keys(this.env)) delete this.env[k];
    for (const [k, v] of Object.entries(controller)) {
      if (v === undefined) continue;
      this.env[k] = k.startsWith(RESERVED_PREFIX) || this.withheld.has(k) ? WITHHELD : v;
    }
    // A withheld name the shell lacks may be in .env: the placeholder wins over .env as the shell would.
    for (const n of this.withheld) this.env[n] = WITHHELD;
  }

  /** True when `name` is one of the controller's own credentials. */
  isWithheld(name: string): boolean {
    return name.startsWith(RESERVED_PREFIX) || this.withheld.has(name);
  }
}
