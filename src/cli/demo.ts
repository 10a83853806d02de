import { mkdir, stat, writeFile } from "node:fs/promises";
import { createKeyFile } from "../security/keyfile.js";
import { join } from "node:path";
import { init } from "../init.js";
import { Repo } from "../git/repo.js";
import { packageRoot } from "../package-root.js";
import { Controller } from "../controller.js";
import { Logger } from "../log.js";
import { Redactor } from "../redact.js";
import { takeControllerLock } from "../runtime.js";
import { CONFIG_FILE } from "../config/load.js";
import type { MainArgs } from "./main.js";

/**
 * `npm start`: an embedded demo that touches nothing outside the project folder. It creates
 * demo/sandbox and a local bare remote demo/remote.git (or under $CASCADE_DEMO_DIR), runs the
 * controller on them, makes one edit and shows the commit arriving in the remote, then keeps
 * running until Ctrl-C so that you can edit demo/sandbox yourself.
 */
export async function runDemo(args: MainArgs, out: (s: string) => void): Promise<number> {
  const base = args.env.CASCADE_DEMO_DIR ?? join(packageRoot(), "demo");
  const sandbox = join(base, "sandbox");
  const remote = join(base, "remote.git");
  await mkdir(sandbox, { recursive: true });
  // The demo's encryption key lives in the demo folder (outside its sandbox), not in ~/.config.
  const keyFile = join(base, "demo.key");
  if (!(await stat(keyFile).catch(() => undefined))) await createKeyFile(keyFile);
  const report = await init({
    dir: sandbox,
    remote,
    cwd: base,
    env: args.env,
    now: () => args.clock.now(),
    // Keep the demo's log inside the project folder, its commits quick, and the desktop quiet.
    configOverrides: (text) => text
      .replace(/^  debounce: 3s/m, "  debounce: 1s")
      .replace(/^  file: ~\/\.headyme\/logs\/cascade-sync\.log/m, `  file: ${JSON.stringify(join(base, "cascade-sync.log"))}`)
      .replace(/^  desktop: true/m, "  desktop: false")
      .replace(/^  # key: \$\{CASCADE_ENCRYPTION_KEY\}$/m, `  key: ${JSON.stringify(keyFile)}`),
  });
  for (const l of report.lines) out(`demo: ${l}`);
  const redactor = new Redactor();
  const log = new Logger({ terminal: args.stdout }, "info", redactor, args.clock);
  const controller = await Controller.open({ configFile: join(sandbox, CONFIG_FILE), env: args.env, clock: args.clock, log, redactor });
  log.reconfigure(controller.current.logging.file, controller.current.logging.level);
  const repo = await Repo.open(sandbox);
  const lock = await takeControllerLock(repo.gitdir, new Date(args.clock.now()));
  const bare = Repo.bare(remote);
  try {
    const running = controller.start(args.signal, () => {
      void (async () => {
        const file = join(sandbox, "hello.txt");
        const stamp = new Date(args.clock.now()).toISOString();
        await writeFile(file, `hello from the cascade-sync demo, ${stamp}\n`);
        out(`demo: wrote ${file}; the controller commits it after the debounce and pushes it to ${remote}`);
        const deadline = args.clock.now() + 60_000;
        while (!args.signal.aborted && args.clock.now() < deadline) {
          const tip = await bare.branchHead("develop");
          if (tip) {
            const blobs = await bare.flattenTree(await bare.commitTree(tip));
            const hello = blobs.get("hello.txt");
            if (hello && (await bare.readBlob(hello.oid)).toString().includes(stamp)) {
              const c = await bare.readCommit(tip);
              out(`demo: the change is in the remote: ${remote} develop ${tip.slice(0, 7)} "${c.message.split("\n")[0]}"`);
              out(`demo: now edit files in ${sandbox} and watch them arrive with: git --git-dir ${remote} log --oneline develop`);
              out("demo: Ctrl-C stops (the pending batch is committed and pushed first)");
              return;
            }
          }
          await new Promise((r) => setTimeout(r, 200));
        }
        if (!args.signal.aborted) out("demo: the change did not reach the remote within 60s; see `cascade-sync status` in demo/sandbox");
      })().catch((e: Error) => out(`demo: ${e.message}`));
    });
    await running;
    return 0;
  } finally {
    await lock.release();
  }
}
