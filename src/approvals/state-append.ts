/**
 * Appending one signed entry to a list of the sandbox's state file (`approvals:` for `approve`,
 * `freezes:` for `freeze`/`lift`): under the file's lock, with the file re-read inside it, every other
 * node and comment kept. What an entry holds and how it is checked afterwards stay with its writer.
 */
import { readFile } from "node:fs/promises";
import { Document, isMap, isScalar, isSeq, Scalar, YAMLSeq, type Node, type YAMLMap } from "yaml";
import { stalled, type CascadeError } from "../errors.js";
import { withLock } from "./file-lock.js";
import { isEmptyNode, type StateDocument } from "./state.js";

/**
 * Replaces the state file with `append(existing)` while holding its `.lock`. `existing` is read inside
 * the lock ("" when there is no file yet), so an entry a concurrent writer added is never lost. Throws
 * the Transient LockBusyError when the lock stays held, Stalled `StateFileInvalid` when the file cannot
 * be read, or what `append` throws; in every such case the file is left as it was.
 */
export async function appendToStateFile(stateFile: string, append: (existing: string) => string): Promise<void> {
  await withLock(stateFile, async (lock) => {
    const existing = await readFile(stateFile, "utf8").catch((err: NodeJS.ErrnoException) => {
      if (err.code === "ENOENT") return "";
      throw stalled("StateFileInvalid", `cannot read ${stateFile}: ${err.message}`, undefined, err);
    });
    await lock.write(append(existing));
    await lock.commit();
  });
}

/** What {@link appendListItem} needs besides the document. */
export interface ListAppend {
  /** The top-level key of the list (`approvals`, `freezes`). */
  key: string;
  /** Builds the new item in the document (see {@link signedEntryNode}). */
  item: (doc: Document) => Node;
  /** The writer's StateFileInvalid error for `what` is wrong with the file. */
  invalid: (what: string) => CascadeError;
  /** What `invalid` is given when the document is not a mapping. */
  notMapping: string;
}

/**
 * Appends an item to the block list `o.key` of a parsed state document, creating the list when it is
 * missing or empty; a comment-only file keeps its comments (they stay the document's). Returns whether
 * the list's items stood in the key's column before (`approvals:\n- ...`), so a writer can keep that
 * style. Throws `o.invalid(o.notMapping)` when the document is not a mapping, and
 * `o.invalid("<key> is not a list")` when the key holds something else; the document is then unchanged
 * but for an empty one having become an empty mapping.
 */
export function appendListItem(parsed: StateDocument, o: ListAppend): { inKeyColumn: boolean } {
  const doc = parsed.doc;
  if (isEmptyNode(doc.contents as Node | null)) doc.contents = doc.createNode({}) as unknown as typeof doc.contents;
  const root = doc.contents;
  if (!isMap(root)) throw o.invalid(o.notMapping);
  let list = root.get(o.key, true) as Node | undefined;
  const inKeyColumn = startsInKeyColumn(root, o.key, list, parsed.pos);
  if (list === undefined || isEmptyNode(list)) {
    list = new YAMLSeq();
    root.set(o.key, list);
  }
  if (!isSeq(list)) throw o.invalid(`${o.key} is not a list`);
  // A flow list (`approvals: []`) would put the multi-line signature inside brackets: use block style.
  list.flow = false;
  list.items.push(o.item(doc));
  return { inKeyColumn };
}

/** Whether the list's items are written in its key's column (`approvals:\n- ...`). */
function startsInKeyColumn(root: YAMLMap, key: string, list: Node | undefined, pos: StateDocument["pos"]): boolean {
  const keyNode = root.items.find((p) => isScalar(p.key) && p.key.value === key)?.key as Node | undefined;
  if (!isSeq(list) || list.flow || !list.range || !keyNode?.range) return false;
  return pos(list.range[0]).col === pos(keyNode.range[0]).col;
}

/**
 * A signed entry as a block mapping of `keys` in that order (a key whose value is undefined is left
 * out), with the signature as a literal block, as DESIGN.md shows it.
 */
export function signedEntryNode<K extends string>(doc: Document, entry: Partial<Record<K, string>> & { signature: string }, keys: readonly K[]): Node {
  const map = doc.createNode(Object.fromEntries(keys.filter((k) => entry[k] !== undefined).map((k) => [k, entry[k]])));
  (map.get("signature", true) as Scalar).type = Scalar.BLOCK_LITERAL;
  return map;
}

/** A signed entry alone, as a one-item YAML list: what `approve` and `freeze` print. */
export function signedEntryYaml<K extends string>(entry: Partial<Record<K, string>> & { signature: string }, keys: readonly K[]): string {
  const doc = new Document(null, { schema: "failsafe" });
  const list = new YAMLSeq();
  list.items.push(signedEntryNode(doc, entry, keys));
  doc.contents = list as unknown as typeof doc.contents;
  return doc.toString({ lineWidth: 0 });
}
