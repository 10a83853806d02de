import { readFile, stat } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { CST, isAlias, isCollection, isPair, isScalar, LineCounter, Lexer, parseDocument, type Document } from "yaml";
import type { ErrorObject } from "ajv";
import configSchema from "../../schema/cascade-sync-config.schema.json" with { type: "json" };
import { validate as validateConfigSchema } from "../generated/validate-config.js";
import type { CascadeSyncConfig } from "../generated/config.js";
import { formatPath, SourcePositions } from "./positions.js";
import { isHttpUrl, normalize } from "./normalize.js";
import { semanticRules } from "./rules.js";
import type { ConfigProblem, LoadResult, VariableSource } from "./types.js";
import { nearest } from "../text.js";
import { DOTENV_FILE, dotenvPath, noDotenv, readDotenv, type Dotenv } from "./dotenv.js";

/** The config file's name in a sandbox. */
export const CONFIG_FILE = "cascade-sync-config.yaml";
/** A config larger than this is refused before parsing (it is hand-edited YAML, never this big). */
export const MAX_CONFIG_BYTES = 1024 * 1024;
/** At most this many alias uses, counted with aliases expanded (YAML's own guard uses the same number). */
const MAX_ALIASES = 100;
/** At most this many values (scalars and collections) once aliases are expanded; a real config has a few hundred. */
const MAX_EXPANDED_VALUES = 10_000;
const MAX_DEPTH = 32;

/**
 * The config schema's checks (every error; defaults filled in): ajv's validator generated from the
 * schema by `npm run gen` (src/generated/validate-config.ts), so no process compiles the schema.
 */
function validate(value: unknown): ErrorObject[] {
  const v = validateConfigSchema as ((data: unknown) => boolean) & { errors?: ErrorObject[] | null };
  return v(value) ? [] : [...(v.errors ?? [])];
}

/**
 * Loads a config file through the whole pipeline: YAML with source positions, schema validation
 * (every error, not the first), normalization (defaults, durations to ms, paths, ${VAR}s), then the
 * semantic rules. A ${VAR} reads `env` (the controller's environment), else the `.env` beside the
 * file. Returns `{ ok: false, problems }` with every error found, never throws.
 */
export async function loadConfig(file: string, env: NodeJS.ProcessEnv): Promise<LoadResult> {
  const abs = resolve(file);
  try {
    const st = await stat(abs);
    if (st.size > MAX_CONFIG_BYTES) {
      return fail(abs, `the file is ${st.size} bytes; a config is at most ${MAX_CONFIG_BYTES} bytes`, "is this the right file?");
    }
    const text = await readFile(abs, "utf8");
    return parseConfig(text, abs, env, await readDotenv(dotenvPath(abs)));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") {
      return fail(abs, "no config file here", `run \`cascade-sync init\` in ${dirname(abs)}, or pass --config PATH`);
    }
    return fail(abs, `cannot read the config: ${(err as Error).message}`, `check that ${abs} is a file this user may read`);
  }
}

/**
 * Runs the pipeline on config text; `file` names it in problems and anchors relative paths. A ${VAR}
 * reads `env` first, then `dotenv` (as readDotenv gave it; by default none, whose path is still
 * named when a variable is missing). Pure: nothing is read here.
 */
export function parseConfig(text: string, file: string, env: NodeJS.ProcessEnv, dotenv: Dotenv = noDotenv(dotenvPath(file))): LoadResult {
  const bytes = Buffer.byteLength(text, "utf8");
  if (bytes > MAX_CONFIG_BYTES) return fail(file, `the file is ${bytes} bytes; a config is at most ${MAX_CONFIG_BYTES} bytes`, "is this the right file?");
  // The YAML composer recurses once per nesting level: thousands of levels overflow the stack (and
  // take seconds), so nesting is measured on the token stream before anything is composed.
  const nesting = nestingEstimate(text, MAX_DEPTH + 2);
  if (nesting.depth > MAX_DEPTH + 1) return fail(file, `values are nested more than ${MAX_DEPTH} levels deep`, DEPTH_HINT, nesting);
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, uniqueKeys: true, prettyErrors: false });
  const positions = new SourcePositions(doc, lines);
  const problems: ConfigProblem[] = [];
  // Every problem carries a hint (what to do next): the parameter is required, not optional.
  const at = (path: (string | number)[], message: string, hint: string, key?: string, severity: ConfigProblem["severity"] = "error") =>
    problems.push({ severity, file, ...positions.at(path, key), path: formatPath(key ? [...path, key] : path), message, hint });

  for (const e of doc.errors) {
    problems.push({ severity: "error", file, ...positions.pos(e.pos[0]), path: "", message: firstLine(e.message), hint: "fix the YAML syntax here" });
  }
  if (problems.length) return { ok: false, problems };

  // Checked before anything is expanded: "billion laughs" is a few lines that expand to 10^9 values.
  const bomb = aliasExpansion(doc);
  if (bomb) {
    const what = bomb.values === Infinity ? `alias *${bomb.name} refers to a value that contains it, so it expands without end`
      : `expanding the aliases up to *${bomb.name} here ${bomb.tooManyValues ? `gives more than ${MAX_EXPANDED_VALUES} values` : `takes more than ${MAX_ALIASES} alias uses`} (an alias bomb?)`;
    return fail(file, what, `write the values out, or use at most ${MAX_ALIASES} alias uses and ${MAX_EXPANDED_VALUES} expanded values`, positions.pos(bomb.offset));
  }
  let raw: unknown;
  try {
    raw = doc.toJS({ maxAliasCount: MAX_ALIASES });
  } catch (err) {
    // YAML's own guard, kept as a backstop; aliasExpansion is meant to refuse everything it would.
    return fail(file, `cannot expand the YAML: ${(err as Error).message}`, `use at most ${MAX_ALIASES} alias expansions`);
  }
  const deep = tooDeep(raw, []);
  if (deep) return fail(file, `values are nested more than ${MAX_DEPTH} levels deep`, DEPTH_HINT, positions.at(deep));
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    return fail(file, "the config must be a YAML mapping with at least `version: 1` and `sandbox:`", "see the example in the README");
  }

  const unusedDefaults = fillCredentialDefaults(raw);
  const unset = new Set<string>();
  const unsetVars: { path: (string | number)[]; name: string }[] = [];
  const reads = new Map<string, string[]>();
  const vars = new VariableLookup(env, dotenv);
  const data = substituteVars(raw, vars, [], (path) => !unusedDefaults.has(formatPath(path)), (path, name) => {
    const where = formatPath(path);
    reads.set(where, [...(reads.get(where) ?? []), name]);
  }, (path, name) => {
    // The default credential variables may stay unset: then no credentials are sent (public remotes).
    if (OPTIONAL_VARS.has(name) && path[0] === "remotes" && (path[2] === "username" || path[2] === "password")) return true;
    unset.add(formatPath(path));
    unsetVars.push({ path, name });
    return false;
  });
  // A value read from a variable never shows in a problem (a schema error quotes the value it refuses).
  const hide = (text: string) => hideValues(text, vars.values);
  const hidden = (list: ConfigProblem[]) => [...list.map((p) => ({ ...p, message: hide(p.message), ...(p.hint ? { hint: hide(p.hint) } : {}) })), ...dotenv.problems];
  const done = (result: LoadResult): LoadResult =>
    result.ok ? { ...result, warnings: hidden(result.warnings) } : { ok: false, problems: hidden(result.problems), variables: vars.sources() };
  // Unknown keys are warnings and their values are ignored (so an unset variable in one is no error).
  const ignored: (string | number)[][] = [];

  for (const e of validate(data)) {
    const path = e.instancePath.split("/").slice(1).map(unescapePointer).map((p) => (/^\d+$/.test(p) ? Number(p) : p));
    // A value emptied by an unset variable is already reported, with the variable's name.
    if (unset.has(formatPath(path))) continue;
    // A branch's detail (each branch of "exactly one of" lists its own missing key): the oneOf
    // error itself says what is wrong, once. Checked first, as those details are "required" errors.
    if (e.schemaPath.includes("/oneOf/") || e.schemaPath.includes("/anyOf/")) continue;
    // A key's name failing its pattern: the detail is the regex; the propertyNames error names the key.
    if (e.schemaPath.includes("/propertyNames/")) continue;
    if (e.keyword === "propertyNames") {
      const name = String((e.params as { propertyName: string }).propertyName);
      at(path, `"${name}" is not a valid name`, "use lowercase letters, digits and dashes, starting with a letter", name);
    } else if (e.keyword === "additionalProperty" || e.keyword === "additionalProperties") {
      const key = String((e.params as { additionalProperty: string }).additionalProperty);
      const known = Object.keys(schemaAt(path)?.properties ?? {});
      const guess = nearest(key, known);
      ignored.push([...path, key]);
      at(path, `unknown key "${key}" is ignored`, guess ? `did you mean "${guess}"?` : known.length ? `valid keys: ${known.join(", ")}` : "remove it", key, "warning");
    } else if (e.keyword === "enum") {
      const allowed = (e.params as { allowedValues: unknown[] }).allowedValues;
      const value = valueAt(data, path);
      const guess = typeof value === "string" ? nearest(value, allowed.filter((v): v is string => typeof v === "string")) : undefined;
      at(path, `${JSON.stringify(value)} is not one of: ${allowed.map((v) => JSON.stringify(v)).join(", ")}`,
        guess ? `did you mean "${guess}"?` : `write one of those values${leaveOut(path)}`);
    } else if (e.keyword === "const") {
      const allowed = (e.params as { allowedValue: unknown }).allowedValue;
      at(path, `must be ${JSON.stringify(allowed)}`, path.length === 1 && path[0] === "version"
        ? `set version: ${JSON.stringify(allowed)}; this release of cascade-sync reads only format version ${JSON.stringify(allowed)}`
        : `set ${String(path.at(-1))}: ${JSON.stringify(allowed)}, the only value allowed here`);
    } else if (e.keyword === "required") {
      // Reported at the missing key's own path, so that every problem names a key (a missing
      // top-level key included); its position is that of the mapping that lacks it.
      const key = (e.params as { missingProperty: string }).missingProperty;
      const node = schemaAt([...path, key]);
      const example = node?.const !== undefined ? ` ${JSON.stringify(node.const)}` : "";
      const about = node?.description ? ` (${firstSentence(node.description)})` : "";
      at([...path, key], `missing required key "${key}"`, `add ${key}:${example} ${path.length ? `under ${formatPath(path)}` : "at the top level"}${about}`);
    } else if (e.keyword === "oneOf") {
      const node = schemaAt(path);
      const branches = node?.oneOf ?? Object.values(node?.dependencies ?? {}).flatMap((d) => d.oneOf ?? []);
      const options = [...new Set(branches.flatMap((s) => s.required ?? []))];
      if (!options.length) {
        at(path, e.message ?? "is not valid", describe(path));
        continue;
      }
      const value = valueAt(data, path);
      const given = options.filter((o) => value && typeof value === "object" && o in value);
      const both = given.length === 2 ? `both ${given.join(" and ")}` : `${given.slice(0, -1).join(", ")} and ${given.at(-1)}`;
      at(path, given.length > 1 ? `has ${both}; give exactly one of: ${options.join(", ")}` : `needs exactly one of: ${options.join(", ")}`,
        given.length === 2 ? `keep either ${given[0]} or ${given[1]}, and remove the other` : given.length > 2 ? `keep one of ${given.join(", ")}, and remove the others` : `add one of ${options.join(", ")}`);
    } else if ((e.keyword === "pattern" || e.keyword === "type") && VALUE_HINTS.has(patternOf(e))) {
      const { what, hint } = VALUE_HINTS.get(patternOf(e))!;
      at(path, `${JSON.stringify(valueAt(data, path))} is not ${what}`, hint);
    } else if (e.keyword === "type") {
      const expected = String((e.params as { type: string }).type).split(",");
      at(path, e.message ?? "has the wrong type", `write ${expected.map((t) => TYPE_WORDS[t] ?? t).join(" or ")}${leaveOut(path)}`);
    } else if (e.keyword === "uniqueItems") {
      const { j } = e.params as { i: number; j: number };
      const list = valueAt(data, path);
      const repeated = Array.isArray(list) ? JSON.stringify(list[j]) : "a value";
      at(path, `lists ${repeated} more than once`, `remove the repeated ${repeated}`);
    } else {
      // minimum, maximum, minLength, pattern, format: what the value must look like is in its description.
      const value = valueAt(data, path);
      const message = e.keyword === "pattern" ? `${JSON.stringify(value)} does not have the expected form`
        : e.keyword === "format" ? `${JSON.stringify(value)} is not ${(e.params as { format: string }).format === "uri" ? "an absolute URL" : `a valid ${(e.params as { format: string }).format}`}`
        : e.keyword === "minLength" && (e.params as { limit: number }).limit === 1 ? "must not be empty"
        : e.message ?? "is not valid";
      at(path, message, `${describe(path).replace(/\.$/, "")}${leaveOut(path).replace(/^,/, ";")}`);
    }
  }
  const under = (path: (string | number)[], prefix: (string | number)[]) => prefix.every((p, i) => path[i] === p);
  for (const { path, name } of unsetVars) {
    if (ignored.some((k) => under(path, k))) continue;
    at(path, `variable ${name} is not set (looked in the controller's environment and in ${dotenv.file}${dotenv.exists ? "" : ", which does not exist"})`,
      `add a line ${name}=... to ${DOTENV_FILE} beside the config (kept encrypted in git), or export ${name} where cascade-sync starts`);
  }
  if (problems.some((p) => p.severity === "error")) return done({ ok: false, problems: problems.sort(inFileOrder) });
  for (const path of ignored) {
    const parent = valueAt(data, path.slice(0, -1));
    if (parent && typeof parent === "object") delete (parent as Record<string | number, unknown>)[path[path.length - 1]!];
  }

  const config = normalize(data as CascadeSyncConfig, file, env, { variables: vars.sources(), fromDotenv: vars.fromDotenv, reads });
  for (const rule of semanticRules) rule(config, (path, message, hint, severity = "error") => at(path, message, hint, undefined, severity));
  problems.sort(inFileOrder);
  const errors = problems.filter((p) => p.severity === "error");
  if (errors.length) return done({ ok: false, problems });
  return done({ ok: true, config, warnings: problems });
}

/** Formats a problem as `file:line:col: path: message (hint)` for terminals, logs and status. */
export function formatProblem(p: ConfigProblem): string {
  const where = `${p.file}:${p.line}:${p.col}:`;
  const what = p.path ? `${p.path}: ${p.message}` : p.message;
  return `${where} ${p.severity === "warning" ? "warning: " : ""}${what}${p.hint ? ` (hint: ${p.hint})` : ""}`;
}

/** Problems are reported in file order, as a person fixes them; the stages find them in another. */
function inFileOrder(a: ConfigProblem, b: ConfigProblem): number {
  return a.line - b.line || a.col - b.col;
}

/** A result with one error about the whole file, at `at` (default: its start). */
function fail(file: string, message: string, hint: string, at: { line: number; col: number } = { line: 1, col: 1 }): LoadResult {
  return { ok: false, problems: [{ severity: "error", file, line: at.line, col: at.col, path: "", message, hint }] };
}

const DEPTH_HINT = "a config nests a few levels, never this deep; is this the right file?";

/** Variables that the defaults use and that may be unset: then the remote gets no credentials. */
const OPTIONAL_VARS = new Set(["CASCADE_CLIENT_ID", "CASCADE_CLIENT_SECRET"]);

const VAR = /\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g;

/** `text` with each of `values` (of 3 characters or more, as the Redactor takes them) replaced, longest first. */
function hideValues(text: string, values: readonly string[]): string {
  for (const v of [...new Set(values)].filter((x) => x.length >= 3).sort((a, b) => b.length - a.length)) text = text.split(v).join("[REDACTED]");
  return text;
}

/**
 * Looks ${VAR}s up: the controller's environment wins, then the sandbox's .env. Remembers where
 * each variable came from (for `validate` and `status`) and every value it gave (to keep them out
 * of problems, logs and status).
 */
class VariableLookup {
  private readonly used = new Map<string, VariableSource>();
  /** Every value given, from either source. */
  readonly values: string[] = [];
  /** The values given by .env. */
  readonly fromDotenv: string[] = [];

  constructor(
    private readonly env: NodeJS.ProcessEnv,
    private readonly dotenv: Dotenv,
  ) {}

  /**
   * The value of `name`, or undefined when neither source has it (then `optional` says whether it
   * may stay unset). `listed`: this use counts for `sources()`.
   */
  get(name: string, listed: boolean, optional: (name: string) => boolean): string | undefined {
    const shell = this.env[name];
    const fromFile = Object.hasOwn(this.dotenv.values, name) ? this.dotenv.values[name] : undefined;
    const value = shell ?? fromFile;
    if (value !== undefined) {
      this.values.push(value);
      if (shell === undefined) this.fromDotenv.push(value);
      if (listed && !this.used.has(name)) this.used.set(name, { name, source: shell !== undefined ? "shell" : ".env" });
      return value;
    }
    const known = this.used.get(name);
    const mayStayUnset = optional(name);
    if (!listed) return undefined;
    // A variable required at any of its uses is reported as required.
    if (!known || (known.optional && !mayStayUnset)) this.used.set(name, { name, source: "missing", ...(mayStayUnset ? { optional: true as const } : {}) });
    return undefined;
  }

  /** Each variable referred to, in order of first use. */
  sources(): VariableSource[] {
    return [...this.used.values()];
  }
}

/**
 * Replaces ${VAR} in every string but a command with its value from `vars`; a use at a path that
 * `listed` refuses is left out of `vars.sources()`. Each use is reported through `read`; a variable
 * that is not set also through `missing`, which returns true when it may stay unset. The credential defaults
 * are written in before this runs (fillCredentialDefaults), so they are substituted here too; the
 * validator's other defaults hold no ${VAR}.
 */
function substituteVars(
  value: unknown, vars: VariableLookup, path: (string | number)[], listed: (path: (string | number)[]) => boolean,
  read: (path: (string | number)[], name: string) => void, missing: (path: (string | number)[], name: string) => boolean,
): unknown {
  if (typeof value === "string") {
    // A command runs code from a commit: the controller's variables must not be written into it. Its
    // ${VAR}s are the shell's, read from the command's own (allow-listed) environment.
    if (isCommand(path)) return value;
    return value.replace(VAR, (_, name: string) => {
      read(path, name);
      return vars.get(name, listed(path), () => missing(path, name)) ?? "";
    });
  }
  if (Array.isArray(value)) return value.map((v, i) => substituteVars(v, vars, [...path, i], listed, read, missing));
  if (value && typeof value === "object") {
    const out: Record<string, unknown> = {};
    // defineProperty: a YAML key "__proto__" must stay a plain key (and be reported as unknown).
    for (const [k, v] of Object.entries(value)) Object.defineProperty(out, k, { value: substituteVars(v, vars, [...path, k], listed, read, missing), enumerable: true, writable: true, configurable: true });
    return out;
  }
  return value;
}

/** True for the path of a shell command: a gate's or health check's `command`, `deploy.hooks.pre`/`post`. */
function isCommand(path: (string | number)[]): boolean {
  if (path[0] !== "environments" || path.length !== 5) return false;
  const [, , list, index, key] = path;
  if ((list === "gates" || list === "health") && typeof index === "number") return key === "command";
  return list === "deploy" && index === "hooks" && (key === "pre" || key === "post");
}

/**
 * Writes the schema's credential defaults (`${CASCADE_CLIENT_ID}`, `${CASCADE_CLIENT_SECRET}`) into
 * each remote that leaves them out (else the validator would write them in unsubstituted), and
 * returns the paths of those it wrote into a local remote, which sends no credentials (its
 * variables are not listed by `validate` and `status`). It runs before ${VAR} substitution, so that every value is substituted
 * exactly once: a value read from the environment is never expanded a second time.
 */
function fillCredentialDefaults(raw: object): Set<string> {
  const unused = new Set<string>();
  const remotes = (raw as { remotes?: unknown }).remotes;
  if (!Array.isArray(remotes)) return unused;
  const props = schemaAt(["remotes", 0])?.properties ?? {};
  remotes.forEach((r, i) => {
    if (!r || typeof r !== "object" || Array.isArray(r)) return;
    const url = (r as { url?: unknown }).url;
    const local = typeof url === "string" && !isHttpUrl(url) && !url.includes("${");
    for (const key of ["username", "password"]) {
      const fallback = props[key]?.default;
      if (key in r || typeof fallback !== "string") continue;
      (r as Record<string, unknown>)[key] = fallback;
      if (local) unused.add(formatPath(["remotes", i, key]));
    }
  });
  return unused;
}

/**
 * Readable messages for values of a string shape the schema checks with a regex, by that regex (the
 * generated validator has its own copy of the schema, so its nodes are told apart by their pattern).
 */
const VALUE_HINTS = new Map<unknown, { what: string; hint: string }>([
  [definition("duration").pattern, { what: "a duration", hint: "write a number followed by ms, s, m, h or d, optionally chained: 500ms, 3s, 5m, 1h30m" }],
  [definition("branchName").pattern, { what: "a valid branch name", hint: "a short git branch name such as develop or main, without refs/heads/, spaces or any of ~^:?*[\\" }],
  [definition("remote").properties?.url?.pattern, { what: "a supported remote", hint: "use an http:// or https:// URL, an ssh URL (ssh://host/path or host:path), or the path of a local bare repository; git:// and other schemes are not supported" }],
]);

/** The regex of the schema node an error is about (for VALUE_HINTS), if it has one. */
function patternOf(e: ErrorObject): unknown {
  return (e.parentSchema as { pattern?: unknown } | undefined)?.pattern;
}

/** Words for a JSON type in a "write ..." hint. */
const TYPE_WORDS: Record<string, string> = {
  object: "a mapping (indented key: value lines, or { key: value })",
  array: "a list (lines starting with \"- \", or [a, b])",
  string: "text (in quotes if it would otherwise read as a number or true/false)",
  number: "a number",
  integer: "a whole number",
  boolean: "true or false",
};

/** What the value at `path` is for: its description, or that of the nearest ancestor that has one. */
function describe(path: (string | number)[]): string {
  for (let n = path.length; n >= 0; n--) {
    const text = schemaAt(path.slice(0, n))?.description;
    if (text) return n === path.length ? text : `${formatPath(path.slice(0, n))}: ${text}`;
  }
  return "see the config reference in README.md";
}

/** ", or leave KEY out for the default D" when the key at `path` has a default; "" otherwise. */
function leaveOut(path: (string | number)[]): string {
  const key = path.at(-1);
  const d = schemaAt(path)?.default;
  if (typeof key !== "string" || d === undefined) return "";
  if (d && typeof d === "object" && !Array.isArray(d) && !Object.keys(d).length) return `, or leave ${key} out for its defaults`;
  return `, or leave ${key} out for the default ${typeof d === "string" ? (d === "" ? '""' : d) : JSON.stringify(d)}`;
}

/** The first sentence of a description, without its full stop. */
function firstSentence(text: string): string {
  return (/^.*?\.(?=\s|$)/.exec(text)?.[0] ?? text).replace(/\.$/, "");
}

function definition(name: string): SchemaNode {
  return (configSchema as SchemaNode).definitions?.[name] ?? {};
}

function valueAt(value: unknown, path: (string | number)[]): unknown {
  let v = value;
  for (const p of path) v = v && typeof v === "object" ? (v as Record<string | number, unknown>)[p] : undefined;
  return v;
}

type SchemaNode = {
  properties?: Record<string, SchemaNode>;
  pattern?: string;
  items?: SchemaNode;
  additionalProperties?: SchemaNode | boolean;
  oneOf?: SchemaNode[];
  dependencies?: Record<string, SchemaNode>;
  required?: string[];
  $ref?: string;
  definitions?: Record<string, SchemaNode>;
  default?: unknown;
  const?: unknown;
  description?: string;
};

/**
 * The schema node that describes the value at `path`, for hints. A $ref is followed, and the
 * keywords written next to it (the use site's description and default) win over the definition's.
 */
function schemaAt(path: (string | number)[]): SchemaNode | undefined {
  const root = configSchema as SchemaNode;
  const deref = (n: SchemaNode | undefined): SchemaNode | undefined => {
    if (n?.$ref?.startsWith("#/definitions/")) {
      const { $ref, ...local } = n;
      const target = deref(root.definitions?.[$ref.slice("#/definitions/".length)]);
      return target && { ...target, ...local };
    }
    return n;
  };
  let node = deref(root);
  for (const p of path) {
    if (!node) return undefined;
    if (typeof p === "number") node = deref(node.items);
    else node = deref(node.properties?.[p] ?? (typeof node.additionalProperties === "object" ? node.additionalProperties : undefined));
  }
  return node;
}

function unescapePointer(s: string): string {
  return s.replace(/~1/g, "/").replace(/~0/g, "~");
}

function firstLine(s: string): string {
  return s.split("\n")[0] ?? s;
}

/** The path of the first value nested deeper than MAX_DEPTH, or undefined. Stops there (also on a cyclic value). */
function tooDeep(v: unknown, path: (string | number)[]): (string | number)[] | undefined {
  if (path.length > MAX_DEPTH) return path;
  if (v && typeof v === "object") {
    for (const [k, c] of Object.entries(v)) {
      const found = tooDeep(c, [...path, Array.isArray(v) ? Number(k) : k]);
      if (found) return found;
    }
  }
  return undefined;
}

/**
 * The first alias (in file order) at which the document, with its aliases expanded, would exceed
 * MAX_EXPANDED_VALUES values or MAX_ALIASES alias uses, or that refers to a value containing itself
 * (then `values` is Infinity). Undefined when expanding is safe. Never expands anything: each node's
 * expanded size is computed once, from the sizes of the nodes its aliases name, so it stays linear.
 * Recursion follows the written nesting only, which is bounded before parsing.
 */
function aliasExpansion(doc: Document): { name: string; offset: number; values: number; tooManyValues: boolean } | undefined {
  type Size = { values: number; aliases: number };
  const sizes = new Map<unknown, Size>();
  const anchors = new Map<string, unknown>(); // The last node with each anchor so far, as YAML resolves them.
  let values = 0;
  let aliases = 0;
  let found: { name: string; offset: number; values: number; tooManyValues: boolean } | undefined;
  const size = (node: unknown): Size => {
    if (found || node === null || node === undefined) return { values: 0, aliases: 0 };
    if (isAlias(node)) {
      const target = anchors.get(node.source);
      // A target still being sized contains this alias: expanding it never ends.
      const s = target === undefined ? { values: 1, aliases: 0 } : sizes.get(target) ?? { values: Infinity, aliases: Infinity };
      values += s.values;
      aliases += 1 + s.aliases;
      if (values > MAX_EXPANDED_VALUES || aliases > MAX_ALIASES) found = { name: node.source, offset: node.range?.[0] ?? 0, values: s.values, tooManyValues: values > MAX_EXPANDED_VALUES };
      return { values: s.values, aliases: 1 + s.aliases };
    }
    const anchor = (node as { anchor?: string }).anchor;
    if (anchor) anchors.set(anchor, node);
    const s: Size = { values: isPair(node) ? 0 : 1, aliases: 0 }; // A pair is not a value of its own.
    if (isPair(node)) {
      for (const part of [node.key, node.value]) {
        const c = size(part);
        s.values += c.values;
        s.aliases += c.aliases;
      }
    } else if (isCollection(node)) {
      for (const item of node.items) {
        const c = size(item);
        s.values += c.values;
        s.aliases += c.aliases;
      }
    } else if (!isScalar(node)) return s;
    sizes.set(node, s);
    return s;
  };
  size(doc.contents);
  return found;
}

/**
 * An estimate of how deeply the YAML in `text` nests (a mapping with scalar values counts 1), read
 * from the lexer's tokens without composing anything, so it stays linear and never recurses. Block
 * collections are counted by the columns their nodes start at, flow collections by their brackets.
 * Returns the estimate with the 1-based line and column of the token where it is first reached, as
 * soon as it exceeds `limit`. The exact depth is checked on the parsed value.
 */
function nestingEstimate(text: string, limit: number): { depth: number; line: number; col: number } {
  const columns: number[] = [];
  let flow = 0;
  let col = 0;
  let line = 1;
  let deepest = { depth: 0, line: 1, col: 1 };
  let atLineStart = true;
  let nodeNext = false; // After "-" or "?" a block collection may start on the same line.
  let scalarNext = false; // The lexer marks a scalar's source with a zero-width control token first.
  let max = 0;
  const startNode = () => {
    if (flow === 0 && (atLineStart || nodeNext)) {
      while (columns.length && columns[columns.length - 1]! >= col) columns.pop();
      columns.push(col);
    }
    atLineStart = false;
    nodeNext = false;
    max = Math.max(max, columns.length + flow);
  };
  const advance = (src: string) => {
    const nl = src.lastIndexOf("\n");
    col = nl >= 0 ? src.length - nl - 1 : col + src.length;
    for (let i = src.indexOf("\n"); i >= 0; i = src.indexOf("\n", i + 1)) line++;
  };
  for (const src of new Lexer().lex(text)) {
    const at = { line, col: col + 1 };
    if (scalarNext) {
      scalarNext = false;
      startNode();
      advance(src);
    } else {
      switch (CST.tokenType(src)) {
        case "scalar":
          scalarNext = true;
          break;
        case "doc-mode":
        case "flow-error-end":
        case "byte-order-mark":
          break;
        case "newline":
          atLineStart = true;
          nodeNext = false;
          col = 0;
          line++;
          break;
        case "doc-start":
        case "doc-end":
          columns.length = 0;
          flow = 0;
          advance(src);
          break;
        case "space":
        case "comment":
        case "directive-line":
        case "comma":
        case "map-value-ind":
          if (src.includes("\n")) atLineStart = true;
          advance(src);
          break;
        case "seq-item-ind":
        case "explicit-key-ind":
          startNode();
          nodeNext = true;
          advance(src);
          break;
        case "flow-map-start":
        case "flow-seq-start":
          startNode();
          flow++;
          max = Math.max(max, columns.length + flow);
          advance(src);
          break;
        case "flow-map-end":
        case "flow-seq-end":
          flow = Math.max(0, flow - 1);
          advance(src);
          break;
        default:
          // Anchors, tags, aliases, quoted scalars and block scalar headers start a node here.
          startNode();
          advance(src);
      }
    }
    if (max > deepest.depth) deepest = { depth: max, ...at };
    if (max > limit) break;
  }
  return deepest;
}
