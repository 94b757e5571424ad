// Lots, plans and balance events through the built handler under Deno: a
// service role granting lots of several kinds, a user's charge spending them
// in order, revoking what remains of a purchase, a plan's allowance, and the
// events a user reads, against the running stack's database (helpers.ts).
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { createHandler } from "../../pkg-function/deno.js";
import { balanceOf, call, env, makeUser, request, SERVICE_ROLE_KEY, sql, userToken } from "./helpers.ts";

const handler = () => createHandler(env({ CREDITGATE_USER_LIMIT: "off", CREDITGATE_IP_LIMIT: "off", CREDITGATE_PRICES: '{"image": 10}' }));
const inDays = (days: number) => new Date(Date.now() + days * 86_400_000).toISOString();
const grant = (h: ReturnType<typeof handler>, body: Record<string, unknown>) =>
  call(h, request("/grant", SERVICE_ROLE_KEY, { json: body }));
const lotsOf = async (h: ReturnType<typeof handler>, user: string) => {
  const answer = await call(h, request("/lots", userToken(user), { method: "GET" }));
  assert.equal(answer.status, 200, JSON.stringify(answer.body));
  return answer.body.lots as Array<Record<string, unknown>>;
};

Deno.test("a charge spends the lowest priority first, then the soonest to expire, and the user sees it", async () => {
  const h = handler();
  const user = await makeUser(0);
  for (const lot of [
    { amount: 8, reason: "pack", category: "paid", priority: 50 },
    { amount: 5, reason: "promo", category: "promotional", priority: 10, expiresAt: inDays(30) },
    { amount: 4, reason: "early promo", category: "promotional", priority: 10, expiresAt: inDays(2) },
  ]) {
    const answer = await grant(h, { userId: user, ...lot });
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
  }
  assert.equal(await balanceOf(user), 17);
  const order = (await lotsOf(h, user)).map((lot) => `${lot.reason}:${lot.remaining}`);
  assert.deepEqual(order, ["early promo:4", "promo:5", "pack:8"], "spending order");
  const charged = await call(h, request("/charge", userToken(user), { json: { operation: "image" } }));
  assert.equal(charged.status, 200, JSON.stringify(charged.body));
  const after = Object.fromEntries((await lotsOf(h, user)).map((lot) => [lot.reason, lot.remaining]));
  assert.deepEqual(after, { "early promo": 0, promo: 0, pack: 7 }, "10 credits spanned three lots, lowest priority first");
  // The refund goes back to the lots it came from.
  const refunded = await call(h, request(`/jobs/${charged.body.jobId}/refund`, SERVICE_ROLE_KEY, { json: {} }));
  assert.equal(refunded.status, 200, JSON.stringify(refunded.body));
  const back = Object.fromEntries((await lotsOf(h, user)).map((lot) => [lot.reason, lot.remaining]));
  assert.deepEqual(back, { "early promo": 4, promo: 5, pack: 8 });
});

Deno.test("revoking a refunded purchase takes back only what remains, once; users may not", async () => {
  const h = handler();
  const user = await makeUser(0);
  assert.equal((await grant(h, { userId: user, amount: 30, reason: "pack", idempotencyKey: `pi_${randomUUID()}` })).status, 200);
  const [lot] = await lotsOf(h, user);
  const spent = await call(h, request("/charge", userToken(user), { json: { operation: "image" } }));
  assert.equal(spent.status, 200);
  const denied = await call(h, request(`/lots/${lot.lotId}/revoke`, userToken(user), { json: { reason: "mine" } }));
  assert.equal(denied.status, 403);
  const first = await call(h, request(`/lots/${lot.lotId}/revoke`, SERVICE_ROLE_KEY, { json: { reason: "charge refunded" } }));
  assert.equal(first.status, 200, JSON.stringify(first.body));
  assert.equal(first.body.balance, 0, "the 20 that remained left; the 10 spent stay spent");
  const again = await call(h, request(`/lots/${lot.lotId}/revoke`, SERVICE_ROLE_KEY, { json: { reason: "again" } }));
  assert.equal(again.status, 200);
  assert.equal(again.body.balance, 0, "a second revoke changes nothing");
  const ledger = Number(await sql(`SELECT count(*) FROM public.credit_ledger WHERE user_id = '${user}' AND entry_type = 'lot_revocation'`));
  assert.equal(ledger, 1);
  const unknown = await call(h, request(`/lots/${randomUUID()}/revoke`, SERVICE_ROLE_KEY, { json: { reason: "x" } }));
  assert.equal(unknown.status, 404);
  assert.equal(unknown.body.error.code, "lot_not_found");
});

Deno.test("a plan grants its allowance once per period, as an allowance lot ending with the period", async () => {
  const h = handler();
  const user = await makeUser(0);
  const plan = `pro-${randomUUID().slice(0, 8)}`;
  const upserted = await call(h, request("/plans", SERVICE_ROLE_KEY, { json: { plan, amount: 100, period: "month", rolloverMax: 20 } }));
  assert.equal(upserted.status, 200, JSON.stringify(upserted.body));
  assert.deepEqual(upserted.body, { plan, amount: 100, period: "month", rolloverMax: 20 });
  const subscribe = () => call(h, request("/plans/subscribe", SERVICE_ROLE_KEY, { json: { userId: user, plan } }));
  const first = await subscribe();
  assert.equal(first.status, 200, JSON.stringify(first.body));
  assert.equal(first.body.granted, 100);
  assert.equal(first.body.balance, 100);
  const [allowance] = await lotsOf(h, user);
  assert.equal(allowance.category, "allowance");
  assert.equal(allowance.plan, plan);
  assert.equal(allowance.expiresAt !== null, true, "it ends with the period");
  const cancel = () => call(h, request("/plans/cancel", SERVICE_ROLE_KEY, { json: { userId: user } }));
  assert.deepEqual((await cancel()).body, { userId: user, cancelled: true });
  assert.deepEqual((await cancel()).body, { userId: user, cancelled: false });
  assert.equal(await balanceOf(user), 100, "cancelling keeps the current allowance");
});

Deno.test("balance events are the user's own, paged by id", async () => {
  const h = handler();
  const user = await makeUser(0);
  const other = await makeUser(0);
  await sql(`SELECT public.set_low_balance_threshold('${user}', 15)`);
  assert.equal((await grant(h, { userId: user, amount: 20, reason: "pack" })).status, 200);
  assert.equal((await grant(h, { userId: other, amount: 20, reason: "pack" })).status, 200);
  const charged = await call(h, request("/charge", userToken(user), { json: { operation: "image" } }));
  assert.equal(charged.status, 200);
  const events = await call(h, request("/events", userToken(user), { method: "GET" }));
  assert.equal(events.status, 200, JSON.stringify(events.body));
  const types = events.body.events.map((event: { type: string }) => event.type);
  assert.ok(types.includes("low_balance"), JSON.stringify(types));
  const next = await call(h, request(`/events?after=${events.body.nextAfter}`, userToken(user), { method: "GET" }));
  assert.deepEqual(next.body.events, [], "nothing after the last one");
  const otherEvents = await call(h, request("/events", userToken(other), { method: "GET" }));
  assert.equal(otherEvents.status, 200);
  assert.ok(!otherEvents.body.events.some((event: { type: string }) => event.type === "low_balance"), "another user's events are not mine");
});

Deno.test("hostile inputs to the lot and plan routes are 400 with the field named, and change nothing", async () => {
  const h = handler();
  const user = await makeUser(0);
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ["/grant", { userId: user, amount: 5, reason: "r", category: "Paid" }, "category"],
    ["/grant", { userId: user, amount: 5, reason: "r", priority: 101 }, "priority"],
    ["/grant", { userId: user, amount: 5, reason: "r", priority: -1 }, "priority"],
    ["/grant", { userId: user, amount: 5, reason: "r", expiresAt: "tomorrow" }, "expiresAt"],
    ["/plans", { plan: "p", amount: 5, period: "year" }, "period"],
    ["/plans", { plan: "", amount: 5, period: "day" }, "plan"],
    ["/plans", { plan: "p", amount: 0, period: "day" }, "amount"],
    ["/plans/subscribe", { userId: user, plan: "p", anchor: "soon" }, "anchor"],
    ["/plans/cancel", { userId: "nope" }, "userId"],
  ];
  for (const [path, body, field] of cases) {
    const answer = await call(h, request(path, SERVICE_ROLE_KEY, { json: body }));
    assert.equal(answer.status, 400, `${path} ${JSON.stringify(body)}: ${JSON.stringify(answer.body)}`);
    assert.equal(answer.body.error.details.field, field, path);
  }
  const events = await call(h, request("/events?after=-1", userToken(user), { method: "GET" }));
  assert.equal(events.status, 400);
  assert.equal(await balanceOf(user), 0);
});
