// A small Server-Sent Events reader over a fetch response: EventSource cannot send a POST body.

/** Yield the data of each event in the response body, as text, until the stream ends. */
export async function* sseData(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer = (buffer + value).replace(/\r\n/g, "\n"); // a "\r" split from its "\n" waits for it
    let end = buffer.indexOf("\n\n");
    while (end >= 0) {
      const data = eventData(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (data !== null) yield data;
      end = buffer.indexOf("\n\n");
    }
  }
}

/** The joined `data:` lines of one event block; null for a block without data (a comment). */
function eventData(block) {
  const lines = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("data:")) lines.push(line.slice(line.startsWith("data: ") ? 6 : 5));
  }
  return lines.length ? lines.join("\n") : null;
}
