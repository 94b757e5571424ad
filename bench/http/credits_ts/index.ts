// A hand-written TypeScript twin of the `credits` Edge Function's
// `POST /charge`, for `cargo dev bench` only (it is not deployed): the same
// checks and the same RPC, without wasm, so the ratio of the two is the cost
// of wasm. It does what src/api does for this route: the token verified with
// the project's keys (ES256 from SUPABASE_JWKS with WebCrypto, or HS256 with
// the legacy secret; exp, nbf, aud, role, sub), strict body, price,
// Idempotency-Key, the client address from the proxy's X-Forwarded-For hop,
// one `charge_credits_with_limits` call (user and IP limits) through
// PostgREST with the service-role key, the same response and RateLimit
// headers, and the same log line.

const env = Deno.env.toObject();
const supabaseUrl = env.SUPABASE_URL;
const serviceKey = env.SUPABASE_SERVICE_ROLE_KEY;
const secret = env.CREDITGATE_JWT_SECRET ?? env.SUPABASE_JWT_SECRET ?? env.JWT_SECRET;
const jwks: Array<JsonWebKey & { kid?: string }> = JSON.parse(env.SUPABASE_JWKS ?? '{"keys":[]}').keys ?? [];
const prices: Record<string, number> = JSON.parse(env.CREDITGATE_PRICES ?? '{"image":10,"text":1}');
const holdSeconds = Number(env.CREDITGATE_HOLD_SECONDS ?? "900");
const [limit, windowSeconds] = (env.CREDITGATE_USER_LIMIT ?? "5/60").split("/").map(Number);
const [ipLimit, ipWindowSeconds] = (env.CREDITGATE_IP_LIMIT ?? "30/60").split("/").map(Number);
const hops = Number(env.CREDITGATE_TRUSTED_PROXY_HOPS ?? "1");
if (!supabaseUrl || !serviceKey || (!secret && jwks.length === 0)) {
  throw new Error("SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY and SUPABASE_JWKS or a JWT secret are required");
}

const encoder = new TextEncoder();
const hmacKey = secret
  ? await crypto.subtle.importKey("raw", encoder.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["verify"])
  : null;
const ecKeys = new Map<string, CryptoKey>();
for (const jwk of jwks) {
  if (jwk.kty !== "EC" || jwk.crv !== "P-256" || !jwk.kid) continue;
  const { kty, crv, x, y } = jwk;
  ecKeys.set(jwk.kid, await crypto.subtle.importKey("jwk", { kty, crv, x, y }, { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"]));
}
const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function fail(status: number, code: string, message: string, details: Record<string, unknown> = {}, headers: Record<string, string> = {}) {
  return Response.json({ error: { code, message, details } }, { status, headers });
}

function base64url(text: string): Uint8Array<ArrayBuffer> {
  const padded = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
  return new Uint8Array(Array.from(atob(padded), (c) => c.charCodeAt(0)));
}

/** The signed-in user's id, or the 401 to answer. */
async function userOf(request: Request): Promise<string | Response> {
  const [scheme, token] = (request.headers.get("authorization") ?? "").trim().split(/\s+/, 2);
  if (scheme?.toLowerCase() !== "bearer" || !token) return fail(401, "unauthorized", "missing Authorization: Bearer <token>");
  const parts = token.split(".");
  if (parts.length !== 3) return fail(401, "unauthorized", "the token is not a valid JWT");
  try {
    const header = JSON.parse(new TextDecoder().decode(base64url(parts[0])));
    const signedText = encoder.encode(`${parts[0]}.${parts[1]}`);
    let signed = false;
    if (header.alg === "ES256" && ecKeys.has(header.kid)) {
      signed = await crypto.subtle.verify({ name: "ECDSA", hash: "SHA-256" }, ecKeys.get(header.kid)!, base64url(parts[2]), signedText);
    } else if (header.alg === "HS256" && hmacKey) {
      signed = await crypto.subtle.verify("HMAC", hmacKey, base64url(parts[2]), signedText);
    } else {
      return fail(401, "unauthorized", "the token's signing key is not one of the project's");
    }
    if (!signed) return fail(401, "unauthorized", "the token's signature is invalid");
    const claims = JSON.parse(new TextDecoder().decode(base64url(parts[1])));
    const now = Date.now() / 1000;
    if (typeof claims.exp !== "number" || claims.exp <= now) return fail(401, "unauthorized", "the token has expired");
    if (claims.nbf !== undefined && !(claims.nbf <= now + 30)) return fail(401, "unauthorized", "the token is not valid yet (nbf)");
    const audiences = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
    if (!audiences.includes("authenticated")) return fail(401, "unauthorized", "a user's token must be for aud authenticated");
    if (claims.role !== "authenticated" || !uuidPattern.test(claims.sub ?? "")) {
      return fail(401, "unauthorized", "this route needs a signed-in user's access token");
    }
    return claims.sub.toLowerCase();
  } catch {
    return fail(401, "unauthorized", "the token is not a valid JWT");
  }
}

/** The address the trusted proxy appended (IPv6 by /64), or null. */
function clientAddress(request: Request): string | null {
  const hopsSeen = (request.headers.get("x-forwarded-for") ?? "").split(",").map((hop) => hop.trim());
  const hop = hopsSeen.length >= hops ? hopsSeen[hopsSeen.length - hops] : "";
  if (/^\d{1,3}(\.\d{1,3}){3}$/.test(hop)) return hop;
  if (hop.startsWith("::ffff:") && /^\d{1,3}(\.\d{1,3}){3}$/.test(hop.slice(7))) return hop.slice(7);
  if (hop.includes(":")) return `${hop.split(":").slice(0, 4).join(":")}::/64`;
  return null;
}

async function charge(request: Request): Promise<Response> {
  const user = await userOf(request);
  if (user instanceof Response) return user;
  let body: unknown;
  try {
    body = await request.json();
  } catch (error) {
    return fail(400, "invalid_argument", `the body is not valid JSON: ${error}`, { field: "body" });
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    return fail(400, "invalid_argument", "the body must be a JSON object", { field: "body" });
  }
  const fields = body as Record<string, unknown>;
  const unknown = Object.keys(fields).find((name) => name !== "operation" && name !== "metadata");
  if (unknown) return fail(400, "invalid_argument", `unknown field ${JSON.stringify(unknown)}`, { field: unknown });
  const operation = fields.operation;
  if (typeof operation !== "string" || operation.length < 1 || operation.length > 64) {
    return fail(400, "invalid_argument", "operation must be a string of 1 to 64 characters", { field: "operation" });
  }
  const cost = prices[operation];
  if (cost === undefined) return fail(400, "invalid_argument", `unknown operation ${operation}`, { field: "operation" });
  const metadata = fields.metadata ?? {};
  if (typeof metadata !== "object" || metadata === null || Array.isArray(metadata) || "creditgate" in metadata) {
    return fail(400, "invalid_argument", "metadata must be a JSON object without a creditgate key", { field: "metadata" });
  }
  const key = request.headers.get("idempotency-key");
  if (key !== null && (key.length < 1 || key.length > 255)) {
    return fail(400, "invalid_argument", "Idempotency-Key must be 1 to 255 characters", { field: "Idempotency-Key" });
  }
  const limits = [{ key: `creditgate:user:${user}`, limit, window_seconds: windowSeconds, cost: 1 }];
  const address = clientAddress(request);
  if (address) limits.push({ key: `creditgate:ip:${address}`, limit: ipLimit, window_seconds: ipWindowSeconds, cost: 1 });
  const rpc = await fetch(`${supabaseUrl}/rest/v1/rpc/charge_credits_with_limits`, {
    method: "POST",
    headers: { apikey: serviceKey, authorization: `Bearer ${serviceKey}`, "content-type": "application/json" },
    body: JSON.stringify({
      p_user_id: user,
      p_operation_type: operation,
      p_cost: cost,
      ...(key === null ? {} : { p_idempotency_key: key }),
      p_metadata: { ...metadata, creditgate: { route: "charge" } },
      p_hold_seconds: holdSeconds,
      p_limits: limits,
    }),
  });
  const answer = await rpc.json();
  if (!rpc.ok) {
    let details = {};
    try {
      details = JSON.parse(answer.details ?? "{}");
    } catch { /* PostgREST's own errors carry text details */ }
    return fail(rpc.status, answer.hint ?? "upstream", answer.message ?? "the database refused the charge", details);
  }
  const row = Array.isArray(answer) ? answer[0] : answer;
  const names = ["user", "ip"];
  const results: Array<{ allowed: boolean; limit: number; remaining: number; reset_seconds: number; retry_after_seconds: number }> =
    row.limits;
  const headers = {
    "ratelimit-policy": results.map((r, i) => `"${names[i]}";q=${r.limit};w=${limits[i].window_seconds}`).join(", "),
    "ratelimit": results.map((r, i) => `"${names[i]}";r=${r.remaining};t=${r.reset_seconds}`).join(", "),
  };
  if (!row.allowed) {
    const refused = results.findIndex((r) => !r.allowed);
    const wait = Math.max(1, ...results.map((r) => r.retry_after_seconds));
    return fail(429, "rate_limited", `too many paid requests (${names[refused]} limit)`, { policy: names[refused], retryAfter: wait }, {
      ...headers,
      "retry-after": String(wait),
    });
  }
  return Response.json(
    { jobId: row.job_id, balance: row.new_balance, replayed: row.replayed, expiresAt: row.expires_at, cost },
    { headers },
  );
}

// One JSON line per request, as the wasm handler writes (src/api/log.rs), so
// that the two differ only in wasm.
async function logged(request: Request, answer: () => Promise<Response>): Promise<Response> {
  const started = performance.now();
  const response = await answer();
  const line: Record<string, unknown> = {
    level: response.status >= 500 ? "error" : response.status >= 400 ? "warn" : "info",
    msg: "credits request",
    method: request.method,
    route: "/charge",
    status: response.status,
  };
  if (response.status === 200) {
    const body = await response.clone().json();
    line.job = body.jobId;
    line.replayed = body.replayed;
  }
  line.durationMs = Math.round((performance.now() - started) * 10) / 10;
  console.log(JSON.stringify(line));
  return response;
}

Deno.serve((request: Request) => {
  const path = new URL(request.url).pathname.replace(/^\/functions\/v1/, "").replace(/^\/credits_ts/, "");
  if (path !== "/charge") return fail(404, "route_not_found", "no such route");
  if (request.method !== "POST") return fail(405, "method_not_allowed", "use POST", {}, { allow: "POST" });
  return logged(request, () => charge(request));
});
