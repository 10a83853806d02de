/**
 * The git gateway: everything cascade-sync asks of git goes through here, to the installed `git`.
 * Argument arrays, never a shell; `-z` output parsed in parse.ts; objects read through one long-lived
 * `git cat-file --batch`; ref moves as `update-ref --stdin` transactions with expected old values; git's
 * failures turned into our error kinds and reasons in failure.ts.
 */
export { GitError, RefConflictError, objectMissing, classifyGitFailure, remoteMessages, type GitFailure } from "./failure.js";
export { runGit, runGitRecords, gitEnvironment, killProcessGroup, sshWithBatchMode, DEFAULT_GIT_TIMEOUT_MS, type GitRepo, type GitRunOptions, type GitRunResult } from "./run.js";
export * from "./parse.js";
export { CatFileBatch, type GitObject } from "./cat-file.js";
export { updateRefs, updateRefScript, forEachRef, type RefMove } from "./refs.js";
export { gitVersion, requireGitVersion, parseGitVersion, compareGitVersions, gitTooOld, MIN_GIT_VERSION, type GitVersion } from "./version.js";
export { repositoryFormat, requireSupportedFormat, unsupportedFormat, type RepositoryFormat, type FormatSupport } from "./format.js";
export { updateIndex, updateIndexInfo, writeTree, commitTree, diffTrees, commitKnownPaths, type GitIdentity, type IndexInfo, type CommitSpec, type KnownPathCommit } from "./plumbing.js";
export { mergeTree, parseMergeTree, type MergeTreeResult, type ConflictStage, type MergeMessage } from "./merge-tree.js";
export { worktreeChanges, changedPathsOf, commitNative, indexAsIn, SETTLE_MS, type StagedChange, type Held, type NativeCommit, type NativeCommitOutcome } from "./stage.js";
export { mergeWinning, type WinningMerge, type WinningMergeOptions, type SettledPath } from "./merge.js";
