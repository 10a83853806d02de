#!/usr/bin/env node
// Generates src/generated/*.ts from the JSON Schemas in schema/, the single source of truth: the
// types, and the config's validator as code.
//   node scripts/gen-types.mjs          write the files
//   node scripts/gen-types.mjs --check  change nothing; exit 1 when a committed file is stale
// --schema-dir DIR and --out-dir DIR read the schemas from / compare or write the types in other
// folders than schema/ and src/generated/ (tests use them to prove the check fails on a stale copy).
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { compileFromFile } from "json-schema-to-typescript";
import { Ajv } from "ajv";
import addFormatsModule from "ajv-formats";
import standaloneModule from "ajv/dist/standalone/index.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

/** The value after `name` on the command line, resolved against the current directory. */
function dirOption(name, fallback) {
  const i = process.argv.indexOf(name);
  if (i < 0) return fallback;
  const value = process.argv[i + 1];
  if (!value || value.startsWith("--")) {
    console.error(`${name} needs a directory`);
    process.exit(2);
  }
  return resolve(value);
}

const schemaDir = dirOption("--schema-dir", join(root, "schema"));
const outDir = dirOption("--out-dir", join(root, "src", "generated"));

const targets = [
  { schema: "cascade-sync-config.schema.json", output: "config.ts" },
  { schema: "cascade-sync-state.schema.json", output: "state.ts" },
];

// Pinned formatting, so the output depends only on the schema and the installed generator,
// never on a prettier config found near the checkout.
const style = {
  parser: "typescript",
  printWidth: 100,
  tabWidth: 2,
  useTabs: false,
  semi: true,
  singleQuote: false,
  trailingComma: "all",
  bracketSpacing: true,
  endOfLine: "lf",
};

/** Returns the TypeScript source generated for one schema file in schema/. */
async function generate(schemaFile) {
  return compileFromFile(join(schemaDir, schemaFile), {
    bannerComment: `/* DO NOT EDIT. Generated from schema/${schemaFile} by scripts/gen-types.mjs; run \`npm run gen\` after editing the schema. */`,
    additionalProperties: false,
    declareExternallyReferenced: true,
    unreachableDefinitions: false,
    format: true,
    style,
    cwd: schemaDir,
  });
}

async function readOrEmpty(path) {
  try {
    return await readFile(path, "utf8");
  } catch (error) {
    if (error.code === "ENOENT") return "";
    throw error;
  }
}

/**
 * The config schema's validator as code (ajv's standalone output): compiling the schema when a
 * process starts took 0.1 s of every `cascade-sync` command and of every encryption filter process
 * git runs. The options are the ones src/config/load.ts relies on (every error, defaults filled in,
 * the failing value and schema in each error).
 */
async function generateValidator(schemaFile) {
  const schema = JSON.parse(await readFile(join(schemaDir, schemaFile), "utf8"));
  const addFormats = addFormatsModule.default ?? addFormatsModule;
  const standaloneCode = standaloneModule.default ?? standaloneModule;
  const ajv = addFormats(new Ajv({ allErrors: true, useDefaults: true, strict: false, verbose: true, code: { source: true, esm: true } }));
  const code = standaloneCode(ajv, ajv.compile(schema));
  return [
    `/* DO NOT EDIT. Generated from schema/${schemaFile} by scripts/gen-types.mjs (ajv standalone code); run \`npm run gen\` after editing the schema. */`,
    "// @ts-nocheck",
    'import { createRequire } from "node:module";',
    "const require = createRequire(import.meta.url);",
    code.replace(/^"use strict";/, ""),
    "",
  ].join("\n");
}

const check = process.argv.includes("--check");
const stale = [];
const outputs = [
  ...targets.map(({ schema, output }) => ({ output, make: () => generate(schema) })),
  { output: "validate-config.ts", make: () => generateValidator("cascade-sync-config.schema.json") },
];
for (const { output, make } of outputs) {
  const source = await make();
  const path = join(outDir, output);
  const shown = relative(root, path).startsWith("..") ? path : relative(root, path);
  if (check) {
    if ((await readOrEmpty(path)) !== source) stale.push(shown);
  } else {
    await mkdir(dirname(path), { recursive: true });
    await writeFile(path, source);
    console.log(`wrote ${shown}`);
  }
}

if (check) {
  if (stale.length > 0) {
    console.error("generated types are stale: run `npm run gen` and commit src/generated/");
    for (const output of stale) console.error(`  stale: ${output}`);
    process.exitCode = 1;
  } else {
    console.log("generated types up to date");
  }
}
