// Who the caller is, and what a caller can spend, through the built
// package's handler under Deno, as on a current Supabase project: the
// function deployed with verify_jwt = false, user tokens signed with
// asymmetric keys (ES256, RS256) published as a JWKS, verified by the
// handler with WebCrypto. Keys are made here with WebCrypto and served by a
// JWKS server the test runs (so it can rotate them, count fetches, and go
// away); the database is the running stack's (see helpers.ts).
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { createHandler } from "../../pkg-function/deno.js";
import {
  b64,
  balanceOf,
  call,
  env,
  JWT_SECRET,
  ledgerRows,
  makeUser,
  now,
  request,
  SERVICE_ROLE_KEY,
  sign,
  sql,
  userToken,
} from "./helpers.ts";

type KeyPair = { kid: string; alg: "ES256" | "RS256"; privateKey: CryptoKey; jwk: JsonWebKey & { kid: string } };

async function makeKey(kid: string, alg: "ES256" | "RS256" = "ES256"): Promise<KeyPair> {
  const params = alg === "ES256"
    ? { name: "ECDSA", namedCurve: "P-256" }
    : { name: "RSASSA-PKCS1-v1_5", modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" };
  const pair = await crypto.subtle.generateKey(params, true, ["sign", "verify"]) as CryptoKeyPair;
  const jwk = await crypto.subtle.exportKey("jwk", pair.publicKey);
  delete jwk.key_ops;
  delete jwk.ext;
  return { kid, alg, privateKey: pair.privateKey, jwk: { ...jwk, kid, alg, use: "sig" } };
}

/** A JWT signed by `key` (header `kid` and `alg` overridable). */
async function signWith(key: KeyPair, claims: Record<string, unknown>, header: Record<string, unknown> = {}) {
  const input = `${b64({ alg: key.alg, typ: "JWT", kid: key.kid, ...header })}.${b64(claims)}`;
  const algorithm = key.alg === "ES256" ? { name: "ECDSA", hash: "SHA-256" } : { name: "RSASSA-PKCS1-v1_5" };
  const signature = await crypto.subtle.sign(algorithm, key.privateKey, new TextEncoder().encode(input));
  return `${input}.${Buffer.from(signature).toString("base64url")}`;
}

const userClaims = (user: string, extra: Record<string, unknown> = {}) => ({
  sub: user,
  role: "authenticated",
  aud: "authenticated",
  iat: now(),
  exp: now() + 600,
  ...extra,
});

/** A JWKS endpoint serving `keys`, counting fetches; `down()` makes it fail. */
function startJwks(keys: KeyPair[]) {
  let fetches = 0;
  let failing = false;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => {
    fetches += 1;
    if (failing) return new Response("unavailable", { status: 503 });
    return Response.json({ keys: keys.map((key) => key.jwk) });
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}/auth/v1/.well-known/jwks.json`,
    fetches: () => fetches,
    rotateIn: (key: KeyPair) => keys.push(key),
    down: () => (failing = true),
    stop: () => server.shutdown(),
  };
}

/** A handler as on a new-keys project: no legacy secret, the JWKS at `url`. */
function asymmetricHandler(url: string, overrides: Record<string, string> = {}) {
  const settings: Record<string, string> = { ...env(), CREDITGATE_JWKS_URL: url, ...overrides };
  delete settings.CREDITGATE_JWT_SECRET;
  return createHandler(settings);
}

const balance = (handler: { handle(r: Request): Promise<Response> }, token: string) =>
  call(handler, request("/balance", token, { method: "GET" }));

Deno.test("ES256 and RS256 user tokens from the project's JWKS are verified, fetched once and cached", async () => {
  const ec = await makeKey("ec-1");
  const rsa = await makeKey("rsa-1", "RS256");
  const jwks = startJwks([ec, rsa]);
  try {
    const handler = asymmetricHandler(jwks.url);
    const user = await makeUser(12);
    for (const key of [ec, rsa, ec]) {
      const answer = await balance(handler, await signWith(key, userClaims(user)));
      assert.equal(answer.status, 200, `${key.alg}: ${JSON.stringify(answer.body)}`);
      assert.equal(answer.body.balance, 12);
    }
    assert.equal(jwks.fetches(), 1, "one fetch serves every later token");
    // A key rotated in is found by refetching on its unknown kid.
    const next = await makeKey("ec-2");
    jwks.rotateIn(next);
    const rotated = await balance(handler, await signWith(next, userClaims(user)));
    assert.equal(rotated.status, 200, JSON.stringify(rotated.body));
    assert.equal(jwks.fetches(), 2);
    // Made-up kids right after cannot turn into a fetch each.
    for (let i = 0; i < 5; i++) {
      const unknown = await balance(handler, await signWith(next, userClaims(user), { kid: `made-up-${i}` }));
      assert.equal(unknown.status, 401);
    }
    assert.equal(jwks.fetches(), 2, "no refetch within the cooldown");
  } finally {
    await jwks.stop();
  }
});

Deno.test("hostile tokens are refused (401) and never reach the database as a user", async () => {
  const ec = await makeKey("ec-1");
  const attacker = await makeKey("ec-1"); // same kid, another key
  const jwks = startJwks([ec]);
  try {
    const victim = await makeUser(50);
    const before = await ledgerRows(victim);
    const publicKeyText = JSON.stringify(ec.jwk);
    const noneToken = `${b64({ alg: "none", typ: "JWT" })}.${b64(userClaims(victim))}.`;
    const cases: Array<[string, string, RegExp]> = [
      ["signed with another key under the project's kid", await signWith(attacker, userClaims(victim)), /signature is invalid/],
      ["alg none", noneToken, /must be signed with/],
      ["HS256 keyed with the public key", sign(userClaims(victim), publicKeyText, { alg: "HS256", kid: "ec-1" }), /HS256/],
      ["HS256 keyed with the public x", sign(userClaims(victim), String(ec.jwk.x), { alg: "HS256", kid: "ec-1" }), /HS256/],
      ["expired", await signWith(ec, userClaims(victim, { exp: now() - 1 })), /expired/],
      ["nbf an hour ahead", await signWith(ec, userClaims(victim, { nbf: now() + 3600 })), /not valid yet/],
      ["another audience", await signWith(ec, userClaims(victim, { aud: "someone-else" })), /aud/],
      ["an unknown kid", await signWith(ec, userClaims(victim), { kid: "not-ours" }), /not one of the project's/],
      ["an EC key asked for RS256", await signWith(ec, userClaims(victim), { alg: "RS256" }), /not one of the project's|signature/],
      ["a legacy-secret token on a project without the secret", userToken(victim), /HS256/],
    ];
    const handler = asymmetricHandler(jwks.url);
    for (const [name, token, message] of cases) {
      for (const path of ["/balance", "/charge"]) {
        const answer = await call(handler, request(path, token, path === "/balance"
          ? { method: "GET" }
          : { json: { operation: "image" }, headers: { "X-Forwarded-For": "198.51.100.77" } }));
        assert.equal(answer.status, 401, `${name} ${path}: ${JSON.stringify(answer.body)}`);
        assert.equal(answer.body.error.code, "unauthorized", name);
        assert.match(answer.body.error.message, message, name);
      }
    }
    assert.equal(await balanceOf(victim), 50, "no forged charge spent the victim's credits");
    assert.equal(await ledgerRows(victim), before);
  } finally {
    await jwks.stop();
  }
});

Deno.test("the service role is its keys, never a role claim; publishable keys are no one", async () => {
  const ec = await makeKey("ec-1");
  const jwks = startJwks([ec]);
  try {
    const handler = asymmetricHandler(jwks.url, {
      SUPABASE_SECRET_KEYS: JSON.stringify({ default: "sb_secret_trust_test" }),
      SUPABASE_PUBLISHABLE_KEYS: JSON.stringify({ default: "sb_publishable_trust_test" }),
    });
    const user = await makeUser(3);
    const grant = { userId: user, amount: 100, reason: "forged" };
    // Validly signed by the project's key, claiming the service role.
    const claimed = await signWith(ec, { role: "service_role", aud: "authenticated", exp: now() + 600 });
    const forged = await call(handler, request("/grant", claimed, { json: grant }));
    assert.equal(forged.status, 401, JSON.stringify(forged.body));
    assert.equal(await balanceOf(user), 3);
    // The publishable key is not a user, and not the service role.
    const publishable = await balance(handler, "sb_publishable_trust_test");
    assert.equal(publishable.status, 401);
    const publishableGrant = await call(handler, request("/grant", "sb_publishable_trust_test", { json: grant }));
    assert.equal(publishableGrant.status, 403);
    assert.equal(await balanceOf(user), 3);
    // Both service keys work.
    for (const key of ["sb_secret_trust_test", SERVICE_ROLE_KEY]) {
      const granted = await call(handler, request("/grant", key, { json: { ...grant, amount: 1, reason: "real" } }));
      assert.equal(granted.status, 200, JSON.stringify(granted.body));
    }
    assert.equal(await balanceOf(user), 5);
  } finally {
    await jwks.stop();
  }
});

Deno.test("an unreachable JWKS is a 503, never a trusted payload; an inline SUPABASE_JWKS needs no fetch", async () => {
  const ec = await makeKey("ec-1");
  const jwks = startJwks([ec]);
  try {
    jwks.down();
    const user = await makeUser(9);
    const token = await signWith(ec, userClaims(user));
    const down = await balance(asymmetricHandler(jwks.url), token);
    assert.equal(down.status, 503, JSON.stringify(down.body));
    assert.equal(down.body.error.code, "network");
    assert.equal(down.body.error.details.cause, "jwks_unavailable");
    const inline = asymmetricHandler("off", { SUPABASE_JWKS: JSON.stringify({ keys: [ec.jwk] }) });
    const fetchesBefore = jwks.fetches();
    const answer = await balance(inline, token);
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    assert.equal(answer.body.balance, 9);
    assert.equal(jwks.fetches(), fetchesBefore, "the inline set was enough");
  } finally {
    await jwks.stop();
  }
});

Deno.test("the legacy HS256 secret still verifies where a project has one, with the same claim checks", async () => {
  const handler = createHandler(env({ CREDITGATE_JWKS_URL: "off" }));
  const user = await makeUser(4);
  assert.equal((await balance(handler, userToken(user))).status, 200);
  const claims = userClaims(user);
  for (const [name, token] of [
    ["wrong secret", sign(claims, "x".repeat(40))],
    ["nbf ahead", sign({ ...claims, nbf: now() + 3600 })],
    ["wrong aud", sign({ ...claims, aud: "other" })],
    ["expired", sign({ ...claims, exp: now() - 5 })],
    ["no exp", sign({ ...claims, exp: undefined })],
  ] as const) {
    const answer = await balance(handler, token);
    assert.equal(answer.status, 401, `${name}: ${JSON.stringify(answer.body)}`);
  }
  assert.equal(JWT_SECRET.length >= 32, true);
});

Deno.test("the IP limit keys on the proxy's hop, and only work spends limits", async () => {
  const handler = createHandler(env({ CREDITGATE_IP_LIMIT: "2/3600", CREDITGATE_USER_LIMIT: "off", CREDITGATE_PRICES: '{"image": 5}' }));
  const proxyHop = `198.51.100.${Math.floor(Math.random() * 200) + 20}`;
  const charge = (user: string, xff: string | null, key?: string) =>
    call(handler, request("/charge", userToken(user), {
      json: { operation: "image" },
      headers: { ...(xff === null ? {} : { "X-Forwarded-For": xff }), ...(key ? { "Idempotency-Key": key } : {}) },
    }));
  const rich = await makeUser(100);
  const broke = await makeUser(0);
  // Work: 1 of 2.
  assert.equal((await charge(rich, `203.0.113.1, ${proxyHop}`, "ip-1")).status, 200);
  // Not work: a replay, a 402, a 422: none spends the IP limit.
  const replay = await charge(rich, `203.0.113.2, ${proxyHop}`, "ip-1");
  assert.equal(replay.status, 200);
  assert.equal(replay.body.replayed, true);
  for (let i = 0; i < 3; i++) {
    const poor = await charge(broke, proxyHop);
    assert.equal(poor.status, 402, JSON.stringify(poor.body));
  }
  await sql(`SELECT public.charge_credits('${rich}', 'other', 1, 'ip-2', '{}'::jsonb, 60)`);
  const reused = await charge(rich, proxyHop, "ip-2");
  assert.equal(reused.status, 422, JSON.stringify(reused.body));
  // Work: 2 of 2, whatever the client wrote in front of the proxy's hop.
  assert.equal((await charge(rich, `203.0.113.3, ${proxyHop}`)).status, 200);
  const limited = await charge(rich, `203.0.113.4, ${proxyHop}`);
  assert.equal(limited.status, 429, JSON.stringify(limited.body));
  assert.equal(limited.body.error.details.policy, "ip");
  assert.ok(Number(limited.headers.get("Retry-After")) >= 1);
  // Another client writing the exhausted address in front is not counted
  // against it (nor can it lock that address out): its own hop counts.
  const otherHop = `192.0.2.${Math.floor(Math.random() * 250) + 1}`;
  assert.equal((await charge(rich, `${proxyHop}, ${otherHop}`)).status, 200);
  // No usable address: only the user limit applies (no shared bucket).
  for (let i = 0; i < 3; i++) {
    const anonymous = await charge(rich, null);
    assert.equal(anonymous.status, 200, JSON.stringify(anonymous.body));
    assert.doesNotMatch(anonymous.headers.get("RateLimit-Policy") ?? "", /"ip"/);
  }
  assert.equal(await balanceOf(rich), 100 - 6 * 5 - 1);
});

Deno.test("IPv6 clients are limited per /64, IPv4-mapped addresses as IPv4", async () => {
  const handler = createHandler(env({ CREDITGATE_IP_LIMIT: "1/3600", CREDITGATE_USER_LIMIT: "off" }));
  const user = await makeUser(100);
  const block = `2001:db8:${Math.floor(Math.random() * 0xffff).toString(16)}:1`;
  const charge = (xff: string) =>
    call(handler, request("/charge", userToken(user), { json: { operation: "text" }, headers: { "X-Forwarded-For": xff } }));
  assert.equal((await charge(`${block}::1`)).status, 200);
  assert.equal((await charge(`${block}:ffff::2`)).status, 429, "another address of the same /64");
  const v4 = `198.18.${Math.floor(Math.random() * 250)}.${Math.floor(Math.random() * 250)}`;
  assert.equal((await charge(v4)).status, 200);
  assert.equal((await charge(`::ffff:${v4}`)).status, 429, "the mapped form is the same client");
});

Deno.test("a streamed body without Content-Length is cut off at the bound, before any auth or database work", async () => {
  const handler = createHandler(env());
  const user = await makeUser(10);
  const chunk = new Uint8Array(16 * 1024).fill(0x20);
  let pulled = 0;
  const total = 4096; // 64 MiB if it were read whole
  const stream = new ReadableStream<Uint8Array>({
    pull(controller) {
      pulled += 1;
      if (pulled > total) controller.close();
      else controller.enqueue(chunk);
    },
  });
  const r = new Request("http://127.0.0.1/credits/charge", {
    method: "POST",
    headers: { Authorization: `Bearer ${userToken(user)}` },
    body: stream,
    // @ts-ignore: Deno's RequestInit takes duplex for streamed bodies.
    duplex: "half",
  });
  assert.equal(r.headers.get("content-length"), null);
  const answer = await call(handler, r);
  assert.equal(answer.status, 413, JSON.stringify(answer.body));
  assert.equal(answer.body.error.code, "payload_too_large");
  assert.ok(pulled < 8, `read ${pulled} chunks of 16 KiB before refusing, not all ${total}`);
  assert.equal(await balanceOf(user), 10);
});
