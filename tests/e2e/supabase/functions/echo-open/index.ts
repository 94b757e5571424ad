// A test function: answers with what reached it (tests/e2e/runtime.test.mjs).
Deno.serve((request: Request) =>
  Response.json({
    function: "echo-open",
    method: request.method,
    path: new URL(request.url).pathname,
    authorization: request.headers.get("authorization"),
  })
);
