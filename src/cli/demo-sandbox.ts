import { execFile } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { mkdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { parsePrivateKey, publicKeyLine } from "../approvals/sshsig.js";
import { CONFIG_FILE } from "../config/load.js";
import { stalled } from "../errors.js";
import { Repo } from "../git/repo.js";
import { runningController } from "../runtime.js";
import { createKeyFile } from "../security/keyfile.js";

/** Where everything of one demo lives: all of it under `base` (the project's demo/ folder by default). */
export interface DemoLayout {
  base: string;
  sandbox: string;
  remote: string;
  deploy: { staging: string; production: string };
  /** The approver's private key (its public half is `${approverKey}.pub`). */
  approverKey: string;
  encryptionKey: string;
  log: string;
  /** Temporary folders (gate exports) go here instead of the system's temp folder. */
  tmp: string;
}

/** The principal of the demo's approval key, as its allowed_signers line names it. */
export const DEMO_SIGNER = "demo-approver@cascade-sync.invalid";

/** The entries the demo creates under its base folder: removed (only these) to start afresh. */
const ENTRIES = ["sandbox", "remote.git", "deploy", "keys", "tmp", "cascade-sync.log", "demo.key"];
/** Marks a folder the demo made, so that a later start may replace what it holds. */
const MARKER = ".cascade-sync-demo";

/** The demo's paths under `base`. */
export function demoLayout(base: string): DemoLayout {
  return {
    base,
    sandbox: join(base, "sandbox"),
    remote: join(base, "remote.git"),
    deploy: { staging: join(base, "deploy", "staging"), production: join(base, "deploy", "production") },
    approverKey: join(base, "keys", "approver"),
    encryptionKey: join(base, "demo.key"),
    log: join(base, "cascade-sync.log"),
    tmp: join(base, "tmp"),
  };
}

/**
 * Makes room for a fresh demo: removes what an earlier demo left under `base` (only the entries the
 * demo itself creates, never `base` or anything else in it), and marks `base` as the demo's. Returns
 * true when there was something. Throws Stalled `DemoRunning` when a controller still runs on the
 * earlier demo's sandbox, and `DemoDirNotEmpty` when `base` holds such entries without being marked
 * as the demo's (unless `reserved`: the project's own demo/ folder, which older demos left unmarked).
 */
export async function clearEarlierDemo(layout: DemoLayout, reserved: boolean): Promise<boolean> {
  const repo = await Repo.open(layout.sandbox).catch(() => undefined);
  const running = repo ? await runningController(repo.gitdir) : undefined;
  if (running) {
    throw stalled("DemoRunning", `the demo already runs in ${layout.sandbox} (pid ${running.pid})`, `watch it there, or stop it with Ctrl-C in its terminal (or \`kill ${running.pid}\`) before starting it again`);
  }
  const present: string[] = [];
  for (const e of ENTRIES) if (await stat(join(layout.base, e)).catch(() => undefined)) present.push(e);
  const marked = !!(await stat(join(layout.base, MARKER)).catch(() => undefined));
  if (present.length && !marked && !reserved) {
    throw stalled("DemoDirNotEmpty", `${layout.base} already holds ${present.join(", ")}, which the demo did not make; it never replaces files it did not make`, "set CASCADE_DEMO_DIR to a new or empty folder");
  }
  for (const e of present) await rm(join(layout.base, e), { recursive: true, force: true });
  await mkdir(layout.base, { recursive: true });
  await writeFile(join(layout.base, MARKER), "made by `cascade-sync demo` (npm start); each start replaces what it made here\n");
  return present.length > 0;
}

/**
 * Makes the approver's ed25519 key under the demo folder with the real `ssh-keygen -N ""` (as a
 * person would for `approve --key`), or, where OpenSSH is not installed, with Node's crypto as a PEM
 * key (which `approve` reads too). Returns its allowed_signers line and how it was made.
 */
export async function makeApproverKey(file: string): Promise<{ signersLine: string; madeWith: string }> {
  await mkdir(join(file, ".."), { recursive: true, mode: 0o700 });
  try {
    await promisify(execFile)("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", DEMO_SIGNER, "-f", file], { env: { PATH: process.env.PATH ?? "/usr/bin:/bin" } });
    const pub = (await readFile(`${file}.pub`, "utf8")).trim().split(/\s+/).slice(0, 2).join(" ");
    return { signersLine: `${DEMO_SIGNER} ${pub}`, madeWith: "ssh-keygen -t ed25519" };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    const { privateKey } = generateKeyPairSync("ed25519", { privateKeyEncoding: { type: "pkcs8", format: "pem" }, publicKeyEncoding: { type: "spki", format: "pem" } });
    await writeFile(file, privateKey, { mode: 0o600 });
    const parsed = parsePrivateKey(privateKey);
    if (!parsed.ok) throw new Error(`the demo's own key cannot be read back: ${parsed.message}`);
    const line = publicKeyLine({ type: parsed.key.type, blob: parsed.key.publicBlob });
    await writeFile(`${file}.pub`, `${line} ${DEMO_SIGNER}\n`);
    return { signersLine: `${DEMO_SIGNER} ${line}`, madeWith: "Node's crypto (ssh-keygen is not installed)" };
  }
}

/**
 * The demo's config: a realistic pipeline, with every path relative to the sandbox (inside the demo
 * folder) so the committed file names nothing of this machine. It is written before `init`, which
 * commits it to every branch: each environment's policy (gates, approval signers, rollback) is then
 * the same whichever branch's copy is read, and nothing of it changes during the tour.
 */
export function demoConfig(signersLine: string): string {
  return `# The cascade-sync demo (npm start): a tiny site promoted develop -> staging -> production.
# Everything lives in the demo folder around this sandbox: the remote, the releases, the log and
# the keys. Edit any file here while \`npm start\` runs and watch it cascade.
version: 1

sandbox:
  branch: develop
  debounce: 1s          # quiet time after the last change before a batch is committed
  batchWindow: 5s

remotes:
  - name: origin
    url: ../remote.git  # a local bare repository in the demo folder

retry: { initial: 500ms, factor: 2, max: 10s }
# Health rounds every second so that the demo's releases prove themselves within seconds.
intervals: { fetch: 30s, health: 1s, rescan: 10m }

environments:
  staging:
    branch: staging
    from: develop
    promotion: auto
    gates:
      - { name: test, command: "sh scripts/test.sh", timeout: 1m }
    deploy: { directory: ../deploy/staging, keep: 5 }
    health:
      - { name: smoke, command: "sh scripts/smoke.sh staging", timeout: 10s }
    healthyAfter: 2
    failureThreshold: 2
    progressDeadline: 1m
  production:
    branch: main
    from: staging
    promotion: approval
    approvals:
      required: 1
      signers:
        - ${JSON.stringify(signersLine)}
    deploy: { directory: ../deploy/production, keep: 5 }
    health:
      - { name: smoke, command: "sh scripts/smoke.sh production", timeout: 10s }
    healthyAfter: 2
    failureThreshold: 2
    progressDeadline: 1m
    rollback: { automatic: true }

notifications: { desktop: false, webhooks: [] }
logging: { file: ../cascade-sync.log, level: info }
security:
  key: ../demo.key      # made by the demo, outside the sandbox
server:
  listen: 127.0.0.1:0   # the status page, on a free port of this machine only
`;
}

/** The demo site's files (besides the config), by path in the sandbox. */
export const SITE_FILES: Record<string, string> = {
  "index.html": page("Hello from the cascade-sync demo"),
  "site.conf": `# Settings of the demo site, one per line: ENVIRONMENT.KEY=VALUE
staging.url=https://staging.demo.invalid/
production.url=https://www.demo.invalid/
`,
  "scripts/test.sh": `#!/bin/sh
# The staging gate: runs in a clean export of each candidate commit before it may be promoted.
grep -q '<h1>' index.html || { echo "index.html has no <h1> heading"; exit 1; }
grep -Eqv '^(#|[a-z]+\\.[a-z]+=)' site.conf && { echo "site.conf has a line that is not ENVIRONMENT.KEY=VALUE"; exit 1; }
echo "test: the page has its heading and site.conf is well-formed"
`,
  "scripts/smoke.sh": `#!/bin/sh
# Health check of a live release (run in its folder): the page is there and the settings of the
# environment it runs in ($1) are complete.
test -s index.html || { echo "index.html is missing"; exit 1; }
grep -q "^$1\\.url=." site.conf || { echo "site.conf has no $1.url"; exit 1; }
echo "smoke: $1 serves $(grep "^$1\\.url=" site.conf | cut -d= -f2-)"
`,
};

/** The demo page with `heading`. */
export function page(heading: string, note = ""): string {
  return `<!doctype html>
<title>cascade-sync demo</title>
<h1>${heading}</h1>
${note ? `<p>${note}</p>\n` : ""}`;
}

/** The typo the tour commits: production's url setting misspelt, which only production's health check notices. */
export function breakSiteConf(text: string): string {
  return text.replace(/^production\.url=/m, "production.ulr=");
}

/**
 * Writes a fresh demo sandbox before `init`: the config (with the approver as production's signer),
 * the site and its scripts, and the encryption key file (under the demo folder, not ~/.config).
 */
export async function writeDemoSandbox(layout: DemoLayout, signersLine: string): Promise<void> {
  await mkdir(join(layout.sandbox, "scripts"), { recursive: true });
  await writeFile(join(layout.sandbox, CONFIG_FILE), demoConfig(signersLine));
  for (const [p, text] of Object.entries(SITE_FILES)) await writeFile(join(layout.sandbox, p), text, p.endsWith(".sh") ? { mode: 0o755 } : {});
  await createKeyFile(layout.encryptionKey);
  await mkdir(layout.tmp, { recursive: true, mode: 0o700 });
}
