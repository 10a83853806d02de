import { test } from 'vitest';
import { readFileSync } from 'node:fs';
import { parseDocument } from 'yaml';
import { nestingEstimate } from '../src/config/load.js';
function jsDepth(v: unknown, d = 0): number { if (v && typeof v === 'object') { let m = d; for (const c of Object.values(v)) m = Math.max(m, jsDepth(c, d + 1)); return m; } return d; }
const design = readFileSync('/work/shared/DESIGN.md', 'utf8').split('```yaml\n')[1]!.split('```')[0]!;
let block = 'x:\n'; for (let i = 0; i < 40; i++) block += ' '.repeat(i + 1) + 'a:\n';
let block2 = 'x:\n'; for (let i = 0; i < 40; i++) block2 += ' '.repeat(2*i + 2) + '- a: |\n' + ' '.repeat(2*i+6) + 'text\n';
const cases: Record<string, string> = {
  shipped: readFileSync('cascade-sync-config.yaml', 'utf8'),
  design, block, block2,
  state: 'approvals:\n  - environment: production\n    signature: |\n      -----BEGIN\n        xx\n      -----END\n',
  compact: '- - - a: 1\n      b:\n        - c\n- ? x\n  : y\n',
  flowml: 'a: [1,\n  [2, {b: [3]}],\n 4]\nc: d\n',
  anchors: 'a: &x\n  b: &y\n    c: 1\nd: *x\ne: !!map\n  f: 1\n',
  quoted: 'a: "x\n  y"\nb:\n  c: \'q\n    r\'\n',
  docs: '---\na:\n  b: 1\n...\n---\nc: 1\n',
};
test('probe', () => {
  for (const [n, t] of Object.entries(cases)) {
    console.log(n, 'estimate', nestingEstimate(t, 1000), 'real', jsDepth(parseDocument(t).toJS()));
  }
});
