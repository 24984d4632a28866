// A small Server-Sent Events reader over a fetch response: EventSource cannot send a POST body, nor
// an Authorization header.

/**
 * Yield each event in the response body as {event, id, data} until the stream ends: `event` its
 * type ("message" unless named), `id` its id (null when it has none), `data` its joined data lines.
 * Blocks without data (comments, heartbeats) are skipped.
 */
export async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer = (buffer + value).replace(/\r\n/g, "\n"); // a "\r" split from its "\n" waits for it
    let end = buffer.indexOf("\n\n");
    while (end >= 0) {
      const event = parseBlock(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (event !== null) yield event;
      end = buffer.indexOf("\n\n");
    }
  }
}

/** Yield the data of each event in the response body, as text, until the stream ends. */
export async function* sseData(response) {
  for await (const event of sseEvents(response)) yield event.data;
}

/** One event block's fields; null for a block without data (a comment). */
function parseBlock(block) {
  const lines = [];
  let event = "message";
  let id = null;
  for (const line of block.split("\n")) {
    const colon = line.indexOf(":");
    if (colon <= 0) continue;  // a comment (": keepalive"), or a line without a field
    const field = line.slice(0, colon);
    const value = line.slice(colon + (line[colon + 1] === " " ? 2 : 1));
    if (field === "data") lines.push(value);
    else if (field === "event") event = value;
    else if (field === "id") id = value;
  }
  return lines.length ? { event, id, data: lines.join("\n") } : null;
}
