// supabase-js, unchanged, against the local stack's /rest/v1: what an app
// written for a real Supabase project does, including its errors.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { client, makeUser, service, sign, sql, userToken, URL, ANON_KEY } from "./helpers.mjs";

const alice = makeUser("alice");
const bob = makeUser("bob");
const asAlice = client(userToken(alice));
const asBob = client(userToken(bob));
const asAnon = client();

test("the service role grants credits, and a retried grant counts once", async () => {
  const key = `grant-${randomUUID()}`;
  const args = { p_user_id: alice, p_amount: 50, p_reason: "e2e top-up", p_idempotency_key: key };
  const first = await service().rpc("grant_credits", args);
  assert.equal(first.error, null);
  assert.equal(first.data, 50);
  const again = await service().rpc("grant_credits", args);
  assert.equal(again.data, 50, "the same key does not grant twice");
  assert.equal(sql(`SELECT credits FROM public.users WHERE id = '${alice}'`), "50");
});

test("a charge returns the job and balance as a TABLE (an array of objects)", async () => {
  const { data, error, status } = await service().rpc("charge_credits", {
    p_user_id: alice,
    p_operation_type: "image",
    p_cost: 10,
  });
  assert.equal(error, null);
  assert.equal(status, 200);
  assert.ok(Array.isArray(data));
  assert.equal(data[0].new_balance, 40);
  assert.equal(data[0].replayed, false);
  assert.match(data[0].job_id, /^[0-9a-f-]{36}$/);
});

test("insufficient credits is a 402 with machine-readable details, and charges nothing", async () => {
  const { data, error, status } = await service().rpc("charge_credits", {
    p_user_id: alice,
    p_operation_type: "image",
    p_cost: 1000,
  });
  assert.equal(data, null);
  assert.equal(status, 402);
  assert.equal(error.code, "PT402");
  assert.equal(error.hint, "insufficient_credits");
  assert.deepEqual(JSON.parse(error.details), { balance: 40, needed: 1000 });
  assert.match(error.message, /^Insufficient credits: has 40 needs 1000/);
  assert.equal(sql(`SELECT credits FROM public.users WHERE id = '${alice}'`), "40");
});

test("anon and signed-in users cannot call the service functions", async () => {
  const args = { p_user_id: alice, p_amount: 1000, p_reason: "free money" };
  const anon = await asAnon.rpc("grant_credits", args);
  assert.equal(anon.status, 401, "anon gets PostgREST's 401 for 42501");
  assert.equal(anon.error.code, "42501");
  const user = await asAlice.rpc("grant_credits", args);
  assert.equal(user.status, 403, "a signed-in user gets 403 for 42501");
  assert.equal(user.error.code, "42501");
  const refund = await asAlice.rpc("refund_credits", { p_user_id: alice, p_job_id: randomUUID(), p_amount: 5, p_reason: "x" });
  assert.equal(refund.status, 403);
  assert.equal(sql(`SELECT credits FROM public.users WHERE id = '${alice}'`), "40", "and nothing changed");
});

test("a user reads their own balance, jobs and ledger with from().select(), and nothing of anyone else's", async () => {
  const own = await asAlice.from("users").select("id, credits");
  assert.equal(own.error, null);
  assert.deepEqual(own.data, [{ id: alice, credits: 40 }]);

  const ledger = await asAlice.from("credit_ledger").select("delta, balance_after").order("id", { ascending: true });
  assert.equal(ledger.error, null);
  assert.deepEqual(ledger.data, [{ delta: 50, balance_after: 50 }, { delta: -10, balance_after: 40 }]);

  const jobs = await asAlice.from("generation_jobs").select("operation_type, cost, status").eq("user_id", alice);
  assert.deepEqual(jobs.data, [{ operation_type: "image", cost: 10, status: "pending" }]);

  const bobsView = await asBob.from("credit_ledger").select("id").eq("user_id", alice);
  assert.deepEqual(bobsView.data, [], "bob sees none of alice's ledger");
  const bobsJobs = await asBob.from("generation_jobs").select("id");
  assert.deepEqual(bobsJobs.data, []);
  const bobsUsers = await asBob.from("users").select("id");
  assert.deepEqual(bobsUsers.data, [{ id: bob }]);
});

test("ordering and limits work as PostgREST's", async () => {
  const { data } = await asAlice.from("credit_ledger").select("delta").order("id", { ascending: false }).limit(1);
  assert.deepEqual(data, [{ delta: -10 }]);
});

test("anon sees no one's balance, and no client sees rate-limit state", async () => {
  const anonUsers = await asAnon.from("users").select("id, credits");
  assert.ok(anonUsers.error !== null || anonUsers.data.length === 0, "anon reads no balances");
  const limits = await asAlice.from("rate_limits").select("*");
  assert.ok(limits.error !== null || limits.data.length === 0, "rate_limits is invisible to users");
});

test("no client can write a table directly", async () => {
  const update = await asAlice.from("users").update({ credits: 1_000_000 }).eq("id", alice);
  assert.ok(update.error, "the update is refused");
  assert.equal(sql(`SELECT credits FROM public.users WHERE id = '${alice}'`), "40");
});

test("an unknown function is PostgREST's 404 PGRST202", async () => {
  const { error, status } = await service().rpc("no_such_function", { p_x: 1 });
  assert.equal(status, 404);
  assert.equal(error.code, "PGRST202");
});

test("a token signed with another secret is refused with 401", async () => {
  const forged = sign({ sub: alice, role: "service_role", exp: 1983812996 }, "not-the-secret-not-the-secret-not-the-secret");
  const { error, status } = await client(forged).rpc("get_credit_balance", { p_user_id: alice });
  assert.equal(status, 401);
  assert.equal(error.code, "PGRST301");
});

test("the API gateway wants a project key in apikey", async () => {
  const none = await fetch(`${URL}/rest/v1/rpc/no_such_function`);
  assert.equal(none.status, 401);
  assert.deepEqual(await none.json(), { message: "No API key found in request" });
  const wrong = await fetch(`${URL}/rest/v1/rpc/no_such_function`, { headers: { apikey: "nope" } });
  assert.equal(wrong.status, 401);
  assert.deepEqual(await wrong.json(), { message: "Invalid API key" });
  const anon = await fetch(`${URL}/rest/v1/rpc/no_such_function`, { headers: { apikey: ANON_KEY } });
  assert.equal(anon.status, 404, "with the anon key the request reaches PostgREST");
  assert.equal((await anon.json()).code, "PGRST202");
});
