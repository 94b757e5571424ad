// `POST /charge` through each handler with the network taken out: the
// global `fetch` answers the RPC at once with a canned row, so what is timed
// is only the function's own work (request copy, token check with WebCrypto,
// JSON, the RPC request built and its answer read, the response, the log
// line). Used to find where the wasm handler's time goes (docs/design.md,
// "Performance"); not part of any test.
//
// usage: deno run --allow-read --allow-env --allow-net handler_cpu.ts <pkg dir> <twin index.ts> [requests]
const [pkgDir, twinPath, countArg] = Deno.args;
const count = Number(countArg ?? "20000");

// An ES256 key as a project's signing key, and user tokens signed with it.
const pair = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"]);
const jwk = { ...(await crypto.subtle.exportKey("jwk", pair.publicKey)), kid: "bench-key", alg: "ES256", use: "sig" };
delete (jwk as Record<string, unknown>).key_ops;
delete (jwk as Record<string, unknown>).ext;
const b64 = (bytes: Uint8Array) => btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
const text = (value: unknown) => b64(new TextEncoder().encode(JSON.stringify(value)));
async function token(sub: string): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  const input = `${text({ alg: "ES256", typ: "JWT", kid: "bench-key" })}.${
    text({ sub, role: "authenticated", aud: "authenticated", iat: now, exp: now + 3600 })
  }`;
  const signature = await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, pair.privateKey, new TextEncoder().encode(input));
  return `${input}.${b64(new Uint8Array(signature))}`;
}
const tokens = await Promise.all(Array.from({ length: 50 }, (_, i) => token(`00000000-0000-4000-8000-${String(i + 1).padStart(12, "0")}`)));

const env: Record<string, string> = {
  SUPABASE_URL: "http://127.0.0.1:9",
  SUPABASE_SERVICE_ROLE_KEY: "service-role-key-for-the-cpu-bench",
  SUPABASE_ANON_KEY: "anon-key-for-the-cpu-bench",
  SUPABASE_JWKS: JSON.stringify({ keys: [jwk] }),
  CREDITGATE_USER_LIMIT: "1000000/60",
  CREDITGATE_IP_LIMIT: "off",
};
for (const [name, value] of Object.entries(env)) Deno.env.set(name, value);

// PostgREST, answered at once.
let rpcs = 0;
const row = JSON.stringify([{
  allowed: true, job_id: "0f0e0d0c-0b0a-4908-8706-050403020100", new_balance: 999, replayed: false,
  expires_at: "2026-12-05T09:00:00+00:00",
  limits: [{ allowed: true, limit: 1000000, remaining: 999999, reset_seconds: 60, retry_after_seconds: 0 }],
}]);
globalThis.fetch = (async (_input: unknown, _init?: unknown) => {
  rpcs += 1;
  return new Response(row, { status: 200, headers: { "content-type": "application/json; charset=utf-8", "content-range": "0-0/*" } });
}) as typeof fetch;
console.log = () => {};

type Handler = (request: Request) => Promise<Response>;
const { createHandler } = await import(new URL(`file://${pkgDir}/deno.js`).href);
const wasm = createHandler(env);
const wasmHandler: Handler = (request) => wasm.handle(request);
let twinHandler: Handler | undefined;
// deno-lint-ignore no-explicit-any
(Deno as any).serve = (handler: Handler) => { twinHandler = handler; return {}; };
await import(new URL(`file://${twinPath}`).href);

function request(i: number, path: string): Request {
  return new Request(`http://127.0.0.1${path}`, {
    method: "POST",
    headers: {
      authorization: `Bearer ${tokens[i % tokens.length]}`,
      "content-type": "application/json",
      "idempotency-key": `cpu-${i}-${Math.random()}`,
    },
    body: '{"operation":"text"}',
  });
}

async function run(handler: Handler, path: string, n: number, concurrency = 16): Promise<number> {
  let next = 0;
  const started = performance.now();
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < n) {
      const i = next++;
      const response = await handler(request(i, path));
      if (response.status !== 200) throw new Error(`${response.status}: ${await response.text()}`);
      await response.arrayBuffer();
    }
  }));
  return (performance.now() - started) * 1000 / n;
}

const results: Record<string, number[]> = { wasm: [], ts: [] };
const WASM = "/credits/charge", TS = "/credits_ts/charge";
await run(wasmHandler, WASM, 2000);
await run(twinHandler!, TS, 2000);
// ONLY=wasm or ONLY=ts: one side (for a profile of it alone).
const only = Deno.env.get("ONLY");
for (let round = 0; round < 5; round++) {
  if (only !== "ts") results.wasm.push(await run(wasmHandler, WASM, count / 5));
  if (only !== "wasm") results.ts.push(await run(twinHandler!, TS, count / 5));
}
const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
console.error(JSON.stringify({
  wasm_us_per_request: median(results.wasm),
  ts_us_per_request: median(results.ts),
  ratio: median(results.ts) / median(results.wasm),
  rpcs,
}));
