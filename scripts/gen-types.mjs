#!/usr/bin/env node
// Generates src/generated/*.ts from the JSON Schemas in schema/, the single source of truth.
//   node scripts/gen-types.mjs          write the files
//   node scripts/gen-types.mjs --check  change nothing; exit 1 when a committed file is stale
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { compileFromFile } from "json-schema-to-typescript";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

const targets = [
  { schema: "cascade-sync-config.schema.json", output: "src/generated/config.ts" },
  { schema: "cascade-sync-state.schema.json", output: "src/generated/state.ts" },
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
  const schemaDir = join(root, "schema");
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

const check = process.argv.includes("--check");
const stale = [];
for (const { schema, output } of targets) {
  const source = await generate(schema);
  const path = join(root, output);
  if (check) {
    if ((await readOrEmpty(path)) !== source) stale.push(output);
  } else {
    await mkdir(dirname(path), { recursive: true });
    await writeFile(path, source);
    console.log(`wrote ${output}`);
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
