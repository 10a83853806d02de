#!/usr/bin/env node
// The only place that touches the process: signals, exit codes. Everything else is main().
import { fileURLToPath } from "node:url";
import { setFlagsFromString } from "node:v8";

// A long-running controller favours memory over speed: V8 then grows its heap less eagerly (npm
// run bench, 30,000-file burst at 100k files: peak RSS about 430 MB without it, 317 MB with it).
setFlagsFromString("--optimize-for-size");

// git runs the encryption filter in every command that reads or writes a security.encrypt path:
// it loads only the filter and the config, not the whole controller (about 0.6 s to start, not 2.7 s).
if (process.argv[2] === "filter-process" || process.argv[2] === "filter-textconv") {
  const { filterMain } = await import("../dist/src/security/filter-main.js");
  const { argv, stdin, stdout, stderr, env } = process;
  process.exit(await filterMain({ argv: argv.slice(2), cwd: process.cwd(), env, stdin, stdout, stderr }));
}

let mod;
try {
  mod = await import("../dist/src/cli/main.js");
} catch (err) {
  if (err && err.code === "ERR_MODULE_NOT_FOUND") {
    process.stderr.write("cascade-sync is not built: run `npm ci` (or `npm run build`) in the cascade-sync folder\n");
    process.exit(2);
  }
  throw err;
}
const controller = new AbortController();
let stopping = false;
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    if (stopping) process.exit(130);
    stopping = true;
    controller.abort();
  });
}
const code = await mod.main({
  argv: process.argv.slice(2),
  cwd: process.cwd(),
  env: process.env,
  stdout: process.stdout,
  stderr: process.stderr,
  clock: { now: () => Date.now() },
  signal: controller.signal,
  binPath: fileURLToPath(import.meta.url),
  onNudge: (handler) => process.on("SIGUSR1", handler),
});
process.exit(code);
