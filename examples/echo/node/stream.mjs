// A streaming function for the Node.js Runtime Interface Client: writes each of the event's
// "parts", pausing "pause_ms" between them, so the caller sees every part as it is written.
// {"size": N} streams N bytes instead (in 64 KiB writes); {"fail_after": K} throws after K parts.
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export const handler = awslambda.streamifyResponse(async (event, responseStream) => {
  responseStream.setContentType(event.content_type ?? "text/plain");
  if (event.size) {
    const block = Buffer.alloc(64 * 1024, "x");
    for (let left = event.size; left > 0; left -= block.length) {
      const piece = left >= block.length ? block : block.subarray(0, left);
      if (!responseStream.write(piece)) {
        await new Promise((resolve) => responseStream.once("drain", resolve));
      }
    }
  } else {
    const parts = event.parts ?? ["hello ", "streaming ", "world"];
    for (const [index, part] of parts.entries()) {
      if (event.fail_after !== undefined && index === event.fail_after) {
        throw new Error("failed mid-stream");
      }
      if (index > 0 && event.pause_ms) await sleep(event.pause_ms);
      responseStream.write(part);
    }
  }
  responseStream.end();
});
