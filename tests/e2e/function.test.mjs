// The credits Edge Function end to end, called as an app calls it:
// supabase-js `functions.invoke("credits/...")` through the local stack's
// /functions/v1 (the runtime's verify_jwt, then index.ts, then the wasm
// handler, then PostgREST and the SQL). Every route, every error status the
// stack can produce, idempotent replays, the generator failing and hanging.
// (503, the database unreachable, needs a stack without a database: see
// tests/function.)
//
// Each test works with its own users and its own client IP (X-Forwarded-For),
// so the per-user and per-IP rate limits never couple tests.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { client, makeUser, service, sign, sql, userToken } from "./helpers.mjs";

const freshIp = () => `10.${[0, 0, 0].map(() => Math.floor(Math.random() * 250) + 1).join(".")}`;

/** A user with `credits`, their supabase-js client and an IP of their own. */
function user(credits = 0) {
  const id = makeUser("fn");
  if (credits > 0) sql(`SELECT public.grant_credits('${id}', ${credits}, 'e2e', NULL, '{}'::jsonb)`);
  return { id, supabase: client(userToken(id)), ip: freshIp() };
}

const balanceOf = (id) => Number(sql(`SELECT credits FROM public.users WHERE id = '${id}'`));
const ledgerCount = (id) => Number(sql(`SELECT count(*) FROM public.credit_ledger WHERE user_id = '${id}'`));

/** functions.invoke, with the status, headers and JSON body of any answer. */
async function invoke(supabase, path, { method = "POST", body, headers = {} } = {}) {
  const { data, error, response } = await supabase.functions.invoke(`credits/${path}`, { method, body, headers });
  if (error) {
    assert.ok(response, `no HTTP answer: ${error}`);
    const text = await response.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = { raw: text };
    }
    return { status: response.status, headers: response.headers, body: json };
  }
  return { status: response.status, headers: response.headers, body: data };
}

/** As `who` (a user from `user()`), from their IP. */
const as = (who, path, options = {}) =>
  invoke(who.supabase, path, { ...options, headers: { "X-Forwarded-For": who.ip, ...(options.headers ?? {}) } });

function assertError(answer, status, code) {
  assert.equal(answer.status, status, JSON.stringify(answer.body));
  assert.equal(answer.body?.error?.code, code, JSON.stringify(answer.body));
  assert.equal(typeof answer.body.error.message, "string");
  assert.equal(typeof answer.body.error.details, "object");
}

const quota = (header, policy) => Number(new RegExp(`"${policy}";q=(\\d+)`).exec(header ?? "")?.[1]);

test("charge: the server's price for the token's user; a retry with the same Idempotency-Key replays", async () => {
  const alice = user(50);
  const first = await as(alice, "charge", { body: { operation: "image" }, headers: { "Idempotency-Key": "order-1" } });
  assert.equal(first.status, 200, JSON.stringify(first.body));
  assert.equal(first.body.replayed, false);
  assert.match(first.body.jobId, /^[0-9a-f-]{36}$/);
  assert.ok(first.body.cost > 0);
  assert.equal(first.body.balance, 50 - first.body.cost);
  assert.equal(balanceOf(alice.id), 50 - first.body.cost);
  assert.match(first.headers.get("RateLimit-Policy"), /"user";q=\d+;w=\d+/);
  assert.match(first.headers.get("RateLimit"), /"user";r=\d+;t=\d+/);
  assert.equal(first.headers.get("Retry-After"), null);

  const again = await as(alice, "charge", { body: { operation: "image" }, headers: { "Idempotency-Key": "order-1" } });
  assert.equal(again.status, 200);
  assert.equal(again.body.replayed, true);
  assert.equal(again.body.jobId, first.body.jobId);
  assert.equal(balanceOf(alice.id), 50 - first.body.cost, "the replay charged nothing");

  const job = sql(`SELECT user_id || ',' || status || ',' || cost FROM public.generation_jobs WHERE id = '${first.body.jobId}'`);
  assert.equal(job, `${alice.id},pending,${first.body.cost}`, "the job is the token's user's, at the server's price");
});

test("the same Idempotency-Key with a different request is 422, and nothing is charged", async () => {
  const bob = user(50);
  const first = await as(bob, "charge", { body: { operation: "image" }, headers: { "Idempotency-Key": "k" } });
  assert.equal(first.status, 200);
  const balance = balanceOf(bob.id);
  const reused = await as(bob, "charge", { body: { operation: "text" }, headers: { "Idempotency-Key": "k" } });
  assertError(reused, 422, "idempotency_key_reused");
  assert.equal(balanceOf(bob.id), balance);
});

test("insufficient credits is 402 with balance and needed, and nothing is charged", async () => {
  const carol = user(3);
  const answer = await as(carol, "charge", { body: { operation: "image" } });
  assertError(answer, 402, "insufficient_credits");
  assert.equal(answer.body.error.details.balance, 3);
  assert.ok(answer.body.error.details.needed > 3);
  assert.equal(balanceOf(carol.id), 3);
  assert.equal(ledgerCount(carol.id), 1, "only the opening grant");
});

test("malformed requests are 400 invalid_argument naming the field, and nothing changes", async () => {
  const dave = user(50);
  const ledger = ledgerCount(dave.id);
  const cases = [
    ["charge", { body: { operation: "image", cost: 0 } }, "cost"],
    ["charge", { body: { operation: "image", userId: randomUUID() } }, "userId"],
    ["charge", { body: { operation: 42 } }, "operation"],
    ["charge", { body: { operation: "a-price-nobody-set" } }, "operation"],
    ["charge", { body: {} }, "operation"],
    ["charge", { body: "{not json", headers: { "Content-Type": "application/json" } }, "body"],
    ["charge", { body: [1, 2] }, "body"],
    ["charge", { body: { operation: "image", metadata: "text" } }, "metadata"],
    ["charge", { body: { operation: "image" }, headers: { "Idempotency-Key": "k".repeat(256) } }, "Idempotency-Key"],
    ["generate", { body: { prompt: "" } }, "prompt"],
    ["generate", { body: { prompt: "p".repeat(4001) } }, "prompt"],
    ["jobs/not-a-uuid", { method: "GET" }, "jobId"],
    ["ledger?limit=0", { method: "GET" }, "limit"],
    ["ledger?limit=101", { method: "GET" }, "limit"],
    ["ledger?before=99999999999999999999", { method: "GET" }, "before"],
    ["ledger?offset=3", { method: "GET" }, "offset"],
    ["balance?userId=x", { method: "GET" }, "userId"],
  ];
  for (const [path, options, field] of cases) {
    const answer = await as(dave, path, options);
    assertError(answer, 400, "invalid_argument");
    assert.equal(answer.body.error.details.field, field, `${path} ${JSON.stringify(options)}`);
  }
  const services = [
    ["grant", { userId: dave.id, amount: 1e300, reason: "huge" }, "amount"],
    ["grant", { userId: dave.id, amount: 2147483648, reason: "huge" }, "amount"],
    ["grant", { userId: dave.id, amount: "5", reason: "string" }, "amount"],
    ["grant", { userId: "not-a-uuid", amount: 5, reason: "bad id" }, "userId"],
    ["grant", { userId: dave.id, amount: 5, reason: "extra", bonus: 1 }, "bonus"],
    [`jobs/${randomUUID()}/complete`, { actualCost: -1 }, "actualCost"],
  ];
  for (const [path, body, field] of services) {
    const answer = await invoke(service(), path, { body });
    assertError(answer, 400, "invalid_argument");
    assert.equal(answer.body.error.details.field, field, path);
  }
  assert.equal(balanceOf(dave.id), 50);
  assert.equal(ledgerCount(dave.id), ledger);
});

test("a body over 32 KiB is 413, and nothing changes", async () => {
  const erin = user(50);
  const answer = await as(erin, "charge", { body: { operation: "image", metadata: { pad: "x".repeat(40 * 1024) } } });
  assertError(answer, 413, "payload_too_large");
  assert.equal(balanceOf(erin.id), 50);
});

test("who may call what: anon 401, users 403 on service routes, the service role 403 on user routes", async () => {
  const frank = user(50);
  const anon = client();
  assertError(await invoke(anon, "balance", { method: "GET" }), 401, "unauthorized");
  assertError(await invoke(anon, "charge", { body: { operation: "image" } }), 401, "unauthorized");
  const { jobId } = (await as(frank, "charge", { body: { operation: "image" } })).body;
  const held = balanceOf(frank.id);
  assertError(await as(frank, "grant", { body: { userId: frank.id, amount: 1000, reason: "free" } }), 403, "forbidden");
  assertError(await as(frank, `jobs/${jobId}/refund`, { body: {} }), 403, "forbidden");
  assertError(await as(frank, `jobs/${jobId}/complete`, { body: { actualCost: 0 } }), 403, "forbidden");
  assertError(await invoke(anon, "grant", { body: { userId: frank.id, amount: 1000, reason: "free" } }), 403, "forbidden");
  assert.equal(balanceOf(frank.id), held, "no user or anon call moved credits");
  assertError(await invoke(service(), "charge", { body: { operation: "image" } }), 403, "forbidden");
  assertError(await invoke(service(), "balance", { method: "GET" }), 403, "forbidden");
  // A token signed with another secret is refused (by the function itself:
  // credits is deployed with verify_jwt = false).
  const forged = client(sign({ sub: frank.id, role: "service_role", exp: 4102444800 }, "x".repeat(40)));
  const refused = await invoke(forged, "grant", { body: { userId: frank.id, amount: 1000, reason: "forged" } });
  assert.equal(refused.status, 401);
  assert.equal(balanceOf(frank.id), held);
});

test("404 for an unknown job, another user's job and an unknown route; 405 for a wrong method", async () => {
  const gina = user(50);
  const hank = user(50);
  const { jobId } = (await as(gina, "charge", { body: { operation: "image" } })).body;
  const own = await as(gina, `jobs/${jobId}`, { method: "GET" });
  assert.equal(own.status, 200);
  assertError(await as(hank, `jobs/${jobId}`, { method: "GET" }), 404, "job_not_found");
  assertError(await as(gina, `jobs/${randomUUID()}`, { method: "GET" }), 404, "job_not_found");
  assertError(await invoke(service(), `jobs/${randomUUID()}/refund`, { body: {} }), 404, "job_not_found");
  assertError(await invoke(service(), "grant", { body: { userId: randomUUID(), amount: 5, reason: "nobody" } }), 404, "user_not_found");
  assertError(await as(gina, "charges", { body: {} }), 404, "route_not_found");
  const wrong = await as(gina, "charge", { method: "GET" });
  assertError(wrong, 405, "method_not_allowed");
  assert.equal(wrong.headers.get("Allow"), "POST");
});

test("generate: success completes and charges; a failure and a hang are 502 and refunded", async () => {
  const ivy = user(100);
  const ok = await as(ivy, "generate", { body: { prompt: "a lighthouse at dusk" } });
  assert.equal(ok.status, 200, JSON.stringify(ok.body));
  assert.equal(ok.body.status, "completed");
  assert.match(ok.body.resultUrl, /^https?:\/\//);
  assert.equal(ok.body.balance, 100 - ok.body.cost);
  assert.match(ok.headers.get("RateLimit-Policy"), /"user";q=\d+/);
  const charged = balanceOf(ivy.id);
  assert.equal(charged, 100 - ok.body.cost);

  const failed = await as(ivy, "generate", { body: { prompt: "fail: the provider errors" } });
  assertError(failed, 502, "upstream");
  assert.equal(failed.body.error.details.cause, "generator_error");
  assert.equal(failed.body.error.details.refunded, true);
  assert.equal(failed.body.error.details.balance, charged);
  assert.match(failed.headers.get("RateLimit"), /"user";r=\d+/);
  assert.equal(balanceOf(ivy.id), charged, "a failed generation costs nothing");

  const hung = await as(ivy, "generate", { body: { prompt: "hang: the provider never answers" } });
  assertError(hung, 502, "upstream");
  assert.equal(hung.body.error.details.cause, "generator_timeout");
  assert.equal(hung.body.error.details.refunded, true);
  assert.equal(balanceOf(ivy.id), charged, "a timed-out generation costs nothing");

  const rows = sql(
    `SELECT string_agg(entry_type || ':' || delta, ',' ORDER BY id) FROM public.credit_ledger WHERE user_id = '${ivy.id}'`,
  );
  const cost = ok.body.cost;
  assert.equal(rows, `grant:100,charge:-${cost},charge:-${cost},refund:${cost},charge:-${cost},refund:${cost}`);
  const statuses = sql(`SELECT string_agg(status, ',' ORDER BY created_at) FROM public.generation_jobs WHERE user_id = '${ivy.id}'`);
  assert.equal(statuses, "completed,failed,failed");
});

test("generate replays: in flight is 409, then the failure replays as refunded, and a success replays its result", async () => {
  const jack = user(100);
  const key = `gen-${randomUUID()}`;
  const body = { prompt: "hang: slow provider" };
  const first = as(jack, "generate", { body, headers: { "Idempotency-Key": key } });
  // Wait until the first request has charged (its job exists), then retry it.
  for (let i = 0; i < 200 && sql(`SELECT count(*) FROM public.generation_jobs WHERE user_id = '${jack.id}'`) === "0"; i++) {
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  const inFlight = await as(jack, "generate", { body, headers: { "Idempotency-Key": key } });
  assertError(inFlight, 409, "idempotency_in_flight");
  const finished = await first;
  assertError(finished, 502, "upstream");
  assert.equal(balanceOf(jack.id), 100);
  const later = await as(jack, "generate", { body, headers: { "Idempotency-Key": key } });
  assertError(later, 502, "upstream");
  assert.equal(later.body.error.details.replayed, true);
  assert.equal(later.body.error.details.refunded, true);
  assert.equal(balanceOf(jack.id), 100);

  const goodKey = `gen-${randomUUID()}`;
  const ok = await as(jack, "generate", { body: { prompt: "a fox" }, headers: { "Idempotency-Key": goodKey } });
  assert.equal(ok.status, 200);
  const replay = await as(jack, "generate", { body: { prompt: "a fox" }, headers: { "Idempotency-Key": goodKey } });
  assert.equal(replay.status, 200);
  assert.equal(replay.body.replayed, true);
  assert.equal(replay.body.resultUrl, ok.body.resultUrl, "the same result, not a new generation");
  assert.equal(balanceOf(jack.id), 100 - ok.body.cost, "charged once");
});

test("reads: balance, a job, the latest jobs, and the ledger keyset-paginated newest first", async () => {
  const kate = user(100);
  const jobs = [];
  for (const operation of ["image", "text", "image"]) {
    jobs.push((await as(kate, "charge", { body: { operation } })).body.jobId);
  }
  const balance = await as(kate, "balance", { method: "GET" });
  assert.equal(balance.status, 200);
  assert.equal(balance.body.balance, balanceOf(kate.id));

  const job = await as(kate, `jobs/${jobs[1]}`, { method: "GET" });
  assert.equal(job.body.jobId, jobs[1]);
  assert.equal(job.body.operation, "text");
  assert.equal(job.body.status, "pending");
  assert.equal(job.body.userId, kate.id);

  const latest = await as(kate, "jobs?limit=2", { method: "GET" });
  assert.deepEqual(latest.body.jobs.map((j) => j.jobId), [jobs[2], jobs[1]]);

  const ids = [];
  let before = null;
  for (let page = 0; page < 10; page++) {
    const answer = await as(kate, `ledger?limit=2${before ? `&before=${before}` : ""}`, { method: "GET" });
    assert.equal(answer.status, 200);
    assert.ok(answer.body.entries.length <= 2);
    ids.push(...answer.body.entries.map((entry) => entry.id));
    for (const entry of answer.body.entries) assert.equal(typeof entry.balanceAfter, "number");
    before = answer.body.nextBefore;
    if (before === null) break;
  }
  assert.equal(ids.length, 4, "a grant and three charges");
  assert.deepEqual([...ids].sort((a, b) => b - a), ids, "newest first, no repeats");
  assert.equal(new Set(ids).size, ids.length);
  const other = user(5);
  const theirs = await as(other, "ledger", { method: "GET" });
  assert.equal(theirs.body.entries.length, 1, "only their own entries");
  assert.ok(!theirs.body.entries.some((entry) => ids.includes(entry.id)));
});

test("service routes: complete (with a lower actual cost), refund, each once; grant replays by key", async () => {
  const liam = user(100);
  const a = (await as(liam, "charge", { body: { operation: "image" } })).body;
  const b = (await as(liam, "charge", { body: { operation: "image" } })).body;
  const admin = service();

  const done = await invoke(admin, `jobs/${a.jobId}/complete`, { body: { actualCost: 1, resultUrl: "https://r.example/1.png" } });
  assert.equal(done.status, 200, JSON.stringify(done.body));
  assert.equal(done.body.status, "completed");
  assert.equal(done.body.refunded, a.cost - 1);
  assertError(await invoke(admin, `jobs/${a.jobId}/complete`, { body: {} }), 409, "job_already_settled");

  const refunded = await invoke(admin, `jobs/${b.jobId}/refund`, { body: { reason: "bad output" } });
  assert.equal(refunded.status, 200, JSON.stringify(refunded.body));
  assert.equal(refunded.body.refunded, b.cost);
  assert.equal(refunded.body.balance, 100 - 1);
  const twice = await invoke(admin, `jobs/${b.jobId}/refund`, { body: {} });
  assertError(twice, 409, "job_already_settled");
  assertError(await invoke(admin, `jobs/${a.jobId}/refund`, { body: {} }), 409, "job_already_settled");
  assert.equal(balanceOf(liam.id), 99);

  const key = `evt_${randomUUID()}`;
  const grant = { userId: liam.id, amount: 25, reason: "stripe purchase" };
  const granted = await invoke(admin, "grant", { body: grant, headers: { "Idempotency-Key": key } });
  assert.equal(granted.status, 200);
  assert.equal(granted.body.balance, 124);
  const redelivered = await invoke(admin, "grant", { body: grant, headers: { "Idempotency-Key": key } });
  assert.equal(redelivered.body.balance, 124);
  assert.equal(balanceOf(liam.id), 124, "granted once");
  const sum = Number(sql(`SELECT sum(delta) FROM public.credit_ledger WHERE user_id = '${liam.id}'`));
  assert.equal(sum, 124, "the ledger adds up to the balance");
});

test("the per-user limit: 429 with RateLimit headers and Retry-After, and a denied request charges nothing", async () => {
  const mia = user(1000);
  const first = await as(mia, "charge", { body: { operation: "text" } });
  assert.equal(first.status, 200);
  const limit = quota(first.headers.get("RateLimit-Policy"), "user");
  assert.ok(limit >= 1, first.headers.get("RateLimit-Policy"));
  for (let i = 1; i < limit; i++) {
    assert.equal((await as(mia, "charge", { body: { operation: "text" } })).status, 200, `request ${i + 1}`);
  }
  const balance = balanceOf(mia.id);
  const denied = await as(mia, "generate", { body: { prompt: "one too many" } });
  assertError(denied, 429, "rate_limited");
  assert.equal(denied.body.error.details.policy, "user");
  assert.ok(Number(denied.headers.get("Retry-After")) >= 1);
  assert.match(denied.headers.get("RateLimit"), /"user";r=0;t=\d+/);
  assert.match(denied.headers.get("RateLimit-Policy"), new RegExp(`"user";q=${limit};w=\\d+`));
  assert.equal(balanceOf(mia.id), balance, "the denied request charged nothing");
  // Another user is not affected.
  assert.equal((await as(user(10), "charge", { body: { operation: "text" } })).status, 200);
});

test("the per-IP limit counts every user behind one address", async () => {
  const ip = freshIp();
  const first = user(100);
  first.ip = ip;
  const probe = await as(first, "charge", { body: { operation: "text" } });
  assert.equal(probe.status, 200);
  const policy = probe.headers.get("RateLimit-Policy");
  const ipLimit = quota(policy, "ip");
  const userLimit = quota(policy, "user");
  assert.ok(ipLimit >= 1 && userLimit >= 1, policy);
  let allowed = 1;
  let current = first;
  let usedByCurrent = 1;
  let denied = null;
  while (allowed <= ipLimit) {
    if (usedByCurrent === userLimit) {
      current = user(100);
      current.ip = ip;
      usedByCurrent = 0;
    }
    const answer = await as(current, "charge", { body: { operation: "text" } });
    usedByCurrent += 1;
    if (answer.status !== 200) {
      denied = answer;
      break;
    }
    allowed += 1;
  }
  assert.ok(denied, "a request past the IP limit was denied");
  assertError(denied, 429, "rate_limited");
  assert.equal(denied.body.error.details.policy, "ip");
  assert.equal(allowed, ipLimit, "exactly the IP limit was allowed");
  assert.ok(Number(denied.headers.get("Retry-After")) >= 1);
  const elsewhere = user(10);
  assert.equal((await as(elsewhere, "charge", { body: { operation: "text" } })).status, 200, "other addresses are not affected");
});
