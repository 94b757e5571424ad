// Shared by the Edge Function's Deno suites: the stack they run against,
// users made in its database, and requests to a handler built from the
// package (pkg-function/deno.js, what supabase/functions/credits/index.ts imports).
import { createHmac, randomUUID } from "node:crypto";
import { Buffer } from "node:buffer";

export const URL_ = Deno.env.get("CREDITGATE_URL") ?? "http://127.0.0.1:54321";
export const DB_URL = Deno.env.get("CREDITGATE_DB_URL") ?? "postgresql://postgres:postgres@127.0.0.1:54322/postgres";
export const JWT_SECRET = Deno.env.get("CREDITGATE_JWT_SECRET") ?? "super-secret-jwt-token-with-at-least-32-characters-long";
export const SERVICE_ROLE_KEY = Deno.env.get("CREDITGATE_SERVICE_ROLE_KEY") ??
  sign({ iss: "supabase-demo", role: "service_role", exp: 1983812996 });

/** A JWT signed with the legacy HS256 secret (or `secret`). */
export function sign(claims: Record<string, unknown>, secret = JWT_SECRET, header: Record<string, unknown> = { alg: "HS256", typ: "JWT" }): string {
  const input = `${b64(header)}.${b64(claims)}`;
  return `${input}.${createHmac("sha256", secret).update(input).digest("base64url")}`;
}

export const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");
export const now = () => Math.floor(Date.now() / 1000);

/** A user's access token as a legacy (HS256) project issues it. */
export function userToken(userId: string): string {
  return sign({ sub: userId, role: "authenticated", aud: "authenticated", iat: now(), exp: now() + 600 });
}

export async function sql(text: string): Promise<string> {
  const output = await new Deno.Command("psql", {
    args: ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", DB_URL, "-c", text],
  }).output();
  if (!output.success) throw new Error(new TextDecoder().decode(output.stderr));
  return new TextDecoder().decode(output.stdout).trim();
}

/** A new user (its public.users row comes from the trigger) with `credits`. */
export async function makeUser(credits: number): Promise<string> {
  const id = randomUUID();
  await sql(`INSERT INTO auth.users (id, email) VALUES ('${id}', 'fn-${id}@function.test')`);
  if (credits > 0) {
    await sql(`SELECT public.grant_credits('${id}', ${credits}, 'function test', NULL, '{}'::jsonb)`);
  }
  return id;
}

export const balanceOf = async (userId: string) => Number(await sql(`SELECT credits FROM public.users WHERE id = '${userId}'`));
export const ledgerRows = async (userId: string) =>
  Number(await sql(`SELECT count(*) FROM public.credit_ledger WHERE user_id = '${userId}'`));

export function env(overrides: Record<string, string> = {}) {
  return {
    SUPABASE_URL: URL_,
    SUPABASE_SERVICE_ROLE_KEY: SERVICE_ROLE_KEY,
    CREDITGATE_JWT_SECRET: JWT_SECRET,
    ...overrides,
  };
}

export function request(path: string, token: string, init: RequestInit & { json?: unknown } = {}): Request {
  const headers = new Headers(init.headers);
  headers.set("Authorization", `Bearer ${token}`);
  const body = init.json === undefined ? init.body : JSON.stringify(init.json);
  return new Request(`http://127.0.0.1/credits${path}`, { method: init.method ?? "POST", headers, body });
}

export async function call(handler: { handle(r: Request): Promise<Response> }, r: Request) {
  const response = await handler.handle(r);
  const text = await response.text();
  return { status: response.status, headers: response.headers, body: text ? JSON.parse(text) : null };
}

