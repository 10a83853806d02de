/** Parsed command line: the command, its positional arguments and its flags. */
export interface ParsedArgs {
  command: string | undefined;
  positionals: string[];
  flags: Record<string, string | boolean>;
}

/** Flags that take a value (`--config PATH`); every other flag is a switch. */
const VALUE_FLAGS = new Set(["config", "remote", "key", "expires", "signer", "since", "at", "limit", "reason"]);

/** Parses `argv` (without node and script). Throws an Error with a usage hint on a bad flag. */
export function parseArgs(argv: string[]): ParsedArgs {
  const positionals: string[] = [];
  const flags: Record<string, string | boolean> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--") {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith("--")) {
      const [name, inline] = a.slice(2).split("=", 2) as [string, string | undefined];
      if (VALUE_FLAGS.has(name)) {
        const value = inline ?? argv[++i];
        if (value === undefined) throw new Error(`--${name} needs a value`);
        flags[name] = value;
      } else flags[name] = true;
    } else if (a === "-h") flags.help = true;
    else positionals.push(a);
  }
  return { command: positionals.shift(), positionals, flags };
}
