#!/usr/bin/env node
// Prints a Markdown reference of every field of schema/cascade-sync-config.schema.json: dotted path,
// type, default and description, following $refs into `definitions`. Output depends only on the schema.
//   node scripts/config-reference.mjs                    print the reference
//   node scripts/config-reference.mjs --check README.md  exit 1 when README.md's generated section is stale
//   node scripts/config-reference.mjs --write README.md  rewrite README.md's generated section
// The generated section lies between <!-- config-reference:begin --> and <!-- config-reference:end -->.
import { readFile, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const SCHEMA = join(root, "schema", "cascade-sync-config.schema.json");
const BEGIN = "<!-- config-reference:begin -->";
const END = "<!-- config-reference:end -->";

/** Definitions shown as named value types (scalars with a format of their own) instead of expanded. */
const VALUE_TYPES = { duration: "duration", branchName: "branch name", commandEnv: "command environment" };

/** Resolves a local $ref; local keywords (description, default) win over the definition's. */
function deref(schema, node) {
  if (!node || typeof node.$ref !== "string") return { node, ref: undefined };
  const prefix = "#/definitions/";
  if (!node.$ref.startsWith(prefix)) throw new Error(`unsupported $ref ${node.$ref}`);
  const name = node.$ref.slice(prefix.length);
  const target = schema.definitions?.[name];
  if (!target) throw new Error(`$ref ${node.$ref} names no definition`);
  const { $ref: _ignored, ...local } = node;
  const inner = deref(schema, target);
  return { node: { ...inner.node, ...local }, ref: name, definition: inner.node };
}

function code(value) {
  const text = value === "" ? '""' : typeof value === "string" ? value : JSON.stringify(value, null, 0).replace(/","/g, '", "').replace(/,(?=[^ ])/g, ", ");
  // A backtick inside a code span needs a longer fence; the schema has none today, but stay safe.
  return text.includes("`") ? `\`\` ${text} \`\`` : `\`${text}\``;
}

function oneOf(values) {
  return values.map((v) => code(v)).join(", ");
}

function range(node) {
  const { minimum: min, maximum: max } = node;
  if (min !== undefined && max !== undefined) return `, ${min} to ${max}`;
  if (min !== undefined) return `, at least ${min}`;
  if (max !== undefined) return `, at most ${max}`;
  return "";
}

/** A short type for one schema node (already dereferenced; `ref` names the definition it came from). */
function typeOf(schema, node, ref) {
  if (ref && VALUE_TYPES[ref]) return VALUE_TYPES[ref];
  if (node.const !== undefined) return `always ${code(node.const)}`;
  if (node.enum) return `one of ${oneOf(node.enum)}`;
  switch (node.type) {
    case "string":
      return node.format === "uri" ? "URL" : "string";
    case "integer":
    case "number":
      return `${node.type}${range(node)}`;
    case "boolean":
      return "boolean";
    case "array": {
      const { node: item, ref: itemRef } = deref(schema, node.items ?? {});
      if (itemRef && VALUE_TYPES[itemRef]) return `list of ${VALUE_TYPES[itemRef]}s`;
      if (item.enum) return `list of ${oneOf(item.enum)}${node.uniqueItems ? " (no repeats)" : ""}`;
      if (item.type === "object") return "list of objects";
      return `list of ${item.type}s`;
    }
    case "object":
      if (!node.properties && node.additionalProperties && typeof node.additionalProperties === "object") {
        return node.additionalProperties.type === "string" ? "map of name to string" : "map of name to object";
      }
      return "object";
    default:
      if (Array.isArray(node.type)) return node.type.length > 1 ? `${node.type.slice(0, -1).join(", ")} or ${node.type.at(-1)}` : String(node.type[0]);
      return node.type ? String(node.type) : "any";
  }
}

function defaultOf(node) {
  if (node.default === undefined) return "";
  const d = node.default;
  if (d && typeof d === "object" && !Array.isArray(d) && Object.keys(d).length === 0) return "";
  return code(d);
}

/** Markdown-safe table cell text: no line breaks, no raw pipes, no HTML-looking `<tag>`. */
function cell(text) {
  return String(text).replace(/\s*\n\s*/g, " ").replace(/\|/g, "\\|").replace(/</g, "&lt;");
}

/** "A check ..." -> "a check ...", to continue a sentence. */
function continued(text) {
  return text.charAt(0).toLowerCase() + text.slice(1);
}

/**
 * Walks `node` at `path`, pushing one row per field: itself, then its properties, array items (`[]`)
 * and map values (`.<name>`). `required` says whether the parent requires this field.
 */
function walk(schema, path, raw, required, rows) {
  const { node, ref, definition } = deref(schema, raw);
  let description = node.description ?? "";
  const type = typeOf(schema, node, ref) + (required ? ", required" : "");
  let children = [];
  if (node.type === "object" && node.properties) {
    children = Object.entries(node.properties).map(([k, v]) => [`${path}.${k}`, v, (node.required ?? []).includes(k)]);
  } else if (node.type === "array" && node.items) {
    const { node: item } = deref(schema, node.items);
    if (item.type === "object") {
      if (item.description) description += ` Each item: ${continued(item.description)}`;
      children = Object.entries(item.properties ?? {}).map(([k, v]) => [`${path}[].${k}`, v, (item.required ?? []).includes(k)]);
    }
  } else if (node.type === "object" && typeof node.additionalProperties === "object") {
    const { node: value } = deref(schema, node.additionalProperties);
    if (value.description) description += ` Each value: ${continued(value.description)}`;
    children = Object.entries(value.properties ?? {}).map(([k, v]) => [`${path}.<name>.${k}`, v, (value.required ?? []).includes(k)]);
  }
  // A $ref'd object with a description of its own at the use site: add the definition's, which says more.
  if (ref && !VALUE_TYPES[ref] && raw.description && definition?.description && definition.description !== raw.description) {
    description += ` ${definition.description}`;
  }
  rows.push({ path, type, default: defaultOf(node), description: description.trim() });
  for (const [p, v, r] of children) walk(schema, p, v, r, rows);
}

/** The reference as Markdown: one table per top-level key, then the value types. */
export function generate(schema) {
  const out = [];
  const topRequired = schema.required ?? [];
  for (const [key, raw] of Object.entries(schema.properties)) {
    const rows = [];
    walk(schema, key, raw, topRequired.includes(key), rows);
    out.push(`### \`${key}\``, "", "| field | type | default | description |", "|---|---|---|---|");
    for (const r of rows) out.push(`| \`${r.path}\` | ${cell(r.type)} | ${cell(r.default)} | ${cell(r.description)} |`);
    out.push("");
  }
  out.push("### Value types", "", "| type | format |", "|---|---|");
  for (const [name, label] of Object.entries(VALUE_TYPES)) {
    const def = schema.definitions[name];
    out.push(`| ${label} | ${cell(def.description)} |`);
  }
  return out.join("\n") + "\n";
}

function section(text, file) {
  const b = text.indexOf(BEGIN);
  const e = text.indexOf(END);
  if (b < 0 || e < 0 || e < b) throw new Error(`${file} has no ${BEGIN} ... ${END} section`);
  return { before: text.slice(0, b + BEGIN.length), inside: text.slice(b + BEGIN.length, e), after: text.slice(e) };
}

async function mainCli(argv) {
  const schema = JSON.parse(await readFile(SCHEMA, "utf8"));
  const body = `\n${generate(schema)}`;
  const mode = argv[0];
  if (mode === undefined) {
    process.stdout.write(body.slice(1));
    return 0;
  }
  if ((mode !== "--check" && mode !== "--write") || !argv[1] || argv.length > 2) {
    process.stderr.write("usage: node scripts/config-reference.mjs [--check FILE | --write FILE]\n");
    return 2;
  }
  const file = argv[1];
  let parts;
  try {
    parts = section(await readFile(file, "utf8"), file);
  } catch (err) {
    process.stderr.write(`${err.message}\n`);
    return 2;
  }
  if (mode === "--check") {
    if (parts.inside === body) return 0;
    process.stderr.write(`${file}: the config reference is out of date with schema/cascade-sync-config.schema.json; run \`node scripts/config-reference.mjs --write ${file}\`\n`);
    return 1;
  }
  if (parts.inside !== body) await writeFile(file, parts.before + body + parts.after);
  return 0;
}

process.exitCode = await mainCli(process.argv.slice(2));
