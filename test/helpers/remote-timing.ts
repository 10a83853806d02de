import { startGitHttpServer, type GitHttpRequestFault, type GitHttpRequestInfo, type GitHttpServer, type GitHttpServerOptions } from './git-http-server.js';

/** One request that reached a timed server, with the time it arrived (Date.now()). */
export interface TimedArrival {
  at: number;
  method: string;
  path: string;
  service: GitHttpRequestInfo['service'];
  /** The fault it was answered with, or undefined when it was served normally. */
  fault: GitHttpRequestFault | undefined;
}

/** A smart-HTTP git server whose fault the test switches per request, recording when each request arrives. */
export interface TimedGitHttpServer {
  server: GitHttpServer;
  /** Every request since the start (or the last clear), oldest first. */
  readonly arrivals: TimedArrival[];
  /** Answers every following request with `fault`, or serves them normally when undefined. */
  setFault(fault: GitHttpRequestFault | undefined): void;
}

/**
 * Starts startGitHttpServer() in mode 'ok' with a per-request predicate that stamps each request with
 * its arrival time and applies the fault set by setFault(). The server's own setMode() still works,
 * but requests answered by a mode bypass the predicate and are not recorded here. Rejects as
 * startGitHttpServer() does; close it with `server.close()`.
 */
export async function startTimedGitHttpServer(opts: Omit<GitHttpServerOptions, 'failWith'>): Promise<TimedGitHttpServer> {
  const arrivals: TimedArrival[] = [];
  let fault: GitHttpRequestFault | undefined;
  const server = await startGitHttpServer({
    ...opts,
    failWith: (req) => {
      arrivals.push({ at: Date.now(), method: req.method, path: req.path, service: req.service, fault });
      return fault;
    },
  });
  return {
    server,
    arrivals,
    setFault(next) {
      fault = next;
    },
  };
}

/** The differences between consecutive times, in ms (empty for fewer than two times). */
export function gaps(times: number[]): number[] {
  return times.slice(1).map((t, i) => t - times[i]!);
}
