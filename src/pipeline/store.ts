import { readRuntimeJson, writeRuntimeFile } from "../runtime.js";
import type { HealthState } from "./health-state.js";

/** What the controller remembers about one environment across restarts. */
export interface EnvironmentRecord {
  health?: HealthState;
  /** Commits whose release became healthy, most recent last (rollback targets). */
  healthy: string[];
  /** Commits rolled back: never promoted again automatically. `approvals` are the entry ids that had approved it. */
  failed: Record<string, { at: string; reason: string; approvals: string[] }>;
  /** Approval entry ids that counted for each promotion (a rolled-back commit needs a new one). */
  promotedWith: Record<string, string[]>;
  /** Rejected approval entries already written to history (id:reason), so each is recorded once. */
  reportedRejections: string[];
}

interface StoreFile {
  version: 1;
  environments: Record<string, EnvironmentRecord>;
}

const FILE = "pipeline.json";
const MAX_HEALTHY = 20;
const MAX_REPORTED = 500;

/** The pipeline's memory in .git/cascade-sync/pipeline.json (0600), loaded once and saved after each change. */
export class PipelineStore {
  private constructor(
    private readonly gitdir: string,
    private readonly data: StoreFile,
  ) {}

  /** Loads the store; a missing or unreadable file starts empty (the branches remain the truth). */
  static async load(gitdir: string): Promise<PipelineStore> {
    const data = await readRuntimeJson<StoreFile>(gitdir, FILE);
    return new PipelineStore(gitdir, data?.version === 1 && data.environments ? data : { version: 1, environments: {} });
  }

  /** The record of `env` (created empty on first use). */
  get(env: string): EnvironmentRecord {
    const e = (this.data.environments[env] ??= { healthy: [], failed: {}, promotedWith: {}, reportedRejections: [] });
    e.healthy ??= [];
    e.failed ??= {};
    e.promotedWith ??= {};
    e.reportedRejections ??= [];
    return e;
  }

  /** Remembers that `commit` became healthy in `env`. */
  markHealthy(env: string, commit: string): void {
    const rec = this.get(env);
    rec.healthy = [...rec.healthy.filter((c) => c !== commit), commit].slice(-MAX_HEALTHY);
  }

  /** Records a rejected entry once; returns false when it was already recorded. */
  firstRejection(env: string, key: string): boolean {
    const rec = this.get(env);
    if (rec.reportedRejections.includes(key)) return false;
    rec.reportedRejections = [...rec.reportedRejections, key].slice(-MAX_REPORTED);
    return true;
  }

  /** Writes the store atomically. */
  async save(): Promise<void> {
    await writeRuntimeFile(this.gitdir, FILE, JSON.stringify(this.data, null, 2));
  }
}
