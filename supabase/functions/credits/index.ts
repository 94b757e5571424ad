// The `credits` Edge Function: creditgate's HTTP API. Routing, validation,
// token verification, prices, rate limits, CORS and responses are Rust
// (src/api/), compiled to wasm (pkg/, copied next to this file by
// scripts/build-pkg.sh so that `supabase functions deploy` bundles it); this
// file only wires it to Deno. Deployed with verify_jwt = false: the handler
// verifies every token itself (see the README's "Security model").
// @ts-types="./pkg/index.d.ts"
import { createHandler, handle } from "./pkg/deno.js";

// Built once per instance: the settings are read and checked here, and a
// malformed one (CREDITGATE_PRICES, a limit) stops the function from starting.
createHandler(Deno.env.toObject());

Deno.serve(handle);
