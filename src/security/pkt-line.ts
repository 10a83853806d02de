/**
 * git's pkt-line framing (Documentation/technical/protocol-common.txt), as the long-running filter
 * protocol uses it: four hex digits giving the length of the packet including themselves, then the
 * payload; `0000` is a flush packet. A payload is at most {@link MAX_PKT_PAYLOAD} bytes.
 */

/** The largest payload git accepts in one packet (65520 minus the 4-byte length). */
export const MAX_PKT_PAYLOAD = 65516;

/** A packet read: its payload, or `flush` for `0000`. */
export type Packet = Buffer | "flush";

/**
 * Reads packets from a byte stream (git's stdin to the filter). `next()` resolves with the next
 * packet, or `null` at the end of the stream (git closed the pipe: the filter's normal exit).
 * Rejects for a malformed length or a stream that ends inside a packet.
 */
export class PktLineReader {
  private buffered: Buffer = Buffer.alloc(0);
  private ended = false;
  private failure: Error | undefined;
  private wake: (() => void) | undefined;

  constructor(input: NodeJS.ReadableStream) {
    input.on("data", (chunk: Buffer) => {
      this.buffered = this.buffered.length ? Buffer.concat([this.buffered, chunk]) : chunk;
      this.notify();
    });
    input.on("end", () => {
      this.ended = true;
      this.notify();
    });
    input.on("error", (err: Error) => {
      this.failure = err;
      this.notify();
    });
  }

  /** The next packet, or null when the stream ended cleanly between packets. */
  async next(): Promise<Packet | null> {
    for (;;) {
      const packet = this.take();
      if (packet !== undefined) return packet;
      if (this.failure) throw this.failure;
      if (this.ended) {
        if (this.buffered.length) throw new Error("the input ended inside a packet");
        return null;
      }
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
  }

  /** The payloads up to the next flush packet (a list of `key=value` lines or a content stream). */
  async untilFlush(): Promise<Buffer[] | null> {
    const out: Buffer[] = [];
    for (;;) {
      const p = await this.next();
      if (p === null) return out.length ? Promise.reject(new Error("the input ended before a flush packet")) : null;
      if (p === "flush") return out;
      out.push(p);
    }
  }

  private take(): Packet | undefined {
    if (this.buffered.length < 4) return undefined;
    const hex = this.buffered.subarray(0, 4).toString("latin1");
    if (!/^[0-9a-f]{4}$/i.test(hex)) throw new Error(`malformed packet length ${JSON.stringify(hex)}`);
    const len = parseInt(hex, 16);
    if (len === 0) {
      this.buffered = this.buffered.subarray(4);
      return "flush";
    }
    // 0001 (delimiter) and 0002 (response end) belong to protocol v2, never to the filter protocol.
    if (len < 4) throw new Error(`unexpected special packet ${hex}`);
    if (this.buffered.length < len) return undefined;
    const payload = Buffer.from(this.buffered.subarray(4, len));
    this.buffered = this.buffered.subarray(len);
    return payload;
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }
}

/** One packet holding `payload` (at most {@link MAX_PKT_PAYLOAD} bytes). */
export function packet(payload: Buffer | string): Buffer {
  const body = typeof payload === "string" ? Buffer.from(payload, "utf8") : payload;
  if (body.length > MAX_PKT_PAYLOAD) throw new Error(`a packet payload is at most ${MAX_PKT_PAYLOAD} bytes`);
  return Buffer.concat([Buffer.from((body.length + 4).toString(16).padStart(4, "0"), "latin1"), body]);
}

/** The flush packet. */
export const FLUSH: Buffer = Buffer.from("0000", "latin1");

/** Text lines as packets (each ending in "\n", as git writes them), then a flush. */
export function textPackets(lines: readonly string[]): Buffer {
  return Buffer.concat([...lines.map((l) => packet(`${l}\n`)), FLUSH]);
}

/** Content split into packets of the largest size, then a flush (an empty content is just the flush). */
export function contentPackets(content: Buffer): Buffer {
  const parts: Buffer[] = [];
  for (let i = 0; i < content.length; i += MAX_PKT_PAYLOAD) parts.push(packet(content.subarray(i, i + MAX_PKT_PAYLOAD)));
  parts.push(FLUSH);
  return Buffer.concat(parts);
}

/** A text packet's line without its trailing newline (git strips it too). */
export function lineOf(p: Buffer): string {
  const s = p.toString("utf8");
  return s.endsWith("\n") ? s.slice(0, -1) : s;
}
