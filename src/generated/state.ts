/* DO NOT EDIT. Generated from schema/cascade-sync-state.schema.json by scripts/gen-types.mjs; run `npm run gen` after editing the schema. */

/**
 * Signed entries read from cascade-sync-state.yaml. Only entries committed to the repository count; an uncommitted edit has no effect.
 */
export interface CascadeSyncState {
  /**
   * Signed approvals, each for one commit in one environment. cascade-sync approve appends to this list.
   */
  approvals?: Approval[];
  /**
   * Reserved for freezes, which a later release will add. Entries are accepted and ignored today.
   */
  freezes?: Freeze[];
}
/**
 * Approval of one commit for one environment. The signature is an OpenSSH SSHSIG with namespace cascade-sync over exactly these four lines, each ending in a newline: "cascade-sync approval v1", "environment: <environment>", "commit: <commit>" and "expires: <expires as written>". It counts only when committed, unexpired, and signed for that exact commit and environment by a key in that environment's approvals.signers, as committed on its branch.
 */
export interface Approval {
  /**
   * Name of the environment the commit is approved for, as a key of environments in the config.
   */
  environment: string;
  /**
   * Full 40-digit lowercase hash of the approved commit.
   */
  commit: string;
  /**
   * Time after which the approval no longer counts, as an RFC 3339 date-time such as 2026-11-25T18:00:00Z. It is signed exactly as written here.
   */
  expires: string;
  /**
   * Principal that signed, as it appears at the start of a signers line, such as alice@example.com. The signature is verified against that principal's keys.
   */
  signer: string;
  /**
   * The armored signature, from -----BEGIN SSH SIGNATURE----- to -----END SSH SIGNATURE-----, as printed by ssh-keygen -Y sign -n cascade-sync.
   */
  signature: string;
}
/**
 * A freeze entry. The format is reserved for a later release, so any fields are accepted for now.
 */
export interface Freeze {
  [k: string]: unknown;
}
