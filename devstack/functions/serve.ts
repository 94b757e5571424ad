// The local edge runtime: serves every function of supabase/functions/ from
// one Deno process, as Supabase's edge runtime does.
//
// usage: deno run --allow-net --allow-read --allow-env serve.ts PORT path/to/<name>/index.ts...
//
// Each function module calls `Deno.serve(handler)` at load, as it does on
// Supabase. Here that call is captured instead of opening a port, and one
// server routes `/<name>/...` to the function's handler, with the URL path
// kept as Supabase passes it (`/<name>/...`).

type Handler = (request: Request, info: Deno.ServeHandlerInfo) => Response | Promise<Response>;

const [portArg, ...entrypoints] = Deno.args;
const realServe = Deno.serve.bind(Deno);
const handlers = new Map<string, Handler>();

function captured(name: string) {
  // deno-lint-ignore no-explicit-any
  return (...args: any[]): Deno.HttpServer => {
    const handler: Handler | undefined =
      typeof args[0] === "function" ? args[0] : typeof args[1] === "function" ? args[1] : args[0]?.handler;
    if (!handler) throw new Error(`function ${name}: Deno.serve was called without a handler`);
    handlers.set(name, handler);
    return { finished: Promise.resolve(), shutdown: () => Promise.resolve(), ref() {}, unref() {}, addr: { transport: "tcp", hostname: "127.0.0.1", port: Number(portArg) } } as unknown as Deno.HttpServer;
  };
}

for (const entrypoint of entrypoints) {
  const parts = entrypoint.split("/");
  const name = parts[parts.length - 2];
  // deno-lint-ignore no-explicit-any
  (Deno as any).serve = captured(name);
  await import(new URL(`file://${entrypoint}`).href);
}
// deno-lint-ignore no-explicit-any
(Deno as any).serve = realServe;

realServe({ hostname: "127.0.0.1", port: Number(portArg), onListen() {} }, (request, info) => {
  const name = new URL(request.url).pathname.split("/")[1] ?? "";
  const handler = handlers.get(name);
  if (!handler) {
    return Response.json({ code: "NOT_FOUND", message: "Requested function was not found" }, { status: 404 });
  }
  return handler(request, info);
});
