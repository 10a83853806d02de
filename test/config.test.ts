import { test } from 'vitest';
import { readFileSync } from 'node:fs';
import { parseDocument } from 'yaml';
import { parseConfig, formatProblem } from '../src/config/load.js';
const env = { HOME: '/home/u' };
function jsDepth(v: unknown, d = 0): number { if (v && typeof v === 'object') { let m = d; for (const c of Object.values(v)) m = Math.max(m, jsDepth(c, d + 1)); return m; } return d; }
const design = readFileSync('/work/shared/DESIGN.md', 'utf8').split('```yaml\n')[1]!.split('```')[0]!;
let block = 'version: 1\nsandbox: {}\nx:\n'; for (let i = 0; i < 2000; i++) block += ' '.repeat(i + 1) + 'a:\n';
const cases: Record<string, string> = {
  shipped: readFileSync('cascade-sync-config.yaml', 'utf8'),
  design,
  state: 'approvals:\n  - environment: production\n    signature: |\n      -----BEGIN\n        xx\n      -----END\n',
  deep2: 'version: 1\nsandbox: {}\nx: ' + '['.repeat(5000) + ']'.repeat(5000) + '\n',
  deep3: 'version: 1\nsandbox: {}\nx: ' + '['.repeat(1000000) + '\n',
  deep4: 'version: 1\nsandbox: {}\nx: ' + '{a: '.repeat(3000) + '1' + '}'.repeat(3000) + '\n',
  deep5: '- '.repeat(400000) + 'x\n',
  deep6: 'version: 1\nsandbox: {}\nx: ' + '['.repeat(30) + ']'.repeat(30) + '\n',
  deep7: 'version: 1\nsandbox: {}\nx: ' + '['.repeat(33) + ']'.repeat(33) + '\n',
  block,
  compact: '- - - a: 1\n      b:\n        - c\n- ? x\n  : y\n',
};
test('probe', () => {
  for (const [n, t] of Object.entries(cases)) {
    const t0 = Date.now();
    let r;
    try { r = parseConfig(t, '/cfg/cascade-sync-config.yaml', env); } catch (e) { console.log(n, 'THREW', String(e)); continue; }
    const real = t.length < 10000 ? jsDepth(parseDocument(t).toJS()) : -1;
    console.log(n, Date.now() - t0, 'ms real depth', real, r.ok ? 'OK' : r.problems.slice(0, 3).map(formatProblem).join('\n'));
  }
});
