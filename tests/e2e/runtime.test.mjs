// The local stack's edge runtime and API gateway do what Supabase's do in
// front of a function: verify_jwt (supabase/config.toml), unknown functions,
// CORS preflights passed through to the function.
import { test } from "node:test";
import assert from "node:assert/strict";
import { makeUser, sign, userToken, URL } from "./helpers.mjs";

const user = makeUser("runtime");

test("verify_jwt: a call without Authorization is refused before the function runs", async () => {
  const response = await fetch(`${URL}/functions/v1/credits/balance`);
  assert.equal(response.status, 401);
  assert.deepEqual(await response.json(), { msg: "Error: Missing authorization header" });
});

test("verify_jwt: a token signed with another secret, or expired, is refused", async () => {
  const forged = sign({ sub: user, role: "authenticated", exp: 1983812996 }, "another-secret-another-secret-another-secret");
  const expired = sign({ sub: user, role: "authenticated", exp: Math.floor(Date.now() / 1000) - 60 });
  for (const token of [forged, expired, "not-a-jwt"]) {
    const response = await fetch(`${URL}/functions/v1/credits/balance`, { headers: { Authorization: `Bearer ${token}` } });
    assert.equal(response.status, 401);
    assert.deepEqual(await response.json(), { msg: "Invalid JWT" });
  }
});

test("a valid user token reaches the function", async () => {
  const response = await fetch(`${URL}/functions/v1/credits/balance`, {
    headers: { Authorization: `Bearer ${userToken(user)}` },
  });
  assert.equal(response.status, 200);
  assert.deepEqual(await response.json(), { balance: 0 });
});

test("an unknown function is a 404", async () => {
  const response = await fetch(`${URL}/functions/v1/no-such-function`, {
    headers: { Authorization: `Bearer ${userToken(user)}` },
  });
  assert.equal(response.status, 404);
});

test("a CORS preflight needs no token and is answered by the function", async () => {
  const response = await fetch(`${URL}/functions/v1/credits/charge`, {
    method: "OPTIONS",
    headers: { Origin: "http://localhost:3000", "Access-Control-Request-Method": "POST" },
  });
  assert.ok(response.status === 200 || response.status === 204, `status ${response.status}`);
  assert.equal(response.headers.get("access-control-allow-origin"), "*");
  assert.match(response.headers.get("access-control-allow-headers") ?? "", /authorization/i);
});

test("the page is served at /", async () => {
  const response = await fetch(`${URL}/`);
  assert.equal(response.status, 200);
  assert.match(response.headers.get("content-type"), /text\/html/);
  assert.doesNotMatch(await response.text(), /\{\{[A-Z_]+\}\}/, "every placeholder is filled");
});
