// The Edge Function's limits under Deno, against a running stack (see
// handler.test.ts for how to run): several windows per limit, limits per
// operation, blocked keys (403 `blocked`, nothing charged), and the service
// role's tools (/limits/peek, /limits/reset, /limits/usage, /limits/block,
// /limits/unblock).
import assert from "node:assert/strict";
import { CreditError, createHandler } from "../../pkg-function/deno.js";
import { balanceOf, call, env, ledgerRows, makeUser, request, SERVICE_ROLE_KEY, userToken } from "./helpers.ts";

const freshIp = () => `10.${[0, 0, 0].map(() => Math.floor(Math.random() * 250) + 1).join(".")}`;

type Handler = ReturnType<typeof createHandler>;
const charge = (handler: Handler, user: string, ip: string, operation = "image") =>
  call(handler, request("/charge", userToken(user), { json: { operation }, headers: { "X-Forwarded-For": ip } }));
const service = (handler: Handler, path: string, json?: unknown) =>
  call(handler, request(path, SERVICE_ROLE_KEY, json === undefined ? { method: "GET" } : { json }));

Deno.test("several windows: the daily one refuses after the minute one allows; every window is in the headers", async () => {
  const handler = createHandler(env({ CREDITGATE_USER_LIMIT: "5/60,2/86400", CREDITGATE_IP_LIMIT: "off" }));
  const user = await makeUser(100);
  const ip = freshIp();
  for (const expected of [1, 0]) {
    const ok = await charge(handler, user, ip);
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    assert.equal(ok.headers.get("RateLimit-Policy"), '"user-60";q=5;w=60, "user-86400";q=2;w=86400');
    assert.match(ok.headers.get("RateLimit") ?? "", new RegExp(`"user-86400";r=${expected};t=\\d+`));
  }
  const denied = await charge(handler, user, ip);
  assert.equal(denied.status, 429, JSON.stringify(denied.body));
  assert.equal(denied.body.error.code, "rate_limited");
  assert.equal(denied.body.error.details.policy, "user");
  assert.equal(denied.body.error.details.name, "user-86400");
  assert.equal(denied.body.error.details.windowSeconds, 86400);
  assert.match(denied.headers.get("RateLimit") ?? "", /"user-60";r=2;t=\d+, "user-86400";r=0;t=\d+/);
  assert.ok(Number(denied.headers.get("Retry-After")) > 60, "the day's window, not the minute's, says when");
  assert.equal(await balanceOf(user), 80, "two charges, not three");
});

Deno.test("limits per operation: per user and operation, beside the user's and the address's", async () => {
  const handler = createHandler(env({
    CREDITGATE_USER_LIMIT: "100/60",
    CREDITGATE_IP_LIMIT: "100/60",
    CREDITGATE_OPERATION_LIMITS: '{"image": "1/60,10/86400"}',
  }));
  const user = await makeUser(100);
  const ip = freshIp();
  const first = await charge(handler, user, ip);
  assert.equal(first.status, 200, JSON.stringify(first.body));
  assert.equal(
    first.headers.get("RateLimit-Policy"),
    '"user";q=100;w=60, "ip";q=100;w=60, "op-image-60";q=1;w=60, "op-image-86400";q=10;w=86400',
  );
  const second = await charge(handler, user, ip);
  assert.equal(second.status, 429);
  assert.equal(second.body.error.details.policy, "operation");
  assert.equal(second.body.error.details.operation, "image");
  assert.equal(second.body.error.details.windowSeconds, 60);
  const text = await charge(handler, user, ip, "text");
  assert.equal(text.status, 200, "another operation has no such limit");
  assert.equal(text.headers.get("RateLimit-Policy"), '"user";q=100;w=60, "ip";q=100;w=60');
  const other = await makeUser(100);
  assert.equal((await charge(handler, other, ip)).status, 200, "another user has their own operation limit");
});

Deno.test("a configuration that could name more than 16 limits in one call is refused at start-up", () => {
  const windows = (count: number) => Array.from({ length: count }, (_, i) => `1/${i + 1}`).join(",");
  assert.throws(
    () => createHandler(env({
      CREDITGATE_USER_LIMIT: windows(6),
      CREDITGATE_IP_LIMIT: windows(5),
      CREDITGATE_OPERATION_LIMITS: JSON.stringify({ image: windows(6) }),
    })),
    (error: unknown) => error instanceof CreditError && error.details.variable === "CREDITGATE_OPERATION_LIMITS",
  );
});

Deno.test("a blocked user or address is 403 blocked before any other work, and nothing is charged", async () => {
  const handler = createHandler(env({ GENERATOR_URL: "http://127.0.0.1:9/never" }));
  const user = await makeUser(50);
  const ip = freshIp();
  const userKey = `creditgate:user:${user}`;
  const block = await service(handler, "/limits/block", { key: userKey, reason: "chargebacks" });
  assert.equal(block.status, 200, JSON.stringify(block.body));
  assert.deepEqual(block.body, { key: userKey, until: null, reason: "chargebacks" });
  const ledger = await ledgerRows(user);

  const blocked = await charge(handler, user, ip);
  assert.equal(blocked.status, 403, JSON.stringify(blocked.body));
  assert.equal(blocked.body.error.code, "blocked");
  assert.deepEqual(blocked.body.error.details, { key: userKey, until: null, reason: "chargebacks" });
  const generate = await call(handler, request("/generate", userToken(user), {
    json: { prompt: "a cat" },
    headers: { "X-Forwarded-For": ip },
  }));
  assert.equal(generate.status, 403);
  assert.equal(generate.body.error.code, "blocked");
  assert.equal(await balanceOf(user), 50, "nothing charged");
  assert.equal(await ledgerRows(user), ledger, "no ledger entry");
  const peek = await service(handler, "/limits/peek", { key: userKey, limit: 5, windowSeconds: 60 });
  assert.equal(peek.status, 403, "peek answers as a charge would");

  const unblock = await service(handler, "/limits/unblock", { key: userKey });
  assert.deepEqual(unblock.body, { key: userKey, unblocked: true });
  assert.equal((await charge(handler, user, ip)).status, 200, "unblocked, the user is charged again");

  // The client address, until a time.
  const until = new Date(Date.now() + 3_600_000).toISOString();
  const ipBlock = await service(handler, "/limits/block", { key: `creditgate:ip:${ip}`, until, reason: "scraping" });
  assert.equal(ipBlock.status, 200, JSON.stringify(ipBlock.body));
  assert.equal(Date.parse(ipBlock.body.until), Date.parse(until));
  const other = await makeUser(50);
  const byAddress = await charge(handler, other, ip);
  assert.equal(byAddress.status, 403);
  assert.equal(byAddress.body.error.details.key, `creditgate:ip:${ip}`);
  assert.equal(Date.parse(byAddress.body.error.details.until), Date.parse(until));
  assert.equal(await balanceOf(other), 50);
  assert.equal((await charge(handler, other, freshIp())).status, 200, "from another address: charged");
  await service(handler, "/limits/unblock", { key: `creditgate:ip:${ip}` });
});

Deno.test("service routes: peek spends nothing, usage lists the windows, reset frees them; users may not", async () => {
  const handler = createHandler(env({ CREDITGATE_USER_LIMIT: "2/60,10/86400", CREDITGATE_IP_LIMIT: "off" }));
  const user = await makeUser(100);
  const ip = freshIp();
  const key = `creditgate:user:${user}`;
  assert.equal((await charge(handler, user, ip)).status, 200);

  for (let i = 0; i < 2; i++) {
    const peek = await service(handler, "/limits/peek", { key, limit: 2, windowSeconds: 60 });
    assert.equal(peek.status, 200, JSON.stringify(peek.body));
    assert.equal(peek.body.success, true);
    assert.equal(peek.body.remaining, 1, "peeking twice spends nothing");
    assert.equal(peek.body.windowSeconds, 60);
  }
  const usage = await service(handler, `/limits/usage?prefix=${encodeURIComponent(key)}`);
  assert.equal(usage.status, 200, JSON.stringify(usage.body));
  assert.deepEqual(
    usage.body.usage.map((row: { key: string; limit: number; windowSeconds: number; used: number }) =>
      [row.key, row.limit, row.windowSeconds, row.used]
    ),
    [[key, 2, 60, 1], [key, 10, 86400, 1]],
  );
  assert.equal((await charge(handler, user, ip)).status, 200);
  assert.equal((await charge(handler, user, ip)).status, 429, "the minute's window is full");

  const reset = await service(handler, "/limits/reset", { key });
  assert.deepEqual(reset.body, { key, cleared: 2 });
  const after = await service(handler, "/limits/peek", { key, limit: 2, windowSeconds: 60 });
  assert.equal(after.body.remaining, 2);
  assert.equal((await charge(handler, user, ip)).status, 200, "reset frees the user");

  for (const [path, json] of [["/limits/peek", { key, limit: 2, windowSeconds: 60 }], ["/limits/reset", { key }]] as const) {
    const denied = await call(handler, request(path, userToken(user), { json }));
    assert.equal(denied.status, 403, path);
    assert.equal(denied.body.error.code, "forbidden");
  }
  const bad = await service(handler, "/limits/block", { key, reason: "x", until: "2000-01-01T00:00:00Z" });
  assert.equal(bad.status, 400, "a block in the past");
  assert.equal(bad.body.error.code, "invalid_argument");
});

const chargeUnits = (handler: Handler, user: string, ip: string, units: number) =>
  call(handler, request("/charge", userToken(user), { json: { operation: "text", units }, headers: { "X-Forwarded-For": ip } }));

Deno.test("concurrency: the N+1-th paid request running is 429 concurrency_limited, nothing charged; a completion frees a slot", async () => {
  const handler = createHandler(env({ CREDITGATE_USER_LIMIT: "100/60", CREDITGATE_IP_LIMIT: "off", CREDITGATE_USER_CONCURRENCY: "2" }));
  const user = await makeUser(100);
  const ip = freshIp();
  const first = await charge(handler, user, ip);
  assert.equal(first.status, 200, JSON.stringify(first.body));
  assert.equal(first.headers.get("RateLimit-Policy"), '"user";q=100;w=60, "concurrency";q=2');
  assert.equal((await charge(handler, user, ip)).status, 200);
  const rows = await ledgerRows(user);
  const refused = await charge(handler, user, ip);
  assert.equal(refused.status, 429, JSON.stringify(refused.body));
  assert.equal(refused.body.error.code, "concurrency_limited");
  assert.deepEqual([refused.body.error.details.policy, refused.body.error.details.limit, refused.body.error.details.open], ["concurrency", 2, 2]);
  assert.equal(refused.headers.get("Retry-After"), "1");
  assert.match(refused.headers.get("RateLimit") ?? "", /"user";r=\d+;t=\d+, "concurrency";r=0;t=0/);
  assert.equal(await balanceOf(user), 80, "two charges, not three");
  assert.equal(await ledgerRows(user), rows, "and no ledger row for the refusal");
  const done = await service(handler, `/jobs/${first.body.jobId}/complete`, {});
  assert.equal(done.status, 200, JSON.stringify(done.body));
  const next = await charge(handler, user, ip);
  assert.equal(next.status, 200, "a completed job frees its slot");
  assert.match(next.headers.get("RateLimit") ?? "", /"user";r=97;/, "the refusal spent no rate limit: three counted, not four");
});

Deno.test("unit limits: /charge reserves `units`, /jobs/:id/complete corrects with actualUnits", async () => {
  const handler = createHandler(env({ CREDITGATE_USER_LIMIT: "100/60", CREDITGATE_IP_LIMIT: "off", CREDITGATE_UNIT_LIMIT: "1000/60" }));
  const user = await makeUser(100);
  const ip = freshIp();
  const first = await chargeUnits(handler, user, ip, 600);
  assert.equal(first.status, 200, JSON.stringify(first.body));
  assert.equal(first.headers.get("RateLimit-Policy"), '"user";q=100;w=60, "units";q=1000;w=60');
  assert.match(first.headers.get("RateLimit") ?? "", /"units";r=400;/);
  const over = await chargeUnits(handler, user, ip, 600);
  assert.equal(over.status, 429, JSON.stringify(over.body));
  assert.equal(over.body.error.code, "rate_limited");
  assert.equal(over.body.error.details.policy, "units");
  const done = await service(handler, `/jobs/${first.body.jobId}/complete`, { actualUnits: 100 });
  assert.equal(done.status, 200, JSON.stringify(done.body));
  const after = await chargeUnits(handler, user, ip, 600);
  assert.equal(after.status, 200, "500 units came back: 100 + 600 fit in 1000");
  assert.match(after.headers.get("RateLimit") ?? "", /"units";r=300;/);
  const again = await service(handler, `/jobs/${first.body.jobId}/complete`, { actualUnits: 0 });
  assert.equal(again.body.error.code, "job_already_settled", "a second completion corrects nothing");
  assert.equal((await chargeUnits(handler, user, ip, 400)).status, 429, "still 700 counted");
  const bad = await chargeUnits(handler, user, ip, 2000);
  assert.deepEqual([bad.status, bad.body.error.code, bad.body.error.details.field], [400, "invalid_argument", "units"]);
});

Deno.test("plan limits: a subscriber's plan replaces the defaults in the charge's transaction; bad plan limits are 400", async () => {
  const handler = createHandler(env({
    CREDITGATE_USER_LIMIT: "100/60", CREDITGATE_IP_LIMIT: "off", CREDITGATE_USER_CONCURRENCY: "3", CREDITGATE_PLAN_LIMITS: "on",
  }));
  const plan = `fn-free-${crypto.randomUUID().slice(0, 8)}`;
  const made = await service(handler, "/plans", { plan, amount: 5, period: "month", limits: { concurrency: 1, user: [{ limit: 50, window_seconds: 60 }] } });
  assert.equal(made.status, 200, JSON.stringify(made.body));
  const subscriber = await makeUser(100);
  const other = await makeUser(100);
  assert.equal((await service(handler, "/plans/subscribe", { userId: subscriber, plan })).status, 200);
  const ip = freshIp();
  const first = await charge(handler, subscriber, ip);
  assert.equal(first.status, 200, JSON.stringify(first.body));
  assert.equal(first.headers.get("RateLimit-Policy"), '"user";q=50;w=60, "concurrency";q=1');
  const second = await charge(handler, subscriber, ip);
  assert.equal(second.status, 429, JSON.stringify(second.body));
  assert.deepEqual([second.body.error.code, second.body.error.details.plan], ["concurrency_limited", plan]);
  for (let i = 0; i < 3; i++) assert.equal((await charge(handler, other, ip)).status, 200, "without a plan: the defaults (3 at once)");
  const bad = await service(handler, "/plans", { plan, amount: 5, period: "month", limits: { concurrency: 0 } });
  assert.deepEqual([bad.status, bad.body.error.code], [400, "invalid_argument"]);
  assert.equal((await charge(handler, subscriber, ip)).status, 429, "the refused change left the plan's limits as they were");
});

Deno.test("plan limits with no concurrency or unit default: the plan's apply to its subscribers, nothing to others", async () => {
  const handler = createHandler(env({ CREDITGATE_IP_LIMIT: "off", CREDITGATE_PLAN_LIMITS: "on" }));
  const plan = `fn-one-${crypto.randomUUID().slice(0, 8)}`;
  assert.equal((await service(handler, "/plans", { plan, amount: 5, period: "month", limits: { concurrency: 1, units: [{ limit: 10, window_seconds: 60 }] } })).status, 200);
  const subscriber = await makeUser(100);
  assert.equal((await service(handler, "/plans/subscribe", { userId: subscriber, plan })).status, 200);
  const ip = freshIp();
  const first = await chargeUnits(handler, subscriber, ip, 4);
  assert.equal(first.status, 200, JSON.stringify(first.body));
  assert.equal(first.headers.get("RateLimit-Policy"), '"user";q=5;w=60, "concurrency";q=1, "units";q=10;w=60');
  assert.equal((await chargeUnits(handler, subscriber, ip, 4)).body.error.code, "concurrency_limited");
  const other = await makeUser(100);
  const free = await chargeUnits(handler, other, ip, 4);
  assert.equal(free.status, 200, JSON.stringify(free.body));
  assert.equal(free.headers.get("RateLimit-Policy"), '"user";q=5;w=60', "no plan: the default user limit only");
});
