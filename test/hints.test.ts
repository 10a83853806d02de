import { describe, expect, it } from 'vitest';
import { withoutPathsInGoneFolders } from '../src/hints.js';

// What a batch still names: a path below a hinted folder that is gone is covered by the folder.
const cases: { name: string; hints: string[]; gone: string[]; expected: string[] }[] = [
  { name: 'a deleted folder covers its files and sub-folders', hints: ['big/a/1', 'big/a/2', 'big/a', 'big/b/3', 'big', 'keep.txt'], gone: ['big', 'big/a', 'big/b'], expected: ['big', 'keep.txt'] },
  { name: 'a folder that still exists keeps the paths below it (they bound a pass)', hints: ['new/1', 'new/2', 'new'], gone: [], expected: ['new/1', 'new/2', 'new'] },
  { name: 'a deleted sub-folder under a folder that exists', hints: ['d/x/1', 'd/x', 'd/y', 'd'], gone: ['d/x'], expected: ['d/x', 'd/y', 'd'] },
  { name: 'a gone file whose name prefixes another path is no folder of it', hints: ['ab', 'ab.txt', 'abc/1'], gone: ['ab'], expected: ['ab', 'ab.txt', 'abc/1'] },
  { name: 'paths without a hinted folder above are kept, in order', hints: ['b', 'a/1', 'c'], gone: ['a'], expected: ['b', 'a/1', 'c'] },
];

describe('withoutPathsInGoneFolders', () => {
  it.each(cases)('$name', ({ hints, gone, expected }) => {
    const asked: string[] = [];
    const out = withoutPathsInGoneFolders(new Set(hints), (f) => (asked.push(f), gone.includes(f)));
    expect([...out]).toEqual(expected);
    expect(new Set(asked).size).toBe(asked.length);
  });
});
