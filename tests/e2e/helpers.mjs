// Shared by the end-to-end tests: the running stack's address and keys (from
// the environment `cargo dev test` sets, or the local defaults), users made in
// auth.users over psql, and user tokens signed with the local JWT secret.
import { createHmac, randomUUID } from "node:crypto";
import { execFileSync } from "node:child_process";
import { createClient } from "@supabase/supabase-js";

export const URL = process.env.CREDITGATE_URL ?? "http://127.0.0.1:54321";
export const DB_URL = process.env.CREDITGATE_DB_URL ?? "postgresql://postgres:postgres@127.0.0.1:54322/postgres";
export const JWT_SECRET = process.env.CREDITGATE_JWT_SECRET ?? "super-secret-jwt-token-with-at-least-32-characters-long";
export const ANON_KEY = process.env.CREDITGATE_ANON_KEY ?? sign({ iss: "supabase-demo", role: "anon", exp: 1983812996 });
export const SERVICE_ROLE_KEY =
  process.env.CREDITGATE_SERVICE_ROLE_KEY ?? sign({ iss: "supabase-demo", role: "service_role", exp: 1983812996 });

export function sign(claims, secret = JWT_SECRET, header = { alg: "HS256", typ: "JWT" }) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const input = `${part(header)}.${part(claims)}`;
  return `${input}.${createHmac("sha256", secret).update(input).digest("base64url")}`;
}

/** A signed-in user's access token, as GoTrue issues it. */
export function userToken(userId, lifetimeSeconds = 3600) {
  const now = Math.floor(Date.now() / 1000);
  return sign({ aud: "authenticated", sub: userId, role: "authenticated", iat: now, exp: now + lifetimeSeconds });
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
