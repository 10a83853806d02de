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
   * Signed freezes and lifts. While an unexpired freeze of an environment is committed and no later lift is, nothing is promoted into that environment (rollback still works). cascade-sync freeze and unfreeze append to this list.
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
 * A freeze (action freeze) or a lift (action lift) of one environment. The signature is an OpenSSH SSHSIG with namespace cascade-sync-freeze over exactly these six lines, each ending in a newline: "cascade-sync freeze v1", "environment: <environment>", "action: <action>", "reason: <reason, empty when none>", "at: <at as written>" and "expires: <expires as written, or none>". It counts only when committed and signed by a key in that environment's approvals.signers, as committed on its branch. A freeze is in force from when it is committed until it expires or a valid lift with a later at is committed.
 */
export interface Freeze {
  /**
   * Name of the environment frozen or lifted, as a key of environments in the config.
   */
  environment: string;
  /**
   * freeze stops promotion into the environment; lift ends every freeze of it signed before the lift's at.
   */
  action: "freeze" | "lift";
  /**
   * Why, for people (one line, at most 500 characters); required for a freeze. Signed as written. Default: none (allowed for a lift only).
   */
  reason?: string;
  /**
   * When the entry was signed, as an RFC 3339 date-time; a lift ends the freezes whose at is earlier. Signed as written.
   */
  at: string;
  /**
   * For a freeze: when it ends by itself, as an RFC 3339 date-time. Signed as written. Default: none (the freeze lasts until lifted).
   */
  expires?: string;
  /**
   * Principal that signed, as it appears at the start of a line of the environment's approvals.signers.
   */
  signer: string;
  /**
   * The armored signature, as printed by ssh-keygen -Y sign -n cascade-sync-freeze.
   */
  signature: string;
}
