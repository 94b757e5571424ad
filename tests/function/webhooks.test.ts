// Webhooks out (src/api/webhooks.rs, migration 0800): the credits handler's
// POST /webhooks/deliver, through the functions' module under Deno, against
// the running stack's database, delivering to a receiver served here on
// 127.0.0.1 that verifies every delivery with the npm package's
// verifyWebhookSignature. The receiver fails (500), then hangs past the
// function's timeout, then recovers; the backoff's wait is skipped by moving
// next_attempt_at (the schedule itself is pgTAP's, 24-webhooks). No network
// beyond localhost.
import assert from "node:assert/strict";
import { createHandler } from "../../pkg-function/deno.js";
import { verifyWebhookSignature } from "../../pkg/deno.js";
import { call, env, makeUser, request, SERVICE_ROLE_KEY, sql, userToken } from "./helpers.ts";

const SECRET = "whsec_creditgate_function_test";

type Received = { id: number; userId: string; type: string; verified: boolean; status: number };

/** A receiver on a free port: answers per `mode`, records what it saw. */
function receiver() {
  const state = { mode: "ok" as "ok" | "fail" | "hang", seen: [] as Received[], hanging: [] as (() => void)[] };
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const raw = await req.text();
    const header = req.headers.get("creditgate-signature");
    const verified = verifyWebhookSignature(raw, header, SECRET);
    const body = JSON.parse(raw);
    const status = state.mode === "fail" ? 500 : 200;
    state.seen.push({ id: body.id, userId: body.userId, type: body.type, verified, status: state.mode === "hang" ? 0 : status });
    if (state.mode === "hang") await new Promise<void>((resolve) => state.hanging.push(resolve));
    return new Response(JSON.stringify({ ok: status === 200 }), { status });
  });
  const url = `http://127.0.0.1:${server.addr.port}/hook`;
  const close = async () => {
    state.hanging.forEach((resolve) => resolve());
    await server.shutdown();
  };
  return { state, url, close };
}

const handlerFor = (url: string) =>
  createHandler(env({ CREDITGATE_WEBHOOK_URL: url, CREDITGATE_WEBHOOK_SECRET: SECRET, CREDITGATE_WEBHOOK_TIMEOUT_MS: "300" }));
const drain = (h: ReturnType<typeof createHandler>) =>
  call(h, request("/webhooks/deliver", SERVICE_ROLE_KEY, { json: {} }));
const event = (user: string, type: string) =>
  sql(`SELECT creditgate.record_event('${user}', '${type}', '{"test": "webhooks"}'::jsonb);
       SELECT max(id) FROM public.credit_events WHERE user_id = '${user}'`).then(Number);
const rows = async (user: string) =>
  JSON.parse(await sql(`SELECT coalesce(json_agg(json_build_object('id', event_id, 'status', status, 'attempts', attempts,
    'http', last_http_status, 'error', last_error) ORDER BY event_id), '[]') FROM public.credit_webhook_deliveries
    WHERE user_id = '${user}'`));
/** As if the backoff had run out. */
const due = (user: string) =>
  sql(`UPDATE public.credit_webhook_deliveries SET next_attempt_at = now() WHERE user_id = '${user}' AND status = 'pending'`);

Deno.test("a receiver that fails, then times out, then recovers gets every event, signed, duplicates only by id", async () => {
  const hook = receiver();
  try {
    const h = handlerFor(hook.url);
    assert.equal((await drain(h)).status, 200, "a first drain: events are queued from now on");
    const user = await makeUser(0);
    const ids = [await event(user, "low_balance"), await event(user, "depleted"), await event(user, "lot_expired")];
    const mine = () => hook.state.seen.filter((seen) => seen.userId === user);

    hook.state.mode = "fail";
    const failed = await drain(h);
    assert.equal(failed.status, 200, JSON.stringify(failed.body));
    assert.ok(failed.body.retrying >= 3, JSON.stringify(failed.body));
    assert.deepEqual((await rows(user)).map((r: { status: string; attempts: number; http: number }) => [r.status, r.attempts, r.http]),
      [["pending", 1, 500], ["pending", 1, 500], ["pending", 1, 500]], "each 500 is recorded and retried");
    const before = mine().length;
    assert.equal((await drain(h)).status, 200);
    assert.equal(mine().length, before, "nothing is sent again during the backoff");

    await due(user);
    hook.state.mode = "hang";
    assert.equal((await drain(h)).status, 200);
    const hung = await rows(user);
    assert.deepEqual(hung.map((r: { attempts: number; error: string }) => [r.attempts, r.error]),
      ids.map(() => [2, "no answer within 300 ms"]), "a timeout is a failed attempt too");

    await due(user);
    hook.state.mode = "ok";
    assert.equal((await drain(h)).status, 200);
    assert.deepEqual((await rows(user)).map((r: { status: string; attempts: number }) => [r.status, r.attempts]),
      ids.map(() => ["delivered", 3]), "all delivered on the third attempt");
    assert.equal(mine().length, 9, "three attempts of three events reached the receiver");
    await drain(h);
    assert.equal(mine().length, 9, "nothing delivered is sent again");

    // None lost, duplicates only with the same id, every one signed.
    assert.deepEqual([...new Set(mine().map((seen) => seen.id))].sort(), [...ids].sort());
    for (const id of ids) {
      const copies = mine().filter((seen) => seen.id === id);
      assert.deepEqual(copies.map((seen) => seen.status), [500, 0, 200], `event ${id}: failed, hung, delivered`);
      assert.equal(new Set(copies.map((seen) => seen.type)).size, 1);
    }
    assert.ok(mine().every((seen) => seen.verified), "every delivery verifies with verifyWebhookSignature");
  } finally {
    await hook.close();
  }
});

Deno.test("verifyWebhookSignature: Stripe's scheme, several secrets, tolerance; anything else is false", async () => {
  const { createHmac } = await import("node:crypto");
  const body = JSON.stringify({ id: 1, type: "low_balance", userId: "u", payload: {}, createdAt: "2026-01-01T00:00:00Z" });
  const t = Math.floor(Date.now() / 1000);
  const sign = (secret: string, at = t, text = body) => `t=${at},v1=${createHmac("sha256", secret).update(`${at}.${text}`).digest("hex")}`;
  assert.equal(verifyWebhookSignature(body, sign(SECRET), SECRET), true);
  assert.equal(verifyWebhookSignature(new TextEncoder().encode(body), sign(SECRET), [`${SECRET}_old`, SECRET]), true, "bytes, a rotation");
  assert.equal(verifyWebhookSignature(body + " ", sign(SECRET), SECRET), false, "another body");
  assert.equal(verifyWebhookSignature(body, sign("whsec_other_secret_value"), SECRET), false, "another secret");
  assert.equal(verifyWebhookSignature(body, sign(SECRET, t - 400), SECRET), false, "older than 300 s");
  assert.equal(verifyWebhookSignature(body, sign(SECRET, t - 400), SECRET, 600), true, "unless the tolerance allows it");
  assert.equal(verifyWebhookSignature(body, null, SECRET), false, "no header");
  assert.equal(verifyWebhookSignature(body, "v1=abc", SECRET), false, "no timestamp");
  assert.throws(() => verifyWebhookSignature(body, sign(SECRET), []), (error: { code: string }) => error.code === "invalid_argument");
});

Deno.test("concurrent drains deliver each event once", async () => {
  const hook = receiver();
  try {
    const h = handlerFor(hook.url);
    await drain(h);
    const user = await makeUser(0);
    const ids: number[] = [];
    for (let i = 0; i < 30; i++) ids.push(await event(user, "low_balance"));
    for (let round = 0; round < 5 && (await rows(user)).some((r: { status: string }) => r.status !== "delivered"); round++) {
      const answers = await Promise.all([drain(h), drain(h), drain(h), drain(h)]);
      assert.ok(answers.every((answer) => answer.status === 200), JSON.stringify(answers.map((a) => a.body)));
    }
    const mine = hook.state.seen.filter((seen) => seen.userId === user);
    assert.deepEqual(mine.map((seen) => seen.id).sort((a, b) => a - b), ids, "each event exactly once");
    assert.ok(mine.every((seen) => seen.verified && seen.status === 200));
    assert.ok((await rows(user)).every((r: { status: string; attempts: number }) => r.status === "delivered" && r.attempts === 1));
  } finally {
    await hook.close();
  }
});

Deno.test("/webhooks/deliver is the service role's, takes no fields, and needs a URL", async () => {
  const configured = handlerFor("http://127.0.0.1:9/hook");
  const user = await makeUser(0);
  const forbidden = await call(configured, request("/webhooks/deliver", userToken(user), { json: {} }));
  assert.deepEqual([forbidden.status, forbidden.body.error.code], [403, "forbidden"]);
  const fields = await call(configured, request("/webhooks/deliver", SERVICE_ROLE_KEY, { json: { limit: 5 } }));
  assert.deepEqual([fields.status, fields.body.error.code], [400, "invalid_argument"]);
  const unconfigured = await call(createHandler(env()), request("/webhooks/deliver", SERVICE_ROLE_KEY, { json: {} }));
  assert.deepEqual([unconfigured.status, unconfigured.body.error.details.cause], [502, "webhook_not_configured"]);
  assert.throws(() => createHandler(env({ CREDITGATE_WEBHOOK_URL: "http://127.0.0.1:9/hook" })),
    (error: { details: { variable: string } }) => error.details.variable === "CREDITGATE_WEBHOOK_SECRET");
});
