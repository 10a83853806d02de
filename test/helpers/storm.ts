import { lstat, readdir, readFile, readlink } from 'node:fs/promises';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

/**
 * Pieces of the fault storm (test/storm.test.ts, issue 15): a seeded PRNG, the ledger of intended
 * final contents, and a few process-table helpers. Kept apart from the test so that a reproduction
 * of one storm finding can reuse them.
 */

/** A seeded PRNG (mulberry32): the same seed gives the same sequence of numbers in [0, 1). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Helpers over one PRNG stream. */
export interface Dice {
  /** A float in [0, 1). */
  next(): number;
  /** An integer in [lo, hi] (both included). */
  int(lo: number, hi: number): number;
  /** One element of a non-empty list. */
  pick<T>(list: readonly T[]): T;
  /** True with probability p. */
  chance(p: number): boolean;
  /** A key chosen by weight from `{ key: weight }`. */
  weighted<K extends string>(weights: Record<K, number>): K;
}

/** Wraps a PRNG stream into {@link Dice}. */
export function dice(seed: number): Dice {
  const next = prng(seed);
  const int = (lo: number, hi: number): number => lo + Math.floor(next() * (hi - lo + 1));
  return {
    next,
    int,
    pick: <T>(list: readonly T[]): T => list[int(0, list.length - 1)]!,
    chance: (p: number) => next() < p,
    weighted<K extends string>(weights: Record<K, number>): K {
      const entries = Object.entries(weights) as [K, number][];
      const total = entries.reduce((s, [, w]) => s + w, 0);
      let r = next() * total;
      for (const [k, w] of entries) {
        r -= w;
        if (r < 0) return k;
      }
      return entries[entries.length - 1]![0];
    },
  };
}

/** What the ledger says one path must be at the end: a regular file (content, exec bit) or a symlink. */
export type LedgerEntry = { type: 'file'; data: Buffer; exec: boolean } | { type: 'link'; target: string };

/** How one path on disk differs from the ledger (`expected`/`actual` described briefly), for a failure message. */
export interface LedgerDiff {
  path: string;
  expected: string;
  actual: string;
}

function describeEntry(e: LedgerEntry | undefined): string {
  if (e === undefined) return 'absent';
  if (e.type === 'link') return `symlink -> ${JSON.stringify(e.target)}`;
  const text = e.data.toString('utf8');
  const shown = text.length > 60 ? `${JSON.stringify(text.slice(0, 60))}... (${e.data.length} bytes)` : JSON.stringify(text);
  return `file${e.exec ? ' +x' : ''} ${shown}`;
}

/**
 * Everything under `root/prefix` on disk (files and symlinks; folders only through their contents),
 * as ledger entries keyed by path relative to `root` with `/` separators. Symlinks are never followed.
 */
export async function readDiskTree(root: string, prefix: string): Promise<Map<string, LedgerEntry>> {
  const out = new Map<string, LedgerEntry>();
  const walk = async (rel: string): Promise<void> => {
    let names: string[];
    try {
      names = await readdir(path.join(root, rel));
    } catch {
      return;
    }
    for (const name of names) {
      const p = `${rel}/${name}`;
      const abs = path.join(root, p);
      const st = await lstat(abs).catch(() => undefined);
      if (!st) continue;
      if (st.isSymbolicLink()) out.set(p, { type: 'link', target: await readlink(abs) });
      else if (st.isDirectory()) await walk(p);
      else out.set(p, { type: 'file', data: await readFile(abs), exec: (st.mode & 0o111) !== 0 });
    }
  };
  await walk(prefix);
  return out;
}

/** The paths where `disk` and `ledger` differ (missing, extra, other content, exec bit or link target), sorted. */
export function diffLedger(ledger: ReadonlyMap<string, LedgerEntry>, disk: ReadonlyMap<string, LedgerEntry>): LedgerDiff[] {
  const out: LedgerDiff[] = [];
  for (const p of new Set([...ledger.keys(), ...disk.keys()])) {
    const want = ledger.get(p);
    const got = disk.get(p);
    const same =
      want !== undefined &&
      got !== undefined &&
      (want.type === 'link' ? got.type === 'link' && got.target === want.target : got.type === 'file' && got.exec === want.exec && got.data.equals(want.data));
    if (!same) out.push({ path: p, expected: describeEntry(want), actual: describeEntry(got) });
  }
  return out.sort((a, b) => (a.path < b.path ? -1 : 1));
}

/**
 * Pids of every live descendant of `pid` (children, grandchildren, ...), from /proc. The controller
 * starts git in process groups of its own, so killing its group would spare them; a kill that
 * stands for a power cut or a cgroup kill takes these too. Empty where /proc cannot be read.
 */
export function descendantsOf(pid: number): number[] {
  let names: string[];
  try {
    names = readdirSync('/proc');
  } catch {
    return [];
  }
  const parent = new Map<number, number>();
  for (const n of names) {
    if (!/^\d+$/.test(n)) continue;
    try {
      const stat = readFileSync(`/proc/${n}/stat`, 'utf8');
      // The command name (field 2) may hold spaces and parentheses: fields resume after its last ')'.
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      parent.set(Number(n), Number(rest[1]));
    } catch {
      // gone meanwhile
    }
  }
  const out: number[] = [];
  const frontier = [pid];
  while (frontier.length > 0) {
    const p = frontier.pop()!;
    for (const [child, ppid] of parent) {
      if (ppid === p && !out.includes(child)) {
        out.push(child);
        frontier.push(child);
      }
    }
  }
  return out;
}
