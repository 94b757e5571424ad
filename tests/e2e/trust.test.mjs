// Who the caller is, through the whole local stack as on a current Supabase
// project: the credits function deployed with verify_jwt = false (nothing in
// front of it checks tokens), user tokens ES256-signed by the stack's Auth
// key and published at /auth/v1/.well-known/jwks.json, the function
// verifying every token itself. Hostile tokens never reach the database as
// a user; the client address is the hop a trusted proxy appended; refused
// work spends no limit. (The test stack runs the function with
// CREDITGATE_TRUSTED_PROXY_HOPS=2: the test client stands in for a CDN the
// deployment trusts, whose hop is the one left of the stack's own.)
import { test } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync, randomUUID } from "node:crypto";
import {
  client,
  makeUser,
  PUBLISHABLE_KEY,
  SECRET_KEY,
  sign,
  signES256,
  signingKey,
  sql,
  URL,
  userClaims,
  userToken,
} from "./helpers.mjs";

const balanceOf = (id) => Number(sql(`SELECT credits FROM public.users WHERE id = '${id}'`));
const ledgerCount = (id) => Number(sql(`SELECT count(*) FROM public.credit_ledger WHERE user_id = '${id}'`));
const limitRows = (pattern) =>
  Number(sql(`SELECT count(*) FROM public.rate_limits WHERE key LIKE '${pattern.replaceAll("'", "''")}'`));
const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");

function userWith(credits) {
  const id = makeUser("trust");
  if (credits > 0) sql(`SELECT public.grant_credits('${id}', ${credits}, 'e2e trust', NULL, '{}'::jsonb)`);
  return id;
}

/** A raw call to the function, as any HTTP client (or attacker) makes it. */
async function call(path, { token, method = "POST", body, headers = {} } = {}) {
  const response = await fetch(`${URL}/functions/v1/credits/${path}`, {
    method,
    headers: {
      ...(token ? { Authorization: `Bearer ${token}` } : {}),
      ...(body === undefined ? {} : { "Content-Type": "application/json" }),
      ...headers,
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, headers: response.headers, body: text ? JSON.parse(text) : null };
}

test("supabase-js with the stack's ES256 user token: the function verifies it against the JWKS", async () => {
  const id = userWith(21);
  const jwks = await (await fetch(`${URL}/auth/v1/.well-known/jwks.json`)).json();
  assert.ok(jwks.keys.some((key) => key.kid === signingKey().kid && key.kty === "EC" && !("d" in key)));
  const header = JSON.parse(Buffer.from(userToken(id).split(".")[0], "base64url").toString());
  assert.equal(header.alg, "ES256");
  const { data, error } = await client(userToken(id)).functions.invoke("credits/balance", { method: "GET" });
  assert.equal(error, null, String(error));
  assert.deepEqual(data, { balance: 21 });
});

test("verify_jwt = false: requests without a token reach the function, which refuses them itself", async () => {
  const answer = await call("balance", { method: "GET" });
  assert.equal(answer.status, 401);
  assert.equal(answer.body.error.code, "unauthorized", "the function's error shape, not the runtime's");
});

test("hostile tokens through the stack are refused and spend nothing", async () => {
  const victim = userWith(40);
  const before = ledgerCount(victim);
  const stackKey = signingKey();
  const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const otherJwk = { ...privateKey.export({ format: "jwk" }), kid: stackKey.kid };
  const claims = userClaims(victim);
  const now = Math.floor(Date.now() / 1000);
  const publicJwk = { kty: stackKey.kty, crv: stackKey.crv, x: stackKey.x, y: stackKey.y };
  const hostile = {
    "another key under the stack's kid": signES256(claims, otherJwk),
    "alg none": `${part({ alg: "none", typ: "JWT" })}.${part(claims)}.`,
    "HS256 keyed with the public key": sign(claims, JSON.stringify(publicJwk), { alg: "HS256", typ: "JWT", kid: stackKey.kid }),
    "HS256 with the legacy secret (the function has none)": sign(claims),
    "expired": signES256({ ...claims, exp: now - 10 }),
    "nbf ahead": signES256({ ...claims, nbf: now + 3600 }),
    "another audience": signES256({ ...claims, aud: "not-us" }),
    "an unknown kid": signES256(claims, stackKey, { alg: "ES256", typ: "JWT", kid: randomUUID() }),
    "the publishable key as a user": PUBLISHABLE_KEY,
  };
  for (const [name, token] of Object.entries(hostile)) {
    const charge = await call("charge", { token, body: { operation: "image" }, headers: { "X-Forwarded-For": "198.51.100.1" } });
    assert.equal(charge.status, 401, `${name}: ${JSON.stringify(charge.body)}`);
    const read = await call("balance", { token, method: "GET" });
    assert.equal(read.status, 401, `${name}: ${JSON.stringify(read.body)}`);
  }
  // A token the stack's key really signed, claiming the service role.
  const forgedRole = signES256({ ...claims, role: "service_role" });
  const grant = await call("grant", { token: forgedRole, body: { userId: victim, amount: 1000, reason: "forged" } });
  assert.equal(grant.status, 401, JSON.stringify(grant.body));
  assert.equal(balanceOf(victim), 40);
  assert.equal(ledgerCount(victim), before);
  // The real secret key is the service role.
  const real = await call("grant", { token: SECRET_KEY, body: { userId: victim, amount: 2, reason: "real" } });
  assert.equal(real.status, 200, JSON.stringify(real.body));
  assert.equal(balanceOf(victim), 42);
});

test("the IP limit keys on the trusted hop, never on what the client wrote in front of it", async () => {
  const id = userWith(50);
  const token = userToken(id);
  const cdnHop = `198.51.${Math.floor(Math.random() * 250)}.${Math.floor(Math.random() * 250) + 1}`;
  for (let i = 1; i <= 3; i++) {
    const answer = await call("charge", { token, body: { operation: "text" }, headers: { "X-Forwarded-For": `203.0.113.${i}, ${cdnHop}` } });
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
  }
  assert.equal(limitRows("creditgate:ip:203.0.113.%"), 0, "no bucket for what the client wrote");
  assert.equal(limitRows(`creditgate:ip:${cdnHop}`), 1, "one bucket for the trusted hop");
  // IPv6 by /64 through the stack too.
  const block = `2001:db8:${Math.floor(Math.random() * 0xfff0).toString(16)}:7`;
  for (const address of [`${block}::1`, `${block}:abcd::2`]) {
    const answer = await call("charge", { token, body: { operation: "text" }, headers: { "X-Forwarded-For": address } });
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
  }
  assert.equal(limitRows(`creditgate:ip:${block}::/64`), 1);
});

test("refused work spends no limit: a 402, a replay and a 422 leave no trace in the limits", async () => {
  const broke = userWith(0);
  for (let i = 0; i < 3; i++) {
    const answer = await call("charge", { token: userToken(broke), body: { operation: "image" }, headers: { "X-Forwarded-For": "192.0.2.77" } });
    assert.equal(answer.status, 402, JSON.stringify(answer.body));
  }
  assert.equal(limitRows(`creditgate:user:${broke}`), 0, "a 402 spends no user limit");
  const rich = userWith(30);
  const token = userToken(rich);
  const headers = { "Idempotency-Key": `trust-${randomUUID()}`, "X-Forwarded-For": "192.0.2.78" };
  const first = await call("charge", { token, body: { operation: "image" }, headers });
  assert.equal(first.status, 200, JSON.stringify(first.body));
  const remaining = () => Number(/"user";r=(\d+)/.exec(first.headers.get("ratelimit") ?? "")?.[1]);
  const afterFirst = remaining();
  const replay = await call("charge", { token, body: { operation: "image" }, headers });
  assert.equal(replay.body.replayed, true);
  const reused = await call("charge", { token, body: { operation: "text" }, headers });
  assert.equal(reused.status, 422);
  const next = await call("charge", { token, body: { operation: "text" }, headers: { "X-Forwarded-For": "192.0.2.78" } });
  assert.equal(next.status, 200, JSON.stringify(next.body));
  const afterNext = Number(/"user";r=(\d+)/.exec(next.headers.get("ratelimit") ?? "")?.[1]);
  assert.equal(afterNext, afterFirst - 1, "only the two charges were counted");
});
