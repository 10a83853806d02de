/**
 * The long-running filter process git starts for `filter.cascade-sync.process` (git's
 * Documentation/gitattributes.txt, "Long Running Filter Process"; git-lfs's `filter-process` is the
 * model): one process per git command, speaking pkt-line on stdin/stdout, asked to `clean` (working
 * file -> blob: encrypt) and `smudge` (blob -> working file: decrypt) each file whose attributes say
 * `filter=cascade-sync`. Every native git command in the sandbox (status, add, diff, checkout, stash,
 * clone with the filter registered) then stores ciphertext and shows plaintext.
 */
import type { EncryptionKey } from "./encrypt.js";
import { cleanContent, smudgeContent } from "./filter-content.js";
import { PktLineReader, contentPackets, lineOf, textPackets } from "./pkt-line.js";

/** The streams and the key a filter process works with. */
export interface FilterProcessOptions {
  input: NodeJS.ReadableStream;
  output: NodeJS.WritableStream;
  /** A line for a person (git passes the filter's stderr through to the terminal). */
  warn: (line: string) => void;
  /** This sandbox's key, or undefined (then plaintext is refused by clean, and smudge writes ciphertext). */
  key: EncryptionKey | undefined;
}

/** The capabilities this filter offers (git 2.39 also offers `delay`, which it does not need). */
const CAPABILITIES = ["clean", "smudge"] as const;

/**
 * Serves git until it closes the pipe. Resolves 0 when git ended the session cleanly; rejects for a
 * protocol error (git then reports the filter as failed and, since the filter is required, fails
 * the command: nothing is stored unfiltered). A file that cannot be cleaned (no key) is answered
 * `status=error` and the session goes on with the next file.
 */
export async function serveFilterProcess(opts: FilterProcessOptions): Promise<number> {
  const reader = new PktLineReader(opts.input);
  const write = (buf: Buffer) => new Promise<void>((resolve, reject) => opts.output.write(buf, (err) => (err ? reject(err) : resolve())));
  const hello = (await reader.untilFlush())?.map(lineOf) ?? [];
  if (hello[0] !== "git-filter-client" || !hello.includes("version=2")) throw new Error(`not a git filter client: ${JSON.stringify(hello)}`);
  await write(textPackets(["git-filter-server", "version=2"]));
  const offered = new Set(((await reader.untilFlush()) ?? []).map(lineOf));
  await write(textPackets(CAPABILITIES.filter((c) => offered.has(`capability=${c}`)).map((c) => `capability=${c}`)));
  const warned = new Set<string>();
  for (;;) {
    const header = await reader.untilFlush();
    if (header === null) return 0;
    const fields = new Map<string, string>();
    for (const line of header.map(lineOf)) {
      const eq = line.indexOf("=");
      if (eq > 0) fields.set(line.slice(0, eq), line.slice(eq + 1));
    }
    const content = Buffer.concat((await reader.untilFlush()) ?? []);
    const command = fields.get("command");
    const path = fields.get("pathname") ?? "(unnamed)";
    if (command === "clean") {
      const r = cleanContent(opts.key, path, content);
      if (r.ok) await write(Buffer.concat([textPackets(["status=success"]), contentPackets(r.blob), textPackets([])]));
      else {
        opts.warn(`cascade-sync: ${r.error.message}; ${r.error.hint ?? ""}`);
        await write(textPackets(["status=error"]));
      }
    } else if (command === "smudge") {
      const r = smudgeContent(opts.key, path, content);
      if (r.problem && !warned.has(path)) {
        warned.add(path);
        opts.warn(`cascade-sync: ${r.problem.message}; the file is written as its ciphertext. ${r.problem.hint ?? ""}`);
      }
      await write(Buffer.concat([textPackets(["status=success"]), contentPackets(r.content), textPackets([])]));
    } else {
      await write(textPackets(["status=error"]));
    }
  }
}
