import * as fs from "node:fs";
import { acquireLock } from "./lockfile.js";

/**
 * The filesystem handed to isomorphic-git. It is node's, except that every whole-file write goes
 * through git's lock-file protocol (`<file>.lock`, then rename): isomorphic-git writes refs (e.g.
 * refs/remotes/<name>/<branch> on every fetch) and .git/config with a plain truncate-and-write,
 * and a native git reading at that moment would see an empty or half-written file.
 */
export const lockedFs = {
  promises: {
    readFile: fs.promises.readFile,
    readdir: fs.promises.readdir,
    mkdir: fs.promises.mkdir,
    rmdir: fs.promises.rmdir,
    rm: fs.promises.rm,
    unlink: fs.promises.unlink,
    stat: fs.promises.stat,
    lstat: fs.promises.lstat,
    readlink: fs.promises.readlink,
    symlink: fs.promises.symlink,
    chmod: fs.promises.chmod,
    async writeFile(file: string, data: string | Uint8Array, options?: { encoding?: BufferEncoding; mode?: number } | BufferEncoding): Promise<void> {
      const encoding = typeof options === "string" ? options : options?.encoding;
      const lock = await acquireLock(file, { timeoutMs: 2000 });
      try {
        await lock.write(typeof data === "string" ? Buffer.from(data, encoding ?? "utf8") : Buffer.from(data));
        await lock.commit();
      } finally {
        if (!lock.released) await lock.rollback();
      }
    },
  },
};
