import { request } from "undici";

type IsoRequest = {
  url: string;
  method?: string;
  headers?: Record<string, string>;
  body?: AsyncIterable<Uint8Array>;
  signal?: AbortSignal;
};

/**
 * isomorphic-git's HTTP client contract, served by undici. The request body is buffered (git's
 * pack uploads are built in memory by isomorphic-git anyway); the response body streams.
 * Timeouts turn a hung server into an error the loop retries instead of a stuck controller.
 */
export function makeHttpClient(timeoutMs: number) {
  return {
    async request({ url, method = "GET", headers = {}, body, signal }: IsoRequest) {
      const chunks: Uint8Array[] = [];
      if (body) for await (const c of body) chunks.push(c);
      const res = await request(url, {
        method: method as "GET" | "POST",
        headers,
        body: chunks.length ? Buffer.concat(chunks) : undefined,
        signal,
        headersTimeout: timeoutMs,
        bodyTimeout: timeoutMs,
      });
      const flat: Record<string, string> = {};
      for (const [k, v] of Object.entries(res.headers)) if (v !== undefined) flat[k] = Array.isArray(v) ? v.join(", ") : v;
      return { url, method, statusCode: res.statusCode, statusMessage: String(res.statusCode), headers: flat, body: res.body[Symbol.asyncIterator]() as AsyncIterableIterator<Uint8Array> };
    },
  };
}
