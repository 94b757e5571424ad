// The `credits` Edge Function: creditgate's HTTP API. Routing, validation,
// auth, prices, rate limits and responses are Rust (src/api/), compiled to
// wasm (pkg/, copied next to this file by scripts/build-pkg.sh so that
// `supabase functions deploy` bundles it); this file only wires it to Deno.
// @ts-types="./pkg/index.d.ts"
import { createHandler, handle } from "./pkg/deno.js";

// Browsers ask before sending Authorization or Idempotency-Key.
const corsHeaders = {
  "Access-Control-Allow-Origin": "*",
  "Access-Control-Allow-Headers": "authorization, x-client-info, apikey, content-type, idempotency-key",
  "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
};

// Built once per instance: the settings are read and checked here, and a
// malformed one (CREDITGATE_PRICES, a limit) stops the function from starting.
createHandler(Deno.env.toObject());

Deno.serve((request: Request) =>
  request.method === "OPTIONS" ? new Response(null, { status: 204, headers: corsHeaders }) : handle(request)
);
