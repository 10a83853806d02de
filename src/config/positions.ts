import { isMap, isScalar, LineCounter, type Document } from "yaml";

/** Maps a value path in a parsed YAML document to a 1-based line and column. */
export class SourcePositions {
  constructor(
    private readonly doc: Document | undefined,
    private readonly lines: LineCounter,
  ) {}

  /** Position of the value at `path`, or of its nearest existing ancestor; `key` points at a map key instead. */
  at(path: (string | number)[], key?: string): { line: number; col: number } {
    if (!this.doc) return { line: 1, col: 1 };
    if (key !== undefined) {
      const parent = path.length ? this.doc.getIn(path, true) : this.doc.contents;
      if (isMap(parent)) {
        const pair = parent.items.find((p) => isScalar(p.key) && String(p.key.value) === key);
        const range = (pair?.key as { range?: [number, number, number] } | undefined)?.range;
        if (range) return this.pos(range[0]);
      }
    }
    for (let n = path.length; n >= 0; n--) {
      const node = (n === 0 ? this.doc.contents : this.doc.getIn(path.slice(0, n), true)) as
        | { range?: [number, number, number] }
        | null
        | undefined;
      if (node?.range) {
        // A missing child is reported at its parent's key when there is one, which is where a person looks.
        if (n < path.length && n > 0) {
          const parentKey = path[n - 1];
          const grand = n - 1 === 0 ? this.doc.contents : this.doc.getIn(path.slice(0, n - 1), true);
          if (isMap(grand)) {
            const pair = grand.items.find((p) => isScalar(p.key) && String(p.key.value) === String(parentKey));
            const r = (pair?.key as { range?: [number, number, number] } | undefined)?.range;
            if (r) return this.pos(r[0]);
          }
        }
        return this.pos(node.range[0]);
      }
    }
    return { line: 1, col: 1 };
  }

  /** Position of a character offset in the source. */
  pos(offset: number): { line: number; col: number } {
    const p = this.lines.linePos(offset);
    return { line: p.line, col: p.col };
  }
}

/** Formats a path array as `a.b[0].c`. */
export function formatPath(path: (string | number)[]): string {
  return path.reduce<string>((acc, p) => (typeof p === "number" ? `${acc}[${p}]` : acc ? `${acc}.${p}` : p), "");
}
