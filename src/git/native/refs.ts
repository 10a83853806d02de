import { parseForEachRef, FOR_EACH_REF_FORMAT, type RefEntry } from "./parse.js";
import { runGit, type GitRepo } from "./run.js";

/** One ref move in a transaction. */
export interface RefMove {
  /** Full ref name, e.g. refs/heads/develop. */
  ref: string;
  /** The new object id; null deletes the ref. */
  newOid: string | null;
  /**
   * What the ref must hold for the move to happen: an oid, null for "must not exist yet", or undefined for
   * "whatever it holds" (only for a ref nobody else moves).
   */
  expectedOld?: string | null;
}

const HEX = /^([0-9a-f]{40}|[0-9a-f]{64})$/;

/** The all-zero object id of the same length as `oid`, which update-ref reads as "does not exist". */
function zeroOidLike(oid: string): string {
  return "0".repeat(oid.length);
}

/**
 * Builds the `git update-ref --stdin -z` script: `start`, one command per move, `prepare`, `commit`.
 * With -z every argument ends with NUL, and an empty old value means "not checked".
 */
export function updateRefScript(moves: readonly RefMove[]): string {
  let script = "start\0";
  for (const m of moves) {
    for (const oid of [m.newOid, m.expectedOld]) if (typeof oid === "string" && !HEX.test(oid)) throw new TypeError(`updateRefs: not an object id: ${oid}`);
    if (!m.ref.startsWith("refs/") && m.ref !== "HEAD") throw new TypeError(`updateRefs: not a full ref name: ${m.ref}`);
    if (/[\0\n]/.test(m.ref)) throw new TypeError(`updateRefs: bad ref name: ${JSON.stringify(m.ref)}`);
    if (m.newOid === null) {
      if (m.expectedOld === null) throw new TypeError(`updateRefs: deleting ${m.ref} while expecting it not to exist`);
      script += `delete ${m.ref}\0${m.expectedOld ?? ""}\0`;
    } else {
      const old = m.expectedOld === null ? zeroOidLike(m.newOid) : m.expectedOld ?? "";
      script += `update ${m.ref}\0${m.newOid}\0${old}\0`;
    }
  }
  return `${script}prepare\0commit\0`;
}

/**
 * Moves several refs in one transaction with `git update-ref --stdin -z`: either every move happens or
 * none does, and each happens only if its ref still holds `expectedOld`. git takes each ref's lock,
 * checks, and writes the reflog under `message`. Rejects with Transient `RefConflict` naming the ref
 * (GitError.ref) when one was moved meanwhile (or exists where it must not), Transient `LockBusy` when its
 * lock is held; nothing was changed then.
 */
export async function updateRefs(repo: GitRepo, moves: readonly RefMove[], message = "cascade-sync"): Promise<void> {
  if (moves.length === 0) return;
  await runGit(["update-ref", "--stdin", "-z", "-m", message], { ...repo, stdin: updateRefScript(moves) });
}

/** Lists refs matching `patterns` (for-each-ref patterns; all refs when none), sorted by name. */
export async function forEachRef(repo: GitRepo, patterns: readonly string[] = []): Promise<RefEntry[]> {
  const { stdout } = await runGit(["for-each-ref", `--format=${FOR_EACH_REF_FORMAT}`, "--", ...patterns], repo);
  return parseForEachRef(stdout);
}
