// The Edge Function's handler under Deno, loaded directly from the built
// package (the module supabase/functions/credits/index.ts imports), with
// real Requests against a running stack's database API:
//
//   deno test --allow-net --allow-read --allow-env --allow-run=psql tests/function
//
// Needs pkg-function/ (scripts/build-pkg.sh), psql, and a running stack (`cargo dev up`
// or `cargo dev test`'s): CREDITGATE_URL, CREDITGATE_SERVICE_ROLE_KEY,
// CREDITGATE_JWT_SECRET, CREDITGATE_DB_URL (defaults: the local stack's).
// The generator here is a small HTTP server started by the test itself, so
// the test can count what reached it.
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { randomUUID } from "node:crypto";
import * as functionModule from "../../pkg-function/deno.js";
import { CreditError, createHandler } from "../../pkg-function/deno.js";
import { balanceOf, call, env, ledgerRows, makeUser, request, SERVICE_ROLE_KEY, sql, userToken } from "./helpers.ts";

/** A generator that answers as told by the prompt, and counts its calls. */
function startGenerator() {
  let calls = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (request) => {
    calls += 1;
    const { prompt } = await request.json();
    if (String(prompt).startsWith("fail")) return Response.json({ error: "failed as asked" }, { status: 500 });
    if (String(prompt).startsWith("hang")) await new Promise((resolve) => setTimeout(resolve, 1500));
    return Response.json({ url: `https://images.example/${randomUUID()}.png` });
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}/generate`,
    calls: () => calls,
    stop: () => server.shutdown(),
  };
}

/** An IP of its own per test, so the per-IP limit never couples tests. */
const freshIp = () => `10.${[0, 0, 0].map(() => Math.floor(Math.random() * 250) + 1).join(".")}`;

Deno.test("the functions' module is the handler only: the npm client is a separate build", () => {
  for (const name of ["createHandler", "handle", "createStripeHandler", "CreditError"]) {
    assert.equal(typeof (functionModule as Record<string, unknown>)[name], "function", name);
  }
  for (const name of ["CreditClient", "rateLimitHeaders"]) {
    assert.equal((functionModule as Record<string, unknown>)[name], undefined, name);
  }
});

Deno.test("a malformed configuration is refused at start-up, naming the variable", () => {
  const cases: Array<[Record<string, string>, string]> = [
    [{ CREDITGATE_PRICES: '{"image": 0}' }, "CREDITGATE_PRICES"],
    [{ CREDITGATE_PRICES: "not json" }, "CREDITGATE_PRICES"],
    [{ CREDITGATE_USER_LIMIT: "5 per minute" }, "CREDITGATE_USER_LIMIT"],
    [{ CREDITGATE_GENERATOR_TIMEOUT_MS: "5", GENERATOR_URL: "http://127.0.0.1:1/" }, "CREDITGATE_GENERATOR_TIMEOUT_MS"],
    [{ CREDITGATE_JWT_SECRET: "short" }, "CREDITGATE_JWT_SECRET"],
    [{ SUPABASE_URL: "" }, "SUPABASE_URL"],
  ];
  for (const [overrides, variable] of cases) {
    assert.throws(() => createHandler(env(overrides)), (error: unknown) => {
      assert.ok(error instanceof CreditError, String(error));
      assert.equal(error.code, "invalid_argument");
      assert.equal(error.details.variable, variable);
      return true;
    });
  }
});

Deno.test("a charge: the price comes from the server, the user from the token, and a retry replays", async () => {
  const handler = createHandler(env({ CREDITGATE_PRICES: '{"image": 7}' }));
  const user = await makeUser(20);
  const ip = freshIp();
  const charge = () =>
    call(handler, request("/charge", userToken(user), {
      json: { operation: "image" },
      headers: { "Idempotency-Key": "deno-1", "X-Forwarded-For": ip },
    }));
  const first = await charge();
  assert.equal(first.status, 200, JSON.stringify(first.body));
  assert.equal(first.body.balance, 13);
  assert.equal(first.body.cost, 7);
  assert.equal(first.body.replayed, false);
  assert.match(first.headers.get("RateLimit-Policy") ?? "", /"user";q=\d+;w=\d+, "ip";q=\d+;w=\d+/);
  assert.equal(first.headers.get("Access-Control-Allow-Origin"), "*");
  const again = await charge();
  assert.equal(again.status, 200);
  assert.equal(again.body.replayed, true);
  assert.equal(again.body.jobId, first.body.jobId);
  assert.equal(await balanceOf(user), 13, "the retry charged nothing");
});

Deno.test("generate: success completes, failure and timeout refund, a replay does not generate again", async () => {
  const generator = startGenerator();
  try {
    const handler = createHandler(env({
      GENERATOR_URL: generator.url,
      CREDITGATE_GENERATOR_TIMEOUT_MS: "300",
      CREDITGATE_USER_LIMIT: "off",
    }));
    const user = await makeUser(100);
    const ip = freshIp();
    const generate = (prompt: string, key?: string) =>
      call(handler, request("/generate", userToken(user), {
        json: { prompt },
        headers: { "X-Forwarded-For": ip, ...(key ? { "Idempotency-Key": key } : {}) },
      }));

    const ok = await generate("a cat", "gen-1");
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    assert.equal(ok.body.status, "completed");
    assert.match(ok.body.resultUrl, /^https:\/\/images\.example\//);
    assert.equal(ok.body.balance, 90);
    assert.equal(await balanceOf(user), 90);

    const replay = await generate("a cat", "gen-1");
    assert.equal(replay.status, 200);
    assert.equal(replay.body.replayed, true);
    assert.equal(replay.body.resultUrl, ok.body.resultUrl);
    assert.equal(generator.calls(), 1, "the replay did not call the generator");
    assert.equal(await balanceOf(user), 90);

    const reused = await generate("a dog", "gen-1");
    assert.equal(reused.status, 422, "same key, different prompt");
    assert.equal(reused.body.error.code, "idempotency_key_reused");

    const failed = await generate("fail now");
    assert.equal(failed.status, 502);
    assert.equal(failed.body.error.code, "upstream");
    assert.equal(failed.body.error.details.cause, "generator_error");
    assert.equal(failed.body.error.details.refunded, true);
    assert.equal(await balanceOf(user), 90, "a failed generation costs nothing");

    const hung = await generate("hang on");
    assert.equal(hung.status, 502);
    assert.equal(hung.body.error.details.cause, "generator_timeout");
    assert.equal(hung.body.error.details.refunded, true);
    assert.equal(await balanceOf(user), 90, "a timed-out generation costs nothing");
    const jobs = await sql(
      `SELECT string_agg(status, ',' ORDER BY created_at) FROM public.generation_jobs WHERE user_id = '${user}'`,
    );
    assert.equal(jobs, "completed,failed,failed");
  } finally {
    await generator.stop();
  }
});

Deno.test("fail closed: with the database unreachable, nothing is charged and nothing generated (503)", async () => {
  const generator = startGenerator();
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const closedPort = listener.addr.port;
  listener.close();
  try {
    const handler = createHandler(env({ SUPABASE_URL: `http://127.0.0.1:${closedPort}`, GENERATOR_URL: generator.url }));
    const user = await makeUser(50);
    const before = await ledgerRows(user);
    for (const [path, json] of [["/charge", { operation: "image" }], ["/generate", { prompt: "a cat" }]] as const) {
      const answer = await call(handler, request(path, userToken(user), { json }));
      assert.equal(answer.status, 503, path);
      assert.equal(answer.body.error.code, "network", path);
    }
    const balance = await call(handler, request("/balance", userToken(user), { method: "GET" }));
    assert.equal(balance.status, 503);
    assert.equal(generator.calls(), 0, "the generator was never called");
    assert.equal(await balanceOf(user), 50);
    assert.equal(await ledgerRows(user), before);
  } finally {
    await generator.stop();
  }
});

Deno.test("a body over the bound is refused (413), and nothing changes", async () => {
  const handler = createHandler(env());
  const user = await makeUser(10);
  const big = JSON.stringify({ operation: "image", metadata: { pad: "x".repeat(40 * 1024) } });
  const answer = await call(handler, request("/charge", userToken(user), { body: big }));
  assert.equal(answer.status, 413);
  assert.equal(answer.body.error.code, "payload_too_large");
  assert.equal(await balanceOf(user), 10);
});

Deno.test("users cannot reach the service routes; the service key can", async () => {
  const handler = createHandler(env());
  const user = await makeUser(0);
  const grant = { userId: user, amount: 1000, reason: "free money" };
  const denied = await call(handler, request("/grant", userToken(user), { json: grant }));
  assert.equal(denied.status, 403);
  assert.equal(denied.body.error.code, "forbidden");
  assert.equal(await balanceOf(user), 0);
  const granted = await call(handler, request("/grant", SERVICE_ROLE_KEY, { json: { ...grant, amount: 5 } }));
  assert.equal(granted.status, 200, JSON.stringify(granted.body));
  assert.equal(granted.body.balance, 5);
});

Deno.test("a forged token is refused with the secret configured", async () => {
  const handler = createHandler(env());
  const user = await makeUser(10);
  const [header, , signature] = userToken(user).split(".");
  const payload = Buffer.from(JSON.stringify({ sub: user, role: "service_role", exp: 4102444800 })).toString("base64url");
  const answer = await call(handler, request("/grant", `${header}.${payload}.${signature}`, {
    json: { userId: user, amount: 100, reason: "forged" },
  }));
  assert.equal(answer.status, 401);
  assert.equal(answer.body.error.code, "unauthorized");
  assert.equal(await balanceOf(user), 10);
});
