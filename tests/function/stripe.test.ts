// The stripe-webhook handler (src/api/stripe.rs) through the built package
// under Deno, against the running stack's database (helpers.ts). Payloads
// are built here and signed exactly as Stripe signs them: Stripe-Signature
// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "${t}.${body}">`. No network
// beyond the local stack.
import assert from "node:assert/strict";
import { createHmac, randomUUID } from "node:crypto";
import { createStripeHandler } from "../../pkg-function/deno.js";
import { balanceOf, env, makeUser, now, sql } from "./helpers.ts";

const SECRET = "whsec_test_current";
const OLD_SECRET = "whsec_test_previous";
const handler = (overrides: Record<string, string> = {}) =>
  createStripeHandler(env({
    STRIPE_WEBHOOK_SECRET: SECRET,
    CREDITGATE_STRIPE_PRICES: '{"price_pack": {"credits": 500, "expiresInDays": 365}}',
    CREDITGATE_STRIPE_PLANS: '{"price_pro_fn": "fn-pro"}',
    ...overrides,
  }));

const id = (prefix: string) => `${prefix}_${randomUUID().replaceAll("-", "")}`;
const signature = (body: string, t = now(), secret = SECRET) =>
  `t=${t},v1=${createHmac("sha256", secret).update(`${t}.${body}`).digest("hex")}`;

function event(type: string, object: Record<string, unknown>, eventId = id("evt")) {
  return { id: eventId, object: "event", type, api_version: "2024-06-20", created: now(), data: { object } };
}

async function deliver(h: ReturnType<typeof handler>, payload: unknown, sign: (body: string) => string | null = signature) {
  const body = JSON.stringify(payload);
  const headers = new Headers({ "content-type": "application/json" });
  const sig = sign(body);
  if (sig !== null) headers.set("stripe-signature", sig);
  const response = await h.handle(new Request("http://127.0.0.1/stripe-webhook", { method: "POST", headers, body }));
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

const checkout = (user: string, extra: Record<string, unknown> = {}) => ({
  id: id("cs"), object: "checkout.session", payment_status: "paid", client_reference_id: user,
  payment_intent: id("pi"), mode: "payment", metadata: { creditgate_credits: "500" }, ...extra,
});
const charge = (paymentIntent: string, amount: number, refunded: number) => ({
  id: id("ch"), object: "charge", payment_intent: paymentIntent, amount, amount_refunded: refunded, refunded: refunded >= amount,
});
const statusOf = (eventId: string) => sql(`SELECT status FROM public.stripe_events WHERE id = '${eventId}'`);
const lotsOf = (user: string) =>
  sql(`SELECT count(*) FROM public.credit_lots WHERE user_id = '${user}'`).then(Number);

Deno.test("checkout.session.completed grants the metadata's credits once, with the payment intent on the lot", async () => {
  const h = handler();
  const user = await makeUser(0);
  const session = checkout(user, { metadata: { creditgate_credits: "300", creditgate_expires_in_days: "30", creditgate_priority: "20" } });
  const completed = event("checkout.session.completed", session);
  const first = await deliver(h, completed);
  assert.equal(first.status, 200, JSON.stringify(first.body));
  assert.deepEqual(first.body, { received: true, eventId: completed.id, status: "processed", replayed: false });
  assert.equal(await balanceOf(user), 300);
  const lot = JSON.parse(await sql(`SELECT row_to_json(l) FROM (SELECT metadata, priority, category, expires_at > now() + interval '29 days' AS expires
    FROM public.credit_lots WHERE user_id = '${user}') l`));
  assert.equal(lot.metadata.payment_intent, session.payment_intent);
  assert.equal(lot.metadata.checkout_session, session.id);
  assert.equal(lot.metadata.stripe_event, completed.id);
  assert.deepEqual([lot.priority, lot.category, lot.expires], [20, "paid", true]);

  // Stripe retries the same event: nothing more.
  const replay = await deliver(h, completed);
  assert.deepEqual([replay.status, replay.body.replayed], [200, true]);
  // The async twin for the same session: recorded, nothing granted.
  const twin = await deliver(h, event("checkout.session.async_payment_succeeded", session));
  assert.deepEqual([twin.status, twin.body.status], [200, "duplicate"]);
  assert.equal(await balanceOf(user), 300);
  assert.equal(await lotsOf(user), 1);
});

Deno.test("an unpaid session grants nothing; its async_payment_succeeded does, from the price map", async () => {
  const h = handler();
  const user = await makeUser(0);
  const session = checkout(user, { payment_status: "unpaid", metadata: { price_id: "price_pack" } });
  const pending = await deliver(h, event("checkout.session.completed", session));
  assert.deepEqual([pending.status, pending.body.status], [200, "ignored"]);
  assert.equal(await balanceOf(user), 0);
  const paid = await deliver(h, event("checkout.session.async_payment_succeeded", { ...session, payment_status: "paid" }));
  assert.deepEqual([paid.status, paid.body.status], [200, "processed"]);
  assert.equal(await balanceOf(user), 500);
  assert.equal(await sql(`SELECT expires_at > now() + interval '364 days' FROM public.credit_lots WHERE user_id = '${user}'`), "t");
});

Deno.test("concurrent duplicate deliveries of one event grant once", async () => {
  const h = handler();
  const user = await makeUser(0);
  const completed = event("checkout.session.completed", checkout(user));
  const twin = event("checkout.session.async_payment_succeeded", completed.data.object);
  const answers = await Promise.all([
    ...Array.from({ length: 6 }, () => deliver(h, completed)),
    ...Array.from({ length: 2 }, () => deliver(h, twin)),
  ]);
  assert.ok(answers.every((a) => a.status === 200), JSON.stringify(answers));
  assert.equal(answers.slice(0, 6).filter((a) => a.body.replayed === false).length, 1, "one delivery processed the event");
  assert.equal(await balanceOf(user), 500);
  assert.equal(await lotsOf(user), 1);
});

Deno.test("charge.refunded revokes in proportion, idempotently; a full refund revokes what remains", async () => {
  const h = handler();
  const user = await makeUser(0);
  const session = checkout(user, { metadata: { creditgate_credits: "1000" } });
  assert.equal((await deliver(h, event("checkout.session.completed", session))).status, 200);
  const pi = session.payment_intent as string;
  const partial = event("charge.refunded", charge(pi, 2000, 500));
  assert.equal((await deliver(h, partial)).body.status, "processed");
  assert.equal(await balanceOf(user), 750, "25% refunded: 250 revoked");
  await deliver(h, partial);
  await deliver(h, event("charge.refunded", charge(pi, 2000, 500)));
  assert.equal(await balanceOf(user), 750, "the same refunded amount again revokes nothing");
  await sql(`SELECT creditgate.charge_credits_at('${user}', 'image', 700, NULL, '{}', 900, now())`);
  const full = await deliver(h, event("charge.refunded", charge(pi, 2000, 2000)));
  assert.equal(full.body.status, "processed");
  assert.equal(await balanceOf(user), 0, "a full refund takes what remains (50), never more");
  assert.equal(await sql(`SELECT count(*) FROM verify_credit_ledger() WHERE user_id = '${user}'`), "0");
});

Deno.test("charge.dispute.created revokes what remains", async () => {
  const h = handler();
  const user = await makeUser(40);
  const session = checkout(user);
  await deliver(h, event("checkout.session.completed", session));
  assert.equal(await balanceOf(user), 540);
  const dispute = await deliver(h, event("charge.dispute.created", { id: id("dp"), object: "dispute", payment_intent: session.payment_intent, amount: 999 }));
  assert.deepEqual([dispute.status, dispute.body.status], [200, "processed"]);
  assert.equal(await balanceOf(user), 40, "only the purchase's lot is revoked");
});

Deno.test("out of order: a refund before its checkout is recorded, and applied when the checkout arrives", async () => {
  const h = handler();
  const user = await makeUser(0);
  const session = checkout(user, { metadata: { creditgate_credits: "400" } });
  const refund = event("charge.refunded", charge(session.payment_intent as string, 1000, 250));
  const early = await deliver(h, refund);
  assert.deepEqual([early.status, early.body.status], [200, "no_purchase"]);
  assert.equal(await statusOf(refund.id), "no_purchase");
  await deliver(h, event("checkout.session.completed", session));
  assert.equal(await balanceOf(user), 300, "granted 400, then the earlier 25% refund revoked 100");
  assert.equal(await statusOf(refund.id), "processed");
});

Deno.test("invoice.paid subscribes to the mapped plan (a renewal changes nothing); customer.subscription.deleted cancels", async () => {
  const h = handler();
  await sql(`SELECT public.upsert_credit_plan('fn-pro', 1000, 'month', 0)`);
  const user = await makeUser(0);
  const invoice = () => ({
    id: id("in"), object: "invoice", subscription: "sub_fn", metadata: {},
    subscription_details: { metadata: { creditgate_user_id: user } },
    lines: { data: [{ id: id("il"), price: { id: "price_pro_fn" } }] },
  });
  const paid = await deliver(h, event("invoice.paid", invoice()));
  assert.deepEqual([paid.status, paid.body.status], [200, "processed"]);
  assert.equal(await balanceOf(user), 1000);
  assert.equal(await sql(`SELECT plan FROM public.credit_plan_subscriptions WHERE user_id = '${user}'`), "fn-pro");
  await deliver(h, event("invoice.paid", invoice()));
  assert.equal(await balanceOf(user), 1000, "the renewal grants nothing now (the sweeper grants each period)");
  const other = await deliver(h, event("invoice.paid", { ...invoice(), lines: { data: [{ price: { id: "price_other" } }] } }));
  assert.equal(other.body.status, "ignored");
  const deleted = await deliver(h, event("customer.subscription.deleted", {
    id: "sub_fn", object: "subscription", metadata: { creditgate_user_id: user }, items: { data: [{ price: { id: "price_pro_fn" } }] },
  }));
  assert.deepEqual([deleted.status, deleted.body.status], [200, "processed"]);
  assert.equal(await sql(`SELECT count(*) FROM public.credit_plan_subscriptions WHERE user_id = '${user}'`), "0");
});

Deno.test("a subscription's checkout links the Stripe customer: its invoice and deletion need no user metadata", async () => {
  const h = handler();
  await sql(`SELECT public.upsert_credit_plan('fn-pro', 1000, 'month', 0)`);
  const user = await makeUser(0);
  const customer = id("cus");
  const session = await deliver(h, event("checkout.session.completed", {
    id: id("cs"), object: "checkout.session", mode: "subscription", payment_status: "paid", client_reference_id: user, customer,
    subscription: id("sub"), metadata: {},
  }));
  assert.deepEqual([session.status, session.body.status], [200, "ignored"], "it grants nothing itself");
  const paid = await deliver(h, event("invoice.paid", {
    id: id("in"), object: "invoice", customer, metadata: {}, lines: { data: [{ id: id("il"), price: { id: "price_pro_fn" } }] },
  }));
  assert.deepEqual([paid.status, paid.body.status], [200, "processed"]);
  assert.equal(await sql(`SELECT plan FROM public.credit_plan_subscriptions WHERE user_id = '${user}'`), "fn-pro");
  const deleted = await deliver(h, event("customer.subscription.deleted", {
    id: id("sub"), object: "subscription", customer, metadata: {}, items: { data: [{ price: { id: "price_pro_fn" } }] },
  }));
  assert.deepEqual([deleted.status, deleted.body.status], [200, "processed"]);
  assert.equal(await sql(`SELECT count(*) FROM public.credit_plan_subscriptions WHERE user_id = '${user}'`), "0");
  const stranger = await deliver(h, event("invoice.paid", {
    id: id("in"), object: "invoice", customer: id("cus"), metadata: {}, lines: { data: [{ price: { id: "price_pro_fn" } }] },
  }));
  assert.deepEqual([stranger.status, stranger.body.status], [200, "unknown_user"], "a customer nobody linked");
});

Deno.test("bad, missing and stale signatures are 400 and change nothing", async () => {
  const h = handler();
  const user = await makeUser(0);
  const cases: Array<[string, (body: string) => string | null]> = [
    ["missing", () => null],
    ["wrong secret", (body) => signature(body, now(), "whsec_wrong")],
    ["stale (301 s)", (body) => signature(body, now() - 301)],
    ["tampered body", (body) => signature(body.replace("500", "900"))],
    ["no v1", () => `t=${now()}`],
    ["garbage", () => "v1=zz,t=abc"],
  ];
  for (const [name, sign] of cases) {
    const completed = event("checkout.session.completed", checkout(user));
    const answer = await deliver(h, completed, sign);
    assert.equal(answer.status, 400, `${name}: ${JSON.stringify(answer.body)}`);
    assert.equal(answer.body.error.code, "invalid_signature", name);
    assert.equal(await statusOf(completed.id), "", `${name}: not recorded`);
  }
  assert.equal(await balanceOf(user), 0);
  const fresh = await deliver(h, event("checkout.session.completed", checkout(user)), (body) => signature(body, now() - 290));
  assert.equal(fresh.status, 200, "within the 300 s tolerance");
});

Deno.test("during a rotation every configured secret verifies (comma-separated, or STRIPE_WEBHOOK_SECRETS)", async () => {
  const user = await makeUser(0);
  for (const h of [
    handler({ STRIPE_WEBHOOK_SECRET: `${SECRET}, ${OLD_SECRET}` }),
    handler({ STRIPE_WEBHOOK_SECRET: SECRET, STRIPE_WEBHOOK_SECRETS: OLD_SECRET }),
  ]) {
    for (const secret of [SECRET, OLD_SECRET]) {
      const answer = await deliver(h, event("checkout.session.completed", checkout(user)), (body) => signature(body, now(), secret));
      assert.equal(answer.status, 200, JSON.stringify(answer.body));
    }
  }
  assert.equal(await balanceOf(user), 2000);
  // Stripe sends one v1 per active secret: any match is enough.
  const h = handler();
  const answer = await deliver(h, event("checkout.session.completed", checkout(user)), (body) => {
    const t = now();
    const sig = (secret: string) => createHmac("sha256", secret).update(`${t}.${body}`).digest("hex");
    return `t=${t},v1=${sig(OLD_SECRET)},v1=${sig(SECRET)}`;
  });
  assert.equal(answer.status, 200);
});

Deno.test("an unknown user's purchase is recorded for an operator and answered 200", async () => {
  const h = handler();
  const stranger = randomUUID();
  const completed = event("checkout.session.completed", checkout(stranger));
  const answer = await deliver(h, completed);
  assert.deepEqual([answer.status, answer.body.status], [200, "unknown_user"]);
  assert.equal(await sql(`SELECT status || ' ' || (payload->>'type') FROM public.stripe_events WHERE id = '${completed.id}'`),
    "unknown_user checkout.session.completed");
  const again = await deliver(h, completed);
  assert.deepEqual([again.status, again.body.replayed], [200, true]);
});

Deno.test("other events are ignored (200, recorded); a GET is 405; no secret configured is 500", async () => {
  const h = handler();
  const other = event("customer.created", { id: id("cus"), object: "customer" });
  const answer = await deliver(h, other);
  assert.deepEqual([answer.status, answer.body.status], [200, "ignored"]);
  assert.equal(await statusOf(other.id), "ignored");
  const get = await h.handle(new Request("http://127.0.0.1/stripe-webhook"));
  assert.equal(get.status, 405);
  await get.body?.cancel();
  const unconfigured = await deliver(handler({ STRIPE_WEBHOOK_SECRET: "" }), event("customer.created", {}));
  assert.equal(unconfigured.status, 500);
});
