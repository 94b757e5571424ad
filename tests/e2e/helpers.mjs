// Shared by the end-to-end tests: the running stack's address and keys (from
// the environment `cargo dev test` sets, or the local defaults), users made in
// auth.users over psql, and user access tokens as the stack's Auth server
// issues them: ES256, signed with the stack's private signing key
// (CREDITGATE_SIGNING_KEYS_PATH, the JSON array of JWKs the stack keeps in its
// data directory; `cargo dev up`'s by default).
import { createHmac, createPrivateKey, randomUUID, sign as cryptoSign } from "node:crypto";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { createClient } from "@supabase/supabase-js";

export const URL = process.env.CREDITGATE_URL ?? "http://127.0.0.1:54321";
export const DB_URL = process.env.CREDITGATE_DB_URL ?? "postgresql://postgres:postgres@127.0.0.1:54322/postgres";
/** The legacy HS256 secret: it signs the anon and service-role keys only. */
export const JWT_SECRET = process.env.CREDITGATE_JWT_SECRET ?? "super-secret-jwt-token-with-at-least-32-characters-long";
export const ANON_KEY = process.env.CREDITGATE_ANON_KEY ?? sign({ iss: "supabase-demo", role: "anon", exp: 1983812996 });
export const SERVICE_ROLE_KEY =
  process.env.CREDITGATE_SERVICE_ROLE_KEY ?? sign({ iss: "supabase-demo", role: "service_role", exp: 1983812996 });
/** The Supabase CLI's local new-style API keys, which the stack accepts too. */
export const PUBLISHABLE_KEY = "sb_publishable_ACJWlzQHlZjBrEguHvfOxg_3BJgxAaH";
export const SECRET_KEY = "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz";
export const JWKS_URL = `${URL}/auth/v1/.well-known/jwks.json`;
export const SIGNING_KEYS_PATH =
  process.env.CREDITGATE_SIGNING_KEYS_PATH ??
  fileURLToPath(new globalThis.URL("../../target/devstack/local/signing_keys.json", import.meta.url));

/** HS256 with `secret` (the legacy secret by default): legacy keys and forgeries. */
export function sign(claims, secret = JWT_SECRET, header = { alg: "HS256", typ: "JWT" }) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const input = `${part(header)}.${part(claims)}`;
  return `${input}.${createHmac("sha256", secret).update(input).digest("base64url")}`;
}

let signingJwk;
/** The stack's private signing key as a JWK (`kid`, `d`, ...), read once. */
export function signingKey() {
  signingJwk ??= JSON.parse(readFileSync(SIGNING_KEYS_PATH, "utf8"))[0];
  return signingJwk;
}

/**
 * ES256 with a private EC P-256 JWK (the stack's signing key by default);
 * the header carries its `kid`. Synchronous (node:crypto), so tests can make
 * tokens at module load.
 */
export function signES256(claims, jwk = signingKey(), header = { alg: "ES256", typ: "JWT", kid: jwk.kid }) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const input = `${part(header)}.${part(claims)}`;
  const key = createPrivateKey({ key: { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y, d: jwk.d }, format: "jwk" });
  return `${input}.${cryptoSign("sha256", Buffer.from(input), { key, dsaEncoding: "ieee-p1363" }).toString("base64url")}`;
}

/** A user's access token claims, as GoTrue issues them. */
export function userClaims(userId, lifetimeSeconds = 3600, email = `${userId}@e2e.test`) {
  const now = Math.floor(Date.now() / 1000);
  return {
    iss: `${URL}/auth/v1`,
    sub: userId,
    aud: "authenticated",
    exp: now + lifetimeSeconds,
    iat: now,
    email,
    phone: "",
    app_metadata: { provider: "email", providers: ["email"] },
    user_metadata: {},
    role: "authenticated",
    aal: "aal1",
    amr: [{ method: "password", timestamp: now }],
    session_id: randomUUID(),
    is_anonymous: false,
  };
}

/** A signed-in user's access token, as the stack's Auth server issues it (ES256). */
export function userToken(userId, lifetimeSeconds = 3600) {
  return signES256(userClaims(userId, lifetimeSeconds));
}

/** Runs SQL as the superuser and returns psql's unaligned output. */
export function sql(text) {
  return execFileSync("psql", ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", DB_URL, "-c", text], {
    encoding: "utf8",
  }).trim();
}

/** A new auth user (its public.users row comes from the trigger). */
export function makeUser(name) {
  const id = randomUUID();
  sql(`INSERT INTO auth.users (id, email) VALUES ('${id}', '${name}-${id}@e2e.test')`);
  return id;
}

/** A supabase-js client that calls with `token` (the anon key when absent). */
export function client(token) {
  return createClient(URL, ANON_KEY, {
    auth: { persistSession: false, autoRefreshToken: false },
    global: token ? { headers: { Authorization: `Bearer ${token}` } } : {},
  });
}

export const service = () => createClient(URL, SERVICE_ROLE_KEY, { auth: { persistSession: false } });
