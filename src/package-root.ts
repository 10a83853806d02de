import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

let cached: string | undefined;

/** The cascade-sync package's folder (works from src/ under vitest and from dist/ when built). */
export function packageRoot(): string {
  if (cached) return cached;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, "package.json");
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, "utf8")) as { name?: string }).name === "cascade-sync") return (cached = dir);
    const up = dirname(dir);
    if (up === dir) throw new Error("cannot find the cascade-sync package folder");
    dir = up;
  }
}
