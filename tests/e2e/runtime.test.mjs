// The local stack's edge runtime and API gateway do what Supabase's do in
// front of a function and the REST API: verify_jwt per function
// (supabase/config.toml; the test functions echo-verified and echo-open come
// from tests/e2e/supabase, served by the test runner's stack), unknown
// functions, CORS preflights passed through to the function, the JWKS of the
// asymmetric signing key, the sb_publishable_/sb_secret_ API keys.
import { test } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import {
  ANON_KEY,
  JWKS_URL,
  PUBLISHABLE_KEY,
  SECRET_KEY,
  makeUser,
  sign,
  signES256,
  signingKey,
  userClaims,
  userToken,
  URL,
} from "./helpers.mjs";

const user = makeUser("runtime");
const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
const header = (token) => JSON.parse(Buffer.from(token.split(".")[0], "base64url").toString());

/** Tokens the runtime must refuse with 401 "Invalid JWT" when verify_jwt is on. */
function badTokens() {
  const now = Math.floor(Date.now() / 1000);
  const otherKey = { ...generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({ format: "jwk" }) };
  const valid = userToken(user);
  const [h, , s] = valid.split(".");
  return {
    "HS256 with another secret": sign({ sub: user, role: "authenticated", exp: 1983812996 }, "another-secret-another-secret-another-secret"),
    "HS256 expired": sign({ sub: user, role: "authenticated", exp: now - 60 }),
    "ES256 expired": userToken(user, -60),
    "ES256 with another key, the stack's kid": signES256(userClaims(user), { ...otherKey, kid: signingKey().kid }),
    "ES256 with an unknown kid": signES256(userClaims(user), { ...otherKey, kid: "not-a-kid-of-the-stack" }),
    "ES256 with its payload edited": `${h}.${b64({ ...userClaims(user), role: "service_role" })}.${s}`,
    "alg none": `${b64({ alg: "none", typ: "JWT" })}.${b64(userClaims(user))}.`,
    "HS256 signed with the public JWK": sign(userClaims(user), JSON.stringify(publicJwk())),
    "not a JWT": "not-a-jwt",
  };
}

function publicJwk() {
  const { kty, crv, x, y, kid } = signingKey();
  return { kty, crv, x, y, kid, alg: "ES256", use: "sig", key_ops: ["verify"] };
}

const call = (name, token, init = {}) =>
  fetch(`${URL}/functions/v1/${name}/anything`, {
    ...init,
    headers: { ...(token === undefined ? {} : { Authorization: `Bearer ${token}` }), ...(init.headers ?? {}) },
  });

test("verify_jwt on: a call without Authorization is refused before the function runs", async () => {
  const response = await call("echo-verified");
  assert.equal(response.status, 401);
  assert.deepEqual(await response.json(), { msg: "Error: Missing authorization header" });
});

test("verify_jwt on: forged, expired, unknown-key, alg none and malformed tokens are refused", async () => {
  for (const [what, token] of Object.entries(badTokens())) {
    const response = await call("echo-verified", token);
    assert.equal(response.status, 401, what);
    assert.deepEqual(await response.json(), { msg: "Invalid JWT" }, what);
  }
});

test("verify_jwt on: an ES256 user token and the legacy anon key reach the function", async () => {
  for (const token of [userToken(user), ANON_KEY]) {
    const response = await call("echo-verified", token);
    assert.equal(response.status, 200);
    const body = await response.json();
    assert.equal(body.function, "echo-verified");
    assert.equal(body.authorization, `Bearer ${token}`);
  }
});

test("verify_jwt off: every request reaches the function, its Authorization untouched", async () => {
  const none = await call("echo-open");
  assert.equal(none.status, 200);
  assert.deepEqual(await none.json(), { function: "echo-open", method: "GET", path: "/echo-open/anything", authorization: null });
  for (const [what, token] of Object.entries(badTokens())) {
    const response = await call("echo-open", token);
    assert.equal(response.status, 200, what);
    assert.equal((await response.json()).authorization, `Bearer ${token}`, what);
  }
});

test("credits is deployed with verify_jwt = false: the function itself refuses a call without a token", async () => {
  const response = await fetch(`${URL}/functions/v1/credits/balance`);
  assert.equal(response.status, 401);
  const body = await response.json();
  assert.equal(body.error?.code, "unauthorized", "the function's own error, not the runtime's");
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

test("the JWKS serves the signing key's public half, cached 10 minutes, and verifies user tokens", async () => {
  const response = await fetch(JWKS_URL);
  assert.equal(response.status, 200);
  assert.match(response.headers.get("content-type"), /application\/json/);
  assert.match(response.headers.get("cache-control"), /max-age=600/);
  assert.equal(response.headers.get("access-control-allow-origin"), "*");
  const jwks = await response.json();
  assert.deepEqual(jwks, { keys: [publicJwk()] }, "the public key only: no d");
  // What a JWKS consumer (supabase-js getClaims, the Edge Function) does, with WebCrypto.
  const token = userToken(user);
  assert.deepEqual(header(token), { alg: "ES256", typ: "JWT", kid: jwks.keys[0].kid });
  const key = await crypto.subtle.importKey("jwk", jwks.keys[0], { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"]);
  const [h, p, s] = token.split(".");
  const ok = await crypto.subtle.verify({ name: "ECDSA", hash: "SHA-256" }, key, Buffer.from(s, "base64url"), Buffer.from(`${h}.${p}`));
  assert.ok(ok, "the token verifies with the served key");
  const claims = JSON.parse(Buffer.from(p, "base64url").toString());
  assert.equal(claims.iss, `${URL}/auth/v1`);
  assert.equal(claims.role, "authenticated");
  assert.equal(claims.aud, "authenticated");
  assert.equal(claims.is_anonymous, false);
});

test("the REST API takes the publishable key as anon and the secret key as the service role", async () => {
  const rpc = (key, extra = {}) =>
    fetch(`${URL}/rest/v1/rpc/get_credit_balance`, {
      method: "POST",
      headers: { apikey: key, "Content-Type": "application/json", ...extra },
      body: JSON.stringify({ p_user_id: user }),
    });
  assert.equal((await rpc("sb_publishable_not-a-key")).status, 401);
  const anon = await rpc(PUBLISHABLE_KEY);
  assert.ok([401, 403].includes(anon.status), `the publishable key is anon: ${anon.status}`);
  for (const extra of [{}, { Authorization: `Bearer ${SECRET_KEY}` }]) {
    const secret = await rpc(SECRET_KEY, extra);
    assert.equal(secret.status, 200, await secret.clone().text());
    assert.equal(await secret.json(), 0);
  }
});

test("the page is served at / with an ES256 demo token", async () => {
  const response = await fetch(`${URL}/`);
  assert.equal(response.status, 200);
  assert.match(response.headers.get("content-type"), /text\/html/);
  const html = await response.text();
  assert.doesNotMatch(html, /\{\{[A-Z_]+\}\}/, "every placeholder is filled");
  const token = html.match(/const TOKEN = "([^"]+)"/)?.[1];
  assert.ok(token, "the page holds the demo token");
  assert.deepEqual(header(token), { alg: "ES256", typ: "JWT", kid: signingKey().kid });
});
