// A streaming function behind a Function URL in RESPONSE_STREAM mode (FUNCTION_URL_INVOKE_MODE=RESPONSE_STREAM).
// awslambda.HttpResponseStream.from() puts the HTTP status, headers and cookies in front of the body (the
// "prelude", sent with the first write); the daemon sends them as the response's head, then forwards every
// write as it comes.
//   GET /slow       writes its first part, waits 1.5 s, then the rest: the first part is on screen before the end
//   GET /fail       throws before writing anything: the client gets 502
//   GET /fail-late  throws after its first part: the status is sent already, so the answer is cut short
//   GET /silent     ends without writing: no prelude was ever sent, so 200 and an empty body
//   GET /big?size=N streams N bytes of "x", in 64 KiB writes, waiting whenever the stream is full
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export const handler = awslambda.streamifyResponse(async (event, responseStream, context) => {
  const path = event.rawPath;
  const stream = awslambda.HttpResponseStream.from(responseStream, {
    statusCode: 201,
    headers: {
      "content-type": "text/plain; charset=utf-8",
      "x-streamed-by": "url_stream.mjs",
      "x-aws-request-id": context.awsRequestId,
    },
    cookies: ["streamed=yes; Path=/", "flavour=mint; Expires=Wed, 21 Oct 2037 07:28:00 GMT"],
  });
  if (path === "/fail") throw new Error("failed before the first write");
  if (path === "/silent") {
    stream.end();
    return;
  }
  if (path === "/big") {
    const block = Buffer.alloc(64 * 1024, "x");
    for (let left = Number(event.queryStringParameters.size); left > 0; left -= block.length) {
      if (!stream.write(left >= block.length ? block : block.subarray(0, left))) {
        await new Promise((resolve) => stream.once("drain", resolve));
      }
    }
    stream.end();
    return;
  }
  const parts = path === "/slow" ? ["first part\n", "second part\n", "the end\n"] : ["one\n", "two\n", "three\n"];
  for (const [index, part] of parts.entries()) {
    if (index > 0) await sleep(path === "/slow" && index === 1 ? 1500 : 100);
    if (index > 0 && path === "/fail-late") throw new Error("failed mid-stream");
    stream.write(part);
  }
  stream.end();
});
