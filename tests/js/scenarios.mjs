// The built package (pkg/) against a running stack: the scenarios both
// `node --test` (node.test.mjs) and `deno test` (deno.test.mjs) run, each
// with the package as that runtime imports it.
//
// Needs: the API (CREDITGATE_URL, default http://127.0.0.1:54321) with the
// service-role key (CREDITGATE_SERVICE_ROLE_KEY, default the local one), and
// psql access to its database (CREDITGATE_DB_URL) to create auth users.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";

const env = (name, fallback) => globalThis.process?.env?.[name] ?? fallback;

export const API_URL = env("CREDITGATE_URL", "http://127.0.0.1:54321");
export const SERVICE_ROLE_KEY = env(
  "CREDITGATE_SERVICE_ROLE_KEY",
  "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZpY2Vfcm9sZSIsImV4cCI6MTk4MzgxMjk5Nn0.EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU",
);
export const DB_URL = env("CREDITGATE_DB_URL", "postgresql://postgres:postgres@127.0.0.1:54322/postgres");

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** A fresh auth user (its public.users row comes from creditgate's trigger). */
export function createUser() {
  const id = crypto.randomUUID();
  execFileSync("psql", [DB_URL, "-v", "ON_ERROR_STOP=1", "-qAt", "-c",
    `INSERT INTO auth.users (id, email) VALUES ('${id}', '${id}@creditgate.test')`]);
  return id;
}

/** A fresh user holding `credits` credits, granted through the client. */
async function userWith(credits, client) {
  const userId = createUser();
  const { balance } = await client.grant({ userId, amount: credits, reason: "test top-up" });
  assert.equal(balance, credits);
  return userId;
}

/** Asserts `promise` rejects with a CreditError of `code`, and returns it. */
async function rejectsWith(promise, code, CreditError) {
  const error = await promise.then(
    (value) => assert.fail(`expected ${code}, got ${JSON.stringify(value)}`),
    (error) => error,
  );
  assert.ok(error instanceof CreditError, `not a CreditError: ${error}`);
  assert.ok(error instanceof Error);
  assert.equal(error.name, "CreditError");
  assert.equal(error.code, code, error.message);
  return error;
}

/** Parses `"name";a=1;b=2` into { name, a: 1, b: 2 }. */
function sfItem(value) {
  const match = /^"([^"]*)"((?:;[a-z]+=\d+)*)$/.exec(value);
  assert.ok(match, `not a structured field item: ${value}`);
  const params = Object.fromEntries(match[2].split(";").slice(1).map((p) => p.split("=")).map(([k, v]) => [k, Number(v)]));
  return { name: match[1], ...params };
}

/** The scenarios: [name, async (pkg) => ...], pkg being the imported package. */
export const scenarios = [
  ["a charge holds credits, complete captures them, actualCost refunds the rest", async ({ CreditClient }) => {
    const credits = new CreditClient({ url: API_URL, serviceRoleKey: SERVICE_ROLE_KEY });
    const userId = await userWith(10, credits);
    const charge = await credits.charge({ userId, operation: "image_generation", cost: 3, metadata: { model: "test" } });
    assert.match(charge.jobId, UUID);
    assert.equal(charge.balance, 7);
    assert.equal(charge.replayed, false);
    assert.equal(await credits.balance(userId), 7);
    const done = await credits.complete({ jobId: charge.jobId, resultUrl: "https://example.test/1.png", actualCost: 1 });
    assert.deepEqual(done, { jobId: charge.jobId, status: "completed", balance: 9, refunded: 2 });
    assert.equal(await credits.balance(userId), 9);
  }],

  ["the url is accepted with /rest/v1 and a trailing slash", async ({ CreditClient }) => {
    const credits = new CreditClient({ url: `${API_URL}/rest/v1/`, serviceRoleKey: SERVICE_ROLE_KEY });
    assert.equal(credits.restUrl, `${API_URL}/rest/v1`);
    const userId = await userWith(4, credits);
    assert.equal(await credits.balance(userId), 4);
  }],

  ["a retry with the same idempotency key replays and charges nothing", async ({ CreditClient, CreditError }) => {
    const credits = new CreditClient({ url: API_URL, serviceRoleKey: SERVICE_ROLE_KEY });
    const userId = await userWith(10, credits);
    const request = { userId, operation: "transcription", cost: 4, idempotencyKey: `req-${crypto.randomUUID()}` };
    const first = await credits.charge(request);
    const again = await credits.charge(request);
    assert.equal(first.replayed, false);
    assert.equal(again.replayed, true);
    assert.equal(again.jobId, first.jobId);
    assert.equal(again.balance, 6);
    assert.equal(await credits.balance(userId), 6, "charged once");
    const reused = await rejectsWith(credits.charge({ ...request, cost: 5 }), "idempotency_key_reused", CreditError);
    assert.equal(reused.status, 422);
    assert.equal(reused.retryable, false);
    assert.equal(await credits.balance(userId), 6, "and the balance is unchanged");
  }],

  ["insufficient credits is a 402 CreditError with balance and needed", async ({ CreditClient, CreditError }) => {
    const credits = new CreditClient({ url: API_URL, serviceRoleKey: SERVICE_ROLE_KEY });
    const userId = await userWith(2, credits);
    const error = await rejectsWith(credits.charge({ userId, operation: "image_generation", cost: 5 }), "insufficient_credits", CreditError);
    assert.equal(error.status, 402);
    assert.equal(error.retryable, false);
    assert.equal(error.details.balance, 2);
    assert.equal(error.details.needed, 5);
    assert.equal(await credits.balance(userId), 2, "and the balance is unchanged");
  }],

  ["a second refund of the same job is refused", async ({ CreditClient, CreditError }) => {
    const credits = new CreditClient({ url: API_URL, serviceRoleKey: SERVICE_ROLE_KEY });
    const userId = await userWith(10, credits);
    const { jobId } = await credits.charge({ userId, operation: "llm_call", cost: 6 });
    assert.deepEqual(await credits.refund({ userId, jobId, reason: "generation failed" }), { balance: 10 });
    const error = await rejectsWith(credits.refund({ userId, jobId, reason: "again" }), "job_already_settled", CreditError);
    assert.equal(error.status, 409);
    assert.equal(await credits.balance(userId), 10, "and the balance is unchanged");
    await rejectsWith(credits.complete({ jobId }), "job_already_settled", CreditError);
  }],

  ["unknown users and jobs are 404s", async ({ CreditClient, CreditError }) => {
    const credits = new CreditClient({ url: API_URL, serviceRoleKey: SERVICE_ROLE_KEY });
    const stranger = crypto.randomUUID();
    const error = await rejectsWith(credits.charge({ userId: stranger, operation: "x", cost: 1 }), "user_not_found", CreditError);
    assert.equal(error.status, 404);
    const userId = await userWith(1, credits);
    await rejectsWith(credits.refund({ userId, jobId: crypto.randomUUID(), reason: "r" }), "job_not_found", CreditError);
  }],

  ["a rate-limit denial is a value, with IETF headers and Retry-After", async ({ CreditClient, rateLimitHeaders }) => {
    const credits = new CreditClient({ url: API_URL, serviceRoleKey: SERVICE_ROLE_KEY });
    const key = `test:${crypto.randomUUID()}`;
    const limit = { key, limit: 2, windowSeconds: 60 };
    const first = await credits.limit(limit);
    const second = await credits.limit(limit);
    const denied = await credits.limit(limit);
    assert.deepEqual([first.success, second.success, denied.success], [true, true, false]);
    assert.deepEqual([first.remaining, second.remaining, denied.remaining], [1, 0, 0]);
    assert.equal(first.retryAfter, 0);
    // The SQL's sliding window has 20 buckets: a wait may exceed the window
    // by up to one bucket (W/20), plus rounding up to whole seconds.
    const latest = 60 + 60 / 20 + 1;
    assert.ok(denied.retryAfter >= 1 && denied.retryAfter <= latest, `retryAfter ${denied.retryAfter}`);
    assert.ok(denied.reset >= 1 && denied.reset <= latest, `reset ${denied.reset}`);
    assert.equal(denied.windowSeconds, 60);

    const headers = rateLimitHeaders(denied, "per-key");
    assert.deepEqual(sfItem(headers["RateLimit-Policy"]), { name: "per-key", q: 2, w: 60 });
    assert.deepEqual(sfItem(headers["RateLimit"]), { name: "per-key", r: 0, t: denied.reset });
    assert.equal(headers["Retry-After"], String(denied.retryAfter));
    const allowed = rateLimitHeaders(first);
    assert.deepEqual(sfItem(allowed["RateLimit"]), { name: "default", r: 1, t: first.reset });
    assert.equal("Retry-After" in allowed, false);
    // The headers are valid for the platform's own Headers class.
    assert.equal(new Headers(headers).get("retry-after"), String(denied.retryAfter));
  }],

  ["chargeWithLimit charges when allowed and changes nothing when denied", async ({ CreditClient, rateLimitHeaders }) => {
    const credits = new CreditClient({ url: API_URL, serviceRoleKey: SERVICE_ROLE_KEY });
    const userId = await userWith(10, credits);
    const request = { userId, operation: "image_generation", cost: 3, limitKey: `user:${userId}`, limit: 1, windowSeconds: 3600 };
    const allowed = await credits.chargeWithLimit(request);
    assert.equal(allowed.success, true);
    assert.match(allowed.jobId, UUID);
    assert.equal(allowed.balance, 7);
    const denied = await credits.chargeWithLimit(request);
    assert.equal(denied.success, false);
    assert.equal(denied.jobId, null);
    assert.equal(denied.balance, null);
    assert.ok(denied.retryAfter >= 1);
    assert.equal(rateLimitHeaders(denied)["Retry-After"], String(denied.retryAfter));
    assert.equal(await credits.balance(userId), 7, "a denial charges nothing");
  }],

  ["a unit limit reserves the estimate; complete({actualUnits}) gives the difference back", async ({ CreditClient }) => {
    const credits = new CreditClient({ url: API_URL, serviceRoleKey: SERVICE_ROLE_KEY });
    const userId = await userWith(10, credits);
    const request = { userId, operation: "text", cost: 1, limitKey: `tokens:${userId}`, limit: 1000, windowSeconds: 60, weight: 800, units: true };
    const first = await credits.chargeWithLimit(request);
    assert.equal(first.success, true);
    assert.equal(first.remaining, 200);
    assert.equal((await credits.chargeWithLimit(request)).success, false, "800 more do not fit");
    await credits.complete({ jobId: first.jobId, actualUnits: 150 });
    const again = await credits.chargeWithLimit(request);
    assert.equal(again.success, true, "650 came back: 150 + 800 fit");
    assert.equal(again.remaining, 50);
  }],

  ["run completes the job with what the callback returned", async ({ CreditClient }) => {
    const credits = new CreditClient({ url: API_URL, serviceRoleKey: SERVICE_ROLE_KEY });
    const userId = await userWith(10, credits);
    const request = { userId, operation: "image_generation", cost: 4, idempotencyKey: crypto.randomUUID() };
    const result = await credits.run(request, async (job) => {
      assert.equal(job.balance, 6);
      assert.equal(await credits.balance(userId), 6, "held while the work runs");
      return { resultUrl: "https://example.test/out.png", actualCost: 3, image: "bytes" };
    });
    assert.equal(result.value.image, "bytes");
    assert.equal(result.completion.status, "completed");
    assert.equal(result.completion.refunded, 1);
    assert.equal(result.completion.jobId, result.charge.jobId);
    assert.equal(await credits.balance(userId), 7);
  }],

  ["run refunds the hold when the callback throws, and rethrows its error", async ({ CreditClient, CreditError }) => {
    const credits = new CreditClient({ url: API_URL, serviceRoleKey: SERVICE_ROLE_KEY });
    const userId = await userWith(10, credits);
    const failure = new TypeError("the generator is down");
    let seenJob;
    const caught = await credits.run({ userId, operation: "image_generation", cost: 4, idempotencyKey: crypto.randomUUID() }, async (job) => {
      seenJob = job;
      assert.equal(await credits.balance(userId), 6);
      throw failure;
    }).then(() => assert.fail("run should reject"), (error) => error);
    assert.equal(caught, failure, "the callback's own error, unchanged");
    assert.equal(await credits.balance(userId), 10, "the hold was refunded");
    await rejectsWith(credits.refund({ userId, jobId: seenJob.jobId, reason: "again" }), "job_already_settled", CreditError);
    // A synchronous throw is refunded the same way.
    await assert.rejects(credits.run({ userId, operation: "x", cost: 2 }, () => { throw new Error("sync"); }), /sync/);
    assert.equal(await credits.balance(userId), 10);
  }],

  ["invalid input is refused before any request, without killing the module", async ({ CreditClient, CreditError }) => {
    // Nothing listens on port 9: if a request were sent, the error would be "network".
    const offline = new CreditClient({ url: "http://127.0.0.1:9", serviceRoleKey: SERVICE_ROLE_KEY });
    const userId = crypto.randomUUID();
    const cyclic = {};
    cyclic.self = cyclic;
    const bad = [
      [offline.charge({ userId: "", operation: "x", cost: 1 }), "userId"],
      [offline.charge({ userId, operation: "x", cost: 0 }), "cost"],
      [offline.charge({ userId, operation: "x", cost: 1.5 }), "cost"],
      [offline.charge({ userId, operation: "x", cost: 1, idempotencyKey: "k".repeat(256) }), "idempotencyKey"],
      [offline.charge({ userId, operation: "o".repeat(65), cost: 1 }), "operation"],
      [offline.charge({ userId, operation: "x", cost: 1, metadata: cyclic }), "request"],
      [offline.charge({ userId, operation: "x", cost: 1, idempotencykey: "typo" }), "idempotencykey"],
      [offline.limit({ key: "k", limit: 2, windowSeconds: 86401 }), "windowSeconds"],
      [offline.run({ userId, operation: "x", cost: 1 }, "not a function"), "work"],
      [offline.balance(42), "userId"],
    ];
    for (const [promise, field] of bad) {
      const error = await rejectsWith(promise, "invalid_argument", CreditError);
      assert.equal(error.status, 400);
      assert.equal(error.details.field, field, error.message);
    }
    assert.throws(() => new CreditClient({ url: "ftp://x", serviceRoleKey: "k" }), (e) => e instanceof CreditError && e.details.field === "url");
    assert.throws(() => new CreditClient({}), (e) => e instanceof CreditError && e.code === "invalid_argument");
    // A valid request does reach the (absent) network: proof the above did not.
    const network = await rejectsWith(offline.balance(userId), "network", CreditError);
    assert.equal(network.retryable, true);
    assert.equal(network.status, 503);
    // And the module still works after all of it.
    const credits = new CreditClient({ url: API_URL, serviceRoleKey: SERVICE_ROLE_KEY });
    assert.equal(await credits.balance(await userWith(3, credits)), 3);
  }],

  ["a wrong key is unauthorized, not a crash", async ({ CreditClient, CreditError }) => {
    const credits = new CreditClient({ url: API_URL, serviceRoleKey: "not-a-jwt" });
    const error = await rejectsWith(credits.balance(crypto.randomUUID()), "unauthorized", CreditError);
    assert.equal(error.status, 401);
  }],

  ["tokenBucket bursts then refills; peek, usage, reset, block and unblock a key", async ({ CreditClient, CreditError }) => {
    const credits = new CreditClient({ url: API_URL, serviceRoleKey: SERVICE_ROLE_KEY });
    const key = `js:${crypto.randomUUID()}`;
    const bucket = { key, capacity: 2, refillPerSecond: 0.01 };
    assert.equal((await credits.tokenBucket(bucket)).remaining, 1);
    assert.equal((await credits.tokenBucket(bucket)).success, true);
    const refused = await credits.tokenBucket(bucket);
    assert.equal(refused.success, false);
    assert.ok(refused.retryAfter > 0 && refused.retryAfter <= 100, String(refused.retryAfter));
    assert.equal(refused.windowSeconds, null, "a bucket has no window");

    await credits.limit({ key, limit: 3, windowSeconds: 60 });
    const peek = await credits.peekLimit({ key, limit: 3, windowSeconds: 60 });
    assert.equal(peek.remaining, 2);
    assert.equal((await credits.peekLimit({ key, limit: 3, windowSeconds: 60 })).remaining, 2, "peek spends nothing");
    const usage = await credits.limitUsage({ prefix: key });
    assert.deepEqual(usage.map((row) => [row.key, row.limit, row.windowSeconds, row.used]), [[key, 3, 60, 1]]);
    assert.deepEqual(await credits.resetLimit({ key }), { key, cleared: 2 });
    assert.equal((await credits.tokenBucket(bucket)).remaining, 1, "reset refilled the bucket too");

    const block = await credits.blockLimitKey({ key, reason: "testing" });
    assert.deepEqual(block, { key, until: null, reason: "testing" });
    const blocked = await rejectsWith(credits.limit({ key, limit: 3, windowSeconds: 60 }), "blocked", CreditError);
    assert.equal(blocked.status, 403);
    assert.equal(blocked.retryable, false);
    assert.deepEqual(blocked.details, { key, until: null, reason: "testing" });
    assert.deepEqual(await credits.unblockLimitKey({ key }), { key, unblocked: true });
    assert.equal((await credits.limit({ key, limit: 3, windowSeconds: 60 })).success, true);
    await rejectsWith(credits.tokenBucket({ key: "creditgate:x", capacity: 1, refillPerSecond: 1 }), "invalid_argument", CreditError);
  }],

  ["tokenBucket is exact under concurrency: 40 requests at once, a bucket of 7, exactly 7 allowed", async ({ CreditClient }) => {
    const credits = new CreditClient({ url: API_URL, serviceRoleKey: SERVICE_ROLE_KEY });
    const bucket = { key: `js:burst:${crypto.randomUUID()}`, capacity: 7, refillPerSecond: 0.00001 };
    const results = await Promise.all(Array.from({ length: 40 }, () => credits.tokenBucket(bucket)));
    assert.equal(results.filter((result) => result.success).length, 7);
    assert.ok(results.filter((result) => !result.success).every((result) => result.remaining === 0 && result.retryAfter > 0));
  }],
];
