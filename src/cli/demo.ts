import { join, resolve } from "node:path";
import { init } from "../init.js";
import { Repo } from "../git/repo.js";
import { packageRoot } from "../package-root.js";
import { Controller } from "../controller.js";
import { Logger } from "../log.js";
import { Redactor } from "../redact.js";
import { takeControllerLock } from "../runtime.js";
import { CONFIG_FILE } from "../config/load.js";
import type { MainArgs } from "./main.js";
import { clearEarlierDemo, demoLayout, makeApproverKey, writeDemoSandbox, type DemoLayout } from "./demo-sandbox.js";
import { approveLine, runTour, shownPath } from "./demo-tour.js";
import { followPipeline } from "./demo-follow.js";

/** How long the demo waits before each of its own actions (an edit, an approval), so a person can follow. */
const PAUSE_MS = 8_000;

/**
 * `npm start`: the whole cascade on an embedded demo that touches nothing outside its folder (the
 * project's demo/, or $CASCADE_DEMO_DIR): a sandbox holding a tiny site and a realistic pipeline
 * config, a local bare remote, deploy folders for staging and production, an approval key made
 * with ssh-keygen, the log and the encryption key. Each start begins afresh (what an earlier demo
 * left there is replaced). The controller runs in this process with its status page on a free port
 * of 127.0.0.1; a narrated tour drives one good change to production and one broken change into a
 * rollback, each line read from the controller's status and history; then it keeps running for the
 * person until Ctrl-C (exit 0, the pending batch committed first). Exit 2 when the demo already runs.
 */
export async function runDemo(args: MainArgs, out: (s: string) => void): Promise<number> {
  const custom = args.env.CASCADE_DEMO_DIR;
  const layout = demoLayout(custom ? resolve(args.cwd, custom) : join(packageRoot(), "demo"));
  const shown = (p: string) => shownPath(args.cwd, p);
  const say = (line: string) => out(`demo: ${line}`);
  const replaced = await clearEarlierDemo(layout, !custom);
  const key = await makeApproverKey(layout.approverKey);
  await writeDemoSandbox(layout, key.signersLine);
  // The gates' clean exports go to os.tmpdir(), which reads the process's own environment: keep them in the demo folder.
  process.env.TMPDIR = layout.tmp;
  const env = { ...args.env, TMPDIR: layout.tmp };
  await init({ dir: layout.sandbox, cwd: layout.base, env, now: () => args.clock.now() });

  const redactor = new Redactor();
  // The terminal gets the narration and the controller's errors; every log line goes to demo/cascade-sync.log.
  const terminal = { write: (s: string) => (/^\S+ error /.test(s) ? args.stdout.write(s) : true) };
  const log = new Logger({ terminal }, "info", redactor, args.clock);
  const controller = await Controller.open({ configFile: join(layout.sandbox, CONFIG_FILE), env, clock: args.clock, log, redactor });
  log.reconfigure(controller.current.logging.file, controller.current.logging.level);
  const repo = await Repo.open(layout.sandbox);
  const lock = await takeControllerLock(repo.gitdir, new Date(args.clock.now()));
  try {
    let narration: Promise<void> = Promise.resolve();
    const intro = `made ${shown(layout.sandbox)} (a tiny site, its test and smoke scripts, and a pipeline config committed to develop, staging and main), its remote ${shown(layout.remote)}, and an approval key ${shown(layout.approverKey)} (${key.madeWith}); log: ${shown(layout.log)}${replaced ? `; the earlier demo in ${shown(layout.base)} was replaced (each start begins afresh)` : ""}`;
    const running = controller.start(args.signal, () => {
      narration = narrate(args, layout, repo, env, intro, say, shown);
    });
    await running;
    await narration;
    say("stopped");
    return 0;
  } finally {
    await lock.release();
  }
}

/** The tour, then the pipeline followed line by line until the demo stops. */
async function narrate(args: MainArgs, layout: DemoLayout, repo: Repo, env: NodeJS.ProcessEnv, intro: string, say: (l: string) => void, shown: (p: string) => string): Promise<void> {
  const bin = `node ${shown(join(packageRoot(), "bin", "cascade-sync.js"))}`;
  try {
    await runTour({
      layout, repo, say, shown, intro, signal: args.signal, now: () => args.clock.now(), pauseMs: PAUSE_MS,
      bin, approve: (environment, commit) => approveWithDemoKey(args, layout, env, shown, environment, commit),
    });
    await followPipeline({ gitdir: repo.gitdir, say, signal: args.signal, approveLine: (e, c) => approveLine({ shown, layout }, e, c, bin) });
  } catch (err) {
    say(`the narration stopped: ${(err as Error).message}`);
  }
}

/** Runs the real `cascade-sync approve` (in this process) with the demo's key; returns the command line. */
async function approveWithDemoKey(args: MainArgs, layout: DemoLayout, env: NodeJS.ProcessEnv, shown: (p: string) => string, environment: string, commit: string): Promise<string> {
  // Imported here: main.ts imports this module for the `demo` command.
  const { main } = await import("./main.js");
  const argv = ["approve", environment, commit, "--key", layout.approverKey, "--config", join(layout.sandbox, CONFIG_FILE), "--expires", "24h"];
  let text = "";
  const sink = { write: (s: string) => (text += s) };
  const code = await main({ ...args, argv, env, stdout: sink, stderr: sink });
  if (code !== 0) throw new Error(`cascade-sync approve exited with ${code}: ${text.trim()}`);
  return approveLine({ shown, layout }, environment, commit);
}
